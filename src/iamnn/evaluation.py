"""Evaluation of a trained model on a test set, per sample, under the halting policy you pass.

``evaluate`` keeps each image's cost and correctness; ``recalibrate_batchnorm`` re-estimates
BatchNorm statistics for a regime; ``sweep_regimes`` traces accuracy against MACs over halting
thresholds and fixed iteration counts. The regime is always an argument (``halting=...``): the
model's own default is never flipped and restored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .cost import count_params
from .models import IamNN, halting_policy
from .models.halting import HaltingSpec, threshold_policy_name

# inference regimes of the accuracy-vs-MACs curve: halting thresholds 1 − ε, and fixed k
EPSILONS = (0.001, 0.01, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.9)
FIXED_K = (1, 2, 3, 4, 6, 8, 12, 16, 23, 36)
QUICK_EPSILONS, QUICK_FIXED_K = (0.01, 0.1, 0.3, 0.6, 0.9), (1, 2, 4)


@dataclass
class Evaluation:
    """Per-sample results of one model on one test set."""

    name: str
    params: int
    max_iterations: tuple[int, ...]
    macs: Tensor  # (N,) long
    iterations: Tensor  # (N, 4) long
    ponder: Tensor  # (N,) Σ_k ρ_k, a continuous measure of how long the sample iterated
    correct1: Tensor  # (N,) bool
    correct5: Tensor  # (N,) bool
    confidence: Tensor  # (N,) softmax probability of the prediction
    prediction: Tensor  # (N,) long
    label: Tensor  # (N,) long
    sweep: list[dict[str, Any]] = field(default_factory=list)

    @property
    def top1(self) -> float:
        return float(self.correct1.float().mean() * 100)

    @property
    def macs_mean(self) -> float:
        return float(self.macs.float().mean())

    def summary(self) -> dict[str, Any]:
        return {
            "network": self.name,
            "params": self.params,
            "macs_mean": self.macs_mean,
            "macs_min": int(self.macs.min()),
            "macs_max": int(self.macs.max()),
            "top1": self.top1,
            "top5": float(self.correct5.float().mean() * 100),
            "iterations_mean": [round(float(v), 3) for v in self.iterations.float().mean(0)],
            "max_iterations": list(self.max_iterations),
            "test_samples": len(self.label),
        }


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, name: str = "model", halting: HaltingSpec | None = None
) -> Evaluation:
    """Run ``model`` (eval mode) over ``loader`` under ``halting`` (default: the model's own),
    keeping each sample's cost and correctness."""
    model.eval()
    out: dict[str, list[Tensor]] = {k: [] for k in ("macs", "iterations", "ponder", "c1", "c5", "conf", "pred", "y")}
    for x, y in loader:
        logits, stats = model(x, return_stats=True, halting=halting)
        prob = logits.softmax(1)
        conf, pred = prob.max(1)
        top5 = logits.topk(min(5, logits.shape[1]), 1).indices
        out["macs"].append(stats.macs)
        out["iterations"].append(stats.iterations)
        out["ponder"].append(stats.ponder.float().sum(1))
        out["c1"].append(pred == y)
        out["c5"].append((top5 == y[:, None]).any(1))
        out["conf"].append(conf)
        out["pred"].append(pred)
        out["y"].append(y)
    cat = {k: torch.cat(v) for k, v in out.items()}
    return Evaluation(
        name, count_params(model), tuple(model.max_iterations), cat["macs"], cat["iterations"], cat["ponder"],
        cat["c1"], cat["c5"], cat["conf"], cat["pred"], cat["y"],
    )  # fmt: skip


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, loader: DataLoader, num_batches: int = 20, halting: HaltingSpec | None = None
) -> None:
    """Re-estimate every BatchNorm's running statistics for the halting regime ``halting``
    (default: the model's own).

    Per-iteration BatchNorm has no statistics for iterations that training never (or rarely)
    reached; a regime that reaches them (more fixed iterations, a higher halting threshold) needs
    statistics of its own. As in slimmable networks, the statistics are reset and recomputed as
    a plain average over ``num_batches`` training batches; the weights are not touched.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    for i, (x, _) in enumerate(loader):
        if i >= num_batches:
            break
        model(x, halting=halting)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()


def sweep_regimes(
    model: IamNN,
    test_loader: DataLoader,
    train_loader: DataLoader | None,
    recalibrate: bool = True,
    epsilons: tuple[float, ...] = EPSILONS,
    fixed_k: tuple[int, ...] = FIXED_K,
    trained: Evaluation | None = None,
) -> list[dict[str, Any]]:
    """Accuracy and average MACs over inference regimes: halting thresholds (ε) and fixed k.

    The thresholds are those of the model's own policy when it uses halting scores, else of ACT.
    With ``recalibrate`` every point's BatchNorm statistics are re-estimated on training data
    for that regime first (``recalibrated: true``); the trained statistics are restored after.
    The last point is the model as trained (``trained``: its test evaluation, if already done).
    """
    adaptive = threshold_policy_name(model.policies()[0])
    regimes: list[tuple[str, float | None, Any]] = [(adaptive, e, halting_policy(adaptive, e)) for e in epsilons]
    regimes += [("fixed", None, k) for k in fixed_k if k < max(model.max_iterations)]
    regimes.append(("full", None, "full"))
    recalibrated = bool(recalibrate and train_loader is not None)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    points = []
    for regime, eps, halting in regimes:
        if recalibrated:
            recalibrate_batchnorm(model, train_loader, halting=halting)
        ev = evaluate(model, test_loader, halting=halting)
        k = halting if regime == "fixed" else None
        points.append(_point(regime, eps, k, ev, recalibrated))
        model.load_state_dict(state)
    # the model as trained, no re-estimation: the reference point
    points.append(_point("trained", model.epsilon, None, trained or evaluate(model, test_loader), False))
    return points


def _point(regime: str, eps: float | None, k: int | None, ev: Evaluation, recalibrated: bool) -> dict[str, Any]:
    return {"regime": regime, "epsilon": eps, "k": k, "macs_mean": ev.macs_mean, "top1": ev.top1,
            "recalibrated": recalibrated}  # fmt: skip
