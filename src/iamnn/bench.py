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
from .errors import BenchError, one_line
from .export import OnnxModel, export_onnx
from .models import IamNN, act_kernel
from .models.blocks import BLOCKS
from .models.fold import fold_batchnorm
from .models.halting import HaltingSpec, ponder_loss
from .progress import track
from .weights import DEFAULT_MODEL, Resolved, create_model, resolve

BASELINE_OF = {"r18": "resnet18", "r34": "resnet34", "r50": "resnet50", "r101": "resnet101", "r152": "resnet152"}


@dataclass
class BenchConfig:
    batch_sizes: tuple[int, ...] = (1, 64, 256)
    latency_images: int = 200  # batch-1 latency is measured image by image over this many inputs
    throughput_images: int = 512  # images per throughput measurement (at least 2 batches)
    warmup: int = 3
    fold: bool = True  # inference with BatchNorm folded (per iteration for IamNN), NHWC on both sides
    train_batch: int = 128  # training step act vs full on one batch (0: skip)


def _preset(model: IamNN) -> str:
    if model.preset is None:
        raise BenchError("bench compares a registered IamNN preset (iamnn_r18 … iamnn_r152) with its ResNet")
    return model.preset


def baseline_name(model: IamNN) -> str:
    """The registry name of the network ``model`` is timed against: the one its block names
    (MobileNetV3-Small for IamNN-Mobile's inverted residual), else the ResNet of its preset
    (``iamnn_r34_fmnist`` -> ``resnet34``)."""
    return BLOCKS[model.block_type].baseline or BASELINE_OF[_preset(model)]


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


@dataclass(frozen=True)
class Row:
    """A row of the bench: the name its results are read by, its label, and what it times."""

    name: str  # "baseline", "full", "act", "fixed-1", "no-halt" or "bottleneck_twin"
    label: str  # as printed: "ResNet resnet34", "IamNN full", …
    network: nn.Module | None = None  # a baseline's network; None: the IamNN under ``mode``
    mode: Any = None


def bench_rows(model: IamNN, schedule: list[int], device: torch.device, fold: bool) -> list[Row]:
    """The rows timed against each other: the preset's baseline, IamNN full / act / fixed-1 /
    no-halt (``schedule``, act's most common counts) and, for ``r34``, ResNet-50, the ResNet built
    from IamNN's own bottleneck blocks at the same widths."""
    twin = BLOCKS[model.block_type].twins.get(_preset(model))
    baselines = {"baseline": baseline_name(model), **({"bottleneck_twin": twin} if twin else {})}
    networks = {key: baseline_for(model, name).to(device) for key, name in baselines.items()}
    if fold:  # inference with BatchNorm folded and channels-last, as the IamNN rows run
        networks = {key: fold_batchnorm(b).to(memory_format=torch.channels_last) for key, b in networks.items()}
    rows = [Row("baseline", baseline_label(baselines["baseline"]), networks["baseline"])]
    rows += [Row("full", "IamNN full", mode="full"), Row("act", "IamNN act", mode="act"),
             Row("fixed-1", "IamNN fixed-1", mode=1),
             Row("no-halt", f"IamNN no-halt {'/'.join(map(str, schedule))}", mode=schedule)]  # fmt: skip
    if twin:  # last row: the ResNet built from IamNN's own blocks
        rows.append(Row("bottleneck_twin", baseline_label(twin), networks["bottleneck_twin"]))
    return rows


