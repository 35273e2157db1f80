"""Bad input gives a clear Python exception naming the problem, raised before any native
code runs; degenerate but valid input (T = 0, batch 0, NaN, inf) works like the reference."""
from __future__ import annotations

import math

import pytest
import torch

import exodus
from exodus import functional as F
from exodus import surrogate as S
from exodus.reference import leaky_ref, lif_ref

CPU_BACKENDS = ["cpu", "torch"]
NAN, INF = math.nan, math.inf


@pytest.fixture(autouse=True)
def no_native_code(monkeypatch):
    """Any launch of a native kernel fails loudly: validation must happen first. Tests that
    run valid input re-enable the kernels with the ``native`` fixture."""
    from exodus import backends

    def refuse(*args, **kwargs):
        raise AssertionError("native code ran before the input was rejected")

    originals = {name: getattr(backends, name).run for name in ("cpu", "cupy")}
    for name in originals:
        monkeypatch.setattr(getattr(backends, name), "run", refuse)
    return originals


@pytest.fixture
def native(monkeypatch, no_native_code):
    from exodus import backends
    for name, run in no_native_code.items():
        monkeypatch.setattr(getattr(backends, name), "run", run)


def x_(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------- input tensor

CALLS = {
    "lif": lambda x: F.lif(x, 0.9),
    "leaky": lambda x: F.leaky(x, 0.9),
    "LIF": lambda x: exodus.LIF()(x),
    "IAF": lambda x: exodus.IAF()(x),
    "ExpLeak": lambda x: exodus.ExpLeak()(x),
    "LIF+tau_syn": lambda x: exodus.LIF(tau_syn=5.0)(x),
}


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
@pytest.mark.parametrize("shape", [(), (7,)], ids=["0d", "1d"])
def test_input_rank_below_two(call, shape):
    with pytest.raises(ValueError, match=r"\(batch, time, \*features\).*at least 2 dims"):
        call(torch.zeros(shape))


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64, torch.uint8])
def test_input_dtype_not_float(call, dtype):
    with pytest.raises(TypeError, match="input dtype must be float16, bfloat16, float32 or float64"):
        call(torch.zeros(2, 3, 4, dtype=dtype))


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
def test_input_not_a_tensor(call):
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        call([[0.1, 0.2]])


# ----------------------------------------------------------------------------- parameters (functional)

@pytest.mark.parametrize("threshold", [0.0, -1.0, NAN, torch.tensor([1.0, 0.0, 1.0, 1.0]),
                                       torch.tensor([1.0, -2.0, 1.0, 1.0])])
def test_functional_threshold_not_positive(threshold):
    with pytest.raises(ValueError, match=r"threshold must lie in \(0.0, inf\]"):
        F.lif(x_(2, 3, 4), 0.9, threshold)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, NAN, torch.tensor([0.9, 1.1, 0.9, 0.9])])
@pytest.mark.parametrize("fn", ["lif", "leaky"])
def test_functional_alpha_outside_unit_interval(fn, alpha):
    with pytest.raises(ValueError, match=r"alpha must lie in \[0.0, 1.0\]"):
        getattr(F, fn)(x_(2, 3, 4), alpha)


@pytest.mark.parametrize("call", [
    lambda x: F.lif(x, 1.0, norm_input=True),
    lambda x: F.lif(x, torch.tensor([0.9, 0.9, 1.0, 0.9]), norm_input=True),
    lambda x: F.leaky(x, 1.0, norm_input=True),
    lambda x: exodus.LIF(tau_mem=math.inf, norm_input=True)(x),
    lambda x: exodus.ExpLeak(tau_mem=math.inf, norm_input=True)(x),
], ids=["lif", "lif-per-neuron", "leaky", "LIF", "ExpLeak"])
def test_alpha_one_with_norm_input(call):
    """u = (1 - alpha) x discards the input at alpha = 1 (and dL/dalpha could not be recovered)."""
    with pytest.raises(ValueError, match=r"alpha \(with norm_input\) must lie in \[0.0, 1.0\)"):
        call(x_(2, 3, 4))


@pytest.mark.parametrize("v_min", [1.0, 2.0])
def test_functional_v_min_not_below_threshold(v_min):
    with pytest.raises(ValueError, match=r"v_min .* must be below the threshold"):
        F.lif(x_(2, 3, 4), 0.9, 1.0, v_min=v_min)
    with pytest.raises(ValueError, match=r"v_min .* must be below the threshold"):
        F.lif(x_(2, 3, 4), 0.9, torch.tensor([3.0, 3.0, 3.0, v_min]), v_min=v_min)


