"""iamnn: IamNN (Iterative and Adaptive Mobile Neural Network, Leroux et al. 2018) in PyTorch.

The names below are imported on first use (PEP 562), so that ``import iamnn.cli`` — the ``iamnn``
command — does not wait for PyTorch: ``iamnn --help`` or a mistyped flag answers at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# the version's one home: the wheel's metadata reads it from here (pyproject.toml), `iamnn --version` prints it
__version__ = "0.1.0"

# public name -> the module that defines it
_HOMES = {
    # building and loading models
    "create_model": "weights", "list_models": "models", "load_model": "weights", "register_model": "models",
    "IamNN": "models", "IamNNStats": "models", "ResNet": "models", "MobileNet": "models",
    # halting policies
    "HaltingPolicy": "models", "ACT": "models", "Fixed": "models", "Full": "models", "PonderNet": "models",
    "register_policy": "models.halting",
    # inference
    "predict": "prediction", "Prediction": "prediction", "resolve_data_config": "prediction",
    "create_transform": "prediction",
    # cost
    "count_params": "cost", "measure_macs": "cost",
}  # fmt: skip
# the keys of _HOMES, spelled out for linters (tests/test_architecture.py checks that they agree)
__all__ = [
    "create_model", "list_models", "load_model", "register_model", "IamNN", "IamNNStats", "ResNet", "MobileNet",
    "HaltingPolicy", "ACT", "Fixed", "Full", "PonderNet", "register_policy",
    "predict", "Prediction", "resolve_data_config", "create_transform",
    "count_params", "measure_macs",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'iamnn' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value  # once imported, an ordinary attribute
    return value


def __dir__() -> list[str]:
    # the public names and the dunders, not this module's helpers (Any, TYPE_CHECKING, importlib, …)
    return sorted({*__all__, *(n for n in globals() if n.startswith("__") and n.endswith("__"))})


if TYPE_CHECKING:  # what type checkers and editors see
    from .cost import count_params, measure_macs
    from .models import (
        ACT,
        Fixed,
        Full,
        HaltingPolicy,
        IamNN,
        IamNNStats,
        MobileNet,
        PonderNet,
        ResNet,
        list_models,
        register_model,
    )
    from .models.halting import register_policy
    from .prediction import Prediction, create_transform, predict, resolve_data_config
    from .weights import create_model, load_model
