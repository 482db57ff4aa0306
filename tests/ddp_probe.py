"""A callback for the DDP test: every rank writes its final weights (not collected by pytest)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from safetensors.torch import save_file


class RankWeights(L.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in pl_module.state_dict().items()}
        save_file(state, self.out_dir / f"rank{trainer.global_rank}.safetensors")
