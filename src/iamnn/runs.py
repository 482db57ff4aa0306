"""Run folders: what ``iamnn fit`` leaves in ``runs/<name>/``, found and read back.

A run folder holds ``config.yaml`` (the recipe, whose ``data`` section rebuilds the data set),
``model.safetensors`` (the network and its config) and ``checkpoints/``. Run folders are shared and
downloaded, so nothing in them is trusted: the data class must be one of iamnn's registered data
modules, and weights are read without running pickled code (``weights.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from .data import ImageDataModule, datamodule_class
from .errors import RunFolderError, one_line
from .files import file_sha256, load_yaml
from .models import IamNN
from .weights import find_weights, resolve

__all__ = [
    "datamodule_of_weights",
    "describe_weights",
    "find_run_dir",
    "find_weights",
    "load_datamodule",
    "load_iamnn_run",
    "read_recipe",
    "run_folders",
]


def read_recipe(run_dir: Path) -> dict[str, Any]:
    """The run's saved recipe (``config.yaml``) as plain data."""
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no config.yaml (is this a run directory of `iamnn fit`?)")
    try:
        recipe = load_yaml(config_path) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{config_path}: not valid YAML ({one_line(err)})") from None
    if not isinstance(recipe, dict):
        raise ValueError(f"{config_path}: not a recipe (a YAML mapping)")
    return recipe


def load_datamodule(run_dir: Path, **overrides: Any) -> ImageDataModule:
    """Rebuild the data module of a run from its saved recipe, set up for testing.

    Only a registered ``iamnn.data`` module is built: a class path elsewhere is refused, not imported.
    """
    config = run_dir / "config.yaml"
    data = read_recipe(run_dir).get("data") or {}
    if not isinstance(data, dict) or not isinstance(data.get("init_args") or {}, dict):
        raise ValueError(f"{config}: its data section is not a class_path with a mapping of init_args")
    module_name, _, class_name = str(data.get("class_path", "")).rpartition(".")
    if module_name != "iamnn.data":
        raise ValueError(f"{config}: data class {data.get('class_path')!r} is not an iamnn data module")
    try:  # the values are checked by the data module (ranges, types): a bad one is one line, not a traceback
        dm = datamodule_class(class_name)(**{**(data.get("init_args") or {}), **overrides})
    except TypeError as err:  # an argument the class does not take
        raise ValueError(f"{config}: its data section does not build {class_name}: {one_line(err)}") from None
    dm.setup("test")
    return dm


def describe_weights(path: str | Path, within_run: bool = True) -> str:
    """Which weights ``path`` holds, in words, for a result to name: ``model.safetensors (best
    checkpoint)``, ``checkpoints/last.ckpt (last checkpoint)``, or the path itself. A file inside
    a run folder is named from the run's top when ``within_run`` (the result names the run), else
    as given.

    A run's ``model.safetensors`` is its best checkpoint's network, or an anytime run's weights at
    the end of training (``training.callbacks.ExportWeights``); its JSON sidecar says which. The sidecar is
    believed only when it names these weights' digest: a kill between the two renames of a save
    can leave an earlier one beside new weights.
    """
    path = Path(path)
    shown = str(path)
    for base in (path.parent, path.parent.parent) if within_run else ():
        if (base / "config.yaml").is_file():
            shown = str(path.relative_to(base))
            break
    if path.suffix == ".ckpt":
        kind = "best checkpoint" if path.name.startswith("best") else "last checkpoint" if path.stem == "last" else ""
        return f"{shown} ({kind})" if kind else shown
    sidecar = path.with_suffix(".json")
    try:
        if path.suffix != ".safetensors" or not sidecar.is_file() or sidecar.stat().st_size > 1 << 20:
            return shown
        meta = json.loads(sidecar.read_text())
        if not isinstance(meta, dict) or "checkpoint" not in meta:
            return shown
        if meta.get("weights_sha256") != file_sha256(path):
            return shown
    except (OSError, ValueError):  # an unreadable or malformed sidecar says nothing about the weights
        return shown
    checkpoint = meta["checkpoint"]
    if not checkpoint:
        return f"{shown} (weights at the end of training)"
    # the kind, not the epoch's file name: the results of many runs then share one phrase
    return f"{shown} (best checkpoint)" if str(checkpoint).startswith("best") else shown


def find_run_dir(path: Path) -> Path:
    """The run folder (holding ``config.yaml``) of a run folder or of a file inside it."""
    for candidate in [path, *path.parents][:3]:
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"{path}: not inside a run folder of `iamnn fit` (no config.yaml found)")


def run_folders(paths: list[str | Path]) -> list[Path]:
    """Each path as a run folder, or the run folders directly inside it (``runs/frontier``)."""
    missing = [str(p) for p in paths if not Path(p).is_dir()]
    if missing:
        raise RunFolderError(f"no such run directory: {', '.join(missing)}")
    runs: list[Path] = []
    for path in map(Path, paths):
        inside = sorted(d for d in path.iterdir() if (d / "config.yaml").is_file())
        runs += [path] if (path / "config.yaml").is_file() else inside
    if not runs:
        raise RunFolderError(f"no run folders (with a config.yaml) in {', '.join(map(str, paths))}")
    return runs


def load_iamnn_run(source: str | Path, test_subset: int | None = None) -> tuple[Path, IamNN, dict[str, Any], Any]:
    """(weights file, IamNN, its config, the run's data module without augmentation) of a run
    folder or of a weights file inside one."""
    run_dir = find_run_dir(Path(source))
    loaded = resolve(Path(source) if Path(source).is_file() else find_weights(run_dir))
    if not isinstance(loaded.model, IamNN):
        raise ValueError(f"{loaded.path}: {type(loaded.model).__name__} has no halting regimes (give an IamNN run)")
    dm = load_datamodule(run_dir, augment=False, **({"test_subset": test_subset} if test_subset else {}))
    return loaded.path, loaded.model, loaded.config, dm


def datamodule_of_weights(data: dict[str, Any], test_subset: int | None = None, train: bool = False) -> ImageDataModule:
    """The data module that a weights file's ``data`` config names (``iamnn evaluate``,
    ``iamnn recalibrate --weights``): no augmentation, no validation split, set up for testing,
    and also for its training images when ``train``."""
    dm = datamodule_class(data["dataset"])(
        val_size=0, augment=False, **({"test_subset": test_subset} if test_subset else {})
    )
    if train:
        dm.setup("fit")
    dm.setup("test")
    return dm
