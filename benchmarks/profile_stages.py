"""Where does inference time go? Per-stage wall time and MACs of an IamNN, and a torch.profiler table.

    .venv/bin/python benchmarks/profile_stages.py --batch 1     # the shipped model, BN folded
    .venv/bin/python benchmarks/profile_stages.py --batch 64 --halting full

Explains realised-speedup figures of `iamnn bench`: saving MACs in a stage saves time only in
proportion to that stage's share of the *time*, which on small maps is not its share of the MACs.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

import iamnn
from iamnn.models.fold import fold_batchnorm
from iamnn.runtime import keep_freed_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="iamnn_r34_fmnist")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--halting", default="act")
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()

    keep_freed_memory()
    model = fold_batchnorm(iamnn.create_model(args.model, pretrained=True))
    model.halting = int(args.halting) if args.halting.isdigit() else args.halting
    x = torch.randn(args.batch, model.in_chans, 28, 28)
    from iamnn.data import FashionMNISTDataModule

    try:
        dm = FashionMNISTDataModule(val_size=0, test_subset=args.batch, augment=False)
        dm.setup("test")
        x = next(iter(dm.test_dataloader()))[0]
    except Exception as err:  # noqa: BLE001 - synthetic inputs are fine for timing
        print(f"(synthetic inputs: {err})")
    times = [0.0] * (len(model.stages) + 1)
    iterations = None
    with torch.inference_mode():
        for r in range(args.repeats + 5):
            t = time.perf_counter()
            h = model.maxpool(torch.relu(model.bn1(model.conv1(x))))
            stamps = [time.perf_counter()]
            its = []
            for k, stage in enumerate(model.stages):
                if k:
                    h = model.pool(h)
                h, n, _ = stage(h, model.halting, model.epsilon)
                its.append(n)
                stamps.append(time.perf_counter())
            model.forward_head(h)
            if r >= 5:
                times[0] += stamps[0] - t
                for k in range(len(model.stages)):
                    times[k + 1] += stamps[k + 1] - stamps[k]
            iterations = torch.stack(its, 1).float().mean(0)
    table = model.cost_table((28, 28))
    total = sum(times)
    print(f"{args.model}, halting {args.halting}, batch {args.batch}: mean iterations {iterations.tolist()}")
    print(f"{'part':8} {'ms/batch':>9} {'time %':>7} {'MACs/img':>10} {'MACs %':>7}")
    macs = [table["stem"]] + [
        table["first"][k] + (float(iterations[k]) - 1) * table["block"][k]
        + (min(float(iterations[k]), model.max_iterations[k] - 1) * table["halting"][k] if args.halting == "act" else 0)
        for k in range(len(model.stages))
    ]  # fmt: skip
    for k, (t, m) in enumerate(zip(times, macs, strict=True)):
        name = "stem" if k == 0 else f"stage {k}"
        share = 100 * m / sum(macs)
        print(f"{name:8} {t / args.repeats * 1000:9.3f} {100 * t / total:6.1f}% {m / 1e6:9.2f}M {share:6.1f}%")
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(20):
            model(x)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
