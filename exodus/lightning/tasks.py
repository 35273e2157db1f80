"""Offline temporal tasks: generated from a seed, no download, same firing rate in every class.

* ``spike_timing_task`` / ``SpikeTimingData`` — spatio-temporal spike-pattern classification in
  the spirit of Randman (Zenke & Vogels 2021): every input neuron fires exactly one spike per
  sample; each class is a random smooth manifold of spike-time patterns; samples are points on
  their class's manifold, plus Gaussian spike-time jitter and class-independent Poisson noise
  spikes. Spike counts carry no class information — only the timing does.
* ``temporal_order_task`` / ``TemporalOrderData`` — temporal memory: two input groups A and B
  each fire one burst during a cue period; the class is which group fired first. A delay of
  noise follows; the answer is read out in a response window at the end
  (``model.readout_steps``). Both groups fire the same number of spikes in both classes.
* ``store_recall_task`` / ``StoreRecallData`` — working memory beyond the membrane time constant,
  after the store-recall task of Bellec et al. (2018): a sequence of value slots (one of K value
  populations active per slot), a STORE cue marks one early slot, a RECALL cue comes at the end;
  the class is the value shown at the store cue. The slots between them are label-independent
  distractors, so the value must be held for > 100 steps against interference. Every value
  population is active in the same number of slots in distribution, whatever the class.
* ``motif_stream_task`` / ``MotifStreamData`` — long recordings (10^3 steps and more) for long-
  sequence training such as online gradients: short spike-order motifs, one per class, repeat
  through the recording among other classes' motifs; the label is the motif shown most often.
  Every neuron fires once per occurrence whatever the motif, so counts carry no class information.
* ``rate_baseline`` — multinomial logistic regression on spike counts (optionally in coarse time
  bins), the evidence that a rate-only decoder is at chance on these tasks.

Everything is a pure function of the seed: the class manifolds come from ``seed``, the
train / val / test samples from independent streams derived from it.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from .data import ConfigError, SpikeDataModule

__all__ = [
    "spike_timing_task", "temporal_order_task", "store_recall_task", "motif_stream_task", "rate_baseline",
    "SpikeTimingData", "TemporalOrderData", "StoreRecallData", "MotifStreamData",
]

_SPLITS = {"train": 1, "val": 2, "test": 3}


def _single_threaded(function):
    """Run ``function`` with one torch thread: these tensors are tiny, and on a busy machine
    thread synchronisation made them 10-30x slower."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return function(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)
    return wrapper


def _generator(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 7919 + 104729 * int(stream) + 17)


def _add_noise(raster: Tensor, rate: float, generator: torch.Generator) -> Tensor:
    """Class-independent Bernoulli background spikes with probability ``rate`` per neuron-step."""
    if rate <= 0:
        return raster
    noise = torch.rand(raster.shape, generator=generator) < rate
    return torch.clamp(raster + noise.to(raster.dtype), max=1.0)


def _place_spikes(times: Tensor, time_steps: int) -> Tensor:
    """times (samples, neurons) in steps (rounded, clipped to [0, T-1]) -> binary raster (samples, T, neurons)."""
    samples, neurons = times.shape
    steps = times.round().clamp(0, time_steps - 1).long()
    raster = torch.zeros(samples, time_steps, neurons)
    raster.scatter_(1, steps.unsqueeze(1), 1.0)
    return raster


# ----------------------------------------------------------------------------- task (a)

def _manifold_coefficients(num_classes: int, neurons: int, manifold_dim: int, frequencies: int,
                           smoothness: float, generator: torch.Generator):
    """Random Fourier coefficients of one smooth map [0,1]^D -> [0,1]^neurons per class.
    Amplitude of frequency k decays as k^-smoothness."""
    shape = (num_classes, neurons, manifold_dim, frequencies)
    amplitude = torch.rand(shape, generator=generator)
    amplitude = amplitude * torch.arange(1, frequencies + 1, dtype=torch.float32).pow(-smoothness)
    phase = torch.rand(shape, generator=generator)
    frequency = torch.rand(shape, generator=generator) * torch.arange(1, frequencies + 1, dtype=torch.float32)
    return amplitude, frequency, phase


