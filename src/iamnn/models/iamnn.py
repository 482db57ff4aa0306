r"""IamNN: a ResNet whose stages are single weight-shared blocks iterated under a halting policy.

Read top to bottom: one iterative stage (its one loop of iterations, and the ways a halting policy
decides inside it: a fixed schedule, a batch with compaction, one sample on the host) → the
network → presets. The processing blocks :math:`B_k` are in ``bottleneck.py`` and
``inverted_residual.py`` (what a block is: ``blocks.py``). The details the paper leaves open (stems,
widths, the exact ACT rule, the cost convention) are written down in ``docs/specification.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from ..cost import conv_macs, conv_out_hw, linear_macs
from . import bottleneck as _bottleneck  # noqa: F401 - registers "bottleneck"
from . import inverted_residual as _inverted_residual  # noqa: F401 - registers "inverted_residual"
from .act_kernel import halting_step, one_sample_halting, weighted_sum
from .blocks import BLOCKS, MAX_WIDTH, block_options, iteration_norms, scaled_channels
from .bottleneck import ProcessingBlock
from .halting import HaltingPolicy, HaltingSpec, initial_states, network_policy, normalize_halting, stage_policies
from .halting_unit import HaltingUnit
from .inverted_residual import InvertedResidualBlock

__all__ = [
    "BLOCKS", "MAX_WIDTH", "PRESETS", "IamNN", "IamNNStats", "InvertedResidualBlock", "IterativeStage",
    "ProcessingBlock", "check_input", "check_model_args", "iteration_norms", "scaled_channels", "upgrade_state_dict",
]  # fmt: skip

Stem = Literal["imagenet", "cifar"]

# max iterations per stage == residual units per stage of the matching ResNet
PRESETS: dict[str, tuple[int, int, int, int]] = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 6, 3),
    "r101": (3, 4, 23, 3),
    "r152": (3, 8, 36, 3),
}


@dataclass
class IamNNStats:
    """What one forward spent, per sample.

    iterations: (B, 4) long, iterations N used in each stage.
    ponder: (B, 4) float, ponder cost ρ = N + R per stage (differentiable in ``act`` mode).
    macs: (B,) long, multiply-accumulates this sample cost.
    answered_by: under a cascade (``cascade.py``), (B,) long, the 0-based pass whose answer the
        sample left with; its iterations are then those computed over every pass it ran, and its
        ponder those iterations as floats. None otherwise.
    """

    iterations: Tensor
    ponder: Tensor
    macs: Tensor
    answered_by: Tensor | None = None


MAX_ITERATIONS = 1024  # per stage; the deepest preset (r152) has 36


def check_model_args(num_classes: int, in_chans: int, width: float, stem: str) -> None:
    """The arguments every model shares, refused with the accepted values before anything is built."""
    if stem not in ("imagenet", "cifar"):
        raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
    for name, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if isinstance(width, bool) or not isinstance(width, int | float) or not 0 < width <= MAX_WIDTH:
        raise ValueError(f"width must be a number in (0, {MAX_WIDTH}], got {width!r}")


# -- who decides, iteration by iteration ------------------------------------------------------------
class StageHalting(Protocol):
    """What :meth:`IterativeStage.run` asks after each iteration: the halting policy's decision
    carried out one way (a fixed schedule, a batch, one sample on the host, the C kernel)."""

    x0: Tensor  # the stage input of the samples still running

    def after(self, i: int, s: Tensor, u: Tensor | None, s_seen: Tensor, wants: bool, is_last: bool) -> Tensor | None:
        """Iteration ``i`` is done (state ``s``, ``u`` for the halting unit where it ``wants`` a
        score, ``s_seen`` as the unit reads s): score, decide, add p_i·s_i to y. Returns the state
        of the samples that go on, or None when none does."""
        ...

    def result(self) -> tuple[Tensor, Tensor, Tensor]:
        """y (B, C, H, W), iterations (B,) long, ponder ρ (B,), in the batch's order."""
        ...


