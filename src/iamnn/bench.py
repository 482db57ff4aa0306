"""Wall-clock benchmark of early exit (``iamnn bench``): does saved compute become saved time?

Everything is measured in one process on the same inputs: the ResNet of the same preset, and the
IamNN in ``full``, ``act``, fixed-1 and "no-halt" modes. For ``act`` the realised speedup over
``full`` is divided by its MAC ratio: 1.0 means every MAC saved became time saved.

no-halt runs in every stage the number of iterations ``act`` chose most often on the bench's
images, as a fixed per-stage count: no halting unit, no ACT bookkeeping, no weighted sum of states.
It is the time ``act`` would take if halting cost nothing, so act / no-halt is what the halting
machinery costs, and no-halt's own speedup over ``full`` divided by its MAC ratio is the best
speedup / MAC ratio any halting unit could reach on the machine (below 1 where the iterations
skipped cost less time per MAC than the ones run).
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .cost import count_params, model_macs
from .data import datamodule_class
from .export import OnnxModel, export_onnx
from .models import IamNN, act_kernel
from .models.fold import fold_batchnorm
from .models.halting import HaltingSpec, ponder_loss
from .progress import track
from .weights import create_model

BASELINE_OF = {"r18": "resnet18", "r34": "resnet34", "r50": "resnet50", "r101": "resnet101", "r152": "resnet152"}


@dataclass
class BenchConfig:
    batch_sizes: tuple[int, ...] = (1, 64, 256)
    latency_images: int = 200  # batch-1 latency is measured image by image over this many inputs
    throughput_images: int = 512  # images per throughput measurement (at least 2 batches)
    warmup: int = 3
    fold: bool = True  # inference with BatchNorm folded (per iteration for IamNN), NHWC on both sides
    train_batch: int = 128  # training step act vs full on one batch (0: skip)


# the ResNet whose blocks are IamNN's own (bottleneck, same widths), where the preset's is not
BOTTLENECK_TWIN = {"r34": "resnet50"}


# IamNN-Mobile's reference: what a user would otherwise pick for cheap inference, at its own width 1
MOBILE_BASELINE = "mobilenet_v3_small"


def _preset(model: IamNN) -> str:
    return model.model_config["model"].removeprefix("iamnn_").removeprefix("mobile_").split("_")[0]


def _mobile(model: IamNN) -> bool:
    return getattr(model, "block_type", "bottleneck") == "inverted_residual"


def baseline_name(model: IamNN) -> str:
    """The registry name of the network ``model`` is timed against: the ResNet of its preset
    (``iamnn_r34_fmnist`` -> ``resnet34``), or MobileNetV3-Small for IamNN-Mobile."""
    return MOBILE_BASELINE if _mobile(model) else BASELINE_OF[_preset(model)]


def baseline_label(name: str) -> str:
    return f"{'MobileNet' if name.startswith('mobilenet') else 'ResNet'} {name}"


def baseline_for(model: IamNN, name: str | None = None) -> nn.Module:
    """The baseline of ``model`` (or the registered network ``name``) with the same stem, input
    channels and classes, and the same width for a ResNet (a MobileNet keeps its width 1)."""
    name = name or baseline_name(model)
    shared = ("num_classes", "in_chans", "stem") + (() if name.startswith("mobilenet") else ("width",))
    keep = {k: v for k, v in model.model_config["kwargs"].items() if k in shared}
    return create_model(name, **keep).eval()


def run_in(net: nn.Module, halting: HaltingSpec | None) -> Callable[[Tensor], Any]:
    """A callable that runs ``net`` under ``halting`` (one folded copy serves several rows)."""
    return lambda x: net(x, halting=halting)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(run: Any, x: Tensor) -> float:
    _sync(x.device)
    t = time.perf_counter()
    run(x)
    _sync(x.device)
    return time.perf_counter() - t


@torch.inference_mode()
def latencies(runners: list[Any], images: Tensor, warmup: int) -> list[list[float]]:
    """Batch-1 seconds per image for every runner, interleaved image by image so that the
    machine's drift (other load, clock changes) hits every row alike."""
    for run in runners:
        for i in range(warmup):
            run(images[i : i + 1])
    times: list[list[float]] = [[] for _ in runners]
    for i in track(range(len(images)), f"timing batch 1 ({len(runners)} runners)"):
        for r, run in enumerate(runners):
            times[r].append(_timed(run, images[i : i + 1]))
    return times