@pytest.mark.parametrize("v_min", ["low", NAN, True])
def test_functional_v_min_not_a_number(v_min):
    with pytest.raises(TypeError, match="v_min must be a number or None"):
        F.lif(x_(2, 3, 4), 0.9, v_min=v_min)


@pytest.mark.parametrize("name, kwargs", [
    ("alpha", dict(alpha=torch.full((3,), 0.9))),
    ("alpha", dict(alpha=torch.full((2, 4), 0.9))),       # broadcasts, but not to the features
    ("threshold", dict(threshold=torch.ones(5))),
    ("threshold", dict(threshold=torch.ones(3, 1))),
])
def test_functional_parameter_shape_not_broadcastable(name, kwargs):
    kwargs = {"alpha": 0.9, **kwargs}
    with pytest.raises(ValueError, match=rf"{name} of shape .* does not broadcast to the feature shape \(4,\)"):
        F.lif(x_(2, 3, 4), **kwargs)
    if name == "alpha":
        with pytest.raises(ValueError, match=r"alpha of shape .* does not broadcast"):
            F.leaky(x_(2, 3, 4), kwargs["alpha"])


@pytest.mark.parametrize("name, value, error", [
    ("alpha", "0.9", TypeError), ("alpha", torch.ones(4, dtype=torch.int64), TypeError),
    ("threshold", "1", TypeError), ("threshold", torch.ones(4, dtype=torch.bool), TypeError),
    ("alpha", True, TypeError),
])
def test_functional_parameter_type(name, value, error):
    kwargs = {"alpha": 0.9, name: value}
    with pytest.raises(error, match=rf"{name} must be a (number or a tensor|floating-point tensor)"):
        F.lif(x_(2, 3, 4), **kwargs)


@pytest.mark.parametrize("v0", [torch.zeros(3, 4), torch.zeros(2, 5), torch.zeros(2, 3, 4), torch.zeros(4, 2)])
@pytest.mark.parametrize("fn", ["lif", "leaky"])
def test_v0_wrong_shape(fn, v0):
    with pytest.raises(ValueError, match=r"v0 of shape .* does not broadcast to \(batch, \*features\) = \(2, 4\)"):
        getattr(F, fn)(x_(2, 3, 4), 0.9, v0=v0)


@pytest.mark.parametrize("fn", ["lif", "leaky"])
def test_v0_not_a_tensor(fn):
    with pytest.raises(TypeError, match="v0 must be a tensor"):
        getattr(F, fn)(x_(2, 3, 4), 0.9, v0=[0.0] * 4)


# ----------------------------------------------------------------------------- devices

def _second_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("meta")


@pytest.mark.parametrize("name", ["alpha", "threshold", "v0"])
def test_parameter_on_another_device(name):
    device = _second_device()
    values = {"alpha": torch.full((4,), 0.9, device=device), "threshold": torch.ones(4, device=device),
              "v0": torch.zeros(2, 4, device=device)}
    kwargs = {"alpha": 0.9, name: values[name]}
    with pytest.raises(ValueError, match=rf"{name} is on {device.type}.* but the input is on cpu"):
        F.lif(x_(2, 3, 4), **kwargs)
    if name != "threshold":
        kwargs.pop("threshold", None)
        with pytest.raises(ValueError, match=rf"{name} is on {device.type}.* but the input is on cpu"):
            F.leaky(x_(2, 3, 4), **kwargs)


@pytest.mark.parametrize("fn", ["lif", "leaky"])
def test_input_on_meta_device(fn):
    """A meta input should either propagate shapes or be rejected with a message naming the device."""
    x = torch.zeros(2, 3, 4, device="meta")
    try:
        out = getattr(F, fn)(x, 0.9)
    except (ValueError, TypeError) as error:
        assert "meta" in str(error)
    else:
        assert (out[0] if fn == "lif" else out).shape == x.shape


# ----------------------------------------------------------------------------- option strings and codes

@pytest.mark.parametrize("option, value", [("reset", "soft"), ("reset", None), ("gradient", "tbptt"),
                                           ("backend", "cuda"), ("backend", "CPU")])
def test_functional_unknown_choice(option, value):
    with pytest.raises(ValueError, match=rf"unknown {option} {value!r}; expected one of"):
        F.lif(x_(2, 3, 4), 0.9, **{option: value})
    if option == "backend":
        with pytest.raises(ValueError, match=rf"unknown backend {value!r}"):
            F.leaky(x_(2, 3, 4), 0.9, backend=value)


