"""The cascade study: can per-image compute pay on Fashion-MNIST, with one network?

Run from the repository root (every run it reads is stored in ``benchmarks/results/study_runs``;
``benchmarks/run_study.sh fixed_k1_seed1 fixed_k2_seed1 depth_ce`` trains the new ones into
``runs/study``, then ``--runs runs/study`` reads them there)::

    python -m benchmarks.cascade_study [--runs DIR] [--out benchmarks/results/cascade_study.json]

It prints three Markdown tables (docs/results.md, "Does per-image compute pay?") and writes the JSON:

1. **Headroom** of pairs of opinions (``iamnn headroom``'s measure): test images on which they
   disagree, and the per-image oracle (the cheapest right opinion) — the most any router could win.
2. **Cascades**, thresholds chosen on the 5 000-image validation split for a MACs budget fixed
   before the second seed was trained: half of fixed k = 2's MACs (and 3.8 M, 60 % of it).
3. **Seeds**: fixed k = 1, fixed k = 2 and the one-network cascade over two seeds of the same
   recipe, with a paired test per seed (McNemar, exact) and a bootstrap interval over test images.

Two-seed records (fixed k = 1, fixed k = 2, the one-network cascade with ``kind: "adaptive"``, the
two-model cascade) are merged into ``benchmarks/results/frontier.json`` (``--frontier``), whose table
and figure in ``docs/results/study/`` are redrawn; ``iamnn frontier`` rewrites that file from run
folders, so run this after it.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from pathlib import Path
from typing import Any

import torch

from iamnn.evaluation import recalibrate_batchnorm
from iamnn.frontier import markdown_frontier, pareto_front
from iamnn.headroom import Opinion, cascade_points, headroom, opinions, replay
from iamnn.models import Cascade, Pass
from iamnn.plots import plot_frontier
from iamnn.runs import find_weights, load_datamodule
from iamnn.weights import load_model_with_config

STORED = Path("benchmarks/results/study_runs")
K2_MACS = 6_329_984  # fixed k = 2 at 28x28 (the study's fixed_k2 record)
HEADLINE = K2_MACS / 2  # chosen before the second seeds were trained: "half of k = 2's MACs"
BUDGETS = (3.0e6, HEADLINE, 3.5e6, 3.8e6)
TRAIN_SAMPLES = 55_000


def model_opinions(run: Path, passes: str, recalibrate: bool = False, alone: bool = False) -> list[Opinion]:
    """The opinions of ``run`` under ``passes`` (``"1,flip-1"``). ``recalibrate``: each pass on a
    copy of the model whose BatchNorm statistics are re-estimated for that pass's regime (a model
    cannot hold two sets: such opinions are not one network's cascade)."""
    model, _ = load_model_with_config(find_weights(run))
    dm = load_datamodule(run, augment=False)
    dm.setup("fit")
    chosen = tuple(Pass.parse(p) for p in passes.split(","))
    if not recalibrate:
        return opinions(model, dm.val_dataloader(), dm.test_dataloader(), chosen, run.name, alone)
    items = []
    for p in chosen:
        copy_ = copy.deepcopy(model)
        recalibrate_batchnorm(copy_, dm.train_dataloader(), 40, halting=p.halting)
        items += opinions(copy_, dm.val_dataloader(), dm.test_dataloader(), (p,), f"{run.name} (BN for {p.spec})")
    return items


def mcnemar(a: torch.Tensor, b: torch.Tensor) -> dict[str, Any]:
    """Exact two-sided McNemar test of paired correctness vectors: images only a / only b gets right."""
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n, k = only_a + only_b, min(only_a, only_b)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0
    return {"only_a": only_a, "only_b": only_b, "p_value": p}


def bootstrap_diff(pairs: list[tuple[torch.Tensor, torch.Tensor]], rounds: int = 2000) -> list[float]:
    """95 % interval of the mean (over seeds) top-1 difference a − b, resampling test images (the
    same draw for every seed's pair)."""
    g = torch.Generator().manual_seed(0)
    n = len(pairs[0][0])
    diffs = []
    for _ in range(rounds):
        idx = torch.randint(0, n, (n,), generator=g)
        diffs.append(sum(float(a[idx].float().mean() - b[idx].float().mean()) for a, b in pairs) / len(pairs) * 100)
    diffs.sort()
    return [round(diffs[int(0.025 * rounds)], 3), round(diffs[int(0.975 * rounds)], 3)]


