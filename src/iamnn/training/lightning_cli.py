"""The LightningCLI behind ``iamnn fit|validate|test``: its Trainer defaults, checks and one-line errors."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from filelock import FileLock, Timeout
from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from ..data import ImageDataModule
from ..errors import CLIError, RunInterrupted, one_line
from ..runtime import cpu_emulates_bf16
from ..weights import check_file_builds, read_checkpoint, read_config
from .callbacks import (
    EpochLines,
    EpochSeed,
    ExportWeights,
    KeepTrainingHistory,
    MACsSummary,
    NameTestedWeights,
    NoteInterruption,
)
from .classifier import Classifier
from .recipes import check_recipes, given_batch_counts


class IamNNCLI(LightningCLI):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = list(kwargs.get("args") or [])
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.in_chans", "model.in_chans", apply_on="instantiate")
        parser.add_argument(
            "--name", type=str | None, default=None, help="run name: every logger writes to runs/<name>"
        )
        parser.add_argument("--runs_dir", type=str | None, default=None, help="folder of the runs (default: runs)")

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> L.Trainer:
        if self.subcommand == "fit":
            self._check_length(config)
        _check_devices(config.get("devices", "auto"), str(config.get("accelerator", "auto")))
        if config.get("enable_model_summary") is not False and not config.get("barebones"):
            callbacks = [*callbacks, MACsSummary()]  # Lightning's own (with "Total FLOPs: 0") is then left out
        user = config.get("callbacks") or []
        given = [*(user if isinstance(user, list) else [user]), *callbacks]
        wants_bar = config.get("enable_progress_bar") is not False and not config.get("barebones")
        if wants_bar and not any(isinstance(c, ProgressBar) for c in given) and not _live_progress_bar():
            callbacks = [*callbacks, EpochLines()]  # instead of Lightning's bar, which a log would not see
        trainer = super()._instantiate_trainer({**config, **given_batch_counts(self._args)}, callbacks)
        bf16_on_cpu = "bf16" in str(trainer.precision) and isinstance(trainer.accelerator, CPUAccelerator)
        if self.subcommand == "fit" and bf16_on_cpu and cpu_emulates_bf16():
            _warn(
                f"precision {trainer.precision}: this CPU has no native bfloat16 (no AVX-512 or AMX), so bf16 "
                "autocast is emulated and trains several times slower than --trainer.precision 32-true"
            )
        return trainer

    def _check_length(self, trainer: dict[str, Any]) -> None:
        epochs, steps = trainer.get("max_epochs"), trainer.get("max_steps")
        if epochs == 0 or steps == 0:  # else an untrained model is exported as if trained
            raise CLIError("max_epochs 0 / max_steps 0 trains nothing; give at least one epoch or step")
        if (epochs is not None and epochs < -1) or (steps is not None and steps < -1):
            raise CLIError(f"max_epochs and max_steps must be >= 1 (or -1: no limit), got {epochs} and {steps}")
        schedule = self.config[self.subcommand].model.lr_schedule
        endless = epochs == -1 and steps in (None, -1)
        if endless and schedule in ("cosine", "onecycle"):
            raise CLIError(f"max_epochs -1 (no end) leaves the {schedule} schedule no length: give max_epochs or "
                           "max_steps, or --model.lr_schedule constant / multistep")  # fmt: skip

    def _set_seed(self) -> None:
        seed = self._get(self.config, "seed_everything")
        if not isinstance(seed, bool) and seed is not None and not (isinstance(seed, int) and 0 <= seed < 2**32):
            raise CLIError(f"seed_everything must be a whole number in 0..{2**32 - 1} (or true/false), got {seed!r}")
        super()._set_seed()

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the checkpoint's hyper-parameters with a bare torch.load, whose refusal
        # is a traceback that advises weights_only=False; read_checkpoint fails in one clear line.
        config = self.config.get(self.config.get("subcommand") or "", {}) or {}
        path = config.get("ckpt_path") if hasattr(config, "get") else None
        keyword = path in ("best", "last", "hpc") or str(path).startswith("registry") or "://" in str(path)
        if path and not keyword:
            checkpoint = read_checkpoint(path)  # also: a missing file fails here, before the run folder is written
            # LightningCLI builds the model its hyper-parameters describe: check them against the
            # file's tensors on the meta device first (a 1.7 MB file asking for width 64 was OOM-killed)
            config = read_config(path, checkpoint)
            check_file_builds(config["model"], config["kwargs"], path, checkpoint)
            loops = checkpoint.get("loops")  # Lightning restores each of these by name (KeyError: 'test_loop')
            names = ("fit_loop", "validate_loop", "test_loop", "predict_loop")
            if loops is not None and not (isinstance(loops, dict) and all(isinstance(loops.get(n), dict)
                                                                          for n in names)):  # fmt: skip
                raise CLIError(f"{path}: its loop state is not Lightning's (a mapping of {', '.join(names)})")
        super()._parse_ckpt_path()

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as err:  # e.g. an unknown model name or halting mode in the recipe
            self._unlock_run_folders()
            raise CLIError(f"the recipe does not build: {one_line(err)}") from err
        except BaseException:
            self._unlock_run_folders()
            raise

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        # one run name for all the recipe's loggers (a list is awkward to override item by item)
        loggers = config.trainer.logger
        if not isinstance(loggers, list):
            return
        for logger in loggers:
            args = getattr(logger, "init_args", None)
            if args is None:
                continue
            if config.name:
                args.name, args.version = config.name, ""
            if config.runs_dir:
                args.save_dir = config.runs_dir
            if getattr(args, "version", None) != "":
                continue  # Lightning's own version_N folders: a new folder each run
            if self.subcommand in ("validate", "test"):
                # runs/<name>/test/: the training run's metrics.csv and config.yaml stay as they are
                args.version = self.subcommand
            elif self.subcommand == "fit":
                self._lock_run_folder(Path(args.save_dir) / args.name)
                if config.ckpt_path and str(logger.class_path).endswith("CSVLogger"):
                    KeepTrainingHistory.keep(Path(args.save_dir) / args.name)

    def _lock_run_folder(self, run_dir: Path) -> None:
        """Hold ``run_dir/.lock`` for the life of this process: a second ``fit`` writing the same run
        folder (the same ``--name``) stops at once with one line instead of mixing two runs' files."""
        locks = self.__dict__.setdefault("_locks", {})
        # one lock per run: only the first process of a DDP job takes it (the others write nothing)
        rank = next((os.environ[v] for v in ("RANK", "SLURM_PROCID", "LOCAL_RANK") if os.environ.get(v)), "0")
        if run_dir in locks or rank != "0":
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(run_dir / ".lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise CLIError(
                f"{run_dir} is being written by another `iamnn fit` (it holds {run_dir / '.lock'}); "
                "wait for it, or give this run another --name"
            ) from None
        locks[run_dir] = lock

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        finally:  # the run folder is free once fit returns (a script may resume it in the same process)
            for lock in self.__dict__.pop("_locks", {}).values():
                lock.release()

    def _unlock_run_folders(self) -> None:
        """A run that failed to start leaves no run folder behind (nor a lock in an older one)."""
        for run_dir, lock in self.__dict__.pop("_locks", {}).items():
            lock.release()
            (run_dir / ".lock").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # only if the lock was all that was in it


class RawEpilogHelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """jsonargparse's help, with the epilog's example lines kept as lines instead of refilled."""


@rank_zero_only
def _warn(message: str) -> None:
    """One line on stderr, from the first process only (``iamnn bench`` warns the same way)."""
    print(f"iamnn fit: warning: {message}", file=sys.stderr)


def _drop_tip(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return "litlogger" not in message and "already configured with model summary" not in message


def _quiet_lightning() -> None:
    """Drop Lightning's advertising tip and a deprecation warning from its own internals."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _drop_tip not in logger.filters:
        logger.addFilter(_drop_tip)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    # the TensorBoard and CSV loggers of a recipe share runs/<name>/: the second one always finds it
    warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
    # "Seed set to 0" comes before the recipe is even checked; the seed is in the run's config.yaml
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)


def _check_devices(devices: Any, accelerator: str) -> None:
    """CLIError when ``devices`` asks for more than this machine has: on a CPU every device is a
    process (``--trainer.devices 1000`` started processes until the system's cap, load ~290)."""
    if accelerator not in ("auto", "cpu", "gpu", "cuda"):
        return
    text = str(devices).strip()
    count = len(devices) if isinstance(devices, list) else int(text) if text.isdigit() else None
    gpus = torch.cuda.device_count() if accelerator != "cpu" else 0
    available = gpus or os.cpu_count() or 1
    if count is not None and count > available:
        what = f"{gpus} GPU(s)" if gpus else f"{available} CPU core(s), and each CPU device is a process"
        raise CLIError(f"--trainer.devices {devices} asks for more than this machine has: {what}")


def _live_progress_bar() -> bool:
    """Whether Lightning's rich progress bar would draw live: on a terminal or in Jupyter, as rich
    decides for stdout (``FORCE_COLOR``, ``TTY_COMPATIBLE`` included), unless ``IAMNN_PROGRESS=0``."""
    from rich.console import Console

    console = Console()
    return os.environ.get("IAMNN_PROGRESS", "1") != "0" and (console.is_terminal or console.is_jupyter)


def run_lightning_cli(args: list[str], epilogs: dict[str, str] | None = None) -> IamNNCLI:
    """``iamnn fit|validate|test [--config recipe.yaml] [--trainer.* ...]``; ``epilogs``: the text
    that ends each subcommand's ``--help`` (``iamnn.cli`` gives its examples), kept as written.

    A run SIGTERM stops raises :class:`~iamnn.errors.RunInterrupted` (exit code 143 from the CLI):
    Lightning's ``SIGTERMException`` is a ``SystemExit`` without a code, i.e. a success to a shell,
    SLURM or CI. Its weights are not exported (``ExportWeights`` runs at the end of a finished fit).
    """
    _quiet_lightning()
    check_recipes(args)
    # No version counters: a resumed run that repeats a killed epoch overwrites that epoch's files.
    best = ModelCheckpoint(
        filename="best-{epoch:03d}", monitor="val/acc1", mode="max", auto_insert_metric_name=False,
        enable_version_counter=False,
    )  # fmt: skip
    # `save_last=True` only rewrites last.ckpt when a best checkpoint is saved (Lightning 2.6), so
    # `--ckpt_path last` would go back to the last improvement; this one is rewritten every epoch.
    last = ModelCheckpoint(filename=ModelCheckpoint.CHECKPOINT_NAME_LAST, enable_version_counter=False)
    interruption = NoteInterruption()
    try:
        # best first: it is trainer.checkpoint_callback
        callbacks = [best, last, ExportWeights(), EpochSeed(), KeepTrainingHistory(), NameTestedWeights(), interruption]
        return _cli(args, callbacks, epilogs or {})
    except MisconfigurationException as err:  # a Trainer flag out of range (limit_train_batches -1, …)
        raise CLIError(one_line(err)) from None
    except SIGTERMException:
        epoch, step = interruption.where or ("?", "?")
        raise RunInterrupted(f"interrupted by SIGTERM at epoch {epoch}, step {step}; no weights were exported; "
                             "resume with --ckpt_path last") from None  # fmt: skip


def _cli(args: list[str], callbacks: list[Callback], epilogs: dict[str, str]) -> IamNNCLI:
    # a dict per subcommand: LightningCLI writes each one's description into it
    subcommands = {name: {"exit_on_error": False, "epilog": epilogs.get(name)} for name in LightningCLI.subcommands()}
    return IamNNCLI(
        Classifier,
        ImageDataModule,
        subclass_mode_data=True,
        args=args,
        # a bad recipe or flag raises (iamnn.cli prints it as one line) instead of printing the whole usage
        # the subcommands' parsers take the main one's formatter (jsonargparse)
        parser_kwargs={"exit_on_error": False, "formatter_class": RawEpilogHelpFormatter, **subcommands},
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "callbacks": callbacks,
            "plugins": [{"class_path": "iamnn.training.checkpoint_io.SafeCheckpointIO"}],
            "logger": [
                {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "runs"}},
                {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs"}},
            ],
            "deterministic": "warn",  # CUDA's index_add (compaction) has no deterministic kernel
        },
    )
