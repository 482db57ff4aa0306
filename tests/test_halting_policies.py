"""The halting-policy seam: a new policy is one class and one registration, and the model, its
cost accounting, the batch-1 path, evaluation, the ONNX export, the report (its files and figures),
calibration and the app's texts all take it unchanged: they ask the policy how to describe and sweep
itself (``describe``, ``with_threshold``, ``threshold_text``, ``stop_level``), never its name.

``Confident`` below is the documentation's example (docs/architecture.md, "Where to add"), verbatim.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import re
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import spread_halting

import iamnn
from iamnn.cost import measure_macs
from iamnn.evaluation import calibrate_threshold, evaluate, policy_text, sweep_policies
from iamnn.models import ACT, Cascade, Fixed, Full, PonderNet, halting_policy, policy_names
from iamnn.models.halting import (
    HaltingPolicy,
    halting_forms,
    halting_json,
    normalize_halting,
    ponder_loss,
    register_policy,
    stage_policies,
    where,
)


# -- the README's example ------------------------------------------------------------------------
@register_policy("confident", lambda epsilon: Confident(threshold=1.0 - epsilon))
class Confident(HaltingPolicy):
    """Stop at the first iteration whose own score reaches a threshold; the stage outputs that
    iteration's state alone (p one-hot), not ACT's weighted sum. At the last iteration h = 1."""

    name = "confident"

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    def step(self, state, h):  # noqa: ANN001, ANN201 - a (b,) tensor or a float32 scalar
        halt = h >= self.threshold
        return where(halt, 1.0, 0.0), halt, state  # (p_n, which samples stop now, next state)


def test_the_documentations_example_is_the_one_tested_here() -> None:
    """docs/architecture.md's example policy is this file's ``Confident``, comments aside."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text()
    block = re.search(r"```python\n(.*?)\n\s*```", text[text.index("**A halting policy**") :], re.S).group(1)
    documented = next(n for n in ast.parse(textwrap.dedent(block)).body if isinstance(n, ast.ClassDef))
    assert ast.dump(documented) == ast.dump(ast.parse(textwrap.dedent(inspect.getsource(Confident))).body[0])


# ------------------------------------------------------------------------------------------------
def _model() -> iamnn.IamNN:
    """An r34 IamNN whose halting units give spread-out scores: samples stop at different iterations."""
    torch.manual_seed(0)
    model = iamnn.create_model("iamnn_r34", stem="cifar", width=0.0625, num_classes=10)
    return spread_halting(model, _inputs()).eval()


def _inputs(batch: int = 32) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(batch, 3, 16, 16) * torch.logspace(-1, 1, batch)[:, None, None, None]


def test_registration_and_specs() -> None:
    assert {"act", "full", "confident"} <= set(policy_names())
    assert halting_policy("confident", epsilon=0.3) == Confident(threshold=0.7)
    assert halting_policy("act", epsilon=0.2) == ACT(0.2) and halting_policy(3) == Fixed(3)
    assert halting_policy("2") == Fixed(2) and halting_policy("full") == Full()
    assert halting_json(("act", "3", Confident())) == ["act", 3, "confident"]
    assert stage_policies([1, 2, "full", "act"], 4, 0.1) == (Fixed(1), Fixed(2), Full(), ACT(0.1))
    for bad in ("sometimes", 0, -1, True, 2.5):
        with pytest.raises(ValueError, match="halting must be"):
            halting_policy(bad)
    with pytest.raises(ValueError, match="3 policies for 4 stages"):
        stage_policies([1, 2, 3], 4)


def test_the_valid_forms_come_from_the_registries() -> None:
    forms = halting_forms()
    # every registered name, the README's example included, then k and the network-level form
    assert forms.startswith(", ".join(policy_names()) + ", an int k >= 1, or ")
    assert "confident" in forms and forms.endswith(Cascade.form) and Cascade.form == "cascade:PASS,PASS@T"
    with pytest.raises(ValueError) as error:
        normalize_halting("sometimes")
    assert str(error.value) == f"halting must be {forms}, got 'sometimes'"


class Knobless(HaltingPolicy):
    """A policy registered without a ``build(epsilon)``: it has no threshold for a sweep to move."""

    name = "knobless"

    def step(self, state, h):  # noqa: ANN001, ANN201
        return where(h >= 0.5, 1.0, 0.0), h >= 0.5, state


