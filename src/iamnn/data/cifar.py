"""CIFAR-10 and CIFAR-100 from their python-pickle files, read by an unpickler that only builds arrays."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import DatasetError, DatasetNotFoundError, one_line
from . import base
from .base import TensorDataModule, default_cache_dir

__all__ = ["CIFAR100_CLASSES", "CIFAR10DataModule", "CIFAR100DataModule"]


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a CIFAR file cannot name code to run."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }  # fmt: skip

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to unpickle {module}.{name} (only arrays and plain data)")
        if module == "numpy.core.multiarray":  # files written before numpy 2 renamed the module
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict[str, Any]:
    """Load a CIFAR pickle with str keys, whether written by Python 2 (the real files) or 3."""
    try:
        with open(path, "rb") as f:
            d = _ArrayUnpickler(f, encoding="latin1").load()
        if not isinstance(d, dict):
            raise ValueError(f"expected a dict, found {type(d).__name__}")
    except Exception as e:
        raise DatasetError(f"cannot read CIFAR file {path}: {type(e).__name__}: {one_line(e)}") from e
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}


class CIFAR10DataModule(TensorDataModule):
    """CIFAR-10 from the python-pickle layout (``cifar-10-batches-py``); augmentation: pad 4 + crop, flip.

    ``data_dir`` may be the folder containing ``cifar-10-batches-py`` or that folder itself; then the cache
    folder is tried, where torchvision downloads it if it can.
    """

    num_classes = 10
    in_chans = 3
    input_size = (32, 32)
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    class_names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    pad, flip = 4, True

    folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    meta_file, label_key, names_key = "batches.meta", "labels", "label_names"
    torchvision_name, pretty_name = "CIFAR10", "CIFAR-10"
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"

    def _find(self, d: Path) -> Path | None:
        for cand in (d / self.folder, d):
            if all((cand / f).is_file() for f in self.train_files + self.test_files):
                return cand
        return None

    def _locate(self) -> Path:
        looked = []
        if self.data_dir:
            d = Path(self.data_dir).expanduser()
            if found := self._find(d):
                return found
            looked.append(f"data_dir={d}")
        cache = default_cache_dir()
        if found := self._find(cache):
            return found
        try:
            base.torchvision_download(self.torchvision_name, cache)
            failure = "download gave no usable files"
        except Exception as e:  # no network etc.
            failure = f"{type(e).__name__}: {one_line(e)}"
        if found := self._find(cache):
            return found
        looked.append(f"{cache} (download failed: {failure})")
        raise DatasetNotFoundError(
            f"{self.pretty_name} not found: looked in {', '.join(looked)}. Download {self.url}, extract it "
            f"and set data_dir (--data.data_dir) to the folder holding {self.folder}."
        )

    def prepare_data(self) -> None:
        self._locate()

    def _read(self, folder: Path, names: Sequence[str]) -> tuple[Tensor, Tensor]:
        xs, ys = [], []
        for name in names:
            d = _unpickle(folder / name)
            try:
                x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)  # rows are R, G, B planes
                y = np.asarray(d[self.label_key], dtype=np.int64)
            except (KeyError, ValueError) as e:
                raise DatasetError(f"malformed CIFAR file {folder / name}: {type(e).__name__}: {one_line(e)}") from e
            if len(x) != len(y):
                raise DatasetError(f"malformed CIFAR file {folder / name}: {len(x)} images, {len(y)} labels")
            xs.append(x)
            ys.append(y)
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    def _load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        folder = self._locate()
        if (folder / self.meta_file).is_file():
            names = _unpickle(folder / self.meta_file).get(self.names_key)
            if names and len(names) == self.num_classes:
                self.class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        return (*self._read(folder, self.train_files), *self._read(folder, self.test_files))


# fmt: off
CIFAR100_CLASSES = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl",
    "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair",
    "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin",
    "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp",
    "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck",
    "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television",
    "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf",
    "woman", "worm",
]
# fmt: on


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (fine labels) from the pickle layout (``cifar-100-python/train``, ``test``, ``meta``)."""

    num_classes = 100
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    class_names = CIFAR100_CLASSES

    folder = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    meta_file, label_key, names_key = "meta", "fine_labels", "fine_label_names"
    torchvision_name, pretty_name = "CIFAR100", "CIFAR-100"
    url = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
