"""Wall-clock benchmark of early exit (``iamnn bench``): does saved compute become saved time?

Everything is measured in one process on the same inputs: the ResNet of the same preset, and the
IamNN in ``full``, ``act`` and fixed-1 modes. For ``act`` the realised speedup over ``full`` is
divided by its MAC ratio: 1.0 means every MAC saved became time saved.
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .cost import count_params, model_macs
from .models import IamNN, create_model
from .models.fold import fold_batchnorm

BASELINE_OF = {"r18": "resnet18", "r34": "resnet34", "r50": "resnet50", "r101": "resnet101", "r152": "resnet152"}


@dataclass
class BenchConfig:
    batch_sizes: tuple[int, ...] = (1, 64, 256)
    latency_images: int = 200  # batch-1 latency is measured image by image over this many inputs
    throughput_images: int = 512  # images per throughput measurement (at least 2 batches)
    warmup: int = 3
    fold: bool = True  # IamNN inference with BatchNorm folded per iteration
    train_batch: int = 128  # training step act vs full on one batch (0: skip)


def baseline_name(model: IamNN) -> str:
    """The registry name of the ResNet matching ``model``'s preset (``iamnn_r34_fmnist`` -> ``resnet34``)."""
    return BASELINE_OF[model.model_config["model"].removeprefix("iamnn_").split("_")[0]]


def baseline_for(model: IamNN) -> nn.Module:
    """The ResNet of ``model``'s preset with the same stem, input channels, classes and width."""
    keep = {k: v for k, v in model.model_config["kwargs"].items() if k in ("num_classes", "in_chans", "stem", "width")}
    return create_model(baseline_name(model), **keep).eval()


@torch.no_grad()
def _fold_resnet(model: nn.Module) -> nn.Module:
    """Conv-BN folding for the baseline as well, so both sides get the same inference treatment."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for module in model.modules():
        for conv, bn in (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")):
            if isinstance(getattr(module, bn, None), nn.BatchNorm2d):
                setattr(module, conv, fuse_conv_bn_eval(getattr(module, conv), getattr(module, bn)))
                setattr(module, bn, nn.Identity())
        if isinstance(getattr(module, "downsample", None), nn.Sequential):
            module.downsample = fuse_conv_bn_eval(module.downsample[0], module.downsample[1])
    return model


def _with_mode(net: IamNN, mode: Any):
    """A callable that runs ``net`` in halting ``mode`` (the folded copy is shared by three rows)."""

    def run(x: Tensor) -> Any:
        net.halting = mode
        return net(x)

    return run


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
def _latencies(runners: list[Any], images: Tensor, warmup: int) -> list[list[float]]:
    """Batch-1 seconds per image for every runner, interleaved image by image so that the
    machine's drift (other load, clock changes) hits every row alike."""
    for run in runners:
        for i in range(warmup):
            run(images[i : i + 1])
    times: list[list[float]] = [[] for _ in runners]
    for i in range(len(images)):
        for r, run in enumerate(runners):
            times[r].append(_timed(run, images[i : i + 1]))
    return times