def test_a_policy_describes_and_sweeps_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    # in words: the shipped policies as the report always wrote them, a new one by its values
    assert [p.describe() for p in (ACT(0.01), PonderNet(0.2), Fixed(2), Full())] == [
        "act ε=0.01", "pondernet ε=0.2", "fixed k=2", "full",
    ]  # fmt: skip
    assert Confident(0.95).describe() == "confident (threshold=0.95)"
    assert Cascade.parse("cascade:1,flip-1@0.9").describe() == "cascade:1,flip-1@0.9"
    assert policy_text(ACT(0.05)) == "act ε=0.05" and policy_text([1, "act"]) == "1/act" and policy_text("2") == "2"
    # the threshold knob is the registered build(epsilon); a fixed schedule's model is swept under ACT
    assert ACT(0.01).with_threshold(0.3) == ACT(0.3) and PonderNet().with_threshold(0.2) == PonderNet(0.2)
    assert Confident().with_threshold(0.25) == Confident(threshold=0.75)
    assert Fixed(2).with_threshold(0.1) == ACT(0.1) == Full().with_threshold(0.1)
    from iamnn.models import halting

    for registry in ("_POLICIES", "_THRESHOLDED"):  # registered for this test only
        monkeypatch.setattr(halting, registry, dict(getattr(halting, registry)))
    register_policy("knobless")(Knobless)
    assert Knobless().with_threshold(0.1) is None and "knobless" in halting_forms()
    # what the app draws and says
    assert ACT(0.1).stop_level() == pytest.approx(0.9) and PonderNet().stop_level() is None
    assert Confident().stop_level() is None and "1 − ε" in ACT.threshold_text
    assert Confident.threshold_text == HaltingPolicy.threshold_text


@torch.no_grad()
def test_a_stage_under_the_new_policy_matches_a_dense_reference() -> None:
    model, images = _model(), _inputs()
    policy = Confident(0.5)
    x = torch.relu(model.bn1(model.conv1(images)))  # the stem (cifar: no max-pool)
    for stage in model.stages:
        y, n, rho = stage(x, policy)
        # dense: every sample runs every iteration; N = first n with h_n >= 0.5 (or the last), y = s_N
        s, want_y, want_n = None, torch.zeros_like(y), torch.zeros_like(n)
        context = stage.halting_unit.context(x)
        for i in range(stage.max_iterations):
            s, u = stage.block.step(x, s, i)
            last = i == stage.max_iterations - 1
            stop = (want_n == 0) & (
                torch.ones(len(x), dtype=torch.bool) if last else stage.halting_unit(s, context, u) >= 0.5
            )
            want_y[stop], want_n[stop] = s[stop], i + 1
        assert torch.equal(n, want_n)
        assert len(n.unique()) > 1, "the test needs samples stopping at different iterations"
        torch.testing.assert_close(y, want_y, atol=1e-5, rtol=0)
        torch.testing.assert_close(rho, n.float() + 1.0)  # the default ponder cost: N + p_N
        x = model.pool(y)


POLICIES = ["confident", "pondernet"]  # the README's example, and a vector-state policy shipped in iamnn


