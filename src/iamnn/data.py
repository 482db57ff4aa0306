"""LightningDataModules for image classification: Fashion-MNIST, CIFAR-10/100, ImageFolder/ImageNet, digits.

Small datasets (Fashion-MNIST, CIFAR, digits) are held in memory as uint8 tensors and augmented a batch at a
time (``TensorImageDataset.__getitems__``), which keeps per-sample Python overhead low on a few CPU cores.
"""

from __future__ import annotations

import copy
import gzip
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import find_classes

# Module-level so tests (and users) can redirect them.
SYSTEM_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
DEFAULT_CACHE_DIR = "~/.cache/iamnn/data"  # overridden by $IAMNN_DATA

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

__all__ = [
    "DATAMODULES",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "DatasetError",
    "DatasetNotFoundError",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "ImageNetDataModule",
    "TensorImageDataset",
    "create_datamodule",
    "default_cache_dir",
    "ensure_fashion_mnist",
    "read_idx",
]


class DatasetError(RuntimeError):
    """A dataset is missing or malformed."""


class DatasetNotFoundError(DatasetError):
    """A dataset was not found in any of the places looked in."""


def default_cache_dir() -> Path:
    """Where downloads go: ``$IAMNN_DATA`` or ``DEFAULT_CACHE_DIR``."""
    return Path(os.environ.get("IAMNN_DATA") or DEFAULT_CACHE_DIR).expanduser()


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _torchvision_download(dataset: str, root: Path) -> None:
    """Download a torchvision dataset (``"FashionMNIST"``, ``"CIFAR10"``, ...) into ``root``."""
    from torchvision import datasets

    getattr(datasets, dataset)(root=str(root), train=True, download=True)


# -------------------- IDX files

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array; raise DatasetError if malformed."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise DatasetError(f"cannot read IDX file {path}: {_one_line(e)}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DatasetError(f"malformed IDX file {path}: bad magic number {raw[:4].hex() or '(empty)'}")
    ndim, header = raw[3], 4 + 4 * raw[3]
    if len(raw) < header:
        raise DatasetError(f"malformed IDX file {path}: truncated header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DatasetError(
            f"malformed IDX file {path}: header says shape {shape} ({expected} bytes), "
            f"found {len(raw) - header} bytes of data"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


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


# -------------------- datasets


def _random_translate(x: Tensor, pad: int) -> Tensor:
    """Zero-pad by ``pad`` and crop back at a random offset, independently per image of a batch."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b, 1))
    dx = torch.randint(0, 2 * pad + 1, (b, 1))
    rows = (dy + torch.arange(h))[:, None, :, None]
    cols = (dx + torch.arange(w))[:, None, None, :]
    return padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def _random_hflip(x: Tensor) -> Tensor:
    flip = torch.rand(x.shape[0]) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


class TensorImageDataset(Dataset):
    """In-memory images ``(N, C, H, W)`` (uint8 0..255 or float 0..1) and labels ``(N,)``.

    Returns float images scaled to [0, 1], optionally augmented (random translation by up to ``pad`` px,
    random horizontal flip) and normalised with ``mean``/``std`` (skipped when ``mean`` is None).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        pad: int = 0,
        flip: bool = False,
    ) -> None:
        if images.ndim != 4 or len(images) != len(labels):
            raise ValueError(
                f"expected images (N,C,H,W) and labels (N,), got {tuple(images.shape)}, {tuple(labels.shape)}"
            )
        self.images, self.labels = images, labels.long()
        self.mean = None if mean is None else torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        self.std = None if std is None else torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
        self.pad, self.flip = pad, flip

    def __len__(self) -> int:
        return len(self.images)

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Tensor, Tensor]]:
        # DataLoader calls this with a whole batch of indices: one vectorised op per batch, not per sample.
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self.images[idx]  # advanced indexing copies, so the in-place ops below never touch the storage
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        if self.pad:
            x = _random_translate(x, self.pad)
        if self.flip:
            x = _random_hflip(x)
        if self.mean is not None:
            x = x.sub_(self.mean).div_(self.std)
        return list(zip(x.unbind(0), self.labels[idx].unbind(0), strict=True))

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.__getitems__([index])[0]


