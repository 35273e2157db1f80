"""The native sources in cuda/ compile cleanly everywhere they are used.

No GPU is available where exodus is developed, so the CUDA code is checked by
compiling the exact source the cupy backend hands to NVRTC (kernels.cu with its
headers inlined) with nvcc for several architectures and through NVRTC itself, and
by compiling the CPU drivers and the host emulation with warnings as errors.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from exodus.backends import cupy as cupy_backend
from exodus.backends.sources import GPU_TYPES, cuda_dir, compiler, inline_source, type_defines

KERNELS = ("exodus_lif_forward", "exodus_lif_backward", "exodus_leaky_forward", "exodus_leaky_backward",
           "exodus_adaptive_forward", "exodus_adaptive_backward", "exodus_adaptive_recurrent_forward",
           "exodus_lif_sparse_backward", "exodus_lif_sparse_active")
# The CPU driver sources (each built into its own library by exodus.backends.cpu).
CPU_SOURCES = ("cpu_drivers.cpp", "cpu_adaptive.cpp", "cpu_sparse.cpp")
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
NVCC = shutil.which("nvcc")


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


def _write(directory: Path, text: str, name: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- nvcc

def _nvcc_archs() -> set[str]:
    if NVCC is None:
        return set()
    result = subprocess.run([NVCC, "--list-gpu-arch"], capture_output=True, text=True)
    return set(result.stdout.split()) if result.returncode == 0 else set()


def _arch_param(arch: str, dtype: torch.dtype):
    marks = []
    if NVCC is None:
        marks.append(pytest.mark.skip(reason="nvcc not found on PATH"))
    elif f"compute_{arch}" not in _nvcc_archs():
        marks.append(pytest.mark.skip(reason=f"this nvcc does not list compute_{arch} (nvcc 13 dropped sm_70)"))
    return pytest.param(arch, dtype, marks=marks, id=f"sm_{arch}-{GPU_TYPES[dtype][0]}")


# sm_80 for every storage type, the other architectures for float and half (each compile takes ~1-2 s).
NVCC_CASES = [_arch_param("80", dtype) for dtype in DTYPES] + [
    _arch_param(arch, dtype) for arch in ("70", "75", "90") for dtype in (torch.float32, torch.float16)]


@pytest.mark.parametrize("arch, dtype", NVCC_CASES)
def test_nvcc_compiles_kernels(arch, dtype, tmp_path):
    main = _write(tmp_path, cupy_backend.kernel_source(), "kernels.cu")
    cmd = [NVCC, "-c", f"-arch=sm_{arch}", "-std=c++17", "-fmad=false", "-Werror", "all-warnings",
           "-Xcompiler", "-Wall,-Wextra", *type_defines(dtype), str(main), "-o", str(tmp_path / "kernels.o")]
    result = _run(cmd, tmp_path)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout}\n{result.stderr}"
    assert result.stderr.strip() == "", result.stderr


# ----------------------------------------------------------------------------- NVRTC

# Runs in a child process started outside the repository, so that the check does not depend
# on what the test process has imported (see test_checkout_does_not_shadow_nvidia_cuda_package).
_NVRTC_SCRIPT = """
import json, sys, torch
from exodus.backends import cupy as backend
try:
    from cupy_backends.cuda.libs import nvrtc
    nvrtc.getVersion()
except Exception as error:
    print(json.dumps({"skip": f"{type(error).__name__}: {error}"}))
    sys.exit(0)
out = {}
for name in sys.argv[1:]:
    dtype = getattr(torch, name)
    program = nvrtc.createProgram(backend.kernel_source(), "kernels.cu", [], [])
    try:
        nvrtc.compileProgram(program, [*backend.nvrtc_options(dtype), "--gpu-architecture=compute_80"])
        out[name] = {"log": nvrtc.getProgramLog(program), "ptx": nvrtc.getPTX(program).decode()}
    except nvrtc.NVRTCError as error:
        out[name] = {"log": f"{error}\\n{nvrtc.getProgramLog(program)}", "ptx": None}
    finally:
        nvrtc.destroyProgram(program)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def nvrtc_results(tmp_path_factory):
    """NVRTC compile of kernel_source() with nvrtc_options(dtype), per dtype name: {"log", "ptx"}."""
    import json
    import sys
    names = [str(dtype).removeprefix("torch.") for dtype in DTYPES]
    result = subprocess.run([sys.executable, "-c", _NVRTC_SCRIPT, *names], capture_output=True, text=True,
                            cwd=tmp_path_factory.mktemp("nvrtc"), timeout=300)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    if "skip" in out:
        pytest.skip(f"NVRTC unavailable through cupy: {out['skip']}")
    return out


