"""NIR (Neuromorphic Intermediate Representation, ``nir`` 1.0.x) export and import. See docs/nir.md.

    graph = exodus.nir.to_nir(net, sample_input, dt=1.0)     # nir.NIRGraph; nir.write("net.nir", graph)
    net = exodus.nir.from_nir("net.nir", dt=1.0)             # stateful nn.Module, (batch, time, ...) input
    out = exodus.nir.simulate(graph, x, dt=1.0)              # plain reference simulator of a NIR graph

NIR nodes are continuous-time and carry no dt. Every exodus neuron is the discrete recursion
v_t = alpha v_{t-1} + c x_t (DESIGN.md §1, c = 1 - alpha with norm_input, else 1); NIR's LIF is
tau dv/dt = (v_leak - v) + R I. ``discretization`` fixes how one becomes the other (docs/nir.md):

    "exact"    alpha = exp(-dt/tau), c = (1 - alpha) R     (input held constant over the step; default)
    "euler"    alpha = 1 - dt/tau,   c = (1 - alpha) R     (forward Euler: snnTorch's and Norse's reading)
    "impulse"  alpha = exp(-dt/tau), c = R                 (input added as a jump: sinabs' reading)

and IF (dv/dt = R I) becomes v_t = v_{t-1} + c x_t with c = dt R ("exact", "euler") or R ("impulse").
The exodus side of this module needs only ``nir`` (not nirtorch): graphs are walked here.
"""
from __future__ import annotations

import copy
import math
import operator
import pathlib
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

try:
    import nir
except ImportError as error:  # pragma: no cover - exercised only without nir installed
    raise ImportError("exodus.nir needs the NIR package: pip install nir  (or pip install 'exodus-snn[nir]'); "
                      "nirtorch is not needed, exodus walks NIR graphs itself") from error

import numpy as np
import torch
from torch import Tensor, nn

from . import layers as L

__all__ = ["to_nir", "from_nir", "simulate", "GraphModule", "TimeDistributed", "Scale", "Threshold",
           "DISCRETIZATIONS", "NIR_HAS_V_RESET"]

DISCRETIZATIONS = ("exact", "euler", "impulse")
RESET_FALLBACKS = ("error", "metadata")

# nir >= 1.0.6 gives LIF/CubaLIF/IF a v_reset field (reset *to* v_reset, i.e. zero reset when 0);
# nir 1.0.4 has none and documents the subtract reset v - v_threshold.
NIR_HAS_V_RESET = "v_reset" in getattr(nir.LIF, "__dataclass_fields__", {})
NATIVE_RESET = "zero" if NIR_HAS_V_RESET else "subtract"
RESET_KEY = "reset"  # node metadata written by exodus when the reset is not the installed NIR's native one
SPIKING_NODES = (nir.LIF, nir.CubaLIF, nir.IF)


# ----------------------------------------------------------------------------------------------
# Small modules that give NIR's stateless nodes the (batch, time, *features) convention.

class TimeDistributed(nn.Module):
    """Apply a per-step module (Conv, pooling, ...) to (batch, time, *features): batch and time are
    merged into one dim for the call and split again afterwards."""

    def __init__(self, module: nn.Module):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"TimeDistributed wraps an nn.Module, got {type(module).__name__}")
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() < 2:
            raise ValueError("TimeDistributed expects a tensor of shape (batch, time, *features)")
        batch, steps = x.shape[:2]
        return self.module(x.flatten(0, 1)).unflatten(0, (batch, steps))


class Scale(nn.Module):
    """Elementwise y = scale * x + bias (NIR Scale; bias only from an imported v_leak), broadcast over
    (batch, time); scale and bias have the feature shape (or are scalars)."""

    def __init__(self, scale, bias=None):
        super().__init__()
        self.register_buffer("scale", _tensor(_array(scale, "scale")))
        self.register_buffer("bias", None if bias is None else _tensor(_array(bias, "bias")))

    def forward(self, x: Tensor) -> Tensor:
        y = x * self.scale.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)


class Threshold(nn.Module):
    """NIR Threshold: z = 1[x > threshold] elementwise (no state, no gradient through the step)."""

    def __init__(self, threshold):
        super().__init__()
        self.register_buffer("threshold", _tensor(_array(threshold, "threshold")))

    def forward(self, x: Tensor) -> Tensor:
        return (x > self.threshold.to(x.dtype)).to(x.dtype)


class GraphModule(nn.Module):
    """A NIR graph as a module: each node's input is the sum of its incoming edges (NIR semantics),
    nodes run in graph order on whole (batch, time, *features) sequences. Layers keep their state
    between calls; ``reset_states()`` zeroes all of it. Cycles other than a neuron's recurrent
    weight (folded into a recurrent exodus layer at import) are refused."""

    def __init__(self, modules: Dict[str, nn.Module], edges: List[Tuple[str, str]], input_name: str,
                 output_name: str, input_shape: Optional[Tuple[int, ...]]):
        super().__init__()
        self.names = list(modules)
        self.nodes = nn.ModuleDict({_module_key(name): module for name, module in modules.items()})
        self.edges = list(edges)
        self.input_name, self.output_name = input_name, output_name
        self.input_shape = input_shape
        self.order = _topological_order(self.names, self.edges)
        self.sources = defaultdict(list)
        for source, target in self.edges:
            self.sources[target].append(source)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() < 2:
            raise ValueError("input must be a tensor of shape (batch, time, *features)")
        features = tuple(x.shape[2:])
        # snnTorch writes the Input shape with the batch dim: accept (batch, *features) too
        if self.input_shape is not None and features not in (self.input_shape, self.input_shape[1:]):
            raise ValueError(f"input features {tuple(x.shape[2:])} do not match the graph's input shape "
                             f"{self.input_shape} (input is (batch, time, *features))")
        values = {}
        for name in self.order:
            if name == self.input_name:
                value = x
            else:
                inputs = [values[source] for source in self.sources[name]]
                if not inputs:
                    raise ValueError(f"NIR node {name!r} has no input")
                value = inputs[0]
                for other in inputs[1:]:
                    value = value + other
            values[name] = self.nodes[_module_key(name)](value)
        return values[self.output_name]

    def reset_states(self) -> None:
        for module in self.modules():
            if module is not self and hasattr(module, "reset_states"):
                module.reset_states()


def _module_key(name: str) -> str:
    return "n_" + name.replace(".", "__")