@torch.no_grad()
@pytest.mark.parametrize("name", POLICIES)
def test_the_model_counts_macs_exactly_and_batch_one_agrees(name: str) -> None:
    model, x = _model(), _inputs()
    logits, stats = model(x, return_stats=True, halting=name)
    assert stats.iterations.float().std() > 0
    assert int(stats.macs.sum()) == measure_macs(lambda: model(x, halting=name))
    for j in (0, 13, 31):  # the batch-1 path decides on the host: the same answer as the batch's row
        one_logits, one = model(x[j : j + 1], return_stats=True, halting=name)
        assert torch.equal(one.iterations[0], stats.iterations[j])
        torch.testing.assert_close(one_logits[0], logits[j], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(one.ponder[0], stats.ponder[j], atol=1e-4, rtol=1e-4)
    assert model.halting == "act"  # a call's policy leaves the model's default alone


@pytest.mark.parametrize("name", POLICIES)
def test_training_loss_and_evaluation_take_the_policy(name: str) -> None:
    model = _model().train()
    logits, stats = model(_inputs(8), return_stats=True, halting=name)
    loss = logits.logsumexp(1).mean() + 0.01 * ponder_loss(model.policies(name), stats.ponder)
    loss.backward()
    assert torch.isfinite(loss)
    model.eval()
    loader = [(_inputs(16), torch.arange(16) % 10)]
    ev = evaluate(model, loader, halting=name)
    assert ev.iterations.shape == (16, 4) and 0 <= ev.top1 <= 100


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs the export extra")
@pytest.mark.parametrize("name", POLICIES)
def test_the_onnx_export_runs_the_new_policy(tmp_path, name: str) -> None:  # noqa: ANN001
    from iamnn.export import OnnxModel, export_onnx

    model, x = _model(), _inputs(16)
    path = export_onnx(model, tmp_path / f"{name}.onnx", input_size=(16, 16), halting=name)
    logits, iterations = OnnxModel(path, threads=1)(x)
    with torch.no_grad():
        want_logits, stats = model(x, return_stats=True, halting=name)
    assert (iterations == stats.iterations.numpy()).all()
    torch.testing.assert_close(torch.from_numpy(logits), want_logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", POLICIES)
def test_the_report_sweep_and_calibration_move_the_policys_threshold(name: str) -> None:
    model = _model()
    model.halting = name
    loader = [(_inputs(32), torch.arange(32) % 10)]
    points = sweep_policies(model, loader, None, recalibrate=False, epsilons=(0.05, 0.95), fixed_k=(1,))
    assert [p["regime"] for p in points] == [name, name, "fixed", "full", "trained"]
    want = [halting_policy(name, 0.05).describe(), halting_policy(name, 0.95).describe(), "fixed k=1", "full"]
    assert [p["label"] for p in points] == [*want, "as trained"]
    assert [p["curve"] for p in points] == [f"{name}, threshold ε"] * 2 + ["fixed k", None, None]
    assert points[0]["macs_mean"] > points[1]["macs_mean"]  # a larger slack stops samples earlier
    full, one = evaluate(model, loader, halting="full").macs_mean, evaluate(model, loader, halting=1).macs_mean
    budget = (full + one) / 2
    row = calibrate_threshold(model, loader, budget)
    assert row["feasible"] and row["val_macs_mean"] <= budget
    assert model.halting == name and model.epsilon == pytest.approx(row["epsilon"])
    assert evaluate(model, loader).macs_mean == pytest.approx(row["val_macs_mean"])


# -- PonderNet-style halting ---------------------------------------------------------------------
@torch.no_grad()
def test_pondernet_stage_matches_a_dense_reference() -> None:
    model, images = _model(), _inputs()
    policy = PonderNet(epsilon=0.1, prior=0.3)
    x = torch.relu(model.bn1(model.conv1(images)))
    for stage in model.stages:
        y, n, rho = stage(x, policy)
        # dense: every sample runs every iteration; λ_n = h_n (λ_{N_k} := 1), p_n = λ_n Π_{j<n} (1 − λ_j)
        states, lambdas, s = [], [], None
        context = stage.halting_unit.context(x)
        for i in range(stage.max_iterations):
            s, u = stage.block.step(x, s, i)
            last = i == stage.max_iterations - 1
            states.append(s)
            lambdas.append(torch.ones(len(x)) if last else stage.halting_unit(s, context, u).double())
        lam = torch.stack(lambdas, 1).double()  # (B, N_k)
        left = torch.cumprod(1 - lam, 1)  # mass not halted after n
        reached = torch.cat([torch.ones(len(x), 1, dtype=lam.dtype), left[:, :-1]], 1)  # Π_{j<n}
        # N = first n whose mass left is <= ε; p_N takes all that was left before it
        want_n = (left <= 0.1).double().argmax(1) + 1
        steps = torch.arange(1, stage.max_iterations + 1)[None]
        p = torch.where(steps < want_n[:, None], lam * reached, 0.0)
        p = torch.where(steps == want_n[:, None], reached, p)
        assert torch.allclose(p.sum(1), torch.ones(len(x), dtype=p.dtype))
        want_y = sum(p[:, i, None, None, None].float() * states[i] for i in range(stage.max_iterations))
        # ρ = KL(p || Geometric(0.3)) without the truncation constant: Σ p log p − Σ p log g
        log_g = torch.log(torch.tensor(0.3, dtype=p.dtype)) + (steps - 1) * torch.log1p(torch.tensor(-0.3))
        want_rho = (torch.special.xlogy(p, p) - p * log_g).sum(1)
        assert torch.equal(n, want_n)
        assert len(n.unique()) > 1, "the test needs samples stopping at different iterations"
        torch.testing.assert_close(y, want_y, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rho.double(), want_rho, atol=1e-4, rtol=1e-4)
        x = model.pool(y)


def test_the_pondernet_regulariser_reaches_every_halting_unit() -> None:
    model = _model().train()
    _, stats = model(_inputs(8), return_stats=True, halting=PonderNet(epsilon=0.0))
    ponder_loss(model.policies(PonderNet(epsilon=0.0)), stats.ponder).backward()
    for k, stage in enumerate(model.stages):
        grad = stage.halting_unit.fc3.weight.grad
        assert grad is not None and grad.abs().sum() > 0, f"stage {k + 1}"
    assert halting_policy("pondernet", epsilon=0.2) == PonderNet(0.2)
    with pytest.raises(ValueError, match="prior"):
        PonderNet(prior=1.0)


def test_a_long_evaluation_shows_nested_progress_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    from iamnn import progress

    screen = io.StringIO()
    monkeypatch.setattr(progress, "enabled", lambda: True)
    monkeypatch.setattr(progress, "console", lambda: Console(file=screen, force_terminal=True, width=120))
    model, loader = _model(), [(_inputs(8), torch.arange(8) % 10)] * 3
    budget = (evaluate(model, loader, halting="full").macs_mean + evaluate(model, loader, halting=1).macs_mean) / 2
    calibrate_threshold(model, loader, budget, train_loader=loader, steps=2)
    drawn = screen.getvalue()
    for line in ("calibrating act to", "re-estimating BatchNorm", "evaluating model (act ε="):
        assert line in drawn, line
    assert progress._display is None and progress._open_tasks == 0  # torn down with its last task
    # not a terminal: nothing is drawn
    monkeypatch.undo()
    assert not progress.enabled()


# -- `iamnn report` writes its files for any policy -----------------------------------------------
def report_of(runs: list[Path], out: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, str, list[str]]:
    """``iamnn report RUNS -o OUT --quick-sweep`` as a user runs it: report.json, report.md, and the
    titles and legend entries of every figure it drew (which the PNG files hold as pixels)."""
    from iamnn import plots
    from iamnn.cli import main

    drawn: list[str] = []
    save = plots.save_figure

    def save_and_read(fig, path):  # noqa: ANN001, ANN202
        for ax in fig.axes:
            legend = ax.get_legend()
            drawn.extend([ax.get_title(), *(t.get_text() for t in (legend.get_texts() if legend else []))])
        save(fig, path)

    monkeypatch.setattr(plots, "save_figure", save_and_read)
    main(["report", *map(str, runs), "-o", str(out), "--quick-sweep"])
    return json.loads((out / "report.json").read_text()), (out / "report.md").read_text(), drawn


def test_report_writes_its_files_for_the_documentations_example_policy(
    tmp_path: Path, fit_digits: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The example policy, registered in this file only, trains, and ``iamnn report`` names it in
    report.md, report.json and the figures without an entry for it anywhere in iamnn."""
    run = fit_digits(tmp_path, "confident", "--model.halting=confident", "--trainer.max_epochs=1")
    result, md, drawn = report_of([run], tmp_path / "report", monkeypatch)
    assert sorted(p.name for p in (tmp_path / "report").glob("[!.]*")) == [
        "accuracy_vs_macs.png", "confident_easy_hard.png", "confident_iterations.png", "report.json", "report.md",
    ]  # fmt: skip
    sweep = result["sweeps"]["confident"]
    assert [p["regime"] for p in sweep] == ["confident"] * 5 + ["fixed", "full", "trained"]  # r18: k = 1 < 2
    assert [p["label"] for p in sweep[:5]] == [f"confident (threshold={1 - e:g})" for e in (0.01, 0.1, 0.3, 0.6, 0.9)]
    assert "| confident (threshold=0.99) |" in md and "| fixed k=1 |" in md and "| as trained |" in md
    assert {"confident: confident, threshold ε", "confident: fixed k"} <= set(drawn)
    assert result["figures"] == ["confident_iterations.png", "confident_easy_hard.png", "accuracy_vs_macs.png"]


def test_report_writes_its_files_for_a_pondernet_run(
    tmp_path: Path, fit_digits: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``iamnn report`` named its sweep's policies from a fixed table of ACT's: a PonderNet run raised KeyError."""
    run = fit_digits(tmp_path, "ponder", "--model.halting=pondernet", "--trainer.max_epochs=1")
    result, md, drawn = report_of([run], tmp_path / "report", monkeypatch)
    assert {p["regime"] for p in result["sweeps"]["ponder"]} == {"pondernet", "fixed", "full", "trained"}
    assert "| pondernet ε=0.01 |" in md and "ponder: pondernet, threshold ε" in drawn
    assert all((tmp_path / "report" / f).is_file() for f in result["figures"]) and len(result["figures"]) == 3
