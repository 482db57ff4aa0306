"""The ``iamnn`` command: it parses, dispatches to the module that does the work, and prints.

``iamnn fit|validate|test`` are LightningCLI subcommands (YAML recipes, every Trainer flag);
the others (``profile``, ``report``, ``frontier``, ``calibrate``, ``recalibrate``, ``predict``, ``export``,
``bench``, ``demo``) are plain argparse subcommands. Each handler imports its module when it runs,
so a command loads only what it uses: Lightning alone takes about 2 s to import on 2 cores, which
``iamnn --help``, a parse error or ``iamnn predict`` should not pay.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .errors import CLIError, IamNNError, one_line
from .files import atomic_path, check_output_file, write_text_atomic
from .runtime import keep_freed_memory

if TYPE_CHECKING:
    import torch

    from .models import IamNN

LIGHTNING_COMMANDS = ("fit", "validate", "test")
REPO_RECIPES = Path(__file__).resolve().parents[2] / "recipes"  # the recipes of a source checkout


def human(n: float | int | None, unit: str = "") -> str:
    """12_345_678 -> '12.35 M'."""
    if n is None:
        return "–"
    for scale, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def _printable(text: object) -> str:
    """Text from a file or a path with its control characters (ESC, newlines) written as escapes,
    so that a class name or a file name cannot drive the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _shown(text: object) -> str:
    """:func:`_printable`, and its ``[...]`` shown as written rather than read as rich markup."""
    return escape(_printable(text))


def _console() -> Console:
    """A console wide enough for the tables even when stdout is a pipe (CI logs, ``| tee``)."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


def _add_test_subset(p: argparse.ArgumentParser) -> None:
    p.add_argument("--test-subset", type=_count(1, 10**9), default=None, metavar="N",
                   help="evaluate on the first N test images only")  # fmt: skip


def _add_json(p: argparse.ArgumentParser, example: str = "") -> None:
    p.add_argument(
        "--json", nargs="?", const="-", default=None, metavar="PATH",
        help="print the result as JSON on stdout instead of the table; with PATH, write it there as well"
        + (f" (e.g. {example})" if example else ""),
    )  # fmt: skip


def _output_file(path: str | Path, force: bool = False, sidecars: tuple[str, ...] = ()) -> Path:
    """``files.check_output_file`` as one line: before any work, never over a user's file unasked."""
    try:
        return check_output_file(path, force, sidecars)
    except ValueError as err:
        raise CLIError(str(err)) from None


def _say(args: argparse.Namespace, text: str) -> None:
    """A 'wrote …' line: on stdout beside a table, on stderr when stdout carries JSON."""
    print(text, file=sys.stderr if getattr(args, "json", None) == "-" else sys.stdout)


def _json_stdout(args: argparse.Namespace, result: object) -> bool:
    """Bare ``--json``: print ``result`` and return True (the caller prints no table); with a PATH,
    the file is written once, by the :func:`_json_out` after the table."""
    return args.json == "-" and _json_out(args, result)


def _json_out(args: argparse.Namespace, result: object) -> bool:
    """``--json``: print ``result`` and return True (the caller skips its table); ``--json PATH``:
    write it there."""
    text = json.dumps(result, indent=2) + "\n"
    if args.json == "-":
        sys.stdout.write(text)
        return True
    if args.json:
        write_text_atomic(args.json, text)
        print(f"wrote {args.json}")
    return False


# -- profile -------------------------------------------------------------------------------------
def _models(args: argparse.Namespace) -> None:
    import torch

    from .models import list_models
    from .weights import create_model

    rows = []
    for name in list_models(args.pattern):
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            model = create_model(name)
        rows.append({
            "name": name, "kind": type(model).__name__, "params": sum(p.numel() for p in model.parameters()),
            "max_iterations": list(model.max_iterations), "pretrained": name in list_models(pretrained=True),
        })  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="Registered models (default config: 1000 classes, 3 channels; create_model(name, ...))")
    for col in ("name", "kind", "params", "max iterations per stage", "shipped weights"):
        table.add_column(col, justify="right" if col == "params" else "left")
    for r in rows:
        its = "/".join(map(str, r["max_iterations"])) if r["kind"] == "IamNN" else "—"
        table.add_row(r["name"], r["kind"], human(r["params"]), its, "yes" if r["pretrained"] else "")
    _console().print(table)


def _profile(args: argparse.Namespace) -> None:
    from .profile import profile_table1

    rows = profile_table1(args.width)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"Table 1 models: ours beside the paper's (IamNN width x{args.width:g})")
    for col in ("dataset", "network", "input", "params", "paper params", "MACs 1 iter", "MACs max", "paper MACs"):
        table.add_column(col, justify="left" if col in ("dataset", "network") else "right")
    for r in rows:
        table.add_row(
            r["dataset"],
            f"{r['network']} ({r['model']})",
            f"{r['in_chans']}x{r['input_size']}²",
            human(r["params"]) if r["params_used"] == r["params"] else f"{human(r['params_used'])} used",
            r["paper_params"],
            human(r["macs_1_iter"]),
            human(r["macs_max"]),
            r["paper_macs"],
        )
    _console().print(table)
    print(
        "MACs = multiply-accumulates of convolutions and linear layers (FlopCounterMode / 2). "
        "'MACs max' of an ACT model includes its halting units."
    )


# -- report ------------------------------------------------------------------------------------
def _table1(summaries: list[dict], title: str) -> Table:
    from .evaluation import weights_text

    weights = weights_text(summaries)
    table = Table(title=title, caption=f"weights: {_shown(weights)}" if weights else None)
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