def _topological_order(names: Sequence[str], edges: Sequence[Tuple[str, str]]) -> List[str]:
    incoming = {name: 0 for name in names}
    outgoing = defaultdict(list)
    for source, target in edges:
        for end in (source, target):
            if end not in incoming:
                raise ValueError(f"NIR edge ({source!r}, {target!r}) names an unknown node {end!r}")
        incoming[target] += 1
        outgoing[source].append(target)
    ready = [name for name in names if incoming[name] == 0]
    order = []
    while ready:
        name = ready.pop(0)
        order.append(name)
        for target in outgoing[name]:
            incoming[target] -= 1
            if incoming[target] == 0:
                ready.append(target)
    if len(order) != len(names):
        cyclic = sorted(set(names) - set(order))
        raise ValueError(f"NIR graph has a cycle through {cyclic} that is not a neuron's recurrent weight "
                         "(neuron -> Linear/Affine -> same neuron); exodus cannot run it")
    return order


# ----------------------------------------------------------------------------------------------
# Parameter conversions (DESIGN.md §1: alpha = exp(-1/tau_steps); docs/nir.md for the mapping).

def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _check_dt(dt) -> float:
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not math.isfinite(dt) or dt <= 0:
        raise ValueError(f"dt must be a positive finite number (seconds per step), got {dt!r}")
    return float(dt)


def _array(value, name: str) -> np.ndarray:
    """A NIR parameter (numpy array, torch tensor as sinabs writes, or number) as float64 numpy."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"NIR parameter {name} must be numeric, got {value!r}") from None
    if not np.all(np.isfinite(array)) and name not in ("tau", "tau_mem", "tau_syn"):
        raise ValueError(f"NIR parameter {name} must be finite, got {array}")
    return array


def _decay(tau: np.ndarray, dt: float, discretization: str, name: str) -> np.ndarray:
    """alpha of one step: exp(-dt/tau) ("exact", "impulse") or 1 - dt/tau ("euler")."""
    if np.any(~(tau > 0)):
        raise ValueError(f"NIR {name} must be > 0, got {tau}")
    alpha = 1.0 - dt / tau if discretization == "euler" else np.exp(-dt / tau)
    if np.any(alpha <= 0):
        raise ValueError(f"forward Euler with dt={dt} >= {name}={tau.min()} gives a decay <= 0: use a smaller dt "
                         "or discretization='exact'")
    return alpha


def _input_gain(alpha: np.ndarray, r: np.ndarray, discretization: str) -> np.ndarray:
    """Input coefficient c of v_t = alpha v + c x for tau dv/dt = -v + R I (module docstring)."""
    return r if discretization == "impulse" else (1.0 - alpha) * r


def _tau_steps(alpha: np.ndarray) -> np.ndarray:
    """exodus's tau_mem (in steps) for a given alpha: alpha = exp(-1/tau_steps)."""
    with np.errstate(divide="ignore"):
        return np.where(alpha >= 1.0, np.inf, -1.0 / np.log(alpha))


def _nir_tau(alpha: np.ndarray, dt: float, discretization: str) -> np.ndarray:
    """Inverse of _decay: the NIR time constant (seconds) that discretises to alpha."""
    if discretization == "euler":
        return dt / (1.0 - alpha)
    return -dt / np.log(alpha)


def _nir_r(alpha: np.ndarray, gain: np.ndarray, discretization: str) -> np.ndarray:
    """Inverse of _input_gain: R such that the discrete input coefficient is ``gain``."""
    return gain if discretization == "impulse" else gain / (1.0 - alpha)


def _tensor(array: np.ndarray) -> Tensor:
    return torch.tensor(np.array(array, dtype=np.float64), dtype=torch.get_default_dtype())


def _is_one(array: np.ndarray) -> bool:
    return bool(np.allclose(array, 1.0, rtol=1e-6, atol=0.0))


# ----------------------------------------------------------------------------------------------
# Import: NIR graph -> exodus modules.

def _node_reset(node, override: Optional[str]) -> str:
    """Reset of a spiking NIR node: override > exodus metadata > v_reset field (zero) > NIR 1.0.4 (subtract)."""
    if override is not None:
        return override
    metadata = getattr(node, "metadata", None) or {}
    if RESET_KEY in metadata:
        reset = metadata[RESET_KEY]
        reset = reset.decode() if isinstance(reset, bytes) else str(reset)
        _check_choice(f"metadata[{RESET_KEY!r}] of the NIR node", reset, ("subtract", "zero"))
        return reset
    v_reset = getattr(node, "v_reset", None)
    if v_reset is not None:
        if np.any(_array(v_reset, "v_reset") != 0):
            raise ValueError("exodus resets the membrane to zero or by subtraction only; this NIR node resets to "
                             f"v_reset={v_reset} != 0")
        return "zero"
    return "subtract"


def _scaled(neuron: nn.Module, gain: np.ndarray, offset: Optional[np.ndarray] = None) -> nn.Module:
    """neuron(gain * (x + offset)), leaving out the Scale when gain == 1 and no offset."""
    if offset is not None and np.any(offset != 0):
        return nn.Sequential(Scale(gain, gain * offset), neuron)
    if _is_one(gain):
        return neuron
    return nn.Sequential(Scale(gain), neuron)


def _leak_offset(node, r: np.ndarray, kind: str, discretization: str) -> Optional[np.ndarray]:
    """v_leak as an input offset v_leak / R: (v_leak - v) + R I = -v + R (I + v_leak / R)."""
    v_leak = _array(node.v_leak, "v_leak")
    if np.all(v_leak == 0):
        return None
    if discretization == "impulse":
        raise ValueError(f"NIR {kind} with v_leak != 0 has no 'impulse' reading; use discretization='exact' or 'euler'")
    if np.any(r == 0):
        raise ValueError(f"NIR {kind} with v_leak != 0 and r == 0 cannot be mapped to exodus")
    return v_leak / r


def _shape_of(*arrays: np.ndarray) -> Optional[Tuple[int, ...]]:
    shape = np.broadcast_shapes(*(a.shape for a in arrays))
    return tuple(int(s) for s in shape) if len(shape) else None