class FixedSchedule:
    """A fixed schedule: N iterations, p one-hot on the last state (y = s_N), no halting unit."""

    def __init__(self, x0: Tensor, policy: HaltingPolicy, n: int, s: Tensor | None = None) -> None:
        self.x0, self.policy, self.n, self.s = x0, policy, n, s

    def after(self, i: int, s: Tensor, u: Tensor | None, s_seen: Tensor, wants: bool, is_last: bool) -> Tensor:
        self.s = s
        return s

    def result(self) -> tuple[Tensor, Tensor, Tensor]:
        iterations = torch.full((self.x0.shape[0],), self.n, dtype=torch.long, device=self.x0.device)
        return self.s, iterations, self.policy.ponder(1.0, iterations.to(self.x0.dtype))


class BatchHalting:
    """The policy's rule over a batch, halted samples leaving it (compaction): each later iteration
    computes on the still-active rows only, so the work done is proportional to the iterations
    used. ``kernel``: the halting step in C (``act_kernel.KernelStep``), else the PyTorch ops."""

    def __init__(self, stage: IterativeStage, x0: Tensor, policy: HaltingPolicy, kernel: Any = None) -> None:
        self.x0, self.policy, self.kernel, self.unit = x0, policy, kernel, stage.halting_unit
        self.batch = x0.shape[0]
        self.rows: Tensor | None = None  # full-batch row of each active sample; None while all are active
        self.state = initial_states(policy, x0)  # the policy's per-sample state (ACT: Σ_{i<n} h_i)
        self.y: Tensor | None = None  # Σ_j p_j · s_j of the active samples, up to the last halting
        self.terms: list[tuple[Tensor, Tensor]] = []  # (p_n, s_n) since then: added to y where samples halt
        # the halting unit's view of x0, the same at every iteration
        self.context = self.unit.context(x0) if kernel is None else kernel.context(x0)
        self.done: list[tuple[Tensor | None, Tensor, Tensor, Tensor]] = []  # per halting event: rows, y, N, ρ

    def after(self, i: int, s: Tensor, u: Tensor | None, s_seen: Tensor, wants: bool, is_last: bool) -> Tensor | None:
        x0, policy = self.x0, self.policy
        if self.kernel is not None:  # u is None where the policy wants no score
            p, halt, next_state, n_halt = self.kernel(s, u, self.context, self.state, is_last)
        else:
            # h_{N_k} := 1 at the last iteration (no halting call); 0 where the policy wants no score
            h = self.unit(s_seen, self.context, u) if wants else x0.new_full((len(x0),), float(is_last))
            p, halt, next_state = policy.step(self.state, h)
            n_halt = len(halt) if is_last else int(halt.sum())  # the one host sync of an iteration
        self.terms.append((p, s))
        if n_halt == 0:
            self.state = next_state
            return s
        # y = Σ_n p_n · s_n, formed only now, in one pass over the states (adding each iteration's
        # term as it comes would read and write y every iteration)
        y, self.terms = weighted_sum(self.y, self.terms), []
        if n_halt == len(halt):  # everyone left stops now
            rho = policy.ponder(p, i + 1, next_state)
            self.done.append((self.rows, y, torch.full_like(p, i + 1, dtype=torch.long), rho))
            return None
        gone, keep = halt.nonzero().squeeze(1), (~halt).nonzero().squeeze(1)
        rho = policy.ponder(p[gone], i + 1, next_state[gone])
        rows = self.rows
        self.done.append((gone if rows is None else rows[gone], y[gone], torch.full_like(gone, i + 1), rho))
        # compaction: the next iteration computes on the active samples only
        self.rows = keep if rows is None else rows[keep]
        self.x0, self.context, self.y, self.state = x0[keep], self.context[keep], y[keep], next_state[keep]
        return s[keep]

    def result(self) -> tuple[Tensor, Tensor, Tensor]:
        done = self.done
        if done[0][0] is None:  # every sample halted at the same iteration: nothing to reorder
            return done[0][1:]
        order = torch.cat([d[0] for d in done])  # order[j] = full-batch row of the j-th finished sample
        position = torch.empty_like(order).index_copy_(0, order, torch.arange(self.batch, device=order.device))
        return tuple(torch.cat([d[j] for d in done])[position] for j in (1, 2, 3))  # type: ignore[return-value]