def _print_report(result: dict, out_dir: str, args: argparse.Namespace | None = None) -> None:
    if args is not None and args.json == "-":
        _json_out(args, result)
        _say(args, f"report: {out_dir}/report.md, {out_dir}/report.json, " + ", ".join(result["figures"]))
        return
    from .evaluation import test_set_text

    _console().print(_table1(result["models"], f"Table 1 (test set: {test_set_text(result['models'])})"))
    print(f"report: {out_dir}/report.md, {out_dir}/report.json; figures:")
    for name in result["figures"]:
        print(f"  {out_dir}/{name}")
    if args is not None:
        _json_out(args, result)


def _report(args: argparse.Namespace) -> None:
    from .report import build_report
    from .runs import run_folders

    try:
        result = build_report(
            run_folders(args.runs), args.output, sweep=not args.no_sweep, test_subset=args.test_subset,
            quick=args.quick_sweep,
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as err:  # a run folder's files, in words
        raise CLIError(one_line(err)) from None
    _print_report(result, args.output, args)


# -- frontier and calibrate ---------------------------------------------------------------------
def _frontier(args: argparse.Namespace) -> None:
    from .frontier import build_frontier, iterations_text, pareto_front
    from .runs import run_folders

    try:
        result = build_frontier(run_folders(args.runs), args.output, test_subset=args.test_subset, budgets=args.budgets)
    except ValueError as err:  # e.g. an output folder holding other files
        raise CLIError(one_line(err)) from None
    written = ", ".join(f"{args.output}/frontier.{ext}" for ext in ("png", "md", "json"))
    if _json_stdout(args, result):
        _say(args, f"wrote {written}")
        return
    from .evaluation import test_set_text, weights_text

    records = sorted(result["models"], key=lambda r: r["macs_mean"])
    front = set(pareto_front(records))
    weights = weights_text(records)
    table = Table(title=f"Accuracy vs average MACs (test set: {test_set_text(records)}; each model as trained)",
                  caption=f"weights: {_shown(weights)}" if weights else None)  # fmt: skip
    columns = ("model", "kind", "params", "avg MACs", "min–max MACs", "MACs CV", "mean iterations per stage", "top-1",
               "Pareto")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="left" if col in ("model", "kind") else "right")
    for r in records:
        its = iterations_text(r)
        table.add_row(
            r["name"], r["kind"], human(r["params"]), human(r["macs_mean"]),
            f"{human(r['macs_min'])} – {human(r['macs_max'])}", f"{r['macs_cv']:.3f}", its, f"{r['top1']:.2f}",
            "*" if r["name"] in front else "",
        )  # fmt: skip
    _console().print(table)
    print(f"wrote {written}")
    _json_out(args, result)


def _calibrate(args: argparse.Namespace) -> None:
    from .calibrate import calibrate_run, parse_macs

    if args.save:  # weights and their sidecar: never over existing files without --force
        _output_file(args.save, args.force, (".json",))
    try:
        budgets = [parse_macs(b) for b in args.budget_macs]
        result = calibrate_run(args.ckpt, budgets, not args.no_recalibrate, args.test_subset, args.save, args.halting)
    except (ValueError, FileNotFoundError) as err:
        raise CLIError(str(err)) from None
    if args.halting:  # a cascade: its confidence threshold
        for r in result["budgets"]:
            r["epsilon"], r["val_macs_range"] = r["thresholds"][0] or -math.inf, [r["val_macs_mean"]] * 2
    statistics = (
        "BatchNorm re-estimated" if not args.no_recalibrate and not args.halting else "trained BatchNorm statistics"
    )
    threshold = "cascade threshold" if args.halting else "ε"
    saved = f"wrote {result['saved']} (loads at {threshold} = {result['budgets'][0]['epsilon']:.4f}, {statistics})"
    if _json_stdout(args, result):
        if result["saved"]:
            _say(args, saved)
        return
    from .evaluation import test_images_text

    seen = test_images_text(result["test_samples"], result["test_set_size"])
    table = Table(title=f"Halting thresholds for MACs budgets: {_shown(result['weights'])} (test: {seen})")
    spent = "share answered by each pass" if args.halting else "mean iterations per stage"
    for col in ("budget", threshold, "val avg MACs", "test avg MACs", "test top-1", spent, "note"):
        table.add_column(col, justify="right")
    for r in result["budgets"]:
        note = "" if r["feasible"] else f"infeasible: the cheapest threshold costs {human(r['val_macs_range'][0])}"
        shares = r["answered_by"] if args.halting else r["iterations_mean"]
        table.add_row(
            human(r["budget_macs"]), f"{r['epsilon']:.4f}", human(r["val_macs_mean"]), human(r["test_macs_mean"]),
            f"{r['test_top1']:.2f}", " / ".join(f"{v:.2f}" for v in shares), note,
        )  # fmt: skip
    _console().print(table)
    if result["saved"]:
        print(saved)
    _json_out(args, result)


def _count(low: int, high: int) -> Any:
    """An argparse type: an int in ``low..high`` (``1e3``, ``-1``, ``2**70`` are refused in one line)."""

    def parse(text: str) -> int:
        if not text.strip().isdigit() or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"expected a whole number in {low}..{high}, got {text!r}")
        return int(text)

    return parse


def _counts(low: int, high: int) -> Any:
    """An argparse type: comma-separated ints in ``low..high`` (``1,64,256``)."""

    def parse(text: str) -> str:
        for part in text.split(","):
            _count(low, high)(part)
        return text

    return parse


