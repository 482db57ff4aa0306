r"""A network-level halting policy: a confidence cascade over passes of one IamNN.

Where the per-stage policies (``halting.py``) decide inside a stage, a cascade decides between
whole forward passes (BranchyNet, SDN and MSDNet decide by confidence the same way). Pass 1 runs
for the batch; an image whose confidence is at least the threshold :math:`t_1` leaves with its
answer, the others run pass 2, and so on; the last pass answers for every image still there. With
``combine="mean"`` an image's answer after pass j is the mean of the softmax outputs of passes
1…j (a second, different opinion is where most of the gain comes from), with ``"last"`` pass j's own.

A pass is a halting regime of the same weights (``1``, ``2``, ``"full"``, ``"act"`` …) on a view
of the image: as given, or mirrored left-right (``flip-1``), the augmentation the models trained
with. Work that two passes share is done once: the stem's output per view, and stage 1's
iterations when both passes are fixed schedules on the same view (pass 2 of ``1,2`` resumes stage
1 from pass 1's state). Each image's MACs are the exact sum of what ran for it.

Written ``cascade:PASS,PASS[,…]@T[,T…]`` (one threshold per pass but the last), e.g.
``cascade:1,flip-1@0.9``; ``create_model(..., halting=...)``, ``model(x, halting=...)``, and every
``--halting`` option take it. Thresholds are chosen on a validation split for a MACs budget by
``iamnn calibrate --budget-macs`` (:func:`iamnn.evaluation.calibrate_cascade`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor

from .halting import normalize_halting, register_network_policy

if TYPE_CHECKING:
    from .iamnn import IamNN

View = Literal["id", "flip"]
SCORES = ("maxprob", "margin", "entropy")


def confidence(prob: Tensor, score: str = "maxprob") -> Tensor:
    r"""How sure a (B, classes) softmax output is, higher = surer: the largest probability
    (``maxprob``), the gap between the two largest (``margin``), or :math:`\sum p \log p`, minus
    the entropy (``entropy``)."""
    if score == "maxprob":
        return prob.max(1).values
    if score == "margin":
        top2 = prob.topk(min(2, prob.shape[1]), 1).values
        return top2[:, 0] - (top2[:, 1] if top2.shape[1] > 1 else 0.0)
    if score == "entropy":
        return (prob * prob.clamp_min(1e-12).log()).sum(1)
    raise ValueError(f"a cascade's confidence score must be one of {', '.join(SCORES)}, got {score!r}")


def view_of(x: Tensor, view: View) -> Tensor:
    """The image as a pass sees it: as given, or mirrored left-right."""
    return x.flip(-1) if view == "flip" else x


@dataclass(frozen=True)
class Pass:
    """One forward pass of a cascade: a halting regime on a view of the image."""

    halting: Any  # a per-stage halting spec: k, "full", "act", a registered name
    view: View = "id"

    @classmethod
    def parse(cls, text: str) -> Pass:
        """``"1"``, ``"full"``, ``"flip-2"``."""
        text = text.strip()
        view: View = "flip" if text.startswith("flip-") else "id"
        regime = normalize_halting(text.removeprefix("flip-"))
        if isinstance(regime, tuple) or isinstance(regime, Cascade):
            raise ValueError(f"a cascade pass is one regime for every stage, got {text!r}")
        return cls(regime, view)

    @property
    def spec(self) -> str:
        return ("flip-" if self.view == "flip" else "") + str(self.halting)


@dataclass(frozen=True)
class Cascade:
    """Run ``passes`` in order; an image leaves after pass j once its confidence (``score`` of its
    answer so far) is at least ``thresholds[j]``. See the module's docstring."""

    passes: tuple[Pass, ...]
    thresholds: tuple[float, ...]
    score: str = "maxprob"
    combine: Literal["mean", "last"] = "mean"
    name: ClassVar[str] = "cascade"
    #: how ``halting_forms()`` (help texts, errors) writes it
    form: ClassVar[str] = "cascade:PASS,PASS@T"
    #: what the threshold t does, in words (the app's slider says it)
    threshold_text: ClassVar[str] = "an image leaves after a pass once its confidence reaches t: larger t, more MACs"

    def __post_init__(self) -> None:
        if len(self.passes) < 1:  # one pass is that regime alone (``iamnn headroom`` compares such)
            raise ValueError("a cascade needs one pass or more")
        if len(self.thresholds) != len(self.passes) - 1:
            raise ValueError(f"a cascade of {len(self.passes)} passes takes {len(self.passes) - 1} threshold(s), "
                             f"got {len(self.thresholds)}")  # fmt: skip
        if not all(isinstance(t, float) and t == t for t in self.thresholds):
            raise ValueError(f"a cascade's thresholds must be numbers, got {self.thresholds!r}")
        confidence(torch.ones(1, 2) / 2, self.score)  # an unknown score fails now
        if self.combine not in ("mean", "last"):
            raise ValueError(f"a cascade combines its passes by 'mean' or 'last', got {self.combine!r}")

    @classmethod
    def parse(cls, text: str) -> Cascade:
        """``cascade:PASS,PASS[,…]@T[,T…]``, optionally ``;score=margin;combine=last``."""
        body = text.strip().removeprefix("cascade:")
        body, *options = body.split(";")
        passes, sep, thresholds = body.partition("@")
        if not sep:
            raise ValueError(
                f"a cascade is written cascade:PASS,PASS@THRESHOLD (e.g. cascade:1,flip-1@0.9), got {text!r}"
            )
        try:
            values = tuple(float(t) for t in thresholds.split(",")) if thresholds else ()
            extra = dict(o.split("=", 1) for o in options)
        except ValueError:
            raise ValueError(f"a cascade's thresholds are numbers and its options key=value, got {text!r}") from None
        unknown = set(extra) - {"score", "combine"}
        if unknown:
            raise ValueError(f"a cascade takes the options score= and combine=, got {', '.join(sorted(unknown))}")
        return cls(tuple(Pass.parse(p) for p in passes.split(",")), values, **extra)

    @property
    def spec(self) -> str:
        """The text form, which :meth:`parse` reads back."""
        text = f"cascade:{','.join(p.spec for p in self.passes)}@{','.join(repr(t) for t in self.thresholds)}"
        if self.score != "maxprob":
            text += f";score={self.score}"
        return text + (";combine=last" if self.combine == "last" else "")

    def describe(self) -> str:
        """The cascade in words, for progress lines and tables: its text form."""
        return self.spec

    def with_thresholds(self, thresholds: tuple[float, ...]) -> Cascade:
        return Cascade(self.passes, tuple(float(t) for t in thresholds), self.score, self.combine)

    def answer(self, probs: list[Tensor]) -> Tensor:
        """The answer (softmax output) after the passes whose outputs are ``probs``."""
        return torch.stack(probs).mean(0) if self.combine == "mean" else probs[-1]

    # -- the forward ---------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, model: IamNN, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``model`` on ``x`` (B, C, H, W) under this cascade: (log of the answer's probabilities,
        (B, 4) iterations computed, (B,) exact MACs, (B,) 0-based pass that answered)."""
        return self._run(model, x)

    @torch.no_grad()
    def trace(self, model: IamNN, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Every pass on every image, nobody leaving: per pass, (B, classes) softmax output and
        (B,) MACs that pass adds after the passes before it. :func:`simulate` replays any
        thresholds on it exactly, as :meth:`run` would decide them."""
        record: list[tuple[Tensor, Tensor]] = []
        self.with_thresholds((float("inf"),) * len(self.thresholds))._run(model, x, record)
        return record

    def _run(
        self, model: IamNN, x: Tensor, record: list[tuple[Tensor, Tensor]] | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        batch, hw = x.shape[0], tuple(x.shape[-2:])
        table = model.cost_table(hw)
        iterations = torch.zeros(batch, len(model.stages), dtype=torch.long, device=x.device)
        macs = torch.zeros(batch, dtype=torch.long, device=x.device)
        answered = torch.full((batch,), len(self.passes) - 1, dtype=torch.long, device=x.device)
        answer = x.new_zeros(batch, model.num_classes, dtype=torch.float32)
        rows = torch.arange(batch, device=x.device)  # the images still running
        probs: list[Tensor] = []  # each pass's softmax outputs, for the images still running
        shared: dict[str, tuple[Tensor, Tensor | None, int]] = {}  # per view: stem out, stage-1 state, its depth
        for j, p in enumerate(self.passes):
            policies = model.policies(p.halting)
            stem, s1, n1 = shared.get(p.view, (None, None, 0))
            cost = macs.new_zeros(len(rows))
            if stem is None:
                stem = model.forward_stem(view_of(x[rows], p.view))
                cost += table["stem"]
            fixed = not policies[0].uses_scores
            resume = (s1, n1) if fixed and s1 is not None and policies[0].limit(model.max_iterations[0]) >= n1 else None
            features, its, _, stage1 = model.forward_stages(stem, policies, resume)
            cost += model.macs(its, hw, policies) - table["stem"]
            if resume is not None:  # stage 1's first n1 iterations were an earlier pass's
                cost -= table["first"][0] + (n1 - 1) * table["block"][0]
                its[:, 0] -= n1
            iterations[rows] += its
            macs[rows] += cost
            probs.append(model.forward_head(features).float().softmax(1))
            if record is not None:
                record.append((probs[-1], cost))
            now = self.answer(probs)
            shared[p.view] = (stem, stage1, int(its[0, 0]) + (n1 if resume else 0)) if fixed else (stem, None, 0)
            last = j == len(self.passes) - 1
            leave = (
                torch.ones_like(rows, dtype=torch.bool) if last else confidence(now, self.score) >= self.thresholds[j]
            )
            answer[rows[leave]] = now[leave]
            answered[rows[leave]] = j
            stay = ~leave
            rows, probs = rows[stay], [q[stay] for q in probs]
            shared = {v: (h[stay], None if s is None else s[stay], n) for v, (h, s, n) in shared.items()}
            if len(rows) == 0:
                break
        return answer.clamp_min(1e-30).log(), iterations, macs, answered


def simulate(cascade: Cascade, traced: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    """What :meth:`Cascade.run` gives under ``cascade``'s thresholds, from a :meth:`Cascade.trace`
    of its passes (concatenated over batches): (answer probabilities, MACs, pass that answered)."""
    n = len(traced[0][0])
    answer = traced[0][0].new_zeros(traced[0][0].shape)
    macs = traced[0][1].new_zeros(n)
    answered = torch.full((n,), len(traced) - 1, dtype=torch.long)
    running = torch.ones(n, dtype=torch.bool)
    for j in range(len(traced)):
        macs += torch.where(running, traced[j][1], 0)
        now = cascade.answer([q for q, _ in traced[: j + 1]])
        last = j == len(traced) - 1
        leave = running & (
            torch.ones_like(running) if last else confidence(now, cascade.score) >= cascade.thresholds[j]
        )
        answer[leave] = now[leave]
        answered[leave] = j
        running &= ~leave
    return answer, macs, answered


register_network_policy("cascade", Cascade)
