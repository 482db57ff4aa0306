"""A timm-style model registry: ``@register_model`` builders, ``list_models``, ``create_model``."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from pathlib import Path

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_PRETRAINED: dict[str, str] = {}  # model name -> weights file name inside iamnn/weights/


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a builder under its function name."""
    _MODELS[fn.__name__] = fn
    return fn


def register_pretrained(model_name: str, file_name: str) -> None:
    _PRETRAINED[model_name] = file_name


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Registered model names matching a shell-style wildcard, e.g. ``list_models("iamnn_*")``."""
    names = _PRETRAINED if pretrained else _MODELS
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def create_model(
    name: str,
    pretrained: bool = False,
    checkpoint_path: str | Path | None = None,
    **kwargs: object,
) -> nn.Module:
    """Build a registered model; ``None`` kwargs are dropped so the builder's defaults survive.

    ``pretrained=True`` loads the weights shipped with the package (no network);
    ``checkpoint_path`` loads a safetensors or Lightning checkpoint file.
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if pretrained:
        from ..weights import load_pretrained

        return load_pretrained(name, **kwargs)
    model = _MODELS[name](**kwargs)
    # what it takes to rebuild this model: saved with its weights (iamnn.weights)
    model.model_config = {
        "model": name,
        "kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
    }
    if checkpoint_path is not None:
        from ..weights import load_weights

        load_weights(model, checkpoint_path)
    return model
