"""Folders of images, one folder per class (``root/<class>/*``), or ``train/`` and ``val/`` folders of
them (ImageNet's layout): your own data, ImageNet among it."""

from __future__ import annotations

import copy
import math
import os
import random
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision.datasets import ImageFolder

from ..errors import DatasetError, DatasetNotFoundError, one_line
from ..files import IMAGE_SUFFIXES, is_image_file, read_image
from .base import IMAGENET_MEAN, IMAGENET_STD, ImageDataModule, check_image_size

__all__ = ["EXAMPLE_CLASSES", "ImageFolderDataModule", "ImageNetDataModule", "load_sample", "make_example_folder"]

# one channel: the average of ImageNet's three, as timm does for in_chans=1
GREY_MEAN = (round(sum(IMAGENET_MEAN) / 3, 4),)
GREY_STD = (round(sum(IMAGENET_STD) / 3, 4),)


def load_sample(path: str, in_chans: int) -> Image.Image:
    """A training image, decoded as ``iamnn predict`` decodes (``files.read_image``); a file that
    does not decode stops training naming it: skipped silently, a class would shrink unseen."""
    try:
        return read_image(path, in_chans)
    except ValueError as err:
        raise DatasetError(f"{path}: {err}; remove or replace the file") from None


class _ImageFolder(ImageFolder):
    """An ImageFolder whose class indices come from ``classes``, so that val/ matches train/, which
    reads images as ``iamnn predict`` does and skips files that are not images and hidden files."""

    def __init__(
        self, root: Path, classes: list[str], transform: Any, in_chans: int, allow_empty: bool = False
    ) -> None:
        self.fixed_classes = list(classes)  # set before super().__init__, which calls find_classes
        super().__init__(str(root), transform=transform, loader=partial(load_sample, in_chans=in_chans),
                         is_valid_file=is_image_file, allow_empty=allow_empty)  # fmt: skip

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        return self.fixed_classes, {c: i for i, c in enumerate(self.fixed_classes)}