@torch.inference_mode()
def throughputs(runners: list[Any], images: Tensor, batch: int, total: int, warmup: int) -> list[float]:
    """Images per second at batch size ``batch`` over ``total`` images (cycling through ``images``),
    the runners taking turns batch by batch."""
    n_batches = max(2, total // batch)
    batches = [images[(i * batch) % len(images) :][:batch] for i in range(n_batches)]
    batches = [b if len(b) == batch else images[:batch] for b in batches]
    for run in runners:
        for b in batches[: max(1, warmup // 2)]:
            run(b)
    seconds = [0.0] * len(runners)
    for b in track(batches, f"timing batch {batch} ({len(runners)} runners)"):
        for r, run in enumerate(runners):
            seconds[r] += _timed(run, b)
    return [n_batches * batch / t for t in seconds]


@torch.inference_mode()
def _avg_macs(model: nn.Module, images: Tensor, halting: HaltingSpec | None = None) -> float:
    macs = [model(images[i : i + 256], return_stats=True, halting=halting)[1].macs for i in range(0, len(images), 256)]
    return float(torch.cat(macs).float().mean())


@torch.inference_mode()
def act_schedule(model: IamNN, images: Tensor) -> tuple[list[int], float]:
    """``act``'s most common iteration count per stage on ``images`` (no-halt's fixed schedule), and
    the share of the images that ran exactly that schedule in every stage."""
    its = torch.cat([model(images[i : i + 256], return_stats=True, halting="act")[1].iterations
                     for i in range(0, len(images), 256)])  # fmt: skip
    counts = modal_schedule(its)
    return counts, float((its == torch.tensor(counts)).all(dim=1).float().mean())


def modal_schedule(iterations: Tensor) -> list[int]:
    """The most common iteration count of each stage in ``iterations`` (B, stages)."""
    return [int(c) for c in iterations.mode(dim=0).values]


def _pct(values: list[float], q: float) -> float:
    return float(torch.tensor(values).quantile(q)) * 1000


def train_step_times(
    model: IamNN, images: Tensor, labels: Tensor, repeats: int = 9, channels_last: bool = True
) -> dict[str, Any]:
    """Median seconds per training step (forward, backward, SGD) for ``act``, ``full`` and no-halt
    (``act``'s most common training-mode iteration counts, fixed) on one batch, taking turns step
    by step, in the memory format ``iamnn fit`` trains in (``Classifier(channels_last=True)``)."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    images = images.contiguous(memory_format=memory_format)
    nets = {mode: copy.deepcopy(model).train().to(memory_format=memory_format) for mode in ("full", "act", "no-halt")}
    nets["full"].halting = "full"
    with torch.no_grad():
        its = nets["act"](images, return_stats=True, halting="act")[1].iterations
    nets["act"].halting, nets["no-halt"].halting = "act", modal_schedule(its)
    seconds, macs = time_train_steps(nets, images, labels, repeats)
    return seconds | {f"{mode}_macs": m for mode, m in macs.items()} | {"no_halt_iterations": nets["no-halt"].halting}


def time_train_steps(
    nets: dict[str, IamNN], images: Tensor, labels: Tensor, repeats: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds per training step of each of ``nets`` on one batch, the nets taking turns
    step by step (so that drifts of the machine hit all alike; the first step warms up), and the
    mean MACs per image of each. SGD with learning rate 0: every step sees the same weights."""
    opts = {name: torch.optim.SGD(net.parameters(), lr=0.0) for name, net in nets.items()}
    times: dict[str, list[float]] = {name: [] for name in nets}
    macs = {}
    for i in range(repeats + 1):
        for name, net in nets.items():
            t = time.perf_counter()
            logits, stats = net(images, return_stats=True)
            loss = nn.functional.cross_entropy(logits, labels) + 0.01 * ponder_loss(net.policies(), stats.ponder)
            opts[name].zero_grad()
            loss.backward()
            opts[name].step()
            _sync(images.device)
            if i:
                times[name].append(time.perf_counter() - t)
            macs[name] = float(stats.macs.float().mean())
    return {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}, macs


def _onnx_runners(
    model: IamNN,
    resnets: list[nn.Module | None],
    modes: list[Any],
    images: Tensor,
    folder: Path,
    threads: int,
    act_onnx: str | None,
) -> list[Any]:
    """onnxruntime sessions for the rows (a ResNet, or the IamNN in a halting mode), exported
    from the PyTorch models into ``folder``."""
    hw = tuple(images.shape[-2:])
    runners: list[Any] = []
    for r, (resnet, mode) in enumerate(zip(resnets, modes, strict=True)):
        if resnet is not None:
            path = folder / f"resnet{r}.onnx"
            torch.onnx.export(
                resnet, (images[:2],), str(path), dynamo=True, input_names=["input"],
                dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}}, verbose=False,  # no "[torch.onnx] ✅"
            )  # fmt: skip
            session = OnnxModel(path, threads)  # its session runs any graph; a ResNet has one output
            runners.append(lambda x, b=session: b.session.run(None, {b.input_name: x.numpy()}))
        elif mode == "act" and act_onnx:
            runners.append(OnnxModel(act_onnx, threads))
        else:
            path = export_onnx(model, folder / f"iamnn{r}.onnx", input_size=hw, halting=mode)
            runners.append(OnnxModel(path, threads))
    return runners


def _halting_overhead(
    full: dict[str, Any], act: dict[str, Any], no_halt: dict[str, Any], batch_sizes: tuple[int, ...]
) -> None:
    """What the halting machinery costs (act's time over no-halt's: 1.0 = nothing) and the bound it
    leaves (no-halt's speedup over ``full`` per MAC ratio), at batch 1 (medians) and each batch size."""
    bound_macs = full["macs_mean"] / no_halt["macs_mean"]
    act["halting_overhead_p50@1"] = act["latency_p50_ms"] / no_halt["latency_p50_ms"]
    act["no_halt_bound_p50@1"] = full["latency_p50_ms"] / no_halt["latency_p50_ms"] / bound_macs
    for b in batch_sizes:
        act[f"halting_overhead@{b}"] = no_halt[f"images_per_s@{b}"] / act[f"images_per_s@{b}"]
        act[f"no_halt_bound@{b}"] = no_halt[f"images_per_s@{b}"] / full[f"images_per_s@{b}"] / bound_macs


def _time_per_mac(full: dict[str, Any], base: dict[str, Any], key: str, batch_sizes: tuple[int, ...]) -> None:
    """IamNN ``full``'s time per MAC over ``base``'s, at batch 1 (latency medians) and each batch size."""
    full[f"time_per_mac_p50_vs_{key}@1"] = (full["latency_p50_ms"] / full["macs_mean"]) / (
        base["latency_p50_ms"] / base["macs_mean"]
    )
    for b in batch_sizes:
        full[f"time_per_mac_vs_{key}@{b}"] = (base[f"images_per_s@{b}"] * base["macs_mean"]) / (
            full[f"images_per_s@{b}"] * full["macs_mean"]
        )


def machine_cpu_seconds() -> float | None:
    """CPU seconds spent so far by every process on the machine (Linux ``/proc/stat``, first line:
    user, nice, system, idle, iowait, irq, softirq, steal; steal counts as a neighbour's use);
    None where there is no ``/proc/stat``."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks + [0] * (8 - len(ticks))
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class Disturbance:
    """How many cores other processes kept busy while the block ran: the machine's CPU time minus
    this process's, over the wall time. A benchmark that shares its cores is off by any factor
    (20x has been seen), so the result says so instead of passing for a measurement."""

    LIMIT = 0.25  # cores: above this on average, the figures are not trustworthy

    def __enter__(self) -> Disturbance:
        self._start = (machine_cpu_seconds(), _own_cpu_seconds(), time.perf_counter())
        return self

    def __exit__(self, *exc: object) -> None:
        machine, own, wall = machine_cpu_seconds(), _own_cpu_seconds(), time.perf_counter()
        machine0, own0, wall0 = self._start
        self.wall_s = wall - wall0
        self.other_cores = (
            None if machine is None or machine0 is None
            else max(0.0, (machine - machine0) - (own - own0)) / max(self.wall_s, 1e-9)
        )  # fmt: skip

    def summary(self) -> dict[str, Any]:
        return {"other_processes_cores": self.other_cores, "cores": os.cpu_count(), "wall_s": self.wall_s,
                "trustworthy": self.other_cores is None or self.other_cores <= self.LIMIT}  # fmt: skip


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run_bench(
    model: IamNN,
    images: Tensor,
    labels: Tensor | None,
    config: BenchConfig,
    runtime: str = "torch",
    onnx_path: str | None = None,
) -> dict[str, Any]:
    """Measure the rows on ``images`` (already preprocessed, on the target device): the preset's
    ResNet, IamNN full / act / fixed-1 and, for ``r34``, ResNet-50 (the ResNet made of IamNN's own
    bottleneck blocks, at the same widths: the fair reference for IamNN's time per MAC).

    ``runtime="onnxruntime"`` times ONNX exports of the same models (the IamNN ones keep
    their halting loops in the graph; ``onnx_path``, if given, is timed as the ``act`` row).
    MACs always come from the PyTorch model, whose iteration counts the exports reproduce.
    """
    model = model.eval()
    infer = fold_batchnorm(model) if config.fold else model
    schedule, share = act_schedule(infer, images)
    names = [baseline_label(baseline_name(model)), "IamNN full", "IamNN act", "IamNN fixed-1",
             f"IamNN no-halt {'/'.join(map(str, schedule))}"]  # fmt: skip
    modes: list[Any] = [None, "full", "act", 1, schedule]
    baselines = [baseline_for(model).to(images.device)]
    twin = None if _mobile(model) else BOTTLENECK_TWIN.get(_preset(model))
    if twin:  # last row: the ResNet built from IamNN's own blocks
        baselines.append(baseline_for(model, twin).to(images.device))
        names.append(baseline_label(twin))
        modes.append(None)
    if config.fold:
        baselines = [fold_batchnorm(b).to(memory_format=torch.channels_last) for b in baselines]
        if runtime == "torch":
            images = images.contiguous(memory_format=torch.channels_last)
    resnets = [baselines[0], None, None, None, None, *baselines[1:]]  # the ResNet of each row, None for IamNN's
    macs = []
    for resnet, mode in zip(resnets, modes, strict=True):
        if resnet is not None:
            macs.append(float(model_macs(resnet, tuple(images.shape[1:]))))
        else:
            macs.append(_avg_macs(infer, images, mode))
    with tempfile.TemporaryDirectory() as tmp:
        if runtime == "onnxruntime":
            runners = _onnx_runners(model, resnets, modes, images, Path(tmp), torch.get_num_threads(), onnx_path)
        else:
            runners = [resnet or run_in(infer, mode) for resnet, mode in zip(resnets, modes, strict=True)]
        rows = []
        with Disturbance() as disturbance:
            seconds = latencies(runners, images[: config.latency_images], config.warmup)
            speeds = {
                b: throughputs(runners, images, b, max(config.throughput_images, 2 * b), config.warmup)
                for b in config.batch_sizes
            }
        for r, (name, resnet, avg_macs) in enumerate(zip(names, resnets, macs, strict=True)):
            lat = seconds[r]
            row = {
                "row": name,
                "params": count_params(resnet or model),
                "macs_mean": avg_macs,
                "latency_p50_ms": _pct(lat, 0.5),
                "latency_p95_ms": _pct(lat, 0.95),
                "latency_mean_ms": sum(lat) / len(lat) * 1000,
            }
            for b in config.batch_sizes:
                row[f"images_per_s@{b}"] = speeds[b][r]
            rows.append(row)
    full, act = rows[1], rows[2]
    mac_ratio = full["macs_mean"] / act["macs_mean"]
    act["mac_ratio"] = mac_ratio
    # batch-1 latency medians: robust to the latency spikes of a shared machine
    act["speedup_p50_over_full@1"] = full["latency_p50_ms"] / act["latency_p50_ms"]
    act["efficiency_p50@1"] = act["speedup_p50_over_full@1"] / mac_ratio
    for b in config.batch_sizes:
        speedup = act[f"images_per_s@{b}"] / full[f"images_per_s@{b}"]
        act[f"speedup_over_full@{b}"] = speedup
        act[f"efficiency@{b}"] = speedup / mac_ratio
    _halting_overhead(full, act, rows[4], config.batch_sizes)
    act["no_halt_iterations"], act["no_halt_share"] = schedule, share
    for key, base in (("baseline", rows[0]), ("bottleneck_twin", rows[-1] if twin else None)):
        if base is not None:
            _time_per_mac(full, base, key, config.batch_sizes)
    result: dict[str, Any] = {
        "rows": rows, "runtime": runtime, "threads": torch.get_num_threads(), "device": str(images.device),
        "disturbance": disturbance.summary(),
        # whether act's halting steps ran in the C kernel (models/act_kernel.py) or as PyTorch ops
        "act_kernel": runtime == "torch" and config.fold and images.device.type == "cpu" and act_kernel.available(),
    }  # fmt: skip
    if config.train_batch and labels is not None:
        batch = min(config.train_batch, len(images))
        with Disturbance() as disturbance:
            steps = train_step_times(model, images[:batch], labels[:batch])
        result["train_step_disturbance"] = disturbance.summary()
        steps["speedup"] = steps["full"] / steps["act"]
        steps["mac_ratio"] = steps["full_macs"] / steps["act_macs"]
        steps["speedup_over_mac_ratio"] = steps["speedup"] / steps["mac_ratio"]
        steps["halting_overhead"] = steps["act"] / steps["no-halt"]
        result["train_step"] = {"batch": batch, **steps}
    return result


def bench_inputs(
    data: dict[str, Any] | None, model: nn.Module, count: int, input_size: int | None, seed: int = 0
) -> tuple[Tensor, Tensor, str]:
    """Real test images when the model's dataset is here, else a seeded synthetic set."""
    note = ""
    if data and input_size is None:
        try:
            dm = datamodule_class(data["dataset"])(val_size=0, test_subset=count, augment=False)
            dm.setup("test")
            xs, ys = zip(*(dm.test_set[i] for i in range(len(dm.test_set))), strict=True)
            return torch.stack(xs), torch.stack(ys), f"{data['dataset']} test images"
        except Exception as err:  # noqa: BLE001 - missing data falls back to synthetic inputs
            note = f" ({data['dataset']} unavailable: {str(err).splitlines()[0][:80]})"
    size = input_size or (data["input_size"][0] if data else 32)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(count, model.in_chans, size, size, generator=g)
    return x, torch.randint(0, model.num_classes, (count,), generator=g), f"synthetic N(0,1) {size}x{size}{note}"
