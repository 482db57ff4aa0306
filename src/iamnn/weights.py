"""Saving and loading weights without pickle: safetensors with the model's config in its metadata.

A weights file carries everything needed to rebuild its model: the safetensors metadata holds
``{"model": registry name, "kwargs": builder arguments}`` as JSON (also written beside it as
``<file>.json`` for people). Lightning ``.ckpt`` files are read with ``torch.load(weights_only=True)``.
:func:`resolve` turns every way of naming a model (registered name, weights file, run folder, shipped
weights) into the model, its preprocessing and its class names, opening a weights file once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import pickle
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from .errors import WeightsError, one_line
from .files import atomic_write
from .models import IamNN, build_model, list_models, pretrained_file, upgrade_state_dict
from .models.halting import halting_json

PACKAGE_WEIGHTS = Path(__file__).parent / "weights"
CONFIG_KEY = "iamnn_config"
DEFAULT_MODEL = "iamnn_r34_fmnist"  # the shipped model: what predict, the app and the commands use unless told

__all__ = [
    "DEFAULT_MODEL",
    "Resolved",
    "WeightsError",
    "check_fits",
    "check_file_builds",
    "config_from_hparams",
    "create_model",
    "data_config",
    "find_weights",
    "load_model",
    "load_model_with_config",
    "load_pretrained",
    "load_state_dict",
    "load_weights",
    "model_config",
    "pretrained_path",
    "read_checkpoint",
    "read_config",
    "read_weights",
    "resolve",
    "save_weights",
]


def create_model(
    name: str,
    pretrained: bool = False,
    checkpoint_path: str | Path | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model, and load weights into it (timm's factory).

    ``pretrained=True`` loads the weights shipped with the package (no network);
    ``checkpoint_path`` loads a safetensors or Lightning checkpoint file. Either way the model is
    built with the architecture stored in the file (width, stem, classes…), so nothing needs
    repeating; ``kwargs`` may set the regime (``halting``, ``epsilon``), and any other kwarg must
    agree with the file, except ``num_classes``: another count gives the loaded network a fresh,
    randomly initialised head for fine-tuning (timm's behaviour), and drops the file's class names.
    ``None`` kwargs are dropped so the builder's (or the file's) values survive.
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    num_classes = kwargs.pop("num_classes", None) if pretrained or checkpoint_path is not None else None
    if not pretrained and checkpoint_path is None:
        return build_model(name, **kwargs)
    path = pretrained_path(name) if pretrained else Path(checkpoint_path)
    model, _ = read_weights(path, kwargs, name=name, agree=True)
    if num_classes is not None and num_classes != getattr(model, "num_classes", num_classes):
        model.reset_classifier(num_classes)  # a new task: the backbone is kept, the head starts afresh
        kwargs_now = {**model.model_config["kwargs"], "num_classes": num_classes}
        model.model_config = {**model.model_config, "kwargs": kwargs_now}
        if getattr(model, "data_config", None):
            model.data_config = {k: v for k, v in model.data_config.items() if k != "class_names"}
    return model if pretrained else model.train()  # a checkpoint to fine-tune comes back in training mode


REGIME_KWARGS = frozenset({"halting", "epsilon"})  # how a model runs, not what its weights are


def model_config(model: nn.Module) -> dict[str, Any]:
    """The ``{"model", "kwargs"}`` config that ``create_model`` recorded on ``model``."""
    config = getattr(model, "model_config", None)
    if config is None:
        raise WeightsError("model was not built by iamnn.create_model, so its config is unknown")
    if isinstance(model, IamNN):  # the regime it runs in now (set after creation, e.g. by calibrate)
        regime = {"halting": halting_json(model.halting), "epsilon": model.epsilon}
        return {**config, "kwargs": {**config["kwargs"], **regime}}
    return config


def config_from_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """The registry config (``{"model", "kwargs"}``) of the network a training ``Classifier`` with
    these hyper-parameters builds (``training/classifier.py``); how a Lightning checkpoint names its model."""
    kwargs = {
        "num_classes": hparams.get("num_classes"),
        "in_chans": hparams.get("in_chans"),
        "stem": hparams.get("stem"),
        "width": hparams.get("width"),
        **(hparams.get("model_kwargs") or {}),
    }
    if hparams["model"].startswith("iamnn"):
        halting = hparams.get("halting")  # `--model.halting=2` arrives as the string "2"
        kwargs.update(
            halting=None if halting is None else halting_json(halting),
            epsilon=hparams.get("epsilon"),
            halting_bias=hparams.get("halting_bias"),
        )
    return {"model": hparams["model"], "kwargs": {k: v for k, v in kwargs.items() if v is not None}}


def save_weights(
    model: nn.Module, path: str | Path, data: dict[str, Any] | None = None, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``model``'s state dict (buffers included) and config to a safetensors file.

    ``data`` is the preprocessing a user needs (``data_config``: input size, mean, std, class
    names); it is stored with the config. ``extra`` (e.g. measured accuracy) goes into the JSON
    sidecar only.
    """
    path = Path(path)
    if path.suffix != ".safetensors":  # the JSON sidecar is path.with_suffix(".json"): never the weights
        raise WeightsError(f"{path}: a weights file must end in .safetensors (its JSON sidecar is written beside it)")
    config = {**model_config(model), **({"data": data} if data else {})}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        count = f"{len(broken)} of {len(state)} tensors"
        raise WeightsError(f"{path}: not written: {count} hold NaN or Inf (first: {broken[0]})")
    blob = safetensors_bytes(state, metadata={CONFIG_KEY: json.dumps(config)})
    # The pair cannot be renamed in one step; both are written in full first and renamed back to
    # back (weights, then sidecar), and the sidecar names the weights' digest, so a sidecar left
    # from an earlier save by a kill in between is recognisable as not describing these weights.
    sidecar = {**config, **(extra or {}), "weights_sha256": hashlib.sha256(blob).hexdigest()}
    with atomic_write(path.with_suffix(".json"), "w") as meta, atomic_write(path) as weights:
        weights.write(blob)
        meta.write(json.dumps(sidecar, indent=2) + "\n")
    return path


