"""Stateful spiking layers. Each call consumes (batch, time, *features) and carries
the membrane state to the next call; the math lives in exodus.functional.

    lif = exodus.LIF(tau_mem=20.0)
    spikes = lif(x)          # same shape and dtype as x
    lif.v                    # post-reset membrane after the last step, (batch, *features)
    lif.reset_states()
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from . import functional as F
from .surrogate import SingleExponential, Surrogate, Truncated

__all__ = ["LIF", "IAF", "ExpLeak", "AdaptiveLIF", "ALIF", "AdLIF", "LinearLIF", "WEIGHT_REC_INITS"]


def _parameter_tensor(name: str, value, shape: Optional[Sequence[int]]) -> Tensor:
    """A neuron parameter (number or tensor) as a float tensor, expanded to ``shape`` if given."""
    if isinstance(value, Tensor):
        tensor = value.detach().clone()
        if not torch.is_floating_point(tensor):
            tensor = tensor.to(torch.get_default_dtype())
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        tensor = torch.tensor(float(value), dtype=torch.get_default_dtype())
    else:
        raise TypeError(f"{name} must be a number or a tensor, got {value!r}")
    if shape is not None:
        try:
            tensor = tensor.expand(tuple(shape)).clone()
        except RuntimeError:
            raise ValueError(f"{name} of shape {tuple(tensor.shape)} does not broadcast to shape={tuple(shape)}") from None
    return tensor


def _time_constant(name: str, value, shape: Optional[Sequence[int]], trainable: bool):
    """A time constant (in steps) as a tensor: Parameter if trainable, else buffer."""
    tensor = _parameter_tensor(name, value, shape)
    if bool((tensor <= 0).any()) or bool(torch.isnan(tensor).any()):
        raise ValueError(f"{name} must be > 0 (in time steps), got {value!r}")
    return nn.Parameter(tensor) if trainable else tensor


class _StatefulNeuron(nn.Module):
    """State handling shared by the layers: states start at zero for a new batch/feature shape."""

    _state_names: tuple[str, ...] = ()

    def __init__(self, record_states: bool, backend: str):
        super().__init__()
        from .backends import BACKENDS
        F._check_choice("backend", backend, BACKENDS)
        self.record_states = record_states
        self.backend = backend
        self.recordings: dict[str, Tensor] = {}
        for name in self._state_names:
            self.register_buffer(name, None, persistent=False)

    def _register(self, name: str, value, trainable: bool):
        if trainable:
            self.register_parameter(name, value)
        else:
            self.register_buffer(name, value)

    def reset_states(self) -> None:
        """Zero the state (it is re-created as zeros at the next call)."""
        for name in self._state_names:
            setattr(self, name, None)

    def detach_states(self) -> None:
        """Cut the graph between calls (truncated BPTT); values are kept."""
        for name in self._state_names:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.detach())

    def _state(self, name: str, x: Tensor) -> Optional[Tensor]:
        value = getattr(self, name)
        expected = (x.shape[0], *x.shape[2:])
        if value is None or tuple(value.shape) != expected or value.device != x.device:
            return None
        return value


WEIGHT_REC_INITS = ("orthogonal", "normal", "kaiming_uniform", "zeros")


def _init_recurrent(module: nn.Module, recurrent: bool, shape, init: str, gain: float, zero_diagonal: bool,
                    tau_syn=None) -> None:
    """Create ``module.weight_rec`` ((N, N) nn.Parameter, DESIGN.md §5) for a recurrent layer."""
    if not isinstance(recurrent, bool):
        raise TypeError(f"recurrent must be a bool, got {recurrent!r}")
    module.recurrent = recurrent
    module.zero_diagonal = bool(zero_diagonal)
    if not recurrent:
        module.weight_rec = None
        return
    if shape is None or len(tuple(shape)) != 1:
        raise ValueError("recurrent=True needs shape=(N,): the number of neurons (one feature dim), got "
                         f"shape={shape!r}")
    if tau_syn is not None:
        raise ValueError("recurrent=True with tau_syn is not supported: the recurrent input would bypass the "
                         "synapse; use tau_syn=None")
    F._check_choice("weight_rec_init", init, WEIGHT_REC_INITS)
    F._check_number("weight_rec_gain", gain)
    N = int(tuple(shape)[0])
    weight = torch.empty(N, N, dtype=torch.get_default_dtype())
    if init == "orthogonal":
        nn.init.orthogonal_(weight, gain=gain)
    elif init == "normal":
        nn.init.normal_(weight, std=gain / math.sqrt(N))
    elif init == "kaiming_uniform":
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        weight.mul_(gain)
    else:
        weight.zero_()
    if zero_diagonal:
        weight.fill_diagonal_(0.0)
    module.weight_rec = nn.Parameter(weight)


def _recurrent_weight(module: nn.Module) -> Optional[Tensor]:
    """weight_rec with its diagonal masked (no gradient there) when zero_diagonal is set."""
    if module.weight_rec is None:
        return None
    if module.zero_diagonal:
        N = module.weight_rec.shape[0]
        return module.weight_rec * (1 - torch.eye(N, dtype=module.weight_rec.dtype, device=module.weight_rec.device))
    return module.weight_rec


class LIF(_StatefulNeuron):
    """Leaky integrate-and-fire neurons, DESIGN.md §1.

    Args (times in steps):
        tau_mem: membrane time constant, alpha = exp(-1/tau_mem); number or tensor
            broadcastable to the features (per-neuron).
        tau_syn: synaptic time constant (None: input current goes straight to the membrane).
        threshold: spike threshold theta > 0 (number or per-neuron tensor).
        reset: "subtract" (v -= theta * spikes) or "zero".
        v_min: lower bound of the membrane (None: unbounded).
        max_spikes_per_bin: 1 (single spike), k, or None (unlimited).
        surrogate: exodus.surrogate.* used in the backward pass.
        norm_input: scale the input by (1 - alpha).
        gradient: "exodus" (exact), "slayer" (reset detached, surrogate x grad_scale), "bptt".
        train_tau, train_threshold: make them nn.Parameters.
        shape: feature shape to expand per-neuron parameters to (needed to train one value per neuron).
        record_states: keep the membrane trace in ``recordings["v"]`` (and ``["i"]``).
        recurrent: add the layer's own last spikes to its input, x_t + weight_rec @ a_{t-1}
            (DESIGN.md §5); needs shape=(N,) and tau_syn=None. The previous spikes are state ``a``.
        weight_rec_init: "orthogonal" (default, x weight_rec_gain), "normal" (std gain/sqrt(N)),
            "kaiming_uniform" (nn.Linear's) or "zeros"; zero_diagonal: no self-connections.
        backend: "auto", "cupy", "cpu" or "torch".
    Input (batch, time, *features) -> spikes of the same shape and dtype.
    """

    _state_names = ("v", "i", "a")

    def __init__(
        self,
        tau_mem=20.0,
        tau_syn=None,
        threshold=1.0,
        reset: str = "subtract",
        v_min: Optional[float] = None,
        max_spikes_per_bin: Optional[int] = 1,
        surrogate: Optional[Surrogate] = None,
        norm_input: bool = False,
        gradient: str = "exodus",
        grad_scale: float = 1.0,
        train_tau: bool = False,
        train_threshold: bool = False,
        shape: Optional[Sequence[int]] = None,
        record_states: bool = False,
        recurrent: bool = False,
        weight_rec_init: str = "orthogonal",
        weight_rec_gain: float = 1.0,
        zero_diagonal: bool = False,
        backend: str = "auto",
    ):
        super().__init__(record_states, backend)
        _init_recurrent(self, recurrent, shape, weight_rec_init, weight_rec_gain, zero_diagonal, tau_syn)
        F._check_choice("reset", reset, F.RESETS)
        F._check_choice("gradient", gradient, F.GRADIENTS)
        F._max_spikes_code(max_spikes_per_bin)
        self._register("tau_mem", _time_constant("tau_mem", tau_mem, shape, train_tau), train_tau)
        if tau_syn is None:
            self.tau_syn = None
        else:
            self._register("tau_syn", _time_constant("tau_syn", tau_syn, shape, train_tau), train_tau)
        theta = _parameter_tensor("threshold", threshold, shape)
        if bool((theta <= 0).any()) or bool(torch.isnan(theta).any()):
            raise ValueError(f"threshold must be > 0, got {threshold!r}")
        if v_min is not None:
            if isinstance(v_min, bool) or not isinstance(v_min, (int, float)) or math.isnan(v_min):
                raise TypeError(f"v_min must be a number or None, got {v_min!r}")
            if bool((theta <= v_min).any()):
                raise ValueError(f"v_min ({v_min}) must be below the threshold ({threshold!r})")
        F._check_number("grad_scale", grad_scale)
        self._register("threshold", nn.Parameter(theta) if train_threshold else theta, train_threshold)
        self.reset = reset
        self.v_min = v_min
        self.max_spikes_per_bin = max_spikes_per_bin
        self.surrogate = surrogate if surrogate is not None else SingleExponential()
        if not isinstance(self.surrogate, Surrogate):
            raise TypeError(f"surrogate must be an exodus.surrogate.Surrogate, got {surrogate!r}")
        if not isinstance(norm_input, bool):
            raise TypeError(f"norm_input must be a bool, got {norm_input!r}")
        self.norm_input = norm_input
        self.gradient = gradient
        self.grad_scale = grad_scale

    def alpha(self) -> Tensor:
        return torch.exp(-1.0 / self.tau_mem)

    def forward(self, x: Tensor) -> Tensor:
        F.check_input(x)
        options = dict(backend=self.backend)
        current = x
        if self.tau_syn is not None:
            beta = torch.exp(-1.0 / self.tau_syn)
            current = F.leaky(x, beta, self._state("i", x), **options)
            self.i = current[:, -1] if current.shape[1] > 0 else self._initial("i", x)
        if self.recurrent:
            spikes, v, _ = F.adaptive_lif(
                current, self.alpha(), self.threshold, v0=self._state("v", x), weight_rec=_recurrent_weight(self),
                a0=self._state("a", x), reset=self.reset, v_min=self.v_min, max_spikes_per_bin=self.max_spikes_per_bin,
                surrogate=self.surrogate, norm_input=self.norm_input, gradient=self.gradient,
                grad_scale=self.grad_scale, state_trace=self.record_states, **options)
            self.a = spikes[:, -1].clone() if spikes.shape[1] > 0 else self._initial("a", x)
        else:
            spikes, v = F.lif(current, self.alpha(), self.threshold, self._state("v", x),
                              reset=self.reset, v_min=self.v_min, max_spikes_per_bin=self.max_spikes_per_bin,
                              surrogate=self.surrogate, norm_input=self.norm_input, gradient=self.gradient,
                              grad_scale=self.grad_scale, v_trace=self.record_states, **options)
        if self.record_states:  # v is the trace
            v_last = v[:, -1] if v.shape[1] > 0 else self._initial("v", x)
        else:  # v is the final membrane already
            v_last = v
        self.v = v_last
        if self.record_states:
            self.recordings = {"v": v} if self.tau_syn is None else {"v": v, "i": current}
        return spikes

    def _initial(self, name: str, x: Tensor) -> Tensor:
        state = self._state(name, x)
        return state if state is not None else x.new_zeros((x.shape[0], *x.shape[2:]))

    def extra_repr(self) -> str:
        return (f"reset={self.reset!r}, v_min={self.v_min}, max_spikes_per_bin={self.max_spikes_per_bin}, "
                f"gradient={self.gradient!r}, surrogate={self.surrogate}, recurrent={self.recurrent}, "
                f"backend={self.backend!r}")


class IAF(LIF):
    """Integrate-and-fire neurons: LIF with alpha = 1 (no leak). Same arguments as LIF
    except tau_mem and norm_input."""

    def __init__(self, threshold=1.0, tau_syn=None, **kwargs):
        for name in ("tau_mem", "norm_input"):
            if name in kwargs:
                raise TypeError(f"IAF has no {name}")
        super().__init__(tau_mem=math.inf, tau_syn=tau_syn, threshold=threshold, **kwargs)
        if isinstance(self.tau_mem, nn.Parameter):  # train_tau applies to tau_syn only: no leak to train
            tau_mem = self.tau_mem.detach()
            del self.tau_mem
            self.register_buffer("tau_mem", tau_mem)

    def alpha(self) -> Tensor:
        return torch.ones_like(self.tau_mem)


class ExpLeak(_StatefulNeuron):
    """Leaky integrator (no spikes, no reset): v_t = alpha v_{t-1} + u_t, alpha = exp(-1/tau_mem).
    Input (batch, time, *features) -> membrane trace of the same shape and dtype."""

    _state_names = ("v",)

    def __init__(self, tau_mem=20.0, norm_input: bool = False, train_tau: bool = False,
                 shape: Optional[Sequence[int]] = None, record_states: bool = False, backend: str = "auto"):
        super().__init__(record_states, backend)
        self._register("tau_mem", _time_constant("tau_mem", tau_mem, shape, train_tau), train_tau)
        if not isinstance(norm_input, bool):
            raise TypeError(f"norm_input must be a bool, got {norm_input!r}")
        self.norm_input = norm_input

    def alpha(self) -> Tensor:
        return torch.exp(-1.0 / self.tau_mem)

    def forward(self, x: Tensor) -> Tensor:
        F.check_input(x)
        v = F.leaky(x, self.alpha(), self._state("v", x), norm_input=self.norm_input,
                    backend=self.backend)
        if v.shape[1] > 0:
            self.v = v[:, -1]
        if self.record_states:
            self.recordings = {"v": v}
        return v


class AdaptiveLIF(LIF):
    """Adaptive LIF neurons: membrane v and adaptation w (DESIGN.md §4), optionally recurrent (§5).

        theta_t = threshold + adapt_threshold * w_{t-1}        (beta; may go <= 0 for beta < 0: never clamped)
        u_t     = c (x_t - adapt_current * w_{t-1})              (gamma; c = 1 - alpha with norm_input, else 1)
        h_t     = alpha v_{t-1} + u_t,  spike at theta_t, reset, v_t
        w_t     = rho w_{t-1} + adapt_membrane * h_t + adapt_spike * a_t      (zeta, eta)

    Args (times in steps) as LIF, plus:
        tau_adapt: adaptation time constant, rho = exp(-1/tau_adapt) (number or per-neuron tensor).
        adapt_threshold, adapt_current, adapt_membrane, adapt_spike: the couplings beta, gamma, zeta,
            eta (numbers or per-neuron tensors). adapt_spike=None ties eta = 1 - rho (Bellec et al.'s ALIF).
        train_adaptation: make tau_adapt and the four couplings nn.Parameters (per neuron with ``shape``).
    States (batch, *features), carried between calls: ``v``, ``w`` and (recurrent) the last spikes ``a``.
    With all four couplings 0 (and not trained) the layer computes exactly what exodus.LIF computes.
    Input (batch, time, *features) -> spikes of the same shape and dtype.
    """

    _state_names = ("v", "w", "a")

    def __init__(
        self,
        tau_mem=20.0,
        tau_adapt=200.0,
        threshold=1.0,
        adapt_threshold=0.0,
        adapt_current=0.0,
        adapt_membrane=0.0,
        adapt_spike=0.0,
        reset: str = "subtract",
        v_min: Optional[float] = None,
        max_spikes_per_bin: Optional[int] = 1,
        surrogate: Optional[Surrogate] = None,
        norm_input: bool = False,
        gradient: str = "exodus",
        grad_scale: float = 1.0,
        train_tau: bool = False,
        train_threshold: bool = False,
        train_adaptation: bool = False,
        recurrent: bool = False,
        weight_rec_init: str = "orthogonal",
        weight_rec_gain: float = 1.0,
        zero_diagonal: bool = False,
        shape: Optional[Sequence[int]] = None,
        record_states: bool = False,
        backend: str = "auto",
        _fixed: tuple = (),
    ):
        super().__init__(tau_mem=tau_mem, tau_syn=None, threshold=threshold, reset=reset, v_min=v_min,
                         max_spikes_per_bin=max_spikes_per_bin, surrogate=surrogate, norm_input=norm_input,
                         gradient=gradient, grad_scale=grad_scale, train_tau=train_tau,
                         train_threshold=train_threshold, shape=shape, record_states=record_states,
                         recurrent=recurrent, weight_rec_init=weight_rec_init, weight_rec_gain=weight_rec_gain,
                         zero_diagonal=zero_diagonal, backend=backend)
        if not isinstance(train_adaptation, bool):
            raise TypeError(f"train_adaptation must be a bool, got {train_adaptation!r}")
        self.train_adaptation = train_adaptation
        self._register("tau_adapt", _time_constant("tau_adapt", tau_adapt, shape, train_adaptation), train_adaptation)
        self.tied_spike = adapt_spike is None
        couplings = dict(adapt_threshold=adapt_threshold, adapt_current=adapt_current, adapt_membrane=adapt_membrane)
        if not self.tied_spike:
            couplings["adapt_spike"] = adapt_spike
        else:
            self.adapt_spike = None
        for name, value in couplings.items():
            tensor = _parameter_tensor(name, value, shape)
            if not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"{name} must be finite, got {value!r}")
            if train_adaptation and name not in _fixed:  # presets keep the couplings they fix constant
                self.register_parameter(name, nn.Parameter(tensor))
            elif not isinstance(value, Tensor):
                setattr(self, name, float(value))  # a number (also with shape): all four 0 run the LIF kernels
            else:
                self.register_buffer(name, tensor)

    def rho(self) -> Tensor:
        return torch.exp(-1.0 / self.tau_adapt)

    def couplings(self) -> tuple:
        """(beta, gamma, zeta, eta) as passed to exodus.functional.adaptive_lif."""
        eta = 1.0 - self.rho() if self.tied_spike else self.adapt_spike
        return self.adapt_threshold, self.adapt_current, self.adapt_membrane, eta

    def forward(self, x: Tensor) -> Tensor:
        F.check_input(x)
        spikes, v, w = F.adaptive_lif(
            x, self.alpha(), self.threshold, self.rho(), *self.couplings(), v0=self._state("v", x),
            w0=self._state("w", x), weight_rec=_recurrent_weight(self), a0=self._state("a", x) if self.recurrent else None,
            reset=self.reset, v_min=self.v_min, max_spikes_per_bin=self.max_spikes_per_bin, surrogate=self.surrogate,
            norm_input=self.norm_input, gradient=self.gradient, grad_scale=self.grad_scale,
            state_trace=self.record_states, backend=self.backend)
        last = (lambda s, name: s[:, -1] if s.shape[1] > 0 else self._initial(name, x)) if self.record_states \
            else (lambda s, name: s)
        self.v = last(v, "v")
        # Without adaptation w stays 0: keep no state, so the next call takes the plain LIF kernels too.
        adaptive = not all(isinstance(c, float) and c == 0 for c in self.couplings())
        self.w = last(w, "w") if adaptive else None
        if self.recurrent:
            self.a = spikes[:, -1].clone() if spikes.shape[1] > 0 else self._initial("a", x)
        if self.record_states:
            self.recordings = {"v": v, "w": w}
        return spikes

    def extra_repr(self) -> str:
        return super().extra_repr() + f", tied_spike={self.tied_spike}"


class ALIF(AdaptiveLIF):
    """ALIF of Bellec et al. 2018 (LSNN): threshold theta + beta w, w_t = rho w_{t-1} + (1 - rho) a_t
    (adapt_spike tied to 1 - rho), no adaptation current or membrane coupling. With
    train_adaptation, tau_adapt and beta are trained (gamma = zeta = 0 stay fixed). Other arguments as
    AdaptiveLIF."""

    def __init__(self, tau_mem=20.0, tau_adapt=200.0, adapt_threshold=1.8, **kwargs):
        for name in ("adapt_current", "adapt_membrane", "adapt_spike"):
            if name in kwargs:
                raise TypeError(f"ALIF fixes {name}; use AdaptiveLIF to set it")
        super().__init__(tau_mem=tau_mem, tau_adapt=tau_adapt, adapt_threshold=adapt_threshold, adapt_current=0.0,
                         adapt_membrane=0.0, adapt_spike=None, _fixed=("adapt_current", "adapt_membrane"), **kwargs)


class AdLIF(AdaptiveLIF):
    """adLIF of Bittar & Garner 2022: adaptation current w subtracted from the input (gamma = 1),
    normalised input, w_t = rho w_{t-1} + a h_t + b a_t, threshold 1, subtract reset, no threshold
    adaptation. a (in [-1, 1] in their work) and b (in [0, 2]) are numbers or per-neuron tensors;
    with train_adaptation, tau_adapt, a and b are trained (beta = 0, gamma = 1 stay fixed). With
    norm_input the input is scaled by 1 - alpha: scale the input weights up (e.g. weight_gain) or the
    layer stays nearly silent on sparse input. Other arguments as AdaptiveLIF."""

    def __init__(self, tau_mem=20.0, tau_adapt=200.0, a=0.0, b=0.0, **kwargs):
        for name in ("adapt_threshold", "adapt_current", "adapt_membrane", "adapt_spike", "norm_input"):
            if name in kwargs:
                raise TypeError(f"AdLIF fixes {name}; use AdaptiveLIF to set it")
        super().__init__(tau_mem=tau_mem, tau_adapt=tau_adapt, adapt_threshold=0.0, adapt_current=1.0,
                         adapt_membrane=a, adapt_spike=b, norm_input=True,
                         _fixed=("adapt_threshold", "adapt_current"), **kwargs)


class LinearLIF(LIF):
    """A fused Linear -> LIF block: spikes of LIF(s W^T + b), (batch, time, in_features) -> spikes
    (batch, time, out_features); carries the membrane ``v`` (batch, out_features) between calls.

    gradient: "exodus" (exact, dense), "sparse" (exact, visits only the active neuron-steps; DESIGN.md
    §6), "online" (forward-mode traces carried across calls: train a long sequence chunk by chunk with
    memory flat in its length, exodus.online; DESIGN.md §7), "slayer" or "bptt". With "sparse" the surrogate is truncated to |h - theta| < band theta
    (``exodus.surrogate.Truncated(surrogate, band)``; default surrogate SingleExponential) unless it is
    a Truncated already; pass the same Truncated surrogate to a dense block to compute the same function.
    detach_reset=True (sparse only) drops the reset from the gradient, as S3GD does. "sparse" needs one
    tau_mem for the block (a number; per-neuron thresholds are fine). Other arguments as for LIF
    (no tau_syn, no recurrent). Weights are initialised like nn.Linear's.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, tau_mem=20.0, threshold=1.0, *,
                 gradient: str = "exodus", band: float = 0.2, detach_reset: bool = False,
                 surrogate: Optional[Surrogate] = None, **lif_options):
        for name in ("tau_syn", "recurrent"):
            if lif_options.get(name):
                raise ValueError(f"LinearLIF has no {name}: use nn.Linear followed by exodus.LIF")
        F._check_choice("gradient", gradient, (*F.LINEAR_GRADIENTS, "online"))
        if gradient == "sparse":
            if surrogate is not None and not isinstance(surrogate, Surrogate):
                raise TypeError(f"surrogate must be an exodus.surrogate.Surrogate, got {surrogate!r}")
            if not isinstance(surrogate, Truncated):
                surrogate = Truncated(surrogate if surrogate is not None else SingleExponential(), band)
        elif detach_reset and gradient != "online":
            raise ValueError("detach_reset applies to gradient='sparse' or 'online'; for a dense detached reset use "
                             "gradient='slayer'")
        super().__init__(tau_mem=tau_mem, threshold=threshold, surrogate=surrogate,
                         gradient="exodus" if gradient in ("sparse", "online") else gradient, **lif_options)
        if gradient in ("sparse", "online") and self.tau_mem.numel() != 1:
            raise ValueError(f"LinearLIF(gradient={gradient!r}) needs one tau_mem for the block (a number), got shape "
                             f"{tuple(self.tau_mem.shape)}; per-neuron tau: use gradient='exodus'")
        self.traces = None  # gradient="online": forward-mode traces carried between calls (exodus.online)
        self.gradient = gradient
        self.detach_reset = detach_reset
        self.in_features, self.out_features = in_features, out_features
        linear = nn.Linear(in_features, out_features, bias=bias)
        self.weight = linear.weight
        self.bias = linear.bias

    def reset_states(self) -> None:
        super().reset_states()
        self.traces = None

    def forward(self, s: Tensor) -> Tensor:
        if self.gradient == "online":
            from .online import online_forward
            return online_forward(self, s)
        F.check_input(s)
        v0 = self.v if (self.v is not None and tuple(self.v.shape) == (s.shape[0], self.out_features)
                        and self.v.device == s.device) else None
        spikes, v = F.linear_lif(s, self.weight, self.bias, self.alpha(), self.threshold, v0, reset=self.reset,
                                 v_min=self.v_min, max_spikes_per_bin=self.max_spikes_per_bin, surrogate=self.surrogate,
                                 norm_input=self.norm_input, gradient=self.gradient, detach_reset=self.detach_reset,
                                 grad_scale=self.grad_scale, v_trace=self.record_states, backend=self.backend)
        if self.record_states:
            self.recordings = {"v": v}
            v = v[:, -1] if v.shape[1] > 0 else (v0 if v0 is not None else s.new_zeros((s.shape[0], self.out_features)))
        self.v = v
        return spikes

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " + super().extra_repr()
