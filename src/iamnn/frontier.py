"""The accuracy-vs-MACs frontier of trained models (``iamnn frontier``).

``iamnn frontier runs/... -o DIR`` evaluates every run on its test set and writes ``frontier.json``
(one record per model), ``frontier.md`` and ``frontier.png`` (top-1 against average MACs, log x,
the Pareto front drawn).

A record's ``kind`` says what the point is: the name of the halting policy an IamNN trained with
(``fixed`` for k iterations per stage, ``full``, ``act`` for paper-style ACT trained end to end,
``pondernet`` or any registered one), ``adaptive`` (halting units trained on a frozen anytime
backbone: one model, any budget; or a model whose halting policy is a confidence cascade,
``models/cascade.py``), ``resnet`` or ``mobilenet``.
An adaptive run is also calibrated to ``budgets`` average-MACs budgets between its k = 1 and
``full`` costs (threshold chosen on the validation split, BatchNorm re-estimated for each), each
budget a record of its own: the model's accuracy-vs-MACs curve.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .errors import IamNNError, one_line
from .evaluation import attach_levels, by_level, calibrate_threshold, evaluate, markdown_by_level, provenance
from .files import atomic_folder, load_yaml, write_text_atomic
from .headroom import cascade_points, opinions
from .models import Cascade, IamNN, MobileNet, ResNet
from .models.halting import network_policy
from .plots import plot_frontier
from .progress import track
from .runs import describe_weights, find_weights, load_datamodule, read_recipe
from .weights import load_model_with_config


def run_kind(model: Any, hparams: dict[str, Any] | None = None) -> str:
    """What a trained network is, for the frontier: ``resnet``, ``mobilenet``, ``adaptive`` (halting
    units trained on a frozen backbone), or the name of an IamNN's halting policy (its first stage's,
    as loaded with its weights: ``act``, ``full``, ``fixed``…)."""
    if isinstance(model, ResNet):
        return "resnet"
    if isinstance(model, MobileNet):
        return "mobilenet"
    if network_policy(model.halting) is not None:  # a cascade: each image its own passes
        return "adaptive"
    policy = model.policies()[0]
    return "adaptive" if policy.uses_scores and (hparams or {}).get("freeze_backbone") else policy.name


def frontier_records(run_dir: str | Path, test_subset: int | None = None, budgets: int = 0) -> list[dict[str, Any]]:
    """Evaluate one run (as trained) on its test set: params, avg/min/max MACs, iterations, top-1;
    and for an ``adaptive`` run, one more record per calibrated budget (``budgets`` of them)."""
    run_dir = Path(run_dir)
    weights = find_weights(run_dir)
    model, config = load_model_with_config(weights)
    dm = load_datamodule(run_dir, augment=False, **({"test_subset": test_subset} if test_subset else {}))
    ev = evaluate(model, dm.test_dataloader(), run_dir.name)
    ev.test_set_size, ev.weights = dm.full_test_size, describe_weights(weights)
    attach_levels(ev, dm)
    hparams_path = run_dir / "hparams.yaml"
    hparams = (load_yaml(hparams_path) or {}) if hparams_path.is_file() else {}
    options = ("tau", "tau_warmup_epochs", "min_iterations", "min_iterations_epochs", "ponder_norm", "halting_bias",
               "anytime", "depth_supervision", "freeze_backbone", "init_weights")  # fmt: skip
    record = {
        "name": run_dir.name,
        "run": str(run_dir),
        "model": config["model"],
        "dataset": (config.get("data") or {}).get("dataset"),  # the data module that made the test set
        "kind": run_kind(model, hparams),
        "halting": config["kwargs"].get("halting"),
        "width": config["kwargs"].get("width"),
        "recipe": {k: hparams[k] for k in options if k in hparams},
        "train_samples": len(dm.train_set) if dm.train_set is not None else None,
        "epochs": _epochs(run_dir),
        **{k: v for k, v in ev.summary().items() if k != "network"},
    }
    if record["kind"] != "adaptive" or budgets <= 0:
        return [record]
    if (cascade := network_policy(model.halting)) is not None:
        return [record, *cascade_budget_records(record, model, cascade, dm, budgets)]
    return [record, *budget_records(record, model, dm, budgets)]


def cascade_budget_records(
    record: dict[str, Any], model: IamNN, cascade: Cascade, dm: Any, budgets: int
) -> list[dict[str, Any]]:
    """A cascade's thresholds for ``budgets`` average-MACs budgets, geometrically spaced from just
    above its first pass's cost to every pass's: each chosen on the validation split, then tested
    (every pass runs once per split and is replayed, ``headroom.cascade_points``)."""
    if dm.val_set is None:
        raise ValueError(f"{record['run']}: no validation split (val_size: 0) to calibrate the cascade on")
    items = opinions(model, dm.val_dataloader(), dm.test_dataloader(), cascade.passes, record["name"])
    low = 1.01 * float(items[0].val.macs.double().mean())
    high = float(sum(o.val.macs.double().mean() for o in items))
    grid = [low * (high / low) ** (i / max(1, budgets - 1)) for i in range(budgets)]
    records = []
    for point in cascade_points(cascade, items, grid, keep_correct=True):
        correct, macs = point.pop("correct"), point.pop("macs")
        if hasattr(dm, "levels") and hasattr(dm, "level_names"):  # per difficulty level (Cluttered Fashion-MNIST)
            point["by_level"] = by_level(dm.levels("test"), tuple(dm.level_names), macs, correct)
        records.append({**record, "name": f"{record['name']}@{point['budget_macs'] / 1e6:.2f}M", **point})
    return records


def budget_records(record: dict[str, Any], model: IamNN, dm: Any, budgets: int) -> list[dict[str, Any]]:
    """The adaptive model calibrated to ``budgets`` average-MACs budgets, geometrically spaced over
    what its policy can reach on the validation split: from just above one iteration per stage
    (ε → 1; the k = 1 cost plus the halting units') to its threshold at ε = 0 (at most ``full``).
    Each threshold is chosen on the validation split with BatchNorm re-estimated
    (``calibrate_threshold``), then tested."""
    if dm.val_set is None:
        raise ValueError(f"{record['run']}: no validation split (val_size: 0) to calibrate the adaptive model on")
    val, train = dm.val_dataloader(), dm.train_dataloader()
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    cheapest, dearest = calibrate_threshold(model, val, float("inf"), train)["val_macs_range"]
    low, high = 1.01 * cheapest, dearest
    records = []
    for i in track(range(budgets), f"calibrating {record['name']} to {budgets} budgets"):
        budget = low * (high / low) ** (i / max(1, budgets - 1))
        model.load_state_dict(trained)
        row = calibrate_threshold(model, val, budget, train)
        ev = evaluate(model, dm.test_dataloader(), record["name"])
        ev.test_set_size, ev.weights = record["test_set_size"], record["weights"]
        attach_levels(ev, dm)
        records.append({
            **record, "name": f"{record['name']}@{budget / 1e6:.2f}M", "budget_macs": budget,
            "epsilon": row["epsilon"], "val_macs_mean": row["val_macs_mean"], "feasible": row["feasible"],
            **{k: v for k, v in ev.summary().items() if k != "network"},
        })  # fmt: skip
    model.load_state_dict(trained)
    return records


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


def iterations_text(record: dict[str, Any]) -> str:
    """Mean iterations per stage and their maxima, or "—" for a network without iterative stages."""
    if record["kind"] in ("resnet", "mobilenet"):
        return "—"
    maxima = "/".join(map(str, record["max_iterations"]))
    return " / ".join(f"{v:.2f}" for v in record["iterations_mean"]) + f" (max {maxima})"


def markdown_frontier(records: list[dict[str, Any]]) -> str:
    front = set(pareto_front(records))
    lines = [
        "| model | kind | params | avg MACs | min–max MACs | MACs CV | mean iterations per stage | top-1 | Pareto |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(records, key=lambda r: r["macs_mean"]):
        its = iterations_text(r)
        lines.append(
            f"| {r['name']} | {r['kind']} | {r['params'] / 1e6:.3f} M | {r['macs_mean'] / 1e6:.2f} M | "
            f"{r['macs_min'] / 1e6:.2f}–{r['macs_max'] / 1e6:.2f} M | {r['macs_cv']:.3f} | {its} | "
            f"{r['top1']:.2f} | "
            f"{'yes' if r['name'] in front else ''} |"
        )
    if all("test_samples" in r for r in records):  # records stored before it was recorded say nothing
        lines += ["", f"Measured on {provenance(records)}."]
    levelled = [r for r in records if r.get("by_level")]
    if levelled:  # a data set whose images carry a difficulty level (Cluttered Fashion-MNIST)
        lines += ["", "## By difficulty level", ""]
        for r in levelled:
            lines += markdown_by_level(r["name"], r["by_level"])
    return "\n".join(lines)


def build_frontier(
    run_dirs: list[str | Path],
    out_dir: str | Path,
    test_subset: int | None = None,
    json_path: str | Path | None = None,
    budgets: int = 6,
) -> dict[str, Any]:
    """Evaluate every run (each adaptive one also at ``budgets`` calibrated budgets) and write
    ``frontier.json``, ``frontier.md`` and ``frontier.png`` to ``out_dir``."""
    records, skipped = [], []
    for run in track(run_dirs, "evaluating run folders"):
        try:
            records += frontier_records(run, test_subset, budgets)
        except (IamNNError, ValueError, OSError, KeyError, TypeError) as err:  # one bad folder spoils no other
            skipped.append({"run": str(run), "reason": one_line(err)})
            print(f"iamnn frontier: skipped {run}: {one_line(err)}", file=sys.stderr)
    if not records:
        raise IamNNError("no run folder could be evaluated" + (f" ({skipped[0]['reason']})" if skipped else ""))
    result = {"models": records, "pareto_front": pareto_front(records), "test_subset": test_subset,
              **({"skipped": skipped} if skipped else {})}  # fmt: skip
    text = json.dumps(result, indent=2) + "\n"
    with atomic_folder(out_dir, ("frontier.png", "frontier.md", "frontier.json")) as out:  # the three as a set
        plot_frontier(records, out / "frontier.png", result["pareto_front"])
        (out / "frontier.md").write_text(markdown_frontier(records) + "\n")
        (out / "frontier.json").write_text(text)
    if json_path:
        write_text_atomic(json_path, text)
    return result