def _manifold(z: Tensor, labels: Tensor, coefficients) -> Tensor:
    """z (samples, D) in [0,1], labels (samples,) -> raw manifold values (samples, neurons)."""
    amplitude, frequency, phase = (c[labels] for c in coefficients)        # (S, N, D, K)
    angle = 2 * math.pi * (frequency * z[:, None, :, None] + phase)
    return (amplitude * torch.sin(angle)).sum(dim=(2, 3))


@_single_threaded
def spike_timing_task(samples: int, *, num_classes: int = 10, neurons: int = 40, time_steps: int = 60,
                      spike_window: Optional[int] = None, manifold_dim: int = 1, frequencies: int = 3,
                      smoothness: float = 1.0, jitter: float = 1.0, noise_rate: float = 0.002,
                      seed: int = 0, split: str = "train") -> tuple[Tensor, Tensor]:
    """Randman-style spike-timing classification.

    Each class c is a smooth random map f_c: [0,1]^manifold_dim -> [0,1]^neurons; a sample of class
    c draws z ~ U[0,1]^manifold_dim and every input neuron n fires once at
    t_n = f_c(z)_n * (spike_window - 1) + N(0, jitter^2) (rounded, clipped to the sample),
    then Bernoulli(noise_rate) noise spikes are added everywhere. Classes are balanced.

    Returns x float32 (samples, time_steps, neurons) in {0, 1} and y int64 (samples,).
    The manifolds depend only on ``seed``; ``split`` selects an independent sample stream.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {tuple(_SPLITS)}, got {split!r}")
    spike_window = time_steps if spike_window is None else spike_window
    if not 1 <= spike_window <= time_steps:
        raise ValueError(f"spike_window ({spike_window}) must lie in [1, time_steps={time_steps}]")
    if num_classes < 2 or neurons < 1 or manifold_dim < 1 or frequencies < 1:
        raise ValueError("need num_classes >= 2, neurons >= 1, manifold_dim >= 1, frequencies >= 1")
    coefficients = _manifold_coefficients(num_classes, neurons, manifold_dim, frequencies, smoothness,
                                          _generator(seed, 0))
    # Normalise every (class, neuron) map to [0, 1] over a dense sample of the manifold.
    probe = torch.rand(2048, manifold_dim, generator=_generator(seed, 4))
    lows, highs = [], []
    for c in range(num_classes):
        values = _manifold(probe, torch.full((len(probe),), c), coefficients)
        lows.append(values.min(0).values)
        highs.append(values.max(0).values)
    low, high = torch.stack(lows), torch.stack(highs)                        # (C, N)

    g = _generator(seed, _SPLITS[split])
    labels = torch.arange(samples) % num_classes
    labels = labels[torch.randperm(samples, generator=g)]
    z = torch.rand(samples, manifold_dim, generator=g)
    unit = (_manifold(z, labels, coefficients) - low[labels]) / (high[labels] - low[labels]).clamp_min(1e-6)
    times = unit.clamp(0, 1) * (spike_window - 1) + jitter * torch.randn(unit.shape, generator=g)
    raster = _add_noise(_place_spikes(times, time_steps), noise_rate, g)
    return raster, labels


# ----------------------------------------------------------------------------- task (b)

@_single_threaded
def temporal_order_task(samples: int, *, group_size: int = 10, distractors: int = 10, cue_steps: int = 30,
                        min_gap: int = 5, burst_width: float = 1.0, delay_steps: int = 30,
                        response_steps: int = 10, noise_rate: float = 0.01, seed: int = 0,
                        split: str = "train") -> tuple[Tensor, Tensor]:
    """Which of two input groups fired first?  Class 0: A before B, class 1: B before A.

    Inputs: neurons [0, group_size) are group A, [group_size, 2 group_size) group B, the remaining
    ``distractors`` neurons fire only noise. During the cue period (``cue_steps``) each group
    fires one burst — every neuron of the group spikes once near the burst time (Gaussian spread
    ``burst_width`` steps) — at two onsets at least ``min_gap`` steps apart. Then ``delay_steps``
    and ``response_steps`` of Bernoulli(noise_rate) noise on all neurons (noise is present during
    the cue too). The answer should be read in the last ``response_steps`` steps.

    Returns x float32 (samples, cue + delay + response steps, 2 group_size + distractors) and
    y int64 (samples,).
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {tuple(_SPLITS)}, got {split!r}")
    if cue_steps < min_gap + 2 or min_gap < 1:
        raise ValueError(f"need min_gap >= 1 and cue_steps >= min_gap + 2, got {cue_steps=}, {min_gap=}")
    time_steps = cue_steps + delay_steps + response_steps
    neurons = 2 * group_size + distractors
    g = _generator(seed, 10 + _SPLITS[split])
    labels = torch.arange(samples) % 2
    labels = labels[torch.randperm(samples, generator=g)]
    # onsets: first burst at `first`, second one `gap` later, both inside the cue period
    gap = min_gap + (torch.rand(samples, generator=g) * (cue_steps - 1 - min_gap + 1)).floor()
    first = (torch.rand(samples, generator=g) * (cue_steps - gap)).floor()
    onset_a = torch.where(labels == 0, first, first + gap)
    onset_b = torch.where(labels == 0, first + gap, first)
    spread = burst_width * torch.randn(samples, 2 * group_size, generator=g)
    times = torch.cat([onset_a[:, None].expand(-1, group_size), onset_b[:, None].expand(-1, group_size)], 1)
    times = (times + spread).clamp(0, cue_steps - 1)
    raster = torch.zeros(samples, time_steps, neurons)
    raster[:, :, : 2 * group_size] = _place_spikes(times, time_steps)
    return _add_noise(raster, noise_rate, g), labels


