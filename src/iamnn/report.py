"""Evaluation and the paper's Table 1 / Figures 2–3 for trained runs (``iamnn report``).

A run directory is what ``iamnn fit`` leaves: ``model.safetensors`` (network + its config) and
``config.yaml`` (the recipe, whose ``data`` section rebuilds the test set).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .cost import count_params
from .files import atomic_write, write_text_atomic
from .models import IamNN
from .weights import load_model

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

    def summary(self) -> dict[str, Any]:
        return {
            "network": self.name,
            "params": self.params,
            "macs_mean": float(self.macs.float().mean()),
            "macs_min": int(self.macs.min()),
            "macs_max": int(self.macs.max()),
            "top1": float(self.correct1.float().mean() * 100),
            "top5": float(self.correct5.float().mean() * 100),
            "iterations_mean": [round(float(v), 3) for v in self.iterations.float().mean(0)],
            "max_iterations": list(self.max_iterations),
            "test_samples": len(self.label),
        }


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, name: str = "model") -> Evaluation:
    """Run ``model`` (eval mode) over ``loader``, keeping each sample's cost and correctness."""
    model.eval()
    out: dict[str, list[Tensor]] = {k: [] for k in ("macs", "iterations", "ponder", "c1", "c5", "conf", "pred", "y")}
    for x, y in loader:
        logits, stats = model(x, return_stats=True)
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


def save_figure(fig, path: Path) -> None:
    """Write a figure as PNG through a temporary file (a failed write leaves no half image), then close it."""
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=110)
    pyplot_agg().close(fig)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader: DataLoader, num_batches: int = 20) -> None:
    """Re-estimate every BatchNorm's running statistics for the model's current halting regime.

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
        model(x)
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

    With ``recalibrate`` every point's BatchNorm statistics are re-estimated on training data
    for that regime first (``recalibrated: true``); the trained statistics are restored after.
    The last point is the model as trained (``trained``: its test evaluation, if already done).
    """

    def point(regime: str, eps: float | None, k: int | None, ev: Evaluation, recalibrated: bool) -> dict[str, Any]:
        return {"regime": regime, "epsilon": eps, "k": k, "macs_mean": float(ev.macs.float().mean()),
                "top1": float(ev.correct1.float().mean() * 100), "recalibrated": recalibrated}  # fmt: skip

    state = {k: v.clone() for k, v in model.state_dict().items()}
    halting, epsilon = model.halting, model.epsilon
    points = []
    regimes = [("act", e) for e in epsilons] + [(k, epsilon) for k in fixed_k if k < max(model.max_iterations)]
    regimes.append(("full", epsilon))
    for mode, eps in regimes:
        model.halting, model.epsilon = mode, eps
        if recalibrate and train_loader is not None:
            recalibrate_batchnorm(model, train_loader)
        regime = "act" if mode == "act" else ("full" if mode == "full" else "fixed")
        k = mode if isinstance(mode, int) else None
        recalibrated = bool(recalibrate and train_loader is not None)
        points.append(point(regime, eps if mode == "act" else None, k, evaluate(model, test_loader), recalibrated))
        model.load_state_dict(state)
    model.halting, model.epsilon = halting, epsilon
    # the model as trained, no re-estimation: the reference point
    points.append(point("trained", epsilon, None, trained or evaluate(model, test_loader), False))
    return points


# -- runs ----------------------------------------------------------------------------------------
def load_datamodule(run_dir: Path, **overrides: Any) -> Any:
    """Rebuild the data module of a run from its saved recipe (``config.yaml``)."""
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no config.yaml (is this a run directory of `iamnn fit`?)")
    data = yaml.safe_load(config_path.read_text())["data"]
    module_name, _, class_name = data["class_path"].rpartition(".")
    if not module_name.startswith("iamnn."):
        raise ValueError(f"{config_path}: data class {data['class_path']} is not an iamnn data module")
    cls = getattr(importlib.import_module(module_name), class_name)
    dm = cls(**{**(data.get("init_args") or {}), **overrides})
    dm.setup("test")
    return dm


