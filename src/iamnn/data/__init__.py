"""LightningDataModules for image classification: Fashion-MNIST, CIFAR-10/100, ImageFolder/ImageNet, digits.

One module per source (``fashion_mnist``, ``cifar``, ``folder``, ``digits``) on a shared ``base``; this
package re-exports their data modules and holds the registry: ``DATAMODULES``, ``create_datamodule`` and
``datamodule_class``, the one lookup of a data-module class by name. Settings that tests redirect live in
the module that reads them: ``fashion_mnist.SYSTEM_FASHION_MNIST_DIR``, ``base.DEFAULT_CACHE_DIR``,
``base.torchvision_download``.
"""

from __future__ import annotations

from typing import Any

from ..errors import DatasetError, DatasetNotFoundError
from .base import EpochShuffleSampler, ImageDataModule, TensorImageDataset, default_cache_dir
from .cifar import CIFAR10DataModule, CIFAR100DataModule
from .cluttered import ClutteredFashionMNISTDataModule
from .digits import DigitsDataModule
from .fashion_mnist import FashionMNISTDataModule, ensure_fashion_mnist, read_idx
from .folder import ImageFolderDataModule, ImageNetDataModule

__all__ = [
    "DATAMODULES",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "ClutteredFashionMNISTDataModule",
    "DatasetError",
    "DatasetNotFoundError",
    "DigitsDataModule",
    "EpochShuffleSampler",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "ImageNetDataModule",
    "TensorImageDataset",
    "create_datamodule",
    "datamodule_class",
    "default_cache_dir",
    "ensure_fashion_mnist",
    "read_idx",
]

# -------------------- registry

DATAMODULES: dict[str, type[ImageDataModule]] = {
    "fashion_mnist": FashionMNISTDataModule,
    "cluttered_fashion_mnist": ClutteredFashionMNISTDataModule,
    "cifar10": CIFAR10DataModule,
    "cifar100": CIFAR100DataModule,
    "imagenet": ImageNetDataModule,
    "imagefolder": ImageFolderDataModule,
    "digits": DigitsDataModule,
}


def create_datamodule(name: str, **kwargs: Any) -> ImageDataModule:
    """Build a registered DataModule by name, e.g. ``create_datamodule("fashion_mnist", batch_size=64)``."""
    return datamodule_class(name)(**kwargs)


def datamodule_class(name: str) -> type[ImageDataModule]:
    """The data-module class called ``name``: a class name (``"FashionMNISTDataModule"``) or a registry key
    (``"fashion_mnist"``, also spelled ``"fashion-mnist"``); raise DatasetError naming the choices if unknown."""
    by_class = {cls.__name__: cls for cls in DATAMODULES.values()}
    if name in by_class:
        return by_class[name]
    key = name.lower().replace("-", "_")
    if key in DATAMODULES:
        return DATAMODULES[key]
    raise DatasetError(f"unknown data module {name!r}; choose from {', '.join([*by_class, *DATAMODULES])}")