@pytest.mark.parametrize("layer", [exodus.LIF, exodus.IAF, exodus.ExpLeak])
def test_layer_unknown_backend(layer):
    with pytest.raises(ValueError, match=r"unknown backend 'gpu'"):
        layer(backend="gpu")


@pytest.mark.parametrize("layer", [exodus.LIF, exodus.IAF])
@pytest.mark.parametrize("option, value", [("reset", "soft"), ("gradient", "tbptt")])
def test_layer_unknown_choice(layer, option, value):
    with pytest.raises(ValueError, match=rf"unknown {option} {value!r}"):
        layer(**{option: value})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
@pytest.mark.parametrize("call", [
    lambda x: F.lif(x, 0.9, backend="cupy"),
    lambda x: F.leaky(x, 0.9, backend="cupy"),
    lambda x: exodus.LIF(backend="cupy")(x),
    lambda x: exodus.ExpLeak(backend="cupy")(x),
], ids=["lif", "leaky", "LIF", "ExpLeak"])
def test_cupy_backend_without_cuda(call):
    with pytest.raises(ValueError, match=r"backend='cupy' needs CUDA tensors; this input is on cpu"):
        call(x_(2, 3, 4))


@pytest.mark.parametrize("value", [0, -1, 1.5, 2.0, "3", True])
def test_max_spikes_per_bin_invalid(value):
    match = r"max_spikes_per_bin must be a positive int or None"
    with pytest.raises(ValueError, match=match):
        F.lif(x_(2, 3, 4), 0.9, max_spikes_per_bin=value)
    with pytest.raises(ValueError, match=match):
        exodus.LIF(max_spikes_per_bin=value)


@pytest.mark.parametrize("surrogate", ["exp", S.SingleExponential, lambda h: h, 0.5])
def test_surrogate_not_a_surrogate(surrogate):
    match = r"surrogate must be an exodus.surrogate.Surrogate"
    with pytest.raises(TypeError, match=match):
        F.lif(x_(2, 3, 4), 0.9, surrogate=surrogate)
    with pytest.raises(TypeError, match=match):  # the layer rejects it at the latest at the first call
        exodus.LIF(surrogate=surrogate)(x_(2, 3, 4))


@pytest.mark.parametrize("make, match", [
    (lambda: S.SingleExponential(width=0.0), "width must be a positive finite number"),
    (lambda: S.PeriodicExponential(width=-1.0), "width must be a positive finite number"),
    (lambda: S.Gaussian(sigma=0.0), "sigma must be a positive finite number"),
    (lambda: S.FastSigmoid(slope=NAN), "slope must be a positive finite number"),
    (lambda: S.ATan(alpha=INF), "alpha must be a positive finite number"),
])
def test_surrogate_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ----------------------------------------------------------------------------- layer parameters

@pytest.mark.parametrize("make, name", [
    (lambda v: exodus.LIF(tau_mem=v), "tau_mem"),
    (lambda v: exodus.LIF(tau_syn=v), "tau_syn"),
    (lambda v: exodus.IAF(tau_syn=v), "tau_syn"),
    (lambda v: exodus.ExpLeak(tau_mem=v), "tau_mem"),
    (lambda v: exodus.LIF(tau_mem=v, train_tau=True, shape=(2,)), "tau_mem"),
])
@pytest.mark.parametrize("value", [0.0, -5.0, NAN, torch.tensor([10.0, 0.0]), torch.tensor([-1.0, 10.0])],
                         ids=["zero", "negative", "nan", "tensor-with-zero", "tensor-with-negative"])
def test_layer_time_constant_not_positive(make, name, value):
    with pytest.raises(ValueError, match=rf"{name} must be > 0 \(in time steps\)"):
        make(value)


@pytest.mark.parametrize("layer", [exodus.LIF, exodus.IAF])
@pytest.mark.parametrize("threshold", [0.0, -1.0, torch.tensor([1.0, -1.0]), NAN], ids=["zero", "neg", "tensor", "nan"])
def test_layer_threshold_not_positive(layer, threshold):
    with pytest.raises(ValueError, match="threshold must"):  # NaN: only at the first call (see report)
        layer(threshold=threshold)(x_(2, 3, 2))


@pytest.mark.parametrize("layer", [exodus.LIF, exodus.IAF])
def test_layer_v_min_not_below_threshold(layer):
    with pytest.raises(ValueError, match=r"v_min \(1.5\) must be below the threshold"):
        layer(threshold=1.5, v_min=1.5)
    with pytest.raises(ValueError, match=r"v_min .* must be below the threshold"):
        layer(threshold=torch.tensor([2.0, 0.5]), v_min=1.0)


