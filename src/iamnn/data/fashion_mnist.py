"""Fashion-MNIST from its four IDX files: the IDX reader, where the files are looked for, the data module."""

from __future__ import annotations

import gzip
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import DatasetError, DatasetNotFoundError, one_line
from . import base
from .base import TensorDataModule, default_cache_dir

# Module-level so tests (and users) can redirect it; read at call time.
SYSTEM_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist

FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

__all__ = [
    "FASHION_MNIST_FILES",
    "SYSTEM_FASHION_MNIST_DIR",
    "FashionMNISTDataModule",
    "ensure_fashion_mnist",
    "read_idx",
]


# -------------------- IDX files

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


MAX_IDX_BYTES = 2**31  # 2 GiB of data per file: 40x Fashion-MNIST's training images, far below a bomb


def read_idx(path: str | Path, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array; raise DatasetError if malformed.

    The header is read and checked first, and exactly the bytes it announces are then read: a
    small gzipped file cannot inflate to gigabytes before it is refused (at most ``max_bytes``).
    """
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES or magic[3] == 0:
                raise DatasetError(f"malformed IDX file {path}: bad magic number {magic.hex() or '(empty)'}")
            dims = f.read(4 * magic[3])
            if len(dims) < 4 * magic[3]:
                raise DatasetError(f"malformed IDX file {path}: truncated header")
            shape = tuple(int.from_bytes(dims[i : i + 4], "big") for i in range(0, len(dims), 4))
            dtype = np.dtype(_IDX_DTYPES[magic[2]])
            expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
            if expected > max_bytes:
                raise DatasetError(
                    f"malformed IDX file {path}: header says shape {shape} ({expected} bytes), "
                    f"more than the {max_bytes}-byte limit"
                )
            raw = f.read(expected + 1)  # one byte more: trailing data is an error too
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise DatasetError(f"cannot read IDX file {path}: {type(e).__name__}: {one_line(e)}") from e
    if len(raw) != expected:
        found = f"{len(raw)}" if len(raw) <= expected else "more"
        raise DatasetError(
            f"malformed IDX file {path}: header says shape {shape} ({expected} bytes), found {found} bytes of data"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _find_idx_files(directory: Path) -> dict[str, Path] | None:
    """The 4 Fashion-MNIST IDX files in ``directory`` (flat) or its torchvision layout, gzipped or not."""
    for d in (directory, directory / "FashionMNIST" / "raw", directory / "raw"):
        found = {}
        for key, stem in FASHION_MNIST_FILES.items():
            hits = [d / n for n in (stem + ".gz", stem) if (d / n).is_file()]
            if hits:
                found[key] = hits[0]
        if len(found) == len(FASHION_MNIST_FILES):
            return found
    return None


# -------------------- Fashion-MNIST


class FashionMNISTDataModule(TensorDataModule):
    """Fashion-MNIST: 28x28 grey, 10 classes; augmentation: ±2 px translation and horizontal flip.

    Looks in ``data_dir``, then ``SYSTEM_FASHION_MNIST_DIR`` (``apt-get install dataset-fashion-mnist``),
    then the cache folder, where torchvision downloads it if it can. A folder may hold the four IDX files
    (gzipped or not) directly, or in torchvision's ``FashionMNIST/raw/`` layout.
    """

    num_classes = 10
    in_chans = 1
    input_size = (28, 28)
    mean = (0.2860,)
    std = (0.3530,)
    class_names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]  # fmt: skip
    pad, flip = 2, True

    def _locate(self) -> dict[str, Path]:
        looked = []
        places = [Path(SYSTEM_FASHION_MNIST_DIR)]
        if self.data_dir:
            places.insert(0, Path(self.data_dir).expanduser())
        for i, d in enumerate(places):
            files = _find_idx_files(d)
            if files:
                return files
            looked.append(f"data_dir={d}" if self.data_dir and i == 0 else str(d))
        cache = default_cache_dir()
        files = _find_idx_files(cache)
        if files:
            return files
        try:
            base.torchvision_download("FashionMNIST", cache)
            files = _find_idx_files(cache)
            failure = "download gave no IDX files"
        except Exception as e:  # no network, proxy, disk full, ...: all mean "not found here"
            failure = f"{type(e).__name__}: {one_line(e)}"
        if files:
            return files
        looked.append(f"{cache} (download failed: {failure})")
        raise DatasetNotFoundError(
            f"Fashion-MNIST not found: looked in {', '.join(looked)}. Install it with "
            "`apt-get install dataset-fashion-mnist` or set data_dir (--data.data_dir) to a folder "
            "holding the four IDX files."
        )

    def prepare_data(self) -> None:
        self._locate()

    def _load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        files = self._locate()
        out = []
        for split in ("train", "test"):
            images, labels = read_idx(files[f"{split}_images"]), read_idx(files[f"{split}_labels"])
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise DatasetError(
                    f"Fashion-MNIST {split} files do not match: images {images.shape} in "
                    f"{files[f'{split}_images']}, labels {labels.shape} in {files[f'{split}_labels']}"
                )
            # astype copies: frombuffer arrays are read-only, which torch.from_numpy warns about
            out += [torch.from_numpy(images.astype(np.uint8)).unsqueeze(1),
                    torch.from_numpy(labels.astype(np.int64))]  # fmt: skip
        return tuple(out)  # type: ignore[return-value]


def ensure_fashion_mnist() -> None:
    """For ``make demo``: install ``dataset-fashion-mnist`` with apt-get if missing and we are root.

    Otherwise does nothing: the loader falls back to a torchvision download.
    """
    if _find_idx_files(Path(SYSTEM_FASHION_MNIST_DIR)):
        return
    geteuid = getattr(os, "geteuid", None)
    if geteuid is None or geteuid() != 0 or shutil.which("apt-get") is None:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "dataset-fashion-mnist"]):
        print(f"iamnn: Fashion-MNIST missing from {SYSTEM_FASHION_MNIST_DIR}; running {' '.join(cmd)}",
              file=sys.stderr)  # fmt: skip
        if subprocess.run(cmd, env=env, check=False).returncode != 0:
            print(f"iamnn: `{' '.join(cmd)}` failed; the loader will try a download instead", file=sys.stderr)
            return
