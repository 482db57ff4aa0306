"""Evaluation of a trained model on a test set, per sample, under the halting policy you pass.

``evaluate`` keeps each image's cost and correctness; ``recalibrate_batchnorm`` re-estimates
BatchNorm statistics for a halting policy; ``calibrate_threshold`` finds the halting threshold that
meets an average-MACs budget; ``sweep_policies`` traces accuracy against MACs over halting
thresholds and fixed iteration counts. The policy is always an argument (``halting=...``): the
model's own default is never flipped and restored. Each policy is asked how to move its threshold
and how to name itself (``HaltingPolicy.with_threshold``, ``describe``), never looked up by name.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .cost import count_params
from .models import IamNN
from .models.halting import Fixed, Full, HaltingPolicy, HaltingSpec, halting_json, network_policy
from .progress import task, track

# the halting policies of the accuracy-vs-MACs curve: the model's own at thresholds ε (one grid
# serves every policy: ε is in [0, 1) and a larger one never stops later), and fixed k
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
    iterative: bool = True  # False for a ResNet or MobileNet: its "iterations" are its fixed blocks
    # set by the caller, who knows them: results name their weights and how much of the test set they saw
    test_set_size: int | None = None  # images in the whole test split (``ImageDataModule.full_test_size``)
    weights: str | None = None  # which weights, in words (``runs.describe_weights``)
    # (N, L) difficulty of each image and the names of its L columns, where the data set knows them
    # (Cluttered Fashion-MNIST: distractor count, object side); the summary then breaks results down by it
    levels: Tensor | None = None
    level_names: tuple[str, ...] = ()

    @property
    def top1(self) -> float:
        return float(self.correct1.float().mean() * 100)

    @property
    def macs_mean(self) -> float:
        return float(self.macs.float().mean())

    @property
    def macs_cv(self) -> float:
        """Coefficient of variation of the per-sample MACs (std / mean): 0 when every sample costs
        the same, i.e. how much the model adapts its depth per image."""
        macs = self.macs.double()
        return float(macs.std(unbiased=False) / macs.mean()) if len(macs) else 0.0

    def by_level(self) -> dict[str, Any]:
        """Results per difficulty level (:func:`by_level`); needs ``levels``."""
        assert self.levels is not None
        return by_level(self.levels, self.level_names, self.macs, self.correct1, self.iterations)

    def summary(self) -> dict[str, Any]:
        return {
            "network": self.name,
            "params": self.params,
            "macs_mean": self.macs_mean,
            "macs_min": int(self.macs.min()),
            "macs_max": int(self.macs.max()),
            "macs_cv": self.macs_cv,
            "top1": self.top1,
            "top5": float(self.correct5.float().mean() * 100),
            "iterations_mean": [round(float(v), 3) for v in self.iterations.float().mean(0)],
            "max_iterations": list(self.max_iterations),
            "test_samples": len(self.label),
            "test_set_size": self.test_set_size,
            "weights": self.weights,
            "iterative": self.iterative,
            **({"by_level": self.by_level()} if self.levels is not None else {}),
        }


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, name: str = "model", halting: HaltingSpec | None = None
) -> Evaluation:
    """Run ``model`` (eval mode) over ``loader`` under ``halting`` (default: the model's own),
    keeping each sample's cost and correctness."""
    model.eval()
    out: dict[str, list[Tensor]] = {k: [] for k in ("macs", "iterations", "ponder", "c1", "c5", "conf", "pred", "y")}
    policy = "" if halting is None else f" ({policy_text(halting)})"
    for x, y in track(loader, f"evaluating {name}{policy}"):
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
        cat["c1"], cat["c5"], cat["conf"], cat["pred"], cat["y"], iterative=isinstance(model, IamNN),
    )  # fmt: skip


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, loader: DataLoader, num_batches: int = 20, halting: HaltingSpec | None = None
) -> None:
    """Re-estimate every BatchNorm's running statistics for the halting policy ``halting``
    (default: the model's own).

    Per-iteration BatchNorm has no statistics for iterations that training never (or rarely)
    reached; a policy that reaches them (more fixed iterations, a higher halting threshold) needs
    statistics of its own. As in slimmable networks, the statistics are reset and recomputed as
    a plain average over ``num_batches`` training batches; the weights are not touched.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    total = min(num_batches, len(loader)) if hasattr(loader, "__len__") else num_batches
    for x, _ in track(itertools.islice(loader, num_batches), "re-estimating BatchNorm", total):
        model(x, halting=halting)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()


@torch.no_grad()
def calibrate_threshold(
    model: IamNN,
    val_loader: Any,
    budget_macs: float,
    train_loader: Any | None = None,
    steps: int = 14,
) -> dict[str, Any]:
    """The halting slack ε of the model's policy (:meth:`~iamnn.HaltingPolicy.with_threshold`)
    whose average MACs on ``val_loader`` come closest to ``budget_macs`` from below, by bisection:
    a larger ε never makes a sample halt later, so the average MACs fall as ε grows. With
    ``train_loader`` each candidate has its BatchNorm statistics re-estimated for it first, as the
    report's sweep does.

    Leaves the model at the chosen ε (and its re-estimated statistics). ``feasible`` is False when
    even ε → 1 (one iteration per stage) costs more than the budget.
    """
    own = model.policies()[0]
    if (knob := own.with_threshold(0.0)) is None:
        raise ValueError(f"the halting policy {own.describe()!r} has no threshold to calibrate")
    name = knob.spec  # what the model is left at: the policy by its name, with the chosen ε
    trained = {k: v.clone() for k, v in model.state_dict().items()}

    def measure(eps: float) -> float:
        model.load_state_dict(trained)
        halting = own.with_threshold(eps)
        if train_loader is not None:
            recalibrate_batchnorm(model, train_loader, halting=halting)
        return evaluate(model, val_loader, halting=halting).macs_mean

    with task(f"calibrating {name} to {budget_macs / 1e6:.2f} M MACs", steps + 3) as advance:
        return _bisect(model, name, measure, advance, budget_macs, steps, train_loader is not None)


def _bisect(
    model: IamNN, name: str, measure: Any, advance: Any, budget_macs: float, steps: int, recalibrated: bool
) -> dict[str, Any]:
    lo, hi = 0.0, 0.999  # ε: most and fewest MACs
    macs_lo, macs_hi = measure(lo), measure(hi)
    advance(2)
    best = (lo, macs_lo) if macs_lo <= budget_macs else (hi, macs_hi) if macs_hi <= budget_macs else None
    if best is not None and best[0] == hi:
        for _ in range(steps):  # invariant: macs(lo) > budget >= macs(hi)
            mid = (lo + hi) / 2
            macs = measure(mid)
            advance(1)
            if macs <= budget_macs:
                hi, best = mid, (mid, macs)
            else:
                lo = mid
    eps, macs = best if best is not None else (0.999, macs_hi)
    measure(eps)  # leave the model at the chosen ε: its statistics, and its default policy
    model.halting, model.epsilon = name, eps
    return {"budget_macs": budget_macs, "epsilon": eps, "val_macs_mean": macs, "feasible": best is not None,
            "recalibrated": recalibrated, "val_macs_range": [macs_hi, macs_lo]}  # fmt: skip


def sweep_policies(
    model: IamNN,
    test_loader: DataLoader,
    train_loader: DataLoader | None,
    recalibrate: bool = True,
    epsilons: tuple[float, ...] = EPSILONS,
    fixed_k: tuple[int, ...] = FIXED_K,
    trained: Evaluation | None = None,
) -> list[dict[str, Any]]:
    """Accuracy and average MACs over halting policies: the model's own policy at thresholds ε
    (:meth:`~iamnn.HaltingPolicy.with_threshold`: ACT's for a fixed schedule; none for a policy
    without a knob), then the fixed-depth reference, k iterations and ``full``.

    Each point names its policy (``regime``: its name; ``label``: :meth:`~iamnn.HaltingPolicy.describe`)
    and the curve it is drawn on (``curve``, None for a point of its own). With ``recalibrate``
    every point's BatchNorm statistics are re-estimated on training data for that policy first
    (``recalibrated: true``); the trained statistics are restored after. The last point is the
    model as trained (``trained``: its test evaluation, if already done).
    """
    own = model.policies()[0]
    thresholded = [(p, eps) for eps in epsilons if (p := own.with_threshold(eps)) is not None]
    sweep = [(p, eps, None, f"{p.name}, threshold ε") for p, eps in thresholded]
    sweep += [(Fixed(k), None, k, "fixed k") for k in fixed_k if k < max(model.max_iterations)]
    sweep.append((Full(), None, None, None))
    recalibrated = bool(recalibrate and train_loader is not None)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    points = []
    for policy, eps, k, curve in track(sweep, "sweeping halting policies"):
        if recalibrated:
            recalibrate_batchnorm(model, train_loader, halting=policy)
        ev = evaluate(model, test_loader, halting=policy)
        points.append(_point(policy.name, policy.describe(), curve, eps, k, ev, recalibrated))
        model.load_state_dict(state)
    # the model as trained, no re-estimation: the reference point
    ev = trained or evaluate(model, test_loader)
    points.append(_point("trained", "as trained", None, model.epsilon, None, ev, False))
    return points


def _point(
    regime: str, label: str, curve: str | None, eps: float | None, k: int | None, ev: Evaluation, recalibrated: bool
) -> dict[str, Any]:
    # "regime" is the key stored reports have: the policy's name ("trained" for the model as trained)
    return {"regime": regime, "label": label, "curve": curve, "epsilon": eps, "k": k, "macs_mean": ev.macs_mean,
            "top1": ev.top1, "recalibrated": recalibrated}  # fmt: skip


def policy_text(halting: HaltingSpec) -> str:
    """A halting policy in words, as progress lines name it: the policy's (or a network-level
    policy's) own ``describe()``; a name or k as given, one per stage joined by '/'."""
    if isinstance(halting, HaltingPolicy):
        return halting.describe()
    if (network := network_policy(halting)) is not None:
        return network.describe() if hasattr(network, "describe") else str(network.spec)
    spec = halting_json(halting)
    return "/".join(map(str, spec)) if isinstance(spec, list) else str(spec)