def correct(item: Opinion) -> torch.Tensor:
    return item.test.probs.argmax(1) == item.test.labels


def pair_row(a: Opinion, b: Opinion) -> dict[str, Any]:
    h = headroom([a, b])
    return {"pair": [a.name, b.name], "disagree": h["disagreement"][0][1], "oracle_top1": h["oracle_top1"],
            "oracle_macs_mean": h["oracle_macs_mean"], "top1": [o["top1"] for o in h["opinions"]],
            "macs_mean": [o["macs_mean"] for o in h["opinions"]]}  # fmt: skip


def cascade_rows(name: str, spec: str, items: list[Opinion], params: int, note: str = "") -> list[dict[str, Any]]:
    rows = []
    for point in cascade_points(Cascade.parse(spec), items, list(BUDGETS), keep_correct=True):
        rows.append({"name": name, "params": params, "note": note, **point})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, default=STORED, help="the second seeds' and depth_ce's run folders")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cascade_study.json"))
    parser.add_argument("--frontier", type=Path, default=Path("benchmarks/results/frontier.json"))
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    runs = {0: STORED / "fixed_k1", 1: args.runs / "fixed_k1_seed1"}
    k1 = {s: model_opinions(run, "1,flip-1") for s, run in runs.items()}
    k2 = {0: model_opinions(STORED / "fixed_k2", "2")[0], 1: model_opinions(args.runs / "fixed_k2_seed1", "2")[0]}
    mobile = model_opinions(STORED / "mobile_k1", "1")[0]
    anytime = model_opinions(STORED / "anytime_backbone", "1,2", recalibrate=True)
    depth_ce = model_opinions(args.runs / "depth_ce", "1,2,flip-1")
    depth_ce_alone = model_opinions(args.runs / "depth_ce", "1,2,flip-1", alone=True)  # each pass's own MACs
    depth_ce_bn = model_opinions(args.runs / "depth_ce", "1,2", recalibrate=True)
    depth_ce_k1 = model_opinions(args.runs / "depth_ce", "1,flip-1", recalibrate=True)  # one set: k = 1's

    pairs = [pair_row(*p) for p in [
        (k1[0][0], k2[0]), (k1[0][0], mobile), (k1[0][0], k1[0][1]), (k1[1][0], k1[1][1]),
        (anytime[0], anytime[1]), (depth_ce_alone[0], depth_ce_alone[1]),
        (depth_ce_bn[0], depth_ce_bn[1]), (depth_ce_alone[0], depth_ce_alone[2]),
    ]]  # fmt: skip

    params = k1[0][0].params
    cascades = []
    for seed in (0, 1):
        cascades += cascade_rows(f"one network: fixed_k1 seed {seed}, 1 → flip-1", "cascade:1,flip-1@inf", k1[seed],
                                 params)  # fmt: skip
        cascades += cascade_rows(f"two models: fixed_k1 → fixed_k2, seed {seed}", "cascade:1,2@inf",
                                 [k1[seed][0], k2[seed]], 2 * params, "parameters of both models")  # fmt: skip
    cascades += cascade_rows("one network: depth_ce, 1 → 2", "cascade:1,2@inf", depth_ce[:2], depth_ce[0].params)
    cascades += cascade_rows("one network: depth_ce, 1 → flip-1", "cascade:1,flip-1@inf", [depth_ce[0], depth_ce[2]],
                             depth_ce[0].params)  # fmt: skip
    cascades += cascade_rows("one network: depth_ce, BN re-estimated for 1, 1 → flip-1", "cascade:1,flip-1@inf",
                             depth_ce_k1, depth_ce[0].params)  # fmt: skip
    cascades += cascade_rows("anytime_backbone, 1 → 2 (BN re-estimated per pass: two sets)", "cascade:1,2@inf",
                             anytime, anytime[0].params, "two BatchNorm sets; not one network as stored")  # fmt: skip
    cascades += cascade_rows("depth_ce, 1 → 2 (BN re-estimated per pass: two sets)", "cascade:1,2@inf", depth_ce_bn,
                             depth_ce[0].params, "two BatchNorm sets; not one network as stored")  # fmt: skip

    # the seeds: the one-network cascade at the headline budget against fixed k = 2, seed by seed
    headline = {s: next(r for r in cascades if r["name"].startswith(f"one network: fixed_k1 seed {s}")
                        and r["budget_macs"] == HEADLINE) for s in (0, 1)}  # fmt: skip

    def boot(a: str, b: str) -> list[float]:
        pick = {"cascade": lambda s: headline[s]["correct"], "k1": lambda s: correct(k1[s][0]),
                "k2": lambda s: correct(k2[s])}  # fmt: skip
        return bootstrap_diff([(pick[a](s), pick[b](s)) for s in (0, 1)])

    seeds = {
        "fixed_k1": [k1[s][0].top1() for s in (0, 1)],
        "fixed_k2": [k2[s].top1() for s in (0, 1)],
        "cascade": [headline[s]["top1"] for s in (0, 1)],
        "cascade_macs_mean": [headline[s]["macs_mean"] for s in (0, 1)],
        "cascade_macs_cv": [headline[s]["macs_cv"] for s in (0, 1)],
        "cascade_halting": [headline[s]["halting"] for s in (0, 1)],
        "mcnemar_cascade_vs_fixed_k2": [mcnemar(headline[s]["correct"], correct(k2[s])) for s in (0, 1)],
        "mcnemar_cascade_vs_fixed_k1": [mcnemar(headline[s]["correct"], correct(k1[s][0])) for s in (0, 1)],
        "bootstrap_cascade_minus_fixed_k2": boot("cascade", "k2"),
        "bootstrap_cascade_minus_fixed_k1": boot("cascade", "k1"),
        "bootstrap_fixed_k2_minus_fixed_k1": boot("k2", "k1"),
    }  # fmt: skip
    for r in cascades:
        r.pop("correct")
    result = {"test_samples": len(k2[0].test.labels), "budgets": list(BUDGETS), "headline_budget": HEADLINE,
              "headroom_pairs": pairs, "cascades": cascades, "seeds": seeds}  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    merge_frontier(args.frontier, result, {"fixed_k1": [k1[s][0] for s in (0, 1)], "fixed_k2": [k2[0], k2[1]]},
                   {"fixed_k1": [str(r) for r in runs.values()],
                    "fixed_k2": [str(STORED / "fixed_k2"), str(args.runs / "fixed_k2_seed1")]})  # fmt: skip
    print_tables(result)


