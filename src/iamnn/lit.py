"""Training system (LightningModule) and the LightningCLI behind ``iamnn fit|validate|test``.

The network is a plain ``nn.Module`` from the registry; this module only adds the loss
(cross-entropy + τ·ponder), the optimiser and schedule, and the metrics. Hyper-parameters are
plain values, so checkpoints load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import logging
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import torchmetrics
import yaml
from filelock import FileLock, Timeout
from jsonargparse import DefaultHelpFormatter
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ModelSummary, ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException
from torch import Tensor, nn

from .data import DATAMODULES, ImageDataModule
from .errors import CLIError, RunInterrupted, TrainingDivergedError, one_line
from .files import atomic_write, load_yaml
from .models import ACT, IamNN, upgrade_state_dict
from .models.halting import HaltingPolicy, network_policy, ponder_loss
from .runtime import cpu_emulates_bf16
from .weights import (
    check_file_builds,
    check_fits,
    config_from_hparams,
    create_model,
    data_config,
    load_weights,
    read_checkpoint,
    read_config,
    save_weights,
)


def _check_training_args(**values: float) -> None:
    """Training hyper-parameters out of range fail before anything is built, with the range."""
    ranges = {"lr": (0, None, "> 0"), "gamma": (0, None, "> 0"), "momentum": (0, 1, "in [0, 1)"),
              "label_smoothing": (0, 1, "in [0, 1)")}  # fmt: skip
    for name, value in values.items():
        low, high, words = ranges.get(name, (None, None, ">= 0"))
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        bad = value <= low if words == "> 0" else value < (low or 0) or (high is not None and value >= high)
        if bad:
            raise ValueError(f"{name} must be {words}, got {value!r}")


class Classifier(L.LightningModule):
    r"""Image classification with an IamNN or a ResNet baseline.

    Loss: :math:`\mathcal{L} = \mathrm{CE} + \tau \sum_k \mathrm{mean}_\mathrm{batch}(\rho_k)` (ponder
    cost :math:`\rho = N + R` per stage; zero weight for the baselines).

    Args:
        model: registry name (``iamnn_r18`` … ``iamnn_r152``, ``resnet18`` … ``resnet152``).
        num_classes, in_chans: linked from the data module by the CLI.
        stem, width, halting, epsilon, halting_bias: passed to the model (IamNN options ignored
            by the ResNets). ``model_kwargs``: any further builder arguments.
        tau: ponder-cost weight τ.
        tau_warmup_epochs: τ grows linearly from 0 over this many epochs (a cure tried for the
            collapse of deep stages to one iteration; see the README's frontier study).
        min_iterations, min_iterations_epochs: during the first ``min_iterations_epochs`` epochs of
            training no sample halts before ``min_iterations`` iterations (of each stage's maximum).
        ponder_norm: divide each stage's ponder cost by its maximum iteration count, so a long stage
            is not charged more per unit of its depth than a short one.
        anytime: train every depth of an IamNN (the sandwich rule of slimmable networks): each step
            runs ``full`` against the labels, and one iteration per stage plus ``anytime_random``
            random per-stage depths against the detached soft targets of ``full`` (in-place
            distillation, KL). The halting units get no gradient; train them afterwards with
            ``freeze_backbone``. Validation runs the model's own ``halting``.
        depth_supervision: train these fixed depths (iterations per stage, e.g. ``[1, 2]``) at
            every step, each on the labels (deep supervision over depth, no distillation):
            the loss is the mean of their cross-entropies, so that each depth is accurate on its
            own and free to disagree with the others. Validation runs the model's own ``halting``.
        freeze_backbone: train only the halting units (the second phase of two-phase training:
            the backbone's weights stay; its BatchNorm statistics follow the halting regime).
        init_weights: start from the weights of this file (safetensors or ``.ckpt`` of the same
            architecture), e.g. an anytime backbone for ``freeze_backbone``.
        optimizer: ``sgd`` (momentum, nesterov) or ``adamw``.
        lr, momentum, nesterov, weight_decay: optimiser settings (no decay on BN and biases).
        lr_schedule: ``cosine`` (with linear warm-up), ``onecycle``, ``multistep`` or ``constant``;
            all stepped per batch.
        warmup_epochs: linear warm-up length for ``cosine``.
        milestones, gamma: epochs at which ``multistep`` multiplies the rate by ``gamma``.
        label_smoothing: cross-entropy label smoothing.
        channels_last: train in NHWC (weights and activations). Measured on 2 CPU cores, one
            step of ``iamnn_r34_fmnist`` at batch 128: 160 ms ``full`` and 121 ms ``act`` against
            183 and 156 ms in NCHW. The saved weights do not depend on it.
    """

    def __init__(
        self,
        model: str = "iamnn_r18",
        num_classes: int = 10,
        in_chans: int = 3,
        stem: Literal["imagenet", "cifar"] = "cifar",
        width: float = 1.0,
        halting: int | str = "act",
        epsilon: float = 0.01,
        halting_bias: float = -3.0,
        model_kwargs: dict[str, Any] | None = None,
        tau: float = 0.01,
        tau_warmup_epochs: float = 0.0,
        min_iterations: int = 0,
        min_iterations_epochs: float = 0.0,
        ponder_norm: bool = False,
        anytime: bool = False,
        anytime_random: int = 2,
        depth_supervision: Sequence[int] = (),
        freeze_backbone: bool = False,
        init_weights: str | None = None,
        optimizer: Literal["sgd", "adamw"] = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 5e-4,
        lr_schedule: Literal["cosine", "onecycle", "multistep", "constant"] = "cosine",
        warmup_epochs: float = 0.0,
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
        label_smoothing: float = 0.0,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        _check_training_args(lr=lr, momentum=momentum, weight_decay=weight_decay, tau=tau, gamma=gamma,
                             label_smoothing=label_smoothing, warmup_epochs=warmup_epochs,
                             anytime_random=anytime_random, tau_warmup_epochs=tau_warmup_epochs)  # fmt: skip
        self.save_hyperparameters()
        config = config_from_hparams(dict(self.hparams))
        self.model = create_model(config["model"], **config["kwargs"])
        self.adaptive = isinstance(self.model, IamNN)
        if self.adaptive and network_policy(self.model.halting) is not None:
            raise ValueError(f"halting {halting!r} is a cascade, an inference regime: train its passes' "
                             "regime (halting: 1), then choose its threshold: iamnn calibrate --halting")  # fmt: skip
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        if (anytime or freeze_backbone or depth_supervision) and not self.adaptive:
            raise ValueError(f"anytime, depth_supervision and freeze_backbone train an IamNN's depths, "
                             f"not a {type(self.model).__name__}")  # fmt: skip
        if depth_supervision and (anytime or any(isinstance(k, bool) or not isinstance(k, int) or k < 1
                                                 for k in depth_supervision)):  # fmt: skip
            raise ValueError(
                f"depth_supervision takes ints k >= 1 and not with anytime, got {list(depth_supervision)!r}"
            )
        if init_weights:
            load_weights(self.model, init_weights)
        if freeze_backbone:
            for name, p in self.model.named_parameters():
                p.requires_grad_(".halting_unit." in name)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        top5 = min(5, num_classes)
        self.train_acc = torchmetrics.Accuracy("multiclass", num_classes=num_classes)
        self.val_acc = torchmetrics.Accuracy("multiclass", num_classes=num_classes)
        self.val_acc5 = torchmetrics.Accuracy("multiclass", num_classes=num_classes, top_k=top5)
        self.test_acc = torchmetrics.Accuracy("multiclass", num_classes=num_classes)
        self.test_acc5 = torchmetrics.Accuracy("multiclass", num_classes=num_classes, top_k=top5)

    def setup(self, stage: str) -> None:
        # an input too small for the stem and poolings fails now, in one line, not at the first batch
        dm = self._trainer.datamodule if self._trainer is not None else None
        hw = tuple(getattr(dm, "input_size", ()) or ())
        if self.adaptive and len(hw) == 2 and min(self.model.stage_sizes(hw)[-1]) < 1:
            raise CLIError(f"{hw[0]}x{hw[1]} inputs are too small for {self.hparams.model}'s "
                           f"{self.model.stem_type} stem and poolings (no pixel left for its last stage)")  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def _step(self, batch: tuple[Tensor, Tensor], split: str) -> Tensor:
        x, y = batch
        x = x.contiguous(memory_format=self.memory_format)
        hp, train, n = self.hparams, split == "train", len(x)
        policies = self._policies(train)
        if train and hp.anytime:
            logits, stats, ce = self._sandwich(x, y)
        elif train and hp.get("depth_supervision"):
            logits, stats, ce = self._depth_supervised(x, y)
        else:
            logits, stats = self.model(x, return_stats=True, halting=policies)
            ce = self.criterion(logits, y)
        # ponder cost: τ · Σ_k mean_batch(ρ_k), optionally ρ_k / N_k (the policies' own loss)
        ponder = logits.new_zeros(())
        # anytime and depth supervision train fixed depths: no ponder to learn
        if self.adaptive and not (train and (hp.anytime or hp.get("depth_supervision"))):
            ponder = ponder_loss(policies, stats.ponder, self.model.max_iterations if hp.ponder_norm else None)
        tau = hp.tau
        if train and hp.tau_warmup_epochs > 0:
            tau *= min(1.0, self.global_step / (hp.tau_warmup_epochs * max(1, self.trainer.num_training_batches)))
        loss = ce + tau * ponder
        self.log(f"{split}/loss", loss, on_step=train, on_epoch=True, prog_bar=train, batch_size=n)
        self.log(f"{split}/ponder", ponder, on_step=False, on_epoch=True, batch_size=n)
        for k, iterations in enumerate(stats.iterations.float().mean(0)):
            self.log(f"{split}/iterations_stage{k + 1}", iterations, on_step=False, on_epoch=True, batch_size=n)
        # float64: float32 sums of ~10⁷-MAC counts round (a mean above the max); MPS has no float64
        macs = stats.macs.float() if stats.macs.device.type == "mps" else stats.macs.double()
        self.log(f"{split}/macs_mean", macs.mean(), on_step=False, on_epoch=True, batch_size=n, prog_bar=not train)
        self.log(f"{split}/macs_max", macs.max(), on_step=False, on_epoch=True, reduce_fx="max", batch_size=n)
        if train:
            self.train_acc(logits, y)
            self.log("train/acc1", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        else:
            acc, acc5 = (self.val_acc, self.val_acc5) if split == "val" else (self.test_acc, self.test_acc5)
            acc(logits, y)
            acc5(logits, y)
            self.log(f"{split}/acc1", acc, on_epoch=True, prog_bar=True)
            self.log(f"{split}/acc5", acc5, on_epoch=True)
        return loss

    def _sandwich(self, x: Tensor, y: Tensor) -> tuple[Tensor, Any, Tensor]:
        r"""Every depth in one step: ``full`` learns from the labels; one iteration per stage and
        ``anytime_random`` random per-stage depths learn from its detached soft targets q:
        :math:`\mathcal{L} = \mathrm{CE}(z_\mathrm{full}, y) + \sum_d \mathrm{KL}(q \,\|\, \mathrm{softmax}(z_d))`.

        Returns the ``full`` logits and stats (what the step logs) and the loss.
        """
        logits, stats = self.model(x, return_stats=True, halting="full")
        loss = self.criterion(logits, y)
        target = logits.detach().float().softmax(1)
        limits = self.model.max_iterations
        depths = [[1] * len(limits)]  # the shallowest network, then random ones, a depth per stage
        depths += [[int(torch.randint(1, n + 1, ())) for n in limits] for _ in range(self.hparams.anytime_random)]
        for halting in depths:
            student = self.model(x, halting=halting).float().log_softmax(1)
            loss = loss + nn.functional.kl_div(student, target, reduction="batchmean")
        return logits, stats, loss

    def _depth_supervised(self, x: Tensor, y: Tensor) -> tuple[Tensor, Any, Tensor]:
        r"""Each depth k of ``depth_supervision`` on the labels:
        :math:`\mathcal{L} = \frac{1}{|K|} \sum_{k \in K} \mathrm{CE}(z_k, y)`.

        Returns the deepest depth's logits and stats (what the step logs) and the loss.
        """
        depths = sorted(self.hparams.depth_supervision)
        losses = []
        for k in depths:
            logits, stats = self.model(x, return_stats=True, halting=k)
            losses.append(self.criterion(logits, y))
        return logits, stats, torch.stack(losses).mean()

    def _policies(self, train: bool) -> tuple[HaltingPolicy, ...] | None:
        """The model's halting policies for this step: during the first ``min_iterations_epochs``
        of training, ACT stages stop no sample before ``min_iterations`` iterations."""
        if not self.adaptive:
            return None
        policies = self.model.policies()
        hp = self.hparams
        if train and hp.min_iterations and self.current_epoch < hp.min_iterations_epochs:
            policies = tuple(ACT(p.epsilon, hp.min_iterations) if isinstance(p, ACT) else p for p in policies)
        return policies

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._step(batch, "train")
        if not bool(torch.isfinite(loss)):  # one host sync per step; a NaN never reaches the weights
            raise TrainingDivergedError(
                f"training diverged: the loss is {float(loss.detach())} at epoch {self.current_epoch}, "
                f"step {self.global_step} (lr {self.hparams.lr}); training stopped and no weights were exported"
            )
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # preprocessing travels with the checkpoint, so `iamnn predict --weights x.ckpt` needs nothing else
        if self._trainer is not None and self.trainer.datamodule is not None:
            checkpoint["iamnn_data"] = data_config(self.trainer.datamodule)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # before Lightning's strict load_state_dict, whose error is a page of key names
        path = getattr(self._trainer, "ckpt_path", None) or "checkpoint"
        checkpoint["state_dict"] = upgrade_state_dict(checkpoint.get("state_dict", {}))
        check_fits(self, checkpoint["state_dict"], path)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        decay, no_decay = [], []
        for p in (p for p in self.model.parameters() if p.requires_grad):
            (no_decay if p.ndim <= 1 else decay).append(p)  # BN and bias parameters are not decayed
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov and hp.momentum > 0)
        else:
            opt = torch.optim.AdamW(groups, lr=hp.lr)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = max(1, self.trainer.max_epochs or 1)
        per_epoch = max(1, total // epochs)
        if hp.lr_schedule == "onecycle":
            sched = ResumableOneCycleLR(opt, max_lr=hp.lr, total_steps=total, pct_start=0.25)
        else:
            warmup = int(hp.warmup_epochs * per_epoch)

            def factor(step: int) -> float:
                if step < warmup:
                    return (step + 1) / warmup
                if hp.lr_schedule == "cosine":
                    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
                if hp.lr_schedule == "multistep":
                    return hp.gamma ** sum(step >= m * per_epoch for m in hp.milestones)
                return 1.0

            sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


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


def _live_progress_bar() -> bool:
    """Whether Lightning's rich progress bar would draw live: on a terminal or in Jupyter, as rich
    decides for stdout (``FORCE_COLOR``, ``TTY_COMPATIBLE`` included), unless ``IAMNN_PROGRESS=0``."""
    from rich.console import Console

    console = Console()
    return os.environ.get("IAMNN_PROGRESS", "1") != "0" and (console.is_terminal or console.is_jupyter)


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


class ResumableOneCycleLR(torch.optim.lr_scheduler.OneCycleLR):
    """One-cycle schedule that a resume with another ``max_epochs`` rebuilds for the new length.

    The stock scheduler restores its saved ``total_steps`` with its step count, so a resume with more
    epochs fails with "Tried to step N times". Here the length (and the phase boundaries derived from
    it) stays the one computed for this fit; the step count comes from the checkpoint, so training
    continues at the same step of a one-cycle curve stretched to the new length. (The other schedules
    are closures over this fit's length and rebuild the same way on their own.)
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        this_fit = {key: getattr(self, key) for key in ("total_steps", "_schedule_phases")}
        super().load_state_dict(state_dict)
        self.__dict__.update(this_fit)


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


class SafeCheckpointIO(TorchCheckpointIO):
    """Checkpoints written so that a kill at any moment leaves the previous file or the new one, and
    read without running pickled code (``weights.read_checkpoint``: ``weights_only=True``).

    Lightning's local save goes through fsspec, which writes a temporary file in the system temp
    folder and moves it over the target: a copy (not a rename) when that folder is on another file
    system, so a kill mid-copy truncates ``last.ckpt``; nothing is fsynced either. Here the temporary
    file sits beside the target, is fsynced, and is renamed over it.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's own transaction
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_write(path) as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        return read_checkpoint(path)  # on the CPU; Lightning moves the states to the model's device


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


# Trainer flags that mean a number of batches when given an int and a fraction when given a float.
# jsonargparse turns `--trainer.limit_train_batches 1` into 1.0 (every batch); ints are kept ints.
BATCH_COUNT_FLAGS = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches",
                     "val_check_interval", "overfit_batches")  # fmt: skip


def _flag_values(args: Sequence[str]) -> list[tuple[str, str]]:
    """Each argument as (flag, value), for ``--flag=value`` and ``--flag value`` alike (for a
    ``--flag value`` pair, the value is also seen as a flag of its own, which no caller matches)."""
    args = list(args)
    pairs = []
    for i, arg in enumerate(args):
        flag, _, value = arg.partition("=")
        pairs.append((flag, value or (args[i + 1] if i + 1 < len(args) else "")))
    return pairs


def check_recipes(args: Sequence[str]) -> None:
    """Refuse, before LightningCLI reads anything, a ``--config`` recipe that is too big or whose
    aliases explode (``files.load_yaml``), and a data module that is not a registered iamnn one:
    jsonargparse would import any ``class_path`` (running its module's code) before checking it."""
    named: list[tuple[str, Any]] = []
    for flag, value in _flag_values(args):
        if flag in ("--config", "--data") and Path(value).is_file():
            try:
                recipe = load_yaml(value)
            except ValueError as err:
                raise CLIError(str(err)) from None
            except yaml.YAMLError:
                continue  # LightningCLI reports a broken recipe itself, in one line
            data = recipe.get("data") if isinstance(recipe, dict) and flag == "--config" else recipe
            if isinstance(data, dict) and "class_path" in data:
                named.append((f"{value}: data.class_path", data["class_path"]))
        elif flag in ("--data", "--data.class_path") and value and not value.lstrip().startswith("{"):
            named.append((flag, value))
    for where, class_path in named:
        module, _, name = str(class_path).rpartition(".")
        if module not in ("iamnn.data", "") or name not in {c.__name__ for c in DATAMODULES.values()}:
            choices = ", ".join(f"iamnn.data.{c.__name__}" for c in DATAMODULES.values())
            raise CLIError(f"{where} {class_path!r} is not an iamnn data module (not imported); choose from {choices}")


def given_batch_counts(args: Sequence[str]) -> dict[str, int]:
    """The :data:`BATCH_COUNT_FLAGS` written as integers (``1``, not ``1.0``) in a command line or
    its ``--config`` recipes, the last one given winning."""
    given: dict[str, Any] = {}
    for flag, value in _flag_values(args):
        if flag == "--config" and Path(value).is_file():
            try:
                trainer = (load_yaml(value) or {}).get("trainer") or {}
            except (yaml.YAMLError, AttributeError):
                continue  # LightningCLI reports a broken recipe itself
            given.update({k: trainer[k] for k in BATCH_COUNT_FLAGS if k in trainer})
        elif flag.removeprefix("--trainer.") in BATCH_COUNT_FLAGS:
            given[flag.removeprefix("--trainer.")] = int(value) if value.strip().isdigit() else value
    return {k: v for k, v in given.items() if isinstance(v, int) and not isinstance(v, bool)}


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
        from .evaluation import test_images_text
        from .runs import describe_weights

        # every rank tested its share (``--limit_test_batches`` may cut them all short)
        images = int(trainer.strategy.reduce(torch.tensor(self.images, device=pl_module.device), reduce_op="sum"))
        if not trainer.is_global_zero:
            return
        dm = trainer.datamodule
        total = dm.full_test_size if isinstance(dm, ImageDataModule) and dm.test_set is not None else None
        path = trainer.ckpt_path
        weights = describe_weights(path, within_run=False) if path else "the recipe's model as built (no --ckpt_path)"
        print(f"iamnn test: {weights} on {test_images_text(images, total)}", flush=True)


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
            "plugins": [{"class_path": "iamnn.lit.SafeCheckpointIO"}],
            "logger": [
                {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "runs"}},
                {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs"}},
            ],
            "deterministic": "warn",  # CUDA's index_add (compaction) has no deterministic kernel
        },
    )