@torch.inference_mode()
def _throughputs(runners: list[Any], images: Tensor, batch: int, total: int, warmup: int) -> list[float]:
    """Images per second at batch size ``batch`` over ``total`` images (cycling through ``images``),
    the runners taking turns batch by batch."""
    n_batches = max(2, total // batch)
    batches = [images[(i * batch) % len(images) :][:batch] for i in range(n_batches)]
    batches = [b if len(b) == batch else images[:batch] for b in batches]
    for run in runners:
        for b in batches[: max(1, warmup // 2)]:
            run(b)
    seconds = [0.0] * len(runners)
    for b in batches:
        for r, run in enumerate(runners):
            seconds[r] += _timed(run, b)
    return [n_batches * batch / t for t in seconds]


@torch.inference_mode()
def _avg_macs(model: nn.Module, images: Tensor) -> float:
    macs = [model(images[i : i + 256], return_stats=True)[1].macs for i in range(0, len(images), 256)]
    return float(torch.cat(macs).float().mean())


def _pct(values: list[float], q: float) -> float:
    return float(torch.tensor(values).quantile(q)) * 1000


def train_step_times(model: IamNN, images: Tensor, labels: Tensor, repeats: int = 5) -> dict[str, float]:
    """Seconds per training step (forward, backward, SGD) for ``act`` and ``full`` on one batch."""
    out = {}
    for mode in ("full", "act"):
        net = copy.deepcopy(model).train()
        net.halting = mode
        opt = torch.optim.SGD(net.parameters(), lr=0.0)  # lr 0: every repeat sees the same network
        times = []
        for i in range(repeats + 1):
            t = time.perf_counter()
            logits, stats = net(images, return_stats=True)
            loss = nn.functional.cross_entropy(logits, labels) + 0.01 * stats.ponder.sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            _sync(images.device)
            if i:  # the first step warms up
                times.append(time.perf_counter() - t)
        out[mode] = sorted(times)[len(times) // 2]
        out[f"{mode}_macs"] = float(stats.macs.float().mean())
    return out


def _onnx_runners(model: IamNN, baseline: nn.Module, images: Tensor, folder: Path, threads: int, act_onnx: str | None):
    """onnxruntime sessions for the four rows, exported from the PyTorch models into ``folder``."""
    from .export import OnnxModel, export_onnx

    hw = tuple(images.shape[-2:])
    base_path = folder / "baseline.onnx"
    torch.onnx.export(
        baseline, (images[:2],), str(base_path), dynamo=True, input_names=["input"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}},
    )  # fmt: skip
    base = OnnxModel(base_path, threads)  # its session runs any graph; the baseline has one output
    runners: list[Any] = [lambda x: base.session.run(None, {base.input_name: x.numpy()})]
    for mode in ("full", "act", 1):
        if mode == "act" and act_onnx:
            runners.append(OnnxModel(act_onnx, threads))
            continue
        net = copy.deepcopy(model)
        net.halting = mode
        runners.append(OnnxModel(export_onnx(net, folder / f"iamnn_{mode}.onnx", input_size=hw), threads))
    return runners


def run_bench(
    model: IamNN,
    images: Tensor,
    labels: Tensor | None,
    config: BenchConfig,
    runtime: str = "torch",
    onnx_path: str | None = None,
) -> dict[str, Any]:
    """Measure the four rows on ``images`` (already preprocessed, on the target device).

    ``runtime="onnxruntime"`` times ONNX exports of the same four models (the IamNN ones keep
    their halting loops in the graph; ``onnx_path``, if given, is timed as the ``act`` row).
    MACs always come from the PyTorch model, whose iteration counts the exports reproduce.
    """
    model = model.eval()
    baseline = baseline_for(model).to(images.device)
    infer = fold_batchnorm(model) if config.fold else model
    if config.fold:
        baseline = _fold_resnet(baseline)
    names = [f"ResNet {baseline_name(model)}", "IamNN full", "IamNN act", "IamNN fixed-1"]
    modes: list[Any] = [None, "full", "act", 1]
    macs = [float(model_macs(baseline, tuple(images.shape[1:])))]
    for mode in modes[1:]:
        infer.halting = mode
        macs.append(_avg_macs(infer, images))
    with tempfile.TemporaryDirectory() as tmp:
        if runtime == "onnxruntime":
            runners = _onnx_runners(model, baseline, images, Path(tmp), torch.get_num_threads(), onnx_path)
        else:
            runners = [baseline] + [_with_mode(infer, mode) for mode in modes[1:]]
        rows = []
        latencies = _latencies(runners, images[: config.latency_images], config.warmup)
        speeds = {
            b: _throughputs(runners, images, b, max(config.throughput_images, 2 * b), config.warmup)
            for b in config.batch_sizes
        }
        for r, (name, mode, avg_macs) in enumerate(zip(names, modes, macs, strict=True)):
            lat = latencies[r]
            row = {
                "row": name,
                "params": count_params(model if mode is not None else baseline),
                "macs_mean": avg_macs,
                "latency_p50_ms": _pct(lat, 0.5),
                "latency_p95_ms": _pct(lat, 0.95),
                "latency_mean_ms": sum(lat) / len(lat) * 1000,
            }
            for b in config.batch_sizes:
                row[f"images_per_s@{b}"] = speeds[b][r]
            rows.append(row)
    infer.halting = model.halting
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
    base = rows[0]
    full["time_per_mac_p50_vs_baseline@1"] = (full["latency_p50_ms"] / full["macs_mean"]) / (
        base["latency_p50_ms"] / base["macs_mean"]
    )
    for b in config.batch_sizes:
        full[f"time_per_mac_vs_baseline@{b}"] = (base[f"images_per_s@{b}"] * base["macs_mean"]) / (
            full[f"images_per_s@{b}"] * full["macs_mean"]
        )
    result: dict[str, Any] = {
        "rows": rows, "runtime": runtime, "threads": torch.get_num_threads(), "device": str(images.device),
    }  # fmt: skip
    if config.train_batch and labels is not None:
        batch = min(config.train_batch, len(images))
        steps = train_step_times(model, images[:batch], labels[:batch])
        steps["speedup"] = steps["full"] / steps["act"]
        steps["mac_ratio"] = steps["full_macs"] / steps["act_macs"]
        steps["speedup_over_mac_ratio"] = steps["speedup"] / steps["mac_ratio"]
        result["train_step"] = {"batch": batch, **steps}
    return result
