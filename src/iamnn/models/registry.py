"""A timm-style model registry: it only registers. ``@register_model`` builders, ``list_models``,
and ``build_model``, which calls a builder; ``iamnn.create_model`` (``weights.py``) builds and loads."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_PRETRAINED: dict[str, str] = {}  # model name -> weights file name inside iamnn/weights/


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a builder under its function name."""
    _MODELS[fn.__name__] = fn
    return fn


def register_pretrained(model_name: str, file_name: str) -> None:
    """Declare that the package ships weights for ``model_name`` as ``iamnn/weights/<file_name>``."""
    _PRETRAINED[model_name] = file_name


def pretrained_file(model_name: str) -> str | None:
    """The file name of the weights shipped for ``model_name``, or None."""
    return _PRETRAINED.get(model_name)


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Registered model names matching a shell-style wildcard, e.g. ``list_models("iamnn_*")``."""
    names = _PRETRAINED if pretrained else _MODELS
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def build_model(name: str, **kwargs: object) -> nn.Module:
    """Call the builder registered as ``name`` (randomly initialised weights).

    ``None`` kwargs are dropped so the builder's defaults survive. What it takes to rebuild the
    model is recorded as ``model.model_config`` and saved with its weights.
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    model = _MODELS[name](**kwargs)
    model.model_config = {
        "model": name,
        "kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
    }
    return model