class ImageFolderDataModule(ImageDataModule):
    """Your own images: one folder per class (``data_dir/<class>/*.jpg``), or ``train/`` and ``val/``
    folders of class folders (ImageNet's layout, whose ``val/`` is then the test set).

    The class names are the class folders' names, sorted. Validation (which epoch's weights are
    kept) runs on ``val_size`` images held out, seeded, from the training images; the test set
    (``iamnn test``, ``iamnn report``) is ``val/``, or without a ``val/`` those validation images.
    Files without an image suffix, and hidden files and folders, are skipped; a class folder
    without images, a single class or an image that does not decode is an error. Training:
    RandomResizedCrop + flip; evaluation, and ``iamnn predict`` from the saved weights: resize to
    ``image_size / crop_pct``, centre crop. Input size, channels, mean/std, crop and class names
    travel with the weights.

    Args:
        data_dir: Folder of class folders, or with ``train/`` (and ``val/``) folders of them.
        batch_size: Training batch size.
        eval_batch_size: Validation/test/predict batch size; None means ``batch_size``.
        num_workers: DataLoader worker processes (decoding JPEGs wants several).
        val_size: Validation images held out from the training images (count, or fraction if a
            float in (0, 1)). 0 with a ``val/`` folder validates on ``val/``.
        seed: Seed of the train/validation split.
        augment: Random crops and flips for training (else the evaluation transform).
        train_subset: Keep only the first N training samples after the split.
        test_subset: Keep only the first N test samples.
        image_size: Side of the square model input.
        grayscale: One channel (every image converted to grey) instead of RGB.
        mean: Per-channel mean of the normalisation; None: ImageNet's (grey: their average).
        std: Per-channel standard deviation, likewise. Fixed values, not measured on the folder:
            BatchNorm follows the first convolution, so they need only be about right.
        crop_pct: Evaluation resizes an image to ``image_size / crop_pct``, then centre-crops it
            (timm's name; 0.875 is torchvision's 256 → 224, 1 keeps the whole image).
        min_scale: Training crops cover this fraction of an image's area or more (RandomResizedCrop's
            ``scale``): 0.08 is torchvision's ImageNet recipe, too harsh for a few hundred images, where a
            crop of a twelfth of the picture often misses the object that names its class.
    """

    pretty_name = "ImageFolder dataset"

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_size: int | float = 0.2,
        seed: int = 0,
        augment: bool = True,
        train_subset: int | None = None,
        test_subset: int | None = None,
        image_size: int = 224,
        grayscale: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        crop_pct: float = 0.875,
        min_scale: float = 0.35,
    ) -> None:
        super().__init__(data_dir, batch_size, eval_batch_size, num_workers, val_size, seed, augment,
                         train_subset, test_subset)  # fmt: skip
        self.image_size = check_image_size(image_size)
        self.input_size = (image_size, image_size)
        self.in_chans = 1 if grayscale else 3
        self.mean = _per_channel("mean", mean, GREY_MEAN if grayscale else IMAGENET_MEAN, self.in_chans)
        self.std = _per_channel("std", std, GREY_STD if grayscale else IMAGENET_STD, self.in_chans)
        if any(v <= 0 for v in self.std):
            raise ValueError(f"std must be > 0 for every channel, got {list(self.std)}")
        if isinstance(crop_pct, bool) or not isinstance(crop_pct, int | float) or not 0.05 <= crop_pct <= 1:
            raise ValueError(f"crop_pct must be a number in 0.05..1, got {crop_pct!r}")
        self.crop_pct = float(crop_pct)
        if isinstance(min_scale, bool) or not isinstance(min_scale, int | float) or not 0 < min_scale <= 1:
            raise ValueError(f"min_scale must be a fraction in (0, 1], got {min_scale!r}")
        self.min_scale = float(min_scale)
        self._classes: list[str] | None = None

    def _layout(self) -> tuple[Path, Path | None]:
        """(the folder of the training class folders, the folder of the test class folders or None)."""
        root = Path(self.data_dir).expanduser() if self.data_dir else None
        if root is None or not root.is_dir():
            raise DatasetNotFoundError(
                f"{self.pretty_name} not found: looked in data_dir={root}. Set data_dir (--data.data_dir) "
                "to a folder with one folder of images per class, or with train/ and val/ folders of them."
            )
        if (root / "train").is_dir():
            return root / "train", root / "val" if (root / "val").is_dir() else None
        return root, None

    @property
    def class_names(self) -> list[str]:  # type: ignore[override]
        if self._classes is None:
            folder = self._layout()[0]
            try:
                classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
            except OSError as err:
                raise DatasetError(f"{self.pretty_name} in {folder}: {one_line(err)}") from None
            if not classes:
                layouts = "" if folder.name == "train" else ", or train/ and val/ folders of class folders"
                raise DatasetNotFoundError(
                    f"{self.pretty_name}: Couldn't find any class folder in {folder}: put each class's images "
                    f"in a folder of its own ({folder}/<class>/*.jpg{layouts})"
                )
            if len(classes) == 1:
                raise DatasetError(f"{self.pretty_name} in {folder}: one class folder ({classes[0]}); a classifier "
                                   "needs two or more, one folder of images per class")  # fmt: skip
            self._classes = classes
        return self._classes

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        return len(self.class_names)

    def _transform(self, train: bool, normalize: bool = True) -> Any:
        from torchvision.transforms import v2

        s = self.image_size
        pixels = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
        tail = [v2.Normalize(self.mean, self.std)] if normalize else []
        if train:
            crop = v2.RandomResizedCrop(s, scale=(self.min_scale, 1.0), antialias=True)
            return v2.Compose([crop, v2.RandomHorizontalFlip(), *pixels, *tail])
        # resized as float pixels, as `iamnn predict` resizes (prediction.create_transform): the same input
        return v2.Compose([*pixels, v2.Resize(int(s / self.crop_pct), antialias=True), v2.CenterCrop(s), *tail])

    def _folder(self, root: Path, transform: Any, allow_empty: bool = False) -> _ImageFolder:
        try:
            return _ImageFolder(root, self.class_names, transform, self.in_chans, allow_empty=allow_empty)
        except FileNotFoundError as err:  # torchvision: a class folder without an image file
            suffixes = " ".join(sorted(IMAGE_SUFFIXES))
            raise DatasetError(f"{self.pretty_name} in {root}: {one_line(err)} (image files end in {suffixes}); "
                               "add images or remove the folder") from None  # fmt: skip

    def prepare_data(self) -> None:
        _ = self.class_names  # the layout and its classes are checked before anything is built

    def _make_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        train_root, test_root = self._layout()
        if test_root is None and not self.val_size:
            raise DatasetError(f"{self.pretty_name} in {train_root}: val_size 0 holds out no image, and without a "
                               "val/ folder the held-out images are the only test set; give val_size > 0")  # fmt: skip
        train = self._folder(train_root, self._transform(train=self.augment))
        train_eval = copy.copy(train)  # same file list, evaluation transform
        train_eval.transform = self._transform(train=False)
        # without val/, setup() makes the validation images the test set
        test = train_eval if test_root is None else self._folder(test_root, train_eval.transform, allow_empty=True)
        return train, train_eval, test

    def setup(self, stage: str | None = None) -> None:
        fresh = self.train_set is None
        super().setup(stage)
        if fresh and self._layout()[1] is None:
            self.test_set = self._subset_test(self.val_set)

    def test_dataset_raw(self) -> Dataset:
        tf = self._transform(train=False, normalize=False)
        train_root, test_root = self._layout()
        if test_root is not None:
            return self._subset_test(self._folder(test_root, tf, allow_empty=True))
        self.setup("test")
        return self._subset_test(Subset(self._folder(train_root, tf), self.val_set.indices))


