"""The kernel sources in ``cuda/`` and the native build cache shared by the backends."""
from __future__ import annotations

import hashlib
import os
import platform
import re
import subprocess
import tempfile
import time
from functools import lru_cache
from pathlib import Path

import torch

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')
_PRAGMA_ONCE = re.compile(r"^\s*#\s*pragma\s+once\b")

# Storage type -> (C type of the storage, C type of the math) for -DEXODUS_SCALAR / -DEXODUS_ACC.
GPU_TYPES = {
    torch.float32: ("float", "float"),
    torch.float64: ("double", "double"),
    torch.float16: ("exodus_half", "float"),
    torch.bfloat16: ("exodus_bfloat16", "float"),
}


@lru_cache(maxsize=None)
def cuda_dir() -> Path:
    """Directory holding the kernel sources: ``exodus/cuda`` in an installed wheel, the
    checkout's top-level ``cuda/`` in a source tree or an editable install."""
    package = Path(__file__).resolve().parents[1]
    for path in (package / "cuda", package.parent / "cuda"):
        if (path / "neuron.cuh").exists():
            return path
    raise FileNotFoundError(f"exodus kernel sources (cuda/*.cuh) not found next to {package}; reinstall exodus-snn")


@lru_cache(maxsize=None)
def inline_source(name: str) -> str:
    """Source of ``cuda/<name>`` with its local ``#include "..."`` files pasted in (once each)."""
    seen: set[str] = set()

    def expand(file: str) -> list[str]:
        lines = []
        for line in (cuda_dir() / file).read_text().splitlines():
            match = _INCLUDE.match(line)
            if _PRAGMA_ONCE.match(line):
                continue  # inlining already includes each file once
            if match is None:
                lines.append(line)
            elif match.group(1) not in seen:
                seen.add(match.group(1))
                lines.extend(expand(match.group(1)))
        return lines

    seen.add(name)
    return "\n".join(expand(name)) + "\n"


def type_defines(dtype: torch.dtype) -> list[str]:
    scalar, acc = GPU_TYPES[dtype]
    return [f"-DEXODUS_SCALAR={scalar}", f"-DEXODUS_ACC={acc}"]


def cache_dir() -> Path:
    root = os.environ.get("EXODUS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "exodus")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


class BuildError(RuntimeError):
    pass


def compiler() -> str:
    return os.environ.get("CXX") or "c++"


@lru_cache(maxsize=None)
def _compiler_id(cxx: str) -> str:
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        raise BuildError(f"no working C++ compiler ({cxx!r}): {error}") from error


@lru_cache(maxsize=None)
def cpu_id() -> str:
    """The host CPU's model and instruction-set flags: libraries built with -march=native are
    only reused on the same kind of CPU (a home directory shared by cluster nodes of different
    CPUs must not hand one node's build to another, where it would die of an illegal instruction)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                name = name.strip()
                if name in ("vendor_id", "model name", "flags", "Features", "CPU part") and name not in fields:
                    fields[name] = value.strip()
    except OSError:
        pass
    return "\n".join(f"{k}={v}" for k, v in sorted(fields.items())) or platform.processor()


def build_shared_library(source: str, flags: list[str], stem: str) -> Path:
    """Compile ``cuda/<source>`` (includes inlined) into a cached shared library.

    The cache key covers the inlined source, the flags, the compiler, the machine and
    its CPU (see cpu_id); the library is written to a temporary file and renamed into
    place, so concurrent processes (DDP workers) never load a half-written file.
    """
    cxx = compiler()
    text = inline_source(source)
    parts = [text, cxx, _compiler_id(cxx), os.uname().machine, cpu_id(), *flags]
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    target = cache_dir() / f"{stem}-{key}.so"
    if target.exists():
        _touch(target)
        return target
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        src = Path(tmp) / source.replace(".cu", ".cpp") if source.endswith(".cu") else Path(tmp) / source
        src.write_text(text)
        out = Path(tmp) / "lib.so"
        cmd = [cxx, "-x", "c++", str(src), "-o", str(out), "-shared", "-fPIC", "-std=c++17", *flags]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise BuildError(f"compiling {source} failed:\n{' '.join(cmd)}\n{result.stderr[-4000:]}")
        os.replace(out, target)
    _prune(stem, keep=target)
    return target


# Builds unused for this long (other exodus versions, flags or CPUs) are removed at the next build.
STALE_AFTER_DAYS = 30


def _touch(path: Path) -> None:
    """Mark a cached build as used (its modification time is its last use)."""
    try:
        os.utime(path)
    except OSError:  # a read-only shared cache still works
        pass


def _prune(stem: str, keep: Path) -> None:
    """Remove builds of ``stem`` not used for STALE_AFTER_DAYS (a process that has one loaded keeps it)."""
    cutoff = time.time() - STALE_AFTER_DAYS * 86400
    for path in cache_dir().glob(f"{stem}-*.so"):
        try:
            if path != keep and path.stat().st_mtime < cutoff:
                path.unlink()
        except OSError:
            pass
