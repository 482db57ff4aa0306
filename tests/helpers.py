"""Helpers shared by the model, export and halting-policy tests (``import helpers``)."""

from __future__ import annotations

import torch

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
