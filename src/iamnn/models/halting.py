r"""Halting policies: how a stage turns its halting scores into iterations, weights and ponder cost.

A stage runs iterations :math:`n = 1, 2, \dots` and after each asks its policy whether a sample
stops; the policy answers with the weight :math:`p_n` of this iteration's state in the stage output
:math:`y = \sum_n p_n s_n`, and at the stop with the sample's ponder cost :math:`\rho`. The
PyTorch stage (batched and batch-1 paths) and the ONNX exporter both call :meth:`HaltingPolicy.step`,
so a rule is written once; the loss term that trains it is :meth:`HaltingPolicy.loss`, beside it.

Policies shipped here:

- ``act`` (:class:`ACT`): adaptive computation time (Graves 2016; SACT, Figurnov et al. 2017), the
  paper's rule. With scores :math:`h_1, h_2, \dots` and :math:`h_{N_k} := 1`:

  .. math::
      N = \min\{n : \textstyle\sum_{i \le n} h_i \ge 1 - \epsilon\}, \quad
      R = 1 - \textstyle\sum_{i < N} h_i, \quad
      p_n = h_n \ (n < N), \ p_N = R, \quad \rho = N + R.

- ``full`` (:class:`Full`) and an int ``k`` (:class:`Fixed`): a fixed schedule, every iteration or
  :math:`\min(k, N_k)`; :math:`p` is one-hot on the last state, :math:`\rho = N + 1`, and the stage
  never calls its halting unit.

A new policy is one subclass of :class:`HaltingPolicy` and one :func:`register_policy`; the model,
its cost accounting, training, evaluation, benchmarks and export then take its name
(``create_model(..., halting="mine")``, ``model(x, halting="mine")``), and the report, its figures,
calibration and the app ask the policy itself how to describe it (:meth:`~HaltingPolicy.describe`),
how to move its threshold (:meth:`~HaltingPolicy.with_threshold`) and what that threshold does
(:attr:`~HaltingPolicy.threshold_text`), never its name. The architecture page of the
documentation shows a twenty-line example.

The rule is written over "numbers" that may be (b,) tensors (a batch of active samples, or a
traced ONNX ``Loop`` body) or float32 numpy scalars (the batch-1 path, which decides on the host):
:func:`where` and :func:`detach` serve both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import Tensor

Number = Any  # a (b,) float tensor, or a numpy float32 scalar on the batch-1 path
# a halting policy as a user gives it: "act" | "full" | int k | a registered name | a HaltingPolicy |
# one of these per stage | a network-level policy ("cascade:…")
HaltingSpec = Any


def where(condition: Number, a: Number, b: Number) -> Number:
    """``torch.where`` for tensors, ``a if condition else b`` for scalars."""
    return torch.where(condition, a, b) if isinstance(condition, Tensor) else (a if condition else b)


def detach(x: Number) -> Number:
    """The halting decision is not differentiated: tensors are detached, scalars pass."""
    return x.detach() if isinstance(x, Tensor) else x


def log(x: Number) -> Number:
    """``torch.log`` for tensors, ``np.log`` for scalars."""
    return torch.log(x) if isinstance(x, Tensor) else np.log(x)


def stack(*parts: Number) -> Number:
    """A vector state from its parts: (b, d) for (b,) tensors, a float32 (d,) array for scalars."""
    if any(isinstance(x, Tensor) for x in parts):
        like = next(x for x in parts if isinstance(x, Tensor))
        return torch.stack([x if isinstance(x, Tensor) else like.new_full(like.shape, float(x)) for x in parts], -1)
    return np.array(parts, dtype=np.float32)


def initial_states(policy: HaltingPolicy, like: Tensor) -> Tensor:
    """The policy's :attr:`~HaltingPolicy.initial_state` for each of ``like``'s samples: (b,), or (b, d)."""
    return like.new_tensor(policy.initial_state).expand(like.shape[0], *np.shape(policy.initial_state)).clone()


class HaltingPolicy:
    """The rule that turns a stage's halting scores into (N, p_n, ρ), and the loss that trains it.

    Subclasses set :attr:`name` and :attr:`uses_scores` and override what differs. A policy is a
    small immutable value: its parameters are fixed at construction.
    """

    name: ClassVar[str] = "policy"
    #: False: a fixed schedule. The stage never calls its halting unit, and y is the last state.
    uses_scores: ClassVar[bool] = True
    #: the per-sample state before the first iteration (ACT: the sum of scores so far, 0); a tuple
    #: makes it a vector, indexed ``state[..., j]`` in :meth:`step` (tensors and arrays alike)
    initial_state: ClassVar[float | tuple[float, ...]] = 0.0

    def limit(self, max_iterations: int) -> int:
        """The most iterations a sample may run in a stage of ``max_iterations`` (N_k)."""
        return max_iterations

    def wants_score(self, i: int) -> bool:
        """Whether the stage calls its halting unit after iteration ``i`` (0-based, not the last);
        when it does not, :meth:`step` gets the score 0."""
        return self.uses_scores

    def step(self, state: Number, h: Number) -> tuple[Number, Number, Number]:
        """One iteration for the samples still running: ``(p_n, halt, next state)``.

        ``state`` is the policy's per-sample state before this iteration and ``h`` this iteration's
        score; at the stage's last allowed iteration the stage passes :math:`h_{N_k} := 1`, and
        every sample must halt there. ``halt`` marks the samples that stop now.
        """
        raise NotImplementedError

    def ponder(self, p: Number, n: int | Tensor, state: Number = None) -> Number:
        """The ponder cost ρ of a sample that stops at iteration ``n`` (1-based) with weight ``p``
        and policy state ``state`` (after that iteration; None for a fixed schedule)."""
        return p + n

    def loss(self, ponder: Tensor, max_iterations: Sequence[int] | None = None) -> Tensor:
        r"""The regulariser the training loss adds, times τ: :math:`\sum_k \mathrm{mean}_b(\rho_k)`.

        ``ponder`` is (B, stages); with ``max_iterations`` each stage's ρ is divided by its N_k,
        so that a long stage is not charged more per unit of its depth than a short one.
        """
        if max_iterations is not None:
            ponder = ponder / ponder.new_tensor(list(max_iterations))
        return ponder.mean(0).sum()

    @property
    def spec(self) -> str | int:
        """What ``create_model(halting=...)`` and the saved config call this policy."""
        return self.name

    # -- how the policy describes and sweeps itself (the report, its figures, calibration, the app) --
    #: what the threshold knob ε does, in words, with its direction (the app's slider says it). The
    #: knob's contract, which calibration's bisection relies on: ε in [0, 1), a larger ε never stops
    #: a sample later; so one grid of ε serves every policy's sweep
    threshold_text: ClassVar[str] = "ε moves the policy's threshold: larger ε, fewer MACs"

    def describe(self) -> str:
        """The policy in words, for the report's tables, the figures' legends and progress lines
        ('act ε=0.01', 'fixed k=2', 'full'). By default its spec and the values it was built with:
        ``Confident(threshold=0.95)`` is 'confident (threshold=0.95)'."""
        values = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in vars(self).items())
        return f"{self.spec} ({values})" if values else str(self.spec)

    def with_threshold(self, epsilon: float) -> HaltingPolicy | None:
        """This policy with its threshold knob at ``epsilon``: what the report's sweep, ``iamnn
        calibrate`` and the frontier's budgets move. By default the ``build(epsilon)`` it was
        registered with; None when it was registered without one (it has no knob). A fixed schedule
        has no knob of its own: its model's halting units are swept under ACT, the paper's rule."""
        if not self.uses_scores:
            return ACT(epsilon)
        build = _THRESHOLDED.get(self.name)
        return build(epsilon) if build is not None else None

    def stop_level(self) -> float | None:
        """The level a stage's cumulative halting score must reach for it to stop (ACT's 1 − ε),
        drawn on the app's plot of that score; None for a rule that is not such a level."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)