# ----------------------------------------------------------------------------- task (c)

def _store_recall_check(values: int, group_size: int, slot_steps: int, value_slots: int, store_slots: int,
                        recall_steps: int, rate: float, noise_rate: float, distractors: int) -> None:
    if values < 2 or group_size < 1 or slot_steps < 1 or recall_steps < 1 or distractors < 0:
        raise ValueError(f"need values >= 2, group_size >= 1, slot_steps >= 1, recall_steps >= 1, distractors >= 0; "
                         f"got {values=}, {group_size=}, {slot_steps=}, {recall_steps=}, {distractors=}")
    if store_slots < 1 or store_slots + values - 1 > value_slots:
        raise ValueError(f"need 1 <= store_slots and store_slots + values - 1 <= value_slots (the store slot and the "
                         f"values - 1 slots after it fit in the sequence); got {store_slots=}, {values=}, "
                         f"{value_slots=}")
    if not (0 < rate <= 1 and 0 <= noise_rate < 1):
        raise ValueError(f"need 0 < rate <= 1 and 0 <= noise_rate < 1, got {rate=}, {noise_rate=}")


@_single_threaded
def store_recall_task(samples: int, *, values: int = 2, group_size: int = 10, slot_steps: int = 10,
                      value_slots: int = 14, store_slots: int = 3, recall_steps: int = 10, rate: float = 0.3,
                      noise_rate: float = 0.01, distractors: int = 0, seed: int = 0,
                      split: str = "train") -> tuple[Tensor, Tensor]:
    """Store-recall (after Bellec et al. 2018): which value was shown at the STORE cue?

    Inputs, in populations of ``group_size`` neurons: ``values`` value populations, then STORE,
    then RECALL, then ``distractors`` noise-only neurons. The sample is ``value_slots`` slots of
    ``slot_steps`` steps followed by a recall period of ``recall_steps`` steps. In every slot one
    value population is active (each of its neurons spikes with probability ``rate`` per step).
    The STORE population is active during one slot s, drawn uniformly from the first
    ``store_slots``; the class is the value of slot s. Slots s+1 .. s+values-1 show the other
    values once each (random order), so that slots s .. s+values-1 hold every value exactly once;
    all other slots draw their value uniformly and independently. Hence the number of slots per
    value population — and every spike count — has the same distribution in all classes, and
    everything after slot s+values-1 is independent of the class: the answer has to be held for at
    least (value_slots - store_slots - values + 1) * slot_steps steps of distractors. During the
    recall period the RECALL population is active and no value is shown; read the answer there
    (``model.readout_steps = recall_steps``). Bernoulli(``noise_rate``) noise on every neuron
    throughout.

    Returns x float32 (samples, value_slots * slot_steps + recall_steps,
    (values + 2) * group_size + distractors) and y int64 (samples,), balanced classes.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {tuple(_SPLITS)}, got {split!r}")
    _store_recall_check(values, group_size, slot_steps, value_slots, store_slots, recall_steps, rate, noise_rate,
                        distractors)
    g = _generator(seed, 20 + _SPLITS[split])
    labels = torch.arange(samples) % values
    labels = labels[torch.randperm(samples, generator=g)]
    slot_values = torch.randint(values, (samples, value_slots), generator=g)
    store = torch.randint(store_slots, (samples,), generator=g)
    # slots store .. store + values - 1: the label, then the other values in random order
    others = torch.rand(samples, values, generator=g).argsort(1)          # random permutation of the values
    others = others[others != labels[:, None]].view(samples, values - 1)  # ... without the label
    block = torch.cat([labels[:, None], others], 1)                       # (samples, values)
    positions = store[:, None] + torch.arange(values)
    slot_values.scatter_(1, positions, block)

    time_steps = value_slots * slot_steps + recall_steps
    neurons = (values + 2) * group_size + distractors
    active = torch.zeros(samples, time_steps, values + 2, dtype=torch.bool)  # population active per step
    step_slot = torch.arange(value_slots * slot_steps) // slot_steps        # slot index of each step
    active[:, : value_slots * slot_steps].scatter_(2, slot_values[:, step_slot].unsqueeze(2), True)
    store_steps = step_slot[None, :] == store[:, None]
    active[:, : value_slots * slot_steps, values] = store_steps
    active[:, value_slots * slot_steps:, values + 1] = True
    drive = active.repeat_interleave(group_size, dim=2)
    raster = torch.zeros(samples, time_steps, neurons)
    raster[:, :, : (values + 2) * group_size] = (drive & (torch.rand(drive.shape, generator=g) < rate)).float()
    return _add_noise(raster, noise_rate, g), labels


# ----------------------------------------------------------------------------- rate baseline

@_single_threaded
def rate_baseline(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, *, time_bins: int = 1,
                  epochs: int = 300, lr: float = 0.05, weight_decay: float = 1e-4, seed: int = 0) -> float:
    """Test accuracy of multinomial logistic regression on spike counts.

    x: (samples, time, *features) spike rasters. ``time_bins = 1`` counts every input neuron's
    spikes over the whole sample (a rate-only decoder); ``time_bins > 1`` counts them in that many
    equal time bins (a coarse-timing decoder, for contrast). Features are standardised with the
    training statistics; full-batch L-BFGS-free training with Adam, deterministic under ``seed``.
    """
    def features(x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], x.shape[1], -1).float()
        bins = torch.tensor_split(x, time_bins, dim=1)
        return torch.cat([b.sum(1) for b in bins], dim=1)

    f_train, f_test = features(x_train), features(x_test)
    mean, std = f_train.mean(0), f_train.std(0).clamp_min(1e-6)
    f_train, f_test = (f_train - mean) / std, (f_test - mean) / std
    classes = int(max(y_train.max(), y_test.max())) + 1
    g = torch.Generator().manual_seed(seed)
    weight = (0.01 * torch.randn(f_train.shape[1], classes, generator=g)).requires_grad_()
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(epochs):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(f_train @ weight + bias, y_train)
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return float(((f_test @ weight + bias).argmax(1) == y_test).float().mean())


# ----------------------------------------------------------------------------- task (d)

@_single_threaded
def motif_stream_task(samples: int, *, num_classes: int = 5, neurons: int = 40, time_steps: int = 1000,
                      motif_steps: int = 20, mean_gap: float = 20.0, label_fraction: float = 0.5,
                      jitter: float = 1.0, noise_rate: float = 0.005, seed: int = 0,
                      split: str = "train") -> tuple[Tensor, Tensor]:
    """Long recordings of repeated spike-order motifs: evidence spread over the whole sequence.

    Class c owns a motif: every input neuron n fires once at offset m_(c,n) ~ U{0 .. motif_steps-1}
    (drawn from ``seed``). A sample is a stream of motif occurrences separated by gaps
    ~ U{0 .. 2 mean_gap} steps; each occurrence shows the label's motif with probability
    ``label_fraction`` and otherwise the motif of another class drawn uniformly (a distractor).
    Every spike is jittered by N(0, jitter^2) steps (clipped to its occurrence), then
    Bernoulli(noise_rate) noise is added. Each neuron fires once per occurrence whatever the motif, so
    spike counts carry no class information: only the order within an occurrence does, and the
    label is the motif shown most often across the recording (integrate over the whole sequence).

    Returns x float32 (samples, time_steps, neurons) in {0, 1} and y int64 (samples,).
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {tuple(_SPLITS)}, got {split!r}")
    if num_classes < 2 or neurons < 1 or motif_steps < 1:
        raise ValueError(f"need num_classes >= 2, neurons >= 1, motif_steps >= 1, got {num_classes=}, "
                         f"{neurons=}, {motif_steps=}")
    if time_steps < motif_steps:
        raise ValueError(f"time_steps ({time_steps}) must hold at least one motif (motif_steps={motif_steps})")
    if not 0.0 < label_fraction <= 1.0 or mean_gap < 0:
        raise ValueError(f"need 0 < label_fraction <= 1 and mean_gap >= 0, got {label_fraction=}, {mean_gap=}")
    offsets = torch.randint(0, motif_steps, (num_classes, neurons), generator=_generator(seed, 30)).float()
    g = _generator(seed, 30 + _SPLITS[split])
    labels = torch.arange(samples) % num_classes
    labels = labels[torch.randperm(samples, generator=g)]
    rows, onsets, motifs = [], [], []
    for sample in range(samples):
        t = int(torch.randint(0, int(2 * mean_gap) + 1, (), generator=g))
        while t + motif_steps <= time_steps:
            motif = int(labels[sample])
            if float(torch.rand((), generator=g)) >= label_fraction:   # a distractor: any other class
                motif = (motif + 1 + int(torch.randint(0, num_classes - 1, (), generator=g))) % num_classes
            rows.append(sample), onsets.append(t), motifs.append(motif)
            t += motif_steps + int(torch.randint(0, int(2 * mean_gap) + 1, (), generator=g))
    rows_t, onsets_t = torch.tensor(rows, dtype=torch.long), torch.tensor(onsets, dtype=torch.float32)
    spread = jitter * torch.randn(len(rows), neurons, generator=g)
    times = (offsets[torch.tensor(motifs, dtype=torch.long)] + spread).round().clamp(0, motif_steps - 1)
    steps = (onsets_t[:, None] + times).long()                                   # (occurrences, neurons)
    raster = torch.zeros(samples, time_steps, neurons)
    raster[rows_t[:, None].expand_as(steps), steps, torch.arange(neurons).expand_as(steps)] = 1.0
    return _add_noise(raster, noise_rate, g), labels


