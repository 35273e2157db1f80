"""Real-dataset DataModules on tiny files written in each dataset's on-disk format.

The files follow the published formats (SHD/SSC HDF5, N-MNIST 40-bit .bin events, tonic's DVS
Gesture .npy layout); binned frames are compared with a direct numpy histogram of the generated
events. Network access is blocked for every test in this file.
"""
from __future__ import annotations

import os
import socket
import urllib.request

import h5py
import numpy as np
import pytest
import torch

tonic = pytest.importorskip("tonic")

from exodus.lightning import datasets as ds  # noqa: E402
from exodus.lightning.data import ConfigError, MissingDataError  # noqa: E402


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any download attempt (tonic's helper, urllib, raw sockets) fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    import tonic.dataset
    import tonic.download_utils
    monkeypatch.setattr(tonic.download_utils, "download_and_extract_archive", refuse)
    monkeypatch.setattr(tonic.download_utils, "download_url", refuse)
    monkeypatch.setattr(tonic.dataset, "download_and_extract_archive", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


# ---------------------------------------------------------------------------------------------
# writers of the real on-disk formats
# ---------------------------------------------------------------------------------------------
def write_heidelberg(path, times, units, labels, speakers, keys):
    """SHD/SSC HDF5: spikes/times (vlen float16 seconds), spikes/units (vlen uint16), labels,
    extra/keys, extra/speaker."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with h5py.File(path, "w") as f:
        t = f.create_dataset("spikes/times", (len(times),), dtype=h5py.vlen_dtype(np.float16))
        u = f.create_dataset("spikes/units", (len(units),), dtype=h5py.vlen_dtype(np.uint16))
        for i, (ti, ui) in enumerate(zip(times, units)):
            t[i], u[i] = ti, ui
        f.create_dataset("labels", data=np.asarray(labels, dtype=np.uint16))
        f.create_dataset("extra/keys", data=np.asarray(keys, dtype="S"))
        f.create_dataset("extra/speaker", data=np.asarray(speakers, dtype=np.uint16))


def write_nmnist_bin(path, x, y, p, t_us):
    """N-MNIST: 5 bytes per event: x, y, p<<7 | t[22:16], t[15:8], t[7:0] (t in microseconds)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    t_us = np.asarray(t_us, dtype=np.int64)
    raw = np.stack([x, y, (np.asarray(p) << 7) | ((t_us >> 16) & 0x7F), (t_us >> 8) & 0xFF,
                    t_us & 0xFF], axis=1).astype(np.uint8)
    raw.tofile(path)


def random_audio_sample(rng, max_time_s, n_units=700):
    n = int(rng.integers(0, 300))
    times = rng.uniform(0.0, max_time_s, n).astype(np.float16)  # unsorted on purpose
    units = rng.integers(0, n_units, n).astype(np.uint16)
    return times, units


def audio_reference(times, units, time_steps, bin_us, n_units=700):
    """Counts (time_steps, units) straight from the stored values (float16 s -> integer us)."""
    t_us = (times.astype(np.float64) * 1e6).astype(np.int64)
    keep = t_us < time_steps * bin_us
    counts = np.zeros((time_steps, n_units), dtype=np.float32)
    np.add.at(counts, (t_us[keep] // bin_us, units[keep].astype(np.int64)), 1)
    return counts


def camera_reference(x, y, p, t_us, time_steps, bin_us, size, factor=1):
    keep = t_us < time_steps * bin_us
    counts = np.zeros((time_steps, 2, size // factor, size // factor), dtype=np.float32)
    np.add.at(counts, (t_us[keep] // bin_us, p[keep], y[keep] // factor, x[keep] // factor), 1)
    return counts


def make_shd(root):
    """Tiny SHD: 24 train / 6 test samples, spikes up to 1.2 s (some past the 1 s window),
    one empty train sample. Returns {split: [(times, units, label)]}."""
    rng = np.random.default_rng(1)
    content = {}
    for split, n in (("train", 24), ("test", 6)):
        samples = [random_audio_sample(rng, 1.2) for _ in range(n)]
        if split == "train":
            samples[3] = (np.zeros(0, np.float16), np.zeros(0, np.uint16))
        labels = rng.integers(0, 20, n)
        write_heidelberg(root / "SHD" / f"shd_{split}.h5", [s[0] for s in samples],
                         [s[1] for s in samples], labels, rng.integers(0, 12, n),
                         [f"digit-{i}" for i in range(20)])
        content[split] = [(t, u, int(label)) for (t, u), label in zip(samples, labels)]
    return content


@pytest.fixture
def shd_root(tmp_path):
    return tmp_path, make_shd(tmp_path)


def subset_indices(dataset):
    return list(dataset.indices) if isinstance(dataset, torch.utils.data.Subset) else list(range(len(dataset)))


# ---------------------------------------------------------------------------------------------
# SHD / SSC
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cache", ["none", "memory", "disk"])
def test_shd_frames_equal_numpy_binning(shd_root, cache):
    root, content = shd_root
    data = ds.SHD(root=str(root), batch_size=5, time_steps=20, dt_ms=50.0, val_fraction=0.25,
                  cache=cache, seed=3)
    assert data.input_shape == (700,) and data.num_classes == 20 and data.time_steps == 20
    data.prepare_data()
    data.setup("fit")

    train_idx, val_idx = subset_indices(data.train_set), subset_indices(data.val_set)
    assert sorted(train_idx + val_idx) == list(range(24)) and len(val_idx) == 6
    for dataset, split, indices in ((data.train_set, "train", train_idx),
                                    (data.val_set, "train", val_idx),
                                    (data.test_set, "test", range(6))):
        for position, index in enumerate(indices):
            x, y = dataset[position]
            times, units, label = content[split][index]
            assert x.dtype == torch.float32 and x.shape == (20, 700)
            np.testing.assert_array_equal(x.numpy(), audio_reference(times, units, 20, 50_000))
            assert y == label
    empty_position = train_idx.index(3) if 3 in train_idx else None
    if empty_position is not None:
        assert data.train_set[empty_position][0].abs().sum() == 0

    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (5, 20, 700) and x.dtype == torch.float32
    assert y.shape == (5,) and y.dtype == torch.int64


def test_shd_split_depends_on_seed_only(shd_root):
    root, _ = shd_root

    def val_indices(seed):
        data = ds.SHD(root=str(root), time_steps=4, dt_ms=250.0, cache="none", seed=seed,
                      val_fraction=0.25)
        data.setup("fit")
        return subset_indices(data.val_set)

    assert val_indices(0) == val_indices(0)
    assert val_indices(0) != val_indices(1)


def test_shd_val_fraction_zero_validates_on_test(shd_root):
    root, _ = shd_root
    data = ds.SHD(root=str(root), time_steps=4, dt_ms=250.0, cache="none", val_fraction=0.0)
    data.setup("fit")
    assert len(data.train_set) == 24 and data.val_set is data.test_set


def test_shd_binarize_clamps_counts(shd_root):
    root, content = shd_root
    data = ds.SHD(root=str(root), time_steps=2, dt_ms=500.0, cache="none", val_fraction=0.0,
                  binarize=True)
    data.setup("fit")
    times, units, _ = content["test"][0]
    counts = audio_reference(times, units, 2, 500_000)
    assert counts.max() > 1  # the test sample really has repeated spikes per bin
    np.testing.assert_array_equal(data.test_set[0][0].numpy(), np.minimum(counts, 1))


def test_disk_cache_is_reused_and_keyed_by_binning(shd_root, monkeypatch):
    root, content = shd_root
    kwargs = dict(root=str(root), time_steps=10, dt_ms=100.0, cache="disk", val_fraction=0.0)
    first = ds.SHD(**kwargs)
    first.setup("fit")
    expected = [first.test_set[i][0] for i in range(6)]
    cache_dirs = sorted(os.listdir(root / "cache" / "SHD"))
    assert [name[:20] for name in cache_dirs] == ["test-T10-bin100000us", "train-T10-bin100000u"]
    assert len(os.listdir(root / "cache" / "SHD" / cache_dirs[0])) == 6

    def no_reading(self, index):
        raise AssertionError("read the source file although the sample is cached")

    monkeypatch.setattr(ds._TonicSHD, "__getitem__", no_reading)
    second = ds.SHD(**kwargs)
    second.setup("fit")
    for i in range(6):
        torch.testing.assert_close(second.test_set[i][0], expected[i], rtol=0, atol=0)
    monkeypatch.undo()

    other = ds.SHD(**{**kwargs, "time_steps": 5})  # different binning -> its own cache folder
    other.setup("fit")
    times, units, _ = content["test"][2]
    np.testing.assert_array_equal(other.test_set[2][0].numpy(), audio_reference(times, units, 5, 100_000))
    assert len(os.listdir(root / "cache" / "SHD")) == 4


def make_ssc(root):
    rng = np.random.default_rng(2)
    content = {}
    for split, n in (("train", 5), ("valid", 3), ("test", 4)):
        samples = [random_audio_sample(rng, 0.5) for _ in range(n)]
        labels = rng.integers(0, 35, n)
        write_heidelberg(root / "SSC" / f"ssc_{split}.h5", [s[0] for s in samples],
                         [s[1] for s in samples], labels, rng.integers(0, 100, n),
                         [f"word-{i}" for i in range(35)])
        content[split] = list(zip(samples, labels))
    return content


def test_ssc_uses_its_valid_split(tmp_path):
    content = make_ssc(tmp_path)
    data = ds.SSC(root=str(tmp_path), batch_size=2, time_steps=25, dt_ms=20.0, cache="none")
    assert data.input_shape == (700,) and data.num_classes == 35
    data.setup("fit")
    for dataset, split in ((data.train_set, "train"), (data.val_set, "valid"), (data.test_set, "test")):
        assert len(dataset) == len(content[split])
        for i, ((times, units), label) in enumerate(content[split]):
            x, y = dataset[i]
            np.testing.assert_array_equal(x.numpy(), audio_reference(times, units, 25, 20_000))
            assert y == label


# ---------------------------------------------------------------------------------------------
# N-MNIST
# ---------------------------------------------------------------------------------------------
def make_nmnist(root):
    """Train: 2 recordings per digit, Test: 1, in Train|Test/<digit>/<id>.bin."""
    rng = np.random.default_rng(3)
    content = {}
    for folder in ("Train", "Test"):
        content[folder] = []
        for digit in range(10):
            for k in range(2 if folder == "Train" else 1):
                n = int(rng.integers(50, 400))
                t = np.sort(rng.integers(0, 330_000, n))  # 23-bit field; some after the window
                x, y, p = rng.integers(0, 34, n), rng.integers(0, 34, n), rng.integers(0, 2, n)
                path = root / "NMNIST" / folder / str(digit) / f"{digit:02d}{k:03d}.bin"
                write_nmnist_bin(path, x, y, p, t)
                content[folder].append((x, y, p, t, digit))
    return content


def test_nmnist_reads_bin_files_and_bins_them(tmp_path):
    content = make_nmnist(tmp_path)
    data = ds.NMNIST(root=str(tmp_path), batch_size=4, time_steps=30, dt_ms=10.0, val_fraction=0.2,
                     cache="disk")
    assert data.input_shape == (2, 34, 34) and data.num_classes == 10
    data.prepare_data()
    data.setup("fit")
    train_idx, val_idx = subset_indices(data.train_set), subset_indices(data.val_set)
    assert sorted(train_idx + val_idx) == list(range(20)) and len(val_idx) == 4
    for dataset, folder, indices in ((data.train_set, "Train", train_idx), (data.val_set, "Train", val_idx),
                                     (data.test_set, "Test", range(10))):
        for position, index in enumerate(indices):
            x_, y_, p_, t_, digit = content[folder][index]  # tonic walks digits and files sorted
            x, y = dataset[position]
            assert x.shape == (30, 2, 34, 34) and x.dtype == torch.float32
            np.testing.assert_array_equal(x.numpy(), camera_reference(x_, y_, p_, t_, 30, 10_000, 34))
            assert y == digit
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (4, 30, 2, 34, 34) and y.dtype == torch.int64


# ---------------------------------------------------------------------------------------------
# DVS Gesture
# ---------------------------------------------------------------------------------------------
def make_dvsgesture(root):
    """tonic's layout: ibmGesture{Train,Test}/user<NN>_<lighting>/<label>.npy, rows (x, y, p, t in ms)."""
    rng = np.random.default_rng(4)
    content = {}
    for folder, users in (("ibmGestureTrain", ("user01_fluorescent", "user02_led")),
                          ("ibmGestureTest", ("user24_natural",))):
        content[folder] = []
        for user in users:  # one recording per gesture per user
            for label in (0, 4, 10):
                n = int(rng.integers(100, 500))
                t_ms = np.sort(rng.integers(0, 700, n))
                x, y, p = rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n)
                os.makedirs(root / "DVSGesture" / folder / user, exist_ok=True)
                np.save(root / "DVSGesture" / folder / user / f"{label}.npy",
                        np.stack([x, y, p, t_ms], axis=1).astype(np.int64))
                content[folder].append((x, y, p, t_ms * 1000, label))
    return content


def test_dvsgesture_reads_tonic_npy_layout_with_downsampling(tmp_path):
    content = make_dvsgesture(tmp_path)
    data = ds.DVSGesture(root=str(tmp_path), batch_size=3, time_steps=12, dt_ms=50.0, downsample=4,
                         val_fraction=0.0, cache="none")
    assert data.input_shape == (2, 32, 32) and data.num_classes == 11
    data.setup("fit")
    for dataset, folder in ((data.train_set, "ibmGestureTrain"), (data.test_set, "ibmGestureTest")):
        assert len(dataset) == len(content[folder])
        # tonic's directory walk order is the file system's; match samples by their label and events
        raw = dataset.dataset
        for i in range(len(dataset)):
            user = os.path.basename(os.path.dirname(raw.data[i]))
            label = int(os.path.basename(raw.data[i])[:-4])
            users = sorted({os.path.basename(os.path.dirname(path)) for path in raw.data})
            x_, y_, p_, t_, label_ = content[folder][users.index(user) * 3 + (0, 4, 10).index(label)]
            x, y = dataset[i]
            assert x.shape == (12, 2, 32, 32)
            np.testing.assert_array_equal(x.numpy(), camera_reference(x_, y_, p_, t_, 12, 50_000, 128, 4))
            assert y == label_ == label


# ---------------------------------------------------------------------------------------------
# bad configurations
# ---------------------------------------------------------------------------------------------
def test_missing_files_name_the_file_and_the_source(tmp_path):
    data = ds.SHD(root=str(tmp_path), cache="none")
    with pytest.raises(MissingDataError) as error:
        data.prepare_data()
    message = str(error.value)
    assert str(tmp_path / "SHD" / "shd_train.h5") in message and "shd_test.h5" in message
    assert "zenkelab.org" in message and "never downloads" in message

    with pytest.raises(MissingDataError, match="ssc_valid.h5"):
        ds.SSC(root=str(tmp_path)).setup("fit")

    os.makedirs(tmp_path / "NMNIST" / "Train" / "0")
    os.makedirs(tmp_path / "NMNIST" / "Test" / "0")
    with pytest.raises(MissingDataError, match=r"Train holds no \.bin files"):
        ds.NMNIST(root=str(tmp_path)).setup("fit")
    with pytest.raises(MissingDataError, match="ibmGestureTrain"):
        ds.DVSGesture(root=str(tmp_path)).prepare_data()


def test_downloaded_but_not_extracted_archive_is_pointed_out(tmp_path):
    os.makedirs(tmp_path / "SHD")
    (tmp_path / "SHD" / "shd_train.h5.zip").write_bytes(b"PK")
    with pytest.raises(MissingDataError, match=r"Found .*shd_train\.h5\.zip: extract it there"):
        ds.SHD(root=str(tmp_path)).prepare_data()


def test_unreadable_or_incomplete_hdf5_files_are_named(tmp_path):
    os.makedirs(tmp_path / "SHD")
    (tmp_path / "SHD" / "shd_train.h5").write_bytes(b"PK\x03\x04 zipped, not HDF5")
    (tmp_path / "SHD" / "shd_test.h5").write_bytes(b"")
    with pytest.raises(ConfigError, match="shd_train.h5 is not a readable HDF5 file"):
        ds.SHD(root=str(tmp_path), cache="none").setup("fit")
    rng = np.random.default_rng(6)
    samples = [random_audio_sample(rng, 0.5) for _ in range(2)]
    write_heidelberg(tmp_path / "SHD" / "shd_train.h5", [s[0] for s in samples],
                     [s[1] for s in samples], [1, 2], [0, 1], ["k"])
    with h5py.File(tmp_path / "SHD" / "shd_train.h5", "a") as f:
        del f["extra/speaker"]
    with pytest.raises(ConfigError, match=r"lacks the HDF5 dataset\(s\) \['extra/speaker'\]"):
        ds.SHD(root=str(tmp_path), cache="none").setup("fit")


def test_files_of_another_dataset_are_rejected(tmp_path):
    rng = np.random.default_rng(5)
    for split in ("train", "test"):  # SSC-like labels (up to 34) under SHD's names
        samples = [random_audio_sample(rng, 0.5) for _ in range(3)]
        write_heidelberg(tmp_path / "SHD" / f"shd_{split}.h5", [s[0] for s in samples],
                         [s[1] for s in samples], [3, 34, 7], [0, 1, 2], ["k"])
    with pytest.raises(ConfigError, match=r"labels in \[3, 34\], expected \[0, 19\]"):
        ds.SHD(root=str(tmp_path), cache="none").setup("fit")


@pytest.mark.parametrize("cls, kwargs, fragment", [
    (ds.SHD, {"time_steps": 0}, "time_steps"),
    (ds.SHD, {"dt_ms": 0.0}, "dt_ms"),
    (ds.SHD, {"cache": "ram"}, "cache"),
    (ds.SHD, {"val_fraction": 1.0}, "val_fraction"),
    (ds.DVSGesture, {"downsample": 3}, "downsample must divide 128"),
])
def test_bad_arguments_fail_with_the_argument_name(tmp_path, cls, kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        cls(root=str(tmp_path), **kwargs)


def test_events_to_frames_on_empty_and_unsorted_events():
    binning = ds.EventsToFrames((34, 34, 2), time_steps=3, bin_us=100)
    empty = np.zeros(0, dtype=tonic.datasets.NMNIST.dtype)
    assert binning(empty).shape == (3, 2, 34, 34) and binning(empty).sum() == 0
    events = np.zeros(4, dtype=tonic.datasets.NMNIST.dtype)
    events["t"], events["x"], events["y"], events["p"] = [250, 5, 120, 99], [1, 2, 3, 4], [0, 0, 0, 0], [1, 0, 1, 0]
    frames = binning(events)
    assert frames[0, 0, 0, 2] == 1 and frames[0, 0, 0, 4] == 1  # t = 5, 99
    assert frames[1, 1, 0, 3] == 1 and frames[2, 1, 0, 1] == 1  # t = 120, 250
    assert frames.sum() == 4


# ---------------------------------------------------------------------------------------------
# shipped configs: one training and one validation batch through exodus-train
# ---------------------------------------------------------------------------------------------
CONFIGS = os.path.join(os.path.dirname(__file__), "..", "experiments", "configs")


@pytest.mark.parametrize("config, make, cls, fit", [
    ("shd.yaml", make_shd, ds.SHD, True),
    ("ssc.yaml", make_ssc, ds.SSC, False),
    ("nmnist.yaml", make_nmnist, ds.NMNIST, True),
    ("dvs_gesture.yaml", make_dvsgesture, ds.DVSGesture, False),
    ("shd_adlif.yaml", make_shd, ds.SHD, True),
    ("shd_sparse.yaml", make_shd, ds.SHD, True),
    ("ssc_adlif.yaml", make_ssc, ds.SSC, False),
])
def test_shipped_config_runs(tmp_path, monkeypatch, config, make, cls, fit):
    """Every config parses, links the data shapes into the model and runs a batch; the SHD and
    N-MNIST ones run one training + one validation batch through the Trainer."""
    cli_module = pytest.importorskip("exodus.lightning.cli")
    make(tmp_path)
    monkeypatch.chdir(tmp_path)  # logs and checkpoints land in tmp_path/runs
    cli = cli_module.build(["--config", os.path.join(CONFIGS, config), "--data.root", str(tmp_path),
                            "--data.num_workers", "0", "--trainer.accelerator", "cpu",
                            "--trainer.fast_dev_run", "true", "--trainer.enable_progress_bar", "false"])
    data, model = cli.datamodule, cli.model
    assert type(data) is cls
    assert model.input_shape == data.input_shape and model.num_classes == data.num_classes
    if fit:
        cli.trainer.fit(model, datamodule=data)
        logged = cli.trainer.callback_metrics
        assert torch.isfinite(logged["train_loss"]) and torch.isfinite(logged["val_loss"])
    else:
        data.setup("fit")
        x, y = next(iter(data.train_dataloader()))
        logits = model.logits(model(x))
        assert logits.shape == (len(y), data.num_classes) and torch.isfinite(logits).all()
