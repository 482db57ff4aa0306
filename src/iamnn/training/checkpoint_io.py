"""How training writes and reads its Lightning checkpoints: crash-safe writes, reads without pickle."""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from ..files import atomic_write
from ..weights import read_checkpoint


class SafeCheckpointIO(TorchCheckpointIO):
    """Checkpoints written so that a kill at any moment leaves the previous file or the new one, and
    read without running pickled code (``weights.read_checkpoint``: ``weights_only=True``).

    Lightning's local save goes through fsspec, which writes a temporary file in the system temp
    folder and moves it over the target: a copy (not a rename) when that folder is on another file
    system, so a kill mid-copy truncates ``last.ckpt``; nothing is fsynced either. Here the temporary
    file sits beside the target, is fsynced, and is renamed over it.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's own transaction
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_write(path) as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        return read_checkpoint(path)  # on the CPU; Lightning moves the states to the model's device
