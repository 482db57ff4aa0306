"""The callbacks ``iamnn fit|validate|test`` hands the Trainer: the MACs summary, one line per
epoch off a terminal, the exported weights, per-epoch seeds, the metrics a resume keeps, the
point a SIGTERM stopped at, and the line naming the weights ``iamnn test`` tested.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelSummary, ProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ..data import ImageDataModule
from ..files import atomic_write
from ..models import IamNN
from ..weights import create_model, data_config, load_weights, save_weights


class MACsSummary(ModelSummary):
    """Lightning's model summary with MACs per image instead of its FLOPs.

    Lightning counts FLOPs only from an ``example_input_array`` and prints "Total FLOPs: 0"
    without one; an IamNN's cost depends on its regime, so the summary gives the range from one
    iteration per stage to every iteration, computed for the data module's input size.
    """

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        hw = tuple(dm.input_size) if dm is not None else None
        model = pl_module.model
        if hw is None:
            self._macs = "MACs per image: unknown (no data module)"
        elif isinstance(model, IamNN):
            self._macs = (f"{model.max_macs(hw, 1) / 1e6:.2f} M to {model.max_macs(hw, 'full') / 1e6:.2f} M MACs "
                          f"per image at {hw[0]}x{hw[1]} (1 iteration per stage to all)")  # fmt: skip
        else:
            self._macs = f"{model.max_macs(hw) / 1e6:.2f} M MACs per image at {hw[0]}x{hw[1]}"
        super().on_fit_start(trainer, pl_module)

    def summarize(
        self, summary_data: list[tuple[str, list[str]]], total_parameters: int, trainable_parameters: int,
        model_size: float, total_training_modes: dict[str, int], total_flops: int, **kwargs: Any,
    ) -> None:  # fmt: skip
        from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table

        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        table = _format_summary_table(
            total_parameters, trainable_parameters, model_size, total_training_modes, total_flops, *columns
        )
        lines = [line for line in table.splitlines() if not line.rstrip().endswith("Total Flops")]
        logging.getLogger("lightning.pytorch.callbacks.model_summary").info("\n" + "\n".join([*lines, self._macs]))


class EpochLines(ProgressBar):
    """The progress bar of a run whose stdout is a log or a pipe: one plain line per training epoch,

        epoch 3/15  train loss 0.412  train acc 86.1 %  val acc 88.0 %  val MACs 6.35 M  elapsed 0:02:41

    Off a terminal, Lightning's rich bar draws nothing until the run ends (then its last frame),
    so a redirected ``make demo`` looked stuck for ten minutes. The val figures are left out of an
    epoch that did not validate; MACs are then the training batches' mean.
    """

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._start = time.monotonic()
        self._validated = False

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.monotonic()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validated = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validated = self._validated or not trainer.sanity_checking

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._enabled and trainer.is_global_zero:
            print(self.line(trainer), flush=True)

    def line(self, trainer: L.Trainer) -> str:
        """This epoch's line, from the metrics the training step logs at epoch end."""
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        parts = [f"epoch {trainer.current_epoch + 1}{epochs}"]
        loss = metrics.get("train/loss_epoch", metrics.get("train/loss"))
        if loss is not None:
            parts.append(f"train loss {loss:.3f}")
        for split in ("train", "val") if self._validated else ("train",):
            if f"{split}/acc1" in metrics:
                parts.append(f"{split} acc {100 * metrics[f'{split}/acc1']:.1f} %")
        macs_split = "val" if self._validated and "val/macs_mean" in metrics else "train"
        if f"{macs_split}/macs_mean" in metrics:
            parts.append(f"{macs_split} MACs {metrics[f'{macs_split}/macs_mean'] / 1e6:.2f} M")
        elapsed = round(time.monotonic() - self._start)
        parts.append(f"elapsed {elapsed // 3600}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d}")
        return "  ".join(parts)


class ExportWeights(Callback):
    """At the end of ``fit``, save the best checkpoint's network as ``<log_dir>/model.safetensors``.

    The file carries its config (``iamnn.weights``), so ``iamnn report``, ``iamnn predict`` and
    ``create_model(..., checkpoint_path=...)`` use it without pickle or the training code. An
    anytime run saves its final weights instead: its validation runs ``full`` with BatchNorm
    statistics blended over every depth, which says little about the best epoch.
    """

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_dir = trainer.log_dir  # a collective under DDP: every rank must ask
        if not trainer.is_global_zero or log_dir is None:
            return
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if pl_module.hparams.get("anytime"):
            best = ""
        model = pl_module.model
        if best:
            model = create_model(model.model_config["model"], **model.model_config["kwargs"])
            load_weights(model, best)
        data = data_config(trainer.datamodule) if trainer.datamodule is not None else None
        extra = {"checkpoint": Path(best).name or None}
        save_weights(model, Path(log_dir) / "model.safetensors", data=data, extra=extra)


