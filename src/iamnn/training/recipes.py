"""What is checked in a command line and its ``--config`` recipes before LightningCLI reads them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ..data import DATAMODULES
from ..errors import CLIError
from ..files import load_yaml

# Trainer flags that mean a number of batches when given an int and a fraction when given a float.
# jsonargparse turns `--trainer.limit_train_batches 1` into 1.0 (every batch); ints are kept ints.
BATCH_COUNT_FLAGS = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches",
                     "val_check_interval", "overfit_batches")  # fmt: skip


def _flag_values(args: Sequence[str]) -> list[tuple[str, str]]:
    """Each argument as (flag, value), for ``--flag=value`` and ``--flag value`` alike (for a
    ``--flag value`` pair, the value is also seen as a flag of its own, which no caller matches)."""
    args = list(args)
    pairs = []
    for i, arg in enumerate(args):
        flag, _, value = arg.partition("=")
        pairs.append((flag, value or (args[i + 1] if i + 1 < len(args) else "")))
    return pairs


def check_recipes(args: Sequence[str]) -> None:
    """Refuse, before LightningCLI reads anything, a ``--config`` recipe that is too big or whose
    aliases explode (``files.load_yaml``), and a data module that is not a registered iamnn one:
    jsonargparse would import any ``class_path`` (running its module's code) before checking it."""
    named: list[tuple[str, Any]] = []
    for flag, value in _flag_values(args):
        if flag in ("--config", "--data") and Path(value).is_file():
            try:
                recipe = load_yaml(value)
            except ValueError as err:
                raise CLIError(str(err)) from None
            except yaml.YAMLError:
                continue  # LightningCLI reports a broken recipe itself, in one line
            data = recipe.get("data") if isinstance(recipe, dict) and flag == "--config" else recipe
            if isinstance(data, dict) and "class_path" in data:
                named.append((f"{value}: data.class_path", data["class_path"]))
        elif flag in ("--data", "--data.class_path") and value and not value.lstrip().startswith("{"):
            named.append((flag, value))
    for where, class_path in named:
        module, _, name = str(class_path).rpartition(".")
        if module not in ("iamnn.data", "") or name not in {c.__name__ for c in DATAMODULES.values()}:
            choices = ", ".join(f"iamnn.data.{c.__name__}" for c in DATAMODULES.values())
            raise CLIError(f"{where} {class_path!r} is not an iamnn data module (not imported); choose from {choices}")


def given_batch_counts(args: Sequence[str]) -> dict[str, int]:
    """The :data:`BATCH_COUNT_FLAGS` written as integers (``1``, not ``1.0``) in a command line or
    its ``--config`` recipes, the last one given winning."""
    given: dict[str, Any] = {}
    for flag, value in _flag_values(args):
        if flag == "--config" and Path(value).is_file():
            try:
                trainer = (load_yaml(value) or {}).get("trainer") or {}
            except (yaml.YAMLError, AttributeError):
                continue  # LightningCLI reports a broken recipe itself
            given.update({k: trainer[k] for k in BATCH_COUNT_FLAGS if k in trainer})
        elif flag.removeprefix("--trainer.") in BATCH_COUNT_FLAGS:
            given[flag.removeprefix("--trainer.")] = int(value) if value.strip().isdigit() else value
    return {k: v for k, v in given.items() if isinstance(v, int) and not isinstance(v, bool)}
