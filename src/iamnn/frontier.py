"""The accuracy-vs-MACs frontier of trained models, and a halting threshold chosen for a MACs budget.

``iamnn frontier runs/... -o DIR`` evaluates every run on its test set and writes ``frontier.json``
(one record per model), ``frontier.md`` and ``frontier.png`` (top-1 against average MACs, log x,
the Pareto front drawn). ``iamnn calibrate --ckpt RUN --budget-macs 20M`` picks the ACT threshold
1 − ε whose average MACs on the validation split meet a budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from .files import write_text_atomic
from .models import IamNN
from .report import (
    accuracy_vs_macs_axes,
    evaluate,
    find_weights,
    load_datamodule,
    pyplot_agg,
    recalibrate_batchnorm,
    save_figure,
)
from .weights import load_model_with_config, save_weights


def run_kind(config: dict[str, Any]) -> str:
    """``resnet``, ``act``, ``full`` or ``fixed`` (a fixed number of iterations) from a weights config."""
    if not config["model"].startswith("iamnn"):
        return "resnet"
    halting = config["kwargs"].get("halting", "act")
    return halting if halting in ("act", "full") else "fixed"


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
    config = run_dir / "config.yaml"
    if not config.is_file():
        return None
    return (yaml.safe_load(config.read_text()).get("trainer") or {}).get("max_epochs")


def pareto_front(records: list[dict[str, Any]]) -> list[str]:
    """Names of the models that no other model beats on both average MACs and top-1."""
    front, best = [], -1.0
    for r in sorted(records, key=lambda r: (r["macs_mean"], -r["top1"])):
        if r["top1"] > best:
            front.append(r["name"])
            best = r["top1"]
    return front


STYLE = {"act": ("o", "tab:blue"), "fixed": ("s", "tab:orange"), "full": ("D", "tab:red"), "resnet": ("*", "black")}


def plot_frontier(records: list[dict[str, Any]], path: Path, title: str = "") -> None:
    plt = pyplot_agg()
    fig, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
    for kind, (marker, colour) in STYLE.items():
        rows = [r for r in records if r["kind"] == kind]
        if rows:
            size = 140 if marker == "*" else 45
            ax.scatter([r["macs_mean"] for r in rows], [r["top1"] for r in rows], marker=marker, s=size,
                       color=colour, label=kind if kind != "resnet" else "ResNet", zorder=3)  # fmt: skip
    for r in records:
        ax.annotate(r["name"], (r["macs_mean"], r["top1"]), fontsize=6.5, xytext=(4, 3), textcoords="offset points")
    front = [r for r in sorted(records, key=lambda r: r["macs_mean"]) if r["name"] in pareto_front(records)]
    ax.plot([r["macs_mean"] for r in front], [r["top1"] for r in front], "--", color="grey", lw=1, label="Pareto front")
    ax.margins(x=0.08, y=0.1)
    title = title or "accuracy vs compute of trained models (test set, each evaluated as trained)"
    accuracy_vs_macs_axes(ax, title)
    save_figure(fig, path)


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
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = [frontier_record(r, test_subset) for r in run_dirs]
    result = {"models": records, "pareto_front": pareto_front(records)}
    plot_frontier(records, out / "frontier.png")
    write_text_atomic(out / "frontier.md", markdown_frontier(records) + "\n")
    text = json.dumps(result, indent=2) + "\n"
    write_text_atomic(out / "frontier.json", text)
    if json_path:
        write_text_atomic(json_path, text)
    return result


# -- budgets -------------------------------------------------------------------------------------
@torch.no_grad()
def calibrate_threshold(
    model: IamNN,
    val_loader: Any,
    budget_macs: float,
    train_loader: Any | None = None,
    steps: int = 14,
) -> dict[str, Any]:
    """The halting slack ε (threshold 1 − ε) whose average MACs on ``val_loader`` come closest to
    ``budget_macs`` from below, by bisection: a larger ε never makes a sample halt later, so the
    average MACs fall as ε grows. With ``train_loader`` each candidate has its BatchNorm
    statistics re-estimated for its regime first, as the report's sweep does.

    Leaves the model at the chosen ε (and its re-estimated statistics). ``feasible`` is False when
    even ε → 1 (one iteration per stage) costs more than the budget.
    """
    model.halting = "act"
    trained = {k: v.clone() for k, v in model.state_dict().items()}

    def measure(eps: float) -> float:
        model.load_state_dict(trained)
        model.epsilon = eps
        if train_loader is not None:
            recalibrate_batchnorm(model, train_loader)
        return float(evaluate(model, val_loader).macs.float().mean())

    lo, hi = 0.0, 0.999  # ε: most and fewest MACs
    macs_lo, macs_hi = measure(lo), measure(hi)
    best = (lo, macs_lo) if macs_lo <= budget_macs else (hi, macs_hi) if macs_hi <= budget_macs else None
    if best is not None and best[0] == hi:
        for _ in range(steps):  # invariant: macs(lo) > budget >= macs(hi)
            mid = (lo + hi) / 2
            macs = measure(mid)
            if macs <= budget_macs:
                hi, best = mid, (mid, macs)
            else:
                lo = mid
    eps, macs = best if best is not None else (0.999, macs_hi)
    measure(eps)  # leave the model in the chosen regime
    return {"budget_macs": budget_macs, "epsilon": eps, "val_macs_mean": macs, "feasible": best is not None,
            "recalibrated": train_loader is not None, "val_macs_range": [macs_hi, macs_lo]}  # fmt: skip


def calibrate_run(
    source: str | Path,
    budgets: list[float],
    recalibrate: bool = True,
    test_subset: int | None = None,
    save: str | Path | None = None,
) -> dict[str, Any]:
    """``calibrate_threshold`` for each budget on a run's validation split, then its test accuracy.

    ``save``: write the model at the (single) budget's threshold, with its re-estimated BatchNorm
    statistics, as a weights file that loads in that regime.
    """
    if save and len(budgets) != 1:
        raise ValueError("saving the calibrated model needs exactly one budget")
    weights, model, config, dm = _load_iamnn_run(source, test_subset)
    if dm.val_set is None:
        raise ValueError(f"{weights}: the recipe holds out no validation split (val_size: 0) to calibrate on")
    val, test, train = dm.val_dataloader(), dm.test_dataloader(), dm.train_dataloader() if recalibrate else None
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    rows = []
    for budget in budgets:
        model.load_state_dict(trained)
        row = calibrate_threshold(model, val, budget, train)
        ev = evaluate(model, test)
        row.update(test_macs_mean=float(ev.macs.float().mean()), test_top1=float(ev.correct1.float().mean() * 100),
                   iterations_mean=[round(float(v), 3) for v in ev.iterations.float().mean(0)])  # fmt: skip
        rows.append(row)
    if save:
        save_weights(model, save, data=config.get("data"), extra={"calibrated_from": str(weights), **rows[0]})
    return {"weights": str(weights), "budgets": rows, "saved": str(save) if save else None}


def recalibrate_run(
    source: str | Path, halting: str | int, save: str | Path | None = None, test_subset: int | None = None
) -> dict[str, Any]:
    """Re-estimate a run's BatchNorm statistics for an inference regime (``halting``: ``act``,
    ``full`` or k) on its training data; test accuracy before and after; optionally save the model."""
    weights, model, config, dm = _load_iamnn_run(source, test_subset)
    model.halting = halting
    before = evaluate(model, dm.test_dataloader())
    recalibrate_batchnorm(model, dm.train_dataloader())
    after = evaluate(model, dm.test_dataloader())
    result = {"weights": str(weights), "halting": model.halting, "test_macs_mean": float(after.macs.float().mean()),
              "test_top1_trained_statistics": float(before.correct1.float().mean() * 100),
              "test_top1_reestimated": float(after.correct1.float().mean() * 100)}  # fmt: skip
    if save:
        save_weights(model, save, data=config.get("data"), extra={"recalibrated_from": str(weights), **result})
    return {**result, "saved": str(save) if save else None}


def _load_iamnn_run(source: str | Path, test_subset: int | None) -> tuple[Path, IamNN, dict[str, Any], Any]:
    """(weights file, IamNN, its config, the run's data module without augmentation) of a run or a file in one."""
    run_dir = find_run_dir(Path(source))
    weights = Path(source) if Path(source).is_file() else find_weights(run_dir)
    model, config = load_model_with_config(weights)
    if not isinstance(model, IamNN):
        raise ValueError(f"{weights}: {type(model).__name__} has no halting regimes (give an IamNN run)")
    dm = load_datamodule(run_dir, augment=False, **({"test_subset": test_subset} if test_subset else {}))
    return weights, model, config, dm


def find_run_dir(path: Path) -> Path:
    """The run folder (holding ``config.yaml``) of a run folder or of a file inside it."""
    for candidate in [path, *path.parents][:3]:
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"{path}: not inside a run folder of `iamnn fit` (no config.yaml found)")


def parse_macs(text: str) -> float:
    """'20M' -> 2e7, '1.5G' -> 1.5e9, '350k' -> 3.5e5, '123456' -> 123456."""
    scale = {"k": 1e3, "m": 1e6, "g": 1e9}.get(text.strip()[-1:].lower())
    number = text.strip()[:-1] if scale else text.strip()
    try:
        value = float(number) * (scale or 1)
    except ValueError:
        raise ValueError(f"not a MACs budget: {text!r} (e.g. 20M, 1.5G)") from None
    if value <= 0:
        raise ValueError(f"a MACs budget must be positive, got {text!r}")
    return value
