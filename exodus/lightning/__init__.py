"""Training stack: LightningModules, DataModules and the ``exodus-train`` CLI.

Needs the ``train`` extra (``pip install exodus-snn[train]``).
"""
from .data import EpochShuffleSampler, SpikeDataModule, require_files

__all__ = ["SpikeDataModule", "EpochShuffleSampler", "require_files"]
