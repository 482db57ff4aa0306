"""The figures: Figure 2 (iterations per stage), Figure 3 (easy to hard images), accuracy against
MACs for a report's sweeps and for a frontier of trained models. matplotlib is imported when a
figure is drawn (Agg backend: no display needed)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import torch

from .evaluation import Evaluation, provenance, test_images_text
from .files import atomic_write


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
    fig.suptitle(f"{ev.name}: iterations used per stage ({_measured_on(ev)})")
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
        level = "" if ev.levels is None else f"\n{ev.levels[i, 0]} {ev.level_names[0]}"  # e.g. "3 distractors"
        ax.set_xlabel(class_names[int(label)] + level, fontsize=6)
    fig.suptitle(f"{ev.name}: easy (left, fewest MACs) → hard (right, most MACs) of {_measured_on(ev)}", fontsize=9)
    save_figure(fig, path)


CURVE_MARKERS = ("o-", "s--", "^-.", "D:")  # a sweep's curves, in the order the sweep gives them


def plot_tradeoff(evaluations: list[Evaluation], path: Path) -> None:
    """Accuracy against average MACs per image: each model, and each IamNN's inference sweep."""
    plt = pyplot_agg()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
    for i, ev in enumerate(evaluations):
        color = f"C{i}"
        s = ev.summary()
        ax.scatter([s["macs_mean"]], [s["top1"]], color=color, marker="*", s=140, zorder=3, label=f"{ev.name}")
        # each curve the sweep named (the policy's threshold, then fixed k), in its order; a point
        # on no curve (full, as trained) is not drawn
        curves = list(dict.fromkeys(p["curve"] for p in ev.sweep if p.get("curve")))
        for curve, marker in zip(curves, itertools.cycle(CURVE_MARKERS)):
            pts = sorted((p["macs_mean"], p["top1"]) for p in ev.sweep if p.get("curve") == curve)
            ax.plot(*zip(*pts, strict=True), marker, color=color, alpha=0.7, ms=4, label=f"{ev.name}: {curve}")
    accuracy_vs_macs_axes(ax, "accuracy vs compute (sweep points: BatchNorm re-estimated per halting policy)")
    footnote(fig, provenance([ev.summary() for ev in evaluations]))
    save_figure(fig, path)


def _measured_on(ev: Evaluation) -> str:
    return test_images_text(len(ev.label), ev.test_set_size) + (f", weights {ev.weights}" if ev.weights else "")


def footnote(fig: Any, text: str) -> None:
    """What a figure's numbers were measured on (test images, weights), small, under its axes."""
    fig.supxlabel(f"measured on {text}", fontsize=6.5, color="dimgrey", wrap=True)


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


def save_figure(fig, path: Path) -> None:
    """Write a figure as PNG through a temporary file (a failed write leaves no half image), then close it."""
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=110)
    pyplot_agg().close(fig)


STYLE = {
    "act": ("o", "tab:blue"), "fixed": ("s", "tab:orange"), "full": ("D", "tab:red"), "adaptive": ("P", "tab:green"),
    "resnet": ("*", "black"), "mobilenet": ("X", "tab:purple"),
}  # fmt: skip


def _place_labels(fig: Any, ax: Any, points: list[dict[str, Any]]) -> None:
    """Name every point: right of its marker, above where that is free, else below, else left, else
    further out with a thin line to its marker; the first position whose box (as drawn) overlaps no
    name placed before it, left to right."""
    renderer = fig.canvas.get_renderer()
    spots = [(4, 3), (4, -10), (-4, 3), (-4, -10), (4, 12), (4, -19), (4, 21), (4, -28)]
    placed: list[Any] = []
    for r in sorted(points, key=lambda r: r["macs_mean"]):
        for dx, dy in spots:
            line = {"arrowstyle": "-", "lw": 0.4, "color": "grey"} if abs(dy) > 10 else None
            side = "left" if dx > 0 else "right"
            label = ax.annotate(r["name"], (r["macs_mean"], r["top1"]), fontsize=6.5, xytext=(dx, dy),
                                textcoords="offset points", ha=side, arrowprops=line)  # fmt: skip
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed) or (dx, dy) == spots[-1]:
                break
            label.remove()
        placed.append(box)


def plot_frontier(records: list[dict[str, Any]], path: Path, front: list[str], title: str = "") -> None:
    """Top-1 against average MACs of trained models (log x), each kind its marker, ``front`` joined.

    The calibrated budgets of an adaptive model (records with ``budget_macs``) are one line, labelled
    once; every other record is a point with its name.
    """
    plt = pyplot_agg()
    fig, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
    points = [r for r in records if "budget_macs" not in r]
    kinds = [*STYLE, *sorted({r["kind"] for r in points} - set(STYLE))]  # other policies: triangles
    for i, kind in enumerate(kinds):
        marker, colour = STYLE.get(kind, ("^", f"C{4 + i}"))
        rows = [r for r in points if r["kind"] == kind]
        if rows:
            size = 140 if marker == "*" else 45
            ax.scatter([r["macs_mean"] for r in rows], [r["top1"] for r in rows], marker=marker, s=size,
                       color=colour, label=kind if kind != "resnet" else "ResNet", zorder=3)  # fmt: skip
    for j, run in enumerate(sorted({r["run"] for r in records if "budget_macs" in r})):
        curve = sorted((r for r in records if r.get("run") == run and "budget_macs" in r), key=lambda r: r["macs_mean"])
        name = curve[0]["name"].rsplit("@", 1)[0]
        ax.plot([r["macs_mean"] for r in curve], [r["top1"] for r in curve], "-", marker=".",
                color=("tab:green", "tab:olive", "tab:cyan", "tab:pink")[j % 4], lw=1.5,
                label=f"{name}, calibrated budgets", zorder=4)  # fmt: skip
    front = [r for r in sorted(records, key=lambda r: r["macs_mean"]) if r["name"] in front]
    ax.plot([r["macs_mean"] for r in front], [r["top1"] for r in front], "--", color="grey", lw=1, label="Pareto front")
    ax.margins(x=0.08, y=0.1)
    title = title or "accuracy vs compute of trained models (test set)"
    accuracy_vs_macs_axes(ax, title)
    if all("test_samples" in r for r in records):  # records stored before it was recorded say nothing
        footnote(fig, provenance(records))
    fig.canvas.draw()  # the final limits and layout, so that the names' boxes are where they will be drawn
    _place_labels(fig, ax, points)
    save_figure(fig, path)
