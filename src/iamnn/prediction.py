"""Classify images with a trained model: class, confidence, iterations, MACs.

``iamnn.predict(images, "iamnn_r34_fmnist")`` in Python; ``iamnn predict`` on the command line.
The preprocessing (grey or RGB, size, mean, std) and the class names come from the weights file.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn
from torchvision import transforms

from .export import OnnxModel
from .files import IMAGE_SUFFIXES, convert_image, read_image
from .models import IamNN, build_model
from .models.fold import fold_batchnorm
from .models.halting import HaltingSpec, other_regime_note
from .weights import DEFAULT_MODEL, WeightsError, checked_config, resolve


@dataclass
class Prediction:
    path: str
    label: str
    index: int
    confidence: float
    iterations: list[int]
    macs: int
    #: under a cascade, the 0-based pass whose answer the image left with; else None
    answered_by: int | None = None


def expand_paths(paths: list[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files as given; directories expanded to the image files they hold (sorted, not recursive).

    Also returns ``(path, reason)`` for each directory that holds no image file or cannot be read.
    """
    out: list[Path] = []
    skipped: list[tuple[str, str]] = []
    for raw in paths:
        p = Path(raw)
        if str(raw) == "":  # Path("") is ".": an empty argument would classify the current folder
            skipped.append(("''", "an empty path"))
            continue
        if p.is_dir():
            try:
                images = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            except OSError as err:  # e.g. no read permission: the other paths are still answered
                skipped.append((str(p), f"directory cannot be read ({skip_reason(err)})"))
                continue
            out += images
            if not images:
                skipped.append((str(p), f"directory holds no image file ({', '.join(sorted(IMAGE_SUFFIXES))})"))
        elif p.exists() and not p.is_file():  # a FIFO would block the read forever; a device, a socket
            skipped.append((str(p), "not a regular file"))
        else:
            out.append(p)
    return out, skipped


def skip_reason(err: Exception) -> str:
    """Why a file is not classified, in words: "no such file", "permission denied", …"""
    if isinstance(err, ValueError):
        return str(err)
    words = {FileNotFoundError: "no such file", IsADirectoryError: "a directory, not an image file",
             PermissionError: "permission denied"}  # fmt: skip
    return words.get(type(err), getattr(err, "strerror", None) or type(err).__name__)


def load_image(path: Path | Image.Image, data: dict[str, Any]) -> Tensor:
    """An image file (or a PIL image) as the model's normalised (C, H, W) input; ValueError if it
    is not an image."""
    # the decoder of training on a folder (data.folder): the model sees what it was trained on
    img = path if isinstance(path, Image.Image) else read_image(path, data["in_chans"])
    return create_transform(resolve_data_config(data))(img)


def resolve_data_config(model: nn.Module | Mapping[str, Any]) -> dict[str, Any]:
    """The preprocessing ``model`` was trained with, as timm's ``resolve_data_config`` gives it:
    ``input_size`` (C, H, W), ``interpolation``, ``mean``, ``std`` and ``crop_pct`` (an image is
    resized to ``input_size / crop_pct``, then centre-cropped to ``input_size``).

    ``model``: a model loaded from weights (``create_model(name, pretrained=True)``, ``load_model``),
    whose file carries its preprocessing as ``model.data_config``, or such a data config itself.
    """
    data = model if isinstance(model, Mapping) else getattr(model, "data_config", None)
    if not data:
        raise ValueError("the model carries no preprocessing (input size, mean, std): load it from a weights file")
    h, w = data["input_size"]
    return {
        "input_size": (data["in_chans"], h, w),
        "interpolation": "bilinear",
        "mean": tuple(data["mean"]),
        "std": tuple(data["std"]),
        "crop_pct": float(data.get("crop_pct") or 1.0),  # 1: resized to the input size itself
    }


class ConvertImage:
    """A PIL image as the model's channels ask: grey ("L") or RGB, 8 bits (``files.convert_image``)."""

    def __init__(self, in_chans: int) -> None:
        self.in_chans = in_chans

    def __call__(self, img: Image.Image) -> Image.Image:
        return convert_image(img, self.in_chans)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(in_chans={self.in_chans})"


def create_transform(config: Mapping[str, Any]) -> transforms.Compose:
    """The transform from a PIL image to the model's input tensor (C, H, W) for a
    :func:`resolve_data_config` config: what ``iamnn.predict`` and ``iamnn predict`` feed the model.

    Grey or RGB, then float pixels in [0, 1] resized (antialiased) so that the shorter side is
    ``input_size / crop_pct`` (both sides for a non-square input), centre-cropped to ``input_size``,
    normalised with ``mean`` and ``std``. With ``crop_pct`` 1 an image at the input size is left as it is.
    """
    chans, h, w = config["input_size"]
    crop_pct = float(config.get("crop_pct", 1.0))
    side = [int(h / crop_pct), int(w / crop_pct)] if h != w else int(h / crop_pct)
    return transforms.Compose([
        ConvertImage(chans),
        transforms.PILToTensor(),
        transforms.ConvertImageDtype(torch.float32),  # x / 255, as the data modules scale their pixels
        transforms.Resize(side, transforms.InterpolationMode(config.get("interpolation", "bilinear")), antialias=True),
        transforms.CenterCrop([h, w]),
        transforms.Normalize(config["mean"], config["std"]),
    ])  # fmt: skip