def _width(text: str) -> float:
    """A width multiplier in (0, 64]."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 64:  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected a width in (0, 64], got {text!r}")
    return value


def _halting_arg(text: str) -> str | int:
    """A ``--halting`` value, checked when the arguments are parsed (before any data loads)."""
    from .models.halting import halting_json

    try:
        spec = halting_json(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(one_line(err)) from None
    if isinstance(spec, list):
        raise argparse.ArgumentTypeError(f"one regime for every stage, got {text!r}")
    return spec


def _cascade_arg(text: str) -> str:
    """``--halting`` of calibrate: a cascade, whose thresholds it chooses (``@…`` may be left out)."""
    from .models.cascade import Cascade

    if not text.startswith("cascade:"):
        raise argparse.ArgumentTypeError(f"expected a cascade:PASS,PASS (e.g. cascade:1,flip-1), got {text!r}")
    try:
        if "@" not in text:  # thresholds to be chosen: every image runs every pass until then
            passes, *options = text.split(";")
            text = ";".join([f"{passes}@" + ",".join(["inf"] * passes.count(",")), *options])
        return Cascade.parse(text).spec
    except ValueError as err:
        raise argparse.ArgumentTypeError(one_line(err)) from None


def _headroom(args: argparse.Namespace) -> None:
    from .headroom import headroom, markdown_headroom, opinions
    from .models.cascade import Pass
    from .runs import load_iamnn_run

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
    result = headroom(items)
    if not _json_stdout(args, result):
        print(markdown_headroom(result))
        _json_out(args, result)


def _recalibrate(args: argparse.Namespace) -> None:
    from .calibrate import recalibrate_model, recalibrate_run
    from .models import IamNN
    from .runs import datamodule_of_weights

    if bool(args.ckpt) + bool(args.weights) + bool(args.pretrained) != 1:
        raise CLIError("give one of --ckpt RUN, --weights FILE or --pretrained [--model NAME]")
    if args.output:  # weights and their sidecar: never over existing files without --force
        _output_file(args.output, args.force, (".json",))
    try:
        if args.ckpt:
            r = recalibrate_run(args.ckpt, args.halting, save=args.output, test_subset=args.test_subset)
        else:  # a weights file: its data config names the training images
            model, config = _load_source(args)
            if not isinstance(model, IamNN) or "data" not in config:
                raise CLIError(f"{args.weights or args.model}: needs an IamNN whose weights name their data set")
            dm = datamodule_of_weights(config["data"], args.test_subset, train=True)
            source = args.weights or f"pretrained {args.model or DEFAULT_PRETRAINED}"
            r = recalibrate_model(model, dm, args.halting, source, config["data"], save=args.output)
    except (ValueError, FileNotFoundError) as err:
        raise CLIError(str(err)) from None
    if _json_stdout(args, r):
        if r["saved"]:
            _say(args, f"wrote {r['saved']} (loads in that regime)")
        return
    from .evaluation import test_images_text

    print(f"halting {r['halting']!r}: {human(r['test_macs_mean'])} MACs; test top-1 "
          f"{r['test_top1_trained_statistics']:.2f} % with the trained BatchNorm statistics, "
          f"{r['test_top1_reestimated']:.2f} % re-estimated "
          f"({_printable(r['weights'])} on {test_images_text(r['test_samples'], r['test_set_size'])})")  # fmt: skip
    if r["saved"]:
        print(f"wrote {r['saved']} (loads in that regime)")
    _json_out(args, r)


# -- predict -----------------------------------------------------------------------------------
DEFAULT_PRETRAINED = "iamnn_r34_fmnist"


def _load_source(args: argparse.Namespace):
    """(model, config) from --weights FILE or --pretrained [--model NAME] (default: the shipped
    iamnn_r34_fmnist); config holds "data". The same resolution in every command.

    A WeightsError reaches ``main``, which prints it as the command's one-line error."""
    from .weights import load_model_with_config, pretrained_path

    if args.weights:
        return load_model_with_config(args.weights)
    if args.pretrained:
        return load_model_with_config(pretrained_path(args.model or DEFAULT_PRETRAINED))
    raise CLIError("give --weights FILE, or --pretrained [--model NAME]")


def _weights_source(args: argparse.Namespace) -> str:
    """The weights ``_load_source`` loaded, in words: a file (a run's as ``runs.describe_weights``
    says) or the shipped weights of a model."""
    from .runs import describe_weights

    if args.weights:
        return describe_weights(args.weights, within_run=False)
    return f"shipped {args.model or DEFAULT_PRETRAINED}"


def _note_other_regime(command: str, model: IamNN, halting: str | None, fix: str) -> None:
    """One stderr line when ``halting`` is another regime than the model's own, naming ``fix``."""
    from .models.halting import other_regime_note

    if note := other_regime_note(model.halting, halting):
        print(f"iamnn {command}: note: {note}: {fix}", file=sys.stderr)


def _evaluate(args: argparse.Namespace) -> None:
    from .report import evaluate_weights

    model, config = _load_source(args)
    if "data" not in config:
        raise CLIError("the weights carry no data config (which dataset, preprocessing): give a run folder to "
                       "`iamnn report` instead")  # fmt: skip
    name = args.model or DEFAULT_PRETRAINED if not args.weights else Path(args.weights).stem
    try:
        evaluation = evaluate_weights(model, config["data"], name, args.halting, args.test_subset, args.recalibrate,
                                      _weights_source(args))  # fmt: skip
    except ValueError as err:
        raise CLIError(str(err)) from None
    summary = evaluation.summary() | {"bn_reestimated": args.recalibrate}
    if not args.recalibrate:
        _note_other_regime("evaluate", model, args.halting, "add --recalibrate to re-estimate them for it")
    if _json_out(args, summary):
        return
    from .evaluation import test_images_text

    reestimated = " (BatchNorm re-estimated for this regime)" if args.recalibrate else ""
    seen = test_images_text(summary["test_samples"], summary["test_set_size"])
    _console().print(_table1([summary], f"{name} on the {config['data']['dataset']} test set, {seen}{reestimated}"))


