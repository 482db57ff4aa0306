"""Where does inference time go? Per-stage time of `full`, `act` and act's iterations without halting.

    .venv/bin/python benchmarks/profile_stages.py --batch 1      # the shipped model, BN folded
    .venv/bin/python benchmarks/profile_stages.py --batch 128 --profiler

Explains the realised-speedup figures of `iamnn bench`. Three runs of the same images, taking turns:
`full`; `act`; and "no-halt", which runs in every stage the number of iterations `act` chose (when
`act` chose the same number for every image of the batch) with no halting unit, no ACT bookkeeping
and no weighted sum of states. no-halt is the time `act` would take if halting cost nothing, so

- act / no-halt is what the halting machinery costs, and
- (full / no-halt) / MAC ratio is the best speedup-per-MAC-ratio any halting unit could reach on
  this machine: below 1 where the iterations `act` skips cost less time per MAC than those it runs.

With ``--train``, the same three for a training step (forward, backward, SGD; BatchNorm in
training mode, channels-last as ``iamnn fit``), in place of the inference table.

Writes the figures to benchmarks/results/profile_stages_b<batch>[_train].json.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import iamnn
from iamnn.bench import time_train_steps
from iamnn.models.fold import fold_batchnorm
from iamnn.runtime import keep_freed_memory

RESULTS = Path(__file__).parent / "results"


def _images(batch: int, in_chans: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    from iamnn.data import FashionMNISTDataModule

    try:
        dm = FashionMNISTDataModule(val_size=0, test_subset=batch, augment=False, batch_size=batch)
        dm.setup("test")
        x, y = next(iter(dm.test_dataloader()))
        return x[:batch], y[:batch]
    except Exception as err:  # noqa: BLE001 - synthetic inputs are fine for timing
        print(f"(synthetic inputs: {err})")
        return torch.randn(batch, in_chans, 28, 28), torch.randint(num_classes, (batch,))


def _schedule(iterations: list[torch.Tensor]) -> tuple[list[int], list[float]]:
    """act's most common iteration count per stage, and the share of the batch that used exactly it."""
    counts = [int(n.mode().values) for n in iterations]
    return counts, [float((n == c).float().mean()) for n, c in zip(iterations, counts, strict=True)]


def _train_steps(model: iamnn.IamNN, x: torch.Tensor, y: torch.Tensor, repeats: int) -> dict[str, object]:
    """Median ms per training step of full, act and no-halt (act's training-mode iterations), taking turns."""
    x = x.contiguous(memory_format=torch.channels_last)
    nets = {}
    for mode in ("full", "act", "no-halt"):
        nets[mode] = copy.deepcopy(model).train().to(memory_format=torch.channels_last)
        nets[mode].halting = "full" if mode == "full" else "act"
    _, stats = nets["act"](x, return_stats=True)
    counts, share = _schedule(list(stats.iterations.unbind(1)))
    nets["no-halt"].halting = counts  # one fixed count per stage: no halting unit, no weighted sum
    seconds, macs = time_train_steps(nets, x, y, repeats)
    ms = {mode: s * 1e3 for mode, s in seconds.items()}
    return {
        "act_iterations": counts,
        "share_with_those_iterations": share,
        "ms": ms,
    } | _ratios(ms, macs["full"] / macs["act"])


def _run(model: iamnn.IamNN, x: torch.Tensor, halting: list[object]) -> tuple[list[float], list[torch.Tensor]]:
    """One forward with stage k under policy ``halting[k]``: per-part seconds (stem, stages, head) and iterations."""
    t = time.perf_counter()
    x = x.contiguous(memory_format=model.memory_format)
    h = model.maxpool(torch.relu(model.bn1(model.conv1(x))))
    stamps, iterations = [t, time.perf_counter()], []
    for k, (stage, policy) in enumerate(zip(model.stages, model.policies(halting), strict=True)):
        if k:
            h = model.pool(h)
        h, n, _ = stage(h, policy)
        iterations.append(n)
        stamps.append(time.perf_counter())
    model.forward_head(h)
    stamps.append(time.perf_counter())
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)], iterations


def _ratios(total_ms: dict[str, float], mac_ratio: float) -> dict[str, float]:
    """act's speedup/MAC ratio, the no-halt bound, and what halting costs, from full/act/no-halt times."""
    return {
        "mac_ratio": mac_ratio,
        "speedup_per_mac_ratio": total_ms["full"] / total_ms["act"] / mac_ratio,
        "bound_speedup_per_mac_ratio": total_ms["full"] / total_ms["no-halt"] / mac_ratio,
        "halting_cost": total_ms["act"] / total_ms["no-halt"],
    }


