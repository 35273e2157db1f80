"""The interface every exodus DataModule implements (offline tasks and tonic datasets).

A ``SpikeDataModule`` knows its shapes right after ``__init__`` (before ``prepare_data`` /
``setup``), because ``exodus-train`` links them into the model when both are instantiated:

    data.input_shape  -> model.input_shape     features per time step, e.g. (700,) or (2, 32, 32)
    data.num_classes  -> model.num_classes

Batches are ``(x, y)``: x float32 (batch, time, *input_shape), y int64 (batch,).
Subclasses implement ``setup(stage)`` and assign ``self.train_set``, ``self.val_set`` and
``self.test_set`` (any map-style ``torch.utils.data.Dataset`` returning ``(x, y)`` with x of
shape (time, *input_shape)); the loaders are built here. Training batches are shuffled with
an order that depends only on (seed, epoch), and the position inside an epoch is saved in
checkpoints, so a run resumed from any checkpoint (even mid-epoch) sees the same batches as an
uninterrupted one.
"""
from __future__ import annotations

import itertools
import os
from typing import Callable, Iterable, Iterator, Optional

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["SpikeDataModule", "EpochShuffleSampler", "ResumableLoader", "require_files", "ConfigError",
           "MissingDataError"]


class ConfigError(ValueError):
    """A setting that does not fit; the message names the config key to change.
    ``exodus-train`` prints it without a traceback."""


class MissingDataError(FileNotFoundError):
    """Dataset files are missing; the message lists them and says how to get them.
    ``exodus-train`` prints it without a traceback."""


class EpochShuffleSampler(Sampler[int]):
    """Random permutation of range(size) drawn from (seed, epoch) only.

    Lightning calls ``set_epoch`` at the start of every training epoch, so the order of
    epoch k is the same whether or not the run was interrupted before it. ``resume_at(epoch,
    samples)`` makes the next pass over that epoch start after its first ``samples`` indices
    (restoring a checkpoint saved in the middle of an epoch)."""

    def __init__(self, size: int, seed: int):
        self.size = int(size)
        self.seed = int(seed)
        self.epoch = 0
        self._resume: Optional[tuple[int, int]] = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume_at(self, epoch: int, samples: int) -> None:
        self._resume = (int(epoch), int(samples))

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        if self._resume is not None:
            epoch, samples = self._resume
            self._resume = None
            if epoch == self.epoch:
                order = order[samples:]
        return iter(order)

    def __len__(self) -> int:
        return self.size


class ResumableLoader(DataLoader):
    """DataLoader whose position inside an epoch is saved in Lightning checkpoints.

    Lightning stores ``state_dict()`` of stateful training loaders in the checkpoint and calls
    ``load_state_dict`` before iterating again; the batches already trained on in the interrupted
    epoch are then skipped, so a resumed run sees exactly the batches of an uninterrupted one.
    The count comes from the trainer's progress (the loader itself runs ahead by prefetching).
    With our own sampler the skip happens in the sampler (nothing is loaded twice); under DDP
    Lightning wraps the sampler in a distributed one, and the per-rank batches are skipped here."""

    def __init__(self, *args, progress: Optional[Callable[[], int]] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._progress = progress
        self._resume: Optional[tuple[int, int]] = None

    def _epoch(self) -> int:
        return int(getattr(self.sampler, "epoch", 0))

    def state_dict(self) -> dict:
        batches = self._progress() if self._progress is not None else 0
        return {"epoch": self._epoch(), "batches": int(batches)}

    def load_state_dict(self, state: dict) -> None:
        batches = state["batches"] if "batches" in state else state["samples"] // self.batch_size
        self._resume = (int(state["epoch"]), int(batches))

    def __iter__(self):
        # A generator: its body runs at the first next(). Lightning calls iter() on the loader
        # before it sets the sampler's epoch when it restores a checkpoint, and a DataLoader with
        # workers draws its first indices as soon as it is iterated, so nothing may be drawn here.
        resume, self._resume = self._resume, None
        return self._batches(resume)

    def _batches(self, resume: Optional[tuple[int, int]]):
        if resume is None or resume[1] <= 0 or resume[0] != self._epoch():
            yield from super().__iter__()
        elif isinstance(self.sampler, EpochShuffleSampler):
            self.sampler.resume_at(resume[0], resume[1] * self.batch_size)  # nothing loaded twice
            yield from super().__iter__()
        else:  # e.g. Lightning's DistributedSamplerWrapper under DDP: skip this rank's first batches
            yield from itertools.islice(super().__iter__(), resume[1], None)


def require_files(paths: Iterable[str], what: str, how_to_fix: str) -> None:
    """Raise MissingDataError (a FileNotFoundError) naming every missing path, the dataset and the fix
    (e.g. "set data.root to the folder holding ..., or data.download: true")."""
    missing = [str(p) for p in paths if not os.path.exists(p)]
    if missing:
        listing = "\n  ".join(missing)
        raise MissingDataError(f"{what}: missing file(s)\n  {listing}\n{how_to_fix}")


class SpikeDataModule(pl.LightningDataModule):
    """Base DataModule of exodus. Args:
        root: folder of the dataset files (offline tasks: where a cache may be written; unused if None).
        batch_size: samples per batch.
        num_workers: DataLoader worker processes (0 = load in the main process).
        seed: seed of the data (generation of synthetic tasks, splits, shuffling order).
    """

    train_set: Optional[Dataset] = None
    val_set: Optional[Dataset] = None
    test_set: Optional[Dataset] = None

    def __init__(self, root: str = "data", batch_size: int = 32, num_workers: int = 0, seed: int = 0):
        super().__init__()
        if int(batch_size) < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}")
        if int(num_workers) < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {num_workers}")
        self.root = root
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)

    # ------------------------------------------------------------------ shapes (known after __init__)
    @property
    def input_shape(self) -> tuple[int, ...]:
        """Features per time step, e.g. (700,) or (2, 32, 32)."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    @property
    def time_steps(self) -> int:
        """Time steps per sample (the longest one if samples vary and are padded)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ loaders
    collate_fn: Optional[Callable] = None

    def _loader(self, dataset: Optional[Dataset], split: str, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() did not create the {split} set "
                               f"(self.{split}_set is None)")
        options = dict(batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=self.collate_fn,
                       persistent_workers=self.num_workers > 0, drop_last=False)
        if not shuffle:
            return DataLoader(dataset, shuffle=False, **options)
        return ResumableLoader(dataset, sampler=EpochShuffleSampler(len(dataset), self.seed),
                               progress=self._trained_batches, **options)

    def _trained_batches(self) -> int:
        """Training batches finished in the current epoch (0 outside a fit)."""
        trainer = self.trainer
        if trainer is None:
            return 0
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, "train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, "val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "test", shuffle=False)

    def describe(self) -> str:
        return (f"{type(self).__name__}(input_shape={self.input_shape}, num_classes={self.num_classes}, "
                f"time_steps={self.time_steps}, root={self.root!r})")
