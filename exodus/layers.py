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
from .surrogate import SingleExponential, Surrogate

__all__ = ["LIF", "IAF", "ExpLeak"]


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
        backend: "auto", "cupy", "cpu" or "torch".
    Input (batch, time, *features) -> spikes of the same shape and dtype.
    """

    _state_names = ("v", "i")

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
        backend: str = "auto",
    ):
        super().__init__(record_states, backend)
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
                f"gradient={self.gradient!r}, surrogate={self.surrogate}, backend={self.backend!r}")


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