class ACT(HaltingPolicy):
    """Adaptive computation time with slack ε: a sample stops once its scores sum to 1 − ε.

    ``min_iterations`` (a training aid): no sample stops before that many iterations; the scores
    before it count as 0, so those iterations carry no weight in y.
    """

    name = "act"
    threshold_text = "a stage stops once its scores sum to 1 − ε: larger ε, fewer MACs"

    def __init__(self, epsilon: float = 0.01, min_iterations: int = 0) -> None:
        if not 0.0 <= float(epsilon) < 1.0:
            raise ValueError(f"ACT's slack ε (threshold 1 − ε) must be in [0, 1), got {epsilon!r}")
        self.epsilon = float(epsilon)
        self.min_iterations = int(min_iterations)
        # 1 − ε rounded to float32 once, so that tensors and numpy scalars compare alike
        self.threshold = float(np.float32(1.0 - self.epsilon))

    def describe(self) -> str:
        return f"{self.spec} ε={self.epsilon:g}"

    def stop_level(self) -> float:
        return 1.0 - self.epsilon

    def wants_score(self, i: int) -> bool:
        return i + 1 >= self.min_iterations

    def step(self, state: Number, h: Number) -> tuple[Number, Number, Number]:
        cum_h = state  # Σ_{i<n} h_i
        # N = min{n : h_1 + … + h_n ≥ 1 − ε} (always at h_{N_k} := 1); the decision is not differentiated
        halt = detach(cum_h + h) >= self.threshold
        # p_n = h_n before the halting iteration, p_N = R = 1 − (h_1 + … + h_{N−1})
        return where(halt, 1.0 - cum_h, h), halt, cum_h + h


