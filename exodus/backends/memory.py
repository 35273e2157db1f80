"""Output memory of the fused CPU ops: reused instead of freshly mapped (docs/cpu_memory.md).

A (64, 500, 1024) float32 output is 128 MiB. glibc serves an allocation that large with a fresh
``mmap`` and returns it with ``munmap`` when the tensor dies, so every training step first-touches
its outputs again: one page fault and one zeroed 4 KiB page per 4 KiB written, which made a LIF
forward+backward 3x slower than the same kernels on reused buffers (measured in
benchmarks/fresh_memory.py).

``empty_for_kernel(shape, dtype)`` is ``torch.empty`` for small tensors. For large CPU tensors it
hands out a block from a pool of anonymous mappings: the tensor owns a buffer view of the block
(``torch.frombuffer``), and when torch frees the tensor's storage the view dies and the block goes
back to the pool, already faulted in, for the next call that asks for the same rounded size. New
blocks are aligned to 2 MiB and advised ``MADV_HUGEPAGE`` where transparent huge pages are in
"madvise" mode (fewer faults and TLB misses on first touch; "always" needs no advice).

Idle blocks (not owned by any tensor) are kept up to ``idle_limit`` bytes; beyond it they are
unmapped at once. ``configure(idle_limit=0)`` or the environment variable
``EXODUS_CPU_POOL_BYTES=0`` turns the pool off (plain ``torch.empty``); ``release()`` unmaps the
idle blocks. Tensors from the pool behave like any CPU tensor except that their storage cannot be
resized (``resize_`` to a larger size raises), like any tensor made by ``torch.frombuffer``.
"""
from __future__ import annotations

import ctypes
import math
import mmap
import os
import threading
import weakref
from typing import Optional, Sequence

import torch

__all__ = ["empty_for_kernel", "configure", "release", "stats", "transparent_huge_pages", "advise_huge_pages",
           "tune_training_process",
           "HUGE_PAGE_BYTES", "MIN_POOLED_BYTES"]

HUGE_PAGE_BYTES = 2 << 20  # x86-64 / arm64 (4 KiB base pages) transparent huge page size
# Tensors below this come from torch.empty: glibc keeps them in its heap and reuses them already.
MIN_POOLED_BYTES = 2 << 20
_THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"
_ENV_LIMIT = "EXODUS_CPU_POOL_BYTES"


