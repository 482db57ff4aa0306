"""Does the ACT machinery cost less as the network gets wider? `iamnn bench`'s ratios by width.

    .venv/bin/python benchmarks/width_speed.py                       # widths 1/8 .. 1, 28x28, 1 channel
    .venv/bin/python benchmarks/width_speed.py --widths 0.125 0.5 --json out.json

Untrained IamNN-r34 models (cifar stem, Fashion-MNIST shapes) whose halting bias is set so that
every sample halts at its 2nd iteration in every stage, the iteration pattern of the shipped
model: a synthetic workload for timing only, with the same MAC ratio at every width. Each width
is one `run_bench` call (all rows interleaved in one process); the table gives act's realised
speedup over full divided by the MAC ratio, and full's time per MAC against the ResNets.

Then fixed-2, which runs exactly act's iterations here without a halting unit, is timed against
full and act (interleaved, BN folded): fixed-2's speedup / MAC ratio is what skipping these
iterations can give with no ACT machinery (stages differ in time per MAC), and act / fixed-2 is
the price of the machinery itself.
"""

from __future__ import annotations

import argparse
import json

import torch

import iamnn
from iamnn.bench import BenchConfig, latencies, run_bench, run_in, throughputs
from iamnn.files import write_text_atomic
from iamnn.models.fold import fold_batchnorm
from iamnn.runtime import keep_freed_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=float, nargs="+", default=[0.125, 0.25, 0.5, 1.0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--json", default="benchmarks/results/width_speed.json")
    args = parser.parse_args()
    keep_freed_memory()
    torch.manual_seed(0)
    images = torch.randn(256, 1, 28, 28)
    results = []
    for width in args.widths:
        # h ≈ σ(0.5) ≈ 0.62 at every iteration: Σh crosses 1 − ε at the 2nd iteration
        model = iamnn.create_model("iamnn_r34", width=width, stem="cifar", in_chans=1, num_classes=10, halting_bias=0.5)
        config = BenchConfig(
            batch_sizes=(1, args.batch), latency_images=40, throughput_images=2 * args.batch, train_batch=0
        )
        result = run_bench(model, images, None, config)
        rows = {r["row"]: r for r in result["rows"]}
        full, act = rows["IamNN full"], rows["IamNN act"]
        folded = fold_batchnorm(model)
        modes = ("full", 2, "act")
        runners = [run_in(folded, mode) for mode in modes]
        x = images.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            p50 = [torch.tensor(t).median().item() for t in latencies(runners, x[:40], warmup=3)]
            speed = throughputs(runners, x, args.batch, 2 * args.batch, warmup=3)
            mac_ratio = full["macs_mean"] / folded(x, return_stats=True, halting=2)[1].macs.float().mean().item()
        fixed2 = {
            "mac_ratio": mac_ratio,  # a little above act's: the same iterations without halting calls
            "efficiency_p50@1": p50[0] / p50[1] / mac_ratio,
            f"efficiency@{args.batch}": speed[1] / speed[0] / mac_ratio,
            "act_time_over_fixed2_p50@1": p50[2] / p50[1],
            f"act_time_over_fixed2@{args.batch}": speed[1] / speed[2],
        }
        results.append({"width": width, "rows": result["rows"], "fixed2": fixed2})
        print(
            f"width {width:g}: full {full['macs_mean'] / 1e6:.1f} M MACs, act {act['macs_mean'] / 1e6:.1f} M "
            f"(ratio {act['mac_ratio']:.2f}); speedup / MAC ratio @1 {act['efficiency_p50@1']:.2f}, "
            f"@{args.batch} {act[f'efficiency@{args.batch}']:.2f}; full time per MAC vs ResNet-34 "
            f"@1 {full['time_per_mac_p50_vs_baseline@1']:.2f} "
            f"@{args.batch} {full[f'time_per_mac_vs_baseline@{args.batch}']:.2f}, "
            f"vs ResNet-50 @1 {full['time_per_mac_p50_vs_bottleneck_twin@1']:.2f} "
            f"@{args.batch} {full[f'time_per_mac_vs_bottleneck_twin@{args.batch}']:.2f}",
            flush=True,
        )
        print(
            "    fixed-2 (act's iterations, no halting unit): speedup / MAC ratio "
            f"@1 {fixed2['efficiency_p50@1']:.2f}, @{args.batch} {fixed2[f'efficiency@{args.batch}']:.2f}; "
            f"act time / fixed-2 time @1 {fixed2['act_time_over_fixed2_p50@1']:.2f}, "
            f"@{args.batch} {fixed2[f'act_time_over_fixed2@{args.batch}']:.2f}",
            flush=True,
        )
    write_text_atomic(
        args.json,
        json.dumps({"batch": args.batch, "threads": torch.get_num_threads(), "widths": results}, indent=2) + "\n",
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
