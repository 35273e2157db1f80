"""Real event datasets read through tonic and binned to frames: SHD, SSC, N-MNIST, DVS Gesture.

Every DataModule reads the files tonic's own dataset classes read, from the same layout
(``root/<Name>/...``, so a folder filled by ``tonic.datasets.X(save_to=root)`` works as is), but
it **never downloads**: missing files raise ``MissingDataError`` (a ``FileNotFoundError``) saying
which file goes where and where to get it; bad settings and files of the wrong kind raise
``ConfigError`` (a ``ValueError``) naming the setting or file. tonic's existence/MD5 checks are bypassed (they would want the original archives
next to the extracted files and would start a download otherwise).

Binning: events are counted in ``time_steps`` bins of fixed width ``dt_ms`` starting at t = 0
(bin k holds events with k*dt <= t < (k+1)*dt; events after ``time_steps * dt_ms`` are dropped),
with ``tonic.transforms.ToFrame``. Every sample therefore has the same time axis in physical
units (unlike tonic's ``n_time_bins``, which stretches each recording to its own length).
Batches are ``(x, y)``: x float32 (batch, time_steps, *input_shape) event counts (or 0/1 with
``binarize``), y int64 (batch,).

Binned frames are cached (``cache="disk"``: ``root/cache/<Name>/<split>-<params>-<hash>/`` via
``tonic.DiskCachedDataset``, keyed by every binning parameter and the source files' identity;
``"memory"``: per process; ``"none"``).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Callable, Optional

import h5py
import numpy as np
import tonic
import torch
from torch.utils.data import Dataset, Subset

from .data import ConfigError, MissingDataError, SpikeDataModule, require_files

__all__ = ["SHD", "SSC", "NMNIST", "DVSGesture", "EventsToFrames"]

_CACHE_MODES = ("disk", "memory", "none")


# ---------------------------------------------------------------------------------------------
# tonic datasets that only read from disk
# ---------------------------------------------------------------------------------------------
class _OfflineTonic:
    """Mixin for tonic dataset classes: files are checked by the DataModule beforehand, so tonic's
    own check (which also wants the downloaded archive) is skipped and download() refuses."""

    def _check_exists(self) -> bool:
        return True

    def download(self) -> None:
        raise RuntimeError(
            f"exodus does not download datasets; {type(self).__name__} files are missing under "
            f"{self.location_on_system} (see exodus.lightning.datasets for where to get them)")


class _TonicSHD(_OfflineTonic, tonic.datasets.SHD):
    pass


class _TonicSSC(_OfflineTonic, tonic.datasets.SSC):
    pass


class _TonicNMNIST(_OfflineTonic, tonic.datasets.NMNIST):
    pass


class _TonicDVSGesture(_OfflineTonic, tonic.datasets.DVSGesture):
    pass


# tonic reads from save_to/<class __name__>; keep tonic's folder names. (__qualname__ stays
# "_TonicX", so the classes still pickle by reference for DataLoader workers started by spawn.)
for _cls, _name in ((_TonicSHD, "SHD"), (_TonicSSC, "SSC"), (_TonicNMNIST, "NMNIST"),
                    (_TonicDVSGesture, "DVSGesture")):
    _cls.__name__ = _name


# ---------------------------------------------------------------------------------------------
# binning
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EventsToFrames:
    """Structured tonic events -> int16 counts (time_steps, polarities, height, width).

    sensor_size: tonic's (width, height, polarities) of the events as read.
    time_steps: number of bins; bin_us: bin width in microseconds (bins start at t = 0).
    downsample: integer spatial factor (x, y divided by it, floor), a divisor of width/height.
    For audio (SHD/SSC: sensor (700, 1, 1), events without y) the result is (time_steps, 1, 700).
    """

    sensor_size: tuple[int, int, int]
    time_steps: int
    bin_us: int
    downsample: int = 1

    @property
    def frame_sensor_size(self) -> tuple[int, int, int]:
        width, height, polarities = self.sensor_size
        return (width // self.downsample, max(height // self.downsample, 1), polarities)

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """(polarities, height, width) for cameras, (1, units) for audio."""
        width, height, polarities = self.frame_sensor_size
        return (polarities, height, width) if self.sensor_size[1] > 1 else (polarities, width)

    def __call__(self, events: np.ndarray) -> np.ndarray:
        if len(events) == 0:  # tonic's ToFrame returns a single frame here
            return np.zeros((self.time_steps, *self.frame_shape), dtype=np.int16)
        if np.any(np.diff(events["t"]) < 0):  # tonic's slicing assumes time-sorted events
            events = events[np.argsort(events["t"], kind="stable")]
        if self.downsample > 1:
            events = tonic.transforms.Downsample(spatial_factor=1.0 / self.downsample)(events)
        frames = tonic.transforms.ToFrame(
            sensor_size=self.frame_sensor_size, time_window=self.bin_us,
            start_time=0, end_time=self.bin_us * self.time_steps)(events)
        if frames.shape[0] != self.time_steps:  # guards against a change in tonic's slicing
            raise RuntimeError(f"tonic ToFrame returned {frames.shape[0]} bins, expected {self.time_steps}")
        return frames


class _FramesToTensor:
    """int16 frames (time, *frame_shape) -> float32 tensor (time, *input_shape)."""

    def __init__(self, input_shape: tuple[int, ...], binarize: bool):
        self.input_shape = tuple(input_shape)
        self.binarize = bool(binarize)

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(frames, dtype=np.float32))
        if self.binarize:
            x = x.clamp_(max=1.0)
        return x.reshape(x.shape[0], *self.input_shape)


class _Pipeline:
    """Callables applied one after the other (picklable, unlike a lambda)."""

    def __init__(self, *steps: Callable):
        self.steps = steps

    def __call__(self, data):
        for step in self.steps:
            data = step(data)
        return data


class _Transformed(Dataset):
    """Uncached view: applies transform / target_transform on every access."""

    def __init__(self, dataset, transform: Callable, target_transform: Callable):
        self.dataset, self.transform, self.target_transform = dataset, transform, target_transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        data, target = self.dataset[index]
        return self.transform(data), self.target_transform(target)


# ---------------------------------------------------------------------------------------------
# base of the tonic DataModules
# ---------------------------------------------------------------------------------------------
class _TonicDataModule(SpikeDataModule):
    """Shared machinery. Subclasses set ``name``, ``sensor_size``, ``n_classes``, ``source``
    (where to get the files) and implement ``_expected_files``, ``_tonic_dataset(split)``."""

    name: str = ""
    sensor_size: tuple[int, int, int] = (0, 0, 0)
    n_classes: int = 0
    source: str = ""
    splits: tuple[str, ...] = ("train", "test")
    downsample: int = 1

    def __init__(self, root: str, batch_size: int, num_workers: int, seed: int, time_steps: int,
                 dt_ms: float, cache: str, binarize: bool, val_fraction: float = 0.0):
        super().__init__(root=root, batch_size=batch_size, num_workers=num_workers, seed=seed)
        if int(time_steps) < 1:
            raise ConfigError(f"data.time_steps must be >= 1, got {time_steps}")
        bin_us = int(round(float(dt_ms) * 1000.0))
        if bin_us < 1:
            raise ConfigError(f"data.dt_ms must be >= 0.001 (1 microsecond), got {dt_ms}")
        if cache not in _CACHE_MODES:
            raise ConfigError(f"data.cache must be one of {_CACHE_MODES}, got {cache!r}")
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        self.dt_ms = float(dt_ms)
        self.cache = cache
        self.binarize = bool(binarize)
        self.val_fraction = float(val_fraction)
        self.binning = EventsToFrames(self.sensor_size, int(time_steps), bin_us, self.downsample)
        self.to_tensor = _FramesToTensor(self.input_shape, self.binarize)

    # ---- shapes
    @property
    def input_shape(self) -> tuple[int, ...]:
        shape = self.binning.frame_shape
        return shape[1:] if shape[0] == 1 and len(shape) == 2 else shape  # audio: (units,)

    @property
    def num_classes(self) -> int:
        return self.n_classes

    @property
    def time_steps(self) -> int:
        return self.binning.time_steps

    @property
    def location(self) -> str:
        """Folder holding this dataset's files (tonic's layout): root/<Name>."""
        return os.path.join(os.path.expanduser(str(self.root)), self.name)

    # ---- files
    def _expected_files(self) -> list[str]:
        raise NotImplementedError

    def _tonic_dataset(self, split: str):
        raise NotImplementedError

    def _archive(self, path: str) -> str:
        """The downloaded archive that extracts to ``path``."""
        return path + ".zip"

    def check_files(self) -> None:
        """Raise FileNotFoundError naming the missing files and where to get them."""
        archives = [self._archive(path) for path in self._expected_files()
                    if not os.path.exists(path) and os.path.exists(self._archive(path))]
        unextracted = (f"Found {', '.join(archives)}: extract it there. " if archives else "")
        require_files(
            self._expected_files(), f"{self.name} dataset (data.root={self.root!r})",
            f"{unextracted}Get them from {self.source}, extract them so that the paths above exist "
            f"(tonic's layout), or set data.root to the folder that holds {self.name}/. "
            f"exodus never downloads datasets.")

    def prepare_data(self) -> None:
        self.check_files()

    # ---- assembling the splits
    def _cache_key(self, split: str, dataset) -> str:
        sources = []
        for path in self._expected_files():
            stat = os.stat(path)
            sources.append((os.path.abspath(path), stat.st_size if os.path.isfile(path) else 0,
                            stat.st_mtime_ns if os.path.isfile(path) else 0))
        description = repr((self.name, split, len(dataset), self.binning, self._extra_key(), sources))
        digest = hashlib.sha1(description.encode()).hexdigest()[:10]
        b = self.binning
        return f"{split}-T{b.time_steps}-bin{b.bin_us}us-ds{b.downsample}-{digest}"

    def _extra_key(self) -> tuple:
        return ()

    def _wrap(self, dataset, split: str):
        """Apply binning (cached as int16) then float32 conversion (not cached)."""
        if self.cache == "none":
            return _Transformed(dataset, _Pipeline(self.binning, self.to_tensor), int)
        dataset.transform = self.binning
        if self.cache == "memory":
            return tonic.MemoryCachedDataset(dataset, transform=self.to_tensor, target_transform=int)
        cache_path = os.path.join(os.path.expanduser(str(self.root)), "cache", self.name,
                                  self._cache_key(split, dataset))
        return tonic.DiskCachedDataset(dataset, cache_path=cache_path, transform=self.to_tensor,
                                       target_transform=int)

    def _check_source(self, split: str) -> None:
        """Hook: validate the files of one split before tonic opens them."""

    def _check_labels(self, labels, split: str) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= self.n_classes):
            raise ConfigError(
                f"{self.name} {split} split under {self.location} has labels in "
                f"[{labels.min()}, {labels.max()}], expected [0, {self.n_classes - 1}]: are these "
                f"the right files for {self.name}?")

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        self.check_files()
        raw = {}
        for split in self.splits:
            self._check_source(split)
            raw[split] = self._tonic_dataset(split)
            if raw[split].targets:  # tonic fills targets from folder / file names
                self._check_labels(raw[split].targets, split)
            if len(raw[split]) == 0:
                raise MissingDataError(f"{self.name} {split} split under {self.location} has no samples")
        wrapped = {split: self._wrap(dataset, split) for split, dataset in raw.items()}
        self.test_set = wrapped["test"]
        if "valid" in wrapped:
            self.train_set, self.val_set = wrapped["train"], wrapped["valid"]
        elif self.val_fraction > 0:
            self.train_set, self.val_set = self._split(wrapped["train"])
        else:  # validating on the test set, as many SHD / DVS Gesture papers report
            self.train_set, self.val_set = wrapped["train"], self.test_set

    def _split(self, dataset):
        """Deterministic (seed) train/val split of the training files."""
        n = len(dataset)
        n_val = int(round(self.val_fraction * n))
        if not 0 < n_val < n:
            raise ConfigError(f"data.val_fraction={self.val_fraction} leaves {n - n_val} training and "
                             f"{n_val} validation samples out of {n}")
        order = np.random.default_rng(self.seed).permutation(n)
        return (Subset(dataset, np.sort(order[n_val:]).tolist()),
                Subset(dataset, np.sort(order[:n_val]).tolist()))

    def describe(self) -> str:
        return (f"{type(self).__name__}(input_shape={self.input_shape}, num_classes={self.num_classes}, "
                f"time_steps={self.time_steps} x {self.dt_ms} ms, root={self.root!r}, cache={self.cache})")


# ---------------------------------------------------------------------------------------------
# Heidelberg spiking datasets (audio, 700 cochlea channels)
# ---------------------------------------------------------------------------------------------
class _HeidelbergDataModule(_TonicDataModule):
    sensor_size = (700, 1, 1)
    source = "https://zenkelab.org/datasets/ (mirror: https://compneuro.net/datasets/), *.h5.zip files"

    def _h5(self, split: str) -> str:
        return os.path.join(self.location, f"{self.name.lower()}_{split}.h5")

    def _expected_files(self) -> list[str]:
        return [self._h5(split) for split in self.splits]

    def _check_source(self, split: str) -> None:
        path = self._h5(split)
        try:
            file = h5py.File(path, "r")
        except OSError as error:
            raise ConfigError(f"{path} is not a readable HDF5 file ({error}); replace it with the "
                             f"unzipped file from {self.source}") from None
        with file:
            keys = ("spikes/times", "spikes/units", "labels", "extra/keys", "extra/speaker")
            missing = [key for key in keys if key not in file]
            if missing:
                raise ConfigError(f"{path} lacks the HDF5 dataset(s) {missing}: not a {self.name} file "
                                 f"(expected {list(keys)})")
            self._check_labels(file["labels"][()], split)


class SHD(_HeidelbergDataModule):
    """Spiking Heidelberg Digits: 20 classes (digits 0-9, English and German), 700 input channels.

    Files: root/SHD/shd_train.h5, root/SHD/shd_test.h5 (unzipped from zenkelab.org/datasets).
    time_steps x dt_ms: binning window from t = 0 (default 100 x 14 ms = 1.4 s, the window of
    Zenke's SHD tutorial). val_fraction: share of the training files held out for validation
    (seeded); 0 validates on the test set. cache: "disk" | "memory" | "none".
    binarize: clamp counts per bin to 1.
    """

    name = "SHD"
    n_classes = 20

    def __init__(self, root: str = "data", batch_size: int = 64, num_workers: int = 0, seed: int = 0,
                 time_steps: int = 100, dt_ms: float = 14.0, val_fraction: float = 0.1,
                 cache: str = "disk", binarize: bool = False):
        super().__init__(root, batch_size, num_workers, seed, time_steps, dt_ms, cache, binarize,
                         val_fraction)
        self.save_hyperparameters()

    def _tonic_dataset(self, split: str):
        return _TonicSHD(os.path.expanduser(str(self.root)), train=split == "train")


class SSC(_HeidelbergDataModule):
    """Spiking Speech Commands: 35 classes, 700 channels, official train / valid / test splits.

    Files: root/SSC/ssc_train.h5, ssc_valid.h5, ssc_test.h5. Other arguments as for SHD
    (default binning 100 x 10 ms = the 1 s clips).
    """

    name = "SSC"
    n_classes = 35
    splits = ("train", "valid", "test")

    def __init__(self, root: str = "data", batch_size: int = 128, num_workers: int = 0, seed: int = 0,
                 time_steps: int = 100, dt_ms: float = 10.0, cache: str = "disk",
                 binarize: bool = False):
        super().__init__(root, batch_size, num_workers, seed, time_steps, dt_ms, cache, binarize)
        self.save_hyperparameters()

    def _tonic_dataset(self, split: str):
        return _TonicSSC(os.path.expanduser(str(self.root)), split=split)


# ---------------------------------------------------------------------------------------------
# cameras
# ---------------------------------------------------------------------------------------------
def _files_below(folder: str, suffix: str) -> bool:
    for _, _, files in os.walk(folder):
        if any(name.endswith(suffix) for name in files):
            return True
    return False


class NMNIST(_TonicDataModule):
    """N-MNIST (ATIS saccades over MNIST digits): 10 classes, 34 x 34 pixels, 2 polarities.

    Files: root/NMNIST/Train/<digit>/*.bin and root/NMNIST/Test/<digit>/*.bin (extract
    train.zip / test.zip from https://www.garrickorchard.com/datasets/n-mnist). Input shape
    (2, 34, 34). Default binning 32 x 10 ms covers the three saccades (3 x ~105 ms).
    first_saccade_only: keep events with t < 100 ms (tonic's option).
    """

    name = "NMNIST"
    n_classes = 10
    sensor_size = (34, 34, 2)
    source = ("https://www.garrickorchard.com/datasets/n-mnist (Mendeley Data 468j46mzdv: "
              "train.zip, test.zip)")

    def __init__(self, root: str = "data", batch_size: int = 64, num_workers: int = 0, seed: int = 0,
                 time_steps: int = 32, dt_ms: float = 10.0, val_fraction: float = 0.1,
                 cache: str = "disk", binarize: bool = False, first_saccade_only: bool = False):
        self.first_saccade_only = bool(first_saccade_only)
        super().__init__(root, batch_size, num_workers, seed, time_steps, dt_ms, cache, binarize,
                         val_fraction)
        self.save_hyperparameters()

    def _expected_files(self) -> list[str]:
        return [os.path.join(self.location, folder) for folder in ("Train", "Test")]

    def _archive(self, path: str) -> str:
        return os.path.join(self.location, os.path.basename(path).lower() + ".zip")

    def check_files(self) -> None:
        super().check_files()
        for folder in self._expected_files():
            if not _files_below(folder, ".bin"):
                raise MissingDataError(
                    f"NMNIST: {folder} holds no .bin files; expected {folder}/<digit>/<id>.bin as "
                    f"extracted from {self.source}")

    def _extra_key(self) -> tuple:
        return (self.first_saccade_only,)

    def _tonic_dataset(self, split: str):
        return _TonicNMNIST(os.path.expanduser(str(self.root)), train=split == "train",
                            first_saccade_only=self.first_saccade_only)


class DVSGesture(_TonicDataModule):
    """IBM DVS128 Gesture: 11 classes, 128 x 128 pixels, 2 polarities (tonic's preprocessed copy).

    Files: root/DVSGesture/ibmGestureTrain/user<NN>_<lighting>/<label>.npy and
    root/DVSGesture/ibmGestureTest/... (extract tonic's ibmGestureTrain.tar.gz /
    ibmGestureTest.tar.gz). downsample: integer spatial factor dividing 128 (default 4 ->
    input shape (2, 32, 32)). Default binning 100 x 15 ms (the first 1.5 s of each gesture).
    """

    name = "DVSGesture"
    n_classes = 11
    sensor_size = (128, 128, 2)
    source = ("tonic's preprocessed copy: https://figshare.com/ndownloader/files/38022171 "
              "(ibmGestureTrain.tar.gz) and https://figshare.com/ndownloader/files/38020584 "
              "(ibmGestureTest.tar.gz)")

    def __init__(self, root: str = "data", batch_size: int = 32, num_workers: int = 0, seed: int = 0,
                 time_steps: int = 100, dt_ms: float = 15.0, val_fraction: float = 0.1,
                 cache: str = "disk", binarize: bool = False, downsample: int = 4):
        if int(downsample) < 1 or 128 % int(downsample) != 0:
            raise ConfigError(f"data.downsample must divide 128 (1, 2, 4, 8, ...), got {downsample}")
        self.downsample = int(downsample)
        super().__init__(root, batch_size, num_workers, seed, time_steps, dt_ms, cache, binarize,
                         val_fraction)
        self.save_hyperparameters()

    def _expected_files(self) -> list[str]:
        return [os.path.join(self.location, folder) for folder in ("ibmGestureTrain", "ibmGestureTest")]

    def _archive(self, path: str) -> str:
        return path + ".tar.gz"

    def check_files(self) -> None:
        super().check_files()
        for folder in self._expected_files():
            if not _files_below(folder, ".npy"):
                raise MissingDataError(
                    f"DVSGesture: {folder} holds no .npy files; expected "
                    f"{folder}/user<NN>_<lighting>/<label>.npy as extracted from {self.source}")

    def _tonic_dataset(self, split: str):
        return _TonicDVSGesture(os.path.expanduser(str(self.root)), train=split == "train")
