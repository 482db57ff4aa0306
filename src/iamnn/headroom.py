"""Can per-image compute pay on this data? Headroom of a set of opinions, and cascades over them.

An *opinion* is one way to answer every image: a model under a halting policy on a view of the
image (``fixed_k1:1``, ``fixed_k1:flip-1``, ``fixed_k2:2``), with each image's softmax output and
MACs on a validation split and on the test set. :func:`headroom` says how much any router between
them could win — their pairwise disagreement on the test set and the per-image oracle (the
cheapest opinion that is right, else the cheapest) — before any policy is trained.
:func:`cascade_points` replays a confidence cascade over opinions taken in order (the passes of one
model's :class:`~iamnn.models.Cascade`, or separately trained models) with thresholds chosen on the
validation split for each MACs budget, and reports its test accuracy and MACs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from .cost import count_params
from .models import IamNN
from .models.cascade import Cascade, Pass, confidence, simulate
from .progress import track


@dataclass
class Split:
    """Per-image softmax outputs (N, classes), MACs (N,) and labels (N,) on one split."""

    probs: Tensor
    macs: Tensor
    labels: Tensor


@dataclass
class Opinion:
    """One way to answer every image, on the validation split and on the test set."""

    name: str
    params: int
    val: Split
    test: Split

    def top1(self) -> float:
        return float((self.test.probs.argmax(1) == self.test.labels).float().mean() * 100)


@torch.no_grad()
def outputs(model: IamNN, loader: DataLoader, passes: tuple[Pass, ...], name: str = "model") -> list[Split]:
    """Every pass of ``passes`` on every image of ``loader``, as one model's cascade runs them (the
    MACs a pass adds after those before it: the work they share is not counted twice)."""
    model.eval()
    cascade = Cascade(passes, (float("inf"),) * (len(passes) - 1))
    parts: list[list[tuple[Tensor, Tensor]]] = [[] for _ in passes]
    labels = []
    for x, y in track(loader, f"running {name} ({', '.join(p.spec for p in passes)})"):
        for j, (probs, macs) in enumerate(cascade.trace(model, x)):
            parts[j].append((probs, macs))
        labels.append(y)
    y = torch.cat(labels)
    return [Split(torch.cat([p for p, _ in part]), torch.cat([m for _, m in part]), y) for part in parts]


def opinions(
    model: IamNN, val: DataLoader, test: DataLoader, passes: tuple[Pass, ...], name: str, alone: bool = False
) -> list[Opinion]:
    """:func:`outputs` on the validation and test loaders, one :class:`Opinion` per pass: with
    the MACs each adds after the passes before it (a cascade's), or with ``alone`` each pass's
    own MACs, run by itself (what :func:`headroom` compares)."""
    if alone:
        return [o for p in passes for o in opinions(model, val, test, (p,), name)]
    params = count_params(model)
    pairs = zip(outputs(model, val, passes, name), outputs(model, test, passes, name), strict=True)
    return [Opinion(f"{name}:{p.spec}", params, v, t) for p, (v, t) in zip(passes, pairs, strict=True)]


def headroom(items: list[Opinion]) -> dict[str, Any]:
    """Test top-1 and MACs of each opinion, their pairwise disagreement (images on which their
    answers differ) and the per-image oracle over them: each image gets the cheapest opinion that
    is right (the cheapest of all when none is), the best any router between them could do.
    Each opinion's MACs are its own (``opinions(..., alone=True)``).
    """
    labels = items[0].test.labels
    answers = torch.stack([o.test.probs.argmax(1) for o in items])  # (opinions, N)
    macs = torch.stack([o.test.macs for o in items]).double()
    right = answers == labels
    # the oracle: the cheapest right opinion, else the cheapest
    cost_if_right = torch.where(right, macs, math.inf)
    cheapest_right = cost_if_right.min(0).values
    oracle_macs = torch.where(right.any(0), cheapest_right, macs.min(0).values)
    disagree = [[int((answers[i] != answers[j]).sum()) for j in range(len(items))] for i in range(len(items))]
    return {
        "test_samples": len(labels),
        "opinions": [
            {
                "name": o.name,
                "params": o.params,
                "top1": float(right[i].float().mean() * 100),
                "macs_mean": float(macs[i].mean()),
            }
            for i, o in enumerate(items)
        ],  # fmt: skip
        "disagreement": disagree,
        "oracle_top1": float(right.any(0).float().mean() * 100),
        "oracle_macs_mean": float(oracle_macs.mean()),
    }


def markdown_headroom(result: dict[str, Any]) -> str:
    """The headroom as Markdown: one row per opinion, its disagreement with each other, then the oracle."""
    names = [o["name"] for o in result["opinions"]]
    lines = [
        "| opinion | params | MACs | top-1 | " + " | ".join(f"≠ {i + 1}" for i in range(len(names))) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(names),
    ]
    for i, o in enumerate(result["opinions"]):
        cells = " | ".join("–" if i == j else str(d) for j, d in enumerate(result["disagreement"][i]))
        lines.append(f"| {i + 1}. `{o['name']}` | {o['params'] / 1e6:.3f} M | {o['macs_mean'] / 1e6:.2f} M "
                     f"| {o['top1']:.2f} % | {cells} |")  # fmt: skip
    lines.append(f"| per-image oracle | | {result['oracle_macs_mean'] / 1e6:.2f} M | {result['oracle_top1']:.2f} % |"
                 + " |" * len(names))  # fmt: skip
    return (
        "\n".join(lines) + f"\n\n({result['test_samples']} test images; ≠ j: images on which the two answers differ.)\n"
    )


def thresholds_for_budget(cascade: Cascade, val: list[Split], budget_macs: float) -> tuple[tuple[float, ...], float]:
    """One threshold shared by every pass of ``cascade``, the highest (most images go on) whose
    average MACs on the validation outputs ``val`` stay within ``budget_macs``; and those MACs.

    A higher threshold never lets an image leave earlier, so the MACs grow with it: a bisection
    over the validation confidences finds it. Below the first pass's cost nothing fits: then
    every image leaves after pass 1 (threshold −inf), and the MACs returned exceed the budget.
    """
    traced = [(s.probs, s.macs) for s in val]
    scores = torch.cat([confidence(cascade.answer([p for p, _ in traced[: j + 1]]), cascade.score)
                        for j in range(len(traced) - 1)]).unique()  # fmt: skip
    candidates = torch.cat([scores.new_tensor([-math.inf]), scores.nextafter(scores.new_tensor(math.inf))])

    def macs_at(t: float) -> float:
        return float(simulate(cascade.with_thresholds((t,) * len(cascade.thresholds)), traced)[1].double().mean())

    lo, hi = 0, len(candidates) - 1  # invariant: candidates[lo] fits (or nothing does)
    if macs_at(float(candidates[hi])) <= budget_macs:
        lo = hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if macs_at(float(candidates[mid])) <= budget_macs else (lo, mid)
    t = float(candidates[lo])
    return (t,) * len(cascade.thresholds), macs_at(t)


def replay(cascade: Cascade, split: list[Split]) -> dict[str, Any]:
    """``cascade`` replayed on one split's outputs: top-1, MACs mean / CV, and the share of
    images each pass answered; per image, whether it was right (``correct``) and its ``macs``."""
    answer, macs, answered = simulate(cascade, [(s.probs, s.macs) for s in split])
    macs = macs.double()
    return {
        "top1": float((answer.argmax(1) == split[0].labels).float().mean() * 100),
        "macs_mean": float(macs.mean()),
        "macs_cv": float(macs.std(unbiased=False) / macs.mean()),
        "macs_min": int(macs.min()),
        "macs_max": int(macs.max()),
        "answered_by": [
            round(float(v), 4) for v in torch.bincount(answered, minlength=len(split)).double() / len(macs)
        ],
        "correct": (answer.argmax(1) == split[0].labels),
        "macs": macs,
    }


def cascade_points(
    cascade: Cascade, items: list[Opinion], budgets: list[float], keep_correct: bool = False
) -> list[dict[str, Any]]:
    """For each budget: thresholds chosen on the validation outputs of ``items`` (the cascade's
    passes, in order), then the cascade's test top-1 and MACs with them; ``keep_correct``: with
    each test image's correctness (``correct``, a bool tensor) and MACs (``macs``), for paired tests
    and breakdowns by difficulty."""
    points = []
    for budget in budgets:
        thresholds, val_macs = thresholds_for_budget(cascade, [o.val for o in items], budget)
        chosen = cascade.with_thresholds(thresholds)
        test = replay(chosen, [o.test for o in items])
        if not keep_correct:  # per-image results: for paired tests and breakdowns, not for JSON
            test.pop("correct"), test.pop("macs")
        finite = [t if math.isfinite(t) else None for t in thresholds]  # None: every image leaves there
        points.append({"budget_macs": budget, "halting": chosen.spec, "thresholds": finite,
                       "val_macs_mean": val_macs, **test})  # fmt: skip
    return points