class EpochShuffleSampler(RandomSampler):
    """Random order that depends only on ``(seed, epoch)``, like ``DistributedSampler`` on one process.

    A plain ``RandomSampler`` draws its permutation from the global RNG whenever the loader's
    iterator starts, so a run resumed from a checkpoint shuffles differently from the run it
    continues. Lightning calls ``set_epoch`` before each epoch (and swaps in a ``DistributedSampler``
    under DDP, since this is a ``RandomSampler``); a hand-written loop must call it too.
    """

    def __init__(self, data_source: Sequence, seed: int = 0) -> None:
        super().__init__(data_source)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=g).tolist()


# -------------------- base


class ImageDataModule(L.LightningDataModule):
    """Common base: a seeded validation split held out from the training set, subsets and loaders.

    Args:
        data_dir: Folder holding the dataset; None uses the dataset's default locations.
        batch_size: Training batch size.
        eval_batch_size: Validation/test/predict batch size; None means ``batch_size``.
        num_workers: DataLoader worker processes (0 loads in the main process).
        val_size: Validation samples held out from the training set: a count, or a fraction if a float
            in (0, 1). 0 means no split; validation then runs on the test set.
        seed: Seed of the train/validation split.
        augment: Apply training augmentation.
        train_subset: Keep only the first N training samples after the split (fast tests/demos).
        test_subset: Keep only the first N test samples.
    """

    num_classes: int
    in_chans: int
    input_size: tuple[int, int]  # (H, W) at the model input
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str]

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_size: int | float = 5000,
        seed: int = 0,
        augment: bool = True,
        train_subset: int | None = None,
        test_subset: int | None = None,
    ) -> None:
        super().__init__()
        for name, value in [("batch_size", batch_size), ("eval_batch_size", eval_batch_size or batch_size),
                            ("train_subset", train_subset or 1), ("test_subset", test_subset or 1)]:  # fmt: skip
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.val_size = val_size
        self.seed = seed
        self.augment = augment
        self.train_subset = train_subset
        self.test_subset = test_subset
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    # Subclasses implement these two.
    def _make_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        """(train with training transforms, train with eval transforms, test), before any split."""
        raise NotImplementedError

    def test_dataset_raw(self) -> Dataset:
        """The test set un-normalised: float images in [0, 1] of shape (C, H, W), with labels."""
        raise NotImplementedError

    def _subset_test(self, ds: Dataset) -> Dataset:
        return ds if self.test_subset is None else Subset(ds, range(min(self.test_subset, len(ds))))

    def _num_val(self, n: int) -> int:
        v = self.val_size
        n_val = round(v * n) if isinstance(v, float) and 0 < v < 1 else int(v)
        if not 0 <= n_val < n:
            raise ValueError(f"val_size={v} must leave training samples out of {n}")
        return n_val

    def prepare_data(self) -> None:
        """Check that the data is there (fetching it if the dataset can); builds nothing."""

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:  # Lightning calls setup once per stage; the splits never change
            return
        train_aug, train_eval, test = self._make_datasets()
        n = len(train_aug)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).tolist()
        n_val = self._num_val(n)
        train_idx = perm[n_val:]
        if self.train_subset is not None:
            train_idx = train_idx[: self.train_subset]
        self.train_set = Subset(train_aug, train_idx)
        self.val_set = Subset(train_eval, perm[:n_val]) if n_val else None
        self.test_set = self._subset_test(test)

    def _loader(self, ds: Dataset | None, train: bool = False) -> DataLoader:
        if ds is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for a dataloader")
        # Training order and worker seeds follow (seed, epoch) only; the global RNG, reseeded each
        # epoch by lit.EpochSeed, is left to the augmentation. Together: bitwise-identical resumes.
        seed = int(os.environ.get("PL_GLOBAL_SEED", self.seed))
        return DataLoader(
            ds,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=EpochShuffleSampler(ds, seed) if train else None,
            generator=torch.Generator().manual_seed(seed) if train else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set if self.val_set is not None else self.test_set)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)