def _import_neuron(node, dt: float, discretization: str, reset: Optional[str], weight_rec=None) -> nn.Module:
    """One NIR neuron node (optionally with a recurrent weight) as an exodus layer (+ input Scale)."""
    recurrent = weight_rec is not None
    rec = dict(recurrent=True, shape=(weight_rec.shape[0],), weight_rec_init="zeros") if recurrent else {}

    def options(*arrays):  # per-neuron parameters broadcast to shape; recurrent layers need shape=(N,)
        return rec if recurrent else dict(shape=_shape_of(*arrays))

    def finish(layer):
        if recurrent:
            with torch.no_grad():
                layer.weight_rec.copy_(_tensor(weight_rec))
        return layer

    if isinstance(node, nir.LIF):
        tau, r, theta = _array(node.tau, "tau"), _array(node.r, "r"), _array(node.v_threshold, "v_threshold")
        alpha = _decay(tau, dt, discretization, "tau")
        gain = _input_gain(alpha, r, discretization)
        norm_input = discretization == "exact" and bool(np.all(r == 1))
        layer = finish(L.LIF(tau_mem=_tensor(_tau_steps(alpha)), threshold=_tensor(theta),
                             reset=_node_reset(node, reset), norm_input=norm_input, **options(tau, r, theta)))
        return _scaled(layer, np.ones_like(gain) if norm_input else gain, _leak_offset(node, r, "LIF", discretization))
    if isinstance(node, nir.CubaLIF):
        tau_mem, tau_syn = _array(node.tau_mem, "tau_mem"), _array(node.tau_syn, "tau_syn")
        r, theta, w_in = _array(node.r, "r"), _array(node.v_threshold, "v_threshold"), _array(node.w_in, "w_in")
        if recurrent:
            raise ValueError("a recurrent CubaLIF cannot be imported: exodus' recurrent layers have no synaptic "
                             "current (tau_syn)")
        if np.any(_array(node.v_leak, "v_leak") != 0):
            raise ValueError("CubaLIF with v_leak != 0 cannot be imported: exodus has no constant membrane input "
                             "behind the synapse")
        alpha = _decay(tau_mem, dt, discretization, "tau_mem")
        beta = _decay(tau_syn, dt, discretization, "tau_syn")
        # i_t = beta i + c_syn x ; v_t = alpha v + c_mem i  ==  exodus LIF(tau_syn) on (c_syn c_mem) x
        gain = _input_gain(beta, w_in, discretization) * _input_gain(alpha, r, discretization)
        layer = L.LIF(tau_mem=_tensor(_tau_steps(alpha)), tau_syn=_tensor(_tau_steps(beta)), threshold=_tensor(theta),
                      reset=_node_reset(node, reset), shape=_shape_of(tau_mem, tau_syn, r, theta, w_in))
        return _scaled(layer, gain)
    if isinstance(node, nir.IF):
        r, theta = _array(node.r, "r"), _array(node.v_threshold, "v_threshold")
        gain = r if discretization == "impulse" else dt * r  # v_t = v + dt R x
        layer = finish(L.IAF(threshold=_tensor(theta), reset=_node_reset(node, reset), **options(r, theta)))
        return _scaled(layer, gain)
    raise ValueError(f"a recurrent {type(node).__name__} cannot be imported (only LIF and IF)")


def _import_leaky(node, dt: float, discretization: str) -> nn.Module:
    if isinstance(node, nir.LI):
        tau, r = _array(node.tau, "tau"), _array(node.r, "r")
        alpha = _decay(tau, dt, discretization, "tau")
        norm_input = discretization == "exact" and bool(np.all(r == 1))
        layer = L.ExpLeak(tau_mem=_tensor(_tau_steps(alpha)), norm_input=norm_input, shape=_shape_of(tau, r))
        gain = np.ones_like(r) if norm_input else _input_gain(alpha, r, discretization)
        return _scaled(layer, gain, _leak_offset(node, r, "LI", discretization))
    if isinstance(node, nir.I):
        r = _array(node.r, "r")
        return _scaled(L.ExpLeak(tau_mem=math.inf, shape=_shape_of(r)), r if discretization == "impulse" else dt * r)
    # nir >= 1.0.6 CubaLI: two leaky stages in a row, i_t = beta i + c_syn x, v_t = alpha v + c_mem i
    tau_mem, tau_syn = _array(node.tau_mem, "tau_mem"), _array(node.tau_syn, "tau_syn")
    r, w_in = _array(node.r, "r"), _array(node.w_in, "w_in")
    if np.any(_array(node.v_leak, "v_leak") != 0):
        raise ValueError("CubaLI with v_leak != 0 cannot be imported: no constant input behind the synapse")
    alpha = _decay(tau_mem, dt, discretization, "tau_mem")
    beta = _decay(tau_syn, dt, discretization, "tau_syn")
    synapse = _scaled(L.ExpLeak(tau_mem=_tensor(_tau_steps(beta)), shape=_shape_of(tau_syn, w_in)),
                      _input_gain(beta, w_in, discretization))
    membrane = _scaled(L.ExpLeak(tau_mem=_tensor(_tau_steps(alpha)), shape=_shape_of(tau_mem, r)),
                       _input_gain(alpha, r, discretization))
    return nn.Sequential(synapse, membrane)


def _pair(value) -> Tuple[int, ...]:
    array = np.atleast_1d(_array(value, "kernel/stride/padding")).astype(int)
    return tuple(int(v) for v in (np.repeat(array, 2) if array.size == 1 else array))


def _conv_arg(value):
    if isinstance(value, (str, bytes)):
        return value.decode() if isinstance(value, bytes) else value
    array = np.atleast_1d(np.asarray(value)).astype(int)
    return tuple(int(v) for v in array)


