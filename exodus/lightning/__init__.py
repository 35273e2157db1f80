"""Training stack: LightningModules, DataModules and the ``exodus-train`` CLI.

Needs the ``train`` extra (``pip install exodus-snn[train]``). See docs/training.md.
"""
from .data import ConfigError, EpochShuffleSampler, MissingDataError, ResumableLoader, SpikeDataModule, require_files
from .model import SpikingClassifier
from .tasks import (MotifStreamData, SpikeTimingData, StoreRecallData, TemporalOrderData, motif_stream_task,
                    rate_baseline, spike_timing_task, store_recall_task, temporal_order_task)

__all__ = [
    "SpikingClassifier", "SpikeDataModule", "SpikeTimingData", "TemporalOrderData", "StoreRecallData",
    "MotifStreamData", "spike_timing_task", "temporal_order_task", "store_recall_task", "motif_stream_task",
    "rate_baseline",
    "ConfigError", "MissingDataError", "require_files", "EpochShuffleSampler", "ResumableLoader",
]
