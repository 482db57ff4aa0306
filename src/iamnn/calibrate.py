"""Budgets: the halting threshold that meets an average-MACs budget (``iamnn calibrate``), and
BatchNorm statistics re-estimated for an inference regime (``iamnn recalibrate``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .evaluation import evaluate, recalibrate_batchnorm
from .models import IamNN, halting_policy
from .models.halting import HaltingSpec, halting_json, threshold_policy_name
from .runs import load_iamnn_run
from .weights import save_weights


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
    name = threshold_policy_name(model.policies()[0])
    trained = {k: v.clone() for k, v in model.state_dict().items()}

    def measure(eps: float) -> float:
        model.load_state_dict(trained)
        halting = halting_policy(name, eps)
        if train_loader is not None:
            recalibrate_batchnorm(model, train_loader, halting=halting)
        return evaluate(model, val_loader, halting=halting).macs_mean

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
    measure(eps)  # leave the model in the chosen regime: its statistics, and its default policy
    model.halting, model.epsilon = name, eps
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
    weights, model, config, dm = load_iamnn_run(source, test_subset)
    if dm.val_set is None:
        raise ValueError(f"{weights}: the recipe holds out no validation split (val_size: 0) to calibrate on")
    val, test, train = dm.val_dataloader(), dm.test_dataloader(), dm.train_dataloader() if recalibrate else None
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    rows = []
    for budget in budgets:
        model.load_state_dict(trained)
        row = calibrate_threshold(model, val, budget, train)
        ev = evaluate(model, test)
        row.update(test_macs_mean=ev.macs_mean, test_top1=ev.top1, iterations_mean=ev.summary()["iterations_mean"])
        rows.append(row)
    if save:
        save_weights(model, save, data=config.get("data"), extra={"calibrated_from": str(weights), **rows[0]})
    return {"weights": str(weights), "budgets": rows, "saved": str(save) if save else None}


def recalibrate_run(
    source: str | Path, halting: HaltingSpec, save: str | Path | None = None, test_subset: int | None = None
) -> dict[str, Any]:
    """Re-estimate a run's BatchNorm statistics for an inference regime (``halting``: ``act``,
    ``full`` or k) on its training data; test accuracy before and after; optionally save the model."""
    weights, model, config, dm = load_iamnn_run(source, test_subset)
    model.halting = halting  # the regime the saved model loads in
    before = evaluate(model, dm.test_dataloader())
    recalibrate_batchnorm(model, dm.train_dataloader())
    after = evaluate(model, dm.test_dataloader())
    result = {"weights": str(weights), "halting": halting_json(model.halting), "test_macs_mean": after.macs_mean,
              "test_top1_trained_statistics": before.top1, "test_top1_reestimated": after.top1}  # fmt: skip
    if save:
        save_weights(model, save, data=config.get("data"), extra={"recalibrated_from": str(weights), **result})
    return {**result, "saved": str(save) if save else None}


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
