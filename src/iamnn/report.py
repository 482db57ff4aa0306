"""The paper's Table 1 and Figures 2–3 for trained runs (``iamnn report``): markdown, JSON, PNG.

A run directory is what ``iamnn fit`` leaves (``runs.py``); each is evaluated on its test set
(``evaluation.py``), its IamNN swept over halting policies, and drawn (``plots.py``). The sweep's
points carry their policy's own words (``label``), so any registered policy reports without an
entry here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .evaluation import (
    EPSILONS,
    FIXED_K,
    QUICK_EPSILONS,
    QUICK_FIXED_K,
    Evaluation,
    attach_levels,
    evaluate,
    markdown_by_level,
    provenance,
    recalibrate_batchnorm,
    sweep_policies,
    test_images_text,
)
from .files import atomic_folder
from .models import IamNN
from .models.halting import network_policy
from .plots import plot_easy_hard, plot_iterations, plot_tradeoff
from .progress import track
from .runs import datamodule_of_weights, describe_weights, find_weights, load_datamodule
from .weights import load_model


def evaluate_run(
    run_dir: str | Path, sweep: bool = True, test_subset: int | None = None, quick: bool = False
) -> tuple[Evaluation, Any]:
    """A run's test evaluation (as trained) and its data module; an IamNN's with its sweep of
    halting policies."""
    run_dir = Path(run_dir)
    weights = find_weights(run_dir)
    model = load_model(weights)
    dm = load_datamodule(run_dir, **({"test_subset": test_subset} if test_subset else {}))
    ev = evaluate(model, dm.test_dataloader(), run_dir.name)
    ev.test_set_size, ev.weights = dm.full_test_size, describe_weights(weights)
    attach_levels(ev, dm)
    # a cascade's curve is its thresholds' (``iamnn calibrate``, ``iamnn frontier``), not the stages' policies
    if sweep and isinstance(model, IamNN) and network_policy(model.halting) is None:
        dm.setup("fit")
        grid = (QUICK_EPSILONS, QUICK_FIXED_K) if quick else (EPSILONS, FIXED_K)
        ev.sweep = sweep_policies(model, dm.test_dataloader(), dm.train_dataloader(), True, *grid, trained=ev)
    return ev, dm


def evaluate_weights(
    model: Any,
    data: dict[str, Any],
    name: str,
    halting: Any = None,
    test_subset: int | None = None,
    recalibrate: bool = False,
    weights: str | None = None,
) -> Evaluation:
    """Trained weights on the test set of the dataset their metadata names (``iamnn evaluate``),
    its first ``test_subset`` images if given; ``recalibrate``: first re-estimate ``model``'s
    BatchNorm statistics for ``halting`` on training images (in place, as ``iamnn recalibrate``
    does for a run). ``weights``: which weights these are, in words, for the result to name."""
    dm = datamodule_of_weights(data, test_subset, train=recalibrate)
    if recalibrate:
        recalibrate_batchnorm(model, dm.train_dataloader(), halting=halting)
    ev = evaluate(model, dm.test_dataloader(), name, halting=halting)
    ev.test_set_size, ev.weights = dm.full_test_size, weights
    attach_levels(ev, dm)
    return ev


# -- the report ----------------------------------------------------------------------------------
def markdown_table(summaries: list[dict[str, Any]]) -> str:
    lines = [
        "| network | params | avg MACs (min–max) | top-1 / top-5 (%) | mean iterations per stage |",
        "|---|---|---|---|---|",
    ]
    for s in summaries:
        macs = f"{s['macs_mean'] / 1e6:.2f} M ({s['macs_min'] / 1e6:.2f}–{s['macs_max'] / 1e6:.2f} M)"
        its = " / ".join(f"{m:.2f} of {n}" for m, n in zip(s["iterations_mean"], s["max_iterations"], strict=True))
        its = its if s.get("iterative", True) else "— (fixed depth)"
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
    """Evaluate every run on its test set; write report.md, report.json and the PNG figures to
    ``out_dir``, which they replace as a set (``files.atomic_folder``)."""
    with atomic_folder(out_dir, REPORT_FILES) as out:
        result = _write_report(run_dirs, out, sweep, test_subset, quick)
    return {**result, "out_dir": str(out_dir)}


REPORT_FILES = ("report.md", "report.json", "*.png")


def _write_report(
    run_dirs: list[str | Path], out: Path, sweep: bool, test_subset: int | None, quick: bool
) -> dict[str, Any]:
    evaluations, figures = [], []
    for run in track(run_dirs, "evaluating run folders"):
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
    md = ["# iamnn report", "", table, "", f"Measured on {provenance(summaries)}.", ""]
    for ev in evaluations:
        if ev.sweep:
            seen = test_images_text(len(ev.label), ev.test_set_size)
            md += [f"## {ev.name}: halting policies on {seen} (BatchNorm re-estimated on training data per point)",
                   "",
                   "| halting policy | avg MACs | top-1 (%) | BN re-estimated |", "|---|---|---|---|"]  # fmt: skip
            for p in ev.sweep:  # each point in its policy's own words (HaltingPolicy.describe)
                md.append(f"| {p['label']} | {p['macs_mean'] / 1e6:.2f} M | {p['top1']:.2f} | {p['recalibrated']} |")
            md.append("")
    levelled = [s for s in summaries if "by_level" in s]
    if levelled:  # a data set whose images carry a difficulty level (Cluttered Fashion-MNIST)
        md += ["## By difficulty level", ""]
        for summary in levelled:
            md += markdown_by_level(summary["network"], summary["by_level"])
    md += [f"![{f.stem}]({f.name})" for f in figures]
    (out / "report.md").write_text("\n".join(md) + "\n")
    result = {"models": summaries, "sweeps": {ev.name: ev.sweep for ev in evaluations},
              "figures": [f.name for f in figures], "test_subset": test_subset}  # fmt: skip
    (out / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    return {**result, "table": table}