class Fixed(HaltingPolicy):
    """A fixed number of iterations per stage, min(k, N_k); p is one-hot on the last state."""

    name = "fixed"
    uses_scores = False

    def __init__(self, k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"a fixed number of iterations must be an int k >= 1, got {k!r}")
        self.k = k

    def limit(self, max_iterations: int) -> int:
        return min(self.k, max_iterations)

    @property
    def spec(self) -> int:
        return self.k

    def describe(self) -> str:
        return f"{self.name} k={self.k}"


class Full(HaltingPolicy):
    """Every iteration of every stage, p one-hot on the last state: the un-halted network."""

    name = "full"
    uses_scores = False


class PonderNet(HaltingPolicy):
    r"""PonderNet-style halting (Banino et al. 2021) within a stage: the score :math:`\lambda_n = h_n`
    is the probability of halting at iteration n given that the sample got there.

    .. math::
        p_n = \lambda_n \prod_{j<n} (1 - \lambda_j), \quad
        N = \min\{n : \textstyle\prod_{j \le n} (1 - \lambda_j) \le \epsilon\}, \quad
        p_N = \textstyle\prod_{j<N} (1 - \lambda_j)

    (the mass left after N goes to the last state, as ACT's remainder; :math:`\lambda_{N_k} := 1`).
    The stage outputs :math:`y = \sum_n p_n s_n`, the expected state, since one classifier at the
    end of the network sees only the stage outputs (PonderNet proper takes the expected loss of a
    prediction at every step). Its regulariser is :math:`\rho = \mathrm{KL}(p \,\|\,
    \mathrm{Geometric}(\lambda_p))` per sample, up to the constant :math:`\log Z` of truncating the
    geometric prior at :math:`N_k` (which does not change the gradient); note the order, p first:
    the labml implementation has them the other way round.

    State: the mass left :math:`r = \prod_{j<n}(1 - \lambda_j)`, the iterations done n − 1,
    :math:`\sum p \log p` and :math:`\sum_n (n - 1) p_n`, so that ρ is known at the stop:
    :math:`\mathrm{KL} = \sum p \log p - \log \lambda_p - \sum_n (n - 1) p_n \log(1 - \lambda_p)`.
    """

    name = "pondernet"
    threshold_text = "a stage stops once the halting mass left is at most ε: larger ε, fewer MACs"
    initial_state = (1.0, 0.0, 0.0, 0.0)

    def __init__(self, epsilon: float = 0.01, prior: float = 0.5) -> None:
        if not 0.0 < prior < 1.0:
            raise ValueError(f"the geometric prior's λ_p must be in (0, 1), got {prior!r}")
        self.epsilon, self.prior = float(epsilon), float(prior)
        self.threshold = float(np.float32(self.epsilon))

    def describe(self) -> str:
        return f"{self.spec} ε={self.epsilon:g}"

    def step(self, state: Number, h: Number) -> tuple[Number, Number, Number]:
        r, k, plogp, kp = state[..., 0], state[..., 1], state[..., 2], state[..., 3]
        left = r * (1.0 - h)  # mass not yet halted after this iteration
        halt = detach(left) <= self.threshold  # at h_{N_k} := 1 nothing is left
        p = where(halt, r, r * h)
        plogp = plogp + p * log(p + 1e-12)  # p log p → 0 as p → 0
        return p, halt, stack(left, k + 1.0, plogp, kp + k * p)

    def ponder(self, p: Number, n: int | Tensor, state: Number = None) -> Number:
        if state is None:  # never reached: the stage calls a fixed schedule's ponder only
            return p + n
        plogp, kp = state[..., 2], state[..., 3]
        return plogp - float(np.log(self.prior)) - kp * float(np.log1p(-self.prior))


