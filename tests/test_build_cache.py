"""The native build cache (exodus.backends.sources): what a cached library is keyed on."""
from __future__ import annotations

import ctypes

import pytest

from exodus.backends import sources

TINY = 'extern "C" int exodus_answer() { return ANSWER; }\n'


@pytest.fixture
def tiny_source(tmp_path, monkeypatch):
    monkeypatch.setenv("EXODUS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(sources, "inline_source", lambda name: TINY)
    return tmp_path


def build(answer: int):
    return sources.build_shared_library("tiny.cpp", ["-O1", f"-DANSWER={answer}"], "tiny")


def test_cached_library_is_reused_and_keyed_on_flags(tiny_source):
    first = build(42)
    assert ctypes.CDLL(str(first)).exodus_answer() == 42
    inode = first.stat().st_ino
    assert build(42) == first and first.stat().st_ino == inode           # reused, not rebuilt
    other = build(7)
    assert other != first and ctypes.CDLL(str(other)).exodus_answer() == 7
    assert sorted(p.name for p in tiny_source.iterdir()) == sorted([first.name, other.name])  # no temporaries left


def test_library_built_for_another_cpu_is_not_reused(tiny_source, monkeypatch):
    """-march=native builds must not travel between nodes of different CPUs sharing a home directory."""
    here = build(1)
    monkeypatch.setattr(sources, "cpu_id", lambda: "model name=some other CPU\nflags=sse2")
    assert build(1) != here


def test_cpu_id_names_this_cpu():
    """The key part holds this CPU's model and instruction-set flags as /proc/cpuinfo gives them."""
    import os

    cpu = sources.cpu_id()
    if not os.path.exists("/proc/cpuinfo"):
        pytest.skip("no /proc/cpuinfo")
    lines = open("/proc/cpuinfo").read().splitlines()
    first: dict = {}
    for key, _, value in (line.partition(":") for line in lines):
        first.setdefault(key.strip(), value.strip())  # the first processor's entry, as cpu_id reads it
    for name in ("model name", "flags", "Features"):
        if name in first:
            assert f"{name}={first[name]}" in cpu.splitlines(), name
    assert any(name in first for name in ("model name", "flags", "Features"))


def test_compile_error_is_a_build_error(tiny_source, monkeypatch):
    monkeypatch.setattr(sources, "inline_source", lambda name: "this is not C++\n")
    with pytest.raises(sources.BuildError, match="compiling tiny.cpp failed"):
        build(0)


def test_without_a_compiler_exodus_falls_back_to_torch_with_one_warning(tmp_path):
    """No working C++ compiler: import works, the layers run on the torch reference, one RuntimeWarning."""
    import os
    import subprocess
    import sys

    script = """
import warnings, torch, exodus
from exodus.reference import lif_ref
warnings.simplefilter("always")
x = torch.randn(2, 30, 4)
with warnings.catch_warnings(record=True) as caught:
    first = exodus.LIF(tau_mem=10.0)(x)
    second = exodus.functional.lif(x, 0.9)[0]
messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
assert len(messages) == 1, messages
assert "could not be built" in messages[0] and "falls back" in messages[0], messages[0]
assert torch.equal(first, lif_ref(x, torch.exp(torch.tensor(-0.1)), 1.0)[0])
assert torch.equal(second, lif_ref(x, 0.9, 1.0)[0])
try:
    exodus.functional.lif(x, 0.9, backend="cpu")
except ValueError as error:
    assert "unavailable" in str(error)
else:
    raise AssertionError("backend='cpu' should fail without a compiler")
print("ok")
"""
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "EXODUS_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


def test_builds_unused_for_a_month_are_pruned(tiny_source):
    import os
    import time

    old, recent = build(1), build(2)
    month_ago = time.time() - (sources.STALE_AFTER_DAYS + 1) * 86400
    os.utime(old, (month_ago, month_ago))
    os.utime(recent, (time.time() - 86400, time.time() - 86400))
    other_stem = tiny_source / "other-0123456789abcdef.so"
    other_stem.write_bytes(b"")
    os.utime(other_stem, (month_ago, month_ago))
    assert build(2) == recent and recent.stat().st_mtime > time.time() - 60  # reuse marks it as used
    new = build(3)                                                           # a build prunes stale ones
    assert not old.exists() and recent.exists() and new.exists() and other_stem.exists()