def find_weights(run_dir: Path) -> Path:
    if (run_dir / "model.safetensors").is_file():
        return run_dir / "model.safetensors"
    ckpts = sorted((run_dir / "checkpoints").glob("best*.ckpt")) or sorted((run_dir / "checkpoints").glob("*.ckpt"))
    if not ckpts:
        raise FileNotFoundError(f"{run_dir}: no model.safetensors or checkpoints/*.ckpt")
    return ckpts[-1]


def evaluate_run(
    run_dir: str | Path, sweep: bool = True, test_subset: int | None = None, quick: bool = False
) -> tuple[Evaluation, Any]:
    run_dir = Path(run_dir)
    model = load_model(find_weights(run_dir))
    dm = load_datamodule(run_dir, **({"test_subset": test_subset} if test_subset else {}))
    ev = evaluate(model, dm.test_dataloader(), run_dir.name)
    if sweep and isinstance(model, IamNN):
        dm.setup("fit")
        grid = (QUICK_EPSILONS, QUICK_FIXED_K) if quick else (EPSILONS, FIXED_K)
        ev.sweep = sweep_regimes(model, dm.test_dataloader(), dm.train_dataloader(), True, *grid, trained=ev)
    return ev, dm


# -- figures -------------------------------------------------------------------------------------
def pyplot_agg() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def macs_formatter() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _: f"{v / 1e9:g}G" if v >= 1e9 else f"{v / 1e6:g}M")


def plot_iterations(ev: Evaluation, path: Path) -> None:
    """Figure 2: histogram of the iterations each stage used, a vertical line at its maximum."""
    plt = pyplot_agg()
    stages = len(ev.max_iterations)
    fig, axes = plt.subplots(1, stages, figsize=(3.2 * stages, 2.8), constrained_layout=True)
    for k, ax in enumerate(axes):
        n_max = ev.max_iterations[k]
        counts = torch.bincount(ev.iterations[:, k], minlength=n_max + 1)[1:]
        ax.bar(range(1, n_max + 1), counts.numpy(), color="tab:blue", width=0.8)
        ax.axvline(n_max, color="tab:red", linestyle="--", label="max (ResNet units)")
        ax.set_xlim(0.3, n_max + 0.7)
        ax.set_title(f"stage {k + 1}: mean {ev.iterations[:, k].float().mean():.2f} / {n_max}")
        ax.set_xlabel("iterations")
        if k == 0:
            ax.set_ylabel("test images")
            ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{ev.name}: iterations used per stage ({len(ev.label)} test images)")
    save_figure(fig, path)


def plot_easy_hard(ev: Evaluation, images: Any, class_names: list[str], path: Path, count: int = 12) -> None:
    """Figure 3: test images from cheapest to most expensive, at evenly spaced quantiles.

    Images are ranked by MACs, ties broken by the ponder cost Σ_k ρ_k (how close each stage came
    to halting earlier), since many images share the same iteration counts.
    """
    plt = pyplot_agg()
    order = torch.argsort(ev.ponder.double(), stable=True)
    order = order[torch.argsort(ev.macs[order], stable=True)]
    picks = order[torch.linspace(0, len(order) - 1, count).round().long()]
    fig, axes = plt.subplots(1, count, figsize=(1.35 * count, 2.1), constrained_layout=True)
    for ax, i in zip(axes, picks.tolist(), strict=True):
        img, label = images[i]
        img = img.permute(1, 2, 0).squeeze(-1).clamp(0, 1).numpy()
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ok = "" if bool(ev.correct1[i]) else " ✗"
        ax.set_title(f"{ev.macs[i] / 1e6:.1f}M{ok}", fontsize=8)
        ax.set_xlabel(class_names[int(label)], fontsize=6)
    fig.suptitle(f"{ev.name}: easy (left, fewest MACs) → hard (right, most MACs)", fontsize=9)
    save_figure(fig, path)