# -- the registry ---------------------------------------------------------------------------------
P = TypeVar("P", bound=type[HaltingPolicy])
_POLICIES: dict[str, Callable[[float], HaltingPolicy]] = {}
_THRESHOLDED: dict[str, Callable[[float], HaltingPolicy]] = {}  # those registered with a build(epsilon)


def register_policy(name: str, build: Callable[[float], HaltingPolicy] | None = None) -> Callable[[P], P]:
    """Register a policy class under ``name`` (a decorator), so that ``halting=name`` builds it.

    ``build(epsilon)`` makes an instance from the model's ``epsilon``, its one threshold knob
    (ε in [0, 1), a larger ε never stopping later), which the report's sweep and calibration move
    (:meth:`HaltingPolicy.with_threshold`) and the app's slider sets; without it the class is
    called with no argument, and the policy has no knob to move.
    """

    def decorate(cls: P) -> P:
        _POLICIES[name] = build or (lambda epsilon: cls())
        if build is not None:
            _THRESHOLDED[name] = build
        else:
            _THRESHOLDED.pop(name, None)
        return cls

    return decorate


register_policy("act", lambda epsilon: ACT(epsilon))(ACT)
register_policy("full")(Full)
register_policy("pondernet", lambda epsilon: PonderNet(epsilon))(PonderNet)


def ponder_loss(
    policies: Sequence[HaltingPolicy], ponder: Tensor, max_iterations: Sequence[int] | None = None
) -> Tensor:
    """The term the training loss adds, times τ: each stage's policy's :meth:`~HaltingPolicy.loss`,
    summed over the stages. ``ponder`` is (B, stages)."""
    if all(p == policies[0] for p in policies):  # one policy for every stage (the usual case)
        return policies[0].loss(ponder, max_iterations)
    per_stage = [
        p.loss(ponder[:, k : k + 1], None if max_iterations is None else max_iterations[k : k + 1])
        for k, p in enumerate(policies)
    ]
    return torch.stack(per_stage).sum()


# network-level policies (a cascade of whole passes, ``cascade.py``), written "name:…": name -> class
_NETWORK_POLICIES: dict[str, type] = {}


def register_network_policy(name: str, cls: type) -> None:
    """Register a network-level policy class, written ``name:…`` and read by ``cls.parse``; its
    instances have ``spec`` (their text), ``describe()`` (in words) and ``run(model, x)`` (what
    ``IamNN.forward`` calls); its ``form`` (a class attribute, e.g. ``"cascade:PASS,PASS@T"``)
    is how :func:`halting_forms` writes it."""
    _NETWORK_POLICIES[name] = cls


def network_policy(spec: HaltingSpec) -> Any:
    """The network-level policy ``spec`` is or names, else None."""
    if isinstance(spec, tuple(_NETWORK_POLICIES.values())):
        return spec
    name, colon, _ = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    return _NETWORK_POLICIES[name].parse(spec) if colon and name in _NETWORK_POLICIES else None


def policy_names() -> list[str]:
    """The registered policy names (an int k, a fixed number of iterations, is always accepted too)."""
    return sorted(_POLICIES)


