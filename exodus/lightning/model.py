"""``SpikingClassifier``: a spiking network classifier built from plain init arguments.

Architecture (input x: (batch, time, *input_shape)):

    [conv front-end, for frames (C, H, W)]  Conv2d -> AvgPool2d -> neuron     per entry of conv_channels
    [hidden layers]                         Linear [-> BatchNorm1d] -> neuron per entry of hidden
                                            (neuron optionally recurrent: + weight_rec @ its last spikes)
    readout                                 Linear -> spiking neuron (readout="spike_count")
                                                   or ExpLeak    ("max_membrane" / "mean_membrane")

The hidden neurons (conv front-end and hidden layers) are LIF, IAF, ALIF (Bellec et al. 2018) or
adLIF (Bittar & Garner 2022), see ``neuron``; adaptive parameters can be drawn per neuron from
ranges and kept in them while training (``*_range`` arguments, ``clamp_neuron_parameters``).

Every synaptic map runs SLAYER-style on all time steps at once (batch and time folded into one
dimension), then each neuron layer runs one fused scan over time. The logits are the spike counts,
or the max / mean of the readout membrane, over the last ``readout_steps`` steps (all by default);
the loss is cross-entropy.

All arguments are plain numbers, strings and lists, so the model is built the same way from a
YAML config (``exodus-train``), a dict (``SpikingClassifier(**config)``) or a checkpoint.
"""
from __future__ import annotations

import math
import time
from typing import Optional, Sequence

import pytorch_lightning as pl
import torch
import torchmetrics
from torch import Tensor, nn

from .. import surrogate as surrogates
from ..functional import LINEAR_GRADIENTS, RESETS
from ..layers import ALIF, IAF, LIF, WEIGHT_REC_INITS, AdLIF, ExpLeak, LinearLIF
from .data import ConfigError

__all__ = ["SpikingClassifier", "NEURONS", "READOUTS", "BITTAR_GARNER_RANGES", "NormalizedLinear"]

NEURONS = ("lif", "iaf", "alif", "adlif")
READOUTS = ("spike_count", "max_membrane", "mean_membrane")
LOSSES = ("logits", "per_step")

# Per-neuron initialisation ranges of Bittar & Garner (2022, sparch's adLIF / RadLIF layers), as the
# SpikingClassifier arguments that take them: tau in steps (alpha = exp(-1/tau_mem) in
# [e^-1/5, e^-1/25], rho = exp(-1/tau_adapt) in [e^-1/30, e^-1/120]), a in [-1, 1], b in [0, 2].
BITTAR_GARNER_RANGES = {"tau_mem_range": [5.0, 25.0], "tau_adapt_range": [30.0, 120.0],
                        "adapt_a_range": [-1.0, 1.0], "adapt_b_range": [0.0, 2.0]}

# range argument -> (neurons it applies to, neuron attribute it sets, is a time constant, trained by)
_RANGES = {
    "tau_mem_range": (("lif", "alif", "adlif"), "tau_mem", True, "train_tau"),
    "tau_adapt_range": (("alif", "adlif"), "tau_adapt", True, "train_adaptation"),
    "adapt_a_range": (("adlif",), "adapt_membrane", False, "train_adaptation"),
    "adapt_b_range": (("adlif",), "adapt_spike", False, "train_adaptation"),
}
# Couplings each adaptive preset keeps fixed (the layers' train_adaptation would train all four).
_FIXED_COUPLINGS = {"alif": ("adapt_current", "adapt_membrane"), "adlif": ("adapt_threshold", "adapt_current")}


def _choice(key: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"model.{key}: unknown value {value!r}; choose one of {tuple(choices)}")


def _range(key: str, value) -> Optional[list]:
    """A [low, high] range argument as a list of two floats (None stays None)."""
    if value is None:
        return None
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"model.{key} must be [low, high] or null, got {value!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ConfigError(f"model.{key} must be [low, high] with finite low <= high, got {value!r}")
    time_constant = _RANGES[key][2]
    if time_constant and low <= 0:
        raise ConfigError(f"model.{key} is a range of time constants (steps): both ends must be > 0, got {value!r}")
    return [low, high]


