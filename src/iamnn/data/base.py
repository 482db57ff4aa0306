"""The base of every data module: splits, loaders, in-memory tensors and their batch augmentation.

Small datasets (Fashion-MNIST, CIFAR, digits) are held in memory as uint8 tensors and augmented a batch at a
time (``TensorImageDataset.__getitems__``), which keeps per-sample Python overhead low on a few CPU cores.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset

from ..errors import DatasetError

# Module-level so tests (and users) can redirect it; read at call time.
DEFAULT_CACHE_DIR = "~/.cache/iamnn/data"  # overridden by $IAMNN_DATA

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = [
    "DEFAULT_CACHE_DIR",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EpochShuffleSampler",
    "ImageDataModule",
    "TensorDataModule",
    "TensorImageDataset",
    "default_cache_dir",
    "torchvision_download",
]


MAX_WORKERS = 4 * (os.cpu_count() or 1)
MAX_IMAGE_SIDE = 1024  # pixels: the largest image_size a recipe or a run folder's config.yaml may ask for


def check_image_size(image_size: object, largest: int = MAX_IMAGE_SIDE) -> int:
    """``image_size`` if it is a side in 1..``largest`` pixels, else ValueError."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or not 1 <= image_size <= largest:
        raise ValueError(f"image_size must be an int in 1..{largest}, got {image_size!r}")
    return image_size


def default_cache_dir() -> Path:
    """Where downloads go: ``$IAMNN_DATA`` or ``DEFAULT_CACHE_DIR``."""
    return Path(os.environ.get("IAMNN_DATA") or DEFAULT_CACHE_DIR).expanduser()


def torchvision_download(dataset: str, root: Path) -> None:
    """Download a torchvision dataset (``"FashionMNIST"``, ``"CIFAR10"``, ...) into ``root``.

    Callers use it as ``base.torchvision_download`` so that one monkeypatch here reaches every dataset.
    """
    from torchvision import datasets

    getattr(datasets, dataset)(root=str(root), train=True, download=True)


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
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or not 0 <= num_workers <= MAX_WORKERS:
            # a run folder's config.yaml asking for 10 000 workers started processes until the cap
            raise ValueError(f"num_workers must be in 0..{MAX_WORKERS} (4 per CPU core), got {num_workers!r}")
        if isinstance(val_size, bool) or not (val_size >= 0) or (isinstance(val_size, float) and val_size >= 1):
            raise ValueError(f"val_size must be a count >= 0 or a fraction in [0, 1), got {val_size!r}")
        if data_dir is not None and not Path(data_dir).expanduser().is_dir():
            # else a typo would silently train on the copy found elsewhere (the system's, the cache's)
            raise DatasetError(f"data_dir {data_dir} is not a folder")
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

    @property
    def full_test_size(self) -> int:
        """Images in the whole test split, ``test_subset`` or not: results say "500 of 10 000 test
        images", so that a subset's accuracy does not read as the full set's."""
        if self.test_set is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for the test set's size")
        ds = self.test_set
        return len(ds.dataset) if self.test_subset is not None and isinstance(ds, Subset) else len(ds)

    def _num_val(self, n: int) -> int:
        v = self.val_size
        n_val = round(v * n) if isinstance(v, float) and 0 < v < 1 else int(v)
        if not 0 <= n_val < n:
            raise DatasetError(f"val_size={v} must leave training samples out of the {n} training images")
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
        # epoch by training.callbacks.EpochSeed, is left to the augmentation. Together: bitwise-identical resumes.
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


class TensorDataModule(ImageDataModule):
    """Base for datasets held in memory: subclasses implement ``_load`` and set ``pad``/``flip``."""

    pad: int = 0  # training translation, pixels
    flip: bool = False  # training horizontal flip

    def _load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(train images, train labels, test images, test labels); images (N, C, H, W)."""
        raise NotImplementedError

    def _tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if getattr(self, "_data", None) is None:
            data = self._load()
            for split, labels in (("training", data[1]), ("test", data[3])):
                # an out-of-range label would fail deep inside the loss, mid-training
                if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                    raise DatasetError(
                        f"{type(self).__name__}: {split} labels range over {int(labels.min())}..{int(labels.max())}, "
                        f"outside 0..{self.num_classes - 1}"
                    )
            self._data = data
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
