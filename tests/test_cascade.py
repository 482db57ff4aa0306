"""The cascade policy (``models/cascade.py``) and the headroom of opinions (``headroom.py``):
exact per-image MACs, batch-1 = batched, thresholds from the validation split, the replay equal to
the run, and the commands that take a cascade."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import run_iamnn
from PIL import Image

import iamnn
from iamnn.cost import measure_macs
from iamnn.headroom import Opinion, Split, cascade_points, headroom, thresholds_for_budget
from iamnn.models import Cascade, Pass
from iamnn.models.cascade import confidence, simulate
from iamnn.weights import load_model, save_weights

CASCADES = (
    "cascade:1,flip-1@0", "cascade:1,2@0", "cascade:1,2,flip-full@0,0;combine=last", "cascade:act,2@0;score=margin",
)  # fmt: skip


def _model() -> iamnn.IamNN:
    torch.manual_seed(0)
    model = iamnn.create_model("iamnn_r34", stem="cifar", width=0.0625, num_classes=10, in_chans=1)
    model.train()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        model(torch.randn(64, 1, 16, 16), halting="full")
    return model.eval()


def _inputs(batch: int = 48) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(batch, 1, 16, 16) * torch.logspace(-1, 1, batch)[:, None, None, None]


def _spread(cascade: Cascade, model: iamnn.IamNN, x: torch.Tensor) -> Cascade:
    """Thresholds at the traced confidences' 40th percentile: some images leave at every pass."""
    traced = cascade.trace(model, x)
    return cascade.with_thresholds(
        tuple(float(confidence(cascade.answer([p for p, _ in traced[: j + 1]]), cascade.score).quantile(0.4))
              for j in range(len(cascade.thresholds)))
    )  # fmt: skip


def test_specs_parse_and_print_back() -> None:
    c = Cascade.parse("cascade:1,flip-2,full@0.5,0.75;score=entropy;combine=last")
    assert c.passes == (Pass(1), Pass(2, "flip"), Pass("full")) and c.thresholds == (0.5, 0.75)
    assert Cascade.parse(c.spec) == c
    for bad in ("cascade:1,2", "cascade:1,2@x", "cascade:1,2@0.5,0.6", "cascade:1,foo@0.5", "cascade:1,2@0.5;mood=1",
                "cascade:1,2@0.5;score=vibes"):  # fmt: skip
        with pytest.raises(ValueError):
            Cascade.parse(bad)
    model = _model()
    with pytest.raises(ValueError, match="whole passes"):
        model.policies("cascade:1,2@0.5")


@torch.no_grad()
@pytest.mark.parametrize("spec", CASCADES)
def test_exact_macs_batch_one_and_the_replay_equal_the_run(spec: str) -> None:
    model, x = _model(), _inputs()
    cascade = _spread(Cascade.parse(spec), model, x)
    log_probs, stats = model(x, return_stats=True, halting=cascade)
    assert len(stats.answered_by.unique()) == len(cascade.passes)  # every pass answers some images
    # exact: what FlopCounterMode counts over the whole batch, per image
    assert int(stats.macs.sum()) == measure_macs(lambda: model(x, halting=cascade))
    for j in (0, 17, 47):
        one_log_probs, one = model(x[j : j + 1], return_stats=True, halting=cascade)
        assert int(one.macs[0]) == int(stats.macs[j]) == measure_macs(lambda j=j: model(x[j : j + 1], halting=cascade))
        assert int(one.answered_by[0]) == int(stats.answered_by[j])
        torch.testing.assert_close(one_log_probs[0], log_probs[j], atol=1e-5, rtol=1e-5)
    answer, macs, answered = simulate(cascade, cascade.trace(model, x))
    torch.testing.assert_close(answer, log_probs.exp(), atol=1e-6, rtol=1e-5)
    assert torch.equal(macs, stats.macs) and torch.equal(answered, stats.answered_by)


