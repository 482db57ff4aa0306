"""scikit-learn's 8x8 digits, resized: a dataset that ships with a dependency, for fast tests and demos."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import DatasetNotFoundError
from .base import TensorDataModule, check_image_size

__all__ = ["DigitsDataModule"]


class DigitsDataModule(TensorDataModule):
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
        # the set is held in memory at image_size: 1000 asked 7 GB (a run folder's config.yaml OOM-killed report)
        self.image_size = check_image_size(image_size, largest=256)
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
