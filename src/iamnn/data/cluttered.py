"""Cluttered Fashion-MNIST: a synthetic derivative of Fashion-MNIST whose difficulty varies per image.

Each Fashion-MNIST item is rescaled to a side drawn from ``scale`` pixels, placed at a random
position on a ``canvas`` x ``canvas`` black image, and joined by a number of distractors drawn from
``distractors``: ``distractor_size``-pixel squares cut from other items of the same split, blended
in by the pixel-wise maximum (the clutter of the cluttered-MNIST benchmarks of recurrent attention
models and spatial transformer networks). Every image keeps its **difficulty level**, (distractor
count, object side), so that results can be broken down by it (:meth:`levels`).

The set is a function of the Fashion-MNIST files and the parameters only: the same images on every
machine. It is generated once (6 s for the full 70 000 images on 2 cores, the process peaking at
1.8 GB) and cached beside the data as an ``.npz`` file (43 MB, no pickle, loaded in 0.8 s) whose
header names the parameters and holds the SHA-256 of its arrays; a cache written for other
parameters or whose content does not match its hash is regenerated (one line says so), never
trusted.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from ..errors import DatasetError
from ..files import atomic_path
from .base import default_cache_dir
from .fashion_mnist import FashionMNISTDataModule

CACHE_VERSION = 1  # bump when the generator changes: every cached set is then regenerated


def _check_range(name: str, value: Any, low: int, high: int) -> tuple[int, int]:
    if not (isinstance(value, list | tuple) and len(value) == 2 and all(type(v) is int for v in value)
            and low <= value[0] <= value[1] <= high):  # fmt: skip
        raise ValueError(f"{name} must be [min, max] with {low} <= min <= max <= {high}, got {value!r}")
    return int(value[0]), int(value[1])


def clutter(images: np.ndarray, params: dict[str, Any], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Canvases (N, C, C) uint8 for ``images`` (N, 28, 28) uint8, one per image, and their levels
    (N, 2): distractor count, object side. Every random draw is made up front, in one order, from
    one seeded generator: the result depends on ``images``, ``params`` and ``seed`` only."""
    n, side = len(images), params["canvas"]
    rng = np.random.default_rng(seed)
    scales = rng.integers(params["scale"][0], params["scale"][1] + 1, n)
    corner = rng.random((n, 2))  # the object's top-left corner, as a fraction of the room left
    counts = rng.integers(params["distractors"][0], params["distractors"][1] + 1, n)
    total, size = int(counts.sum()), params["distractor_size"]
    sources = rng.integers(0, n, total)  # which item each distractor is cut from …
    cuts = rng.integers(0, images.shape[1] - size + 1, (total, 2))  # … where in it …
    places = rng.integers(0, side - size + 1, (total, 2))  # … and where it goes on the canvas
    canvases = np.zeros((n, side, side), dtype=np.uint8)
    pixels = torch.from_numpy(images.astype(np.float32))[:, None]
    for s in np.unique(scales):  # every object of one side in one resize
        rows = np.flatnonzero(scales == s)
        resized = F.interpolate(pixels[rows], size=(int(s), int(s)), mode="bilinear", antialias=True,
                                align_corners=False).round().clamp(0, 255).byte()[:, 0].numpy()  # fmt: skip
        for row, obj in zip(rows, resized, strict=True):
            y, x = (corner[row] * (side - s + 1)).astype(int)
            canvases[row, y : y + s, x : x + s] = obj
    owner = np.repeat(np.arange(n), counts)
    for k in range(total):
        (cy, cx), (py, px) = cuts[k], places[k]
        patch = images[sources[k], cy : cy + size, cx : cx + size]
        view = canvases[owner[k], py : py + size, px : px + size]
        np.maximum(view, patch, out=view)
    return canvases, np.stack([counts, scales], 1).astype(np.int16)


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