@torch.no_grad()
def test_a_deeper_pass_resumes_stage_one_and_equals_running_alone() -> None:
    model, x = _model(), _inputs(8)
    cascade = Cascade.parse("cascade:1,2@inf;combine=last")  # every image runs both passes
    log_probs, stats = model(x, return_stats=True, halting=cascade)
    torch.testing.assert_close(log_probs, model(x, halting=2).log_softmax(1), atol=1e-5, rtol=1e-4)
    table, k1, k2 = model.cost_table((16, 16)), model.max_macs((16, 16), 1), model.max_macs((16, 16), 2)
    shared = table["stem"] + table["first"][0]  # the stem and stage 1's first iteration run once
    assert stats.macs.tolist() == [k1 + k2 - shared] * 8
    assert stats.iterations[0].tolist() == [2, 3, 3, 3]  # computed: stage 1 resumed at its 2nd iteration


def test_thresholds_are_the_highest_the_validation_budget_allows() -> None:
    torch.manual_seed(2)
    n, labels = 400, torch.randint(0, 10, (400,))
    val = [Split(torch.randn(n, 10).softmax(1), torch.full((n,), c), labels) for c in (100, 300)]
    cascade = Cascade.parse("cascade:1,flip-1@inf")
    for budget in (50.0, 100.0, 160.0, 250.0, 400.0, 1e9):
        (t,), macs = thresholds_for_budget(cascade, val, budget)
        run = simulate(cascade.with_thresholds((t,)), [(s.probs, s.macs) for s in val])[1].double().mean()
        assert float(run) == macs
        if budget >= 100:
            assert macs <= budget
            # one more image going on would break the budget (or every image already does)
            going_on = int((confidence(val[0].probs) < t).sum())
            assert going_on == n or 100 + (going_on + 1) * 300 / n > budget
        else:  # below the first pass's cost: every image leaves after it
            assert t == float("-inf") and macs == 100
    test = [Split(s.probs.flip(0), s.macs, labels) for s in val]
    items = [Opinion(f"o{j}", 1, v, t) for j, (v, t) in enumerate(zip(val, test, strict=True))]
    (point,) = cascade_points(cascade, items, [160.0])
    assert point["val_macs_mean"] <= 160 and point["halting"].startswith("cascade:1,flip-1@")
    assert 0 <= point["top1"] <= 100 and sum(point["answered_by"]) == pytest.approx(1.0)


def test_headroom_counts_disagreement_and_the_oracle() -> None:
    labels = torch.tensor([0, 1, 2, 3])
    one_hot = torch.eye(4)
    a = Split(one_hot[[0, 1, 0, 0]], torch.full((4,), 10), labels)  # right on 0, 1
    b = Split(one_hot[[0, 0, 2, 0]], torch.full((4,), 30), labels)  # right on 0, 2
    result = headroom([Opinion("a", 1, a, a), Opinion("b", 2, b, b)])
    assert result["disagreement"] == [[0, 2], [2, 0]]
    assert result["oracle_top1"] == 75.0  # image 3: nobody is right
    assert result["oracle_macs_mean"] == (10 + 10 + 30 + 10) / 4  # the cheapest right, else the cheapest


def test_a_model_keeps_a_cascade_as_its_regime_through_its_weights(tmp_path: Path) -> None:
    model, x = _model(), _inputs(16)
    cascade = _spread(Cascade.parse("cascade:1,flip-1@0"), model, x)
    model.halting = cascade.spec
    save_weights(model, tmp_path / "c.safetensors")
    loaded = load_model(tmp_path / "c.safetensors")
    assert Cascade.parse(loaded.halting.spec) == cascade
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x, halting=cascade))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, fit_digits) -> Path:  # noqa: ANN001
    return fit_digits(tmp_path_factory.mktemp("cascade"), "k1", "--model.halting=1", "--model.tau=0",
                      "--trainer.max_epochs=2")  # fmt: skip


