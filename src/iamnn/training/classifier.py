"""The LightningModule that trains a registry network for image classification.

The network is a plain ``nn.Module`` from the registry; this module only adds the loss
(cross-entropy + τ·ponder), the optimiser and schedule, and the metrics. Hyper-parameters are
plain values, so checkpoints load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import torch
import torchmetrics
from torch import Tensor, nn

from ..errors import CLIError, TrainingDivergedError
from ..models import ACT, IamNN, upgrade_state_dict
from ..models.halting import HaltingPolicy, network_policy, ponder_loss
from ..weights import check_fits, config_from_hparams, create_model, data_config, load_weights


def _check_depth_training(
    model: nn.Module, anytime: bool, freeze_backbone: bool, depth_supervision: Sequence[int]
) -> None:
    """What trains an IamNN's depths, refused in one line where it cannot apply."""
    if isinstance(model, IamNN) and network_policy(model.halting) is not None:
        raise ValueError(f"halting {model.halting.spec!r} is a cascade, an inference regime: train its passes' "
                         "regime (halting: 1), then choose its threshold: iamnn calibrate --halting")  # fmt: skip
    if (anytime or freeze_backbone or depth_supervision) and not isinstance(model, IamNN):
        raise ValueError(f"anytime, depth_supervision and freeze_backbone train an IamNN's depths, "
                         f"not a {type(model).__name__}")  # fmt: skip
    if depth_supervision and (anytime or any(isinstance(k, bool) or not isinstance(k, int) or k < 1
                                             for k in depth_supervision)):  # fmt: skip
        raise ValueError(f"depth_supervision takes ints k >= 1 and not with anytime, got {list(depth_supervision)!r}")


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
        _check_depth_training(self.model, anytime, freeze_backbone, depth_supervision)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
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
