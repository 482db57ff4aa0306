"""Cost accounting: parameters and multiply-accumulates (MACs).

Convention (``docs/specification.md``, "Cost accounting"): the paper's "FLOPS" are MACs of the convolutions and linear
layers; BatchNorm, ReLU, pooling and additions are not counted. ``torch.utils.flop_counter``
counts 2 FLOPs per MAC, so ``measure_macs`` returns its total divided by 2, and the analytic
figures below must match it exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (v[0], v[1])


def conv_out_hw(hw: tuple[int, int], layer: nn.Conv2d | nn.MaxPool2d) -> tuple[int, int]:
    """Spatial output size of a convolution or max-pooling layer (floor mode) for input ``hw``."""
    k, s, p, d = (_pair(layer.kernel_size), _pair(layer.stride), _pair(layer.padding), _pair(layer.dilation))
    return tuple((hw[i] + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(2))  # type: ignore[return-value]


def conv_macs(conv: nn.Conv2d, out_hw: tuple[int, int]) -> int:
    """MACs of one convolution producing an ``out_hw`` map: H·W·C_out·(C_in/groups)·k_h·k_w."""
    kh, kw = _pair(conv.kernel_size)
    return out_hw[0] * out_hw[1] * conv.out_channels * (conv.in_channels // conv.groups) * kh * kw


def linear_macs(linear: nn.Linear) -> int:
    return linear.in_features * linear.out_features


def count_params(model: nn.Module) -> int:
    """Number of parameters (BatchNorm running statistics are buffers, not parameters)."""
    return sum(p.numel() for p in model.parameters())


def measure_macs(fn: Callable[[], object]) -> int:
    """MACs counted by ``FlopCounterMode`` while ``fn()`` runs (its FLOPs / 2)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() // 2


@torch.no_grad()
def model_macs(model: nn.Module, input_size: tuple[int, int, int], batch_size: int = 1) -> int:
    """Per-sample MACs of a static network, measured by ``FlopCounterMode`` on the meta device.

    Nothing is allocated: the model is copied to ``meta`` weights, so a ResNet-152 at 224x224
    costs milliseconds.
    """
    meta = _to_meta(model)
    x = torch.empty(batch_size, *input_size, device="meta")
    return measure_macs(lambda: meta(x)) // batch_size


def _to_meta(model: nn.Module) -> nn.Module:
    if next(model.parameters()).device.type == "meta":
        return model
    clone = copy.deepcopy(model)
    return clone.to("meta").eval()