def _import_stateless(node) -> nn.Module:
    if isinstance(node, (nir.Affine, nir.Linear)):
        weight = _array(node.weight, "weight")
        if weight.ndim != 2:
            raise ValueError(f"NIR {type(node).__name__} weight must be 2-D (out, in), got shape {weight.shape}")
        has_bias = isinstance(node, nir.Affine)
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=has_bias)
        with torch.no_grad():  # nirtorch's default Affine mapping drops the bias; here it is copied
            linear.weight.copy_(_tensor(weight))
            if has_bias:
                linear.bias.copy_(_tensor(np.broadcast_to(_array(node.bias, "bias"), (weight.shape[0],))))
        return linear
    if isinstance(node, (nir.Conv1d, nir.Conv2d)):
        weight = _array(node.weight, "weight")
        conv_class = nn.Conv1d if isinstance(node, nir.Conv1d) else nn.Conv2d
        if weight.ndim != (3 if conv_class is nn.Conv1d else 4):
            raise ValueError(f"NIR {type(node).__name__} weight has shape {weight.shape}")
        groups = int(np.asarray(node.groups))
        conv = conv_class(weight.shape[1] * groups, weight.shape[0], weight.shape[2:], stride=_conv_arg(node.stride),
                          padding=_conv_arg(node.padding), dilation=_conv_arg(node.dilation), groups=groups)
        with torch.no_grad():
            conv.weight.copy_(_tensor(weight))
            conv.bias.copy_(_tensor(np.broadcast_to(_array(node.bias, "bias"), (weight.shape[0],))))
        return TimeDistributed(conv)
    if isinstance(node, (nir.AvgPool2d, nir.SumPool2d)):
        divisor = 1 if isinstance(node, nir.SumPool2d) else None  # sum pooling = average x kernel area
        return TimeDistributed(nn.AvgPool2d(_pair(node.kernel_size), _pair(node.stride), _pair(node.padding),
                                            divisor_override=divisor))
    if isinstance(node, nir.Flatten):
        start, end = int(node.start_dim), int(node.end_dim)  # NIR dims exclude batch; ours exclude (batch, time)
        return nn.Flatten(start + 2 if start >= 0 else start, end + 2 if end >= 0 else end)
    if isinstance(node, nir.Scale):
        return Scale(_array(node.scale, "scale"))
    if isinstance(node, nir.Threshold):
        return Threshold(_array(node.threshold, "threshold"))
    raise ValueError(f"NIR node type {type(node).__name__} is not supported by exodus.nir.from_nir "
                     "(supported: Input, Output, Affine, Linear, Conv1d, Conv2d, Flatten, AvgPool2d, SumPool2d, "
                     "Scale, Threshold, LIF, CubaLIF, IF, LI, CubaLI, I, recurrent LIF/IF subgraphs)")


_CUBA_LI = getattr(nir, "CubaLI", None)
_LEAKY_NODES = tuple(t for t in (nir.LI, nir.I, _CUBA_LI) if t is not None)


def _recurrent_pairs(graph) -> Dict[str, str]:
    """{neuron: weight} for every 2-cycle neuron -> Linear/Affine -> neuron whose weight node has no
    other edge (snnTorch's RLeaky layout)."""
    pairs = {}
    for source, target in graph.edges:
        neuron, weight = graph.nodes.get(source), graph.nodes.get(target)
        if not isinstance(neuron, SPIKING_NODES) or not isinstance(weight, (nir.Linear, nir.Affine)):
            continue
        if (target, source) not in graph.edges:
            continue
        touching = [e for e in graph.edges if target in e]
        if len(touching) == 2:
            pairs[source] = target
    return pairs


def _recurrent_weight(node) -> np.ndarray:
    weight = _array(node.weight, "weight")
    if isinstance(node, nir.Affine) and np.any(_array(node.bias, "bias") != 0):
        raise ValueError("a recurrent Affine with a non-zero bias cannot be imported: exodus' recurrence is "
                         "weight_rec @ a_{t-1} without bias")
    if weight.ndim != 2 or weight.shape[0] != weight.shape[1]:
        raise ValueError(f"recurrent weight must be square (N, N), got shape {weight.shape}")
    return weight


def _single_recurrent_subgraph(graph):
    """A nested graph Input -> neuron <-> weight -> Output collapses to (neuron, weight); else None."""
    inner = {name: node for name, node in graph.nodes.items() if not isinstance(node, (nir.Input, nir.Output))}
    pairs = _recurrent_pairs(graph)
    if len(inner) == 2 and len(pairs) == 1:
        (neuron, weight), = pairs.items()
        return graph.nodes[neuron], graph.nodes[weight]
    return None


def _build(graph, dt: float, discretization: str, reset: Optional[str]) -> GraphModule:
    if not isinstance(graph, nir.NIRGraph):
        raise TypeError(f"expected a nir.NIRGraph, got {type(graph).__name__}")
    pairs = _recurrent_pairs(graph)
    folded = set(pairs.values())
    modules, inputs, outputs = {}, [], []
    for name, node in graph.nodes.items():
        if name in folded:
            continue
        if isinstance(node, nir.Input):
            inputs.append(name)
            modules[name] = nn.Identity()
        elif isinstance(node, nir.Output):
            outputs.append(name)
            modules[name] = nn.Identity()
        elif name in pairs:
            modules[name] = _import_neuron(node, dt, discretization, reset,
                                           weight_rec=_recurrent_weight(graph.nodes[pairs[name]]))
        elif isinstance(node, SPIKING_NODES):
            modules[name] = _import_neuron(node, dt, discretization, reset)
        elif isinstance(node, _LEAKY_NODES):
            modules[name] = _import_leaky(node, dt, discretization)
        elif isinstance(node, nir.NIRGraph):
            single = _single_recurrent_subgraph(node)
            if single is not None:
                modules[name] = _import_neuron(single[0], dt, discretization, reset,
                                               weight_rec=_recurrent_weight(single[1]))
            else:
                modules[name] = _build(node, dt, discretization, reset)
        else:
            modules[name] = _import_stateless(node)
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(f"exodus.nir.from_nir needs exactly one Input and one Output node, got inputs {inputs} "
                         f"and outputs {outputs}")
    edges = [(s, t) for s, t in graph.edges if s not in folded and t not in folded]
    input_type = graph.nodes[inputs[0]].input_type.get("input") if graph.nodes[inputs[0]].input_type else None
    input_shape = None
    if input_type is not None and np.asarray(input_type).size > 0:
        input_shape = tuple(int(s) for s in np.asarray(input_type).reshape(-1))
    return GraphModule(modules, edges, inputs[0], outputs[0], input_shape)


def from_nir(graph_or_path, dt: float = 1.0, discretization: str = "exact", reset: Optional[str] = None) -> GraphModule:
    """A NIR graph (``nir.NIRGraph`` or a path to a file written by ``nir.write``) as a stateful module
    taking (batch, time, *features).

    Args:
        dt: seconds per time step (the graph's time constants are in seconds). snnTorch writes graphs
            for dt = 1e-4, Norse for 1e-3, sinabs (and exodus.nir.to_nir's default) for 1.
        discretization: "exact", "euler" or "impulse" (module docstring, docs/nir.md). Use "euler" for
            snnTorch/Norse graphs and "impulse" for sinabs' layers without norm_input.
        reset: None (each spiking node's own: exodus metadata, else v_reset = 0 -> "zero", else NIR 1.0.4's
            "subtract") or "subtract"/"zero" for all spiking nodes.
    Neurons become exodus.LIF / IAF / ExpLeak (float32 parameters, single spike per step, surrogate
    gradients as exodus' defaults); a neuron -> Linear/Affine -> same neuron cycle becomes a recurrent layer.
    """
    dt = _check_dt(dt)
    _check_choice("discretization", discretization, DISCRETIZATIONS)
    if reset is not None:
        _check_choice("reset", reset, ("subtract", "zero"))
    if isinstance(graph_or_path, (str, pathlib.Path)):
        path = pathlib.Path(graph_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"no NIR file at {path}")
        graph_or_path = nir.read(path)
    return _build(graph_or_path, dt, discretization, reset)