class ClutteredFashionMNISTDataModule(FashionMNISTDataModule):
    """Cluttered Fashion-MNIST (see the module's docstring): 1 x ``canvas`` x ``canvas`` grey,
    10 classes, training augmentation ±4 px translation and horizontal flip.

    Args (beyond ``FashionMNISTDataModule``'s):
        canvas: side of the image, pixels.
        scale: [min, max] side of the rescaled item, pixels (at most ``canvas``).
        distractors: [min, max] distractors per image, the count uniform in between.
        distractor_size: side of a distractor, pixels (at most 28).
        clutter_seed: seed of the generation (the train/validation split has ``seed``).
        train_images, test_images: generate from the first N training / test items only (small
            variants for tests); None: all 60 000 / 10 000.
    """

    pad, flip = 4, True
    level_names = ("distractors", "object_px")  # the columns of :meth:`levels`

    def __init__(
        self,
        *args: Any,
        canvas: int = 40,
        scale: tuple[int, int] | list[int] = (20, 32),
        distractors: tuple[int, int] | list[int] = (0, 8),
        distractor_size: int = 10,
        clutter_seed: int = 0,
        train_images: int | None = None,
        test_images: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if type(canvas) is not int or not 28 <= canvas <= 256:
            raise ValueError(f"canvas must be an int in 28..256, got {canvas!r}")
        if type(distractor_size) is not int or not 1 <= distractor_size <= 28:
            raise ValueError(f"distractor_size must be an int in 1..28, got {distractor_size!r}")
        for name, value in (("train_images", train_images), ("test_images", test_images)):
            if value is not None and (type(value) is not int or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        self.params = {
            "version": CACHE_VERSION, "canvas": canvas, "scale": list(_check_range("scale", list(scale), 1, canvas)),
            "distractors": list(_check_range("distractors", list(distractors), 0, 64)),
            "distractor_size": distractor_size, "clutter_seed": int(clutter_seed),
            "train_images": train_images, "test_images": test_images,
        }  # fmt: skip
        self.input_size = (canvas, canvas)
        self._levels: dict[str, Tensor] = {}

    def cache_path(self, source_digest: str) -> Path:
        """The cached set for these parameters and these Fashion-MNIST files."""
        key = hashlib.sha256(json.dumps({**self.params, "source": source_digest}, sort_keys=True).encode()).hexdigest()
        root = Path(self.data_dir).expanduser() if self.data_dir else default_cache_dir()
        return root / f"cluttered-fashion-mnist-{key[:16]}.npz"

    def _load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        xtr, ytr, xte, yte = super()._load()
        limit = {"train": self.params["train_images"], "test": self.params["test_images"]}
        source = {"train": (xtr[: limit["train"], 0].numpy(), ytr[: limit["train"]]),
                  "test": (xte[: limit["test"], 0].numpy(), yte[: limit["test"]])}  # fmt: skip
        path = self.cache_path(_digest(source["train"][0], source["test"][0]))
        arrays = self._read_cache(path)
        if arrays is None:
            arrays = self._generate(source)
            self._write_cache(path, arrays)
        self.mean, self.std = (float(arrays["mean"]),), (float(arrays["std"]),)
        self._levels = {s: torch.from_numpy(arrays[f"{s}_levels"].astype(np.int64)) for s in ("train", "test")}
        return (torch.from_numpy(arrays["train"])[:, None], source["train"][1],
                torch.from_numpy(arrays["test"])[:, None], source["test"][1])  # fmt: skip

    def _generate(self, source: dict[str, tuple[np.ndarray, Tensor]]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for offset, split in enumerate(("train", "test")):  # the two splits draw from separate streams
            out[split], out[f"{split}_levels"] = clutter(source[split][0], self.params, 2 * self.params["clutter_seed"]
                                                         + offset)  # fmt: skip
        pixels = out["train"].astype(np.float32) / 255
        out["mean"], out["std"] = np.float32(pixels.mean()), np.float32(pixels.std())
        return out

    def _read_cache(self, path: Path) -> dict[str, np.ndarray] | None:
        """The cached arrays, or None when there is none or it cannot be trusted (said in one line)."""
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
            header = json.loads(str(arrays.pop("header")))
            names = ("train", "train_levels", "test", "test_levels", "mean", "std")
            if header.get("params") != self.params or header.get("sha256") != _digest(*(arrays[k] for k in names)):
                raise ValueError("its header does not match its parameters or its content")
            return arrays
        except (OSError, ValueError, KeyError, json.JSONDecodeError, EOFError) as err:
            print(f"iamnn: note: regenerating {path.name}: the cached file cannot be trusted ({err})", file=sys.stderr)
            return None

    def _write_cache(self, path: Path, arrays: dict[str, np.ndarray]) -> None:
        names = ("train", "train_levels", "test", "test_levels", "mean", "std")
        header = json.dumps({"params": self.params, "sha256": _digest(*(arrays[k] for k in names))})
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a kill leaves no half-written cache
                np.savez_compressed(f, header=np.array(header), **arrays)
        except OSError as err:  # a read-only data folder: the set is used from memory
            print(f"iamnn: note: could not cache the cluttered set in {path.parent} ({err})", file=sys.stderr)

    def levels(self, split: str = "test") -> Tensor:
        """(N, 2) difficulty of each image of ``split`` (``train`` or ``test``, as the data sets
        order them; ``test_subset`` keeps the first N): distractor count, object side in pixels."""
        if not self._levels:
            self._tensors()
        if split not in self._levels:
            raise DatasetError(f"no split {split!r}: train or test")
        levels = self._levels[split]
        return levels[: self.test_subset] if split == "test" and self.test_subset else levels