# images -> logits, iterations, macs, and the pass that answered under a cascade (else None)
Runner = Callable[[Tensor], tuple[Tensor, Tensor, Tensor, Tensor | None]]


def torch_runner(model: nn.Module, halting: HaltingSpec | None = None) -> Runner:
    """The model's eval forward under ``halting`` (default: its own); an IamNN runs
    BatchNorm-folded, channels-last (``fold.py``): the same predictions, faster."""
    model = fold_batchnorm(model) if isinstance(model, IamNN) else model.eval()

    def run(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        logits, stats = model(x, return_stats=True, halting=halting)
        return logits, stats.iterations, stats.macs, stats.answered_by

    return run


def onnx_runner(path: str | Path, threads: int | None = None) -> tuple[Runner, dict[str, Any]]:
    """An exported model run by onnxruntime; MACs from its iteration counts (the model's cost table)."""
    onnx = OnnxModel(path, threads)
    if not onnx.config or "model" not in onnx.config:
        raise ValueError(f"{path}: the ONNX file carries no iamnn config (was it written by `iamnn export`?)")
    try:  # the same schema as a weights file's config: a crafted input size must not allocate gigabytes
        config = checked_config(onnx.config, path)
    except WeightsError as err:
        raise ValueError(str(err)) from None
    with torch.device("meta"):  # only the cost table is needed: no weights are allocated
        cost_model = build_model(config["model"], **config.get("kwargs", {}))

    def run(x: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        logits, iterations = onnx(x)
        iterations = torch.from_numpy(iterations)
        return torch.from_numpy(logits), iterations, cost_model.macs(iterations, tuple(x.shape[-2:])), None

    return run, config


@torch.no_grad()
def predict_files(
    run: Runner, data: dict[str, Any], paths: list[str | Path], batch_size: int = 64
) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Predictions for every readable image, and ``(path, reason)`` for every file that is not one."""
    good: list[tuple[Path, Tensor]] = []
    files, bad = expand_paths(paths)
    for path in files:
        try:
            good.append((path, load_image(path, data)))
        except (ValueError, OSError) as err:
            bad.append((str(path), skip_reason(err)))
    results = classify(run, [(str(path), x) for path, x in good], data.get("class_names") or [], batch_size)
    return results, bad


def predict(
    images: str | Path | Image.Image | list[str | Path | Image.Image],
    model: str | Path | nn.Module = DEFAULT_MODEL,
    halting: HaltingSpec | None = None,
    batch_size: int = 64,
) -> list[Prediction]:
    """Classify images with a trained model, preprocessed as it was trained.

    Args:
        images: image files, folders of them, or PIL images (one or a list).
        model: a registered name with shipped weights (``"iamnn_r34_fmnist"``), a weights file
            (safetensors or Lightning ``.ckpt``), a run folder, or a model loaded from one
            (``load_model``, ``create_model(..., pretrained=True)``), which carries its
            preprocessing; as ``iamnn.weights.resolve`` reads them.
        halting: the halting policy to run (default: the model's own), e.g. ``"full"`` or ``2``.
            Another regime than the model's own warns: its BatchNorm statistics are the own
            regime's; ``iamnn recalibrate`` writes weights with them re-estimated for another.

    Returns one :class:`Prediction` per image (class name, index, confidence, iterations per
    stage, MACs), in order; an unreadable file raises ``ValueError`` naming it.
    """
    loaded = resolve(model)
    net, data = loaded.model, loaded.data
    if isinstance(net, IamNN) and (note := other_regime_note(net.halting, halting)):
        warnings.warn(f"{note}: predict with the weights of `iamnn recalibrate --weights FILE --halting H -o NEW`",
                      stacklevel=2)  # fmt: skip
    if not data:
        raise ValueError("the model carries no preprocessing (input size, mean, std): load it from a weights file")
    inputs = [item for image in (images if isinstance(images, list) else [images]) for item in _inputs(image, data)]
    return classify(torch_runner(net, halting), inputs, loaded.class_names, batch_size)


def _inputs(image: str | Path | Image.Image, data: dict[str, Any]) -> list[tuple[str, Tensor]]:
    """``(name, preprocessed image)`` for a PIL image, an image file or each image of a folder;
    ValueError naming the first that cannot be read."""
    if isinstance(image, Image.Image):
        return [("<PIL image>", load_image(image, data))]
    files, empty = expand_paths([image])
    if empty:
        raise ValueError(f"{empty[0][0]}: {empty[0][1]}")
    inputs = []
    for path in files:
        try:
            inputs.append((str(path), load_image(path, data)))
        except (ValueError, OSError) as err:
            raise ValueError(f"{path}: {skip_reason(err)}") from None
    return inputs


@torch.no_grad()
def classify(run: Runner, inputs: list[tuple[str, Tensor]], names: list[str], batch_size: int = 64) -> list[Prediction]:
    """One :class:`Prediction` per ``(name, preprocessed image)``, in batches of ``batch_size``."""
    out = []
    for i in range(0, len(inputs), batch_size):
        chunk = inputs[i : i + batch_size]
        logits, iterations, macs, answered = run(torch.stack([x for _, x in chunk]))
        conf, index = logits.softmax(1).max(1)
        for j, (name, _) in enumerate(chunk):
            k = int(index[j])
            label = names[k] if k < len(names) else str(k)
            by = None if answered is None else int(answered[j])
            out.append(Prediction(name, label, k, float(conf[j]), iterations[j].tolist(), int(macs[j]), by))
    return out