def test_layer_parameter_shape_not_broadcastable():
    with pytest.raises(ValueError, match=r"alpha of shape \(3,\) does not broadcast to the feature shape \(4,\)"):
        exodus.LIF(tau_mem=torch.full((3,), 10.0))(x_(2, 3, 4))
    with pytest.raises(ValueError, match=r"threshold of shape \(3,\) does not broadcast"):
        exodus.LIF(threshold=torch.ones(3))(x_(2, 3, 4))
    with pytest.raises(ValueError, match=r"alpha of shape \(3,\) does not broadcast"):
        exodus.ExpLeak(tau_mem=torch.full((3,), 10.0))(x_(2, 3, 4))


@pytest.mark.parametrize("name", ["tau_mem", "norm_input"])
def test_iaf_has_no_leak_options(name):
    with pytest.raises(TypeError, match=f"IAF has no {name}"):
        exodus.IAF(**{name: 10.0})


@pytest.mark.parametrize("call, error, match", [
    (lambda: exodus.LIF(tau_mem="fast"), TypeError, "tau_mem must be a number or a tensor"),
    (lambda: exodus.LIF(tau_mem=[10.0, 20.0]), TypeError, "tau_mem must be a number or a tensor"),
    (lambda: exodus.ExpLeak(tau_mem=None), TypeError, "tau_mem must be a number or a tensor"),
    (lambda: exodus.LIF(tau_syn="slow"), TypeError, "tau_syn must be a number or a tensor"),
    (lambda: exodus.LIF(threshold="1"), TypeError, "threshold must be a number or a tensor"),
    (lambda: exodus.LIF(v_min="low"), TypeError, "v_min must be a number or None"),
    (lambda: exodus.LIF(gradient="slayer", grad_scale="big"), TypeError, "grad_scale must be a finite number"),
    (lambda: F.lif(x_(2, 3, 4), 0.9, gradient="slayer", grad_scale="big"), TypeError,
     "grad_scale must be a finite number"),
    (lambda: F.lif(x_(2, 3, 4), 0.9, gradient="slayer", grad_scale=NAN), TypeError,
     "grad_scale must be a finite number"),
    (lambda: exodus.LIF(tau_mem=torch.full((3,), 10.0), shape=(4,)), ValueError,
     r"tau_mem of shape \(3,\) does not broadcast to shape=\(4,\)"),
    (lambda: exodus.LIF(threshold=torch.ones(3), shape=(4,)), ValueError,
     r"threshold of shape \(3,\) does not broadcast to shape=\(4,\)"),
], ids=["LIF-tau-str", "LIF-tau-list", "ExpLeak-tau-None", "LIF-tau_syn-str", "LIF-threshold-str", "LIF-v_min-str",
        "LIF-grad_scale-str", "lif-grad_scale-str", "lif-grad_scale-nan", "LIF-tau-vs-shape", "LIF-threshold-vs-shape"])