def two_seed_record(name: str, kind: str, per_seed: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    """A frontier record whose figures are means over ``per_seed`` (one replay summary a seed)."""
    return {
        "name": name, "kind": kind, "model": "iamnn_r34", "width": 0.125, "train_samples": TRAIN_SAMPLES,
        "epochs": 12, "seeds": [0, 1], "macs_mean": sum(r["macs_mean"] for r in per_seed) / 2,
        "macs_min": min(r["macs_min"] for r in per_seed), "macs_max": max(r["macs_max"] for r in per_seed),
        "macs_cv": sum(r["macs_cv"] for r in per_seed) / 2, "top1": sum(r["top1"] for r in per_seed) / 2,
        "top1_per_seed": [r["top1"] for r in per_seed], "macs_mean_per_seed": [r["macs_mean"] for r in per_seed],
        "max_iterations": [3, 4, 6, 3], "test_samples": 10000, "iterative": True, **fields,
    }  # fmt: skip


def merge_frontier(
    path: Path, result: dict[str, Any], fixed: dict[str, list[Opinion]], runs: dict[str, list[str]]
) -> None:
    """Two-seed records (``seeds: [0, 1]``, means over them) of fixed k = 1, fixed k = 2, the
    one-network cascade (``kind: "adaptive"``) and the two-model cascade at the headline budget,
    merged into ``path`` (the single-seed records stay), and its table and figure redrawn
    (``docs/results/study/frontier.{md,png}``)."""
    if not path.is_file():
        return
    records = []
    for name, depth in (("fixed_k1", 1), ("fixed_k2", 2)):
        per_seed = [replay(Cascade.parse("cascade:1@"), [o.test]) for o in fixed[name]]
        records.append(two_seed_record(f"{name} (2 seeds)", "fixed", per_seed, halting=depth, run=runs[name],
                                       params=fixed[name][0].params, iterations_mean=[float(depth)] * 4))  # fmt: skip
    for name, kind, prefix in (
        ("cascade_k1_flip (2 seeds)", "adaptive", "one network: fixed_k1 seed"),
        ("cascade_k1_to_k2, two models (2 seeds)", "two-model cascade", "two models:"),
    ):
        per_seed = [next(r for r in result["cascades"] if r["budget_macs"] == result["headline_budget"]
                         and r["name"].startswith(prefix) and f"seed {s}" in r["name"]) for s in (0, 1)]  # fmt: skip
        on = sum(r["answered_by"][1] for r in per_seed) / 2  # the share of images that ran the second pass
        its = [1 + on] * 4 if kind == "adaptive" else [1 + 2 * on] * 4  # k1's 1, + 1 (flip-1) or + 2 (k2)
        run = runs["fixed_k1"] + (runs["fixed_k2"] if kind != "adaptive" else [])
        records.append(two_seed_record(name, kind, per_seed, halting=[r["halting"] for r in per_seed], run=run,
                                       params=per_seed[0]["params"], iterations_mean=its,
                                       budget_macs_chosen=result["headline_budget"]))  # fmt: skip
    frontier = json.loads(path.read_text())
    names = {r["name"] for r in records}
    frontier["models"] = [m for m in frontier["models"] if m["name"] not in names] + records
    frontier["pareto_front"] = pareto_front(frontier["models"])
    path.write_text(json.dumps(frontier, indent=2) + "\n")
    docs = Path("docs/results/study")
    plot_frontier(frontier["models"], docs / "frontier.png", frontier["pareto_front"])
    (docs / "frontier.md").write_text(markdown_frontier(frontier["models"]) + "\n")
    print(f"merged {len(records)} two-seed records into {path}; redrew {docs}/frontier.{{md,png}}")


def print_tables(result: dict[str, Any]) -> None:
    print("\n| pair (test set) | disagree | top-1 each | oracle top-1 | oracle MACs |\n|---|---:|---|---:|---:|")
    for p in result["headroom_pairs"]:
        tops = " / ".join(f"{t:.2f}" for t in p["top1"])
        print(f"| `{p['pair'][0]}` vs `{p['pair'][1]}` | {p['disagree']} | {tops} | {p['oracle_top1']:.2f} % "
              f"| {p['oracle_macs_mean'] / 1e6:.2f} M |")  # fmt: skip
    print("\n| cascade | params | budget | test MACs (CV) | test top-1 | answered by pass 1 / 2 |\n"
          "|---|---:|---:|---:|---:|---|")  # fmt: skip
    for r in result["cascades"]:
        shares = " / ".join(f"{v:.3f}" for v in r["answered_by"])
        print(f"| {r['name']} | {r['params'] / 1e6:.3f} M | {r['budget_macs'] / 1e6:.2f} M "
              f"| {r['macs_mean'] / 1e6:.2f} M ({r['macs_cv']:.2f}) | {r['top1']:.2f} % | {shares} |")  # fmt: skip
    s = result["seeds"]
    print("\n| seeds 0 / 1 | top-1 | mean |\n|---|---|---:|")
    for key in ("fixed_k1", "fixed_k2", "cascade"):
        print(f"| {key} | {' / '.join(f'{v:.2f}' for v in s[key])} | {sum(s[key]) / 2:.2f} |")
    print(f"\ncascade MACs {s['cascade_macs_mean']}, CV {s['cascade_macs_cv']}")
    print(f"McNemar vs fixed_k2: {s['mcnemar_cascade_vs_fixed_k2']}; vs fixed_k1: {s['mcnemar_cascade_vs_fixed_k1']}")
    print(f"bootstrap 95 %: cascade − k2 {s['bootstrap_cascade_minus_fixed_k2']}, cascade − k1 "
          f"{s['bootstrap_cascade_minus_fixed_k1']}, k2 − k1 {s['bootstrap_fixed_k2_minus_fixed_k1']}")  # fmt: skip


if __name__ == "__main__":
    main()