# ----------------------------------------------------------------------------------------------
# Export: exodus / torch modules -> NIR graph.

class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        if isinstance(module, (L._StatefulNeuron, TimeDistributed, Scale, Threshold, GraphModule)):
            return True
        return super().is_leaf_module(module, qualified_name)


_PASS_THROUGH = (nn.Identity, nn.Dropout)


def _numpy(value, shape=None) -> np.ndarray:
    array = value.detach().cpu().double().numpy() if isinstance(value, Tensor) else np.asarray(value, np.float64)
    if shape is not None:
        array = np.broadcast_to(array, shape)
    return np.ascontiguousarray(array, dtype=np.float32)


def _export_reset(layer, fallback: str, name: str) -> dict:
    """v_reset / metadata for the layer's reset under the installed NIR version (module docstring)."""
    metadata = {}
    if layer.reset != NATIVE_RESET:
        if fallback == "error":
            raise ValueError(
                f"{name}: reset={layer.reset!r} has no NIR {nir.__dict__.get('version', '')} form (its spiking nodes "
                f"reset {'to v_reset' if NIR_HAS_V_RESET else 'by subtraction, v - v_threshold'}). Use "
                f"reset={NATIVE_RESET!r}, or to_nir(..., reset_fallback='metadata') to store the reset in the "
                "node's metadata (exodus.nir.from_nir honours it; other tools will not)")
        metadata[RESET_KEY] = layer.reset
    return {"metadata": metadata, "zero_v_reset": NIR_HAS_V_RESET}


def _with_reset(node_class, fields: dict, reset_info: dict, shape) -> object:
    if reset_info["zero_v_reset"]:
        fields["v_reset"] = np.zeros(shape, np.float32)
    node = node_class(**fields)
    if reset_info["metadata"]:
        node.metadata = dict(reset_info["metadata"])
    return node


def _export_neuron(layer, shape: Tuple[int, ...], dt: float, discretization: str, fallback: str, name: str):
    """One exodus neuron layer as a NIR node (or a recurrent subgraph)."""
    if isinstance(layer, L.AdaptiveLIF):
        couplings = layer.couplings()
        if not all(isinstance(c, float) and c == 0.0 for c in couplings):
            raise ValueError(f"{name}: {type(layer).__name__} with adaptation has no NIR node (NIR 1.0 has no adaptive "
                             "threshold or adaptation current); exodus refuses to export it. With all four "
                             "couplings 0 it is a LIF and is exported as one")
    if isinstance(layer, L.ExpLeak):
        alpha = _numpy(layer.alpha(), shape).astype(np.float64)
        if np.any(alpha >= 1.0):
            raise ValueError(f"{name}: ExpLeak with tau_mem = inf (no leak) is exported only as NIR I; mixed leak "
                             "per neuron is not supported")
        gain = (1.0 - alpha) if layer.norm_input else np.ones_like(alpha)
        return nir.LI(tau=_numpy(_nir_tau(alpha, dt, discretization)), r=_numpy(_nir_r(alpha, gain, discretization)),
                      v_leak=np.zeros(shape, np.float32))
    if layer.v_min is not None:
        raise ValueError(f"{name}: v_min={layer.v_min} has no NIR form (NIR membranes are unbounded); "
                         "export a layer with v_min=None")
    if layer.max_spikes_per_bin != 1:
        raise ValueError(f"{name}: max_spikes_per_bin={layer.max_spikes_per_bin}: NIR neurons emit at most one "
                         "spike per step; export a layer with max_spikes_per_bin=1")
    reset_info = _export_reset(layer, fallback, name)
    theta = _numpy(layer.threshold, shape)
    if isinstance(layer, L.IAF):
        if layer.tau_syn is not None:
            raise ValueError(f"{name}: IAF with tau_syn has no NIR node (NIR has no current-based IF)")
        r = np.ones(shape) if discretization == "impulse" else np.full(shape, 1.0 / dt)  # v_t = v + dt R x
        node = _with_reset(nir.IF, dict(r=_numpy(r), v_threshold=theta), reset_info, shape)
    else:
        alpha = _numpy(layer.alpha(), shape).astype(np.float64)
        gain = (1.0 - alpha) if layer.norm_input else np.ones_like(alpha)
        if layer.tau_syn is not None:
            if layer.norm_input:
                raise ValueError(f"{name}: LIF with tau_syn and norm_input has no exact NIR CubaLIF form in exodus.nir")
            beta = _numpy(torch.exp(-1.0 / layer.tau_syn), shape).astype(np.float64)
            fields = dict(tau_syn=_numpy(_nir_tau(beta, dt, discretization)),
                          tau_mem=_numpy(_nir_tau(alpha, dt, discretization)),
                          r=_numpy(_nir_r(alpha, gain, discretization)), v_leak=np.zeros(shape, np.float32),
                          v_threshold=theta, w_in=_numpy(_nir_r(beta, np.ones_like(beta), discretization)))
            return _with_reset(nir.CubaLIF, fields, reset_info, shape)
        fields = dict(tau=_numpy(_nir_tau(alpha, dt, discretization)), r=_numpy(_nir_r(alpha, gain, discretization)),
                      v_leak=np.zeros(shape, np.float32), v_threshold=theta)
        node = _with_reset(nir.LIF, fields, reset_info, shape)
    if not layer.recurrent:
        return node
    weight = _numpy(L._recurrent_weight(layer))
    n = int(shape[0])
    return nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array([n])), "neuron": node,
                               "w_rec": nir.Linear(weight=weight), "output": nir.Output(output_type=np.array([n]))},
                        edges=[("input", "neuron"), ("neuron", "w_rec"), ("w_rec", "neuron"), ("neuron", "output")])