def _per_channel(name: str, values: Sequence[float] | None, default: tuple[float, ...], n: int) -> tuple[float, ...]:
    """``values`` (or ``default``) as one finite float per channel (``n``); else ValueError naming ``name``."""
    values = default if values is None else values
    numbers = not isinstance(values, str) and isinstance(values, Sequence) and len(values) == n
    if not numbers or not all(type(v) in (int, float) and math.isfinite(v) for v in values):
        raise ValueError(f"{name} must be {n} finite number(s), one per channel, got {values!r}")
    return tuple(float(v) for v in values)


EXAMPLE_CLASSES = ("circle", "square", "triangle")


def make_example_folder(root: str | Path, per_class: int = 200, size: int = 64, seed: int = 0) -> Path:
    """A folder to try training on: ``per_class`` PNGs of each of a circle, a square and a triangle
    (``root/<shape>/0000.png`` …), dark shapes of random colours, sizes and places on random light
    backgrounds, each image about ``size`` pixels a side and no two the same size (as photos are
    not). Seeded; DatasetError if ``root`` holds anything already."""
    from PIL import ImageDraw

    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DatasetError(f"{root} exists and is not an empty folder: give a new one")
    if size < 8 or per_class < 1:
        raise ValueError(f"size must be >= 8 and per_class >= 1, got {size} and {per_class}")
    rng = random.Random(seed)
    corners = {"square": [math.pi / 4 + j * math.pi / 2 for j in range(4)],  # upright, as drawn by hand
               "triangle": [-math.pi / 2 + j * 2 * math.pi / 3 for j in range(3)]}  # fmt: skip
    for name in EXAMPLE_CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = rng.randint(size * 3 // 4, size * 5 // 4), rng.randint(size * 3 // 4, size * 5 // 4)
            # light and dark, each of any hue: telling shapes apart by colour or contrast is no help
            img = Image.new("RGB", (w, h), tuple(rng.randint(170, 255) for _ in range(3)))
            fill = tuple(rng.randint(0, 120) for _ in range(3))
            r = rng.uniform(0.25, 0.4) * min(w, h)
            x, y = rng.uniform(r, w - r), rng.uniform(r, h - r)
            draw = ImageDraw.Draw(img)
            if name == "circle":
                draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
            else:
                draw.polygon([(x + r * math.cos(a), y + r * math.sin(a)) for a in corners[name]], fill=fill)
            img.save(root / name / f"{i:04d}.png")
    return root


class ImageNetDataModule(ImageFolderDataModule):
    """ImageNet in the ImageFolder layout (``train/`` and ``val/`` with one folder per synset);
    :class:`ImageFolderDataModule`'s arguments, with torchvision's ImageNet defaults: 5000 validation
    images, training crops down to 8 % of an image."""

    pretty_name = "ImageNet"

    # the whole signature again: LightningCLI reads each default from it (and, with rich imported,
    # jsonargparse parses `--data.val_size 100` as 100.0 for an `int | float | None` annotation)
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
        grayscale: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        crop_pct: float = 0.875,
        min_scale: float = 0.08,
    ) -> None:
        super().__init__(data_dir, batch_size, eval_batch_size, num_workers, val_size, seed, augment,
                         train_subset, test_subset, image_size, grayscale, mean, std, crop_pct, min_scale)  # fmt: skip