def transparent_huge_pages(path: str = _THP_ENABLED) -> Optional[str]:
    """The kernel's THP mode: "always", "madvise" or "never" (the bracketed word of ``path``);
    None where there is no such file (not Linux, THP compiled out)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def advise_huge_pages(memory: mmap.mmap) -> bool:
    """madvise(MADV_HUGEPAGE) on a whole anonymous mapping. True if the advice was given; False
    (and nothing happens) where THP is not in "madvise" mode or the platform has no such advice."""
    if transparent_huge_pages() != "madvise" or not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    try:
        memory.madvise(mmap.MADV_HUGEPAGE)
    except OSError:
        return False
    return True


def _default_idle_limit() -> int:
    """Idle bytes kept: $EXODUS_CPU_POOL_BYTES if set, else an eighth of the RAM, at most 2 GiB."""
    value = os.environ.get(_ENV_LIMIT)
    if value is not None:
        try:
            limit = int(value)
        except ValueError:
            raise ValueError(f"{_ENV_LIMIT} must be a whole number of bytes (0 turns the pool off), "
                             f"got {value!r}") from None
        if limit < 0:
            raise ValueError(f"{_ENV_LIMIT} must be >= 0, got {limit}")
        return limit
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 8 << 30
    return min(ram // 8, 2 << 30)


class _Block:
    """One anonymous mapping; ``address`` is its first 2 MiB-aligned byte, ``nbytes`` usable from there."""

    __slots__ = ("memory", "address", "offset", "nbytes")

    def __init__(self, nbytes: int):
        # One huge page more than asked, so that the usable range can start on a 2 MiB boundary
        # (untouched virtual memory costs nothing).
        # Private: Python's default for anonymous maps is MAP_SHARED (shmem: no THP, and shared with
        # forked children such as DataLoader workers).
        self.memory = mmap.mmap(-1, nbytes + HUGE_PAGE_BYTES, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        advise_huge_pages(self.memory)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self.memory))
        self.offset = -base % HUGE_PAGE_BYTES
        self.address = base + self.offset
        self.nbytes = nbytes

    def view(self) -> ctypes.Array:
        return (ctypes.c_char * self.nbytes).from_buffer(self.memory, self.offset)

    def close(self) -> None:
        self.memory.close()


class _Pool:
    """Blocks keyed by size (rounded up to 2 MiB); idle ones wait in ``_idle[size]`` and, all sizes
    together, in ``_order`` (least recently freed first): past the limit the oldest go first, so
    the pool follows the shapes in current use."""

    def __init__(self, idle_limit: int):
        self.idle_limit = idle_limit
        self._idle: dict[int, list[_Block]] = {}
        self._order: list[_Block] = []
        self._lock = threading.Lock()
        self.idle_bytes = 0
        self.in_use_bytes = 0
        self.mapped = 0  # blocks mapped so far (a fresh block means first-touch faults)
        self.reused = 0

    def take(self, nbytes: int) -> _Block:
        size = -(-nbytes // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES
        with self._lock:
            blocks = self._idle.get(size)
            if blocks:
                block = blocks.pop()  # the most recently freed one of this size
                self._order.remove(block)
                self.idle_bytes -= size
                self.reused += 1
            else:
                block = None
                self.mapped += 1
            self.in_use_bytes += size
        return block if block is not None else _Block(size)

    def give_back(self, block: _Block) -> None:
        """Called when the last tensor on the block is freed (the block's buffer view died)."""
        evicted = []
        with self._lock:
            self.in_use_bytes -= block.nbytes
            if block.nbytes <= self.idle_limit:
                self._idle.setdefault(block.nbytes, []).append(block)
                self._order.append(block)
                self.idle_bytes += block.nbytes
                while self.idle_bytes > self.idle_limit:
                    evicted.append(self._pop_oldest())
        # A block too large to keep is dropped: its mapping is unmapped when the dying view lets go
        # of it (an explicit close here would fail, the view still exports the buffer).
        for old in evicted:  # idle blocks: no view exports them any more
            old.close()

    def _pop_oldest(self) -> _Block:
        block = self._order.pop(0)
        self._idle[block.nbytes].remove(block)
        self.idle_bytes -= block.nbytes
        return block

    def release(self) -> int:
        with self._lock:
            blocks = list(self._order)
            self._idle.clear()
            self._order.clear()
            freed, self.idle_bytes = self.idle_bytes, 0
        for block in blocks:
            block.close()
        return freed


_pool: Optional[_Pool] = None
_pool_lock = threading.Lock()


def _the_pool() -> _Pool:
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = _Pool(_default_idle_limit())
    return _pool


def configure(idle_limit: int) -> None:
    """Idle bytes the pool may keep (0: no pool, outputs come from torch.empty). Blocks idle beyond
    the new limit are unmapped now."""
    if isinstance(idle_limit, bool) or not isinstance(idle_limit, int) or idle_limit < 0:
        raise ValueError(f"idle_limit must be a whole number of bytes >= 0, got {idle_limit!r}")
    pool = _the_pool()
    pool.idle_limit = idle_limit
    if pool.idle_bytes > idle_limit:
        pool.release()


def release() -> int:
    """Unmap every idle block; returns the bytes freed. Blocks owned by live tensors stay."""
    return _the_pool().release()


def stats() -> dict:
    """Pool counters: idle and in-use bytes, blocks mapped fresh and blocks reused so far."""
    pool = _the_pool()
    return {"idle_bytes": pool.idle_bytes, "in_use_bytes": pool.in_use_bytes, "mapped": pool.mapped,
            "reused": pool.reused, "idle_limit": pool.idle_limit}


def empty_for_kernel(shape: Sequence[int], dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """An uninitialised contiguous tensor of ``shape`` and ``dtype`` for a kernel to overwrite.

    CPU tensors of at least MIN_POOLED_BYTES come from the pool (memory already faulted in when a
    block of that size was freed before); everything else is ``torch.empty``."""
    shape = tuple(int(size) for size in shape)
    if any(size < 0 for size in shape):
        raise ValueError(f"shape must have sizes >= 0, got {shape}")
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {type(dtype).__name__}")
    device = torch.device(device)
    numel = math.prod(shape)
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    pool = _the_pool() if device.type == "cpu" else None
    if pool is None or pool.idle_limit == 0 or nbytes < MIN_POOLED_BYTES:
        return torch.empty(shape, dtype=dtype, device=device)
    block = pool.take(nbytes)
    view = block.view()
    # The block goes back to the pool when torch drops its reference to the view, i.e. when the
    # storage (shared by every view of the returned tensor) is freed.
    weakref.finalize(view, pool.give_back, block)
    storage = torch.frombuffer(view, dtype=dtype, count=numel).untyped_storage()
    return torch.empty((0,), dtype=dtype).set_(storage, 0, shape)  # a plain tensor (no view of a base)


# ----------------------------------------------------------------------------- training processes only

# glibc <malloc.h> mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def tune_training_process() -> dict:
    """Process-wide allocator settings for a training process: ``exodus-train`` and ``exodus-compare``
    call it first thing in ``main``; the library itself never does (docs/cpu_memory.md).

    glibc ``mallopt(M_MMAP_MAX, 0)`` and ``mallopt(M_TRIM_THRESHOLD, 2**31 - 1)``: every block comes
    from the heap and freed ones stay there for the next step, instead of a fresh mmap (page faults
    on first touch) per large tensor per step. The resident size then stays at the run's peak.
    Takes effect at once (unlike torch's THP_MEM_ALLOC_ENABLE, which torch reads at its first CPU
    allocation, already made by pytorch_lightning's import when ``main`` runs).

    Returns what was applied (name -> value); empty where it does not apply (not glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return {}
    if mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1:
        return {"mallopt": "M_MMAP_MAX=0, M_TRIM_THRESHOLD=2**31-1"}
    return {}
