"""The commands that measure trained runs: ``evaluate``, ``report``, ``frontier``, ``calibrate``,
``recalibrate``, ``headroom`` and ``demo``. Each calls the service that does the work and prints
its result (a table, or JSON: ``shared.show``)."""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from pathlib import Path

from rich.table import Table

from ..errors import CLIError, one_line
from . import SHIPPED
from .shared import console, human, load, note_other_regime, output_file, printable, show, shown, source_text

REPO_RECIPES = Path(__file__).resolve().parents[3] / "recipes"  # the recipes of a source checkout


def table1(summaries: list[dict], title: str) -> Table:
    from ..evaluation import weights_text

    weights = weights_text(summaries)
    table = Table(title=title, caption=f"weights: {shown(weights)}" if weights else None)
    for col in ("network", "params", "avg MACs", "min–max MACs", "top-1", "top-5", "mean iterations per stage"):
        table.add_column(col, justify="left" if col == "network" else "right")
    for s in summaries:
        its = " / ".join(f"{m:.2f}" for m in s["iterations_mean"])
        maxima = "/".join(str(n) for n in s["max_iterations"])
        table.add_row(
            s["network"], human(s["params"]), human(s["macs_mean"]),
            f"{human(s['macs_min'])} – {human(s['macs_max'])}", f"{s['top1']:.2f}", f"{s['top5']:.2f}",
            f"{its} (max {maxima})" if maxima and s.get("iterative", True) else "— (fixed depth)",
        )  # fmt: skip
    return table


def print_report(result: dict, out_dir: str, json_to: str | None = None) -> None:
    from ..evaluation import test_set_text

    def table() -> None:
        console().print(table1(result["models"], f"Table 1 (test set: {test_set_text(result['models'])})"))
        print(f"report: {out_dir}/report.md, {out_dir}/report.json; figures:")
        for name in result["figures"]:
            print(f"  {out_dir}/{name}")

    files = f"report: {out_dir}/report.md, {out_dir}/report.json, " + ", ".join(result["figures"])
    show(result, json_to, table, [files] if json_to == "-" else [])


