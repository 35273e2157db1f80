"""exodus.backends.memory: the pool of reused output memory of the fused CPU ops, the huge-page
advice, and the allocator settings of the training CLIs (docs/cpu_memory.md).

The fused ops must give the same results, bit for bit, with outputs from the pool (old contents:
NaN-poisoned blocks) and from plain torch.empty; pooled tensors must behave like tensors; the
CLIs' process settings must stay inside the CLI process.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import check_grad_x_over_saved_h
from exodus import functional as F
from exodus.backends import memory

pytestmark = pytest.mark.usefixtures("single_thread")

MIB = 1 << 20


@pytest.fixture
def fresh_pool(monkeypatch):
    """A pool of its own (default limit) for one test; the process-wide one is restored after."""
    monkeypatch.setattr(memory, "_pool", memory._Pool(64 * MIB))
    yield memory._pool
    memory._pool.release()


@pytest.fixture
def small_blocks(fresh_pool, monkeypatch):
    """Pool even small tensors, so that small cases exercise it."""
    monkeypatch.setattr(memory, "MIN_POOLED_BYTES", 1)
    return fresh_pool


def poison(pool: memory._Pool, count: int = 8, nbytes: int = 2 * MIB) -> None:
    """Leave `count` idle blocks full of NaN: a kernel that skipped an element would show it."""
    tensors = [memory.empty_for_kernel((nbytes // 4,), torch.float32) for _ in range(count)]
    for t in tensors:
        t.fill_(math.nan)
    del tensors, t
    assert pool.idle_bytes >= count * nbytes


# ----------------------------------------------------------------------------- the pool

def test_large_cpu_tensors_come_from_the_pool_and_are_reused(fresh_pool):
    shape = (3, 1000, 1024)  # 11.7 MiB float32
    a = memory.empty_for_kernel(shape, torch.float32)
    assert a.shape == shape and a.dtype == torch.float32 and a.is_contiguous()
    assert a.data_ptr() % memory.HUGE_PAGE_BYTES == 0
    assert memory.stats()["in_use_bytes"] == 12 * MIB and memory.stats()["mapped"] == 1
    a.fill_(2.5)
    assert a.sum().item() == 2.5 * a.numel()
    address = a.data_ptr()
    view = a[1:2]  # a view keeps the block
    del a
    assert memory.stats()["idle_bytes"] == 0
    assert view.sum().item() == 2.5 * view.numel()
    del view
    assert memory.stats() == {"idle_bytes": 12 * MIB, "in_use_bytes": 0, "mapped": 1, "reused": 0,
                              "idle_limit": 64 * MIB}
    b = memory.empty_for_kernel((12 * MIB // 8,), torch.float64)  # same rounded size, other dtype
    assert b.data_ptr() == address and memory.stats()["reused"] == 1
    assert b.numel() == 12 * MIB // 8 and b.dtype == torch.float64


def test_pooled_tensors_behave_like_tensors(fresh_pool):
    a = memory.empty_for_kernel((4, MIB), torch.float32)
    a.copy_(torch.arange(4 * MIB, dtype=torch.float32).view(4, MIB))
    b = a.clone()
    assert torch.equal(a, b) and b.untyped_storage().resizable()
    a.mul_(2)
    assert torch.equal(a, 2 * b)
    assert torch.equal(a.t().contiguous().t(), a)
    loaded = torch.load(_roundtrip(a), weights_only=True)
    assert torch.equal(loaded, a)


def _roundtrip(t):
    import io
    buffer = io.BytesIO()
    torch.save(t, buffer)
    buffer.seek(0)
    return buffer


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_pool_memory_is_private_to_the_process(fresh_pool):
    """A forked child (e.g. a DataLoader worker) writing into a pooled tensor does not change the parent's."""
    import ctypes
    t = memory.empty_for_kernel((MIB,), torch.float32)
    t.fill_(1.0)
    pid = os.fork()
    if pid == 0:  # child: no torch op (no thread pools after fork), just overwrite the bytes
        ctypes.memset(t.data_ptr(), 0, t.nbytes)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert t.sum().item() == MIB


def test_small_meta_and_empty_tensors_are_plain(fresh_pool):
    small = memory.empty_for_kernel((10, 10), torch.float32)
    meta = memory.empty_for_kernel((64, 500, 1024), torch.float32, "meta")
    empty = memory.empty_for_kernel((0, 7), torch.float64)
    assert small.untyped_storage().resizable() and small.shape == (10, 10)
    assert meta.device.type == "meta" and meta.shape == (64, 500, 1024)
    assert empty.shape == (0, 7) and empty.dtype == torch.float64
    assert memory.stats()["mapped"] == 0