def _ptx(nvrtc_results, dtype: torch.dtype) -> str:
    entry = nvrtc_results[str(dtype).removeprefix("torch.")]
    assert entry["ptx"] is not None, f"NVRTC failed for {dtype}:\n{entry['log']}"
    log = entry["log"].strip().strip("\x00")
    assert log == "", f"NVRTC warnings for {dtype}:\n{log}"
    return entry["ptx"]


def _entries(ptx: str) -> dict[str, str]:
    """PTX body of each kernel entry, by name."""
    parts = re.split(r"(?=^\.visible \.entry )", ptx, flags=re.M)
    return {re.match(r"\.visible \.entry (\w+)", part).group(1): part for part in parts[1:]}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: GPU_TYPES[d][0])
def test_nvrtc_compiles_all_kernels(nvrtc_results, dtype):
    entries = _entries(_ptx(nvrtc_results, dtype))
    assert set(entries) == set(KERNELS)
    for name, body in entries.items():
        assert ".local" not in body, f"{name} uses local memory (stack or register spills)"


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=lambda d: GPU_TYPES[d][0])
def test_nvrtc_forward_has_no_fused_multiply_add(nvrtc_results, dtype):
    """-fmad=false keeps alpha*v + u as two roundings, as in the torch reference, so the GPU
    forward is bitwise equal to it. The LIF backward calls exp(), whose libdevice code uses
    fma on purpose; it is not checked."""
    entries = _entries(_ptx(nvrtc_results, dtype))
    for name in ("exodus_lif_forward", "exodus_leaky_forward", "exodus_leaky_backward", "exodus_adaptive_forward",
                 "exodus_adaptive_recurrent_forward"):
        assert not re.search(r"\bfma\.", entries[name]), f"{name} contains fused multiply-adds"


def test_checkout_does_not_shadow_nvidia_cuda_package():
    """A regular package named ``cuda`` at the repository root would shadow NVIDIA's ``cuda``
    namespace package (cuda.pathfinder, cuda.bindings) for anything run from the checkout."""
    import importlib.util
    import sys
    if importlib.util.find_spec("cupy") is None:
        pytest.skip("cupy is not installed")
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", "import cupy"], cwd=root, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


# ----------------------------------------------------------------------------- host compilers

def _host_compiler() -> str:
    cxx = compiler()
    if shutil.which(cxx) is None:
        pytest.skip(f"no C++ compiler ({cxx!r})")
    return cxx


@pytest.mark.parametrize("source", CPU_SOURCES)
@pytest.mark.parametrize("c_type, opt", [("float", "-O3"), ("double", "-O1")])
def test_cpu_drivers_compile_without_warnings(c_type, opt, source, tmp_path):
    """With the backend's first flag set (float) — double at -O1 only to save ~10 s: the same
    templates are instantiated and -O1 runs the analyses behind -Wmaybe-uninitialized."""
    main = _write(tmp_path, inline_source(source), source)
    from exodus.backends import cpu
    flags = [opt if f.startswith("-O") else f for f in cpu._FLAG_SETS[0] if not f.startswith("-l")]  # no linking
    cmd = [_host_compiler(), "-x", "c++", "-std=c++17", *flags, "-fPIC",
           "-Wall", "-Wextra", "-Werror", f"-DEXODUS_SCALAR={c_type}", f"-DEXODUS_ACC={c_type}",
           "-c", str(main), "-o", str(tmp_path / "drivers.o")]
    result = _run(cmd, tmp_path)
    assert result.returncode == 0 and result.stderr.strip() == "", f"{' '.join(cmd)}\n{result.stderr}"


def test_host_emulation_compiles_without_warnings(tmp_path):
    main = _write(tmp_path, inline_source("host_emulation.cpp"), "host_emulation.cpp")
    cmd = [_host_compiler(), "-x", "c++", "-std=c++17", "-O1", "-ffp-contract=off", "-fPIC", "-Wall", "-Wextra",
           "-Werror", "-c", str(main), "-o", str(tmp_path / "emulation.o")]
    result = _run(cmd, tmp_path)
    assert result.returncode == 0 and result.stderr.strip() == "", f"{' '.join(cmd)}\n{result.stderr}"


