"""``exodus-train``: LightningCLI over SpikingClassifier and every SpikeDataModule.

    exodus-train fit      --config experiments/configs/default.yaml
    exodus-train fit      --config experiments/configs/default.yaml --model.gradient slayer
    exodus-train fit      --config experiments/configs/default.yaml --ckpt_path runs/default/version_0/checkpoints/last.ckpt
    exodus-train validate --config experiments/configs/default.yaml --ckpt_path <checkpoint>
    exodus-train test     --config experiments/configs/default.yaml --ckpt_path <checkpoint>

``data`` takes any SpikeDataModule by class path (``exodus.lightning.tasks.SpikeTimingData``) or
class name (``SpikeTimingData``); ``data.input_shape`` and ``data.num_classes`` are linked into the
model. Optimizer and scheduler: ``--model.lr`` / ``--model.weight_decay`` for the built-in Adam, or
any torch optimizer / scheduler with ``--optimizer AdamW --optimizer.lr 3e-3 --lr_scheduler
CosineAnnealingLR --lr_scheduler.T_max 30`` (these replace the built-in Adam).
"""
from __future__ import annotations

import importlib
import os
import sys
import warnings
from typing import Optional, Sequence

import torch

# Lightning 2.6 calls jsonargparse APIs that jsonargparse >= 4.49 deprecates; not actionable for users.
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
from pytorch_lightning.cli import LightningCLI  # noqa: E402

from ..backends import memory
from .data import ConfigError, MissingDataError, SpikeDataModule
from .model import SpikingClassifier

__all__ = ["ExodusCLI", "main", "build", "run"]

# DataModules in these modules are found by class name (``class_path: SHD``).
DATA_MODULES = ("exodus.lightning.tasks", "exodus.lightning.datasets")

TRAINER_DEFAULTS = {
    "accelerator": "cpu",
    "devices": 1,
    "enable_progress_bar": True,
    "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": "runs"}},
}


def _import_data_modules() -> None:
    for name in DATA_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:     # the module exists but one of its imports is missing: say so
                warnings.warn(f"{name} could not be imported ({error}); its DataModules are unavailable")


def _known_data_modules() -> list[str]:
    found, stack = [], list(SpikeDataModule.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if not cls.__name__.startswith("_"):
            found.append(f"{cls.__module__}.{cls.__name__}")
    return sorted(found)


def _check_data_class(args: Optional[Sequence[str]]) -> None:
    """Fail early, with the list of choices, when data.class_path names no SpikeDataModule.
    (jsonargparse's own message for this case is long and does not list the choices.)"""
    argv = list(sys.argv[1:] if args is None else args)
    paths = []
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            paths.append(("config", argv[i + 1]))
        elif arg.startswith("--config="):
            paths.append(("config", arg.split("=", 1)[1]))
        elif arg in ("--data", "--data.class_path") and i + 1 < len(argv):
            paths.append(("cli", argv[i + 1]))
        elif arg.startswith(("--data=", "--data.class_path=")):
            paths.append(("cli", arg.split("=", 1)[1]))
    for origin, value in paths:
        class_path = value
        if origin == "config":
            if not os.path.isfile(value):
                continue       # LightningCLI reports the missing file
            import yaml
            with open(value) as handle:
                config = yaml.safe_load(handle) or {}
            data = config.get("data") if isinstance(config, dict) else None
            class_path = data.get("class_path") if isinstance(data, dict) else None
        if not isinstance(class_path, str) or class_path.startswith(("{", "[")):
            continue
        known = _known_data_modules()
        short = {path.rsplit(".", 1)[1]: path for path in known}
        if class_path in known or class_path in short:
            continue
        try:
            module_name, _, class_name = class_path.rpartition(".")
            cls = getattr(importlib.import_module(module_name), class_name) if module_name else None
        except (ImportError, AttributeError, ValueError):
            cls = None
        if isinstance(cls, type) and issubclass(cls, SpikeDataModule):
            continue
        where = f"in {value}" if origin == "config" else "on the command line"
        raise SystemExit(f"exodus-train: unknown task data.class_path {class_path!r} ({where}).\n"
                         f"Choose one of: {', '.join(known)}\n"
                         f"(or the class path of your own SpikeDataModule subclass).")


class ExodusCLI(LightningCLI):
    """LightningCLI with the data -> model shape links."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.input_shape", "model.input_shape", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.add_argument("--num_threads", type=Optional[int], default=None,
                            help="torch.set_num_threads before training (also the exodus CPU kernels' thread "
                                 "count); null = torch's default. 1 is fastest for small models on busy machines.")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        threads = config.get("num_threads")
        if threads is not None:
            if threads < 1:
                raise ValueError(f"num_threads must be >= 1 or null, got {threads}")
            torch.set_num_threads(threads)


def _cli(args: Optional[Sequence[str]], run: bool) -> ExodusCLI:
    _import_data_modules()
    _check_data_class(args)
    warnings.filterwarnings("ignore", message=r".*configure_optimizers` will be overridden.*")
    # Lightning 2.6 with torch >= 2.10 warns about its own use of torch's pytree API; not actionable.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
    return ExodusCLI(
        SpikingClassifier,
        SpikeDataModule,
        subclass_mode_data=True,
        seed_everything_default=0,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
        args=None if args is None else list(args),
        run=run,
    )


def build(args: Sequence[str]) -> ExodusCLI:
    """Parse and instantiate without running: ``cli = build(["--config", path, "--model.gradient", "slayer"])``,
    then use ``cli.model``, ``cli.datamodule``, ``cli.trainer`` (for scripts such as exodus-compare)."""
    return _cli(args, run=False)


def run(args: Sequence[str]) -> ExodusCLI:
    """Run a subcommand like the command line does and return the CLI (``cli.model``,
    ``cli.trainer``, ``cli.datamodule``): ``run(["fit", "--config", path])``."""
    return _cli(args, run=True)


def main(args: Optional[Sequence[str]] = None) -> None:
    """Entry point of ``exodus-train`` (fit / validate / test / predict). Configuration mistakes
    (ConfigError, MissingDataError) are printed without a traceback; EXODUS_DEBUG=1 shows it.
    First sets this process's allocator up for training (docs/cpu_memory.md); the library never does."""
    memory.tune_training_process()
    try:
        _cli(args, run=True)
    except Exception as error:
        cause = _configuration_error(error)
        if cause is None or os.environ.get("EXODUS_DEBUG"):
            raise
        raise SystemExit(f"exodus-train: error: {cause}\n(set EXODUS_DEBUG=1 to see the traceback)") from None
    finally:
        _close_process_group()


def _close_process_group() -> None:
    """Destroys the DDP process group Lightning leaves open. Left to interpreter exit, gloo's
    teardown sometimes aborted a finished run ("terminate called without an active exception",
    exit code -6: tests/test_ddp.py, about 1 run in 3 on a 2-core machine)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _configuration_error(error: BaseException) -> Optional[BaseException]:
    """The ConfigError / MissingDataError behind ``error`` (jsonargparse wraps errors raised while
    instantiating the classes), or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (ConfigError, MissingDataError)):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


if __name__ == "__main__":
    main()