def _app(args: argparse.Namespace) -> None:
    from importlib.util import find_spec

    if find_spec("gradio") is None:  # now, not after the minutes of start-up (app.py imports it when serving)
        raise CLIError("the app needs the optional extra: pip install 'iamnn[app]' (no module named 'gradio')")
    if not args.weights:
        args.pretrained = True  # the app shows the shipped model unless given other weights
    what = _printable(args.weights or f"the shipped {args.model or DEFAULT_PRETRAINED}")
    curve = (f"; it first measures its accuracy curve on {args.test_images} test images, about a minute per 1000 "
             "on 2 CPU cores (--test-images 0 skips it)") if args.test_images else " (a few seconds)"  # fmt: skip
    print(f"iamnn app: starting the explorer of {what}{curve}", flush=True)
    try:
        from .app import Explorer, serve
    except ImportError as err:
        raise CLIError(f"the app needs the optional extra: pip install 'iamnn[app]' ({one_line(err)})") from None
    model, _ = _load_source(args)
    try:
        explorer = Explorer(model, test_images=args.test_images)
    except ValueError as err:
        raise CLIError(str(err)) from None
    try:
        serve(explorer, host=args.host, port=args.port)
    except OSError as err:  # e.g. the port is taken
        raise CLIError(one_line(err).split(". You can")[0]) from None


def _predict(args: argparse.Namespace) -> None:
    from .prediction import onnx_runner, predict_files, torch_runner

    if args.onnx:
        try:
            run, config = onnx_runner(args.onnx)
        except (ImportError, ValueError) as err:
            raise CLIError(str(err)) from None
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types for unreadable files
            raise CLIError(f"{args.onnx}: cannot load ONNX model ({str(err).splitlines()[0][:200]})") from None
        source = f"{args.onnx} (ONNX)"
    else:
        if not args.weights:
            args.pretrained = True  # the shipped model unless given other weights, as iamnn.predict and the app
        model, config = _load_source(args)
        if args.halting is not None:
            _note_other_regime("predict", model, args.halting,
                               "predict with the weights of `iamnn recalibrate ... --halting H -o FILE`")  # fmt: skip
        run, source = torch_runner(model, args.halting), _weights_source(args)
    if "data" not in config:
        raise CLIError("the weights carry no preprocessing config (input size, mean, std)")
    results, bad = predict_files(run, config["data"], args.images)
    result = {"weights": source, "predictions": [vars(r) for r in results], "errors": [list(b) for b in bad]}
    if args.json == "-":
        _json_out(args, result)
    else:
        table = Table(caption=f"weights: {_shown(source)}")
        cascade = any(r.answered_by is not None for r in results)
        columns = ("image", "class", "confidence", "iterations per stage", "MACs") + (("answered by pass",) * cascade)
        for col in columns:
            table.add_column(col, justify="left" if col in ("image", "class") else "right")
        for r in results:
            table.add_row(_shown(r.path), _shown(r.label), f"{r.confidence:.3f}", " / ".join(map(str, r.iterations)),
                          human(r.macs), *((str(r.answered_by + 1),) if cascade else ()))  # fmt: skip
        if results:
            _console().print(table)
        _json_out(args, result)
    for path, reason in bad:
        print(f"iamnn predict: skipped {_printable(path)}: {_printable(reason)}", file=sys.stderr)
    if bad or not results:
        sys.exit(1)


# -- export ------------------------------------------------------------------------------------
def _export(args: argparse.Namespace) -> None:
    from .export import CASCADE_NOT_EXPORTED
    from .models.halting import halting_json, network_policy
    from .weights import save_weights

    model, config = _load_source(args)
    out = _output_file(args.output, args.force, (".json",) if args.format == "safetensors" else ())
    if args.format == "safetensors":
        save_weights(model, out, data=config.get("data"))
        print(f"wrote {out} and {out.with_suffix('.json')}")
        return
    from . import progress
    from .export import export_onnx

    try:
        halting = halting_json(model.halting if args.halting is None else args.halting)
        if network_policy(halting) is not None:
            raise ValueError(CASCADE_NOT_EXPORTED)
    except ValueError as err:
        raise CLIError(str(err)) from None
    source = (
        {"weights": str(Path(args.weights).resolve())}
        if args.weights
        else {"pretrained": args.model or DEFAULT_PRETRAINED}
    )
    kwargs = {**config.get("kwargs", {}), "halting": halting}
    try:  # a kill mid-export leaves no partial file under the output's name
        with progress.status(f"exporting {out} (torch.export traces every stage: 10-30 s)"), atomic_path(out) as tmp:
            export_onnx(model, tmp, config={**config, "kwargs": kwargs, "source": source}, halting=halting)
    except ImportError as err:
        raise CLIError(str(err)) from None
    adaptive = [p.uses_scores for p in model.policies(halting)]
    how = ("an ONNX Loop with early exit" if all(adaptive) else "unrolled (a fixed number)" if not any(adaptive)
           else "an ONNX Loop with early exit where the stage halts adaptively, else unrolled")  # fmt: skip
    print(f"wrote {out} (halting {halting!r}; each stage's iterations are {how})")
    _note_other_regime("export", model, args.halting,
                       "export the weights of `iamnn recalibrate ... --halting H -o FILE` instead")  # fmt: skip