def _export_stateless(module: nn.Module, in_shape, out_shape, wrapped: bool, name: str):
    """A stateless torch module as a NIR node; ``wrapped``: it sat in a TimeDistributed (sees (B*T, ...))."""
    if isinstance(module, nn.Linear):
        weight = _numpy(module.weight)
        if module.bias is None:
            return nir.Linear(weight=weight)
        return nir.Affine(weight=weight, bias=_numpy(module.bias))
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        if not wrapped:
            raise ValueError(f"{name}: wrap {type(module).__name__} in exodus.nir.TimeDistributed so that it runs per "
                             "time step on (batch, time, channels, ...)")
        if module.padding_mode != "zeros":
            raise ValueError(f"{name}: padding_mode={module.padding_mode!r} has no NIR form (zeros only)")
        bias = _numpy(module.bias) if module.bias is not None else np.zeros(module.out_channels, np.float32)
        padding = module.padding if isinstance(module.padding, str) else np.array(module.padding)
        if isinstance(module, nn.Conv1d):
            return nir.Conv1d(input_shape=int(in_shape[1]), weight=_numpy(module.weight), stride=int(module.stride[0]),
                              padding=padding if isinstance(padding, str) else int(padding[0]),
                              dilation=int(module.dilation[0]), groups=int(module.groups), bias=bias)
        return nir.Conv2d(input_shape=tuple(int(s) for s in in_shape[1:]), weight=_numpy(module.weight),
                          stride=np.array(module.stride), padding=padding, dilation=np.array(module.dilation),
                          groups=int(module.groups), bias=bias)
    if isinstance(module, nn.AvgPool2d):
        if not wrapped:
            raise ValueError(f"{name}: wrap AvgPool2d in exodus.nir.TimeDistributed")
        if module.ceil_mode:
            raise ValueError(f"{name}: AvgPool2d(ceil_mode=True) has no NIR form")
        kernel, stride, padding = (np.array(_pair(v)) for v in (module.kernel_size, module.stride or module.kernel_size,
                                                                 module.padding))
        if module.divisor_override == 1:
            return nir.SumPool2d(kernel_size=kernel, stride=stride, padding=padding)
        if module.divisor_override is not None or (not module.count_include_pad and np.any(padding)):
            raise ValueError(f"{name}: AvgPool2d with divisor_override={module.divisor_override} / count_include_pad="
                             f"{module.count_include_pad} has no NIR form")
        return nir.AvgPool2d(kernel_size=kernel, stride=stride, padding=padding)
    if isinstance(module, nn.Flatten):
        skipped = 1 if wrapped else 2  # leading dims that are not features: (B*T,) or (B, T)
        dims = len(in_shape) + skipped
        start, end = module.start_dim % dims, module.end_dim % dims
        if start < skipped:
            raise ValueError(f"{name}: Flatten(start_dim={module.start_dim}) would merge the batch/time dims; use "
                             f"start_dim={skipped} on (batch, time, *features) input")
        return nir.Flatten(input_type={"input": np.array(in_shape)}, start_dim=start - skipped, end_dim=end - skipped)
    if isinstance(module, Scale):
        if module.bias is not None:
            raise ValueError(f"{name}: exodus.nir.Scale with a bias has no NIR form")
        return nir.Scale(scale=_numpy(module.scale, in_shape))
    if isinstance(module, Threshold):
        return nir.Threshold(threshold=_numpy(module.threshold, in_shape))
    raise ValueError(f"{name}: {type(module).__name__} has no NIR mapping in exodus.nir.to_nir (supported: "
                     "Linear, TimeDistributed(Conv1d/Conv2d/AvgPool2d), Flatten, Identity, Dropout, exodus.nir.Scale/"
                     "Threshold, exodus.LIF/IAF/ExpLeak, AdaptiveLIF without adaptation)")


def _export_module(module, in_shape, out_shape, dt, discretization, fallback, name):
    wrapped = isinstance(module, TimeDistributed)
    inner = module.module if wrapped else module
    if isinstance(inner, L._StatefulNeuron):
        if wrapped:
            raise ValueError(f"{name}: neuron layers take (batch, time, ...) themselves; do not wrap them")
        if tuple(in_shape) != tuple(out_shape):
            raise ValueError(f"{name}: neuron input and output shapes differ")
        if isinstance(inner, L.ExpLeak) and bool((inner.alpha() >= 1).all()):
            return nir.I(r=np.ones(in_shape, np.float32) if discretization == "impulse" else
                         np.full(in_shape, 1.0 / dt, np.float32))
        return _export_neuron(inner, tuple(in_shape), dt, discretization, fallback, name)
    if isinstance(inner, nn.Sequential) and wrapped:
        raise ValueError(f"{name}: wrap each per-step module in its own TimeDistributed")
    return _export_stateless(inner, in_shape, out_shape, wrapped, name)


def _stateless_copy(module: nn.Module) -> nn.Module:
    """A deep copy with the neuron states and recordings left out (they may hold autograd graphs)."""
    saved = []
    for layer in module.modules():
        if isinstance(layer, L._StatefulNeuron):
            saved.append((layer, {name: getattr(layer, name) for name in layer._state_names}, layer.recordings))
            for name in layer._state_names:
                setattr(layer, name, None)
            layer.recordings = {}
    try:
        return copy.deepcopy(module)
    finally:
        for layer, states, recordings in saved:
            for name, value in states.items():
                setattr(layer, name, value)
            layer.recordings = recordings


def _set_types(node, in_shape, out_shape) -> None:
    if isinstance(node, nir.NIRGraph):
        return
    node.input_type = {"input": np.array(in_shape, dtype=np.int64)}
    node.output_type = {"output": np.array(out_shape, dtype=np.int64)}


