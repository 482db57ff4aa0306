"""Budgets: the halting threshold that meets an average-MACs budget (``iamnn calibrate``; a
cascade's confidence threshold too), and BatchNorm statistics re-estimated for another halting
policy (``iamnn recalibrate``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .evaluation import calibrate_threshold, evaluate, recalibrate_batchnorm
from .headroom import cascade_points, opinions
from .models import Cascade, IamNN
from .models.halting import HaltingSpec, halting_json, network_policy
from .runs import load_iamnn_run
from .weights import save_weights


def calibrate_run(
    source: str | Path,
    budgets: list[float],
    recalibrate: bool = True,
    test_subset: int | None = None,
    save: str | Path | None = None,
    halting: HaltingSpec | None = None,
) -> dict[str, Any]:
    """``calibrate_threshold`` for each budget on a run's validation split, then its test accuracy;
    with a cascade as ``halting`` (``cascade:1,flip-1``), its confidence threshold instead.

    ``save``: write the model at the (single) budget's threshold, with its re-estimated BatchNorm
    statistics, as a weights file that loads with that policy.
    """
    if save and len(budgets) != 1:
        raise ValueError("saving the calibrated model needs exactly one budget")
    cascade = network_policy(halting)
    if halting is not None and (cascade is None or len(cascade.passes) < 2):
        raise ValueError(f"calibrate --halting takes a cascade of 2+ passes (cascade:1,flip-1), got {halting!r}")
    weights, model, config, dm = load_iamnn_run(source, test_subset)
    if dm.val_set is None:
        raise ValueError(f"{weights}: the recipe holds out no validation split (val_size: 0) to calibrate on")
    seen = test_images(dm)
    if cascade is not None:
        return {**calibrate_cascade(model, cascade, dm, budgets, str(weights), config.get("data"), save), **seen}
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
    return {"weights": str(weights), "budgets": rows, "saved": str(save) if save else None, **seen}


def test_images(dm: Any) -> dict[str, int]:
    """How many test images a result was measured on, of how many in the split: results say so."""
    return {"test_samples": len(dm.test_set), "test_set_size": dm.full_test_size}


def calibrate_cascade(
    model: IamNN,
    cascade: Cascade,
    dm: Any,
    budgets: list[float],
    source: str,
    data: dict[str, Any] | None = None,
    save: str | Path | None = None,
) -> dict[str, Any]:
    """A cascade's threshold for each budget, chosen on the validation split (every pass run once
    on it, then replayed), and its test top-1 and MACs (replayed as well: equal to running it)."""
    items = opinions(model, dm.val_dataloader(), dm.test_dataloader(), cascade.passes, Path(source).stem)
    rows = []
    for point in cascade_points(cascade, items, budgets):
        rows.append({**point, "feasible": point["val_macs_mean"] <= point["budget_macs"],
                     "test_macs_mean": point.pop("macs_mean"), "test_top1": point.pop("top1")})  # fmt: skip
    if save:
        model.halting = rows[0]["halting"]
        save_weights(model, save, data=data, extra={"calibrated_from": source, **rows[0]})
    return {"weights": source, "budgets": rows, "saved": str(save) if save else None}


def recalibrate_run(
    source: str | Path, halting: HaltingSpec, save: str | Path | None = None, test_subset: int | None = None
) -> dict[str, Any]:
    """Re-estimate a run's BatchNorm statistics for a halting policy (``halting``: ``act``,
    ``full`` or k) on its training data; test accuracy before and after; optionally save the model."""
    weights, model, config, dm = load_iamnn_run(source, test_subset)
    return recalibrate_model(model, dm, halting, str(weights), config.get("data"), save)


def recalibrate_model(
    model: IamNN,
    dm: Any,
    halting: HaltingSpec,
    source: str,
    data: dict[str, Any] | None = None,
    save: str | Path | None = None,
) -> dict[str, Any]:
    """:func:`recalibrate_run` for a model and its data module (``dm``: set up with training and
    test images): ``model`` keeps the re-estimated statistics and ``halting`` as its own policy;
    ``save`` writes it as weights (with ``data`` as their preprocessing) that load with that policy."""
    model.halting = halting  # the policy the saved model loads with
    before = evaluate(model, dm.test_dataloader())
    recalibrate_batchnorm(model, dm.train_dataloader())
    after = evaluate(model, dm.test_dataloader())
    result = {"weights": source, "halting": halting_json(model.halting), "test_macs_mean": after.macs_mean,
              "test_top1_trained_statistics": before.top1, "test_top1_reestimated": after.top1,
              **test_images(dm)}  # fmt: skip
    if save:
        save_weights(model, save, data=data, extra={"recalibrated_from": source, **result})
    return {**result, "saved": str(save) if save else None}


def parse_macs(text: str) -> float:
    """'20M' -> 2e7, '1.5G' -> 1.5e9, '350k' -> 3.5e5, '123456' -> 123456."""
    scale = {"k": 1e3, "m": 1e6, "g": 1e9}.get(text.strip()[-1:].lower())
    number = text.strip()[:-1] if scale else text.strip()
    try:
        value = float(number) * (scale or 1)
    except ValueError:
        raise ValueError(f"not a MACs budget: {text!r} (e.g. 20M, 1.5G)") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"a MACs budget must be a positive number, got {text!r}")
    return value
