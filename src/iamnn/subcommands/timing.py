"""``iamnn bench``: ``bench.benchmark`` measures, this prints (rows read by name: ``bench.row``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rich.table import Table

from . import SHIPPED
from .shared import console, human, show


def bench(args: argparse.Namespace) -> None:
    from ..bench import benchmark

    result, default_file = benchmark(
        args.model or SHIPPED, weights=args.weights, pretrained=args.pretrained, onnx=args.onnx,
        width=args.width, stem=args.stem, input_size=args.input_size, batch_sizes=args.batch_sizes,
        threads=args.threads, fold=not args.no_fold, device=args.device, runtime=args.runtime, smoke=args.smoke,
    )  # fmt: skip
    warn_if_disturbed(result)
    show(result, args.json or str(default_file), lambda: print_bench(result, args.batch_sizes))


def warn_if_disturbed(result: dict[str, Any]) -> None:
    for key, what in (("disturbance", "inference timings"), ("train_step_disturbance", "training-step timings")):
        d = result.get(key)
        if d and not d["trustworthy"]:
            print(f"iamnn bench: warning: other processes kept {d['other_processes_cores']:.2f} of {d['cores']} cores "
                  f"busy during the {what}; their figures are not trustworthy (run on a quiet machine)",
                  file=sys.stderr)  # fmt: skip


def act_steps(result: dict[str, Any]) -> str:
    """Where act's halting steps ran: in the C kernel or as PyTorch ops; in onnxruntime, in the graph
    (the kernel then serves the training-step row only)."""
    if "act_kernel" not in result:
        return ""
    if result["runtime"] != "torch":
        return ", ACT steps in the ONNX graph"
    return f", ACT steps in {'C' if result['act_kernel'] else 'PyTorch'}"


def bench_table(result: dict[str, Any], sizes: tuple[int, ...]) -> Table:
    title = (
        f"iamnn bench ({result['runtime']}): {result['model']} on {result['inputs']}, "
        f"{result['threads']} threads, device {result['device']}, "
        f"BN folded: {result['folded_batchnorm']}" + act_steps(result)
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
    return table


def print_bench(result: dict[str, Any], sizes: tuple[int, ...]) -> None:
    from ..bench import row

    console().print(bench_table(result, sizes))
    full, act = row(result, "full"), row(result, "act")
    print(f"act: MAC ratio full/act {act['mac_ratio']:.2f}; realised speedup (throughput) "
          + ", ".join(f"@{b}: {act[f'speedup_over_full@{b}']:.2f}x" for b in sizes)
          + f"; batch-1 median latency: {act['speedup_p50_over_full@1']:.2f}x")  # fmt: skip
    print(f"halting machinery: act / no-halt ({'/'.join(map(str, act['no_halt_iterations']))} iterations, the "
          f"schedule of {act['no_halt_share']:.0%} of the images under act) "
          + ", ".join(f"@{b}: {act[f'halting_overhead@{b}']:.2f}x" for b in sizes)
          + f", batch-1 median {act['halting_overhead_p50@1']:.2f}x; no-halt bound (speedup / MAC ratio) "
          + ", ".join(f"@{b}: {act[f'no_halt_bound@{b}']:.2f}" for b in sizes))  # fmt: skip
    for key, also in (("baseline", ""), ("bottleneck_twin", " (IamNN's bottleneck blocks, same widths)")):
        if (base := row(result, key)) is not None and f"time_per_mac_vs_{key}@{sizes[0]}" in full:
            print(f"IamNN full time per MAC vs {base['row']}{also}: "
                  + ", ".join(f"@{b}: {full[f'time_per_mac_vs_{key}@{b}']:.2f}" for b in sizes))  # fmt: skip
    if "train_step" in result:
        t = result["train_step"]
        print(
            f"training step, batch {t['batch']}: full {t['full'] * 1000:.0f} ms, act {t['act'] * 1000:.0f} ms: "
            f"speedup {t['speedup']:.2f}x at MAC ratio {t['mac_ratio']:.2f} ({t['speedup_over_mac_ratio']:.2f}); "
            f"no-halt {t['no-halt'] * 1000:.0f} ms: act / no-halt {t['halting_overhead']:.2f}x"
        )
