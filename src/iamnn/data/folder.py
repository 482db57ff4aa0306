"""Image datasets in the ImageFolder layout (``train/<class>/*``, ``val/<class>/*``), ImageNet among them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import find_classes

from ..errors import DatasetError, DatasetNotFoundError, one_line
from .base import IMAGENET_MEAN, IMAGENET_STD, ImageDataModule, check_image_size

__all__ = ["ImageFolderDataModule", "ImageNetDataModule"]


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
        self.image_size = check_image_size(image_size)
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
            try:
                self._classes = find_classes(str(self._root() / "train"))[0]
            except FileNotFoundError as err:  # torchvision: no class folder
                raise DatasetError(f"{self.pretty_name} in {self._root() / 'train'}: {one_line(err)}") from None
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
        try:
            train = _ImageFolder(root / "train", classes, self._transform(train=self.augment))
        except FileNotFoundError as err:  # torchvision: no image in any class folder
            raise DatasetError(f"{self.pretty_name} in {root / 'train'}: {one_line(err)}") from None
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
