r"""Inference with BatchNorm folded into the convolutions, one set of folded weights per iteration.

Each iteration i of a stage has its own BatchNorms, so the shared convolution :math:`W` becomes
per-iteration weights :math:`W_i = W \cdot \gamma_i / \sqrt{\sigma_i^2 + \epsilon}` with bias
:math:`b_i = \beta_i - \mu_i \gamma_i / \sqrt{\sigma_i^2 + \epsilon}`: an iteration is then three
convolutions with bias (no normalisation pass). The training model keeps its shared weights;
:func:`fold_batchnorm` returns a separate, eval-only copy.

The copy runs channels-last (NHWC) by default: oneDNN's convolutions and PyTorch's max-pooling
are NHWC-native on CPU (measured on 2 cores: a 2x2 max-pool of a 64x32x28x28 batch took 3.7 ms in
NCHW and 0.22 ms in NHWC), and every op of the loop (cat, indexing, addcmul) keeps the layout.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.utils.flop_counter import conv_flop_count, register_flop_formula

from .baselines import MobileNet, ResNet
from .halting_unit import HaltingUnit, global_avg_pool
from .iamnn import IamNN, InvertedResidualBlock, ProcessingBlock


def _fold(weight: Tensor, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return weight * scale[:, None, None, None], bn.bias - bn.running_mean * scale


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


class FoldedProcessingBlock(nn.Module):
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
            w, b = _fold(block.conv1.weight, bn1)
            w1.append(w)
            b1.append(b)
            w1_first.append(w[:, :in_channels].contiguous())  # s_0 = 0: only x0's channels matter
            w, b = _fold(block.conv2.weight, bn2)
            w2.append(w)
            b2.append(b)
            w, b = _fold(block.conv3.weight, bn3)
            w3.append(w)
            b3.append(b)
        for name, tensors in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2), ("w3", w3), ("b3", b3)):
            self.register_buffer(name, _stack(tensors, memory_format))
        self.register_buffer("w1_first", _stack(w1_first, memory_format))
        # for the fused step: conv1's s channels (its x0 channels are w1_first), and conv3 as a
        # matrix, which maps the inner map's GAP to u's: GAP(u) = W3 · GAP(z) + b3 (u is linear in z)
        self.register_buffer("w1_s", _stack([w[:, in_channels:] for w in w1], memory_format))
        self.register_buffer("w3_matrix", torch.stack([w.flatten(1) for w in w3]).detach())

    def forward(self, x0: Tensor, s: Tensor | None, i: int) -> Tensor:
        return self.compute(x0 if s is None else torch.cat([x0, s], dim=1), lambda w: w[i], first=s is None)

    def compute(self, x: Tensor, pick: Callable[[Tensor], Tensor], first: bool = False) -> Tensor:
        """u = B_k(x) with the weights ``pick`` takes from each per-iteration stack (``x``: x0 alone
        when ``first``, else concat(x0, s)); the ONNX export picks inside its loop with this."""
        u = F.conv2d(x, pick(self.w1_first if first else self.w1), pick(self.b1))
        u = F.conv2d(torch.relu(u), pick(self.w2), pick(self.b2), padding=1)
        return F.conv2d(torch.relu(u), pick(self.w3), pick(self.b3))

    def step(self, x0: Tensor, s: Tensor | None, i: int, need_u: bool = True) -> tuple[Tensor, Tensor | None]:
        """(s_i, u_i) as :meth:`ProcessingBlock.step`; fused, u_i comes as its (B, C) GAP."""
        fuse = (
            _FUSED_CONV is not None and x0.device.type == "cpu" and x0.dtype == torch.float32
            and x0.shape[0] * x0.shape[2] * x0.shape[3] >= self.fused_min_pixels
        )  # fmt: skip
        if not fuse:
            return ProcessingBlock.step(self, x0, s, i, need_u)
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


class FoldedInvertedResidualBlock(nn.Module):
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
                w, b = _fold(conv.weight, bn)
                folded[f"w{name}"].append(w)
                folded[f"b{name}"].append(b)
            folded["w1_first"].append(folded["w1"][-1][:, :in_channels].contiguous())  # s_0 = 0: x0's channels
        for name, tensors in folded.items():
            self.register_buffer(name, _stack(tensors, memory_format))

    def forward(self, x0: Tensor, s: Tensor | None, i: int) -> Tensor:
        return self.compute(x0 if s is None else torch.cat([x0, s], dim=1), lambda w: w[i], first=s is None)

    def compute(self, x: Tensor, pick: Callable[[Tensor], Tensor], first: bool = False) -> Tensor:
        """u = B_k(x) with the weights ``pick`` takes from each per-iteration stack (as
        :meth:`FoldedProcessingBlock.compute`)."""
        z = F.hardswish(F.conv2d(x, pick(self.w1_first if first else self.w1), pick(self.b1)))
        z = F.hardswish(F.conv2d(z, pick(self.w2), pick(self.b2), padding=1, groups=self.depthwise.groups))
        if self.se is not None:
            z = self.se(z)
        return F.conv2d(z, pick(self.w3), pick(self.b3))

    step = ProcessingBlock.step
    update = staticmethod(InvertedResidualBlock.update)
    macs = InvertedResidualBlock.macs


class FoldedHaltingUnit(nn.Module):
    r""":class:`HaltingUnit` for inference, with its first layer split by input.

    :math:`W_1\,\mathrm{concat}(\mathrm{GAP}(s), \mathrm{GAP}(x_0), \mathrm{GAP}(u)) + b_1
    = W_{1s}\,\mathrm{GAP}(s) + W_{1u}\,\mathrm{GAP}(u) + c` where the context
    :math:`c = W_{1x}\,\mathrm{GAP}(x_0) + b_1` is the same at every iteration of a stage, so the
    stage computes it once. A call is then ten small ops instead of about fifteen (no concatenation,
    no per-call x0 product, no module calls), which at batch 1 is most of its cost: measured on 2
    cores, stage 2 of the shipped r34 model, 29 µs per call before and 19 µs after.
    """

    def __init__(self, unit: HaltingUnit, state_channels: int) -> None:
        super().__init__()
        w1 = unit.fc1.weight.detach()  # columns: GAP(s) | GAP(x0) | GAP(u), as HaltingUnit concatenates
        c = state_channels
        x_end = w1.shape[1] - c
        for name, weight in (("w1s", w1[:, :c]), ("w1x", w1[:, c:x_end]), ("w1u", w1[:, x_end:]),
                             ("w2", unit.fc2.weight), ("w3", unit.fc3.weight)):  # fmt: skip
            self.register_buffer(f"{name}_t", weight.detach().t().contiguous())  # addmm's (in, out)
        for name, layer in (("b1", unit.fc1), ("b2", unit.fc2), ("b3", unit.fc3)):
            self.register_buffer(name, layer.bias.detach().clone())
        self.fc1, self.fc2, self.fc3 = unit.fc1, unit.fc2, unit.fc3  # for MAC accounting

    macs = HaltingUnit.macs

    def context(self, x0: Tensor) -> Tensor:
        """c = W_1x · GAP(x0) + b_1, (B, hidden)."""
        return torch.addmm(self.b1, x0.sum((2, 3)), self.w1x_t, alpha=1.0 / (x0.shape[2] * x0.shape[3]))

    def forward(self, s: Tensor, context: Tensor, u: Tensor) -> Tensor:
        """(B, C, H, W) state, (B, hidden) context, u as a map or its (B, C) GAP -> (B,) scores."""
        z = torch.addmm(context, s.sum((2, 3)), self.w1s_t, alpha=1.0 / (s.shape[2] * s.shape[3]))
        if u.ndim == 2:
            z = torch.addmm(z, u, self.w1u_t)
        else:
            z = torch.addmm(z, u.sum((2, 3)), self.w1u_t, alpha=1.0 / (u.shape[2] * u.shape[3]))
        z = torch.addmm(self.b2, z.relu_(), self.w2_t).relu_()
        return torch.addmm(self.b3, z, self.w3_t).sigmoid_().squeeze(1)


def _stack(tensors: list[Tensor], memory_format: torch.memory_format) -> Tensor:
    """Per-iteration tensors stacked along a new dim 0; each 4-D slice ``[i]`` in ``memory_format``."""
    stacked = torch.stack(tensors).detach()
    if stacked.ndim == 5 and memory_format == torch.channels_last:  # (N, O, I, kh, kw), I innermost
        stacked = stacked.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    return stacked


@torch.no_grad()
def fold_batchnorm(model: IamNN | ResNet | MobileNet, channels_last: bool = True) -> IamNN | ResNet | MobileNet:
    """An eval-only copy of ``model`` with every BatchNorm folded into its convolution.

    Outputs and iteration counts equal the eval-mode forward of ``model`` (to float rounding);
    ``stats.macs`` are unchanged (bias additions are not MACs). ``channels_last``: an IamNN copy
    keeps its weights in NHWC and converts its input to NHWC (the outputs do not change). A ResNet
    or MobileNet baseline gets torch's conv-BN fusion, so that both sides of a comparison get the
    same treatment.
    """
    if isinstance(model, ResNet):
        return _fold_resnet(model)
    if isinstance(model, MobileNet):
        return _fold_sequential(model)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    folded = copy.deepcopy(model).eval()
    w, b = _fold(folded.conv1.weight, folded.bn1)
    stem = nn.Conv2d(
        folded.conv1.in_channels, folded.conv1.out_channels, folded.conv1.kernel_size,
        stride=folded.conv1.stride, padding=folded.conv1.padding, bias=True,
    )  # fmt: skip
    stem.weight.copy_(w)
    stem.bias.copy_(b)
    folded.conv1, folded.bn1 = stem.to(memory_format=memory_format), nn.Identity()
    for stage in folded.stages:
        fold = FoldedProcessingBlock if isinstance(stage.block, ProcessingBlock) else FoldedInvertedResidualBlock
        stage.block = fold(stage.block, memory_format)
        stage.halting_unit = FoldedHaltingUnit(stage.halting_unit, stage.out_channels)
    folded.memory_format = memory_format
    folded.requires_grad_(False)
    folded.train = _eval_only.__get__(folded)  # type: ignore[method-assign]
    return folded


def _fold_resnet(model: ResNet) -> ResNet:
    """torchvision's blocks with each convolution fused with its BatchNorm (``fuse_conv_bn_eval``)."""
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        for conv, bn in (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")):
            if isinstance(getattr(module, bn, None), nn.BatchNorm2d):
                setattr(module, conv, fuse_conv_bn_eval(getattr(module, conv), getattr(module, bn)))
                setattr(module, bn, nn.Identity())
        if isinstance(getattr(module, "downsample", None), nn.Sequential):
            module.downsample = fuse_conv_bn_eval(module.downsample[0], module.downsample[1])
    return folded


def _fold_sequential(model: nn.Module) -> nn.Module:
    """Every (conv, BatchNorm) pair inside an ``nn.Sequential`` (torchvision's
    ``Conv2dNormActivation``, the MobileNets' projections) fused with ``fuse_conv_bn_eval``."""
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                module[i], module[i + 1] = fuse_conv_bn_eval(module[i], module[i + 1]), nn.Identity()
    return folded


def _eval_only(self: nn.Module, mode: bool = True) -> nn.Module:
    if mode:
        raise RuntimeError("a BatchNorm-folded IamNN is for inference only; train the original model")
    return nn.Module.train(self, False)