class HostHalting:
    """The policy's rule for a single sample at inference, decided on the host.

    The batch's bookkeeping is about ten small tensor ops per iteration; with one sample they become
    float32 scalar arithmetic (numpy, so that every decision equals the batched one bit for bit) and
    one host read of h per iteration. (A folded model under ACT takes the C kernel's
    ``act_kernel.KernelOneSample`` instead, when it built.)
    """

    def __init__(self, stage: IterativeStage, x0: Tensor, policy: HaltingPolicy) -> None:
        self.x0, self.policy, self.unit = x0, policy, stage.halting_unit
        self.context = self.unit.context(x0)
        self.state = np.asarray(policy.initial_state, dtype=np.float32)[()]  # a float32 scalar, or a vector
        self.y: Tensor | None = None
        self.n, self.p = 0, np.float32(0.0)

    def after(self, i: int, s: Tensor, u: Tensor | None, s_seen: Tensor, wants: bool, is_last: bool) -> Tensor | None:
        h = np.float32(self.unit(s, self.context, u).item()) if wants else np.float32(is_last)
        p, halt, self.state = self.policy.step(self.state, h)
        self.y = s * float(p) if self.y is None else self.y.add_(s, alpha=float(p))  # y = Σ_n p_n · s_n
        if halt or is_last:
            self.n, self.p = i + 1, p
            return None
        return s

    def result(self) -> tuple[Tensor, Tensor, Tensor]:
        x0 = self.x0
        rho = float(self.policy.ponder(self.p, np.float32(self.n), self.state))
        n = torch.full((1,), self.n, dtype=torch.long, device=x0.device)
        return self.y, n, torch.full((1,), rho, dtype=x0.dtype, device=x0.device)