def test_idle_limit_drops_blocks_beyond_it(fresh_pool):
    memory.configure(16 * MIB)
    tensors = [memory.empty_for_kernel((2 * MIB,), torch.float32) for _ in range(3)]  # 8 MiB each
    del tensors
    assert memory.stats()["idle_bytes"] == 16 * MIB  # the third block was unmapped
    memory.configure(8 * MIB)  # lowering the limit below the idle bytes releases them
    assert memory.stats()["idle_bytes"] == 0
    memory.configure(32 * MIB)
    t = memory.empty_for_kernel((2 * MIB,), torch.float32)
    del t
    assert memory.release() == 8 * MIB and memory.stats()["idle_bytes"] == 0


def test_least_recently_freed_blocks_go_first(fresh_pool):
    """Past the limit the pool drops the blocks freed longest ago, of any size: it follows the shapes in use."""
    memory.configure(20 * MIB)
    old = memory.empty_for_kernel((3 * MIB,), torch.float32)  # 12 MiB
    del old
    newer = [memory.empty_for_kernel((MIB,), torch.float32) for _ in range(2)]  # 4 MiB each
    del newer
    assert memory.stats()["idle_bytes"] == 20 * MIB
    recent = memory.empty_for_kernel((2 * MIB,), torch.float32)  # 8 MiB: evicts the 12 MiB block when freed
    del recent
    assert memory.stats()["idle_bytes"] == 16 * MIB
    again = memory.empty_for_kernel((3 * MIB,), torch.float32)
    assert memory.stats()["mapped"] == 5  # the 12 MiB block was mapped anew


def test_pool_off_gives_torch_empty(fresh_pool):
    memory.configure(0)
    t = memory.empty_for_kernel((64, MIB), torch.float32)
    assert t.untyped_storage().resizable() and memory.stats()["mapped"] == 0


@pytest.mark.parametrize("value", [-1, 1.5, True, "big"])
def test_configure_rejects_bad_limits(fresh_pool, value):
    with pytest.raises(ValueError, match="idle_limit"):
        memory.configure(value)


def test_environment_limit(monkeypatch):
    monkeypatch.setenv("EXODUS_CPU_POOL_BYTES", "12345")
    assert memory._default_idle_limit() == 12345
    monkeypatch.setenv("EXODUS_CPU_POOL_BYTES", "lots")
    with pytest.raises(ValueError, match="EXODUS_CPU_POOL_BYTES"):
        memory._default_idle_limit()
    monkeypatch.setenv("EXODUS_CPU_POOL_BYTES", "-3")
    with pytest.raises(ValueError, match=">= 0"):
        memory._default_idle_limit()
    monkeypatch.delenv("EXODUS_CPU_POOL_BYTES")
    assert 0 < memory._default_idle_limit() <= 2 << 30


def test_bad_arguments():
    with pytest.raises(ValueError, match="sizes >= 0"):
        memory.empty_for_kernel((2, -1), torch.float32)
    with pytest.raises(TypeError, match="torch.dtype"):
        memory.empty_for_kernel((2, 2), "float32")


# ----------------------------------------------------------------------------- huge-page advice

@pytest.mark.parametrize("text, mode", [("always [madvise] never\n", "madvise"), ("[always] madvise never", "always"),
                                        ("always madvise [never]", "never"), ("garbage", None)])
def test_thp_mode_parsing(tmp_path, text, mode):
    path = tmp_path / "enabled"
    path.write_text(text)
    assert memory.transparent_huge_pages(str(path)) == mode
    assert memory.transparent_huge_pages(str(tmp_path / "missing")) is None


def test_advice_is_a_no_op_where_unsupported(fresh_pool, monkeypatch):
    import mmap
    mapping = mmap.mmap(-1, 4 * MIB)
    for mode in ("never", "always", None):
        monkeypatch.setattr(memory, "transparent_huge_pages", lambda mode=mode: mode)
        assert memory.advise_huge_pages(mapping) is False
        t = memory.empty_for_kernel((MIB,), torch.float32)  # blocks still work without the advice
        t.fill_(1.0)
        assert t.sum().item() == MIB
    mapping.close()