def _report(summary: dict[str, object], total_ms: dict[str, float], out: Path) -> None:
    print(
        f"total: full {total_ms['full']:.3f} ms, act {total_ms['act']:.3f} ms, no-halt {total_ms['no-halt']:.3f} ms; "
        f"MAC ratio {summary['mac_ratio']:.2f}\n"
        f"speedup/MAC ratio: act {summary['speedup_per_mac_ratio']:.2f}; with a halting unit that cost nothing "
        f"(no-halt) {summary['bound_speedup_per_mac_ratio']:.2f}; halting machinery: act takes "
        f"{summary['halting_cost']:.2f}x no-halt's time"
    )
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="iamnn_r34_fmnist")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=0, help="default: 1000 at batch 1, fewer for larger batches")
    parser.add_argument("--profiler", action="store_true", help="also print a torch.profiler table of act")
    parser.add_argument("--train", action="store_true", help="time training steps instead of inference")
    args = parser.parse_args()

    keep_freed_memory()
    model = iamnn.create_model(args.model, pretrained=True)
    x, y = _images(args.batch, model.in_chans, model.num_classes)
    RESULTS.mkdir(exist_ok=True)
    if args.train:
        repeats = args.repeats or 9
        summary = {"model": args.model, "batch": args.batch, "threads": torch.get_num_threads(), "repeats": repeats}
        summary |= _train_steps(model, x, y, repeats)
        print(f"{args.model}, training step, batch {args.batch}, {summary['threads']} threads, median of {repeats}")
        print(f"act's iterations: {summary['act_iterations']} (share: {summary['share_with_those_iterations']})")
        _report(summary, summary["ms"], RESULTS / f"profile_stages_b{args.batch}_train.json")
        return
    model = fold_batchnorm(model)
    repeats = args.repeats or max(20, 1000 // args.batch)
    stages = len(model.stages)
    with torch.inference_mode():
        _, act_iterations = _run(model, x, ["act"] * stages)
        counts, uniform = _schedule(act_iterations)
        modes = {"full": ["full"] * stages, "act": ["act"] * stages, "no-halt": counts}
        times = {name: [[] for _ in range(stages + 2)] for name in modes}
        for r in range(repeats + 5):
            for name, halting in modes.items():  # taking turns, so that drifts of the machine hit all three
                parts, _ = _run(model, x, halting)
                if r >= 5:
                    for k, t in enumerate(parts):
                        times[name][k].append(t)
    median = {name: [sorted(t)[len(t) // 2] * 1e3 for t in parts] for name, parts in times.items()}
    table = model.cost_table(tuple(x.shape[-2:]))

    def stage_macs(k: int, n: int, halting_calls: int) -> int:
        return table["first"][k] + (n - 1) * table["block"][k] + halting_calls * table["halting"][k]

    macs = {
        "full": [table["stem"], *(stage_macs(k, n, 0) for k, n in enumerate(model.max_iterations)), table["head"]],
        "act": [
            table["stem"],
            *(stage_macs(k, c, min(c, model.max_iterations[k] - 1)) for k, c in enumerate(counts)),
            table["head"],
        ],
    }

    print(f"{args.model}, BN folded, batch {args.batch}, {torch.get_num_threads()} threads, median of {repeats}")
    print(f"act's iterations: {counts} (share of the batch with exactly that count: {[round(u, 3) for u in uniform]})")
    header = ("part", "full ms", "act ms", "no-halt ms", "act/no-halt", "full MACs", "act MACs")
    print(f"{header[0]:8}" + "".join(f" {h:>11}" for h in header[1:]))
    for k, part in enumerate(["stem", *(f"stage {k + 1}" for k in range(stages)), "head"]):
        f, a, b = (median[m][k] for m in ("full", "act", "no-halt"))
        mf, ma = macs["full"][k] / 1e6, macs["act"][k] / 1e6
        cells = (f"{f:.3f}", f"{a:.3f}", f"{b:.3f}", f"{a / b:.2f}", f"{mf:.2f}M", f"{ma:.2f}M")
        print(f"{part:8}" + "".join(f" {c:>11}" for c in cells))
    total = {name: sum(parts) for name, parts in median.items()}
    mac_ratio = sum(macs["full"]) / sum(macs["act"])
    summary = {
        "model": args.model,
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "act_iterations": counts,
        "share_with_those_iterations": uniform,
        "ms": median,
        "macs": macs,
    } | _ratios(total, mac_ratio)
    _report(summary, total, RESULTS / f"profile_stages_b{args.batch}.json")
    if args.profiler:
        with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(20):
                model(x)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