@pytest.mark.parametrize("name", ["kernels.cu", *CPU_SOURCES, "host_emulation.cpp"])
def test_inlined_sources_have_no_pragma_once(name):
    """Compiled as a main file, '#pragma once' makes GCC warn on every native build."""
    assert not re.search(r"^\s*#\s*pragma\s+once", inline_source(name), flags=re.M)


# ----------------------------------------------------------------------------- one source of truth

def test_drivers_only_loop_over_the_step_functions():
    """The neuron and surrogate math lives in neuron.cuh / surrogates.cuh only: the GPU and
    CPU drivers call the step functions and contain no math of their own."""
    # Calls, not declarations (cpu_drivers.cpp declares the SIMD variants of exp for the vectoriser).
    math_calls = re.compile(r"(?<!float )(?<!double )\b(?:std::)?(?:exp|expf|floor|floorf|fmod|fabs|sqrt|pow|log|tanh"
                            r"|atan)\s*\(|\bEXODUS_MATH\s*\(")
    for name in ("kernels.cu", *CPU_SOURCES, "host_emulation.h", "host_emulation.cpp"):
        text = (cuda_dir() / name).read_text()
        assert not math_calls.search(text), f"{name} contains math library calls; use the neuron.cuh step functions"
        assert not re.search(r"\bsurrogate_sigma\s*\(", text), f"{name} calls a surrogate directly"
    lif_steps = ("lif_forward_step", "lif_backward_step_at", "leaky_forward_step", "leaky_backward_step",
                 "membrane_from_h")
    adaptive_steps = ("adaptive_forward_step", "adaptive_backward_step", "membrane_from_h")  # adaptive.cuh
    sparse_steps = ("lif_sparse_point_step", "lif_active_point", "decay_over")  # neuron.cuh, DESIGN.md §6
    for name, steps in (("kernels.cu", lif_steps + adaptive_steps + sparse_steps), ("cpu_drivers.cpp", lif_steps),
                        ("cpu_adaptive.cpp", adaptive_steps), ("cpu_sparse.cpp", sparse_steps)):
        text = (cuda_dir() / name).read_text()
        for step in steps:
            assert f"{step}(" in text, f"{name} does not use {step}"


def test_python_side_has_no_neuron_math():
    """Besides the oracle (reference.py, surrogate.py), Python code only validates and launches."""
    package = Path(__file__).resolve().parents[1] / "exodus"
    forbidden = re.compile(r"torch\.(?:floor|fmod|where|clamp|heaviside)\b|>=\s*theta")
    for path in [*sorted((package / "functional").glob("*.py")), *sorted((package / "backends").glob("*.py"))]:
        match = forbidden.search(path.read_text())
        assert match is None, f"{path.name} contains neuron math: {match.group(0)!r}"


def test_adaptive_parameter_order_matches_the_kernel_enum():
    """The packed (7, N) parameter array of exodus.functional.adaptive is AdaptiveParam's order."""
    from exodus.functional import adaptive
    header = (cuda_dir() / "adaptive.cuh").read_text()
    enum = re.search(r"enum AdaptiveParam \{([^}]*)\}", header).group(1)
    names = [name.strip().split("=")[0].strip().removeprefix("P_").lower() for name in enum.split(",")]
    assert names[-1] == "num_adaptive_params"
    assert tuple(names[:-1]) == tuple("theta" if p == "threshold" else p for p in adaptive.PARAMETERS)


def test_option_codes_match_the_kernel_enums():
    """Reset codes and surrogate ``kind`` codes are the enum values of cuda/common.cuh."""
    from exodus import functional
    from exodus import surrogate as S
    common = (cuda_dir() / "common.cuh").read_text()
    resets = {name.lower(): int(code) for name, code in re.findall(r"RESET_(\w+)\s*=\s*(\d+)", common)}
    assert resets == functional.RESETS
    enum = dict(re.findall(r"SURROGATE_(\w+)\s*=\s*(\d+)", common))
    classes = {"SINGLE_EXPONENTIAL": S.SingleExponential, "PERIODIC_EXPONENTIAL": S.PeriodicExponential,
               "HEAVISIDE": S.Heaviside, "GAUSSIAN": S.Gaussian, "FAST_SIGMOID": S.FastSigmoid, "ATAN": S.ATan}
    assert set(enum) == set(classes)
    for name, cls in classes.items():
        assert cls.kind == int(enum[name]), name
