"""Offline temporal tasks: determinism, equal rates across classes, the rate-only baseline."""
import pytest
import torch

pytest.importorskip("pytorch_lightning")

from exodus.lightning.data import EpochShuffleSampler  # noqa: E402
from exodus.lightning.tasks import (  # noqa: E402
    MotifStreamData, SpikeTimingData, StoreRecallData, TemporalOrderData, motif_stream_task, rate_baseline,
    spike_timing_task, store_recall_task, temporal_order_task,
)

TIMING = dict(num_classes=5, neurons=20, time_steps=40, jitter=1.0, noise_rate=0.002)
ORDER = dict(group_size=6, distractors=4, cue_steps=20, min_gap=4, delay_steps=20, response_steps=5, noise_rate=0.01)
RECALL = dict(values=3, group_size=4, slot_steps=5, value_slots=10, store_slots=3, recall_steps=5, rate=0.4,
              noise_rate=0.01, distractors=2)
MOTIF = dict(num_classes=4, neurons=12, time_steps=300, motif_steps=10, mean_gap=5.0, label_fraction=0.5,
             jitter=1.0, noise_rate=0.005)


def first_spike_times(x):
    """(samples, time, neurons) -> time of the first spike of each neuron, (samples, neurons)."""
    steps = torch.arange(x.shape[1], dtype=x.dtype)[None, :, None]
    return torch.where(x > 0, steps, torch.full_like(x, float("inf"))).min(1).values


@pytest.mark.parametrize("task, args", [(spike_timing_task, TIMING), (temporal_order_task, ORDER),
                                        (store_recall_task, RECALL), (motif_stream_task, MOTIF)])
def test_generation_is_a_function_of_seed_and_split(task, args):
    x1, y1 = task(50, seed=3, split="train", **args)
    x2, y2 = task(50, seed=3, split="train", **args)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x3, _ = task(50, seed=3, split="val", **args)
    x4, _ = task(50, seed=4, split="train", **args)
    assert not torch.equal(x1, x3) and not torch.equal(x1, x4)
    assert x1.dtype == torch.float32 and y1.dtype == torch.int64
    assert set(x1.unique().tolist()) <= {0.0, 1.0}


def test_spike_timing_every_neuron_fires_exactly_once_without_noise():
    x, y = spike_timing_task(200, seed=0, **{**TIMING, "noise_rate": 0.0})
    assert torch.equal(x.sum(1), torch.ones(200, TIMING["neurons"]))      # counts carry nothing
    assert torch.equal(torch.bincount(y), torch.full((TIMING["num_classes"],), 40))


def test_spike_timing_classes_share_manifolds_across_splits():
    """Train and test samples of one class lie on the same manifold: the nearest training sample
    (in spike-time space) of a test sample has its class, far above chance; for samples from
    another seed's manifolds the nearest training sample's class is at chance."""
    args = {**TIMING, "jitter": 0.0, "noise_rate": 0.0}
    x_train, y_train = spike_timing_task(500, seed=0, split="train", **args)
    x_test, y_test = spike_timing_task(200, seed=0, split="test", **args)
    x_other, _ = spike_timing_task(200, seed=1, split="test", **args)
    t_train, t_test, t_other = (first_spike_times(x) for x in (x_train, x_test, x_other))
    accuracy = (y_train[torch.cdist(t_test, t_train).argmin(1)] == y_test).float().mean()
    other = (y_train[torch.cdist(t_other, t_train).argmin(1)] == y_test).float().mean()
    assert accuracy > 0.9 and other < 0.4


def test_temporal_order_label_is_the_order_of_the_groups():
    x, y = temporal_order_task(300, seed=0, **{**ORDER, "noise_rate": 0.0})
    group = ORDER["group_size"]
    times = first_spike_times(x)
    a_first = times[:, :group].mean(1) < times[:, group:2 * group].mean(1)
    assert torch.equal(a_first, y == 0)
    counts = x.sum(1)
    assert torch.equal(counts[:, :2 * group], torch.ones(300, 2 * group))   # same rates in both classes
    assert counts[:, 2 * group:].sum() == 0
    assert x[:, ORDER["cue_steps"]:].sum() == 0                              # silent delay without noise


def active_slots(x, args):
    """(samples, T, neurons) without noise -> which populations are active in each value slot and in the
    recall period: (samples, value_slots + 1, values + 2) bool."""
    k, g, steps = args["values"], args["group_size"], args["slot_steps"]
    populations = x[:, :, : (k + 2) * g].unflatten(2, (k + 2, g)).sum(3)           # (S, T, k + 2)
    slots = populations[:, : args["value_slots"] * steps].unflatten(1, (args["value_slots"], steps)).sum(2)
    recall = populations[:, args["value_slots"] * steps:].sum(1, keepdim=True)
    return torch.cat([slots, recall], 1) > 0


