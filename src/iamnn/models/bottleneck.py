r"""The paper's processing block, ResNet's bottleneck, for training and with BatchNorm folded in.

:math:`B_k` = 1x1 conv → BN → ReLU → 3x3 conv → BN → ReLU → 1x1 conv → BN on concat(x0, s_{i-1}),
and the residual update s_i = ReLU(s_{i-1} + u_i). Registered as ``"bottleneck"``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.flop_counter import conv_flop_count, register_flop_formula

from ..cost import conv_macs
from .act_kernel import pooled_relu_update
from .blocks import FoldedBlock, IterationBlock, fold_conv_bn, iteration_norms, register_block, stack_iterations
from .halting_unit import global_avg_pool


@register_block("bottleneck")
class ProcessingBlock(IterationBlock):
    r"""Bottleneck :math:`B_k` = 1x1 conv → BN → ReLU → 3x3 conv → BN → ReLU → 1x1 conv → BN.

    The three convolutions are shared by every iteration; each iteration ``i`` has its own three
    BatchNorms (the paper found separate statistics per iteration important).
    """

    # ResNet-50 is ResNet-34's layout built of bottlenecks: the r34 preset's blocks at its widths
    twins = {"r34": "resnet50"}

    def __init__(self, in_channels: int, out_channels: int, max_iterations: int) -> None:
        super().__init__()
        mid = out_channels // 4
        self.conv1 = nn.Conv2d(in_channels + out_channels, mid, 1, bias=False)
        self.conv2 = nn.Conv2d(mid, mid, 3, padding=1, bias=False)
        self.conv3 = nn.Conv2d(mid, out_channels, 1, bias=False)
        self.out_channels = out_channels
        self.norms = iteration_norms(max_iterations, mid, mid, out_channels)

    def forward(self, x0: Tensor, s: Tensor | None, i: int) -> Tensor:
        """u_i = B_k(concat(x0, s_{i-1})) with iteration ``i``'s (0-based) BatchNorms.

        ``s=None`` stands for the zero state s_0: its half of the first 1x1 convolution
        contributes nothing, so only the x0 half runs (no concatenation, fewer MACs).
        """
        bn1, bn2, bn3 = self.norms[i]
        if s is None:
            z = nn.functional.conv2d(x0, self.conv1.weight[:, : x0.shape[1]].contiguous())
        else:
            z = self.conv1(torch.cat([x0, s], dim=1))
        u = torch.relu(bn1(z))
        u = torch.relu(bn2(self.conv2(u)))
        return bn3(self.conv3(u))

    def pooled_step(self, x0: Tensor, s: Tensor | None, i: int) -> tuple[Tensor, Tensor, Tensor] | None:
        """Training: s_i = ReLU(s_{i-1} + u_i) and the GAPs of s_i and u_i the halting unit reads in
        one kernel pass (:func:`~iamnn.models.act_kernel.pooled_relu_update`), where it applies."""
        u = self(x0, s, i)
        pooled = pooled_relu_update(s, u)
        if pooled is None:  # the kernel does not apply: the maps themselves, pooled by the unit
            s = self.update(s, u)
            return s, s, u
        s, s_gap, u_gap = pooled
        return s, s_gap, u_gap

    @staticmethod
    def update(s: Tensor | None, u: Tensor) -> Tensor:
        """s_i = ReLU(s_{i-1} + u_i), the residual update of torchvision's Bottleneck (s_0 = 0: None)."""
        return torch.relu(u if s is None else s + u)

    def macs(self, hw: tuple[int, int], first: bool = False) -> int:
        """MACs of one iteration at spatial size ``hw``; ``first``: from the zero state s_0."""
        macs = sum(conv_macs(c, hw) for c in (self.conv1, self.conv2, self.conv3))
        if first:  # the state's input channels of conv1 are skipped
            macs -= hw[0] * hw[1] * self.conv1.out_channels * self.out_channels
        return macs

    def fold(self, memory_format: torch.memory_format) -> FoldedProcessingBlock:
        return FoldedProcessingBlock(self, memory_format)


# oneDNN convolution with its epilogue (bias, ReLU, residual add) fused: what inductor emits on CPU
_FUSED_CONV = getattr(torch.ops.mkldnn, "_convolution_pointwise", None)


def _conv_relu(x: Tensor, weight: Tensor, bias: Tensor, padding: int = 0) -> Tensor:
    """ReLU(conv(x) + bias) in one oneDNN call."""
    return _FUSED_CONV(x, weight, bias, [padding] * 2, [1, 1], [1, 1], 1, "relu", [], "")