def data_config(datamodule: Any) -> dict[str, Any]:
    """Preprocessing of a data module, as stored with the weights (timm's ``pretrained_cfg`` idea).

    ``crop_pct`` (timm's name) where the data module evaluates on a centre crop of an image resized
    to ``input_size / crop_pct``; without it an image is resized to the input size itself.
    """
    crop_pct = getattr(datamodule, "crop_pct", None)
    return {
        "dataset": type(datamodule).__name__,
        "in_chans": datamodule.in_chans,
        "input_size": list(datamodule.input_size),
        "mean": list(datamodule.mean),
        "std": list(datamodule.std),
        "class_names": list(datamodule.class_names),
        **({"crop_pct": float(crop_pct)} if crop_pct is not None else {}),
    }


def read_config(path: str | Path, checkpoint: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model config stored in a safetensors weights file or a Lightning checkpoint.

    ``checkpoint``: the already-loaded contents of a ``.ckpt`` file, so it is not read twice.
    """
    path = Path(path)
    if path.suffix == ".ckpt":
        checkpoint = read_checkpoint(path) if checkpoint is None else checkpoint
        hparams = checkpoint.get("hyper_parameters", {}) if isinstance(checkpoint, dict) else None
        if not isinstance(hparams, dict) or not isinstance(hparams.get("model"), str):
            raise WeightsError(f"{path}: checkpoint has no iamnn model hyper-parameters")
        if not isinstance(hparams.get("model_kwargs") or {}, dict):
            raise WeightsError(f"{path}: the checkpoint's model_kwargs are not a mapping")
        config = config_from_hparams(hparams)
        config = {**config, "data": checkpoint["iamnn_data"]} if "iamnn_data" in checkpoint else config
        return checked_config(config, path)
    _refuse_onnx(path)
    with _open_safetensors(path) as f:
        return _stored_config(_safetensors_read(path, f.metadata) or {}, path)


def _refuse_onnx(path: Path) -> None:
    if path.suffix == ".onnx":
        raise WeightsError(
            f"{path}: an ONNX model, not weights: run it with `iamnn predict --onnx` (iamnn.export.OnnxModel)"
        )


def _stored_config(metadata: dict[str, str], path: Path) -> dict[str, Any]:
    """The checked config in a safetensors file's metadata."""
    if CONFIG_KEY not in metadata:
        raise WeightsError(f"{path}: safetensors file has no {CONFIG_KEY!r} metadata; pass the model name instead")
    try:
        return checked_config(json.loads(metadata[CONFIG_KEY]), path)
    except json.JSONDecodeError as err:
        raise WeightsError(f"{path}: its {CONFIG_KEY!r} metadata is not JSON ({err.msg})") from None
    except RecursionError:  # 100 000 nested brackets: json recurses once a level
        raise WeightsError(f"{path}: its {CONFIG_KEY!r} metadata is nested too deeply to be a config") from None


def checked_config(config: Any, path: str | Path) -> dict[str, Any]:
    """A stored model config, checked to be ``{"model": str, "kwargs": {str: value}, ...}``."""
    if not isinstance(config, dict) or not isinstance(config.get("model"), str):
        raise WeightsError(f"{path}: the stored config names no model (got {type(config).__name__})")
    kwargs = config.get("kwargs", {})
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise WeightsError(f"{path}: the stored config's kwargs are not a mapping of names to values")
    if config.get("data") is not None:
        problem = _data_problem(config["data"])
        if problem:
            raise WeightsError(f"{path}: the stored config's data section {problem}")
    return config


MAX_INPUT_SIDE = 8192  # pixels: a crafted input size must not make predict allocate gigabytes per image
# and at most a megapixel per image (1024 x 1024; ImageNet's 224 x 224 is 50 176): an 8192 x 8192
# input size in a 1 kB weights file made `iamnn predict` allocate past 10 GB and killed `iamnn app`
MAX_INPUT_PIXELS = 1024 * 1024


def _data_problem(data: Any) -> str | None:
    """What is wrong with a stored preprocessing config, or None: in_chans, input_size (2 sides),
    mean and std (one finite number per channel, std > 0), optional dataset, class names and crop_pct."""
    if not isinstance(data, dict):
        return "is not a mapping"
    chans, size = data.get("in_chans"), data.get("input_size")
    if isinstance(chans, bool) or not isinstance(chans, int) or not 1 <= chans <= 64:
        return f"has no valid in_chans (got {chans!r})"
    if not (
        isinstance(size, list) and len(size) == 2 and all(type(v) is int and 1 <= v <= MAX_INPUT_SIDE for v in size)
    ):
        return f"has no valid input_size (two sides in 1..{MAX_INPUT_SIDE}, got {size!r})"
    if size[0] * size[1] > MAX_INPUT_PIXELS:
        return f"asks for {size[0]}x{size[1]} inputs, more than {MAX_INPUT_PIXELS:,} pixels an image"
    for key in ("mean", "std"):
        values = data.get(key)
        if not (isinstance(values, list) and len(values) == chans
                and all(type(v) in (int, float) and math.isfinite(v) for v in values)):  # fmt: skip
            return f"has no valid {key} (one finite number per channel, got {values!r})"
    # pixels are in [0, 1]: a mean of 1e308 or a std of 1e-320 turns every input into Inf
    if any(abs(v) > 1e3 for v in data["mean"]) or any(not 1e-6 <= v <= 1e3 for v in data["std"]):
        return f"has a mean outside ±1000 or a std outside 1e-6..1000 (mean {data['mean']!r}, std {data['std']!r})"
    crop = data.get("crop_pct")
    if crop is not None and not (type(crop) in (int, float) and 0.05 <= crop <= 1):
        return f"has a crop_pct outside 0.05..1 (got {crop!r})"  # a tiny one would resize to gigapixels
    names = data.get("class_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        return "has class_names that are not a list of names"
    if "dataset" in data and not isinstance(data["dataset"], str):
        return f"names no dataset (got {data['dataset']!r})"
    return None


def _data_misfit(model: nn.Module, data: dict[str, Any] | None) -> str | None:
    """What makes a (well-formed) preprocessing config unusable by ``model``, or None: another
    channel count than the model's, or an input too small for its stem and poolings."""
    if not data:
        return None
    if data["in_chans"] != getattr(model, "in_chans", data["in_chans"]):
        return f"gives {data['in_chans']}-channel inputs to a model of {model.in_chans} channels"
    if isinstance(model, IamNN) and min(model.stage_sizes(tuple(data["input_size"]))[-1]) < 1:
        h, w = data["input_size"]
        return f"asks for {h}x{w} inputs, too small for the model's stem and poolings"
    return None


def file_shapes(path: str | Path, checkpoint: dict[str, Any] | None = None) -> dict[str, tuple[int, ...]]:
    """The tensor shapes a weights file holds, read from its header: no tensor is loaded."""
    if checkpoint is not None:
        return {k: tuple(v.shape) for k, v in load_state_dict(path, checkpoint).items()}
    with _open_safetensors(Path(path)) as f:
        return _SafetensorsState(Path(path), f).shapes()  # legacy key names, as load_state_dict renames them


def check_file_builds(name: str, kwargs: dict[str, Any], path: str | Path, checkpoint: dict[str, Any] | None) -> None:
    """Build ``name`` on the meta device and match it against the tensors in ``path``: a config
    that does not build, or whose tensors differ from the file's, fails in one line before anything
    is allocated (a crafted ``num_classes = 5e9`` or ``width = 64`` costs nothing)."""
    _check_builds(name, kwargs, path, file_shapes(path, checkpoint))


def _check_builds(name: str, kwargs: dict[str, Any], path: str | Path, shapes: dict[str, Any]) -> None:
    try:
        with torch.device("meta"):
            skeleton = build_model(name, **kwargs)
    except (TypeError, ValueError, OverflowError, RuntimeError) as err:
        raise WeightsError(f"{path}: the stored config does not build a model: {one_line(err)}") from None
    check_fits(skeleton, shapes, path)


def load_state_dict(path: str | Path, checkpoint: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or the model weights of a Lightning checkpoint (no pickle code run).

    ``checkpoint``: the already-loaded contents of a ``.ckpt`` file, so it is not read twice.
    """
    path = Path(path)
    if checkpoint is None and not path.is_file():
        raise WeightsError(f"{path}: no such file")
    if path.suffix == ".ckpt":
        checkpoint = read_checkpoint(path) if checkpoint is None else checkpoint
        state = checkpoint.get("state_dict", {})
        return upgrade_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    with _open_safetensors(path) as f:
        return _SafetensorsState(path, f).tensors()


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a weights file into ``model``; a file for another architecture fails naming the mismatch."""
    return _load_into(model, load_state_dict(path), path)


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> nn.Module:
    check_fits(model, state, path)
    return _load_checked(model, state, path)


def _load_checked(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> nn.Module:
    """Load ``state``, already matched to ``model``'s keys and shapes, refusing non-finite weights."""
    # NaN weights loaded silently: predict printed "confidence": NaN (not JSON), evaluate 7.81 %
    broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise WeightsError(f"{path}: {len(broken)} of {len(state)} tensors hold NaN or Inf (first: {broken[0]})")
    model.load_state_dict(state)
    return model


def check_fits(model: nn.Module, state: dict[str, Any], path: str | Path) -> None:
    """Raise a one-line ``WeightsError`` naming the first mismatch when ``state`` (tensors, or
    their shapes) is not ``model``'s."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = {k: tuple(v.shape) if hasattr(v, "shape") else tuple(v) for k, v in state.items()}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {state[k]} vs model {own[k]}" for k in sorted(own.keys() & state.keys()) if state[k] != own[k]
    ]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[0]})")
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise WeightsError(f"{path}: weights do not fit this model: {'; '.join(parts)}")


def load_model(path: str | Path, **overrides: Any) -> nn.Module:
    """Rebuild the model described by a weights file (safetensors or .ckpt) and load its weights."""
    return load_model_with_config(path, **overrides)[0]


def load_model_with_config(path: str | Path, **overrides: Any) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`load_model`, and the file's config (with its ``"data"`` preprocessing); one read."""
    return read_weights(Path(path), overrides)


def read_weights(
    path: Path, overrides: dict[str, Any], name: str | None = None, agree: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """The model a weights file describes, in eval mode, and the file's config, from one open of
    the file: its config and tensor shapes are read from the header, the model is built on the meta
    device and matched against them (a crafted config costs nothing), then built and loaded.

    ``overrides`` replace stored builder arguments (e.g. ``halting``); with ``agree``, any but the
    regime's must equal the stored ones. ``name``: build this registered name instead of the file's.
    The file's preprocessing is kept as ``model.data_config``."""
    path = Path(path)
    if path.suffix == ".ckpt":
        checkpoint = read_checkpoint(path)
        config = read_config(path, checkpoint)
        state = load_state_dict(path, checkpoint)
        return _build_loaded(path, config, overrides, name, agree, state), config
    _refuse_onnx(path)
    with _open_safetensors(path) as f:
        config = _stored_config(_safetensors_read(path, f.metadata) or {}, path)
        state = _SafetensorsState(path, f)
        return _build_loaded(path, config, overrides, name, agree, state), config


class _SafetensorsState:
    """The tensors of an open safetensors file: their shapes from its header, the tensors when asked."""

    def __init__(self, path: Path, handle: Any) -> None:
        self.path, self.handle = path, handle

    def shapes(self) -> dict[str, tuple[int, ...]]:
        keys = _safetensors_read(self.path, self.handle.keys)
        return upgrade_state_dict({k: tuple(self.handle.get_slice(k).get_shape()) for k in keys})

    def tensors(self) -> dict[str, torch.Tensor]:
        keys = _safetensors_read(self.path, self.handle.keys)
        return upgrade_state_dict({k: _safetensors_read(self.path, self.handle.get_tensor, k) for k in keys})


def _build_loaded(
    path: Path,
    config: dict[str, Any],
    overrides: dict[str, Any],
    name: str | None,
    agree: bool,
    state: dict[str, torch.Tensor] | _SafetensorsState,
) -> nn.Module:
    """``config``'s model built for ``state`` (checked once, on the meta device), loaded, in eval mode."""
    stored = config.get("kwargs", {})
    if agree and (clash := [k for k, v in overrides.items() if k not in REGIME_KWARGS and stored.get(k, v) != v]):
        raise WeightsError(f"{path}: {clash[0]}={overrides[clash[0]]!r} contradicts the file's "
                           f"{clash[0]}={stored[clash[0]]!r} (leave it out)")  # fmt: skip
    name, kwargs = name or config["model"], {**stored, **overrides}
    shapes = state.shapes() if isinstance(state, _SafetensorsState) else state
    _check_builds(name, kwargs, path, shapes)
    model = build_model(name, **kwargs)
    if (problem := _data_misfit(model, config.get("data"))) is not None:
        raise WeightsError(f"{path}: the stored config's data section {problem}")
    model.data_config = config.get("data")  # the preprocessing it was trained with, for iamnn.predict
    tensors = state.tensors() if isinstance(state, _SafetensorsState) else state
    return _load_checked(model, tensors, path).eval()


@contextlib.contextmanager
def _open_safetensors(path: Path) -> Iterator[Any]:
    """``safe_open`` with its failures as one ``WeightsError`` line."""
    handle = _safetensors_read(path, safe_open, str(path), framework="pt")
    with handle as f:
        yield f


def _safetensors_read(path: Path, read: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return read(*args, **kwargs)
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(f"{path}: not a readable safetensors file ({one_line(err)})") from None


@dataclass(frozen=True)
class Resolved:
    """A model and what using it takes, as :func:`resolve` found them."""

    model: nn.Module
    #: ``{"model": registry name, "kwargs": builder arguments}``, with ``"data"`` where the weights carry it
    config: dict[str, Any]
    #: the weights file read (the shipped one, a run folder's, or the one given); None for a model built here
    path: Path | None = None
    #: the registered name whose shipped weights these are; None for any other source
    shipped: str | None = None

    @property
    def data(self) -> dict[str, Any] | None:
        """The preprocessing the model was trained with (``dataset``, ``in_chans``, ``input_size``,
        ``mean``, ``std``, ``class_names``, ``crop_pct``), also ``model.data_config``; None if unknown."""
        return self.config.get("data")

    @property
    def class_names(self) -> list[str]:
        return list((self.data or {}).get("class_names") or [])


def resolve(source: str | Path | nn.Module | None = None, *, pretrained: bool | None = None, **kwargs: Any) -> Resolved:
    """The model that ``source`` names, its preprocessing and class names: the one way every
    command, ``iamnn.predict``, the app and the benchmark turn a name into a model. A weights file
    is opened once.

    ``source``: a registered name (default :data:`DEFAULT_MODEL`, the shipped model), a weights
    file (safetensors or Lightning ``.ckpt``), a run folder of ``iamnn fit`` (its
    ``model.safetensors``, else its best checkpoint), or a model already built (kept as it is).
    ``pretrained`` (a registered name): True loads the weights shipped for it, False builds it
    untrained, None loads them where some ship. ``kwargs``: builder arguments of an untrained
    model, or overrides of a file's (``halting``, ``epsilon``); ``None`` values are dropped.
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if isinstance(source, nn.Module):
        data = getattr(source, "data_config", None)
        return Resolved(source, {**(getattr(source, "model_config", None) or {}), **({"data": data} if data else {})})
    source = DEFAULT_MODEL if source is None else source
    name = source if isinstance(source, str) and not Path(source).exists() else None
    if pretrained or (name in list_models() and pretrained is None and pretrained_file(name) is not None):
        path = pretrained_path(str(source))
        return Resolved(*read_weights(path, kwargs, agree=True), path, str(source))
    if name in list_models():
        model = build_model(name, **kwargs)
        return Resolved(model, model.model_config)
    path = Path(source)
    if not path.exists():
        raise WeightsError(f"{path}: no such file, run folder or registered model")
    if path.is_dir():
        try:
            path = find_weights(path)
        except FileNotFoundError as err:
            raise WeightsError(str(err)) from None
    return Resolved(*read_weights(path, kwargs, agree=True), path)


def find_weights(run_dir: Path) -> Path:
    """A run folder's ``model.safetensors``, else its best (or last) checkpoint."""
    if (run_dir / "model.safetensors").is_file():
        return run_dir / "model.safetensors"
    ckpts = sorted((run_dir / "checkpoints").glob("best*.ckpt")) or sorted((run_dir / "checkpoints").glob("*.ckpt"))
    if not ckpts:
        raise FileNotFoundError(f"{run_dir}: no model.safetensors or checkpoints/*.ckpt")
    return ckpts[-1]


def pretrained_path(name: str) -> Path:
    """The weights file shipped in the package for the registered model ``name``."""
    file_name = pretrained_file(name)
    if file_name is None:
        raise WeightsError(
            f"no pretrained weights ship for {name!r}; models with weights: {list_models(pretrained=True)}"
        )
    path = PACKAGE_WEIGHTS / file_name
    if not path.is_file():
        raise WeightsError(f"pretrained weights for {name!r} are missing from the package ({path.name})")
    return path


def load_pretrained(name: str, **overrides: Any) -> nn.Module:
    """The registered model ``name`` with the weights shipped for it (``create_model(name, pretrained=True)``)."""
    return create_model(name, pretrained=True, **overrides)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint's contents, unpickled with ``weights_only=True``; anything else is
    refused. One open: its first bytes are checked, then the same handle is unpickled."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, after torch.load has read it
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such file") from None
    except OSError as err:
        raise WeightsError(f"{path}: refused: not a PyTorch checkpoint ({one_line(err)})") from None
    with f:
        problem = _not_torch_head(f.read(len(TORCH_LEGACY_PREFIX)))
        if problem:
            raise WeightsError(f"{path}: refused: not a PyTorch checkpoint ({problem})")
        f.seek(0)
        return _unpickle(path, f)


def _unpickle(path: str | Path, f: BinaryIO) -> dict[str, Any]:
    try:
        # weights_only: tensors and plain containers only, never arbitrary pickled objects
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the refusal below says it all
            warnings.simplefilter("ignore")
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # what weights_only raises for anything but tensors and plain data
        # torch's first lines advise retrying with weights_only=False; the reason is further down
        lines = [line for line in str(err).splitlines() if "GLOBAL" in line or "Unsupported" in line]
        reason = lines[0].strip() if lines else one_line(err)
        raise WeightsError(
            f"{path}: refused to load checkpoint (only tensors and plain data are accepted): {reason}"
        ) from None
    except Exception as err:  # noqa: BLE001 - every other failure becomes one clear line too
        reason = one_line(err).split(". ")[0]
        raise WeightsError(f"{path}: not a readable checkpoint (truncated or corrupt?): {reason}") from None


# torch.save writes a zip archive; files from before PyTorch 1.6 start with a pickled magic number
TORCH_LEGACY_PREFIX = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def _not_torch_head(head: bytes) -> str | None:
    """Why a file starting with ``head`` cannot be from ``torch.save`` (a plain pickle, text), or
    None: so that such a file is named for what it is, not for the unpickler's first complaint."""
    if head.startswith(b"PK\x03\x04") or head == TORCH_LEGACY_PREFIX:
        return None
    if not head:
        return "the file is empty"
    kind = "a plain pickle" if head[:1] == b"\x80" else "neither a zip archive nor a legacy torch file"
    return f"{kind}, starting {head[:8]!r}: torch.save writes a zip archive"