def make_surrogate(name: str, args: Optional[dict] = None) -> surrogates.Surrogate:
    """exodus.surrogate class by name (e.g. "FastSigmoid") with keyword arguments."""
    cls = getattr(surrogates, name, None)
    if not (isinstance(cls, type) and issubclass(cls, surrogates.Surrogate) and cls is not surrogates.Surrogate):
        names = [n for n in surrogates.__all__ if n != "Surrogate"]
        raise ConfigError(f"model.surrogate: unknown surrogate {name!r}; choose one of {names}")
    try:
        return cls(**(args or {}))
    except TypeError as error:
        raise ConfigError(f"model.surrogate_args {args!r} do not fit {name}: {error}") from None


class NormalizedLinear(nn.Module):
    """Linear map (no bias) followed by BatchNorm1d over all (batch x time) rows, as in Bittar &
    Garner's layers (momentum 0.05): (..., in) -> (..., out). BatchNorm's affine shift is the bias."""

    def __init__(self, in_features: int, out_features: int, momentum: float = 0.05):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=False)
        self.norm = nn.BatchNorm1d(out_features, momentum=momentum)

    def forward(self, x: Tensor) -> Tensor:
        y = self.linear(x)
        return self.norm(y.reshape(-1, y.shape[-1])).reshape(y.shape)


def _uniform_time_constant(low: float, high: float, shape) -> Tensor:
    """tau (steps) per neuron with exp(-1/tau) uniform in [exp(-1/low), exp(-1/high)]."""
    decay = torch.empty(shape).uniform_(math.exp(-1.0 / low), math.exp(-1.0 / high))
    return -1.0 / torch.log(decay)


def _freeze(module: nn.Module, name: str) -> None:
    """Turn a trainable coupling the preset fixes back into a constant (number if uniform, else buffer)."""
    value = getattr(module, name)
    if not isinstance(value, nn.Parameter):
        return
    value = value.detach().clone()
    delattr(module, name)
    if bool((value == value.flatten()[0]).all()):
        setattr(module, name, float(value.flatten()[0]))
    else:
        module.register_buffer(name, value)