# ----------------------------------------------------------------------------- DataModules

def _validate(generate) -> None:
    """Check the task arguments at construction time, naming the config section."""
    try:
        generate()
    except ValueError as error:
        raise ConfigError(f"data.init_args: {error}") from None


class _GeneratedData(SpikeDataModule):
    """Generates the three splits in ``setup`` (cheap: a few MB, well under a second)."""

    def __init__(self, root: Optional[str] = None, batch_size: int = 64, num_workers: int = 0, seed: int = 0,
                 train_samples: int = 2000, val_samples: int = 500, test_samples: int = 500):
        super().__init__(root=root, batch_size=batch_size, num_workers=num_workers, seed=seed)
        for name, value in (("train_samples", train_samples), ("val_samples", val_samples),
                            ("test_samples", test_samples)):
            if int(value) < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {value}")
        self.sizes = {"train": int(train_samples), "val": int(val_samples), "test": int(test_samples)}

    make_task = None  # the task function (staticmethod): make_task(samples, seed=, split=, **self.task)

    def _set_task(self, **task) -> None:
        """Store the task arguments and check them now (the error names the config section)."""
        self.task = task
        _validate(lambda: type(self).make_task(1, seed=self.seed, **task))

    def generate(self, split: str) -> tuple[Tensor, Tensor]:
        return type(self).make_task(self.sizes[split], seed=self.seed, split=split, **self.task)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.task["neurons"],)

    @property
    def num_classes(self) -> int:
        return self.task["num_classes"]

    @property
    def time_steps(self) -> int:
        return self.task["time_steps"]

    def setup(self, stage: Optional[str] = None) -> None:
        for split in ("train", "val", "test"):
            if getattr(self, f"{split}_set") is None:
                setattr(self, f"{split}_set", TensorDataset(*self.generate(split)))

    def rate_baseline(self, time_bins: int = 1) -> float:
        """rate_baseline() trained on the train split, evaluated on the test split."""
        (x_tr, y_tr), (x_te, y_te) = self.generate("train"), self.generate("test")
        return rate_baseline(x_tr, y_tr, x_te, y_te, time_bins=time_bins, seed=self.seed)


