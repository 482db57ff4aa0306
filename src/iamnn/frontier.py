"""The accuracy-vs-MACs frontier of trained models (``iamnn frontier``).

``iamnn frontier runs/... -o DIR`` evaluates every run on its test set and writes ``frontier.json``
(one record per model), ``frontier.md`` and ``frontier.png`` (top-1 against average MACs, log x,
the Pareto front drawn).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from .evaluation import evaluate
from .files import write_text_atomic
from .models import halting_policy
from .plots import plot_frontier
from .runs import find_weights, load_datamodule, read_recipe
from .weights import load_model_with_config


def run_kind(config: dict[str, Any]) -> str:
    """``resnet``, or the name of an IamNN's halting policy (``act``, ``full``, ``fixed``…), from its config."""
    if not config["model"].startswith("iamnn"):
        return "resnet"
    return halting_policy(config["kwargs"].get("halting", "act")).name


def frontier_record(run_dir: str | Path, test_subset: int | None = None) -> dict[str, Any]:
    """Evaluate one run (as trained) on its test set: params, avg/min/max MACs, iterations, top-1."""
    run_dir = Path(run_dir)
    model, config = load_model_with_config(find_weights(run_dir))
    dm = load_datamodule(run_dir, **({"test_subset": test_subset} if test_subset else {}))
    ev = evaluate(model, dm.test_dataloader(), run_dir.name)
    hparams_path = run_dir / "hparams.yaml"
    hparams = yaml.safe_load(hparams_path.read_text()) if hparams_path.is_file() else {}
    options = ("tau", "tau_warmup_epochs", "min_iterations", "min_iterations_epochs", "ponder_norm", "halting_bias")
    return {
        "name": run_dir.name,
        "run": str(run_dir),
        "model": config["model"],
        "kind": run_kind(config),
        "halting": config["kwargs"].get("halting"),
        "width": config["kwargs"].get("width"),
        "recipe": {k: hparams[k] for k in options if k in hparams},
        "epochs": _epochs(run_dir),
        **{k: v for k, v in ev.summary().items() if k != "network"},
    }


def _epochs(run_dir: Path) -> int | None:
    return (read_recipe(run_dir).get("trainer") or {}).get("max_epochs")


def pareto_front(records: list[dict[str, Any]]) -> list[str]:
    """Names of the models that no other model beats on both average MACs and top-1."""
    front, best = [], -1.0
    for r in sorted(records, key=lambda r: (r["macs_mean"], -r["top1"])):
        if r["top1"] > best:
            front.append(r["name"])
            best = r["top1"]
    return front


def markdown_frontier(records: list[dict[str, Any]]) -> str:
    front = set(pareto_front(records))
    lines = [
        "| model | kind | params | avg MACs | min–max MACs | mean iterations per stage | top-1 | Pareto |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(records, key=lambda r: r["macs_mean"]):
        its = " / ".join(f"{v:.2f}" for v in r["iterations_mean"]) + f" (max {'/'.join(map(str, r['max_iterations']))})"
        lines.append(
            f"| {r['name']} | {r['kind']} | {r['params'] / 1e6:.3f} M | {r['macs_mean'] / 1e6:.2f} M | "
            f"{r['macs_min'] / 1e6:.2f}–{r['macs_max'] / 1e6:.2f} M | {its} | {r['top1']:.2f} | "
            f"{'yes' if r['name'] in front else ''} |"
        )
    return "\n".join(lines)


def build_frontier(
    run_dirs: list[str | Path], out_dir: str | Path, test_subset: int | None = None, json_path: str | Path | None = None
) -> dict[str, Any]:
    """Evaluate every run and write ``frontier.json``, ``frontier.md`` and ``frontier.png`` to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = [frontier_record(r, test_subset) for r in run_dirs]
    result = {"models": records, "pareto_front": pareto_front(records)}
    plot_frontier(records, out / "frontier.png", result["pareto_front"])
    write_text_atomic(out / "frontier.md", markdown_frontier(records) + "\n")
    text = json.dumps(result, indent=2) + "\n"
    write_text_atomic(out / "frontier.json", text)
    if json_path:
        write_text_atomic(json_path, text)
    return result