def test_store_recall_label_is_the_value_at_the_store_cue():
    args = {**RECALL, "noise_rate": 0.0, "rate": 1.0}
    x, y = store_recall_task(300, seed=0, **args)
    k = args["values"]
    assert x.shape == (300, args["value_slots"] * args["slot_steps"] + args["recall_steps"], (k + 2) * 4 + 2)
    active = active_slots(x, args)
    values = active[:, :-1, :k]
    assert torch.equal(values.sum(2), torch.ones(300, args["value_slots"], dtype=torch.long))   # one value per slot
    store = active[:, :-1, k]
    assert torch.equal(store.sum(1), torch.ones(300, dtype=torch.long))                        # one store slot
    s = store.float().argmax(1)
    assert int(s.max()) < args["store_slots"] and len(s.unique()) == args["store_slots"]
    slot_value = values.float().argmax(2)                                                     # (S, value_slots)
    assert torch.equal(slot_value[torch.arange(300), s], y)
    # the store slot and the values - 1 slots after it show every value once
    block = torch.stack([slot_value[torch.arange(300), s + i] for i in range(k)], 1)
    assert torch.equal(block.sort(1).values, torch.arange(k).expand(300, k))
    # recall period: only the RECALL population; no stores or values; distractors silent without noise
    assert torch.all(active[:, -1, k + 1]) and not torch.any(active[:, -1, : k + 1])
    assert not torch.any(active[:, :-1, k + 1]) and x[:, :, (k + 2) * 4:].sum() == 0
    assert torch.equal(torch.bincount(y), torch.full((k,), 100))


def test_store_recall_after_the_block_nothing_depends_on_the_label():
    """Slots after s + values - 1 are drawn independently of the label: the value shown in the last
    slots is at chance as a predictor of the class, while the store slot predicts it exactly."""
    args = {**RECALL, "values": 2, "noise_rate": 0.0, "rate": 1.0, "value_slots": 12}
    x, y = store_recall_task(4000, seed=1, **args)
    slot_value = active_slots(x, args)[:, :-1, :2].float().argmax(2)
    first_free = args["store_slots"] + args["values"] - 1
    for slot in range(first_free, args["value_slots"]):
        agreement = float((slot_value[:, slot] == y).float().mean())
        assert abs(agreement - 0.5) < 0.04, (slot, agreement)
    data = StoreRecallData(**{**args, "train_samples": 10, "val_samples": 10, "test_samples": 10})
    assert data.min_delay == (args["value_slots"] - first_free) * args["slot_steps"]


def _occurrences(x):
    """Clean motif streams (no noise, jitter 0): every neuron fires once per occurrence and occurrences do
    not overlap, so the k-th spike of every neuron belongs to occurrence k. -> list per sample of
    (occurrences, neurons) spike offsets from the occurrence's first spike."""
    result = []
    for sample in x:
        times = [sample[:, n].nonzero().squeeze(1) for n in range(sample.shape[1])]
        counts = {len(t) for t in times}
        assert len(counts) == 1, "every neuron fires once per occurrence"
        stacked = torch.stack(times, 1)                                     # (occurrences, neurons)
        result.append(stacked - stacked.min(1, keepdim=True).values)
    return result


def test_motif_stream_label_is_the_most_frequent_motif():
    """Without noise and jitter every occurrence is one class's motif (the same offsets in every split:
    the motifs come from the seed); the label's motif makes up label_fraction of the occurrences and is
    the most frequent one in nearly every sample; counts are the same in every class."""
    clean = {**MOTIF, "jitter": 0.0, "noise_rate": 0.0}
    x_pure, y_pure = motif_stream_task(40, seed=2, split="val", **{**clean, "label_fraction": 1.0})
    templates = {}
    for occ, label in zip(_occurrences(x_pure), y_pure.tolist()):
        assert (occ == occ[0]).all(), "with label_fraction 1 every occurrence shows the label's motif"
        assert torch.equal(templates.setdefault(label, occ[0]), occ[0]), "one motif per class"
    assert len(templates) == MOTIF["num_classes"]
    x, y = motif_stream_task(300, seed=2, split="train", **clean)
    label_share, majority = [], []
    for occ, label in zip(_occurrences(x), y.tolist()):
        shown = [next(c for c, m in templates.items() if torch.equal(m, row)) for row in occ]
        counts = torch.bincount(torch.tensor(shown), minlength=MOTIF["num_classes"])
        label_share.append(float(counts[label]) / len(shown))
        majority.append(int(counts.argmax()) == label)
    assert abs(sum(label_share) / len(label_share) - MOTIF["label_fraction"]) < 0.03
    assert sum(majority) / len(majority) > 0.9                             # ties count as misses
    per_class = torch.stack([x[y == c].sum((1, 2)).float().mean() for c in range(MOTIF["num_classes"])])
    assert (per_class.max() - per_class.min()) / per_class.mean() < 0.1     # same spike counts in all classes


