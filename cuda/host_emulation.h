// exodus — run the __global__ drivers of kernels.cu on the CPU, for tests only.
//
// kernels.cu is compiled as plain C++ with this header force-included. Each
// exported `emulate_<kernel>(grid, block, params)` walks the 1-D launch grid
// (blockIdx.x, threadIdx.x) sequentially and calls the kernel with arguments
// unpacked from `params`, an array of pointers to argument values — the same
// convention as cuLaunchKernel's kernelParams. A launch plan whose argument
// types do not match the kernel signature therefore fails here as on a GPU.
#pragma once
#include <cstddef>
#include <type_traits>
#include <utility>

#define __global__
#define __restrict__
struct exodus_dim3 { unsigned x = 0, y = 0, z = 0; };
static exodus_dim3 blockIdx, threadIdx, blockDim, gridDim;

template <typename... Args, std::size_t... I>
static void exodus_call_kernel(void (*kernel)(Args...), void** params, std::index_sequence<I...>) {
  kernel(*static_cast<std::remove_reference_t<Args>*>(params[I])...);
}

template <typename... Args>
static void exodus_emulate_launch(void (*kernel)(Args...), unsigned grid, unsigned block, void** params) {
  gridDim.x = grid;
  blockDim.x = block;
  for (unsigned bx = 0; bx < grid; ++bx)
    for (unsigned tx = 0; tx < block; ++tx) {
      blockIdx.x = bx;
      threadIdx.x = tx;
      exodus_call_kernel(kernel, params, std::index_sequence_for<Args...>{});
    }
}

#define EXODUS_EXPORT_EMULATION(name) \
  extern "C" void emulate_##name(unsigned grid, unsigned block, void** params) { \
    exodus_emulate_launch(name, grid, block, params); \
  }