class SpikeTimingData(_GeneratedData):
    """DataModule of ``spike_timing_task`` (Randman-style; same rates in all classes).

    Args: see ``spike_timing_task``; ``root`` is accepted for a uniform interface and unused
    (nothing is downloaded or written). Inputs (batch, time_steps, neurons)."""

    make_task = staticmethod(spike_timing_task)

    def __init__(self, root: Optional[str] = None, batch_size: int = 64, num_workers: int = 0, seed: int = 0,
                 train_samples: int = 2000, val_samples: int = 500, test_samples: int = 500,
                 num_classes: int = 10, neurons: int = 40, time_steps: int = 60, spike_window: Optional[int] = None,
                 manifold_dim: int = 1, frequencies: int = 3, smoothness: float = 1.0, jitter: float = 1.0,
                 noise_rate: float = 0.002):
        super().__init__(root, batch_size, num_workers, seed, train_samples, val_samples, test_samples)
        self._set_task(num_classes=num_classes, neurons=neurons, time_steps=time_steps, spike_window=spike_window,
                       manifold_dim=manifold_dim, frequencies=frequencies, smoothness=smoothness, jitter=jitter,
                       noise_rate=noise_rate)


class TemporalOrderData(_GeneratedData):
    """DataModule of ``temporal_order_task`` (2 classes: A first / B first).

    Args: see ``temporal_order_task``; ``root`` is unused. Inputs (batch, time_steps,
    2 group_size + distractors); read the answer in the last ``response_steps`` steps
    (set ``model.readout_steps`` to it)."""

    make_task = staticmethod(temporal_order_task)

    def __init__(self, root: Optional[str] = None, batch_size: int = 64, num_workers: int = 0, seed: int = 0,
                 train_samples: int = 2000, val_samples: int = 500, test_samples: int = 500,
                 group_size: int = 10, distractors: int = 10, cue_steps: int = 30, min_gap: int = 5,
                 burst_width: float = 1.0, delay_steps: int = 30, response_steps: int = 10,
                 noise_rate: float = 0.01):
        super().__init__(root, batch_size, num_workers, seed, train_samples, val_samples, test_samples)
        self._set_task(group_size=group_size, distractors=distractors, cue_steps=cue_steps, min_gap=min_gap,
                       burst_width=burst_width, delay_steps=delay_steps, response_steps=response_steps,
                       noise_rate=noise_rate)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (2 * self.task["group_size"] + self.task["distractors"],)

    @property
    def num_classes(self) -> int:
        return 2

    @property
    def time_steps(self) -> int:
        t = self.task
        return t["cue_steps"] + t["delay_steps"] + t["response_steps"]

    @property
    def response_steps(self) -> int:
        return self.task["response_steps"]