def test_rate_baseline_near_chance_on_every_task_but_timing_bins_decode():
    """Spike counts -> logistic regression stays near chance; the same decoder on counts in 8 time
    bins reads the timing and is well above chance (so the baseline is able to learn)."""
    data = [
        (spike_timing_task(1000, seed=0, split="train", **TIMING), spike_timing_task(400, seed=0, split="test", **TIMING),
         1 / TIMING["num_classes"], 0.3),
        (temporal_order_task(1000, seed=0, split="train", **ORDER), temporal_order_task(400, seed=0, split="test", **ORDER),
         0.5, 0.3),
        (store_recall_task(1000, seed=0, split="train", **RECALL), store_recall_task(400, seed=0, split="test", **RECALL),
         1 / RECALL["values"], 0.15),     # linear in bin counts: store x value is a product, partly decodable
    ]
    for (x_tr, y_tr), (x_te, y_te), chance, margin in data:
        rate = rate_baseline(x_tr, y_tr, x_te, y_te, time_bins=1)
        timed = rate_baseline(x_tr, y_tr, x_te, y_te, time_bins=8)
        assert abs(rate - chance) < 0.08, (rate, chance)
        assert timed > chance + margin, (timed, chance)
    # motif streams: the motifs sit at random onsets, so neither counts nor coarse time bins decode them
    (x_tr, y_tr), (x_te, y_te) = (motif_stream_task(600, seed=0, split=split, **MOTIF) for split in ("train", "test"))
    for bins in (1, 8):
        assert abs(rate_baseline(x_tr, y_tr, x_te, y_te, time_bins=bins) - 1 / MOTIF["num_classes"]) < 0.1


def test_datamodules_shapes_match_batches():
    for data in (SpikeTimingData(batch_size=16, train_samples=40, val_samples=20, test_samples=20, **TIMING),
                 TemporalOrderData(batch_size=16, train_samples=40, val_samples=20, test_samples=20, **ORDER),
                 StoreRecallData(batch_size=16, train_samples=40, val_samples=20, test_samples=20, **RECALL),
                 MotifStreamData(batch_size=16, train_samples=40, val_samples=20, test_samples=20, **MOTIF)):
        data.setup("fit")
        for loader in (data.train_dataloader(), data.val_dataloader(), data.test_dataloader()):
            x, y = next(iter(loader))
            assert tuple(x.shape[1:]) == (data.time_steps, *data.input_shape)
            assert x.dtype == torch.float32 and y.dtype == torch.int64 and int(y.max()) < data.num_classes
        assert sum(len(b[1]) for b in data.train_dataloader()) == 40


def test_datamodule_uses_the_task_generator():
    data = SpikeTimingData(seed=5, train_samples=30, val_samples=10, test_samples=10, **TIMING)
    data.setup("fit")
    x, y = spike_timing_task(10, seed=5, split="val", **TIMING)
    assert torch.equal(data.val_set.tensors[0], x) and torch.equal(data.val_set.tensors[1], y)


def test_epoch_shuffle_depends_on_seed_and_epoch_only():
    sampler = EpochShuffleSampler(50, seed=1)
    sampler.set_epoch(3)
    order = list(sampler)
    assert sorted(order) == list(range(50))
    other = EpochShuffleSampler(50, seed=1)
    other.set_epoch(3)
    assert list(other) == order
    other.set_epoch(4)
    assert list(other) != order
    sampler.resume_at(3, 20)
    assert list(sampler) == order[20:]
    assert list(sampler) == order                                            # resume applies once


@pytest.mark.parametrize("make, message", [
    (lambda: spike_timing_task(10, time_steps=20, spike_window=30), "spike_window"),
    (lambda: spike_timing_task(10, split="dev"), "split"),
    (lambda: temporal_order_task(10, cue_steps=5, min_gap=5), "cue_steps"),
    (lambda: store_recall_task(10, values=3, value_slots=4, store_slots=3), "store_slots"),
    (lambda: store_recall_task(10, values=1), "values"),
    (lambda: store_recall_task(10, rate=0.0), "rate"),
    (lambda: StoreRecallData(slot_steps=0), "data.init_args.*slot_steps"),
    (lambda: SpikeTimingData(train_samples=0), "data.train_samples"),
    (lambda: motif_stream_task(10, time_steps=5, motif_steps=10), "time_steps"),
    (lambda: motif_stream_task(10, label_fraction=0.0), "label_fraction"),
    (lambda: MotifStreamData(num_classes=1), "data.init_args.*num_classes"),
    (lambda: SpikeTimingData(batch_size=0), "data.batch_size"),
])
def test_bad_task_arguments_say_what_to_fix(make, message):
    with pytest.raises(ValueError, match=message):
        make()
