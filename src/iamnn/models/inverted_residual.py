r"""A depthwise-separable processing block, MobileNetV2/V3's inverted residual (IamNN-Mobile, the
paper's future work), for training and with BatchNorm folded in. Registered as ``"inverted_residual"``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import SqueezeExcitation

from ..cost import conv_macs
from .blocks import (
    MAX_WIDTH,
    FoldedBlock,
    IterationBlock,
    fold_conv_bn,
    iteration_norms,
    register_block,
    scaled_channels,
    stack_iterations,
)


@register_block("inverted_residual")
class InvertedResidualBlock(IterationBlock):
    r"""Depthwise-separable :math:`B_k`, MobileNetV2/V3's inverted residual: 1x1 expand → BN →
    hard-swish → 3x3 depthwise → BN → hard-swish → squeeze-excitation → 1x1 project → BN, applied
    to concat(x0, s_{i-1}) like :class:`~iamnn.models.bottleneck.ProcessingBlock`.

    The convolutions and the squeeze-excitation are shared by every iteration; each iteration has
    its own three BatchNorms. The state update is MobileNetV2's linear residual
    s_i = s_{i-1} + u_i: no ReLU after the addition, since the narrow projected map would lose
    information to it (MobileNetV2, section 3.2).

    Args:
        expansion: hidden channels = ``expansion`` x ``out_channels`` (rounded to a multiple of 8).
        se: squeeze-excitation on the hidden map (reduction 4, hard-sigmoid gate, as MobileNetV3).
    """

    # what a user would otherwise pick for cheap inference, at its own width 1
    baseline = "mobilenet_v3_small"

    def __init__(
        self, in_channels: int, out_channels: int, max_iterations: int, expansion: float = 4.0, se: bool = True
    ) -> None:
        super().__init__()
        if not 0 < expansion <= MAX_WIDTH:
            raise ValueError(f"expansion must be in (0, {MAX_WIDTH}], got {expansion!r}")
        hidden = scaled_channels(out_channels, expansion, 8)
        self.expand = nn.Conv2d(in_channels + out_channels, hidden, 1, bias=False)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False)
        self.se = (
            SqueezeExcitation(hidden, scaled_channels(hidden, 0.25, 8), scale_activation=nn.Hardsigmoid) if se else None
        )
        self.project = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self.out_channels = out_channels
        self.norms = iteration_norms(max_iterations, hidden, hidden, out_channels)

    def forward(self, x0: Tensor, s: Tensor | None, i: int) -> Tensor:
        """u_i = B_k(concat(x0, s_{i-1})) with iteration ``i``'s BatchNorms (``s=None``: s_0 = 0,
        whose half of the expansion contributes nothing and is skipped)."""
        bn1, bn2, bn3 = self.norms[i]
        if s is None:
            z = nn.functional.conv2d(x0, self.expand.weight[:, : x0.shape[1]].contiguous())
        else:
            z = self.expand(torch.cat([x0, s], dim=1))
        z = nn.functional.hardswish(bn1(z))
        z = nn.functional.hardswish(bn2(self.depthwise(z)))
        if self.se is not None:
            z = self.se(z)
        return bn3(self.project(z))

    @staticmethod
    def update(s: Tensor | None, u: Tensor) -> Tensor:
        """s_i = s_{i-1} + u_i, the linear residual (s_0 = 0: None)."""
        return u if s is None else s + u

    def macs(self, hw: tuple[int, int], first: bool = False) -> int:
        """MACs of one iteration at spatial size ``hw`` (depthwise: 9 per hidden pixel); ``first``:
        from the zero state s_0."""
        macs = sum(conv_macs(c, hw) for c in (self.expand, self.depthwise, self.project))
        if self.se is not None:  # two 1x1 convolutions on the pooled (1x1) map
            macs += conv_macs(self.se.fc1, (1, 1)) + conv_macs(self.se.fc2, (1, 1))
        if first:  # the state's input channels of the expansion are skipped
            macs -= hw[0] * hw[1] * self.expand.out_channels * self.out_channels
        return macs

    def fold(self, memory_format: torch.memory_format) -> FoldedInvertedResidualBlock:
        return FoldedInvertedResidualBlock(self, memory_format)


class FoldedInvertedResidualBlock(FoldedBlock):
    """:class:`InvertedResidualBlock` for inference: per-iteration expansion, depthwise and
    projection convolutions with BN folded in; the squeeze-excitation is shared as before."""

    def __init__(self, block: InvertedResidualBlock, memory_format: torch.memory_format) -> None:
        super().__init__()
        self.out_channels = block.out_channels
        self.expand, self.depthwise, self.project, self.se = block.expand, block.depthwise, block.project, block.se
        in_channels = block.expand.in_channels - block.out_channels
        folded: dict[str, list[Tensor]] = {name: [] for name in ("w1", "b1", "w1_first", "w2", "b2", "w3", "b3")}
        for bn1, bn2, bn3 in block.norms:
            for name, conv, bn in (("1", block.expand, bn1), ("2", block.depthwise, bn2), ("3", block.project, bn3)):
                w, b = fold_conv_bn(conv.weight, bn)
                folded[f"w{name}"].append(w)
                folded[f"b{name}"].append(b)
            folded["w1_first"].append(folded["w1"][-1][:, :in_channels].contiguous())  # s_0 = 0: x0's channels
        for name, tensors in folded.items():
            self.register_buffer(name, stack_iterations(tensors, memory_format))

    def compute(self, x: Tensor, pick: Callable[[Tensor], Tensor], first: bool = False) -> Tensor:
        """u = B_k(x) with the weights ``pick`` takes from each per-iteration stack (as
        :meth:`FoldedProcessingBlock.compute`)."""
        z = F.hardswish(F.conv2d(x, pick(self.w1_first if first else self.w1), pick(self.b1)))
        z = F.hardswish(F.conv2d(z, pick(self.w2), pick(self.b2), padding=1, groups=self.depthwise.groups))
        if self.se is not None:
            z = self.se(z)
        return F.conv2d(z, pick(self.w3), pick(self.b3))

    update = staticmethod(InvertedResidualBlock.update)
    macs = InvertedResidualBlock.macs