def _conv_add_relu(x: Tensor, other: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """ReLU(conv1x1(x) + bias + other) in one oneDNN call."""
    return _FUSED_CONV.binary(x, other, weight, bias, [0, 0], [1, 1], [1, 1], 1, "add", 1.0, "relu", [], "")


if _FUSED_CONV is not None:

    @register_flop_formula(_FUSED_CONV)
    def _fused_conv_flop(x_shape, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
        """FLOPs of a fused oneDNN convolution, for ``FlopCounterMode`` (the project's MAC checks)."""
        binary = not isinstance(args[2], list)  # binary: (x, other, w, b, padding, ...)
        return conv_flop_count(x_shape, args[1] if binary else args[0], out_shape)


class FoldedProcessingBlock(FoldedBlock):
    """:class:`ProcessingBlock` for inference: per-iteration convolutions with BN folded in.

    On CPU, when an iteration's maps hold at least ``fused_min_pixels`` pixels (batch x H x W),
    :meth:`step` runs each convolution with its bias, ReLU and residual add in one oneDNN call,
    and splits the first 1x1 convolution over x0 and s instead of concatenating them: fewer
    passes over memory-bound maps. Below that size the per-call overhead of the fused op costs
    more than it saves (measured on 2 cores: a 32-channel 3x3 convolution + ReLU at 7x7, batch
    1, took 36 µs fused against 13 µs eagerly; at batch 64, 151 against 158 µs).
    """

    fused_min_pixels = 4096

    def __init__(self, block: ProcessingBlock, memory_format: torch.memory_format) -> None:
        super().__init__()
        self.out_channels = block.out_channels
        self.conv1, self.conv2, self.conv3 = block.conv1, block.conv2, block.conv3  # for MAC accounting
        in_channels = block.conv1.in_channels - block.out_channels
        w1, b1, w2, b2, w3, b3, w1_first = [], [], [], [], [], [], []
        for bn1, bn2, bn3 in block.norms:
            w, b = fold_conv_bn(block.conv1.weight, bn1)
            w1.append(w)
            b1.append(b)
            w1_first.append(w[:, :in_channels].contiguous())  # s_0 = 0: only x0's channels matter
            w, b = fold_conv_bn(block.conv2.weight, bn2)
            w2.append(w)
            b2.append(b)
            w, b = fold_conv_bn(block.conv3.weight, bn3)
            w3.append(w)
            b3.append(b)
        for name, tensors in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2), ("w3", w3), ("b3", b3)):
            self.register_buffer(name, stack_iterations(tensors, memory_format))
        self.register_buffer("w1_first", stack_iterations(w1_first, memory_format))
        # for the fused step: conv1's s channels (its x0 channels are w1_first), and conv3 as a
        # matrix, which maps the inner map's GAP to u's: GAP(u) = W3 · GAP(z) + b3 (u is linear in z)
        self.register_buffer("w1_s", stack_iterations([w[:, in_channels:] for w in w1], memory_format))
        self.register_buffer("w3_matrix", torch.stack([w.flatten(1) for w in w3]).detach())

    def compute(self, x: Tensor, pick: Callable[[Tensor], Tensor], first: bool = False) -> Tensor:
        """u = B_k(x) with the weights ``pick`` takes from each per-iteration stack (``x``: x0 alone
        when ``first``, else concat(x0, s)); the ONNX export picks inside its loop with this."""
        u = F.conv2d(x, pick(self.w1_first if first else self.w1), pick(self.b1))
        u = F.conv2d(torch.relu(u), pick(self.w2), pick(self.b2), padding=1)
        return F.conv2d(torch.relu(u), pick(self.w3), pick(self.b3))

    def step(self, x0: Tensor, s: Tensor | None, i: int | Tensor, need_u: bool = True) -> tuple[Tensor, Tensor | None]:
        """(s_i, u_i) as :meth:`IterationBlock.step`; fused, u_i comes as its (B, C) GAP."""
        fuse = (
            _FUSED_CONV is not None and x0.device.type == "cpu" and x0.dtype == torch.float32
            and isinstance(i, int) and not torch.compiler.is_compiling()
            and x0.shape[0] * x0.shape[2] * x0.shape[3] >= self.fused_min_pixels
        )  # fmt: skip
        if not fuse:
            return IterationBlock.step(self, x0, s, i, need_u)
        if s is None:
            z = _conv_relu(x0, self.w1_first[i], self.b1[i])
        else:  # conv1(concat(x0, s)) = conv(x0, W1_x0) + conv(s, W1_s): no concatenated copy
            z = _conv_add_relu(s, F.conv2d(x0, self.w1_first[i]), self.w1_s[i], self.b1[i])
        z = _conv_relu(z, self.w2[i], self.b2[i], padding=1)
        # s_i = ReLU(s_{i-1} + u_i) with u_i = conv3(z) + b3, in one call
        s = _conv_relu(z, self.w3[i], self.b3[i]) if s is None else _conv_add_relu(z, s, self.w3[i], self.b3[i])
        u_gap = torch.addmm(self.b3[i], global_avg_pool(z), self.w3_matrix[i].t()) if need_u else None
        return s, u_gap

    update = staticmethod(ProcessingBlock.update)
    macs = ProcessingBlock.macs
