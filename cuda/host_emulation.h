// exodus — run the __global__ drivers of kernels.cu on the CPU, for tests only.
//
// kernels.cu is compiled as plain C++ with this header force-included. Each
// exported `emulate_<kernel>(grid, block, params)` walks the 1-D launch grid
// (blockIdx.x, threadIdx.x) sequentially and calls the kernel with arguments
// unpacked from `params`, an array of pointers to argument values — the same
// convention as cuLaunchKernel's kernelParams. A launch plan whose argument
// types do not match the kernel signature therefore fails here as on a GPU.
//
// Kernels that synchronise a block (__syncthreads, __shared__ memory) are exported with
// EXODUS_EXPORT_BLOCK_EMULATION: each block's threads then run as concurrent host threads meeting
// at a real barrier, the blocks one after another (so a function-static array is the block's
// shared memory).
#pragma once
#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __restrict__
#define __shared__ static
struct exodus_dim3 { unsigned x = 0, y = 0, z = 0; };
static thread_local exodus_dim3 blockIdx, threadIdx;
static exodus_dim3 blockDim, gridDim;

// A reusable barrier for the threads of one emulated block.
struct exodus_block_barrier {
  std::mutex mutex;
  std::condition_variable cv;
  unsigned count = 0, waiting = 0, generation = 0;
  void wait() {
    std::unique_lock<std::mutex> lock(mutex);
    const unsigned gen = generation;
    if (++waiting == count) {
      waiting = 0;
      ++generation;
      cv.notify_all();
    } else {
      cv.wait(lock, [&] { return gen != generation; });
    }
  }
};
static exodus_block_barrier exodus_barrier;
static inline void __syncthreads() { exodus_barrier.wait(); }

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

template <typename... Args>
static void exodus_emulate_block_launch(void (*kernel)(Args...), unsigned grid, unsigned block, void** params) {
  gridDim.x = grid;
  blockDim.x = block;
  exodus_barrier.count = block;
  for (unsigned bx = 0; bx < grid; ++bx) {
    std::vector<std::thread> threads;
    threads.reserve(block);
    for (unsigned tx = 0; tx < block; ++tx)
      threads.emplace_back([=] {
        blockIdx.x = bx;
        threadIdx.x = tx;
        exodus_call_kernel(kernel, params, std::index_sequence_for<Args...>{});
      });
    for (auto& thread : threads) thread.join();
  }
}

#define EXODUS_EXPORT_BLOCK_EMULATION(name) \
  extern "C" void emulate_##name(unsigned grid, unsigned block, void** params) { \
    exodus_emulate_block_launch(name, grid, block, params); \
  }

#define EXODUS_EXPORT_EMULATION(name) \
  extern "C" void emulate_##name(unsigned grid, unsigned block, void** params) { \
    exodus_emulate_launch(name, grid, block, params); \
  }