# -- bench -------------------------------------------------------------------------------------
def _bench(args: argparse.Namespace) -> None:
    import torch

    from .bench import BenchConfig, bench_inputs, run_bench
    from .models import IamNN
    from .weights import create_model

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.onnx and not (args.weights or args.pretrained):
        from .export import OnnxModel

        source = (OnnxModel(args.onnx).config or {}).get("source") or {}
        if not source:
            raise CLIError(f"{args.onnx}: no weights source recorded; add --weights or --model NAME --pretrained")
        args.weights, args.pretrained = source.get("weights"), "pretrained" in source
        args.model = source.get("pretrained", args.model)
    if args.onnx and args.runtime != "onnxruntime":
        raise CLIError("--onnx needs --runtime onnxruntime")
    device = _bench_device(args.device, args.runtime)
    data = None
    if args.weights or args.pretrained:
        model, config = _load_source(args)
        data = config.get("data")
    else:
        try:
            model = create_model(args.model, width=args.width, stem=args.stem)
        except ValueError as err:
            raise CLIError(str(err)) from None
    if not isinstance(model, IamNN):
        raise CLIError(f"{args.model}: bench compares an IamNN with its ResNet; give an iamnn_* model")
    sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    config = BenchConfig(batch_sizes=sizes, fold=not args.no_fold)
    count = max(512, max(sizes))
    if args.smoke:
        config = BenchConfig(batch_sizes=sizes, latency_images=4, throughput_images=8, warmup=1, train_batch=8)
        count = max(8, max(sizes))
    images, labels, source = bench_inputs(data, model, count, args.input_size)
    model, images, labels = model.to(device), images.to(device), labels.to(device)
    try:
        result = run_bench(model, images, labels, config, runtime=args.runtime, onnx_path=args.onnx)
    except ImportError as err:
        raise CLIError(str(err)) from None
    result.update(
        model=args.model if not args.weights else str(args.weights), inputs=source,
        input_size=list(images.shape[1:]), folded_batchnorm=config.fold, torch=torch.__version__,
    )  # fmt: skip
    # one results file per runtime: an onnxruntime run does not overwrite the torch run's figures
    default = Path("benchmarks/results") / ("bench.json" if args.runtime == "torch" else f"bench.{args.runtime}.json")
    _warn_if_disturbed(result)
    if args.json == "-":
        _json_out(args, result)
        return
    _print_bench(result, sizes)
    path = args.json or str(default)
    write_text_atomic(path, json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


def _bench_device(name: str, runtime: str) -> torch.device:
    """The device named by ``--device``, checked: one line instead of a CUDA traceback mid-run."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise CLIError(f"--device {name}: {one_line(err)}") from None
    if device.type != "cpu" and runtime != "torch":
        raise CLIError(f"--device {name}: the {runtime} rows run on the CPU; give --device cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: this PyTorch sees no CUDA device")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise CLIError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda"):
        raise CLIError(f"--device {name}: bench runs on cpu or cuda")
    return device


def _warn_if_disturbed(result: dict) -> None:
    for key, what in (("disturbance", "inference timings"), ("train_step_disturbance", "training-step timings")):
        d = result.get(key)
        if d and not d["trustworthy"]:
            print(f"iamnn bench: warning: other processes kept {d['other_processes_cores']:.2f} of {d['cores']} cores "
                  f"busy during the {what}; their figures are not trustworthy (run on a quiet machine)",
                  file=sys.stderr)  # fmt: skip


def _act_steps(result: dict) -> str:
    """Where act's halting steps ran: in the C kernel or as PyTorch ops; in onnxruntime, in the graph
    (the kernel then serves the training-step row only)."""
    if "act_kernel" not in result:
        return ""
    if result["runtime"] != "torch":
        return ", ACT steps in the ONNX graph"
    return f", ACT steps in {'C' if result['act_kernel'] else 'PyTorch'}"


def _print_bench(result: dict, sizes: tuple[int, ...]) -> None:
    title = (
        f"iamnn bench ({result['runtime']}): {result['model']} on {result['inputs']}, "
        f"{result['threads']} threads, device {result['device']}, "
        f"BN folded: {result['folded_batchnorm']}" + _act_steps(result)
    )
    table = Table(title=title)
    # one unit per batch size: batch 1 in ms per image (its median, 95th percentile and, from the
    # throughput loop, its mean, which the latency spikes of a shared machine pull up), larger batches in img/s
    cols = ["row", "params", "avg MACs", "p50 ms @1", "p95 ms @1",
            *[("mean ms @1" if b == 1 else f"img/s @{b}") for b in sizes]]  # fmt: skip
    cols += [f"speedup/MAC-ratio @{b}" for b in sizes]
    for col in cols:
        table.add_column(col, justify="left" if col == "row" else "right")
    for r in result["rows"]:
        eff = [f"{r[f'efficiency@{b}']:.2f}" if f"efficiency@{b}" in r else "" for b in sizes]
        table.add_row(
            r["row"], human(r["params"]), human(r["macs_mean"]), f"{r['latency_p50_ms']:.2f}",
            f"{r['latency_p95_ms']:.2f}",
            *[(f"{1000 / r['images_per_s@1']:.2f}" if b == 1 else f"{r[f'images_per_s@{b}']:.0f}") for b in sizes],
            *eff,
        )  # fmt: skip
    _console().print(table)
    full, act = result["rows"][1], result["rows"][2]
    print(f"act: MAC ratio full/act {act['mac_ratio']:.2f}; realised speedup (throughput) "
          + ", ".join(f"@{b}: {act[f'speedup_over_full@{b}']:.2f}x" for b in sizes)
          + f"; batch-1 median latency: {act['speedup_p50_over_full@1']:.2f}x")  # fmt: skip
    print(f"halting machinery: act / no-halt ({'/'.join(map(str, act['no_halt_iterations']))} iterations, the "
          f"schedule of {act['no_halt_share']:.0%} of the images under act) "
          + ", ".join(f"@{b}: {act[f'halting_overhead@{b}']:.2f}x" for b in sizes)
          + f", batch-1 median {act['halting_overhead_p50@1']:.2f}x; no-halt bound (speedup / MAC ratio) "
          + ", ".join(f"@{b}: {act[f'no_halt_bound@{b}']:.2f}" for b in sizes))  # fmt: skip
    twin = f"{result['rows'][-1]['row']} (IamNN's bottleneck blocks, same widths)"
    for key, name in (("baseline", result["rows"][0]["row"]), ("bottleneck_twin", twin)):
        if f"time_per_mac_vs_{key}@{sizes[0]}" in full:
            print(f"IamNN full time per MAC vs {name}: "
                  + ", ".join(f"@{b}: {full[f'time_per_mac_vs_{key}@{b}']:.2f}" for b in sizes))  # fmt: skip
    if "train_step" in result:
        t = result["train_step"]
        print(
            f"training step, batch {t['batch']}: full {t['full'] * 1000:.0f} ms, act {t['act'] * 1000:.0f} ms: "
            f"speedup {t['speedup']:.2f}x at MAC ratio {t['mac_ratio']:.2f} ({t['speedup_over_mac_ratio']:.2f}); "
            f"no-halt {t['no-halt'] * 1000:.0f} ms: act / no-halt {t['halting_overhead']:.2f}x"
        )


# -- demo ----------------------------------------------------------------------------------------
def _demo(args: argparse.Namespace) -> None:
    """Train the demo recipe, then report on it: what `make demo` runs."""
    from .report import build_report
    from .training.lightning_cli import run_lightning_cli

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
    run_dir = cli.trainer.log_dir
    result = build_report([run_dir], args.output, sweep=True, quick=True)
    _print_report(result, args.output)


# -- entry point ---------------------------------------------------------------------------------
# The end of each command's --help: a line or two to copy (comments aligned, as in the README)
EXAMPLES: dict[str, tuple[str, ...]] = {
    "fit": (
        "iamnn fit --config recipes/digits/iamnn_r18.yaml                 # a smoke run: seconds, on digits",
        "iamnn fit --config recipes/fashion_mnist/iamnn_r18.yaml --trainer.max_epochs 30 --name r18_30ep",
        "iamnn fit --config recipes/fashion_mnist/iamnn_r18.yaml --ckpt_path last   # resume after a crash or kill",
    ),
    "validate": (
        "iamnn validate --config runs/digits_iamnn_r18/config.yaml "
        "--ckpt_path runs/digits_iamnn_r18/checkpoints/last.ckpt",
    ),
    "test": (
        "iamnn test --config runs/digits_iamnn_r18/config.yaml --ckpt_path runs/digits_iamnn_r18/checkpoints/last.ckpt"
        "   # logs to runs/digits_iamnn_r18/test/",
    ),
    "models": ("iamnn models 'iamnn_*'", "iamnn models --json"),
    "profile": ("iamnn profile", "iamnn profile --width 0.25 --json"),
    "evaluate": (
        "iamnn evaluate --pretrained                              # the shipped model's Table-1 row",
        "iamnn evaluate --weights runs/demo/model.safetensors --halting 2 --recalibrate",
    ),
    "report": (
        "iamnn report runs/fmnist_iamnn_r18 runs/fmnist_resnet18 -o report/fmnist",
        "iamnn report runs/demo --quick-sweep --test-subset 1000   # a quicker look",
    ),
    "frontier": ("iamnn frontier runs/frontier -o report/frontier", "iamnn frontier runs/frontier --budgets 0 --json"),
    "calibrate": (
        "iamnn calibrate --ckpt runs/frontier/act_tau0.01 --budget-macs 5M 7M",
        "iamnn calibrate --ckpt runs/frontier/act_tau0.01 --budget-macs 5M --save act_5M.safetensors",
    ),
    "headroom": ("iamnn headroom runs/study/fixed_k1:1,flip-1 runs/study/fixed_k2:2",),
    "recalibrate": (
        "iamnn recalibrate --ckpt runs/frontier/fixed_k1 --halting 2 -o k2.safetensors",
        "iamnn recalibrate --pretrained --halting full -o full.safetensors",
    ),
    "predict": (
        "iamnn predict docs/samples                                # the shipped model on the sample images",
        "iamnn predict --weights runs/demo/model.safetensors --halting full photo.png",
    ),
    "app": (
        "iamnn app                                                 # the shipped model on http://127.0.0.1:7860",
        "iamnn app --weights runs/demo/model.safetensors --test-images 200",
    ),
    "export": (
        "iamnn export --pretrained -o iamnn_r34_fmnist.onnx",
        "iamnn export --weights runs/demo/model.safetensors --format safetensors -o demo.safetensors",
    ),
    "bench": (
        "iamnn bench --pretrained --batch-sizes 1,64",
        "iamnn bench --runtime onnxruntime --onnx iamnn_r34_fmnist.onnx   # the file of `iamnn export`",
    ),
    "demo": ("iamnn demo", "iamnn demo --trainer.max_epochs 1   # a shorter run"),
}


def _epilog(command: str) -> str:
    """``command``'s examples, the end of its ``--help`` (kept as lines: RawDescriptionHelpFormatter)."""
    return "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[command])


class OneLineParser(argparse.ArgumentParser):
    """argparse's errors as one line (``iamnn export: error: … (see: iamnn export --help)``), exit 2,
    instead of the usage block followed by the error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see: {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _json_or_image(args: argparse.Namespace) -> None:
    """``iamnn predict --json a.png``: argparse hands a.png to ``--json`` as its PATH. A value that
    is not a ``.json`` name but an image's, a folder or any file that exists is taken back as an
    image (the JSON goes to stdout), so that no image is ever overwritten by the result."""
    value = args.json
    if value not in (None, "-") and not value.lower().endswith(".json"):
        from .files import IMAGE_SUFFIXES

        path = Path(value)
        if path.suffix.lower() in IMAGE_SUFFIXES or path.exists() or path.is_symlink():
            args.images.insert(0, value)
            args.json = "-"
    if not args.images:
        raise CLIError(f"the following arguments are required: images (see: iamnn {args.command} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="iamnn",
        description="IamNN, ResNets whose stages iterate one shared block and halt per image: train, evaluate, "
        "explore, export and time them. `iamnn COMMAND --help` for each command.",
    )
    parser.add_argument("--version", action="version", version=f"iamnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    for name in LIGHTNING_COMMANDS:
        sub.add_parser(name, help=f"LightningCLI {name} (see `iamnn {name} --help`)", add_help=False)

    p = sub.add_parser("models", help="the registered models: kind, parameters, iterations, shipped weights")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'iamnn_*' (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=_models)

    p = sub.add_parser("profile", help="params and MACs of every Table-1 model, ours beside the paper's")
    p.add_argument("--width", type=_width, default=1.0, help="width multiplier of the IamNN rows (default 1)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=_profile)

    p = sub.add_parser("evaluate", help="trained weights on their dataset's test set: the README's Table-1 row")
    p.add_argument(
        "--pretrained", action="store_true", help="the shipped weights (of --model, default iamnn_r34_fmnist)"
    )
    p.add_argument("--model", help="registered model name, with --pretrained")
    p.add_argument("--weights", help="safetensors weights or Lightning .ckpt")
    p.add_argument("--halting", default=None, type=_halting_arg,
                   help="a regime instead of the model's own: act, full, k, or cascade:1,flip-1@0.72")  # fmt: skip
    p.add_argument("--recalibrate", action="store_true",
                   help="first re-estimate the BatchNorm statistics for that regime on training images")  # fmt: skip
    _add_test_subset(p)
    _add_json(p)
    p.set_defaults(run=_evaluate)

    p = sub.add_parser("report", help="Table-1-style table and figures for trained runs")
    p.add_argument("runs", nargs="+", help="run directories written by `iamnn fit` (runs/<name>)")
    p.add_argument("-o", "--output", default="report", help="output folder (default: report)")
    p.add_argument("--no-sweep", action="store_true", help="skip the accuracy-vs-MACs sweep of inference regimes")
    _add_test_subset(p)
    p.add_argument("--quick-sweep", action="store_true", help="8 sweep points instead of ~20")
    _add_json(p)
    p.set_defaults(run=_report)

    p = sub.add_parser("frontier", help="accuracy vs average MACs of trained runs: Pareto plot, table, JSON")
    p.add_argument("runs", nargs="+", help="run folders written by `iamnn fit`, or folders of them (runs/frontier)")
    p.add_argument("-o", "--output", default="report/frontier", help="output folder (default: report/frontier)")
    _add_json(p, "benchmarks/results/frontier.json")
    _add_test_subset(p)
    p.add_argument(
        "--budgets", type=_count(0, 100), default=6, metavar="N",
        help="calibrate each adaptive run (halting units on a frozen anytime backbone) to N average-MACs budgets "
        "from its k = 1 to its full cost, each a point of its curve (default 6; 0: as trained only)",
    )  # fmt: skip
    p.set_defaults(run=_frontier)

    p = sub.add_parser("calibrate", help="choose the halting threshold that meets an average-MACs budget")
    p.add_argument("--ckpt", required=True, help="a run directory, or a weights/checkpoint file inside one")
    p.add_argument("--budget-macs", required=True, nargs="+", help="average MACs per image, e.g. 20M 1.5G")
    p.add_argument("--no-recalibrate", action="store_true", help="keep the trained BatchNorm statistics")
    p.add_argument("--halting", default=None, type=_cascade_arg,
                   help="a cascade to calibrate instead of the halting threshold, e.g. cascade:1,flip-1")  # fmt: skip
    _add_test_subset(p)
    _add_json(p)
    p.add_argument("--save", default=None, help="write the calibrated model (one budget) as safetensors here")
    p.add_argument("--force", action="store_true", help="overwrite an existing --save file")
    p.set_defaults(run=_calibrate)

    p = sub.add_parser("headroom", help="can per-image compute pay? disagreement and per-image oracle of opinions")
    p.add_argument("opinions", nargs="+", metavar="RUN:PASS,PASS",
                   help="a run folder and the passes of it to compare (1, 2, full, act, flip-1 …), e.g. "
                   "runs/study/fixed_k1:1,flip-1 runs/study/fixed_k2:2")  # fmt: skip
    _add_test_subset(p)
    _add_json(p, "headroom.json")
    p.set_defaults(run=_headroom)

    p = sub.add_parser("recalibrate", help="re-estimate BatchNorm statistics for an inference regime (fixed k…)")
    p.add_argument("--ckpt", help="a run directory, or a weights/checkpoint file inside one")
    p.add_argument("--weights", help="or a weights file (its data config names the training images)")
    p.add_argument("--pretrained", action="store_true", help="or the shipped weights (of --model)")
    p.add_argument("--model", help="registered model name, with --pretrained")
    p.add_argument("--halting", required=True, type=_halting_arg,
                   help="the regime: act, full or a fixed number of iterations k")  # fmt: skip
    p.add_argument("-o", "--output", default=None, help="write the re-estimated model as safetensors here")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    _add_test_subset(p)
    _add_json(p)
    p.set_defaults(run=_recalibrate)

    p = sub.add_parser("predict", help="classify image files with trained weights (default: the shipped model)")
    # "*", not "+": `predict --json a.png` hands a.png to --json, and main() gives it back (_json_or_image)
    p.add_argument("images", nargs="*", help="image files or folders of images")
    p.add_argument("--weights", help="safetensors weights or Lightning .ckpt (loaded without running pickle code)")
    p.add_argument("--model", help=f"registered model name whose shipped weights to use (default {DEFAULT_PRETRAINED})")
    p.add_argument("--pretrained", action="store_true", help="the shipped weights (the default without --weights)")
    p.add_argument("--onnx", help="an ONNX file written by `iamnn export`, run with onnxruntime")
    p.add_argument("--halting", default=None, type=_halting_arg,
                   help="a regime instead of the model's own: act, full, k, or cascade:1,flip-1@0.72")  # fmt: skip
    _add_json(p, "predictions.json")
    p.set_defaults(run=_predict)

    p = sub.add_parser("app", help="a local web page: drop an image, see where the network spends its compute")
    p.add_argument("--pretrained", action="store_true", help="the shipped weights (the default without --weights)")
    p.add_argument("--model", help="registered model name, with --pretrained (default iamnn_r34_fmnist)")
    p.add_argument("--weights", help="safetensors weights or Lightning .ckpt of a trained IamNN")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=None, help="port (default: the first free one from 7860)")
    p.add_argument("--test-images", type=_count(0, 10**6), default=1000,
                   help="test images for the accuracy curve and the gallery (default 1000; 0: none)")  # fmt: skip
    p.set_defaults(run=_app)

    p = sub.add_parser("export", help="export trained weights: ONNX with early exit, or safetensors + JSON")
    p.add_argument("--model", help="registered model name, with --pretrained")
    p.add_argument("--pretrained", action="store_true", help="use the weights shipped with the package")
    p.add_argument("--weights", help="safetensors weights or Lightning .ckpt")
    p.add_argument("--format", choices=("onnx", "safetensors"), default="onnx",
                   help="onnx (default): a graph for onnxruntime, each stage's iterations an early-exit loop; "
                   "safetensors: the weights with their JSON config, loadable without pickle")  # fmt: skip
    p.add_argument("--halting", default=None, type=_halting_arg,
                   help="halting mode baked into the ONNX graph: act, full or k")  # fmt: skip
    p.add_argument("-o", "--output", required=True, help="output file")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.set_defaults(run=_export)

    p = sub.add_parser("bench", help="wall-clock speed of early exit: ResNet vs IamNN full / act / fixed-1")
    p.add_argument("--model", default="iamnn_r34_fmnist", help="registered model (default: iamnn_r34_fmnist)")
    p.add_argument("--pretrained", action="store_true", help="use the weights shipped with the package")
    p.add_argument("--weights", help="safetensors weights or .ckpt of a trained IamNN")
    p.add_argument("--width", type=_width, default=None, help="width of an untrained --model")
    p.add_argument("--stem", choices=("imagenet", "cifar"), default=None, help="stem of an untrained --model")
    p.add_argument("--input-size", type=_count(8, 1024), default=None,
                   help="input height = width (default: the model's data)")  # fmt: skip
    p.add_argument("--batch-sizes", type=_counts(1, 4096), default="1,64,256",
                   help="comma-separated (default 1,64,256)")  # fmt: skip
    p.add_argument("--threads", type=_count(1, 1024), default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-fold", action="store_true", help="keep BatchNorm unfolded at inference")
    p.add_argument("--device", default="cpu", help="torch device of the PyTorch rows, e.g. cuda (default: cpu)")
    p.add_argument("--runtime", choices=("torch", "onnxruntime"), default="torch",
                   help="torch (default): time the PyTorch models; onnxruntime: time ONNX exports of the same "
                   "models in onnxruntime, the halting loops in the graph (needs iamnn[export])")  # fmt: skip
    p.add_argument("--onnx", help="with --runtime onnxruntime: an `iamnn export` file, timed as the act row")
    p.add_argument(
        "--json", nargs="?", const="-", default=None, metavar="PATH",
        help="where to write the JSON (default: benchmarks/results/bench.json, or bench.onnxruntime.json with "
        "--runtime onnxruntime); bare --json prints it on stdout instead of the table",
    )  # fmt: skip
    p.add_argument("--smoke", action="store_true", help="tiny measurement, for tests")
    p.set_defaults(run=_bench)

    p = sub.add_parser(
        "demo", help="train the demo recipe on Fashion-MNIST, then print its report",
        epilog="Any other arguments go to `iamnn fit`, e.g. --trainer.max_epochs 1 --trainer.precision bf16-mixed.",
    )  # fmt: skip
    p.add_argument(
        "--config", default=None, help="recipe (default: recipes/fashion_mnist/demo.yaml of the source repository)"
    )
    p.add_argument("-o", "--output", default="report/demo", help="report folder (default: report/demo)")
    p.set_defaults(run=_demo, overrides=[])  # overrides: the arguments left over, in main()

    for name, p in sub.choices.items():
        if name not in LIGHTNING_COMMANDS:  # theirs is LightningCLI's help (run_lightning_cli)
            p.epilog = "\n\n".join(filter(None, (p.epilog, _epilog(name))))
            p.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else ""
    keep_freed_memory()  # freed activation maps are reused instead of unmapped (iamnn/runtime.py)
    # a file name that is not UTF-8 reaches Python as surrogate escapes, which stdout's strict
    # encoder refuses mid-table; printed as \udcff instead (stderr already does this)
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        if command in LIGHTNING_COMMANDS:
            from .training.lightning_cli import run_lightning_cli

            run_lightning_cli(argv, epilogs={name: _epilog(name) for name in LIGHTNING_COMMANDS})
            return
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra:  # only `iamnn demo` passes arguments of its own on (to LightningCLI, in order)
            if not hasattr(args, "overrides"):
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
            args.overrides = extra
        if hasattr(args, "images"):
            _json_or_image(args)
        if isinstance(getattr(args, "json", None), str) and args.json != "-":
            _output_file(args.json, force=True)  # a result file is rewritten; never a folder or a symlink
        args.run(args)
        sys.stdout.flush()  # a full disk under stdout (`> /dev/full`) is seen here, not at exit
    except IamNNError as err:
        print(f"iamnn {command}: error: {err}", file=sys.stderr)
        sys.exit(getattr(err, "exit_code", 2))
    except argparse.ArgumentError as err:  # a bad recipe key or flag value (LightningCLI)
        print(f"iamnn {command}: error: {one_line(err)} (see: iamnn {command} --help)", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:  # `iamnn profile --json | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's exit flush must not fail
        sys.exit(1)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # a full disk: the atomic writes leave nothing half-written; say so in one line, not 80
        with contextlib.suppress(OSError, ValueError):  # stdout may be a pipe to nowhere, or no file at all
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        where = f" writing {err.filename}" if err.filename else ""
        print(f"iamnn {command}: error: no space left on the device{where}; nothing was half-written", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