# -- results by difficulty level ----------------------------------------------------------------
def attach_levels(ev: Evaluation, dm: Any) -> Evaluation:
    """Give ``ev`` the difficulty level of each of its test images when the data module knows them
    (``levels("test")`` and ``level_names``, as Cluttered Fashion-MNIST's); else leave it as it is."""
    if hasattr(dm, "levels") and hasattr(dm, "level_names"):
        ev.levels, ev.level_names = dm.levels("test"), tuple(dm.level_names)
    return ev


def by_level(
    levels: Tensor, names: tuple[str, ...], macs: Tensor, correct: Tensor, iterations: Tensor | None = None
) -> dict[str, Any]:
    """For each difficulty column of ``levels`` (N, L), named by ``names``: images, top-1, mean MACs
    (and mean iterations per stage, given ``iterations`` (N, S)) at every level, and Spearman's rank
    correlation between an image's MACs and its level (None where MACs or the level do not vary: a
    fixed-depth model spends the same on every image)."""
    from scipy.stats import spearmanr  # scikit-learn's dependency; imported here, only for this

    if levels.shape != (len(macs), len(names)):
        raise ValueError(f"levels of shape {tuple(levels.shape)} for {len(macs)} images and columns {names}")
    out: dict[str, Any] = {}
    macs = macs.double()
    for column, name in enumerate(names):
        level = levels[:, column]
        rows = []
        for value in level.unique().tolist():
            at = level == value
            row = {"level": int(value), "images": int(at.sum()), "top1": float(correct[at].float().mean() * 100),
                   "macs_mean": float(macs[at].mean())}  # fmt: skip
            if iterations is not None:
                row["iterations_mean"] = [round(float(v), 3) for v in iterations[at].float().mean(0)]
            rows.append(row)
        varies = bool(macs.std() > 0) and bool(level.double().std() > 0)
        rho = float(spearmanr(macs.numpy(), level.numpy()).statistic) if varies else None
        out[name] = {"levels": rows, "spearman_macs": rho}
    return out


