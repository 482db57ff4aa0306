r"""What a processing block :math:`B_k` is to the rest of the code, and the registry of blocks.

A stage iterates one block: ``u_i = B_k(concat(x0, s_{i-1}))`` with iteration ``i``'s own
BatchNorms, then ``s_i = update(s_{i-1}, u_i)``. Everything else asks the block, never its type:

- the stage loop (``iamnn.py``) calls :meth:`IterationBlock.step`, and in training
  :meth:`IterationBlock.pooled_step` where the block has a fused form;
- the MAC count calls :meth:`IterationBlock.macs`;
- :func:`~iamnn.models.fold.fold_batchnorm` calls :meth:`IterationBlock.fold`, whose result is a
  :class:`FoldedBlock`, which the ONNX export runs through :meth:`FoldedBlock.compute`;
- ``iamnn bench`` times an IamNN against the network :attr:`IterationBlock.baseline` names, and
  the ResNet built of the same block (:attr:`IterationBlock.twins`).

A new block is one module with an :class:`IterationBlock` subclass, its :class:`FoldedBlock`, and
one :func:`register_block` (``bottleneck.py`` and ``inverted_residual.py`` are the two shipped).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

MAX_WIDTH = 64  # 64x ResNet's widths: 131 072 channels in the last stage; wide ResNets use 2-10x


def scaled_channels(channels: int, width: float, divisor: int = 1) -> int:
    """``channels · width`` rounded to a multiple of ``divisor`` (stage widths: 4, for C/4 inside)."""
    return max(divisor, int(round(channels * width / divisor)) * divisor)


def iteration_norms(iterations: int, *channels: int) -> nn.ModuleList:
    """One BatchNorm per convolution (of ``channels`` outputs) for each iteration: ``norms[i][j]``."""
    return nn.ModuleList(nn.ModuleList(nn.BatchNorm2d(c) for c in channels) for _ in range(iterations))


def fold_conv_bn(weight: Tensor, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    r"""A convolution weight with an eval BatchNorm folded in: :math:`W \gamma / \sqrt{\sigma^2 + \epsilon}`
    and bias :math:`\beta - \mu \gamma / \sqrt{\sigma^2 + \epsilon}`."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return weight * scale[:, None, None, None], bn.bias - bn.running_mean * scale


def stack_iterations(tensors: list[Tensor], memory_format: torch.memory_format) -> Tensor:
    """Per-iteration tensors stacked along a new dim 0; each 4-D slice ``[i]`` in ``memory_format``."""
    stacked = torch.stack(tensors).detach()
    if stacked.ndim == 5 and memory_format == torch.channels_last:  # (N, O, I, kh, kw), I innermost
        stacked = stacked.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    return stacked


def picker(i: int | Tensor) -> Callable[[Tensor], Tensor]:
    """How iteration ``i``'s weights are taken from a per-iteration stack: ``[i]`` for an int, and
    ``index_select`` for a (1,) long tensor (the ONNX export's loop counter)."""
    if isinstance(i, Tensor):
        return lambda stacked: stacked.index_select(0, i)[0]
    return lambda stacked: stacked[i]


class IterationBlock(nn.Module):
    """The processing block a stage iterates. Subclasses give ``forward(x0, s, i) -> u_i``,
    :meth:`update`, :meth:`macs` and :meth:`fold`; :meth:`step` is the same for every block."""

    #: the registered network ``iamnn bench`` times an IamNN of this block against; None: the ResNet
    #: of the model's preset (the paper's comparison)
    baseline: ClassVar[str | None] = None
    #: by preset, the ResNet built of this very block at the same widths where the preset's own
    #: ResNet is not (``iamnn bench``'s last row: the fair reference for time per MAC)
    twins: ClassVar[dict[str, str]] = {}

    def step(self, x0: Tensor, s: Tensor | None, i: int | Tensor, need_u: bool = True) -> tuple[Tensor, Tensor | None]:
        """Iteration ``i`` (0-based) from state ``s`` (None: the zero state s_0): returns (s_i, u_i).

        ``need_u``: whether the caller uses u_i (the halting unit does); None is returned in its
        place when not. (A BatchNorm-folded block may return u_i as its (B, C) spatial mean, all
        the halting unit reads of it.)
        """
        u = self(x0, s, i)
        return self.update(s, u), u if need_u else None

    def pooled_step(self, x0: Tensor, s: Tensor | None, i: int) -> tuple[Tensor, Tensor, Tensor] | None:
        """Training: (s_i, GAP(s_i), GAP(u_i)) in a fused pass where the block has one, else None
        (the stage then calls :meth:`step` and the halting unit pools)."""
        return None

    @staticmethod
    def update(s: Tensor | None, u: Tensor) -> Tensor:
        """s_i from s_{i-1} (None: s_0 = 0) and u_i: the block's residual rule."""
        raise NotImplementedError

    def macs(self, hw: tuple[int, int], first: bool = False) -> int:
        """MACs of one iteration at spatial size ``hw``; ``first``: from the zero state s_0."""
        raise NotImplementedError

    def fold(self, memory_format: torch.memory_format) -> FoldedBlock:
        """This block for inference, each iteration's BatchNorms folded into its convolutions."""
        raise NotImplementedError(f"{type(self).__name__} has no folded form (fold_batchnorm, export)")


class FoldedBlock(nn.Module):
    """A block with BatchNorm folded in, per-iteration weights stacked along dim 0. Subclasses give
    :meth:`compute`; ``forward``, ``step``, ``update`` and ``macs`` follow from it and the block."""

    def forward(self, x0: Tensor, s: Tensor | None, i: int | Tensor) -> Tensor:
        return self.compute(x0 if s is None else torch.cat([x0, s], dim=1), picker(i), first=s is None)

    def compute(self, x: Tensor, pick: Callable[[Tensor], Tensor], first: bool = False) -> Tensor:
        """u = B_k(x) with the weights ``pick`` takes from each per-iteration stack (``x``: x0 alone
        when ``first``, else concat(x0, s))."""
        raise NotImplementedError

    step = IterationBlock.step
    pooled_step = IterationBlock.pooled_step


B = TypeVar("B", bound=type[IterationBlock])

# the processing blocks a stage can iterate: IamNN(block=name)
BLOCKS: dict[str, type[IterationBlock]] = {}


def register_block(name: str) -> Callable[[B], B]:
    """Register a block class under ``name`` (a decorator): ``IamNN(block=name)`` then builds it as
    ``cls(in_channels, out_channels, max_iterations, **options)``, where the options are those of
    IamNN's keyword arguments that ``cls.__init__`` takes (e.g. ``expansion``, ``se``)."""

    def decorate(cls: B) -> B:
        BLOCKS[name] = cls
        return cls

    return decorate


def block_options(cls: type[IterationBlock], options: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``options`` that ``cls.__init__`` takes by name."""
    accepted = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in options.items() if k in accepted}