class _TensorDataModule(ImageDataModule):
    """Base for datasets held in memory: subclasses implement ``_load`` and set ``pad``/``flip``."""

    pad: int = 0  # training translation, pixels
    flip: bool = False  # training horizontal flip

    def _load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(train images, train labels, test images, test labels); images (N, C, H, W)."""
        raise NotImplementedError

    def _tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if getattr(self, "_data", None) is None:
            self._data = self._load()
        return self._data

    def _make_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        xtr, ytr, xte, yte = self._tensors()
        pad, flip = (self.pad, self.flip) if self.augment else (0, False)
        return (
            TensorImageDataset(xtr, ytr, self.mean, self.std, pad=pad, flip=flip),
            TensorImageDataset(xtr, ytr, self.mean, self.std),
            TensorImageDataset(xte, yte, self.mean, self.std),
        )

    def test_dataset_raw(self) -> Dataset:
        _, _, xte, yte = self._tensors()
        return self._subset_test(TensorImageDataset(xte, yte))


# -------------------- Fashion-MNIST


class FashionMNISTDataModule(_TensorDataModule):
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
            _torchvision_download("FashionMNIST", cache)
            files = _find_idx_files(cache)
            failure = "download gave no IDX files"
        except Exception as e:  # no network, proxy, disk full, ...: all mean "not found here"
            failure = _one_line(e)
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


# -------------------- CIFAR


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
        raise DatasetError(f"cannot read CIFAR file {path}: {_one_line(e)}") from e
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}


class CIFAR10DataModule(_TensorDataModule):
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
            _torchvision_download(self.torchvision_name, cache)
            failure = "download gave no usable files"
        except Exception as e:  # no network etc.
            failure = _one_line(e)
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
                raise DatasetError(f"malformed CIFAR file {folder / name}: {_one_line(e)}") from e
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


# -------------------- ImageFolder


class _ImageFolder(ImageFolder):
    """An ImageFolder whose class indices come from ``classes``, so that val/ matches train/."""

    def __init__(self, root: Path, classes: list[str], transform: Any, allow_empty: bool = False) -> None:
        self.fixed_classes = list(classes)  # set before super().__init__, which calls find_classes
        super().__init__(str(root), transform=transform, allow_empty=allow_empty)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        return self.fixed_classes, {c: i for i, c in enumerate(self.fixed_classes)}


class ImageFolderDataModule(ImageDataModule):
    """Any ImageFolder dataset (e.g. ImageNet): ``data_dir/train/<class>/*`` and ``data_dir/val/<class>/*``.

    ``val/`` is the test set; validation is held out from ``train/``. Training: RandomResizedCrop + flip;
    evaluation: Resize(image_size * 256 / 224) + CenterCrop. ImageNet mean/std.

    Args:
        data_dir: Folder with ``train/`` and ``val/`` subfolders of class folders.
        batch_size: Training batch size.
        eval_batch_size: Validation/test/predict batch size; None means ``batch_size``.
        num_workers: DataLoader worker processes (decoding JPEGs wants several).
        val_size: Validation samples held out from ``train/`` (count, or fraction if a float in (0, 1)).
        seed: Seed of the train/validation split.
        augment: Random crops and flips for training (else the evaluation transform).
        train_subset: Keep only the first N training samples after the split.
        test_subset: Keep only the first N test samples.
        image_size: Side of the square model input.
    """

    in_chans = 3
    mean = IMAGENET_MEAN
    std = IMAGENET_STD
    pretty_name = "ImageFolder dataset"

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_size: int | float = 5000,
        seed: int = 0,
        augment: bool = True,
        train_subset: int | None = None,
        test_subset: int | None = None,
        image_size: int = 224,
    ) -> None:
        super().__init__(data_dir, batch_size, eval_batch_size, num_workers, val_size, seed, augment,
                         train_subset, test_subset)  # fmt: skip
        self.image_size = image_size
        self.input_size = (image_size, image_size)
        self._classes: list[str] | None = None

    def _root(self) -> Path:
        root = Path(self.data_dir).expanduser() if self.data_dir else None
        if root is None or not (root / "train").is_dir() or not (root / "val").is_dir():
            raise DatasetNotFoundError(
                f"{self.pretty_name} not found: looked in data_dir={root}. Set data_dir (--data.data_dir) "
                "to a folder with train/ and val/ subfolders, each holding one folder of images per class."
            )
        return root

    @property
    def class_names(self) -> list[str]:  # type: ignore[override]
        if self._classes is None:
            self._classes = find_classes(str(self._root() / "train"))[0]
        return self._classes

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        return len(self.class_names)

    def _transform(self, train: bool, normalize: bool = True) -> Any:
        from torchvision.transforms import v2

        s = self.image_size
        if train:
            geometry = [v2.RandomResizedCrop(s, antialias=True), v2.RandomHorizontalFlip()]
        else:
            geometry = [v2.Resize(int(s * 256 / 224), antialias=True), v2.CenterCrop(s)]
        tail = [v2.Normalize(self.mean, self.std)] if normalize else []
        return v2.Compose([*geometry, v2.ToImage(), v2.ToDtype(torch.float32, scale=True), *tail])

    def prepare_data(self) -> None:
        self._root()

    def _make_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        root, classes = self._root(), self.class_names
        train = _ImageFolder(root / "train", classes, self._transform(train=self.augment))
        train_eval = copy.copy(train)  # same file list, evaluation transform
        train_eval.transform = self._transform(train=False)
        test = _ImageFolder(root / "val", classes, self._transform(train=False), allow_empty=True)
        return train, train_eval, test

    def test_dataset_raw(self) -> Dataset:
        tf = self._transform(train=False, normalize=False)
        return self._subset_test(_ImageFolder(self._root() / "val", self.class_names, tf, allow_empty=True))


class ImageNetDataModule(ImageFolderDataModule):
    """ImageNet in the ImageFolder layout (``train/`` and ``val/`` with one folder per synset)."""

    pretty_name = "ImageNet"


# -------------------- digits


class DigitsDataModule(_TensorDataModule):
    """scikit-learn's 8x8 digits (1797 images, 10 classes), resized to ``image_size``; for fast tests.

    The last 297 samples are the test set. Values are the 0..16 counts / 16.

    Args:
        data_dir: Unused (the data ships with scikit-learn).
        batch_size: Training batch size.
        eval_batch_size: Validation/test/predict batch size; None means ``batch_size``.
        num_workers: DataLoader worker processes.
        val_size: Validation samples held out from the 1500 training samples.
        seed: Seed of the train/validation split.
        augment: Random ±1 px (at 8x8) translation for training.
        train_subset: Keep only the first N training samples after the split.
        test_subset: Keep only the first N test samples.
        image_size: Side of the model input (bilinear resize from 8; 8 keeps the original).
    """

    num_classes = 10
    in_chans = 1
    mean = (0.3053,)  # measured at the default 16x16
    std = (0.3189,)
    class_names = [str(i) for i in range(10)]
    num_test = 297

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_size: int | float = 200,
        seed: int = 0,
        augment: bool = False,
        train_subset: int | None = None,
        test_subset: int | None = None,
        image_size: int = 16,
    ) -> None:
        super().__init__(data_dir, batch_size, eval_batch_size, num_workers, val_size, seed, augment,
                         train_subset, test_subset)  # fmt: skip
        self.image_size = image_size
        self.input_size = (image_size, image_size)
        self.pad, self.flip = max(1, image_size // 8), False  # digits are not mirror-symmetric

    def _load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        try:
            from sklearn.datasets import load_digits
        except ImportError as e:
            raise DatasetNotFoundError("digits need scikit-learn: pip install scikit-learn") from e
        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16
        if self.image_size != 8:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False).clamp_(0, 1)
        y = torch.tensor(d.target, dtype=torch.long)
        k = len(x) - self.num_test
        return x[:k], y[:k], x[k:], y[k:]


# -------------------- registry

DATAMODULES: dict[str, type[ImageDataModule]] = {
    "fashion_mnist": FashionMNISTDataModule,
    "cifar10": CIFAR10DataModule,
    "cifar100": CIFAR100DataModule,
    "imagenet": ImageNetDataModule,
    "imagefolder": ImageFolderDataModule,
    "digits": DigitsDataModule,
}


def create_datamodule(name: str, **kwargs: Any) -> ImageDataModule:
    """Build a registered DataModule by name, e.g. ``create_datamodule("fashion_mnist", batch_size=64)``."""
    key = name.lower().replace("-", "_")
    if key not in DATAMODULES:
        raise KeyError(f"unknown dataset {name!r}; choose from {', '.join(DATAMODULES)}")
    return DATAMODULES[key](**kwargs)


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


if __name__ == "__main__":
    if sys.argv[1:] == ["ensure-fashion-mnist"]:
        ensure_fashion_mnist()
    else:
        sys.exit("usage: python -m iamnn.data ensure-fashion-mnist")