def report(args: argparse.Namespace) -> None:
    from ..report import build_report
    from ..runs import run_folders

    try:
        result = build_report(
            run_folders(args.runs), args.output, sweep=not args.no_sweep, test_subset=args.test_subset,
            quick=args.quick_sweep,
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as err:  # a run folder's files, in words
        raise CLIError(one_line(err)) from None
    print_report(result, args.output, args.json)


def frontier(args: argparse.Namespace) -> None:
    from ..frontier import build_frontier, iterations_text, pareto_front
    from ..runs import run_folders

    try:
        result = build_frontier(run_folders(args.runs), args.output, test_subset=args.test_subset, budgets=args.budgets)
    except ValueError as err:  # e.g. an output folder holding other files
        raise CLIError(one_line(err)) from None

    def table() -> None:
        from ..evaluation import test_set_text, weights_text

        records = sorted(result["models"], key=lambda r: r["macs_mean"])
        front, weights = set(pareto_front(records)), weights_text(records)
        out = Table(title=f"Accuracy vs average MACs (test set: {test_set_text(records)}; each model as trained)",
                    caption=f"weights: {shown(weights)}" if weights else None)  # fmt: skip
        for col in ("model", "kind", "params", "avg MACs", "min–max MACs", "MACs CV", "mean iterations per stage",
                    "top-1", "Pareto"):  # fmt: skip
            out.add_column(col, justify="left" if col in ("model", "kind") else "right")
        for r in records:
            out.add_row(
                r["name"], r["kind"], human(r["params"]), human(r["macs_mean"]),
                f"{human(r['macs_min'])} – {human(r['macs_max'])}", f"{r['macs_cv']:.3f}", iterations_text(r),
                f"{r['top1']:.2f}", "*" if r["name"] in front else "",
            )  # fmt: skip
        console().print(out)

    written = ", ".join(f"{args.output}/frontier.{ext}" for ext in ("png", "md", "json"))
    show(result, args.json, table, [f"wrote {written}"])


def calibrate(args: argparse.Namespace) -> None:
    from ..calibrate import calibrate_run, parse_macs

    if args.save:  # weights and their sidecar: never over existing files without --force
        output_file(args.save, args.force, (".json",))
    try:
        budgets = [parse_macs(b) for b in args.budget_macs]
        result = calibrate_run(args.ckpt, budgets, not args.no_recalibrate, args.test_subset, args.save, args.halting)
    except (ValueError, FileNotFoundError) as err:
        raise CLIError(str(err)) from None
    if args.halting:  # a cascade: its confidence threshold, in the threshold's columns
        for r in result["budgets"]:
            r["epsilon"], r["val_macs_range"] = r["thresholds"][0] or -math.inf, [r["val_macs_mean"]] * 2
    statistics = (
        "BatchNorm re-estimated" if not args.no_recalibrate and not args.halting else "trained BatchNorm statistics"
    )
    threshold = "cascade threshold" if args.halting else "ε"
    saved = f"wrote {result['saved']} (loads at {threshold} = {result['budgets'][0]['epsilon']:.4f}, {statistics})"

    def table() -> None:
        from ..evaluation import test_images_text

        seen = test_images_text(result["test_samples"], result["test_set_size"])
        out = Table(title=f"Halting thresholds for MACs budgets: {shown(result['weights'])} (test: {seen})")
        spent = "share answered by each pass" if args.halting else "mean iterations per stage"
        for col in ("budget", threshold, "val avg MACs", "test avg MACs", "test top-1", spent, "note"):
            out.add_column(col, justify="right")
        for r in result["budgets"]:
            note = "" if r["feasible"] else f"infeasible: the cheapest threshold costs {human(r['val_macs_range'][0])}"
            shares = r["answered_by"] if args.halting else r["iterations_mean"]
            out.add_row(
                human(r["budget_macs"]), f"{r['epsilon']:.4f}", human(r["val_macs_mean"]),
                human(r["test_macs_mean"]), f"{r['test_top1']:.2f}", " / ".join(f"{v:.2f}" for v in shares), note,
            )  # fmt: skip
        console().print(out)

    show(result, args.json, table, [saved] if result["saved"] else [])


def headroom(args: argparse.Namespace) -> None:
    from ..headroom import headroom as measure
    from ..headroom import markdown_headroom, opinions
    from ..models.cascade import Pass
    from ..runs import load_iamnn_run

    items = []
    for text in args.opinions:
        run, _, passes = text.rpartition(":")
        try:
            chosen = tuple(Pass.parse(p) for p in passes.split(","))
            weights, model, _, dm = load_iamnn_run(run, args.test_subset)
            if dm.val_set is None:
                raise ValueError(f"{weights}: the recipe holds out no validation split")
        except (ValueError, FileNotFoundError) as err:
            raise CLIError(f"{text}: {one_line(err)}") from None
        items += opinions(model, dm.val_dataloader(), dm.test_dataloader(), chosen, Path(run).name, alone=True)
    result = measure(items)
    show(result, args.json, lambda: print(markdown_headroom(result)))


def recalibrate(args: argparse.Namespace) -> None:
    from ..calibrate import recalibrate_model, recalibrate_run
    from ..models import IamNN
    from ..runs import datamodule_of_weights

    if args.output:  # weights and their sidecar: never over existing files without --force
        output_file(args.output, args.force, (".json",))
    try:
        if args.ckpt:
            r = recalibrate_run(args.ckpt, args.halting, save=args.output, test_subset=args.test_subset)
        else:  # a weights file: its data config names the training images
            loaded = load(args)
            if not isinstance(loaded.model, IamNN) or not loaded.data:
                raise CLIError(f"{args.weights or args.model}: needs an IamNN whose weights name their data set")
            dm = datamodule_of_weights(loaded.data, args.test_subset, train=True)
            source = args.weights or f"pretrained {args.model or SHIPPED}"
            r = recalibrate_model(loaded.model, dm, args.halting, source, loaded.data, save=args.output)
    except (ValueError, FileNotFoundError) as err:
        raise CLIError(str(err)) from None

    def table() -> None:
        from ..evaluation import test_images_text

        print(f"halting {r['halting']!r}: {human(r['test_macs_mean'])} MACs; test top-1 "
              f"{r['test_top1_trained_statistics']:.2f} % with the trained BatchNorm statistics, "
              f"{r['test_top1_reestimated']:.2f} % re-estimated "
              f"({printable(r['weights'])} on {test_images_text(r['test_samples'], r['test_set_size'])})")  # fmt: skip

    show(r, args.json, table, [f"wrote {r['saved']} (loads in that regime)"] if r["saved"] else [])


def evaluate(args: argparse.Namespace) -> None:
    from ..report import evaluate_weights

    loaded = load(args)
    if not loaded.data:
        raise CLIError("the weights carry no data config (which dataset, preprocessing): give a run folder to "
                       "`iamnn report` instead")  # fmt: skip
    name = Path(args.weights).stem if args.weights else args.model or SHIPPED
    try:
        evaluation = evaluate_weights(loaded.model, loaded.data, name, args.halting, args.test_subset,
                                      args.recalibrate, source_text(loaded, args.weights))  # fmt: skip
    except ValueError as err:
        raise CLIError(str(err)) from None
    summary = evaluation.summary() | {"bn_reestimated": args.recalibrate}
    if not args.recalibrate:
        note_other_regime("evaluate", loaded.model, args.halting, "add --recalibrate to re-estimate them for it")

    def table() -> None:
        from ..evaluation import test_images_text

        reestimated = " (BatchNorm re-estimated for this regime)" if args.recalibrate else ""
        seen = test_images_text(summary["test_samples"], summary["test_set_size"])
        console().print(table1([summary], f"{name} on the {loaded.data['dataset']} test set, {seen}{reestimated}"))

    show(summary, args.json, table)


def demo(args: argparse.Namespace) -> None:
    """Train the demo recipe, then report on it: what `make demo` runs."""
    from ..report import build_report
    from ..training.lightning_cli import run_lightning_cli

    recipe = Path(args.config) if args.config else REPO_RECIPES / "fashion_mnist" / "demo.yaml"
    if not recipe.is_file():
        # an installed wheel holds no recipes: they are files of the source repository
        hint = " (pass --config RECIPE: the default is a file of the source repository, not of the installed package)"
        raise CLIError(f"demo recipe not found: {recipe}{'' if args.config else hint}")
    previous = Path("runs") / "demo"
    if previous.is_dir() and recipe == REPO_RECIPES / "fashion_mnist" / "demo.yaml":
        print(f"replacing the previous demo run in {previous}/", file=sys.stderr)
        shutil.rmtree(previous)
    cli = run_lightning_cli(["fit", "--config", str(recipe), *args.overrides])
    result = build_report([cli.trainer.log_dir], args.output, sweep=True, quick=True)
    print_report(result, args.output)