def test_advice_where_thp_is_madvise():
    import mmap
    if memory.transparent_huge_pages() != "madvise" or not hasattr(mmap, "MADV_HUGEPAGE"):
        pytest.skip("THP is not in madvise mode here")
    mapping = mmap.mmap(-1, 4 * MIB)
    assert memory.advise_huge_pages(mapping) is True
    mapping.close()


# ----------------------------------------------------------------------------- numerics unchanged

def _lif_outputs(x, grad, **options):
    leaf = x.detach().requires_grad_(True)
    alpha = torch.full(x.shape[2:], math.exp(-1 / 10), dtype=x.dtype, requires_grad=True)
    theta = torch.full(x.shape[2:], 1.0, dtype=x.dtype, requires_grad=True)
    spikes, v = F.lif(leaf, alpha, theta, backend="cpu", **options)
    torch.autograd.backward([spikes, v], [grad, grad * 0.5])
    return spikes, v, leaf.grad, alpha.grad, theta.grad


def _leaky_outputs(x, grad):
    leaf = x.detach().requires_grad_(True)
    alpha = torch.full(x.shape[2:], 0.9, dtype=x.dtype, requires_grad=True)
    v = F.leaky(leaf, alpha, backend="cpu")
    v.backward(grad)
    return v, leaf.grad, alpha.grad


def _adaptive_outputs(x, grad, recurrent):
    N = x.shape[2]
    leaf = x.detach().requires_grad_(True)
    w_rec = (torch.randn(N, N, dtype=x.dtype, generator=torch.Generator().manual_seed(3)) * 0.1).requires_grad_(
        True) if recurrent else None
    spikes, v, w = F.adaptive_lif(leaf, math.exp(-1 / 10), 1.0, rho=math.exp(-1 / 30), beta=0.2, gamma=0.1,
                                  weight_rec=w_rec, backend="cpu")
    torch.autograd.backward([spikes, v, w], [grad, grad * 0.5, grad * 0.25])
    return (spikes, v, w, leaf.grad) + ((w_rec.grad,) if recurrent else ())


def _assert_identical(pooled, plain):
    for got, expected in zip(pooled, plain):
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert torch.equal(got, expected), "pooled and plain outputs differ"


@settings(max_examples=12)
@given(batch=st.integers(1, 4), time=st.integers(1, 40), neurons=st.integers(1, 70),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.float16]), v_trace=st.booleans(),
       seed=st.integers(0, 2**16))