class IterativeStage(nn.Module):
    r"""One IamNN stage: up to ``max_iterations`` applications of a shared processing block (one of
    :data:`~iamnn.models.blocks.BLOCKS`, the paper's bottleneck by default).

    With :math:`s_0 = 0`: :math:`u_i = B_k(\mathrm{concat}(x_0, s_{i-1}))`,
    :math:`s_i = \mathrm{ReLU}(s_{i-1} + u_i)`; the stage output is :math:`y = \sum_n p_n s_n`, with
    the iterations N and weights p_n given by a :class:`~iamnn.models.halting.HaltingPolicy`.

    Samples that have halted leave the batch: each later iteration computes on the still-active
    rows only, so the work done is proportional to the iterations actually used.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        max_iterations: int,
        halting_hidden: int = 64,
        halting_bias: float = -3.0,
        block: str = "bottleneck",
        **block_kwargs: object,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.max_iterations = max_iterations
        self.block = BLOCKS[block](in_channels, out_channels, max_iterations, **block_kwargs)
        self.halting_unit = HaltingUnit(2 * out_channels + in_channels, halting_hidden, halting_bias)

    def forward(
        self, x0: Tensor, policy: HaltingPolicy, resume: tuple[Tensor, int] | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(B, C_in, H, W) -> y (B, C_out, H, W), iterations (B,) long, ponder ρ (B,).

        ``resume``: (s_m, m), the state after m iterations of an earlier fixed schedule on the same
        x0; a fixed schedule then goes on from iteration m + 1 (a cascade's deeper pass)."""
        if resume is not None and policy.uses_scores:
            raise ValueError("only a fixed schedule resumes a stage")
        s, start = resume or (None, 0)  # s_0 = 0
        return self.run(self.halting_for(x0, policy, s), policy, s, start)

    def halting_for(self, x0: Tensor, policy: HaltingPolicy, s: Tensor | None = None) -> StageHalting:
        """Who carries out ``policy``'s decisions for this call: a fixed schedule; at inference on
        one float32 sample the C kernel (a folded model under ACT) or the host; else the batch."""
        if not policy.uses_scores:
            return FixedSchedule(x0, policy, policy.limit(self.max_iterations), s)
        if x0.shape[0] == 1 and not torch.is_grad_enabled() and x0.dtype == torch.float32:
            return one_sample_halting(self, x0, policy) or HostHalting(self, x0, policy)
        return BatchHalting(self, x0, policy, halting_step(self, x0, policy))

    def run(
        self, halting: StageHalting, policy: HaltingPolicy, s: Tensor | None = None, start: int = 0
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The stage's iterations, written once: every path runs this loop (fixed schedules,
        batches, one sample, the C kernel, the ONNX export's fixed schedules), ``halting`` deciding
        after each iteration (:class:`StageHalting`). From state ``s`` after ``start`` iterations."""
        limit = policy.limit(self.max_iterations)
        step = self.block.step
        pooled_step = self.block.pooled_step if torch.is_grad_enabled() else None
        for i in range(start, limit):
            is_last = i == limit - 1
            wants = not is_last and policy.wants_score(i)  # h_{N_k} := 1 needs no halting call
            fused = pooled_step(halting.x0, s, i) if wants and pooled_step is not None else None
            if fused is None:  # u_i = B_k(concat(x0, s_{i-1})), s_i = update(s_{i-1}, u_i)
                s, u = step(halting.x0, s, i, need_u=wants)
                s_seen = s
            else:  # training: s_i and the GAPs of s_i and u_i the halting unit reads, in one pass
                s, s_seen, u = fused
            # h_i, the policy's (p_i, halt), y += p_i·s_i; the state of the samples that go on
            s = halting.after(i, s, u, s_seen, wants, is_last)
            if s is None:
                break
        return halting.result()

    def iteration_macs(self, hw: tuple[int, int]) -> tuple[int, int, int]:
        """MACs of the first iteration (from s_0 = 0), of each later one, and of one halting call."""
        return self.block.macs(hw, first=True), self.block.macs(hw), self.halting_unit.macs()


def init_resnet_style(module: nn.Module) -> None:
    """torchvision ResNet's initialisation: Kaiming-normal (fan-out) convolutions, BN γ = 1, β = 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def check_input(x: Tensor, in_chans: int) -> None:
    """Reject what would otherwise fail deep inside (or silently give garbage) with a clear message."""
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(f"expected {in_chans} input channel(s), got {x.shape[1]} (shape {tuple(x.shape)})")
    if x.shape[0] == 0:
        raise ValueError("empty batch: at least one image is needed")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point image tensor, got {x.dtype} (normalise it first)")
    if x.device.type != "meta" and not torch.compiler.is_compiling() and not bool(torch.isfinite(x).all()):
        raise ValueError("input contains NaN or Inf values")


class IamNN(nn.Module):
    r"""IamNN (Leroux et al., 2018): stem → 4 iterative stages (2x2 max-pool between) → GAP → FC.

    Args:
        iterations: max iterations per stage, e.g. ``(3, 4, 23, 3)`` for the ResNet-101 preset.
        num_classes: classifier outputs.
        in_chans: input channels (1 for Fashion-MNIST).
        stem: ``"imagenet"`` (7x7/2 conv + 3x3/2 max-pool) or ``"cifar"`` (3x3/1 conv, no pool).
        width: multiplier of the ResNet bottleneck widths (stage k outputs 256·2^k·width).
        halting: the default halting policy (``halting.py``): ``"act"`` (adaptive), ``"full"`` (all
            iterations), an int k (fixed k iterations), another registered name, or one per stage.
            ``forward(x, halting=...)`` runs another one for a call.
        epsilon: ACT threshold slack ε (halt once Σh ≥ 1 − ε); the knob of a named policy.
        halting_bias: initial bias of the halting unit's last layer (negative: start by iterating).
        zero_init_residual: start each iteration's last BN at γ = 0 (as torchvision's option).
        channels: explicit stage output widths (overrides ``width`` for the stages; the stem
            keeps 64·width), e.g. ``(256, 512, 1024, 1024)`` for a narrower last stage.
        stem_channels: explicit stem width (default 64·width).
        block: the processing block each stage iterates, a name of :data:`~iamnn.models.blocks.BLOCKS`:
            ``"bottleneck"`` (the paper's), ``"inverted_residual"`` (depthwise-separable,
            MobileNetV3-style; the paper's future work), or one you registered.
        expansion: the inverted residual's expansion ratio (passed to a block that takes it).
        se: whether the inverted residual has a squeeze-excitation (passed to a block that takes it).
    """

    def __init__(
        self,
        iterations: tuple[int, ...] = PRESETS["r101"],
        num_classes: int = 1000,
        in_chans: int = 3,
        stem: Stem = "imagenet",
        width: float = 1.0,
        halting: HaltingSpec = "act",
        epsilon: float = 0.01,
        halting_bias: float = -3.0,
        halting_hidden: int = 64,
        zero_init_residual: bool = False,
        channels: tuple[int, ...] | None = None,
        stem_channels: int | None = None,
        block: str = "bottleneck",
        expansion: float = 4.0,
        se: bool = True,
    ) -> None:
        super().__init__()
        check_model_args(num_classes, in_chans, width, stem)
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {', '.join(map(repr, BLOCKS))}, got {block!r}")
        # bounded: each iteration has BatchNorms of its own, so 10^12 would exhaust memory building them
        if not iterations or not all(isinstance(n, int) and 1 <= n <= MAX_ITERATIONS for n in iterations):
            raise ValueError(f"iterations must give an int in 1..{MAX_ITERATIONS} per stage, got {iterations!r}")
        if not 0.0 <= epsilon < 1.0:
            raise ValueError(f"epsilon (the halting slack, threshold 1 − ε) must be in [0, 1), got {epsilon!r}")
        self.max_iterations = tuple(int(n) for n in iterations)
        self.num_classes, self.in_chans, self.stem_type, self.width = num_classes, in_chans, stem, width
        self.epsilon = epsilon
        self.preset: str | None = None  # the registered preset it was built from ("r34"), set by its builder
        self.inference_chunk = 128  # eval batches larger than this run in chunks (0: never)
        self.memory_format: torch.memory_format | None = None  # if set, inputs are converted to it
        if stem_channels is None:
            stem_channels = scaled_channels(64, width)
        self._build_stem(stem, in_chans, stem_channels)
        if channels is None:
            channels = tuple(scaled_channels(256 * 2**k, width, 4) for k in range(len(iterations)))
        if len(channels) != len(iterations) or any(not isinstance(c, int) or c < 4 or c % 4 for c in channels):
            raise ValueError(f"channels must give one multiple of 4 per stage, got {channels}")
        channels = [stem_channels, *channels]
        self.block_type = block
        options = block_options(BLOCKS[block], {"expansion": expansion, "se": se})  # those the block takes
        self.stages = nn.ModuleList(
            IterativeStage(channels[k], channels[k + 1], n, halting_hidden, halting_bias, block, **options)
            for k, n in enumerate(self.max_iterations)
        )
        self.num_features = channels[-1]
        self.fc = nn.Linear(self.num_features, num_classes)
        self.halting = halting
        self._init_weights(zero_init_residual)

    def _build_stem(self, stem: Stem, in_chans: int, channels: int) -> None:
        """The stem (conv → BN → ReLU → max-pool for ``imagenet``), and 2x2 max-pooling between stages."""
        if isinstance(channels, bool) or not isinstance(channels, int) or not 1 <= channels <= 64 * 2**12:
            raise ValueError(f"stem_channels must be an int in 1..{64 * 2**12}, got {channels!r}")
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, channels, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(in_chans, channels, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(channels)
        self.pool = nn.MaxPool2d(2, stride=2)  # between stages, instead of strided convolutions

    def _init_weights(self, zero_init_residual: bool) -> None:
        init_resnet_style(self)
        if zero_init_residual:
            for stage in self.stages:
                for norms in stage.block.norms:
                    nn.init.zeros_(norms[-1].weight)  # the BatchNorm that ends u_i

    @property
    def halting(self) -> HaltingSpec:
        """The default halting policy, as given (``"act"``, ``"full"``, k, a name, a policy, one per stage)."""
        return self._halting

    @halting.setter
    def halting(self, spec: HaltingSpec) -> None:
        spec = normalize_halting(spec)  # fails now, with the accepted values, rather than at the next forward
        if network_policy(spec) is None:
            self.policies(spec)
        self._halting = spec

    def policies(self, halting: HaltingSpec | None = None) -> tuple[HaltingPolicy, ...]:
        """One policy per stage for ``halting`` (default: :attr:`halting`, with :attr:`epsilon`)."""
        return stage_policies(self.halting if halting is None else halting, len(self.stages), self.epsilon)

    # -- forward -------------------------------------------------------------------------------
    def forward_features(self, x: Tensor, halting: HaltingSpec | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(B, C, H, W) -> features (B, C_4, h, w), iterations (B, 4), ponder (B, 4)."""
        features, iterations, ponder, _ = self.forward_stages(self.forward_stem(x), self.policies(halting))
        return features, iterations, ponder

    def forward_stem(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> the stem's output, stage 1's input x_0."""
        check_input(x, self.in_chans)
        if min(self.stage_sizes(tuple(x.shape[-2:]))[-1]) < 1:
            raise ValueError(
                f"input {x.shape[-2]}x{x.shape[-1]} is too small: the {self.stem_type} stem and "
                f"{len(self.stages) - 1} 2x2 poolings leave no pixel for the last stage"
            )
        if self.memory_format is not None:  # None: the caller's layout stays (the training Classifier sets its own)
            x = x.contiguous(memory_format=self.memory_format)
        return self.maxpool(torch.relu(self.bn1(self.conv1(x))))

    def forward_stages(
        self, x: Tensor, policies: tuple[HaltingPolicy, ...], resume: tuple[Tensor, int] | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The stem's output -> features, iterations (B, 4), ponder (B, 4), and stage 1's output;
        ``resume``: stage 1 goes on from an earlier fixed schedule's state (``IterativeStage``)."""
        iterations, ponder, first = [], [], x
        for k, (stage, policy) in enumerate(zip(self.stages, policies, strict=True)):
            if k > 0:
                x = self.pool(x)
            x, n, rho = stage(x, policy, resume if k == 0 else None)
            first = x if k == 0 else first
            iterations.append(n)
            ponder.append(rho)
        return x, torch.stack(iterations, 1), torch.stack(ponder, 1), first

    def forward_head(self, features: Tensor) -> Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1))

    def forward(
        self, x: Tensor, return_stats: bool = False, halting: HaltingSpec | None = None
    ) -> Tensor | tuple[Tensor, IamNNStats]:
        """(B, C, H, W) -> logits (B, classes), and with ``return_stats`` the per-sample costs.

        ``halting``: the policy for this call (default: :attr:`halting`), e.g. ``"full"``, ``2``,
        ``ACT(epsilon=0.5)`` or one per stage; the model itself is not changed.

        At inference a batch larger than ``inference_chunk`` runs in chunks of that size: eval
        BatchNorm makes samples independent, so the result is the same, and smaller state maps
        stay in cache (measured on 2 CPU cores, folded model at batch 256: chunks of 128 beat 64 and 256).
        """
        if (network := network_policy(self.halting if halting is None else halting)) is not None:  # whole passes
            log_probs, iterations, macs, answered = network.run(self, x)
            return (
                (log_probs, IamNNStats(iterations, iterations.to(x.dtype), macs, answered))
                if return_stats
                else log_probs
            )
        halting = self.policies(halting)  # resolved once: the stages and the MAC count use them
        chunk = self.inference_chunk
        if not self.training and chunk and x.shape[0] > chunk:
            parts = [self.forward(part, return_stats=True, halting=halting) for part in x.split(chunk)]
            logits = torch.cat([p[0] for p in parts])
            if not return_stats:
                return logits
            stats = [p[1] for p in parts]
            return logits, IamNNStats(
                *(torch.cat([getattr(st, f) for st in stats]) for f in ("iterations", "ponder", "macs"))
            )
        features, iterations, ponder = self.forward_features(x, halting)
        logits = self.forward_head(features)
        if not return_stats:
            return logits
        return logits, IamNNStats(iterations, ponder, self.macs(iterations, x.shape[-2:], halting))

    # -- cost ----------------------------------------------------------------------------------
    def stage_sizes(self, input_hw: tuple[int, int]) -> list[tuple[int, int]]:
        """Spatial size of the stem's output, then of each stage's maps, for ``input_hw``."""
        hw = conv_out_hw(tuple(input_hw), self.conv1)
        sizes = [hw]
        if isinstance(self.maxpool, nn.MaxPool2d):
            hw = conv_out_hw(hw, self.maxpool)
        for k in range(len(self.stages)):
            if k > 0:
                hw = conv_out_hw(hw, self.pool)
            sizes.append(hw)
        return sizes

    def cost_table(self, input_hw: tuple[int, int]) -> dict[str, object]:
        """Analytic MACs: stem; per stage the first iteration, each later iteration and one halting
        call; head."""
        stem_hw, *stage_hw = self.stage_sizes(input_hw)
        stem = conv_macs(self.conv1, stem_hw)
        first, block, halt = [], [], []
        for stage, hw in zip(self.stages, stage_hw, strict=True):
            f, b, h = stage.iteration_macs(hw)
            first.append(f)
            block.append(b)
            halt.append(h)
        return {"stem": stem, "first": first, "block": block, "halting": halt, "head": linear_macs(self.fc)}

    def macs(self, iterations: Tensor, input_hw: tuple[int, int], halting: HaltingSpec | None = None) -> Tensor:
        """Per-sample MACs for (B, 4) ``iterations``: stem + Σ_k (first_k + (N_k − 1)·block_k +
        halting calls) + head.

        The first iteration starts from s_0 = 0 and skips the state's half of the first 1x1
        convolution. A policy that uses scores calls the halting unit after every iteration but the
        last allowed one (h_{N_k} := 1 needs no computation), i.e. min(N, N_k − 1) times per stage.
        """
        table = self.cost_table(input_hw)
        macs = torch.full_like(iterations[:, 0], table["stem"] + table["head"])
        for k, (n, policy) in enumerate(zip(iterations.unbind(1), self.policies(halting), strict=True)):
            macs = macs + table["first"][k] + (n - 1) * table["block"][k]
            if policy.uses_scores:
                macs = macs + n.clamp(max=policy.limit(self.max_iterations[k]) - 1) * table["halting"][k]
        return macs

    def max_macs(self, input_hw: tuple[int, int], halting: HaltingSpec | None = None) -> int:
        """MACs of a sample that uses every iteration the policy allows."""
        limits = [p.limit(m) for p, m in zip(self.policies(halting), self.max_iterations, strict=True)]
        return int(self.macs(torch.tensor([limits]), input_hw, halting)[0])

    def params_used(self, halting: HaltingSpec | None = None) -> int:
        """Parameters a forward under ``halting`` can touch: a fixed schedule needs neither the
        halting units nor the BatchNorms of iterations it never runs (the paper's "1 iter" row)."""
        total = sum(p.numel() for p in self.parameters())
        for stage, policy in zip(self.stages, self.policies(halting), strict=True):
            if not policy.uses_scores:
                total -= sum(p.numel() for p in stage.halting_unit.parameters())
            n = policy.limit(stage.max_iterations)
            total -= sum(p.numel() for norms in stage.block.norms[n:] for p in norms.parameters())
        return total

    # -- timm-style interface ------------------------------------------------------------------
    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes)


def upgrade_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state dict saved before the halting unit was named ``halting_unit`` (it was ``halting``,
    the word that also names the policy), with its keys renamed; others pass unchanged."""
    legacy = re.compile(r"(^|\.)stages\.(\d+)\.halting\.")
    return {legacy.sub(r"\1stages.\2.halting_unit.", k): v for k, v in state.items()}