class StoreRecallData(_GeneratedData):
    """DataModule of ``store_recall_task`` (``values`` classes). Args: see ``store_recall_task``;
    ``root`` is unused. Inputs (batch, value_slots * slot_steps + recall_steps,
    (values + 2) group_size + distractors); read the answer in the last ``recall_steps`` steps
    (set ``model.readout_steps`` to it)."""

    make_task = staticmethod(store_recall_task)

    def __init__(self, root: Optional[str] = None, batch_size: int = 64, num_workers: int = 0, seed: int = 0,
                 train_samples: int = 2000, val_samples: int = 500, test_samples: int = 500,
                 values: int = 2, group_size: int = 10, slot_steps: int = 10, value_slots: int = 14,
                 store_slots: int = 3, recall_steps: int = 10, rate: float = 0.3, noise_rate: float = 0.01,
                 distractors: int = 0):
        super().__init__(root, batch_size, num_workers, seed, train_samples, val_samples, test_samples)
        self._set_task(values=values, group_size=group_size, slot_steps=slot_steps, value_slots=value_slots,
                       store_slots=store_slots, recall_steps=recall_steps, rate=rate, noise_rate=noise_rate,
                       distractors=distractors)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return ((self.task["values"] + 2) * self.task["group_size"] + self.task["distractors"],)

    @property
    def num_classes(self) -> int:
        return self.task["values"]

    @property
    def time_steps(self) -> int:
        return self.task["value_slots"] * self.task["slot_steps"] + self.task["recall_steps"]

    @property
    def recall_steps(self) -> int:
        return self.task["recall_steps"]

    @property
    def min_delay(self) -> int:
        """Steps between the last class-dependent slot and the recall period."""
        t = self.task
        return (t["value_slots"] - t["store_slots"] - t["values"] + 1) * t["slot_steps"]