def row(result: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The row ``name`` of a bench result (see :class:`Row`), or None where it has none."""
    return next((r for r in result["rows"] if r.get("name") == name), None)


def _onnx_runners(
    model: IamNN, rows: list[Row], images: Tensor, folder: Path, threads: int, act_onnx: str | None
) -> list[Any]:
    """onnxruntime sessions for the rows (a baseline, or the IamNN in a halting mode), exported
    from the PyTorch models into ``folder``."""
    hw = tuple(images.shape[-2:])
    runners: list[Any] = []
    for r, spec in enumerate(rows):
        if spec.network is not None:
            path = folder / f"resnet{r}.onnx"
            torch.onnx.export(
                spec.network, (images[:2],), str(path), dynamo=True, input_names=["input"],
                dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}}, verbose=False,  # no "[torch.onnx] ✅"
            )  # fmt: skip
            session = OnnxModel(path, threads)  # its session runs any graph; a ResNet has one output
            runners.append(lambda x, b=session: b.session.run(None, {b.input_name: x.numpy()}))
        elif spec.mode == "act" and act_onnx:
            runners.append(OnnxModel(act_onnx, threads))
        else:
            path = export_onnx(model, folder / f"iamnn{r}.onnx", input_size=hw, halting=spec.mode)
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
    """Measure the rows (:func:`bench_rows`) on ``images`` (already preprocessed, on the target
    device); each row of the result names itself (``"name"``: read it with :func:`row`).

    ``runtime="onnxruntime"`` times ONNX exports of the same models (the IamNN ones keep
    their halting loops in the graph; ``onnx_path``, if given, is timed as the ``act`` row).
    MACs always come from the PyTorch model, whose iteration counts the exports reproduce.
    """
    model = model.eval()
    infer = fold_batchnorm(model) if config.fold else model
    schedule, share = act_schedule(infer, images)
    plan = bench_rows(model, schedule, images.device, config.fold)
    if config.fold and runtime == "torch":
        images = images.contiguous(memory_format=torch.channels_last)
    rows, disturbance = _measure(model, infer, plan, images, config, runtime, onnx_path)
    named = {r["name"]: r for r in rows}
    full, act = named["full"], named["act"]
    _act_speedups(full, act, config.batch_sizes)
    _halting_overhead(full, act, named["no-halt"], config.batch_sizes)
    act["no_halt_iterations"], act["no_halt_share"] = schedule, share
    for key in ("baseline", "bottleneck_twin"):
        if key in named:
            _time_per_mac(full, named[key], key, config.batch_sizes)
    result: dict[str, Any] = {
        "rows": rows, "runtime": runtime, "threads": torch.get_num_threads(), "device": str(images.device),
        "disturbance": disturbance.summary(),
        # whether act's halting steps ran in the C kernel (models/act_kernel.py) or as PyTorch ops
        "act_kernel": runtime == "torch" and config.fold and images.device.type == "cpu" and act_kernel.available(),
    }  # fmt: skip
    if config.train_batch and labels is not None:
        result.update(_train_step(model, images, labels, config.train_batch))
    return result


def _measure(
    model: IamNN, infer: IamNN, plan: list[Row], images: Tensor, config: BenchConfig, runtime: str, onnx: str | None
) -> tuple[list[dict[str, Any]], Disturbance]:
    """One result row per planned row (MACs, batch-1 latencies, throughput per batch size), the
    rows timed taking turns, and how disturbed the machine was meanwhile."""
    shape = tuple(images.shape[1:])
    macs = [float(model_macs(r.network, shape)) if r.network is not None else _avg_macs(infer, images, r.mode)
            for r in plan]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        if runtime == "onnxruntime":
            runners = _onnx_runners(model, plan, images, Path(tmp), torch.get_num_threads(), onnx)
        else:
            runners = [r.network or run_in(infer, r.mode) for r in plan]
        with Disturbance() as disturbance:
            seconds = latencies(runners, images[: config.latency_images], config.warmup)
            speeds = {
                b: throughputs(runners, images, b, max(config.throughput_images, 2 * b), config.warmup)
                for b in config.batch_sizes
            }
    rows = []
    for i, (spec, avg_macs) in enumerate(zip(plan, macs, strict=True)):
        lat = seconds[i]
        rows.append({
            "name": spec.name, "row": spec.label, "params": count_params(spec.network or model), "macs_mean": avg_macs,
            "latency_p50_ms": _pct(lat, 0.5), "latency_p95_ms": _pct(lat, 0.95),
            "latency_mean_ms": sum(lat) / len(lat) * 1000,
            **{f"images_per_s@{b}": speeds[b][i] for b in config.batch_sizes},
        })  # fmt: skip
    return rows, disturbance


def _act_speedups(full: dict[str, Any], act: dict[str, Any], batch_sizes: tuple[int, ...]) -> None:
    """act's MAC ratio over ``full``, its realised speedups, and their quotient (efficiency)."""
    mac_ratio = full["macs_mean"] / act["macs_mean"]
    act["mac_ratio"] = mac_ratio
    # batch-1 latency medians: robust to the latency spikes of a shared machine
    act["speedup_p50_over_full@1"] = full["latency_p50_ms"] / act["latency_p50_ms"]
    act["efficiency_p50@1"] = act["speedup_p50_over_full@1"] / mac_ratio
    for b in batch_sizes:
        speedup = act[f"images_per_s@{b}"] / full[f"images_per_s@{b}"]
        act[f"speedup_over_full@{b}"] = speedup
        act[f"efficiency@{b}"] = speedup / mac_ratio


def _train_step(model: IamNN, images: Tensor, labels: Tensor, train_batch: int) -> dict[str, Any]:
    """A training step of act, full and no-halt on one batch (:func:`train_step_times`), with the
    machine's disturbance meanwhile."""
    batch = min(train_batch, len(images))
    with Disturbance() as disturbance:
        steps = train_step_times(model, images[:batch], labels[:batch])
    steps["speedup"] = steps["full"] / steps["act"]
    steps["mac_ratio"] = steps["full_macs"] / steps["act_macs"]
    steps["speedup_over_mac_ratio"] = steps["speedup"] / steps["mac_ratio"]
    steps["halting_overhead"] = steps["act"] / steps["no-halt"]
    return {"train_step_disturbance": disturbance.summary(), "train_step": {"batch": batch, **steps}}


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


def results_file(runtime: str) -> Path:
    """Where ``iamnn bench`` keeps its results: one file per runtime, so that an onnxruntime run
    does not overwrite the torch run's figures."""
    return Path("benchmarks/results") / ("bench.json" if runtime == "torch" else f"bench.{runtime}.json")


def bench_device(name: str, runtime: str) -> torch.device:
    """The device named by ``--device``, checked: one line instead of a CUDA traceback mid-run."""
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise BenchError(f"--device {name}: {one_line(err)}") from None
    if device.type != "cpu" and runtime != "torch":
        raise BenchError(f"--device {name}: the {runtime} rows run on the CPU; give --device cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError(f"--device {name}: this PyTorch sees no CUDA device")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise BenchError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda"):
        raise BenchError(f"--device {name}: bench runs on cpu or cuda")
    return device


def onnx_source(path: str | Path) -> dict[str, str]:
    """The weights an ``iamnn export`` file was made from, as it recorded them: ``{"weights": FILE}``
    or ``{"pretrained": NAME}``."""
    source = (OnnxModel(path).config or {}).get("source") or {}
    if not source:
        raise BenchError(f"{path}: no weights source recorded; add --weights or --model NAME --pretrained")
    return source


def bench_model(
    model: str = DEFAULT_MODEL,
    weights: str | None = None,
    pretrained: bool = False,
    width: float | None = None,
    stem: str | None = None,
) -> Resolved:
    """The IamNN to bench: a weights file, the shipped weights of ``model``, or ``model`` untrained
    at ``width`` and ``stem``."""
    try:
        loaded = resolve(weights) if weights else resolve(model, pretrained=pretrained, width=width, stem=stem)
    except ValueError as err:  # an untrained model's arguments that do not build
        raise BenchError(str(err)) from None
    if not isinstance(loaded.model, IamNN):
        raise BenchError(f"{model}: bench compares an IamNN with its ResNet; give an iamnn_* model")
    return loaded


def benchmark(
    model: str = DEFAULT_MODEL,
    *,
    weights: str | None = None,
    pretrained: bool = False,
    onnx: str | None = None,
    width: float | None = None,
    stem: str | None = None,
    input_size: int | None = None,
    batch_sizes: tuple[int, ...] = (1, 64, 256),
    threads: int | None = None,
    fold: bool = True,
    device: str = "cpu",
    runtime: str = "torch",
    smoke: bool = False,
) -> tuple[dict[str, Any], Path]:
    """``iamnn bench``: the model (:func:`bench_model`; with ``onnx`` alone, the weights the ONNX
    file was exported from) timed by :func:`run_bench` on its dataset's test images, or synthetic
    ones; returns the result and the file it belongs in (:func:`results_file`). ``smoke``: a tiny
    measurement, for tests. ``threads``: torch's threads (default: torch's choice)."""
    if threads:
        torch.set_num_threads(threads)
    if onnx and not (weights or pretrained):
        source = onnx_source(onnx)
        weights, pretrained, model = source.get("weights"), "pretrained" in source, source.get("pretrained", model)
    if onnx and runtime != "onnxruntime":
        raise BenchError("--onnx needs --runtime onnxruntime")
    target = bench_device(device, runtime)
    loaded = bench_model(model, weights, pretrained, *((None, None) if pretrained or weights else (width, stem)))
    config = BenchConfig(batch_sizes=batch_sizes, fold=fold)
    count = max(512, max(batch_sizes))
    if smoke:
        config = BenchConfig(batch_sizes=batch_sizes, latency_images=4, throughput_images=8, warmup=1, train_batch=8)
        count = max(8, max(batch_sizes))
    images, labels, inputs = bench_inputs(loaded.data, loaded.model, count, input_size)
    net, images, labels = loaded.model.to(target), images.to(target), labels.to(target)
    try:
        result = run_bench(net, images, labels, config, runtime=runtime, onnx_path=onnx)
    except ImportError as err:  # onnxruntime or onnxscript missing: the optional extra
        raise BenchError(str(err)) from None
    result.update(
        model=str(weights) if weights else model, inputs=inputs, input_size=list(images.shape[1:]),
        folded_batchnorm=config.fold, torch=torch.__version__,
    )  # fmt: skip
    return result, results_file(runtime)