def test_messages_name_the_parameter(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ----------------------------------------------------------------------------- empty input

EMPTY_SHAPES = [(3, 0, 4), (0, 5, 4), (0, 0, 4), (2, 3, 0), (3, 0, 2, 2)]
EMPTY_CASES = [pytest.param(backend, shape, id=f"{backend}-{shape}")
               for backend in CPU_BACKENDS for shape in EMPTY_SHAPES]


@pytest.mark.parametrize("backend, shape", EMPTY_CASES)
@pytest.mark.parametrize("v_trace", [True, False])
def test_lif_empty_input(native, backend, shape, v_trace):
    x = torch.zeros(shape, requires_grad=True)
    spikes, v = F.lif(x, 0.9, backend=backend, v_trace=v_trace)
    final_shape = (shape[0], *shape[2:])
    assert spikes.shape == shape and v.shape == (shape if v_trace else final_shape)
    assert spikes.dtype == v.dtype == x.dtype
    if not v_trace:
        assert not v.any()  # no step: the final membrane is v0 = 0
    (grad,) = torch.autograd.grad(spikes.sum() + v.sum(), x, allow_unused=True)
    assert grad is None or grad.shape == shape


@pytest.mark.parametrize("backend, shape", EMPTY_CASES)
def test_leaky_empty_input(native, backend, shape):
    x = torch.zeros(shape, requires_grad=True)
    v = F.leaky(x, 0.9, backend=backend)
    assert v.shape == shape and v.dtype == x.dtype
    (grad,) = torch.autograd.grad(v.sum(), x, allow_unused=True)
    assert grad is None or grad.shape == shape


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("fn", ["lif", "leaky"])
def test_zero_time_steps_with_v0(native, backend, fn):
    x, v0 = torch.zeros(2, 0, 4), torch.randn(2, 4)
    out = getattr(F, fn)(x, 0.9, v0=v0, backend=backend)
    assert (out[0] if fn == "lif" else out).shape == (2, 0, 4)


@pytest.mark.parametrize("layer", [
    lambda: exodus.LIF(), lambda: exodus.LIF(record_states=True), lambda: exodus.LIF(tau_syn=5.0),
    lambda: exodus.IAF(), lambda: exodus.ExpLeak()], ids=["LIF", "LIF-record", "LIF-syn", "IAF", "ExpLeak"])
def test_layers_zero_time_steps_keep_state(native, layer):
    """An empty chunk returns an empty output and leaves the carried membrane unchanged."""
    neuron = layer()
    neuron(x_(2, 5, 3) + 0.5)
    before = neuron.v.detach().clone()
    out = neuron(torch.zeros(2, 0, 3))
    assert out.shape == (2, 0, 3)
    assert torch.equal(neuron.v.detach(), before)


# ----------------------------------------------------------------------------- NaN / inf

def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal, NaN where the other is NaN."""
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


def _assert_grad_close(got: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    """NaN exactly where the reference has NaN; finite values within the gradient tolerance."""
    rtol = 1e-10 if got.dtype == torch.float64 else 1e-4
    assert torch.equal(got.isnan(), expected.isnan()), f"{name}: NaN pattern differs from the reference"
    finite = expected.isfinite()
    scale = expected[finite].abs().max().item() if bool(finite.any()) else 0.0
    torch.testing.assert_close(got, expected, rtol=0.0, atol=rtol * scale, equal_nan=True, msg=name)


def _nan_inf_input(dtype, with_inf: bool):
    x = x_(2, 6, 3, dtype=dtype) + 0.5
    x[0, 1, 0] = NAN
    x[1, 3, 2] = NAN
    if with_inf:
        x[0, 2, 1] = INF
        x[1, 0, 1] = -INF
    return x


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("v_min", [None, -0.5])  # a clamped membrane blocks a NaN gradient, as in BPTT
@pytest.mark.parametrize("max_spikes", [1, 3])
def test_nan_input_propagates_like_reference(native, dtype, reset, v_min, max_spikes):
    """NaN in -> NaN membrane from then on, no spike; gradients match the reference's
    (NaN where it has NaN). The kernels never crash."""
    x = _nan_inf_input(dtype, with_inf=False)
    alpha = torch.full((3,), 0.9, dtype=dtype)
    options = dict(reset=reset, v_min=v_min, max_spikes_per_bin=max_spikes)
    results = []
    for backend in ("cpu", "torch"):
        xs, a = x.clone().requires_grad_(), alpha.clone().requires_grad_()
        spikes, v = F.lif(xs, a, backend=backend, **options)
        grads = torch.autograd.grad(spikes.sum() + v.sum(), (xs, a))
        results.append((spikes, v, *grads))
    (spikes, v, *_), ref = results
    assert bool(v[0, 1:, 0].isnan().all()) and bool(v[1, 3:, 2].isnan().all())
    assert not spikes[0, 1:, 0].any() and not spikes[1, 3:, 2].any()
    assert not spikes.isnan().any()
    for name, got, expected in zip(("spikes", "v"), results[0][:2], ref[:2]):
        assert _same(got.detach(), expected.detach()), name
    for name, got, expected in zip(("grad_x", "grad_alpha"), results[0][2:], ref[2:]):
        _assert_grad_close(got, expected, name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_nan_input_leaky_like_reference(native, dtype):
    x = _nan_inf_input(dtype, with_inf=True)
    alpha = torch.full((3,), 0.9, dtype=dtype)
    assert _same(F.leaky(x, alpha, backend="cpu"), leaky_ref(x, alpha))


@pytest.mark.parametrize("reset", ["subtract", "zero"])  # zero reset of h = inf: inf * 0 = NaN, as in DESIGN §1
@pytest.mark.parametrize("max_spikes", [1, 3, None])
def test_inf_input_like_reference(native, reset, max_spikes):
    x = _nan_inf_input(torch.float64, with_inf=True)
    theta = torch.ones(3, dtype=torch.float64)
    alpha = torch.full((3,), 0.9, dtype=torch.float64)
    spikes, v = F.lif(x, alpha, theta, reset=reset, max_spikes_per_bin=max_spikes, backend="cpu")
    ref_spikes, ref_v = lif_ref(x, alpha, theta, reset=reset, max_spikes_per_bin=max_spikes)
    assert _same(spikes, ref_spikes) and _same(v, ref_v)