class MotifStreamData(_GeneratedData):
    """DataModule of ``motif_stream_task`` (long sequences; same rates in all classes). Args: see
    ``motif_stream_task``; ``root`` is unused. Inputs (batch, time_steps, neurons)."""

    make_task = staticmethod(motif_stream_task)

    def __init__(self, root: Optional[str] = None, batch_size: int = 64, num_workers: int = 0, seed: int = 0,
                 train_samples: int = 2000, val_samples: int = 500, test_samples: int = 500,
                 num_classes: int = 5, neurons: int = 40, time_steps: int = 1000, motif_steps: int = 20,
                 mean_gap: float = 20.0, label_fraction: float = 0.5, jitter: float = 1.0,
                 noise_rate: float = 0.005):
        super().__init__(root, batch_size, num_workers, seed, train_samples, val_samples, test_samples)
        self._set_task(num_classes=num_classes, neurons=neurons, time_steps=time_steps, motif_steps=motif_steps,
                       mean_gap=mean_gap, label_fraction=label_fraction, jitter=jitter, noise_rate=noise_rate)


# ----------------------------------------------------------------------------- command line

def _baseline_table(config_paths: list[str], bins: tuple[int, ...] = (1, 2, 4, 10)) -> str:
    """Markdown table of rate_baseline() for the offline task of each config file."""
    import yaml

    known = {cls.__name__: cls for cls in (SpikeTimingData, TemporalOrderData, StoreRecallData, MotifStreamData)}
    lines = ["| config | task | chance | " + " | ".join(
        "counts (rate only)" if b == 1 else f"counts in {b} time bins" for b in bins) + " |",
        "| --- " * (3 + len(bins)) + "|"]
    for path in config_paths:
        with open(path) as handle:
            data = (yaml.safe_load(handle) or {}).get("data", {})
        name = str(data.get("class_path", "")).rsplit(".", 1)[-1]
        if name not in known:
            raise SystemExit(f"{path}: data.class_path {data.get('class_path')!r} is not an offline task "
                             f"({', '.join(known)})")
        module = known[name](**data.get("init_args", {}))
        scores = " | ".join(f"{module.rate_baseline(time_bins=b):.3f}" for b in bins)
        lines.append(f"| {path} | {name} | {1 / module.num_classes:.3f} | {scores} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m exodus.lightning.tasks CONFIG.yaml [CONFIG.yaml ...]\n"
                         "prints the test accuracy of logistic regression on spike counts for each offline task")
    print(_baseline_table(sys.argv[1:]))