def markdown_by_level(name: str, levels: dict[str, Any]) -> list[str]:
    """Markdown lines: one table per difficulty column of a ``by_level`` result."""
    lines = []
    for column, result in levels.items():
        rho = result["spearman_macs"]
        corr = "MACs do not vary" if rho is None else f"Spearman ρ(MACs, {column}) = {rho:.3f}"
        header = f"| {column} | images | top-1 (%) | avg MACs | mean iterations per stage |"
        lines += [f"**{name}** by {column} ({corr}):", "", header, "|---|---|---|---|---|"]
        for r in result["levels"]:
            its = " / ".join(f"{v:.2f}" for v in r["iterations_mean"]) if "iterations_mean" in r else "—"
            lines.append(f"| {r['level']} | {r['images']} | {r['top1']:.2f} | {r['macs_mean'] / 1e6:.2f} M | {its} |")
        lines.append("")
    return lines


# -- what a result was measured on, in words (tables, figures and markdown share these) -----------
def count_text(n: int) -> str:
    """10000 -> '10 000' (the README's thousands separator)."""
    return f"{n:,}".replace(",", " ")


def test_images_text(used: int, total: int | None = None) -> str:
    """'all 10 000 test images', '500 of 10 000 test images', or '500 test images' when the size of
    the whole split is unknown (a result stored before it was recorded)."""
    if total is None:
        return f"{count_text(used)} test images"
    if used >= total:
        return f"all {count_text(total)} test images"
    return f"{count_text(used)} of {count_text(total)} test images"


