"""Sparse exact backward of the fused Linear -> LIF block (issue 8; DESIGN.md §6).

gradient="sparse" (reverse scan over the active points only, cuda/cpu_sparse.cpp and the GPU drivers
exodus_lif_sparse_* under host emulation) against gradient="exodus" with the same truncated surrogate
(dense exact backward) and against autograd BPTT through the reference (linear_lif_ref), with the loss
on spikes and on v, across resets, v_min, multi-spike, norm_input, chained calls and stacked blocks.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import exodus
from exodus import surrogate as S
from exodus.backends import emulation, launch
from exodus.functional import linear as L
from exodus.functional.linear import linear_lif, linear_lif_ref

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _problem(seed, B, T, n_in, n_out, dtype, per_neuron_theta, input_rate=0.3, input_kind="spikes"):
    """input_kind: "spikes" (0/1), "counts" (whole numbers 0..3, as from multi-spike bins) — both saved
    packed into uint8 by the sparse block — or "analog" (real values, saved as they are)."""
    g = torch.Generator().manual_seed(seed)
    s = (torch.rand(B, T, n_in, generator=g) < input_rate).to(dtype)
    if input_kind == "counts":
        s = s * torch.randint(1, 4, s.shape, generator=g).to(dtype)
    elif input_kind == "analog":
        s = s * torch.rand(s.shape, generator=g, dtype=dtype) * 2
    w = torch.randn(n_out, n_in, generator=g, dtype=dtype) * (1.5 / math.sqrt(n_in * input_rate))
    b = torch.randn(n_out, generator=g, dtype=dtype) * 0.1
    theta = (1.0 + 0.3 * torch.rand(n_out, generator=g, dtype=dtype)) if per_neuron_theta else torch.tensor(1.0, dtype=dtype)
    v0 = torch.rand(B, n_out, generator=g, dtype=dtype) * 0.5
    g_spikes = torch.randn(B, T, n_out, generator=g, dtype=dtype)
    g_v = torch.randn(B, T, n_out, generator=g, dtype=dtype)
    return s, w, b, theta, v0, g_spikes, g_v


def _grads(fn, tensors, outputs_weights):
    leaves = [t.clone().requires_grad_() for t in tensors]
    outputs = fn(*leaves)
    loss = sum((o * wt).sum() for o, wt in zip(outputs, outputs_weights) if wt is not None)
    loss.backward()
    return [o.detach() for o in outputs], [t.grad for t in leaves]


OPTIONS = st.fixed_dictionaries({
    "reset": st.sampled_from(["subtract", "zero"]),
    "v_min": st.sampled_from([None, -0.4]),
    "max_spikes_per_bin": st.sampled_from([1, 3, None]),
    "norm_input": st.booleans(),
    "detach_reset": st.booleans(),
})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(options=OPTIONS, B=st.integers(1, 3), T=st.integers(1, 40), n_in=st.integers(1, 9), n_out=st.integers(1, 9),
       band=st.sampled_from([0.05, 0.3, 1.5]), v_loss=st.booleans(), per_neuron_theta=st.booleans(),
       input_kind=st.sampled_from(["spikes", "counts", "analog"]), seed=st.integers(0, 10_000))
def test_sparse_equals_dense_exodus_and_bptt_float64(options, B, T, n_in, n_out, band, v_loss, per_neuron_theta,
                                                      input_kind, seed):
    dtype = torch.float64
    s, w, b, theta, v0, g_spikes, g_v = _problem(seed, B, T, n_in, n_out, dtype, per_neuron_theta,
                                                 input_kind=input_kind)
    alpha = torch.tensor(0.85, dtype=dtype)
    surrogate = S.Truncated(S.FastSigmoid(slope=8.0), band)
    detach = options.pop("detach_reset")
    if options["norm_input"]:
        w = w * 4  # (1 - alpha) scales the input down
    weights = (g_spikes, g_v if v_loss else None)
    args = (s, w, b, alpha, theta, v0)

    def sparse(*t):
        return linear_lif(*t[:3], t[3], t[4], t[5], surrogate=surrogate, gradient="sparse", detach_reset=detach,
                          **options)

    def dense(*t):
        return linear_lif(*t[:3], t[3], t[4], t[5], surrogate=surrogate, gradient="slayer" if detach else "exodus",
                          **options)

    def bptt(*t):
        return linear_lif_ref(*t[:3], t[3], t[4], t[5], surrogate=surrogate, gradient="slayer" if detach else "exodus",
                              **options)

    out_s, grads_s = _grads(sparse, args, weights)
    out_d, grads_d = _grads(dense, args, weights)
    out_r, grads_r = _grads(bptt, args, weights)
    for a, d, r in zip(out_s, out_d, out_r):
        assert torch.equal(a, d) and torch.allclose(a, r, rtol=0, atol=1e-12)
    names = ("s", "weight", "bias", "alpha", "theta", "v0")
    for name, gs, gd, gr in zip(names, grads_s, grads_d, grads_r):
        if gr.abs().max() == 0:
            assert gs.abs().max() == 0 and gd.abs().max() == 0, name
            continue
        assert _rel(gs, gd) < 1e-10, (name, _rel(gs, gd))
        assert _rel(gs, gr) < 1e-10, (name, _rel(gs, gr))


def test_sparse_float32_within_1e4_of_bptt():
    s, w, b, theta, v0, g_spikes, _ = _problem(3, 4, 80, 12, 10, torch.float32, True)
    surrogate = S.Truncated(S.SingleExponential(), 0.3)
    args = (s, w, b, torch.tensor(0.9), theta, v0)
    _, grads_s = _grads(lambda *t: linear_lif(*t, surrogate=surrogate, gradient="sparse"), args, (g_spikes, None))
    _, grads_r = _grads(lambda *t: linear_lif_ref(*[x.double() for x in t], surrogate=surrogate), args,
                        (g_spikes.double(), None))
    for gs, gr in zip(grads_s, grads_r):
        assert _rel(gs.double(), gr) < 1e-4


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_stacked_sparse_blocks_and_chained_calls(dtype):
    """Two sparse blocks: the upper one computes dL/ds only at the lower block's active points (sampled
    product); the layer state carries over two calls. Same gradients as the dense exact blocks."""
    torch.manual_seed(0)

    def net(gradient):
        torch.manual_seed(0)
        blocks = torch.nn.Sequential(
            exodus.LinearLIF(10, 16, tau_mem=8.0, gradient=gradient, surrogate=S.Truncated(S.FastSigmoid(5.0), 0.4)),
            exodus.LinearLIF(16, 6, tau_mem=8.0, gradient=gradient, surrogate=S.Truncated(S.FastSigmoid(5.0), 0.4)),
        ).to(dtype)
        for m in blocks:
            torch.nn.init.normal_(m.weight, std=0.9)
        return blocks

    x = (torch.rand(3, 30, 10, generator=torch.Generator().manual_seed(1)) < 0.3).to(dtype)
    grads = {}
    for gradient in ("sparse", "exodus"):
        m = net(gradient)
        out = torch.cat([m(x), m(x)], 1)  # chained: the second call starts from the first one's state
        (out * torch.linspace(-1, 1, out.numel(), dtype=dtype).view_as(out)).sum().backward()
        grads[gradient] = [p.grad for p in m.parameters()]
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for gs, gd in zip(grads["sparse"], grads["exodus"]):
        assert _rel(gs, gd) < tol


def test_sparse_saves_only_the_active_points():
    s, w, b, theta, v0, g_spikes, _ = _problem(0, 4, 200, 30, 40, torch.float32, False, input_rate=0.05)
    surrogate = S.Truncated(S.FastSigmoid(100.0), 0.05)
    spikes, _ = linear_lif(s, w.requires_grad_(), b, 0.9, theta, surrogate=surrogate, gradient="sparse", v_trace=False)
    saved = spikes.grad_fn.saved_tensors
    flat = saved[7]
    assert 0 < flat.numel() < 0.5 * spikes.numel()
    big = [i for i, t in enumerate(saved) if t is not None and t.numel() >= spikes.numel()]
    assert set(big) <= {0}  # at most the input s is (B, T, *)-sized; no dense h, v or mask is kept
    assert saved[0].dtype == torch.uint8  # and that packed into bytes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sparse_saves_spike_inputs_as_bytes(dtype):
    """Inputs of whole numbers in [0, 255] are saved as uint8 (exactly); anything else as it is."""
    w = torch.randn(6, 5, dtype=dtype, requires_grad=True)
    surrogate = S.Truncated(S.FastSigmoid(10.0), 0.3)
    base = (torch.rand(3, 40, 5, generator=torch.Generator().manual_seed(4)) < 0.3).to(dtype)
    cases = {"spikes": base, "counts": base * 255, "fraction": base * 0.5, "negative": -base,
             "above 255": base * 256, "nan": torch.where(base > 0, torch.nan, base)}
    for name, s in cases.items():
        spikes, _ = linear_lif(s, w, None, 0.9, surrogate=surrogate, gradient="sparse")
        saved = spikes.grad_fn.saved_tensors[0]
        if name in ("spikes", "counts"):
            assert saved.dtype == torch.uint8 and torch.equal(saved.to(dtype), s), name
        else:
            assert saved.dtype == dtype and torch.equal(saved, s) if name != "nan" else saved.dtype == dtype, name
    s = base.clone().requires_grad_()
    spikes, _ = linear_lif(s, w, None, 0.9, surrogate=surrogate, gradient="sparse")
    (spikes * torch.randn(spikes.shape, dtype=dtype)).sum().backward()
    assert s.grad.dtype == dtype and w.grad.dtype == dtype


def test_gpu_drivers_under_host_emulation_match_the_cpu_drivers():
    """The __global__ exodus_lif_sparse_active / exodus_lif_sparse_backward (one block per batch row,
    threads synchronised per step) run on the CPU and give the CPU drivers' results."""
    dtype = torch.float64
    s, w, b, theta, v0, g_spikes, _ = _problem(5, 3, 25, 6, 7, dtype, True)
    theta_n = theta.expand(7).contiguous()
    x = torch.nn.functional.linear(s, w, b).contiguous()
    o = launch.LifOptions(0, 1, True, -0.3, False, True, 0, S.FastSigmoid().kind, 1.0,
                          S.Truncated(S.FastSigmoid(8.0), 0.3).kernel_params())
    alpha_n = torch.full((7,), 0.85, dtype=dtype)
    _, _, h = exodus.functional.lif_scan(x, alpha_n, theta_n, v0, o.reset, o.max_spikes, o.has_vmin, o.v_min,
                                         o.norm_input, True, o.gradient, o.surrogate, o.grad_scale,
                                         list(o.surrogate_params), "cpu")
    masks = {}
    for backend in ("cpu", "emulation"):
        mask = torch.empty(h.shape, dtype=torch.uint8)
        plan = launch.lif_sparse_active_plan(h, theta_n, mask, o, True)
        (emulation.launch(plan, dtype) if backend == "emulation" else L._launch(plan, "cpu", dtype, dtype, h.device))
        masks[backend] = mask
    assert torch.equal(masks["cpu"], masks["emulation"]) and masks["cpu"].any()
    flat = masks["cpu"].view(-1).nonzero().squeeze(1)
    B, T, N = h.shape
    row_ptr = torch.zeros(B * T + 1, dtype=torch.int64)
    torch.cumsum(torch.bincount(flat // N, minlength=B * T), 0, out=row_ptr[1:])
    col = flat % N
    hp = h.view(-1)[flat]
    q = torch.rand(flat.shape, dtype=dtype)
    # The input's own active points (as if a sparse block below produced s) for the sampled dL/ds.
    in_flat = (torch.rand(B * T * 6, generator=torch.Generator().manual_seed(9)) < 0.3).nonzero().squeeze(1)
    in_row_ptr = torch.zeros(B * T + 1, dtype=torch.int64)
    torch.cumsum(torch.bincount(in_flat // 6, minlength=B * T), 0, out=in_row_ptr[1:])
    for fused in (False, True):
        results = {}
        for backend in ("cpu", "emulation"):
            out = [torch.empty(flat.shape, dtype=dtype), *(torch.empty((B, N), dtype=dtype) for _ in range(3))]
            lam, t_state = torch.empty((B, N), dtype=dtype), torch.empty((B, N), dtype=torch.int64)
            grad_in = torch.empty(in_flat.shape, dtype=dtype)
            sampled = (w.t().contiguous(), in_row_ptr, in_flat % 6, torch.empty((B, N), dtype=dtype), grad_in, 0.7)
            plan = launch.lif_sparse_backward_plan(
                row_ptr, col, hp, q, None, None if fused else g_spikes.contiguous(), alpha_n, theta_n, lam, t_state,
                *out, B, T, N, o, grad_points=g_spikes.view(-1)[flat].contiguous() if fused else None,
                sampled=sampled if fused else None)
            if backend == "emulation":
                plan.block = (4, 1, 1)  # several threads per block, fewer than the points of a step
                emulation.launch(plan, dtype)
            else:
                L._launch(plan, "cpu", dtype, dtype, h.device)
            results[backend] = out + ([grad_in] if fused else [])
        for a, e in zip(results["cpu"], results["emulation"]):
            assert torch.allclose(a, e, rtol=1e-13, atol=1e-13)
        if fused:  # grad_in = gain W^T lambda_t at the input points, lambda rebuilt from e (reverse leaky scan)
            e_dense = torch.zeros(B * T * N, dtype=dtype)
            e_dense[flat] = results["cpu"][0]
            lam_dense = torch.zeros(B, T, N, dtype=dtype)
            running = torch.zeros(B, N, dtype=dtype)
            for t in reversed(range(T)):
                running = e_dense.view(B, T, N)[:, t] + 0.85 * running
                lam_dense[:, t] = running
            expected = (0.7 * lam_dense.view(B * T, N) @ w).view(-1)[in_flat]
            assert torch.allclose(results["cpu"][4], expected, rtol=1e-12, atol=1e-12)


def test_weight_gradient_torch_path_equals_the_cpu_driver():
    """The device-generic path (sparse matrix product of the filtered input, used on the GPU)."""
    dtype = torch.float64
    s, w, b, theta, v0, g_spikes, _ = _problem(7, 3, 40, 8, 9, dtype, False)
    surrogate = S.Truncated(S.FastSigmoid(8.0), 0.3)
    grads = []
    original = L._weight_grads
    for native in (True, False):
        L._weight_grads = lambda *a, native=native: original(*a, native=native)
        try:
            _, g = _grads(lambda *t: linear_lif(*t, 0.85, theta, surrogate=surrogate, gradient="sparse"), (s, w, b),
                          (g_spikes, None))
        finally:
            L._weight_grads = original
        grads.append(g)
    for a, c in zip(*grads):
        assert _rel(a, c) < 1e-12


def test_truncated_surrogate_is_zero_outside_the_band_and_the_base_inside():
    base = S.FastSigmoid(slope=10.0)
    sg = S.Truncated(base, 0.2)
    h = torch.linspace(0.0, 2.0, 201, dtype=torch.float64)
    theta = torch.tensor(1.0, dtype=torch.float64)
    inside = (h - theta).abs() < 0.2
    assert torch.equal(sg.derivative(h, theta)[inside], base.derivative(h, theta)[inside])
    assert (sg.derivative(h, theta)[~inside] == 0).all()
    assert sg.kernel_params() == (*base.params(), 0.2) and sg.kind == base.kind
    # A dense layer with the truncated surrogate equals the reference with it.
    x = torch.randn(2, 50, 5, dtype=torch.float64, requires_grad=True)
    s1, v1 = exodus.functional.lif(x, 0.9, 1.0, surrogate=sg)
    (g1,) = torch.autograd.grad((s1 * 1.7).sum() + v1.sum(), x)
    s2, v2 = exodus.reference.lif_ref(x, 0.9, 1.0, surrogate=sg)
    (g2,) = torch.autograd.grad((s2 * 1.7).sum() + v2.sum(), x)
    assert _rel(g1, g2) < 1e-12


def test_bad_input():
    s = torch.rand(2, 5, 4)
    w = torch.randn(3, 4)
    with pytest.raises(ValueError, match="truncated surrogate"):
        linear_lif(s, w, None, 0.9, gradient="sparse")
    with pytest.raises(ValueError, match="one tau_mem"):
        linear_lif(s, w, None, torch.full((3,), 0.9), surrogate=S.Truncated(), gradient="sparse")
    with pytest.raises(ValueError, match="one tau_mem"):
        exodus.LinearLIF(4, 3, tau_mem=torch.tensor([5.0, 6.0, 7.0]), gradient="sparse")
    with pytest.raises(ValueError, match="weight must be"):
        linear_lif(s, torch.randn(3, 5), None, 0.9)
    with pytest.raises(ValueError, match="bias must be"):
        linear_lif(s, w, torch.zeros(4), 0.9)
    with pytest.raises(ValueError, match="in_features"):
        linear_lif(torch.rand(2, 5, 4, 1), w, None, 0.9)
    with pytest.raises(ValueError, match="detach_reset"):
        linear_lif(s, w, None, 0.9, detach_reset=True)
    with pytest.raises(ValueError, match="band"):
        S.Truncated(S.FastSigmoid(), 0.0)
    with pytest.raises(TypeError, match="base"):
        S.Truncated(S.Truncated(), 0.1)
    with pytest.raises(ValueError, match="gradient"):
        exodus.LinearLIF(4, 3, gradient="online-ish")
    with pytest.raises(ValueError, match="tau_syn"):
        exodus.LinearLIF(4, 3, tau_syn=5.0)


def test_classifier_sparse_mode_builds_linear_blocks_with_exact_gradients():
    pytest.importorskip("pytorch_lightning")
    from exodus.lightning.model import ConfigError, SpikingClassifier

    args = dict(input_shape=(12,), num_classes=3, hidden=[16, 8], tau_mem=6.0, surrogate_band=0.5, weight_gain=3.0)
    torch.manual_seed(0)
    sparse = SpikingClassifier(gradient="sparse", **args)
    assert all(isinstance(sparse.layers[f"hidden{i}"]["neuron"], exodus.LinearLIF) for i in range(2))
    exact = SpikingClassifier(gradient="exodus", linear_blocks=True, **args)
    exact.load_state_dict(sparse.state_dict())
    x = (torch.rand(4, 40, 12, generator=torch.Generator().manual_seed(2)) < 0.3).float()
    grads = []
    for model in (sparse, exact):
        model.logits(model(x)).logsumexp(1).sum().backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        assert _rel(a, b) < 1e-4
    for bad in (dict(recurrent=True), dict(batch_norm=True), dict(tau_syn=4.0), dict(neuron="alif")):
        with pytest.raises(ConfigError, match="linear_blocks"):
            SpikingClassifier(gradient="sparse", **{**args, **bad})
