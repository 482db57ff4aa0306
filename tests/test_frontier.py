"""The frontier study's tools on tiny digits runs: BN re-estimation, budgets, the frontier command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from iamnn.calibrate import parse_macs
from iamnn.cli import main
from iamnn.data import DigitsDataModule
from iamnn.evaluation import Evaluation, calibrate_threshold, evaluate, recalibrate_batchnorm
from iamnn.frontier import pareto_front
from iamnn.weights import load_model


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, fit_digits) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("frontier_runs")
    return {
        "act": fit_digits(root, "act", "--model.model=iamnn_r34", "--trainer.max_epochs=4"),
        "k1": fit_digits(root, "k1", "--model.halting=1", "--model.tau=0", "--trainer.max_epochs=3"),
    }


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    dm = DigitsDataModule(augment=False)
    dm.setup("fit")
    return dm


def test_bn_reestimation_fills_a_never_reached_iteration(runs: dict[str, Path], digits: DigitsDataModule) -> None:
    model = load_model(runs["k1"] / "model.safetensors")  # trained with 1 iteration: iteration 2 never ran
    norms = model.stages[0].block.norms  # stage 1: its input (the stem's output) is the same in every regime
    trained = [[(bn.running_mean.clone(), bn.running_var.clone()) for bn in it] for it in norms]
    assert all(torch.equal(m, torch.zeros_like(m)) for m, _ in trained[1])  # never updated
    model.halting = "full"
    recalibrate_batchnorm(model, digits.train_dataloader())
    for bn, (mean, var) in zip(norms[0], trained[0], strict=True):  # reached in training: kept
        assert (bn.running_mean - mean).abs().max() <= 0.05 * mean.abs().max() + 1e-3
        assert (bn.running_var - var).abs().max() <= 0.05 * var.abs().max() + 1e-3
    for bn in norms[1]:  # never reached: now estimated from data
        assert bn.running_mean.abs().max() > 0.1 and (bn.running_var - 1).abs().max() > 0.1
    assert not model.training


def test_calibration_meets_the_budget_on_validation(runs: dict[str, Path], digits: DigitsDataModule) -> None:
    model = load_model(runs["act"] / "model.safetensors")
    val = digits.val_dataloader()

    def avg_macs(epsilon: float) -> float:
        model.epsilon = epsilon
        return float(evaluate(model, val).macs.float().mean())

    cheapest, dearest = avg_macs(0.999), avg_macs(0.0)
    budget = cheapest + 0.5 * (dearest - cheapest)
    result = calibrate_threshold(model, val, budget, digits.train_dataloader())
    realised = float(evaluate(model, val).macs.float().mean())  # the model is left at the chosen threshold
    assert result["feasible"] and realised == pytest.approx(result["val_macs_mean"])
    assert 0.95 * budget <= realised <= budget, (cheapest, budget, dearest, result)
    too_small = calibrate_threshold(model, val, 0.5 * cheapest)
    assert not too_small["feasible"] and too_small["epsilon"] == pytest.approx(0.999)


def test_frontier_command_writes_json_table_and_png(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "frontier"
    main(["frontier", str(runs["act"].parent), "-o", str(out), "--json", str(tmp_path / "f.json")])  # a folder of runs
    printed = capsys.readouterr().out
    assert "Pareto" in printed and "act" in printed and "k1" in printed
    result = json.loads((out / "frontier.json").read_text())
    assert json.loads((tmp_path / "f.json").read_text()) == result
    by_name = {r["name"]: r for r in result["models"]}
    assert set(by_name) == {"act", "k1"} and result["pareto_front"]
    assert by_name["k1"]["kind"] == "fixed" and by_name["act"]["kind"] == "act"
    for r in by_name.values():
        assert r["params"] > 0 and r["macs_min"] <= r["macs_mean"] <= r["macs_max"] and 0 <= r["top1"] <= 100
        assert len(r["iterations_mean"]) == 4 and r["test_samples"] == 297 and "tau" in r["recipe"]
    assert by_name["k1"]["iterations_mean"] == [1.0, 1.0, 1.0, 1.0] and by_name["k1"]["macs_cv"] == 0.0
    assert by_name["act"]["macs_cv"] >= 0.0
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| k1 | fixed |" in (out / "frontier.md").read_text()


def test_calibrate_command(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    main(["calibrate", "--ckpt", str(runs["act"]), "--budget-macs", "1M", "100M", "--json", str(tmp_path / "c.json")])
    rows = json.loads((tmp_path / "c.json").read_text())["budgets"]
    assert [r["budget_macs"] for r in rows] == [1e6, 1e8]
    assert all(0 <= r["test_top1"] <= 100 for r in rows) and rows[1]["feasible"]
    assert "test top-1" in capsys.readouterr().out
    saved = tmp_path / "calibrated.safetensors"
    main(["calibrate", "--ckpt", str(runs["act"]), "--budget-macs", "100M", "--save", str(saved)])
    model = load_model(saved)
    assert model.epsilon == pytest.approx(rows[1]["epsilon"]) and model.halting == "act"
    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", "--ckpt", str(runs["act"]), "--budget-macs", "lots"])
    assert exit_info.value.code == 2 and "not a MACs budget" in capsys.readouterr().err


def test_bare_json_prints_the_result_instead_of_the_table(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    main(["calibrate", "--ckpt", str(runs["act"]), "--budget-macs", "100M", "--json"])
    captured = capsys.readouterr()
    assert json.loads(captured.out)["budgets"][0]["budget_macs"] == 1e8
    main(["recalibrate", "--ckpt", str(runs["k1"]), "--halting", "2", "--json"])
    assert json.loads(capsys.readouterr().out)["halting"] == 2
    # one broken run folder is skipped with a line; the others are still evaluated
    broken = tmp_path / "runs" / "broken"
    broken.mkdir(parents=True)
    (broken / "config.yaml").write_bytes((runs["k1"] / "config.yaml").read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    main(["frontier", str(runs["k1"]), str(broken), "-o", str(tmp_path / "f"), "--budgets", "0", "--json"])
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert [r["name"] for r in result["models"]] == ["k1"] and result["skipped"][0]["run"] == str(broken)
    assert f"skipped {broken}" in captured.err and "wrote" in captured.err


def test_macs_cv_is_the_spread_of_the_per_image_cost() -> None:
    def ev(macs: list[int]) -> Evaluation:
        n = len(macs)
        zeros = torch.zeros(n, dtype=torch.long)
        return Evaluation("m", 1, (1,), torch.tensor(macs), zeros[:, None], zeros.float(), zeros.bool(),
                          zeros.bool(), zeros.float(), zeros, zeros)  # fmt: skip

    assert ev([5, 5, 5]).macs_cv == 0.0
    assert ev([2, 6]).macs_cv == pytest.approx(0.5)  # std 2 (population) over mean 4
    assert ev([2, 6]).summary()["macs_cv"] == pytest.approx(0.5)


def test_pareto_front_and_budget_parsing() -> None:
    records = [{"name": n, "macs_mean": m, "top1": a} for n, m, a in
               [("a", 1, 80.0), ("b", 2, 79.0), ("c", 3, 85.0), ("d", 3, 84.0), ("e", 9, 85.0)]]  # fmt: skip
    assert pareto_front(records) == ["a", "c"]
    assert parse_macs("20M") == 2e7 and parse_macs("1.5g") == 1.5e9 and parse_macs("350k") == 3.5e5
    with pytest.raises(ValueError, match="positive"):
        parse_macs("-2M")


def test_recalibrate_command_saves_a_model_for_the_regime(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "k1_full.safetensors"
    main(["recalibrate", "--ckpt", str(runs["k1"]), "--halting", "full", "-o", str(out)])
    assert "re-estimated" in capsys.readouterr().out
    model = load_model(out)
    assert model.halting == "full"
    assert model.stages[0].block.norms[1][0].running_mean.abs().max() > 0.1  # the unseen iteration has statistics


def test_report_and_frontier_never_replace_a_folder_of_the_users_files(
    runs: dict[str, Path], tmp_path: Path, capsys
) -> None:  # noqa: ANN001
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (pictures / name).write_bytes(b"mine")
    for command in (["report", str(runs["k1"]), "--no-sweep", "--test-subset", "40"],
                    ["frontier", str(runs["k1"]), "--budgets", "0", "--test-subset", "40"]):  # fmt: skip
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "-o", str(pictures)])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "did not write" in err
        assert sorted(p.name for p in pictures.iterdir()) == ["a.png", "b.png", "c.png"]
        # its own earlier output is replaced
        main([*command, "-o", str(tmp_path / command[0])])
        main([*command, "-o", str(tmp_path / command[0])])


@pytest.mark.parametrize("patch", [
    {"data": "x"}, {"data": {"class_path": "iamnn.data.DigitsDataModule", "init_args": [1, 2]}},
    {"init_args": {"bogus": 1}}, {"init_args": {"image_size": -1}}, {"init_args": {"image_size": "abc"}},
    {"init_args": {"image_size": 100_000}}, {"init_args": {"num_workers": 10_000}},
])  # fmt: skip
def test_a_run_folders_config_is_checked_before_use(runs: dict[str, Path], tmp_path: Path, capsys, patch) -> None:  # noqa: ANN001
    """Unknown keys, a data section that is a string or a list, sizes and worker counts out of range
    in a run folder's config.yaml were tracebacks (or an OOM kill, or 10 000 processes) in report."""
    import shutil

    import yaml

    run = tmp_path / "crafted"
    shutil.copytree(runs["k1"], run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    if "init_args" in patch:
        config["data"]["init_args"].update(patch["init_args"])
    else:
        config.update(patch)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(run), "-o", str(tmp_path / "r"), "--no-sweep", "--test-subset", "20"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert "config.yaml" in err or "must be" in err, err


def test_results_name_their_test_images_and_weights(runs: dict[str, Path], tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """93.20 % on 500 test images read as a full result; and `report` (best weights) and `test
    --ckpt_path last.ckpt` (last weights) printed two accuracies for one test set, neither saying which."""
    import shutil

    run = tmp_path / "k1"
    shutil.copytree(runs["k1"], run)  # `iamnn test` writes run/test/: not into the module's run
    best = "model.safetensors (best checkpoint)"
    main(["report", str(run), "-o", str(tmp_path / "r"), "--no-sweep", "--test-subset", "50"])
    printed = capsys.readouterr().out
    assert "Table 1 (test set: 50 of 297 test images)" in printed and f"weights: {best}" in printed
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    (row,) = report["models"]
    assert report["test_subset"] == 50 and row["weights"] == best
    assert (row["test_samples"], row["test_set_size"]) == (50, 297)
    assert f"Measured on 50 of 297 test images; weights: {best}." in (tmp_path / "r" / "report.md").read_text()

    main(["frontier", str(run), "-o", str(tmp_path / "f"), "--budgets", "0", "--test-subset", "50"])
    assert "(test set: 50 of 297 test images; each model as trained)" in capsys.readouterr().out
    frontier = json.loads((tmp_path / "f" / "frontier.json").read_text())
    (record,) = frontier["models"]
    assert frontier["test_subset"] == 50 and (record["test_samples"], record["test_set_size"]) == (50, 297)
    assert record["weights"] == best
    assert f"Measured on 50 of 297 test images; weights: {best}." in (tmp_path / "f" / "frontier.md").read_text()

    last = run / "checkpoints" / "last.ckpt"
    main(["evaluate", "--weights", str(last), "--json"])  # the whole test set: "all", and the file as given
    summary = json.loads(capsys.readouterr().out)
    assert (summary["test_samples"], summary["test_set_size"]) == (297, 297)
    assert summary["weights"] == f"{last} (last checkpoint)"
    main(["evaluate", "--weights", str(last)])
    assert "DigitsDataModule test set, all 297 test images" in capsys.readouterr().out

    main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(last), "--data.test_subset", "40",
          "--trainer.enable_progress_bar=false"])  # fmt: skip
    assert f"iamnn test: {last} (last checkpoint) on 40 of 297 test images" in capsys.readouterr().out


def test_a_weights_file_is_named_only_as_its_sidecar_vouches(runs: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    from iamnn.runs import describe_weights

    weights = tmp_path / "model.safetensors"
    shutil.copy(runs["k1"] / "model.safetensors", weights)
    sidecar = json.loads((runs["k1"] / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps({**sidecar, "checkpoint": None}))  # an anytime run's export
    assert describe_weights(weights) == f"{weights} (weights at the end of training)"
    # a sidecar left by an earlier save (a kill between the two renames) does not describe these weights
    (tmp_path / "model.json").write_text(json.dumps({**sidecar, "weights_sha256": "0" * 64}))
    assert describe_weights(weights) == str(weights)
    (tmp_path / "model.json").write_text("{not json")
    assert describe_weights(weights) == str(weights)
    assert describe_weights(runs["k1"] / "checkpoints" / "last.ckpt") == "checkpoints/last.ckpt (last checkpoint)"