def to_nir(module: nn.Module, sample_input: Tensor, dt: float = 1.0, discretization: str = "exact",
           reset_fallback: str = "error") -> "nir.NIRGraph":
    """Export ``module`` (e.g. an nn.Sequential of Linear / TimeDistributed(Conv2d) / exodus layers) to
    a nir.NIRGraph. Write it with ``nir.write(path, graph)``.

    Args:
        module: a module whose forward only calls submodules and adds their outputs (torch.fx-traceable:
            Sequential, or a custom module chaining / branching / summing submodules: a + b becomes two
            edges into the next node); every submodule sees (batch, time, *features).
        sample_input: (batch, time, *features) example input; runs once through a deep copy of ``module``
            to record the shapes (the module's own state is left untouched).
        dt: seconds per step: NIR time constants are written in seconds, tau = tau_steps * dt ("exact").
        discretization: "exact" (default), "euler" (what snnTorch / Norse assume) or "impulse" (sinabs);
            see docs/nir.md. The written graph discretises back to exactly this module under the same choice.
        reset_fallback: "error" (default) refuses a reset the installed NIR version cannot express
            (NIR 1.0.4: only subtract; NIR >= 1.0.6: only zero, v_reset = 0); "metadata" writes it as node
            metadata ``{"reset": ...}`` that exodus.nir.from_nir honours and other tools ignore.
    """
    dt = _check_dt(dt)
    _check_choice("discretization", discretization, DISCRETIZATIONS)
    _check_choice("reset_fallback", reset_fallback, RESET_FALLBACKS)
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    if not isinstance(sample_input, Tensor) or sample_input.dim() < 2 or not sample_input.is_floating_point():
        raise ValueError("sample_input must be a floating-point tensor of shape (batch, time, *features)")
    if isinstance(module, GraphModule):
        raise ValueError("to_nir of an imported exodus.nir.GraphModule is not supported: export the original "
                         "module, or write the NIR graph it came from")
    if isinstance(module, L._StatefulNeuron) or isinstance(module, TimeDistributed):
        module = nn.Sequential(module)
    try:
        fx_graph = _Tracer().trace(module)
    except Exception as error:
        raise ValueError(f"to_nir could not trace {type(module).__name__} with torch.fx ({error}); its forward "
                         "must only call submodules") from error
    for fx_node in fx_graph.nodes:  # refuse per-step modules called on (batch, time, ...) before running them
        if fx_node.op == "call_module":
            submodule = module.get_submodule(fx_node.target)
            if isinstance(submodule, (nn.modules.conv._ConvNd, nn.modules.pooling._AvgPoolNd,
                                      nn.modules.pooling._MaxPoolNd)):
                raise ValueError(f"{fx_node.target}: wrap {type(submodule).__name__} in exodus.nir.TimeDistributed so "
                                 "that it runs per time step on (batch, time, channels, ...)")
    # shapes: run the traced graph on a copy (layers keep state, the original must not change)
    traced = torch.fx.GraphModule(_stateless_copy(module), fx_graph)
    shapes = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, node):
            result = super().run_node(node)
            if isinstance(result, Tensor):
                shapes[node.name] = tuple(result.shape)
            return result

    with torch.no_grad():
        Recorder(traced).run(sample_input.detach())

    nodes, edges, alias = {}, [], {}
    used_modules = set()
    for fx_node in fx_graph.nodes:
        if fx_node.op == "placeholder":
            if "input" in nodes:
                raise ValueError("to_nir supports modules with a single input")
            nodes["input"] = nir.Input(input_type=np.array(shapes[fx_node.name][2:]))
            alias[fx_node.name] = ["input"]
        elif fx_node.op == "call_function" and fx_node.target in (operator.add, torch.add):
            # a + b into a node == edges from both: a NIR node's input is the sum of its incoming edges
            operands = [a for a in fx_node.args if isinstance(a, torch.fx.Node)]
            if len(operands) != 2 or len(fx_node.args) != 2 or fx_node.kwargs:
                raise ValueError(f"{fx_node.name}: to_nir supports the sum of two module outputs only (a + b)")
            if shapes[operands[0].name] != shapes[operands[1].name]:
                raise ValueError(f"{fx_node.name}: a + b with broadcasting has no NIR form (shapes "
                                 f"{shapes[operands[0].name][2:]} and {shapes[operands[1].name][2:]})")
            sources = alias[operands[0].name] + alias[operands[1].name]
            if len(set(sources)) != len(sources):
                raise ValueError(f"{fx_node.name}: a sum that counts one node twice has no NIR form (NIR edges are "
                                 "unweighted and unique); use a Scale")
            alias[fx_node.name] = sources
        elif fx_node.op == "call_module":
            tensor_args = [a for a in fx_node.args if isinstance(a, torch.fx.Node)]
            if len(tensor_args) != 1 or len(fx_node.args) != 1 or fx_node.kwargs:
                raise ValueError(f"{fx_node.target}: to_nir supports submodules called with one tensor only")
            source = alias[tensor_args[0].name]
            submodule = module.get_submodule(fx_node.target)
            if isinstance(submodule, _PASS_THROUGH):
                alias[fx_node.name] = source
                continue
            if fx_node.target in used_modules:
                raise ValueError(f"{fx_node.target}: a module called twice (shared weights) is not supported")
            used_modules.add(fx_node.target)
            in_shape, out_shape = shapes[tensor_args[0].name][2:], shapes[fx_node.name][2:]
            name = str(fx_node.target)
            if isinstance(submodule, GraphModule):
                raise ValueError(f"{name}: nested exodus.nir.GraphModule export is not supported")
            node = _export_module(submodule, in_shape, out_shape, dt, discretization, reset_fallback, name)
            _set_types(node, in_shape, out_shape)
            nodes[name] = node
            edges.extend((each, name) for each in source)
            alias[fx_node.name] = [name]
        elif fx_node.op == "output":
            result = fx_node.args[0]
            if not isinstance(result, torch.fx.Node):
                raise ValueError("to_nir supports modules returning a single tensor")
            nodes["output"] = nir.Output(output_type=np.array(shapes[result.name][2:]))
            edges.extend((each, "output") for each in alias[result.name])
        else:
            raise ValueError(f"to_nir supports only submodule calls and sums (a + b) in forward; found {fx_node.op} "
                             f"{fx_node.target} (wrap tensor operations in a module, or add nodes by hand)")
    metadata = {"source": "exodus", "dt": dt, "discretization": discretization}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)


# ----------------------------------------------------------------------------------------------
# Reference: a plain step-by-step simulator of a NIR graph (the oracle for from_nir in the tests).

def simulate(graph, x: Tensor, dt: float = 1.0, discretization: str = "exact",
             reset: Optional[str] = None) -> Tensor:
    """Run a NIR graph on x (batch, time, *features), one time step at a time, in float64.

    Every node is evaluated once per step in topological order; an edge that closes a cycle delivers
    the previous step's value (zero at t = 0), which is exodus' recurrence a_{t-1}. Neurons follow the
    node equations discretised as in the module docstring, spike on v >= v_threshold (NIR writes >,
    equal only on a measure-zero set) and reset by ``reset`` / the node's own rule (as from_nir).
    """
    dt = _check_dt(dt)
    _check_choice("discretization", discretization, DISCRETIZATIONS)
    if isinstance(graph, (str, pathlib.Path)):
        graph = nir.read(graph)
    x = x.detach().double()
    batch, steps = x.shape[:2]
    step = _reference_graph(graph, dt, discretization, reset)
    state = {}
    outputs = [step(x[:, t], state) for t in range(steps)]
    return torch.stack(outputs, 1) if outputs else x.new_zeros((batch, 0, *x.shape[2:]))


