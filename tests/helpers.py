"""Helpers shared by the model, export, halting-policy, kernel and CUDA tests (``import helpers``)."""

from __future__ import annotations

import pytest
import torch

import iamnn
from iamnn import IamNN


@torch.no_grad()
def spread_halting(model: IamNN, x: torch.Tensor) -> IamNN:
    """Rescale each halting unit's last layer so that, at its first iteration, the pre-sigmoid
    scores of the batch ``x`` have median 0 and std 3: samples then halt at different iterations."""
    mode = model.training
    model.eval()
    for stage in model.stages:
        seen: list[torch.Tensor] = []
        hook = stage.halting_unit.fc3.register_forward_hook(lambda m, i, out, seen=seen: seen.append(out.flatten()))
        model(x, halting="act")
        hook.remove()
        z = seen[0]  # iteration 1 of this stage, the whole batch
        fc3, gain = stage.halting_unit.fc3, 3.0 / z.std()
        fc3.weight.mul_(gain)
        fc3.bias.copy_((fc3.bias - z.median()) * gain)
    return model.train(mode)


def varied_model(name: str = "iamnn_r34", batch: int = 12) -> tuple[torch.Tensor, IamNN]:
    """Inputs spanning two decades of scale and an eval-mode tiny model (cifar stem, width 1/16, 7
    classes) whose samples halt at different iterations on them, with non-trivial BatchNorm
    statistics so that folding changes the weights."""
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 16, 16) * torch.logspace(-1, 1, batch)[:, None, None, None]
    model = spread_halting(iamnn.create_model(name, stem="cifar", num_classes=7, width=1 / 16), x).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.2, 0.2)
    return x, model


def run_iamnn(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``iamnn ARGS`` in this process: (exit status, stdout, stderr)."""
    from iamnn.cli import main

    capsys.readouterr()
    try:
        main(list(args))
        status = 0
    except SystemExit as stop:
        status = stop.code
    out, err = capsys.readouterr()
    return status, out, err