def halting_forms() -> str:
    """The forms a halting policy may be given in (``--halting``, ``halting=``), in words, from the
    registries: 'act, full, pondernet, an int k >= 1, or cascade:PASS,PASS@T'."""
    network = [getattr(cls, "form", f"{name}:…") for name, cls in sorted(_NETWORK_POLICIES.items())]
    forms = [*policy_names(), "an int k >= 1", *network]
    return ", ".join(forms[:-1]) + ", or " + forms[-1]


def normalize_halting(spec: HaltingSpec) -> Any:
    """A halting policy as given, in its canonical form: ``"2"`` (as a command line gives it)
    becomes 2, a per-stage list a tuple; raises ValueError, naming :func:`halting_forms`, for
    anything that is not a policy."""
    if isinstance(spec, HaltingPolicy):
        return spec
    if (network := network_policy(spec)) is not None:
        return network
    if isinstance(spec, (list, tuple)):
        return tuple(normalize_halting(s) for s in spec)
    if isinstance(spec, str) and spec.strip().isdigit():
        spec = int(spec)
    if isinstance(spec, int) and not isinstance(spec, bool) and spec >= 1:
        return spec
    if isinstance(spec, str) and spec in _POLICIES:
        return spec
    raise ValueError(f"halting must be {halting_forms()}, got {spec!r}")


def halting_json(spec: HaltingSpec) -> str | int | list[str | int]:
    """A halting policy as saved in a model config: a policy by its :attr:`~HaltingPolicy.spec`,
    one per stage as a list, ``"2"`` as 2."""
    spec = normalize_halting(spec)
    if isinstance(spec, tuple):
        return [halting_json(s) for s in spec]
    return spec.spec if isinstance(spec, HaltingPolicy) or network_policy(spec) is not None else spec


def other_regime_note(own: HaltingSpec, halting: HaltingSpec | None) -> str | None:
    """Why the halting policy ``halting`` may cost accuracy, when it is another than ``own``, the
    one a model trained with, whose per-iteration BatchNorm statistics it keeps (other policies feed
    its iterations other inputs: the shipped model gives 20 % under ``full`` with them, 91 %
    re-estimated); else None. (The note's words, "regime", are what users and tests read.)"""
    if halting is None:
        return None
    mine, others = saved_policies(own), [r for r in saved_policies(halting) if r not in saved_policies(own)]
    if not others:  # a cascade over the model's own policy (other views of the image) is at home
        return None
    mine, other = (mine[0] if len(mine) == 1 else halting_json(own)), halting_json(halting)
    return (
        f"the BatchNorm statistics are those of the model's own regime {mine!r}; "
        f"under {other!r} they can cost much accuracy"
    )


def saved_policies(spec: HaltingSpec) -> list[Any]:
    """The per-stage halting policies ``spec`` runs, as saved: itself, or a cascade's passes'."""
    network = network_policy(spec)
    return [halting_json(p.halting) for p in network.passes] if network is not None else [halting_json(spec)]


def halting_policy(spec: HaltingSpec, epsilon: float = 0.01) -> HaltingPolicy:
    """The policy a single-stage spec names: a policy passes through, an int k is :class:`Fixed`,
    a registered name is built with ``epsilon``."""
    spec = normalize_halting(spec)
    if isinstance(spec, HaltingPolicy):
        return spec
    if isinstance(spec, tuple):
        raise ValueError(f"expected one halting policy, got one per stage: {spec!r}")
    return Fixed(spec) if isinstance(spec, int) else _POLICIES[spec](epsilon)


def stage_policies(spec: HaltingSpec, stages: int, epsilon: float = 0.01) -> tuple[HaltingPolicy, ...]:
    """One policy per stage: a single spec applies to every stage, a sequence gives each its own."""
    spec = normalize_halting(spec)
    if network_policy(spec) is not None:
        raise ValueError(f"{spec.spec!r} chooses between whole passes, not per stage: run it as model(x, halting=...)")
    if isinstance(spec, tuple):
        if len(spec) != stages:
            raise ValueError(f"halting gives {len(spec)} policies for {stages} stages")
        return tuple(halting_policy(s, epsilon) for s in spec)
    return (halting_policy(spec, epsilon),) * stages