def _reference_graph(graph, dt, discretization, reset):
    names = list(graph.nodes)
    sources = defaultdict(list)
    for source, target in graph.edges:
        sources[target].append(source)
    order, seen, back_edges = [], set(), set()

    def visit(name, stack):  # depth-first over predecessors; an edge into the current stack is a back edge
        seen.add(name)
        stack.add(name)
        for source in sources[name]:
            if source in stack:
                back_edges.add((source, name))
            elif source not in seen:
                visit(source, stack)
        stack.discard(name)
        order.append(name)

    outputs = [n for n, node in graph.nodes.items() if isinstance(node, nir.Output)]
    for name in outputs + names:
        if name not in seen:
            visit(name, set())
    steppers = {name: _reference_node(node, dt, discretization, reset) for name, node in graph.nodes.items()}
    output, = outputs
    graph_id = id(graph)

    def step(x_t, state):
        previous = state.get((graph_id, "values"), {})
        values = {}
        for name in order:
            node = graph.nodes[name]
            if isinstance(node, nir.Input):
                values[name] = x_t
                continue
            total = None
            for source in sources[name]:
                value = previous.get(source) if (source, name) in back_edges else values[source]
                if value is None:
                    continue  # a back edge at t = 0 (or a node fed only by one) delivers nothing yet
                total = value if total is None else total + value
            values[name] = None if total is None else steppers[name](total, state, (graph_id, name))
        state[(graph_id, "values")] = values
        return values[output]

    return step


def _reference_node(node, dt, discretization, reset):
    t = lambda v: torch.as_tensor(_array(v, "parameter"), dtype=torch.float64)  # noqa: E731
    if isinstance(node, (nir.Input, nir.Output)):
        return lambda value, state, key: value
    if isinstance(node, nir.NIRGraph):
        inner = _reference_graph(node, dt, discretization, reset)
        return lambda value, state, key: inner(value, state)
    if isinstance(node, nir.Affine):
        return lambda value, state, key: value @ t(node.weight).T + t(node.bias)
    if isinstance(node, nir.Linear):
        return lambda value, state, key: value @ t(node.weight).T
    if isinstance(node, nir.Scale):
        return lambda value, state, key: value * t(node.scale)
    if isinstance(node, nir.Threshold):
        return lambda value, state, key: (value > t(node.threshold)).double()
    if isinstance(node, nir.Flatten):
        return lambda value, state, key: value.flatten(int(node.start_dim) + 1, int(node.end_dim) + 1
                                                       if int(node.end_dim) >= 0 else int(node.end_dim))
    if isinstance(node, (nir.Conv1d, nir.Conv2d)):
        conv = torch.nn.functional.conv1d if isinstance(node, nir.Conv1d) else torch.nn.functional.conv2d
        return lambda value, state, key: conv(value, t(node.weight), t(node.bias), _conv_arg(node.stride),
                                              _conv_arg(node.padding), _conv_arg(node.dilation), int(node.groups))
    if isinstance(node, (nir.AvgPool2d, nir.SumPool2d)):
        def pool(value, state, key):
            kernel = _pair(node.kernel_size)
            out = torch.nn.functional.avg_pool2d(value, kernel, _pair(node.stride), _pair(node.padding))
            return out * (kernel[0] * kernel[1]) if isinstance(node, nir.SumPool2d) else out
        return pool

    def decay_and_gain(tau, r):
        alpha = torch.as_tensor(_decay(_array(tau, "tau"), dt, discretization, "tau"))
        return alpha, torch.as_tensor(_input_gain(alpha.numpy(), _array(r, "r"), discretization))

    def membrane(value, state, key, alpha, gain, v_leak):
        v = state.get(key, torch.zeros_like(value))
        return alpha * v + gain * value + (1.0 - alpha) * v_leak  # v relaxes towards v_leak

    def spike(h, state, key, theta, rule):
        z = (h >= theta).double()
        state[key] = h - theta * z if rule == "subtract" else h * (1.0 - z)
        return z

    if isinstance(node, nir.LIF):
        alpha, gain = decay_and_gain(node.tau, node.r)
        theta, v_leak, rule = t(node.v_threshold), t(node.v_leak), _node_reset(node, reset)

        def lif_step(value, state, key):
            return spike(membrane(value, state, key, alpha, gain, v_leak), state, key, theta, rule)
        return lif_step
    if isinstance(node, nir.IF):
        gain = t(node.r) * (1.0 if discretization == "impulse" else dt)
        theta, rule = t(node.v_threshold), _node_reset(node, reset)

        def if_step(value, state, key):
            return spike(state.get(key, torch.zeros_like(value)) + gain * value, state, key, theta, rule)
        return if_step
    if isinstance(node, nir.LI):
        alpha, gain = decay_and_gain(node.tau, node.r)
        v_leak = t(node.v_leak)

        def li_step(value, state, key):
            state[key] = membrane(value, state, key, alpha, gain, v_leak)
            return state[key]
        return li_step
    if isinstance(node, nir.I):
        gain = t(node.r) * (1.0 if discretization == "impulse" else dt)

        def i_step(value, state, key):
            state[key] = state.get(key, torch.zeros_like(value)) + gain * value
            return state[key]
        return i_step
    if isinstance(node, nir.CubaLIF) or (_CUBA_LI is not None and isinstance(node, _CUBA_LI)):
        beta, syn_gain = decay_and_gain(node.tau_syn, node.w_in)
        alpha, gain = decay_and_gain(node.tau_mem, node.r)
        v_leak = t(node.v_leak)
        spiking = isinstance(node, nir.CubaLIF)
        theta = t(node.v_threshold) if spiking else None
        rule = _node_reset(node, reset) if spiking else None

        def cuba_step(value, state, key):
            current = beta * state.get(key + ("i",), torch.zeros_like(value)) + syn_gain * value
            state[key + ("i",)] = current
            h = membrane(current, state, key, alpha, gain, v_leak)
            if not spiking:
                state[key] = h
                return h
            return spike(h, state, key, theta, rule)
        return cuba_step
    raise ValueError(f"simulate: NIR node type {type(node).__name__} is not supported")