def test_calibrate_headroom_evaluate_and_export_take_a_cascade(run: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    weights = tmp_path / "c.safetensors"
    status, out, err = run_iamnn(capsys, "calibrate", "--ckpt", str(run), "--halting", "cascade:1,flip-1",
                              "--budget-macs", "1.5M", "--save", str(weights), "--json")  # fmt: skip
    assert status == 0, err
    (row,) = json.loads(out)["budgets"]
    assert row["val_macs_mean"] <= 1.5e6 and row["halting"].startswith("cascade:1,flip-1@")
    assert load_model(weights).halting.spec == row["halting"]

    status, out, err = run_iamnn(capsys, "headroom", f"{run}:1,flip-1", "--json")
    assert status == 0, err
    result = json.loads(out)
    assert [o["name"] for o in result["opinions"]] == ["k1:1", "k1:flip-1"]
    assert result["oracle_top1"] >= max(o["top1"] for o in result["opinions"])

    status, out, err = run_iamnn(capsys, "evaluate", "--weights", str(weights), "--json")  # the saved cascade runs
    assert status == 0, err
    summary = json.loads(out)
    assert summary["macs_min"] < summary["macs_max"]

    status, out, err = run_iamnn(capsys, "export", "--weights", str(weights), "-o", str(tmp_path / "c.onnx"))
    assert status == 2 and len(err.strip().splitlines()) == 1 and "cascade is not exported" in err
    status, out, err = run_iamnn(capsys, "calibrate", "--ckpt", str(run), "--halting", "act", "--budget-macs", "1M")
    assert status == 2 and "cascade" in err and len(err.strip().splitlines()) == 1


def test_a_cascade_run_folder_reports_frontiers_and_explores(run: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from iamnn.app import Explorer

    cascade_run = tmp_path / "cascade"
    cascade_run.mkdir()
    for name in ("config.yaml", "hparams.yaml"):
        (cascade_run / name).write_bytes((run / name).read_bytes())
    status, _, err = run_iamnn(capsys, "calibrate", "--ckpt", str(run), "--halting", "cascade:1,flip-1",
                            "--budget-macs", "1.3M", "--save", str(cascade_run / "model.safetensors"))  # fmt: skip
    assert status == 0, err

    status, out, err = run_iamnn(capsys, "frontier", str(cascade_run), "-o", str(tmp_path / "f"), "--budgets", "2",
                              "--json")  # fmt: skip
    assert status == 0, err
    records = json.loads(out)["models"]
    assert [r["kind"] for r in records] == ["adaptive"] * 3 and records[0]["macs_min"] < records[0]["macs_max"]
    assert all(r["val_macs_mean"] <= r["budget_macs"] for r in records[1:])

    status, out, err = run_iamnn(capsys, "report", str(cascade_run), "-o", str(tmp_path / "r"), "--json")
    assert status == 0, err
    assert {"cascade_iterations.png", "cascade_easy_hard.png"} <= set(json.loads(out)["figures"])

    explorer = Explorer(load_model(cascade_run / "model.safetensors"), test_images=64)
    assert explorer.cascade is not None and [c["epsilon"] for c in explorer.curve][-1] == 1.0
    result = explorer.analyse(Image.fromarray((torch.rand(16, 16) * 255).byte().numpy()))
    assert result.answered_by in (1, 2) and len(result.confidences) == result.answered_by
    assert (result.confidences[-1] >= result.epsilon) == (result.answered_by == 1 or result.confidences[0] >= 1)


def test_the_shipped_cascade_loads_in_its_regime() -> None:
    model = iamnn.create_model("iamnn_r34_fmnist_cascade", pretrained=True)
    assert isinstance(model.halting, Cascade) and model.halting.passes == (Pass(1), Pass(1, "flip"))
    assert 0.5 < model.halting.thresholds[0] < 1.0  # chosen on the validation split
    assert "iamnn_r34_fmnist_cascade" in iamnn.list_models(pretrained=True)
    with torch.no_grad():
        _, stats = model(torch.randn(8, 1, 28, 28), return_stats=True)
    k1 = model.max_macs((28, 28), 1)
    assert set(stats.macs.tolist()) <= {k1, 2 * k1}  # one pass, or both (nothing shared: another view)