class SpikingClassifier(pl.LightningModule):
    """SNN classifier (feed-forward, or with recurrent hidden layers). Shapes: x (batch, time, *input_shape), y (batch,) int.

    Args:
        input_shape: features per time step, e.g. (700,) or (2, 32, 32) (exodus-train links it from data).
        num_classes: number of classes (linked from data).
        hidden: sizes of the spiking hidden layers.
        conv_channels: output channels of the convolutional front-end (input must be (C, H, W)); [] = none.
        conv_kernel: convolution kernel size (padding keeps the size).
        conv_pool: average-pooling factor after each convolution (1 = none).
        neuron: "lif", "iaf", "alif" (exodus.ALIF) or "adlif" (exodus.AdLIF), in the hidden spiking layers
            (conv front-end and hidden). The spike_count readout is LIF for "alif" / "adlif".
        recurrent: hidden (Linear) layers add their own last spikes, weight_rec @ a_{t-1}; not with
            conv_channels or tau_syn. weight_rec_init, weight_rec_gain, zero_diagonal: see exodus.LIF.
        batch_norm: BatchNorm1d on W x over (batch x time, features) before each hidden neuron layer
            (NormalizedLinear: the Linear then has no bias); not applied to conv layers or the readout.
        tau_mem, tau_syn: membrane / synaptic time constants in steps (tau_syn None = no synapse).
        tau_adapt: adaptation time constant (steps) of alif / adlif.
        adapt_threshold: ALIF threshold coupling beta (theta_t = threshold + beta w, w a low-pass of the spikes).
        adapt_a, adapt_b: adLIF couplings a (membrane -> w) and b (spike -> w).
        train_adaptation: learn tau_adapt and the preset's free couplings per neuron (alif: beta; adlif: a, b).
        tau_mem_range, tau_adapt_range, adapt_a_range, adapt_b_range: [low, high] or None. Given, the
            hidden layers draw the value per neuron uniformly: for the time constants the decay
            exp(-1/tau) is uniform in [exp(-1/low), exp(-1/high)], for a and b the value itself; the
            range replaces the scalar (tau_mem, ...) there. When the parameter is trained (train_tau,
            train_adaptation) it is clamped into its range after every optimizer step
            (``clamp_neuron_parameters``). BITTAR_GARNER_RANGES holds Bittar & Garner's values.
        threshold, reset, v_min, max_spikes_per_bin: neuron parameters, see exodus.LIF.
        surrogate, surrogate_args: a class of exodus.surrogate by name and its keyword arguments.
        gradient: "exodus", "slayer" or "bptt", applied to every spiking layer; or "sparse": the hidden
            layers become fused exodus.LinearLIF blocks with the sparse exact backward (DESIGN.md §6;
            neuron lif, no recurrence / batch_norm / tau_syn / train_tau), the others use "exodus".
        surrogate_band: truncate the surrogate to |h - theta| < band theta (exodus.surrogate.Truncated) in
            every layer, so that "sparse", "exodus" and "bptt" runs train the same function; null: no
            truncation (gradient "sparse" then truncates at 0.2).
        linear_blocks: build the hidden layers as fused exodus.LinearLIF blocks (null: only for gradient
            "sparse", which needs them); true with another gradient gives the same parameters, e.g. for the
            BPTT twin that measures a sparse run's gradient agreement.
        online_chunk: with gradient "online" (exodus.online: the hidden layers are LinearLIF blocks with
            forward-mode traces), each training batch is fed in chunks of this many steps with a backward
            per chunk and one optimizer step per batch; the training loss is then the per-step
            cross-entropy of the readout over the readout window (a sum over steps, which chunks can split),
            not the cross-entropy of the logits. Manual optimisation: no trainer.gradient_clip_val.
        loss: "logits" (cross-entropy of the logits) or "per_step" (cross-entropy of the readout trace at
            every step of the readout window, averaged over the batch and the window: what gradient "online"
            optimises, so that an exodus / bptt twin can train the same objective); null: "per_step" for
            gradient "online", "logits" otherwise.
        grad_scale: surrogate scale of the "slayer" gradient.
        train_tau, train_threshold: learn one tau_mem / threshold per neuron.
        readout: "spike_count", "max_membrane" or "mean_membrane".
        readout_tau: membrane time constant of the ExpLeak readout (steps).
        readout_steps: read the logits from the last k steps only (None = all steps).
        weight_gain: multiplies the default (Kaiming-uniform) initial weights of every layer.
        lr, weight_decay: Adam settings (the CLI's --optimizer / --lr_scheduler override them).
        backend: exodus backend ("auto", "cpu", "cupy", "torch").
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (128,),
        conv_channels: Sequence[int] = (),
        conv_kernel: int = 3,
        conv_pool: int = 2,
        neuron: str = "lif",
        recurrent: bool = False,
        weight_rec_init: str = "orthogonal",
        weight_rec_gain: float = 1.0,
        zero_diagonal: bool = False,
        batch_norm: bool = False,
        tau_mem: float = 20.0,
        tau_syn: Optional[float] = None,
        tau_adapt: float = 200.0,
        adapt_threshold: float = 1.8,
        adapt_a: float = 0.0,
        adapt_b: float = 1.0,
        train_adaptation: bool = False,
        tau_mem_range: Optional[Sequence[float]] = None,
        tau_adapt_range: Optional[Sequence[float]] = None,
        adapt_a_range: Optional[Sequence[float]] = None,
        adapt_b_range: Optional[Sequence[float]] = None,
        threshold: float = 1.0,
        reset: str = "subtract",
        v_min: Optional[float] = None,
        max_spikes_per_bin: Optional[int] = 1,
        surrogate: str = "SingleExponential",
        surrogate_args: Optional[dict] = None,
        surrogate_band: Optional[float] = None,
        gradient: str = "exodus",
        linear_blocks: Optional[bool] = None,
        online_chunk: int = 100,
        loss: Optional[str] = None,
        grad_scale: float = 1.0,
        train_tau: bool = False,
        train_threshold: bool = False,
        readout: str = "max_membrane",
        readout_tau: float = 20.0,
        readout_steps: Optional[int] = None,
        weight_gain: float = 1.0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        backend: str = "auto",
    ):
        arguments = dict(locals())          # the init arguments (first statement: nothing else defined yet)
        arguments.pop("self")
        arguments.pop("__class__", None)
        if linear_blocks is None:
            linear_blocks = gradient in ("sparse", "online")
        arguments["linear_blocks"] = linear_blocks
        if loss is None:
            loss = "per_step" if gradient == "online" else "logits"
        arguments["loss"] = loss
        super().__init__()
        input_shape = tuple(int(s) for s in input_shape)
        hidden, conv_channels = [int(h) for h in hidden], [int(c) for c in conv_channels]
        # lists, not tuples: hparams.yaml and checkpoints stay plain YAML / JSON
        ranges = {"tau_mem_range": tau_mem_range, "tau_adapt_range": tau_adapt_range,
                  "adapt_a_range": adapt_a_range, "adapt_b_range": adapt_b_range}
        ranges = {key: _range(key, value) for key, value in ranges.items()}
        # lists, not tuples: hparams.yaml and checkpoints stay plain YAML / JSON
        self.save_hyperparameters({**arguments, "input_shape": list(input_shape), "hidden": hidden,
                                   "conv_channels": conv_channels, **ranges})
        _choice("neuron", neuron, NEURONS)
        _choice("readout", readout, READOUTS)
        _choice("loss", loss, LOSSES)
        _choice("gradient", gradient, (*LINEAR_GRADIENTS, "online"))
        _choice("reset", reset, RESETS)
        _choice("weight_rec_init", weight_rec_init, WEIGHT_REC_INITS)
        for key, value in (("recurrent", recurrent), ("zero_diagonal", zero_diagonal), ("batch_norm", batch_norm),
                           ("train_adaptation", train_adaptation), ("train_tau", train_tau),
                           ("train_threshold", train_threshold)):
            if not isinstance(value, bool):
                raise ConfigError(f"model.{key} must be true or false, got {value!r}")
        if num_classes < 2:
            raise ConfigError(f"model.num_classes must be >= 2, got {num_classes}")
        if any(s < 1 for s in (*hidden, *conv_channels)) or not input_shape or min(input_shape) < 1:
            raise ConfigError(f"model.hidden, model.conv_channels and model.input_shape need positive sizes, got "
                              f"{hidden}, {conv_channels}, {input_shape}")
        if readout_steps is not None and readout_steps < 1:
            raise ConfigError(f"model.readout_steps must be >= 1 or null (all steps), got {readout_steps}")
        adaptive = neuron in ("alif", "adlif")
        if recurrent and conv_channels:
            raise ConfigError(f"model.recurrent needs hidden layers with one feature dimension (N,), but "
                              f"model.conv_channels {conv_channels} builds convolutional (C, H, W) layers: set "
                              f"model.recurrent: false or remove model.conv_channels")
        if recurrent and not hidden:
            raise ConfigError("model.recurrent applies to the hidden layers, but model.hidden is empty: add hidden "
                              "layers or set model.recurrent: false")
        if tau_syn is not None and (recurrent or adaptive):
            what = "model.recurrent: true" if recurrent else f"model.neuron: {neuron}"
            raise ConfigError(f"model.tau_syn is not supported with {what} (the input would bypass the synapse / "
                              f"the adaptive neurons have no synaptic current): set model.tau_syn: null")
        if train_adaptation and not adaptive:
            raise ConfigError(f"model.train_adaptation needs model.neuron: alif or adlif, got {neuron!r}")
        for key, value in ranges.items():
            neurons = _RANGES[key][0]
            if value is not None and neuron not in neurons:
                raise ConfigError(f"model.{key} applies to model.neuron {' / '.join(neurons)} only, got "
                                  f"{neuron!r}: remove model.{key}")
        if adaptive:
            for key, value in (("tau_adapt", tau_adapt), ("adapt_threshold", adapt_threshold),
                               ("adapt_a", adapt_a), ("adapt_b", adapt_b)):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise ConfigError(f"model.{key} must be a finite number, got {value!r}")
            if tau_adapt <= 0:
                raise ConfigError(f"model.tau_adapt must be > 0 (steps), got {tau_adapt}")
        self.input_shape = input_shape
        self.num_classes = num_classes
        self.readout = readout
        self.readout_steps = readout_steps
        self.lr, self.weight_decay = lr, weight_decay
        self.neuron_type = neuron
        self.ranges = {key: value for key, value in ranges.items() if value is not None}

        surrogate_fn = make_surrogate(surrogate, surrogate_args)
        sparse = gradient == "sparse"
        online = gradient == "online"
        if online:
            if not linear_blocks:
                raise ConfigError("model.gradient: online needs model.linear_blocks: true (or null)")
            if isinstance(online_chunk, bool) or not isinstance(online_chunk, int) or online_chunk < 1:
                raise ConfigError(f"model.online_chunk must be a positive int, got {online_chunk!r}")
            if loss != "per_step":
                raise ConfigError(f"model.gradient: online trains the per-step loss (a sum over steps that chunks "
                                  f"can split); model.loss {loss!r} is not possible: set model.loss: per_step or null")
            self.automatic_optimization = False
        self.online_chunk = online_chunk
        self.loss_kind = loss
        if surrogate_band is not None or sparse:
            try:
                surrogate_fn = surrogates.Truncated(surrogate_fn, 0.2 if surrogate_band is None else surrogate_band)
            except (TypeError, ValueError) as error:
                raise ConfigError(f"model.surrogate_band: {error}") from None
        if sparse and not linear_blocks:
            raise ConfigError("model.gradient: sparse needs model.linear_blocks: true (or null)")
        if linear_blocks:
            unsupported = {"neuron": neuron != "lif", "recurrent": recurrent, "batch_norm": batch_norm,
                           "tau_syn": tau_syn is not None, "train_tau": train_tau, "tau_mem_range": tau_mem_range}
            bad = [key for key, value in unsupported.items() if value]
            if bad:
                raise ConfigError(f"model.linear_blocks (gradient: sparse) builds fused Linear -> LIF blocks with one "
                                  f"tau_mem per layer; it does not support model.{', model.'.join(bad)} "
                                  f"(use gradient: exodus)")
        common = dict(threshold=threshold, reset=reset, v_min=v_min, max_spikes_per_bin=max_spikes_per_bin,
                      surrogate=surrogate_fn, gradient="exodus" if sparse or online else gradient, grad_scale=grad_scale,
                      train_threshold=train_threshold, backend=backend)
        neuron_args = dict(tau_syn=tau_syn, **common)
        if neuron == "lif":
            neuron_args.update(tau_mem=tau_mem, train_tau=train_tau)
        elif neuron == "iaf" and train_tau:
            raise ConfigError("model.train_tau needs model.neuron: lif, alif or adlif (IAF has no membrane time "
                              "constant)")
        per_neuron = train_tau or train_threshold

        def spiking(shape) -> nn.Module:
            """The neuron of the readout (spike_count) and, for lif / iaf, of the hidden layers (as before)."""
            cls = LIF if neuron in ("lif", "alif", "adlif") else IAF
            args = neuron_args if cls is IAF or neuron == "lif" else dict(neuron_args, tau_mem=tau_mem,
                                                                          train_tau=train_tau)
            return cls(shape=tuple(shape) if per_neuron else None, **args)

        def hidden_neuron(shape, can_recur: bool) -> nn.Module:
            shape = tuple(shape)
            rec = recurrent and can_recur
            needs_shape = per_neuron or rec or train_adaptation or bool(self.ranges)
            values = {}
            for key, (_, name, time_constant, _) in _RANGES.items():
                if ranges[key] is not None:
                    low, high = ranges[key]
                    values[name] = (_uniform_time_constant(low, high, shape) if time_constant
                                    else torch.empty(shape).uniform_(low, high))
            rec_args = dict(recurrent=rec, weight_rec_init=weight_rec_init, weight_rec_gain=weight_rec_gain,
                            zero_diagonal=zero_diagonal) if rec else {}
            if not adaptive:
                args = dict(neuron_args, **rec_args)
                if neuron == "lif" and "tau_mem" in values:
                    args["tau_mem"] = values["tau_mem"]
                cls = LIF if neuron == "lif" else IAF
                return cls(shape=shape if needs_shape else None, **args)
            args = dict(common, **rec_args, tau_mem=values.get("tau_mem", tau_mem),
                        tau_adapt=values.get("tau_adapt", tau_adapt), train_tau=train_tau,
                        train_adaptation=train_adaptation, shape=shape if needs_shape else None)
            try:
                if neuron == "alif":
                    module = ALIF(adapt_threshold=adapt_threshold, **args)
                else:
                    module = AdLIF(a=values.get("adapt_membrane", adapt_a), b=values.get("adapt_spike", adapt_b),
                                   **args)
            except ValueError as error:
                raise ConfigError(f"model ({neuron} neurons): {error}") from None
            if train_adaptation:
                for name in _FIXED_COUPLINGS[neuron]:
                    _freeze(module, name)
            return module

        self.layers = nn.ModuleDict()      # name -> nn.ModuleDict(synapse=..., neuron=...)
        features = input_shape
        if conv_channels:
            if len(input_shape) != 3:
                raise ConfigError(f"model.conv_channels {conv_channels} needs frames: input_shape (channels, height, "
                                  f"width), but the data gives input_shape {input_shape}. Remove model.conv_channels "
                                  f"for this dataset.")
            channels, height, width = input_shape
            for i, out in enumerate(conv_channels):
                pool = nn.AvgPool2d(conv_pool) if conv_pool > 1 else nn.Identity()
                synapse = nn.Sequential(nn.Conv2d(channels, out, conv_kernel, padding=conv_kernel // 2), pool)
                height, width = (height // conv_pool, width // conv_pool) if conv_pool > 1 else (height, width)
                if height < 1 or width < 1:
                    raise ConfigError(f"model.conv_pool {conv_pool} shrinks the {input_shape[1:]} frames to nothing "
                                      f"after {i + 1} conv layers; use fewer conv_channels or a smaller conv_pool")
                channels, features = out, (out, height, width)
                self.layers[f"conv{i}"] = nn.ModuleDict(dict(synapse=synapse, neuron=hidden_neuron(features, False)))
        size = math.prod(features)
        for i, width in enumerate(hidden):
            if linear_blocks:  # the block holds its own weight: no separate synapse
                block = LinearLIF(size, width, tau_mem=tau_mem,
                                  **dict(common, gradient=gradient,
                                         threshold=torch.full((width,), float(threshold)) if train_threshold else threshold))
                self.layers[f"hidden{i}"] = nn.ModuleDict(dict(synapse=nn.Identity(), neuron=block))
            else:
                synapse = NormalizedLinear(size, width) if batch_norm else nn.Linear(size, width)
                self.layers[f"hidden{i}"] = nn.ModuleDict(dict(synapse=synapse, neuron=hidden_neuron((width,), True)))
            size = width
        readout_neuron = (spiking((num_classes,)) if readout == "spike_count"
                          else ExpLeak(tau_mem=readout_tau, backend=backend))
        self.layers["readout"] = nn.ModuleDict(dict(synapse=nn.Linear(size, num_classes), neuron=readout_neuron))
        if weight_gain != 1.0:
            with torch.no_grad():
                for layer in self.layers.values():
                    for module in (*layer["synapse"].modules(), *layer["neuron"].modules()):
                        if isinstance(module, (nn.Linear, nn.Conv2d, LinearLIF)):
                            module.weight.mul_(weight_gain)

        self.metrics = nn.ModuleDict({split: torchmetrics.classification.MulticlassAccuracy(num_classes, average="micro")
                                      for split in ("train_acc", "val_acc", "test_acc")})
        self.firing_rates: dict[str, Tensor] = {}
        self._step_start: Optional[float] = None

    # ------------------------------------------------------------------ forward
    def check_input(self, x: Tensor) -> None:
        """Raise a ConfigError (a ValueError) naming the config keys when x does not fit the model."""
        if not isinstance(x, Tensor) or not torch.is_floating_point(x):
            raise TypeError(f"the model expects float spike tensors (batch, time, *input_shape), got "
                            f"{type(x).__name__} {getattr(x, 'dtype', '')}")
        if tuple(x.shape[2:]) != self.input_shape:
            raise ConfigError(
                f"batch of shape {tuple(x.shape)} does not fit model.input_shape {self.input_shape}: batches must be "
                f"(batch, time, *input_shape). exodus-train links model.input_shape to data.input_shape, so the "
                f"DataModule produces other shapes than its input_shape says (check its data.* settings); when "
                f"building the model by hand, pass input_shape={tuple(x.shape[2:])}.")
        if self.readout_steps is not None and x.shape[1] < self.readout_steps:
            raise ConfigError(f"model.readout_steps ({self.readout_steps}) exceeds the {x.shape[1]} time steps of the "
                              f"data; lower model.readout_steps")

    def clamp_neuron_parameters(self) -> None:
        """Clamp every trained per-neuron parameter that has a range (``tau_mem_range``, ...) into it, in
        place: tau_mem / tau_adapt to [low, high] steps (i.e. the decay exp(-1/tau) to
        [exp(-1/low), exp(-1/high)]), a / b to [low, high]. Runs after every optimizer step
        (``optimizer_step``); parameters without a range, or not trained, are left alone."""
        if not self.ranges:
            return
        with torch.no_grad():
            for name, layer in self.layers.items():
                if name == "readout":
                    continue
                module = layer["neuron"]
                for key, (low, high) in self.ranges.items():
                    value = getattr(module, _RANGES[key][1], None)
                    if isinstance(value, nn.Parameter):
                        value.clamp_(low, high)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.clamp_neuron_parameters()

    def reset_states(self) -> None:
        for layer in self.layers.values():
            layer["neuron"].reset_states()

    def forward(self, x: Tensor) -> Tensor:
        """x (batch, time, *input_shape) -> readout trace (batch, time, num_classes):
        spikes for readout="spike_count", else the ExpLeak membrane."""
        self.check_input(x)
        self.reset_states()     # samples are independent
        return self._run_layers(x)

    def _run_layers(self, x: Tensor) -> Tensor:
        """The layers on x from their current states (forward() resets them first)."""
        batch, steps = x.shape[:2]
        h = x
        for name, layer in self.layers.items():
            if name.startswith("conv"):
                current = layer["synapse"](h.flatten(0, 1)).unflatten(0, (batch, steps))
            else:
                current = layer["synapse"](h.flatten(2))        # nn.Linear maps all time steps at once
            h = layer["neuron"](current)
            if name != "readout" or self.readout == "spike_count":
                self.firing_rates[name] = h.detach().mean()
        return h

    def logits(self, trace: Tensor) -> Tensor:
        """Readout trace (batch, time, classes) -> logits (batch, classes) over the last readout_steps."""
        if self.readout_steps is not None:
            trace = trace[:, -self.readout_steps:]
        return self._finish_logits(self._reduce_readout(trace), trace.shape[1])

    def _reduce_readout(self, part: Tensor, so_far: Optional[Tensor] = None) -> Tensor:
        """The readout reduction (sum, or max for max_membrane) over the steps of ``part`` (batch, steps,
        classes), combined with ``so_far`` from earlier parts of the window: chunks reduce one by one."""
        if self.readout == "max_membrane":
            value = part.max(1).values
            return value if so_far is None else torch.maximum(so_far, value)
        value = part.sum(1)
        return value if so_far is None else so_far + value

    def _finish_logits(self, reduced: Tensor, window_steps: int) -> Tensor:
        return reduced / window_steps if self.readout == "mean_membrane" else reduced

    # ------------------------------------------------------------------ steps
    def loss(self, batch) -> Tensor:
        """Training loss of a batch (x, y): model.loss of the whole sequence (what training_step optimises)."""
        return self._logits_and_loss(batch)[1]

    def _logits_and_loss(self, batch) -> tuple[Tensor, Tensor]:
        x, y = batch
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"labels must be (batch,) = ({x.shape[0]},), got shape {tuple(y.shape)}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ConfigError(f"labels from {int(y.min())} to {int(y.max())} fall outside [0, model.num_classes="
                              f"{self.num_classes}); "
                              f"model.num_classes is linked from data.num_classes — the DataModule's labels and "
                              f"num_classes disagree")
        trace = self(x)
        logits = self.logits(trace)
        if self.loss_kind == "per_step":
            window = trace if self.readout_steps is None else trace[:, -self.readout_steps:]
            return logits, self.per_step_loss(window, y, window.shape[1])
        return logits, nn.functional.cross_entropy(logits, y)

    def per_step_loss(self, trace: Tensor, y: Tensor, window_steps: int) -> Tensor:
        """Cross-entropy of the readout trace (batch, steps, classes) at every step against y (batch,), summed
        over the steps and divided by batch * window_steps (so the chunks of a window add up to its mean)."""
        labels = y.repeat_interleave(trace.shape[1])
        return nn.functional.cross_entropy(trace.reshape(-1, self.num_classes), labels,
                                           reduction="sum") / (len(y) * window_steps)

    def _shared_step(self, batch, split: str) -> Tensor:
        logits, loss = self._logits_and_loss(batch)
        y = batch[1]
        accuracy = self.metrics[f"{split}_acc"]
        accuracy(logits.detach(), y)
        on_step = split == "train"
        # sync_dist: the epoch-level loss is averaged over the DDP ranks (a no-op on one process)
        self.log(f"{split}_loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(y),
                 sync_dist=True)
        self.log(f"{split}_acc", accuracy, on_step=False, on_epoch=True, prog_bar=split != "test", batch_size=len(y))
        if split == "train":
            for name, rate in self.firing_rates.items():
                self.log(f"rate/{name}", rate, on_step=True, on_epoch=False, batch_size=len(y))
        return loss

    def training_step(self, batch, batch_idx: int) -> Tensor:
        if self.hparams.gradient == "online":
            return self._online_training_step(batch)
        return self._shared_step(batch, "train")

    def _online_training_step(self, batch) -> Tensor:
        """gradient "online": the chunked backward of ``online_backward``, one optimizer step for the batch."""
        x, y = batch
        optimizer = self.optimizers()
        optimizer.zero_grad()
        total, logits = self.online_backward(batch, backward=self.manual_backward)
        optimizer.step()
        self.clamp_neuron_parameters()
        self.metrics["train_acc"](logits, y)
        self.log("train_loss", total, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=True)
        self.log("train_acc", self.metrics["train_acc"], on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=len(y))
        return total

    def online_backward(self, batch, backward=None) -> tuple[Tensor, Tensor]:
        """The gradient gradient "online" trains with: the batch is fed in chunks of online_chunk steps from
        reset states, the per-step loss of each chunk's readout window is back-propagated at once (the online
        blocks carry their traces across chunks, the other layers their states, detached). Accumulates into
        .grad; returns the total loss and the logits (batch, classes), both detached. Nothing is kept per
        chunk (the logits are reduced chunk by chunk), so the memory does not grow with the sequence."""
        backward = backward or (lambda loss: loss.backward())
        x, y = batch
        self.check_input(x)
        self.reset_states()
        steps = x.shape[1]
        first = 0 if self.readout_steps is None else steps - self.readout_steps  # readout window
        window_steps = steps - first
        total, logits = x.new_zeros(()), None
        for start in range(0, steps, self.online_chunk):
            stop = min(steps, start + self.online_chunk)
            trace = self._run_layers(x[:, start:stop])
            lo = max(first, start) - start
            if lo < trace.shape[1]:
                window = trace[:, lo:]
                loss = self.per_step_loss(window, y, window_steps)
                backward(loss)
                total = total + loss.detach()
                logits = self._reduce_readout(window.detach(), logits)  # self.logits, chunk by chunk
            for layer in self.layers.values():  # no graph across chunks (the online blocks detach their own)
                layer["neuron"].detach_states()
        return total, self._finish_logits(logits, window_steps)

    def validation_step(self, batch, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.logits(self(x)).argmax(1)

    # ------------------------------------------------------------------ hooks: shapes, timing, gradient norms
    def on_fit_start(self) -> None:
        self._check_datamodule()

    def on_validation_start(self) -> None:
        self._check_datamodule()

    def on_test_start(self) -> None:
        self._check_datamodule()

    def _check_datamodule(self) -> None:
        data = getattr(self.trainer, "datamodule", None)
        if data is None:
            return
        for key, model_value in (("input_shape", self.input_shape), ("num_classes", self.num_classes)):
            data_value = getattr(data, key, None)
            if data_value is not None and (tuple(data_value) if key == "input_shape" else data_value) != model_value:
                raise ConfigError(f"data.{key} is {data_value} but model.{key} is {model_value} (e.g. a checkpoint "
                                  f"trained on another task, or a model built by hand): make them equal")

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._step_start = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self._step_start is not None:
            self.log("step_time", time.perf_counter() - self._step_start, on_step=True, on_epoch=False,
                     batch_size=len(batch[1]))

    def on_before_optimizer_step(self, optimizer) -> None:
        for name, layer in self.layers.items():
            grads = [p.grad.detach().flatten() for p in layer.parameters() if p.grad is not None]
            if grads:
                self.log(f"grad_norm/{name}", torch.cat(grads).norm(), on_step=True, on_epoch=False)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