class EpochSeed(Callback):
    """Reseed every RNG at the start of each training epoch from (global seed, epoch, rank).

    Lightning does not store RNG states in checkpoints, so without this a run resumed from an
    epoch-end checkpoint augments differently from the uninterrupted run (the order is fixed by
    ``data.EpochShuffleSampler``). With it epoch ``e`` depends only on the seed and ``e``, and
    resuming gives bitwise the same weights on CPU. That holds for ``num_workers=0`` (the in-memory
    data modules augment whole batches in the main process); persistent worker processes keep RNG
    states of their own, so with workers a resumed run is correct but not bitwise identical.
    """

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        base = os.environ.get("PL_GLOBAL_SEED")  # set by seed_everything; unseeded runs stay unseeded
        if base is None:
            return
        seed = (int(base) * 1_000_003 + trainer.current_epoch * 7919 + trainer.global_rank) % 2**32
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)


RESUME_HISTORY = ".metrics.csv.resume"  # a resumed run's metrics.csv, kept while Lightning starts


class KeepTrainingHistory(Callback):
    """A resumed run keeps the metrics it logged before the kill.

    Lightning's CSV logger deletes the ``metrics.csv`` it finds in its folder when it starts, so
    ``fit --ckpt_path …`` would lose every epoch logged before the kill. ``IamNNCLI`` copies the
    file to ``.metrics.csv.resume`` before Lightning starts; once the checkpoint is restored, this
    writes back its rows from before the restored step (the interrupted epoch's rows go: the
    resume runs that epoch again) and removes the copy; new rows are appended after them.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore(trainer)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":  # a resume of a finished run never starts training
            self._restore(trainer)

    @staticmethod
    def _restore(trainer: L.Trainer) -> None:
        for logger in trainer.loggers:
            backup = Path(logger.log_dir) / RESUME_HISTORY if isinstance(logger, CSVLogger) else None
            if backup is None or not backup.is_file():
                continue
            rows = list(csv.DictReader(io.StringIO(backup.read_text())))
            if rows:
                header = list(rows[0])
                kept = [r for r in rows if r.get("step", "").isdigit() and int(r["step"]) < trainer.global_step]
                writer = logger.experiment
                with atomic_write(Path(writer.metrics_file_path), "w") as f:
                    out = csv.DictWriter(f, fieldnames=header)
                    out.writeheader()
                    out.writerows(kept)
                writer.metrics_keys = sorted(header)  # later rows append; new columns rewrite the header
            backup.unlink()

    @staticmethod
    def keep(log_dir: Path) -> None:
        """Before a resume starts: copy ``log_dir``'s metrics.csv aside (once: a copy left by a run
        killed before it restored its history is the one to keep)."""
        metrics, backup = log_dir / "metrics.csv", log_dir / RESUME_HISTORY
        if metrics.is_file() and not backup.is_file():
            with atomic_write(backup, "w") as f:
                f.write(metrics.read_text())


class NoteInterruption(Callback):
    """Where a SIGTERM stopped the run (Lightning's loops raise ``SIGTERMException`` at the next
    step), for the one line :func:`run_lightning_cli` reports instead of Lightning's exit code 0."""

    where: tuple[int, int] | None = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            self.where = (trainer.current_epoch, trainer.global_step)


class NameTestedWeights(Callback):
    """``iamnn test``: one line naming the weights tested and on how many test images, above
    Lightning's table. A run's ``model.safetensors``, which ``iamnn report`` evaluates, is its best
    checkpoint's network; ``--ckpt_path last`` tests the last epoch's: two accuracies for one test
    set, which neither said before."""

    images = 0

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.images = 0

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        self.images += len(batch[1])

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from ..evaluation import test_images_text
        from ..runs import describe_weights

        # every rank tested its share (``--limit_test_batches`` may cut them all short)
        images = int(trainer.strategy.reduce(torch.tensor(self.images, device=pl_module.device), reduce_op="sum"))
        if not trainer.is_global_zero:
            return
        dm = trainer.datamodule
        total = dm.full_test_size if isinstance(dm, ImageDataModule) and dm.test_set is not None else None
        path = trainer.ckpt_path
        weights = describe_weights(path, within_run=False) if path else "the recipe's model as built (no --ckpt_path)"
        print(f"iamnn test: {weights} on {test_images_text(images, total)}", flush=True)