def test_fused_ops_identical_with_poisoned_pool(batch, time, neurons, dtype, v_trace, seed):
    """Bit-for-bit the same results with (NaN-poisoned) pooled outputs as with torch.empty ones."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(batch, time, neurons, generator=g, dtype=torch.float64) * 0.6 + 0.2).to(dtype)
    grad = torch.randn(batch, time, neurons, generator=g, dtype=torch.float64).to(dtype)
    final_grad = grad if v_trace else grad[:, -1]
    runs = {}
    for pooled in (True, False):
        saved_pool, saved_min = memory._pool, memory.MIN_POOLED_BYTES
        memory._pool = memory._Pool(256 * MIB if pooled else 0)
        memory.MIN_POOLED_BYTES = 1
        try:
            if pooled:
                poison(memory._pool, count=6)
            leaf = x.detach().requires_grad_(True)
            spikes, v = F.lif(leaf, 0.9, 1.0, backend="cpu", v_trace=v_trace)
            torch.autograd.backward([spikes, v], [grad, final_grad])
            runs[pooled] = (spikes, v, leaf.grad, *_leaky_outputs(x, grad))
            if pooled:
                assert memory._pool.reused > 0
        finally:
            memory._pool.release()
            memory._pool, memory.MIN_POOLED_BYTES = saved_pool, saved_min
    _assert_identical(runs[True], runs[False])


@pytest.mark.parametrize("recurrent", [False, True], ids=["feedforward", "recurrent"])
def test_adaptive_identical_with_poisoned_pool(small_blocks, recurrent):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 30, 17, generator=g, dtype=torch.float64) * 0.6 + 0.2
    grad = torch.randn(3, 30, 17, generator=g, dtype=torch.float64)
    poison(small_blocks)
    pooled = _adaptive_outputs(x, grad, recurrent)
    assert small_blocks.reused > 0
    memory.configure(0)
    plain = _adaptive_outputs(x, grad, recurrent)
    _assert_identical(pooled, plain)


def test_large_layer_step_uses_the_pool_and_matches(fresh_pool):
    """Real sizes (pooled without patching): a LIF fwd+bwd whose outputs are 2.5 MiB each, twice
    (the second step reuses the first step's blocks), against the pool off."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 160, 1024, generator=g) * 0.3 + 0.06
    grad = torch.randn(4, 160, 1024, generator=g)
    first = _lif_outputs(x, grad)
    mapped = memory.stats()["mapped"]
    assert mapped >= 3  # spikes, v trace, h; grad_x
    del first
    second = _lif_outputs(x, grad)
    assert memory.stats()["mapped"] == mapped and memory.stats()["reused"] >= 3
    memory.configure(0)
    _assert_identical(second, _lif_outputs(x, grad))


# ----------------------------------------------------------------------------- CLI process settings

def _python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


_MMAPPED_BYTES = """
    import ctypes
    class MallInfo2(ctypes.Structure):  # glibc >= 2.33
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                         "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
    def mmapped_bytes():
        libc = ctypes.CDLL(None)
        libc.mallinfo2.restype = MallInfo2
        return libc.mallinfo2().hblkhd
"""


@pytest.mark.parametrize("module", ["cli", "compare"])
def test_cli_entry_points_tune_their_own_process(module):
    """exodus-train / exodus-compare: main() applies tune_training_process() (glibc then serves a
    64 MiB tensor from its heap, not from a fresh mmap), in the CLI process only."""
    try:
        import ctypes
        ctypes.CDLL(None).mallinfo2  # noqa: B018
    except (OSError, AttributeError):
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")
    result = _python(_MMAPPED_BYTES + f"""
    import torch
    from exodus.backends import memory
    from exodus.lightning import {module}
    calls = []
    original = memory.tune_training_process
    memory.tune_training_process = lambda: calls.append(original()) or calls[-1]
    big = torch.empty(64 << 20, dtype=torch.uint8)
    before = mmapped_bytes() >= 64 << 20
    del big
    try:
        {module}.main(["--help"])
    except SystemExit:
        pass
    big = torch.empty(64 << 20, dtype=torch.uint8)
    print(len(calls), before, mmapped_bytes() >= 64 << 20, sorted(calls[0]))
    """)
    assert result == "1 True False ['mallopt']"


def test_library_keeps_glibc_defaults():
    """Without the CLI a large tensor is a fresh mmap, as glibc does by default."""
    try:
        import ctypes
        ctypes.CDLL(None).mallinfo2  # noqa: B018
    except (OSError, AttributeError):
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")
    result = _python(_MMAPPED_BYTES + """
    import torch, exodus, exodus.lightning.cli
    y = exodus.LIF()(torch.rand(4, 100, 1000))
    big = torch.empty(64 << 20, dtype=torch.uint8)
    print(mmapped_bytes() >= 64 << 20)
    """)
    assert result == "True"


# ----------------------------------------------------------------------------- dL/dx over the saved h

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
@pytest.mark.parametrize("options", [dict(), dict(v_trace=False, reset="zero", v_min=-0.3, norm_input=True)],
                         ids=["defaults", "final-zero-vmin-norm"])
def test_lif_backward_writes_grad_x_over_saved_h(dtype, options):
    """The LIF CPU backward writes dL/dx over the saved h (no new (B, T, N) buffer) unless the graph
    is kept; kept or not, and with the reuse switched off, the gradients are the same bits and are
    plain tensors (not attached to the forward's graph)."""
    lif_module = sys.modules["exodus.functional.lif"]
    g = torch.Generator().manual_seed(5)
    B, T, N = 3, 17, 6
    x = (torch.randn((B, T, N), generator=g) * 0.6 + 0.3).to(dtype).requires_grad_()
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    alpha = torch.full((N,), 0.9, dtype=acc, requires_grad=True)
    theta = torch.full((N,), 1.0, dtype=acc, requires_grad=True)
    v0 = torch.zeros((B, N), dtype=acc, requires_grad=True)
    w_spikes, w_v = torch.randn((B, T, N), generator=g), torch.randn((B, T, N), generator=g)

    def make_loss():
        spikes, v = F.lif(x, alpha, theta, v0, backend="cpu", **options)
        loss = (spikes.float() * w_spikes).sum() + (v.float() * (w_v if v.dim() == 3 else w_v[:, -1])).sum()
        return loss, (x, alpha, theta, v0)

    grads = check_grad_x_over_saved_h(lif_module, make_loss, (B, T, N))
    assert grads[0].dtype == dtype  # values against the reference: every oracle test (plain backwards)