def plot_tradeoff(evaluations: list[Evaluation], path: Path) -> None:
    """Accuracy against average MACs per image: each model, and each IamNN's inference sweep."""
    plt = pyplot_agg()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
    for i, ev in enumerate(evaluations):
        color = f"C{i}"
        s = ev.summary()
        ax.scatter([s["macs_mean"]], [s["top1"]], color=color, marker="*", s=140, zorder=3, label=f"{ev.name}")
        for regime, marker, label in (("act", "o-", "ACT, threshold 1−ε"), ("fixed", "s--", "fixed k")):
            pts = sorted((p["macs_mean"], p["top1"]) for p in ev.sweep if p["regime"] == regime)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker, color=color, alpha=0.7, ms=4, label=f"{ev.name}: {label}")
    accuracy_vs_macs_axes(ax, "accuracy vs compute (sweep points: BatchNorm re-estimated per regime)")
    save_figure(fig, path)


def accuracy_vs_macs_axes(ax: Any, title: str, legend_loc: str = "best") -> None:
    """Log MACs on x (labelled 5M, 1G …), top-1 on y, grid, legend and title."""
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(macs_formatter())
    ax.xaxis.set_minor_formatter(macs_formatter())
    ax.tick_params(axis="x", which="minor", labelsize=6)
    ax.set_xlabel("average MACs per image (log)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc=legend_loc)
    ax.set_title(title, fontsize=9)


# -- the report ----------------------------------------------------------------------------------
def markdown_table(summaries: list[dict[str, Any]]) -> str:
    lines = [
        "| network | params | avg MACs (min–max) | top-1 / top-5 (%) | mean iterations per stage |",
        "|---|---|---|---|---|",
    ]
    for s in summaries:
        macs = f"{s['macs_mean'] / 1e6:.2f} M ({s['macs_min'] / 1e6:.2f}–{s['macs_max'] / 1e6:.2f} M)"
        its = " / ".join(f"{m:.2f} of {n}" for m, n in zip(s["iterations_mean"], s["max_iterations"], strict=True))
        lines.append(
            f"| {s['network']} | {s['params'] / 1e6:.3f} M | {macs} | {s['top1']:.2f} / {s['top5']:.2f} | {its} |"
        )
    return "\n".join(lines)


def build_report(
    run_dirs: list[str | Path],
    out_dir: str | Path,
    sweep: bool = True,
    test_subset: int | None = None,
    quick: bool = False,
) -> dict[str, Any]:
    """Evaluate every run on its test set; write report.md, report.json and the PNG figures."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    evaluations, figures = [], []
    for run in run_dirs:
        ev, dm = evaluate_run(run, sweep=sweep, test_subset=test_subset, quick=quick)
        evaluations.append(ev)
        if ev.iterations.float().std() > 0 or ev.sweep:  # adaptive: its own figures
            fig2, fig3 = out / f"{ev.name}_iterations.png", out / f"{ev.name}_easy_hard.png"
            plot_iterations(ev, fig2)
            plot_easy_hard(ev, dm.test_dataset_raw(), dm.class_names, fig3)
            figures += [fig2, fig3]
    tradeoff = out / "accuracy_vs_macs.png"
    plot_tradeoff(evaluations, tradeoff)
    figures.append(tradeoff)
    summaries = [ev.summary() for ev in evaluations]
    table = markdown_table(summaries)
    md = ["# iamnn report", "", table, ""]
    for ev in evaluations:
        if ev.sweep:
            md += [f"## {ev.name}: inference regimes (BatchNorm re-estimated on training data per point)", "",
                   "| regime | avg MACs | top-1 (%) | BN re-estimated |", "|---|---|---|---|"]  # fmt: skip
            for p in ev.sweep:
                what = {"act": f"ACT ε={p['epsilon']}", "fixed": f"fixed k={p['k']}", "full": "full",
                        "trained": "as trained"}[p["regime"]]  # fmt: skip
                md.append(f"| {what} | {p['macs_mean'] / 1e6:.2f} M | {p['top1']:.2f} | {p['recalibrated']} |")
            md.append("")
    md += [f"![{f.stem}]({f.name})" for f in figures]
    write_text_atomic(out / "report.md", "\n".join(md) + "\n")
    result = {"models": summaries, "sweeps": {ev.name: ev.sweep for ev in evaluations},
              "figures": [f.name for f in figures]}  # fmt: skip
    write_text_atomic(out / "report.json", json.dumps(result, indent=2) + "\n")
    return {**result, "table": table, "out_dir": str(out)}