def _label(record: dict[str, Any]) -> str:
    # a summary names its network; a frontier record its run (shared by the run's calibrated budgets)
    if "network" in record:
        return str(record["network"])
    return Path(str(record["run"])).name if record.get("run") else str(record.get("name"))


def _grouped(records: list[dict[str, Any]], text: Any) -> str:
    """``text(record)`` once when every record agrees, else ``labels: text`` for each distinct text."""
    by_text: dict[str, list[str]] = {}
    for r in records:
        labels = by_text.setdefault(text(r), [])
        if _label(r) not in labels:
            labels.append(_label(r))
    if len(by_text) == 1:
        return next(iter(by_text))
    return "; ".join(f"{', '.join(labels)}: {value}" for value, labels in by_text.items())


def test_set_text(records: list[dict[str, Any]]) -> str:
    """How many test images a set of results (``Evaluation.summary()`` rows or frontier records) used."""
    return _grouped(records, lambda r: test_images_text(r["test_samples"], r.get("test_set_size")))


def weights_text(records: list[dict[str, Any]]) -> str | None:
    """Which weights a set of results used, in words; None when none of them says (stored results)."""
    if not any(r.get("weights") for r in records):
        return None
    return _grouped(records, lambda r: r.get("weights") or "not recorded")


def provenance(records: list[dict[str, Any]]) -> str:
    """'500 of 10 000 test images; weights: model.safetensors (best checkpoint)': the
    line under a table or a figure that says what its numbers were measured on."""
    weights = weights_text(records)
    return test_set_text(records) + (f"; weights: {weights}" if weights else "")
