"""Training (LightningCLI + recipes), report, predict and weights on the tiny digits set."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

import iamnn
from iamnn.cli import main
from iamnn.training.classifier import Classifier
from iamnn.weights import WeightsError, load_model, read_config, save_weights

REPO = Path(__file__).resolve().parents[1]
DIGITS_RECIPE = REPO / "recipes" / "digits" / "iamnn_r18.yaml"


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory, fit_digits) -> Path:
    return fit_digits(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def digits_onnx(digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits model exported by ``iamnn export`` (one export serves the tests that read it)."""
    onnx_path = tmp_path_factory.mktemp("onnx") / "digits.onnx"
    main(["export", "--weights", str(digits_run / "model.safetensors"), "--format", "onnx", "-o", str(onnx_path)])
    return onnx_path


def test_digits_fit_learns(digits_run: Path) -> None:
    metrics = [r for r in (digits_run / "metrics.csv").read_text().splitlines()[1:]]
    header = (digits_run / "metrics.csv").read_text().splitlines()[0].split(",")
    val = [dict(zip(header, r.split(","), strict=True)) for r in metrics]
    accs = [float(r["val/acc1"]) for r in val if r.get("val/acc1")]
    assert len(accs) == 5
    assert accs[-1] > 0.8, f"10-class digits after 5 epochs: {accs}"  # chance is 0.1
    assert (digits_run / "checkpoints" / "last.ckpt").is_file()
    assert list((digits_run / "checkpoints").glob("best-*.ckpt"))
    hparams = yaml.safe_load((digits_run / "hparams.yaml").read_text())
    assert hparams["num_classes"] == 10 and hparams["in_chans"] == 1  # linked from the data module


def test_exported_weights_rebuild_the_model(digits_run: Path) -> None:
    weights = digits_run / "model.safetensors"
    config = read_config(weights)
    assert config["model"] == "iamnn_r18" and config["kwargs"]["width"] == 0.125
    assert config["data"]["input_size"] == [16, 16] and len(config["data"]["class_names"]) == 10
    model = load_model(weights)
    ckpt = sorted((digits_run / "checkpoints").glob("best-*.ckpt"))[-1]
    from_ckpt = load_model(ckpt)
    x = torch.randn(4, 1, 16, 16)
    torch.testing.assert_close(model(x), from_ckpt(x))
    same = iamnn.create_model("iamnn_r18", checkpoint_path=weights, **{k: v for k, v in config["kwargs"].items()})
    torch.testing.assert_close(same.eval()(x), model(x))


def test_checkpoint_hparams_are_plain_data(digits_run: Path) -> None:
    ckpt = digits_run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)  # raises if anything needs unpickling code
    assert checkpoint["hyper_parameters"]["model"] == "iamnn_r18"
    module = Classifier.load_from_checkpoint(ckpt, weights_only=True)
    assert module.hparams.width == 0.125


def test_report_writes_table_and_figures(digits_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report"
    main(["report", str(digits_run), "-o", str(out)])
    printed = capsys.readouterr().out
    assert "Table 1" in printed and "digits" in printed
    result = json.loads((out / "report.json").read_text())
    (summary,) = result["models"]
    assert summary["test_samples"] == 297 and 0 < summary["macs_min"] <= summary["macs_mean"] <= summary["macs_max"]
    assert summary["top1"] > 80
    regimes = {p["regime"] for p in result["sweeps"][digits_run.name]}
    assert regimes == {"act", "fixed", "full", "trained"}
    for name in result["figures"]:
        png = out / name
        assert png.stat().st_size > 5000
        with Image.open(png) as img:
            assert img.format == "PNG" and img.size[0] > 300
    assert {"digits_iterations.png", "digits_easy_hard.png", "accuracy_vs_macs.png"} <= set(result["figures"])
    assert "| network | params |" in (out / "report.md").read_text()


def test_predict_on_png(digits_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    img = Image.fromarray((digits.images[-1] * 255 / 16).astype("uint8"), mode="L")
    img.save(tmp_path / "digit.png")
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "cut.png").write_bytes((tmp_path / "digit.png").read_bytes()[:40])  # truncated PNG
    (tmp_path / "empty").mkdir()
    args = [str(tmp_path), str(tmp_path / "missing.png"), str(tmp_path / "empty")]
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--weights", str(digits_run / "model.safetensors"), "--json", *args])
    assert exit_info.value.code == 1  # some inputs were bad
    out = capsys.readouterr()
    result = json.loads(out.out)
    (pred,) = result["predictions"]  # the good file still gets its answer
    assert pred["path"].endswith("digit.png") and pred["label"] == str(digits.target[-1])
    assert len(pred["iterations"]) == 4 and pred["macs"] > 0 and 0 < pred["confidence"] <= 1
    bad = {Path(path).name: reason for path, reason in result["errors"]}
    assert set(bad) == {"notes.png", "cut.png", "missing.png", "empty"}, bad
    assert "not a readable image" in bad["cut.png"] and "no image file" in bad["empty"]
    assert all(name in out.err for name in bad) and "Traceback" not in out.err


def test_python_predict_api_matches_the_cli_on_the_sample_images(tmp_path: Path, capsys) -> None:
    samples = Path(__file__).resolve().parents[1] / "docs" / "samples"
    predictions = iamnn.predict(samples)  # the shipped model, preprocessing from its weights file
    assert [p.label.lower().replace("/", "-").replace(" ", "-") for p in predictions] == [
        f.stem.split("_", 1)[1] for f in sorted(samples.glob("*.png"))
    ]  # each file is named after its true class
    main(["predict", "--pretrained", "--model", "iamnn_r34_fmnist", "--json", str(samples)])
    cli = json.loads(capsys.readouterr().out)["predictions"]
    assert [vars(p) for p in predictions] == cli
    image = Image.open(sorted(samples.glob("*.png"))[0])
    shipped = iamnn.create_model("iamnn_r34_fmnist", pretrained=True)
    with pytest.warns(UserWarning, match="own regime 'act'; under 'full' .*iamnn recalibrate"):  # 20 % top-1 so
        (one,) = iamnn.predict(image, shipped, halting="full")
    assert one.label == predictions[0].label and one.iterations == [3, 4, 6, 3]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the model's own regime, named or not: no warning
        iamnn.predict(image, shipped, halting="act")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="notes.png: not a readable image"):
        iamnn.predict([samples, tmp_path / "notes.png"])


def test_weights_refuse_other_architecture(digits_run: Path, tmp_path: Path) -> None:
    other = iamnn.create_model("iamnn_r18", stem="cifar", in_chans=1, num_classes=3, width=0.125)
    # another class count: the file's network with a fresh head, for fine-tuning (timm's behaviour)
    tuned = iamnn.create_model("iamnn_r18", stem="cifar", in_chans=1, num_classes=3, width=0.125,
                               checkpoint_path=digits_run / "model.safetensors")  # fmt: skip
    trained = load_model(digits_run / "model.safetensors")
    assert tuned.fc.out_features == 3 and torch.equal(tuned.conv1.weight, trained.conv1.weight)
    assert "class_names" not in (tuned.data_config or {})
    with pytest.raises(WeightsError, match="width=0.25 contradicts the file's width=0.125"):
        iamnn.create_model("iamnn_r18", checkpoint_path=digits_run / "model.safetensors", width=0.25)
    with pytest.raises(WeightsError, match="do not fit this model.*fc"):
        iamnn.weights.load_weights(other, digits_run / "model.safetensors")
    path = save_weights(other, tmp_path / "w.safetensors")
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_model(path)


def test_checkpoint_of_another_class_count_or_architecture_names_the_mismatch(
    digits_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    checkpoint = torch.load(digits_run / "checkpoints" / "last.ckpt", weights_only=True)
    others = {
        "classes": (Classifier(model="iamnn_r18", num_classes=3, in_chans=1, width=0.125), r"fc\.(weight|bias)"),
        "arch": (Classifier(model="iamnn_r34", num_classes=10, in_chans=1, width=0.125), "missing|unexpected"),
    }
    for name, (module, match) in others.items():
        path = tmp_path / f"{name}.ckpt"
        torch.save({**checkpoint, "state_dict": module.state_dict()}, path)
        with pytest.raises(SystemExit) as exit_info:
            main(["test", "--config", str(DIGITS_RECIPE), "--runs_dir", str(tmp_path), "--name", name,
                  "--trainer.enable_progress_bar=false", "--ckpt_path", str(path)])  # fmt: skip
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "weights do not fit this model" in err[-1] and re.search(match, err[-1]), err[-1]
        with pytest.raises(WeightsError, match=match):
            iamnn.create_model("iamnn_r18", stem="cifar", in_chans=1, num_classes=10, width=0.125, checkpoint_path=path)


def test_cli_entry_point_profile_json() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "iamnn.cli", "profile", "--json"], capture_output=True, text=True, check=True
    ).stdout
    rows = json.loads(out)
    cifar = next(r for r in rows if r["dataset"] == "CIFAR-10" and r["model"] == "resnet101")
    assert cifar["params"] == 42_512_970 and round(cifar["macs_max"] / 1e7) == 251


def test_every_recipe_parses(capsys: pytest.CaptureFixture) -> None:
    recipes = sorted((REPO / "recipes").rglob("*.yaml"))
    assert len(recipes) >= 8
    for recipe in recipes:
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", str(recipe), "--print_config"])
        printed = capsys.readouterr()
        assert exit_info.value.code in (0, None), f"{recipe.name}: {printed.err[-500:]}"
        assert "class_path: iamnn.data." in printed.out, recipe.name


def test_export_onnx_and_predict_with_onnxruntime(digits_run: Path, digits_onnx: Path, tmp_path: Path, capsys) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i in (-1, -2, -3):
        Image.fromarray((digits.images[i] * 255 / 16).astype("uint8"), mode="L").save(tmp_path / f"d{-i}.png")
    weights, onnx_path = digits_run / "model.safetensors", digits_onnx
    assert onnx_path.is_file() and not list(onnx_path.parent.glob("*.partial"))
    capsys.readouterr()
    main(["predict", "--weights", str(weights), "--json", str(tmp_path)])
    with_torch = json.loads(capsys.readouterr().out)["predictions"]
    main(["predict", "--onnx", str(onnx_path), "--json", str(tmp_path)])
    with_onnx = json.loads(capsys.readouterr().out)["predictions"]
    assert len(with_onnx) == 3
    for a, b in zip(with_torch, with_onnx, strict=True):
        assert (a["label"], a["iterations"], a["macs"]) == (b["label"], b["iterations"], b["macs"])
        assert abs(a["confidence"] - b["confidence"]) < 1e-4
    safetensors_out = tmp_path / "copy.safetensors"
    main(["export", "--weights", str(weights), "--format", "safetensors", "-o", str(safetensors_out)])
    assert read_config(safetensors_out)["data"]["input_size"] == [16, 16]
    with pytest.raises(SystemExit):
        main(["export", "--weights", str(weights), "--format", "safetensors", "-o", str(safetensors_out)])
    assert "exists" in capsys.readouterr().err


def test_missing_dataset_is_one_line_error(tmp_path: Path, monkeypatch, capsys) -> None:
    from iamnn.data import base, fashion_mnist

    monkeypatch.setattr(fashion_mnist, "SYSTEM_FASHION_MNIST_DIR", str(tmp_path / "system"))
    monkeypatch.setenv("IAMNN_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(base, "torchvision_download", lambda *a: (_ for _ in ()).throw(OSError("no network")))
    (tmp_path / "nowhere").mkdir()  # a folder without the files (one that does not exist is its own error)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "recipes" / "fashion_mnist" / "demo.yaml"),
              "--runs_dir", str(tmp_path), "--data.data_dir", str(tmp_path / "nowhere")])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        err.startswith("iamnn fit: error: Fashion-MNIST not found") and "apt-get install dataset-fashion-mnist" in err
    )
    assert str(tmp_path / "nowhere") in err


def test_shipped_weights_load_without_network() -> None:
    from iamnn.data import FashionMNISTDataModule
    from iamnn.weights import pretrained_path

    assert "iamnn_r34_fmnist" in iamnn.list_models(pretrained=True)
    model = iamnn.create_model("iamnn_r34_fmnist", pretrained=True).eval()
    config = read_config(pretrained_path("iamnn_r34_fmnist"))
    assert config["data"]["dataset"] == "FashionMNISTDataModule" and config["kwargs"]["width"] == 0.125
    dm = FashionMNISTDataModule(val_size=0, test_subset=500)
    dm.setup("test")
    x, y = next(iter(dm.test_dataloader()))
    with torch.no_grad():
        logits, stats = model(x, return_stats=True)
    assert (logits.argmax(1) == y).float().mean() > 0.88
    assert stats.macs.float().mean() < model.max_macs((28, 28))  # it exits early on real images


def test_export_shows_a_spinner_on_a_terminal(digits_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The ONNX export runs for 10-30 s with nothing to count: on a terminal a spinner says what runs."""
    import io

    from rich.console import Console

    import iamnn.export
    from iamnn import progress

    screen, drawn_during = io.StringIO(), []

    def export_onnx(model: object, path: Path, **kwargs: object) -> Path:  # the real one: test_export.py
        drawn_during.append(screen.getvalue())
        Path(path).write_bytes(b"onnx")
        return Path(path)

    monkeypatch.setattr(iamnn.export, "export_onnx", export_onnx)
    monkeypatch.setattr(progress, "console", lambda: Console(file=screen, force_terminal=True, width=200))
    out = tmp_path / "m.onnx"
    monkeypatch.setattr(progress, "enabled", lambda: True)
    main(["export", "--weights", str(digits_run / "model.safetensors"), "-o", str(out)])
    assert drawn_during[0] and out.read_bytes() == b"onnx"  # the display had started when the export ran
    assert f"exporting {out}" in screen.getvalue()
    assert screen.getvalue().endswith("\x1b[2K")  # transient: the line is erased when the export ends
    monkeypatch.setattr(progress, "enabled", lambda: False)  # not a terminal: nothing is drawn
    screen.truncate(0)
    main(["export", "--weights", str(digits_run / "model.safetensors"), "-o", str(out), "--force"])
    assert screen.getvalue() == ""


def test_onnx_export_of_trained_model_matches_pytorch(digits_run: Path, digits_onnx: Path) -> None:
    """The digits model trained a few epochs: onnxruntime and PyTorch agree on 64 test inputs."""
    from iamnn.export import OnnxModel
    from iamnn.runs import load_datamodule

    model = load_model(digits_run / "model.safetensors")
    dm = load_datamodule(digits_run, test_subset=64)
    x = torch.cat([b for b, _ in dm.test_dataloader()])
    assert len(x) == 64
    onnx = OnnxModel(digits_onnx)  # exported at the run's input size, 16x16
    logits, iterations = onnx(x)
    with torch.no_grad():
        ref, stats = model(x, return_stats=True)
    assert (torch.from_numpy(logits).argmax(1) == ref.argmax(1)).all()
    torch.testing.assert_close(torch.from_numpy(logits), ref, atol=1e-4, rtol=0)
    assert torch.equal(torch.from_numpy(iterations), stats.iterations)


def test_bf16_mixed_fit_stays_finite(tmp_path: Path, fit_digits, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    # where the CPU emulates bf16 (no AVX-512 / AMX), fit says so in one line: several times slower than float32
    monkeypatch.setattr("iamnn.training.lightning_cli.cpu_emulates_bf16", lambda: True)
    run = fit_digits(tmp_path, "bf16", "--trainer.max_epochs=2", "--trainer.precision=bf16-mixed")
    warned = [line for line in capsys.readouterr().err.splitlines() if "no native bfloat16" in line]
    assert len(warned) == 1 and warned[0].startswith("iamnn fit: warning: precision bf16-mixed"), warned
    assert "--trainer.precision 32-true" in warned[0]
    rows = [r for r in csv.DictReader((run / "metrics.csv").open()) if r.get("val/loss")]
    losses = [float(r["val/loss"]) for r in rows]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    state = load_model(run / "model.safetensors").state_dict()
    assert all(torch.isfinite(v.float()).all() for v in state.values())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_training_steps_stay_finite(dtype: torch.dtype) -> None:
    # fp16 autocast as on a GPU (Lightning's 16-mixed falls back to bf16 on a CPU), with its GradScaler
    from iamnn.data import DigitsDataModule

    torch.manual_seed(0)
    dm = DigitsDataModule(batch_size=64)
    dm.setup("fit")
    model = iamnn.create_model("iamnn_r18", stem="cifar", in_chans=1, num_classes=10, width=1 / 16)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=dtype == torch.float16)
    losses = []
    for _ in range(2):
        for x, y in dm.train_dataloader():
            with torch.autocast("cpu", dtype=dtype):
                logits, stats = model(x, return_stats=True)
                loss = torch.nn.functional.cross_entropy(logits.float(), y) + 0.01 * stats.ponder.mean(0).sum()
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            losses.append(float(loss))
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) < sum(losses[:5]), losses
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_ddp_two_cpu_processes_end_with_identical_weights(tmp_path: Path) -> None:
    # Lightning's DDP (gloo on CPU) launches the second rank by re-running this command
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [
        sys.executable, "-m", "iamnn.cli", "fit", "--config", str(DIGITS_RECIPE), "--runs_dir", str(tmp_path),
        "--name", "ddp", "--trainer.accelerator=cpu", "--trainer.devices=2",
        "--trainer.strategy=ddp_find_unused_parameters_true", "--trainer.max_epochs=2",
        "--trainer.enable_progress_bar=false", "--trainer.callbacks+=ddp_probe.RankWeights",
        f"--trainer.callbacks.out_dir={tmp_path}",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() and len(ranks[0]) > 100
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0]), "DDP ranks diverged"
    assert (tmp_path / "ddp" / "model.safetensors").is_file()  # exported once, by rank 0
    hparams = yaml.safe_load((tmp_path / "ddp" / "hparams.yaml").read_text())
    assert hparams["model"] == "iamnn_r18"


def test_integer_batch_limits_stay_integers(tmp_path: Path) -> None:
    """jsonargparse reads `--trainer.limit_train_batches 1` as 1.0 (every batch); an int means batches."""
    from iamnn.training.recipes import given_batch_counts

    recipe = tmp_path / "r.yaml"
    recipe.write_text("trainer:\n  limit_val_batches: 3\n  limit_test_batches: 0.5\n")
    args = ["fit", "--config", str(recipe), "--trainer.limit_train_batches", "1", "--trainer.overfit_batches=0.1"]
    assert given_batch_counts(args) == {"limit_train_batches": 1, "limit_val_batches": 3}
    assert given_batch_counts([*args, "--trainer.limit_val_batches=1.0"]) == {"limit_train_batches": 1}


def test_the_model_summary_gives_macs_not_lightnings_zero_flops(tmp_path: Path, fit_digits) -> None:
    import logging

    # Lightning's loggers do not propagate to the root logger that caplog listens on, and a library
    # imported by an earlier test may have disabled existing loggers (logging.config): listen directly
    messages: list[str] = []
    listener = logging.Handler(logging.INFO)
    listener.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    summary_logger = logging.getLogger("lightning.pytorch.callbacks.model_summary")
    saved = (summary_logger.level, summary_logger.disabled)
    summary_logger.addHandler(listener)
    summary_logger.setLevel(logging.INFO)
    summary_logger.disabled = False
    try:
        fit_digits(tmp_path, "summary", "--trainer.max_epochs=1", "--trainer.limit_train_batches=1",
                   "--trainer.limit_val_batches=1", "--trainer.enable_model_summary=true")  # fmt: skip
    finally:
        summary_logger.removeHandler(listener)
        summary_logger.level, summary_logger.disabled = saved
    text = "\n".join(messages)
    assert "Total params" in text and "MACs per image at 16x16 (1 iteration per stage to all)" in text
    assert "Flops" not in text and "FLOPs" not in text


def test_a_fit_off_a_terminal_prints_a_line_per_epoch_and_on_one_draws_the_bar(
    tmp_path: Path, fit_digits, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`make demo > log`: Lightning's bar drew nothing into the log until the run ended."""
    for var in ("FORCE_COLOR", "TTY_COMPATIBLE", "IAMNN_PROGRESS"):  # stdout as rich sees it: captured, no tty
        monkeypatch.delenv(var, raising=False)
    short = ["--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=true"]
    run = fit_digits(tmp_path, "lines", "--trainer.max_epochs=2", *short)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    pattern = (r"epoch (\d)/2  train loss \d+\.\d{3}  train acc [\d.]+ %  val acc ([\d.]+) %  val MACs [\d.]+ M  "
               r"elapsed 0:00:\d\d")  # fmt: skip
    matches = [re.fullmatch(pattern, line) for line in lines]
    assert len(lines) == 2 and all(matches), lines
    with open(run / "metrics.csv") as f:
        val = [float(r["val/acc1"]) for r in csv.DictReader(f) if r["val/acc1"]]
    assert [(m[1], m[2]) for m in matches] == [("1", f"{100 * val[0]:.1f}"), ("2", f"{100 * val[1]:.1f}")]
    monkeypatch.setenv("FORCE_COLOR", "1")  # a terminal, to rich: Lightning's live bar and no lines
    fit_digits(tmp_path, "bar", "--trainer.max_epochs=1", *short)
    out = capsys.readouterr().out
    assert "Epoch 0" in out and "epoch 1/1" not in out


def test_evaluate_gives_the_table_row_of_trained_weights(digits_run: Path, capsys: pytest.CaptureFixture) -> None:
    from iamnn.cli import main

    main(["evaluate", "--weights", str(digits_run / "model.safetensors"), "--json"])
    row = json.loads(capsys.readouterr().out)
    assert row["test_samples"] == 297 and 50 < row["top1"] <= 100
    assert row["macs_min"] <= row["macs_mean"] <= row["macs_max"] and len(row["iterations_mean"]) == 4
    assert row["bn_reestimated"] is False
    main(["evaluate", "--weights", str(digits_run / "model.safetensors"), "--halting", "1"])
    out, err = capsys.readouterr()
    assert "1.00 / 1.00 / 1.00 / 1.00" in out and "add --recalibrate" in err  # another regime than training's
    # --recalibrate: the BatchNorm statistics re-estimated for k = 1 on training images first
    main(["evaluate", "--weights", str(digits_run / "model.safetensors"), "--halting", "1", "--recalibrate", "--json"])
    out, err = capsys.readouterr()
    recalibrated = json.loads(out)
    assert recalibrated["bn_reestimated"] is True and "--recalibrate" not in err
    assert recalibrated["iterations_mean"] == [1.0] * 4 and recalibrated["test_samples"] == 297
    model = load_model(digits_run / "model.safetensors")
    from iamnn.report import evaluate_weights

    before = {n: b.clone() for n, b in model.named_buffers() if "running_mean" in n}
    evaluate_weights(model, read_config(digits_run / "model.safetensors")["data"], "m", 1, recalibrate=True)
    assert any(not torch.equal(b, before[n]) for n, b in model.named_buffers() if n in before)
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate"])
    assert exit_info.value.code == 2 and "--pretrained" in capsys.readouterr().err


def test_recalibrate_takes_a_weights_file_and_saves_a_model_for_the_regime(
    digits_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from iamnn.models.halting import halting_json

    out = tmp_path / "k1.safetensors"
    weights = digits_run / "model.safetensors"
    main(["recalibrate", "--weights", str(weights), "--halting", "1", "-o", str(out), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["halting"] == 1 and result["saved"] == str(out) and 0 < result["test_top1_reestimated"] <= 100
    trained, recalibrated = load_model(weights).state_dict(), load_model(out)
    assert halting_json(recalibrated.halting) == 1  # the saved model loads in its regime
    changed = [k for k, v in recalibrated.state_dict().items() if not torch.equal(v, trained[k])]
    assert changed and all("running_" in k or "num_batches_tracked" in k for k in changed)  # statistics only
    for sources in ([], ["--pretrained", "--weights", str(weights)]):
        with pytest.raises(SystemExit) as exit_info:
            main(["recalibrate", "--halting", "1", *sources])
        assert exit_info.value.code == 2 and "give one of --ckpt RUN, --weights FILE" in capsys.readouterr().err


def test_predict_scales_16_bit_images_and_skips_decompression_bombs(
    digits_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np
    from sklearn.datasets import load_digits

    digits = (load_digits().images[-1] * 255 / 16).astype("uint8")
    Image.fromarray(digits, mode="L").save(tmp_path / "a_8bit.png")
    Image.fromarray(digits.astype(np.uint16) * 257).save(tmp_path / "b_16bit.png")  # mode I;16
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a small limit, so the "bombs" stay small
    Image.new("L", (40, 40)).save(tmp_path / "c_warned.png")  # 1 600 pixels: Pillow only warns
    Image.new("L", (100, 100)).save(tmp_path / "d_bomb.png")  # 10 000 pixels: Pillow raises
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--weights", str(digits_run / "model.safetensors"), "--json", str(tmp_path)])
    assert exit_info.value.code == 1
    out = capsys.readouterr()
    result = json.loads(out.out)
    eight, sixteen = result["predictions"]
    assert {k: v for k, v in eight.items() if k != "path"} == {k: v for k, v in sixteen.items() if k != "path"}
    bad = {Path(path).name: reason for path, reason in result["errors"]}
    assert set(bad) == {"c_warned.png", "d_bomb.png"} and all("too many pixels" in r for r in bad.values())
    assert "Traceback" not in out.err


def test_predict_answers_the_readable_paths_beside_an_unreadable_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    sample = Path(__file__).resolve().parents[1] / "docs" / "samples" / "test00000_ankle-boot.png"
    shutil.copy(sample, tmp_path / "boot.png")
    (tmp_path / "locked").mkdir()
    listing = Path.iterdir

    def no_permission(self: Path):  # what a directory without read permission does (tests run as root)
        if self.name == "locked":
            raise PermissionError(13, "Permission denied", str(self))
        return listing(self)

    monkeypatch.setattr(Path, "iterdir", no_permission)
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--pretrained", "--json", str(tmp_path / "locked"), str(tmp_path / "boot.png")])
    assert exit_info.value.code == 1  # some paths were skipped
    result = json.loads(capsys.readouterr().out)
    assert [p["label"] for p in result["predictions"]] == ["Ankle boot"]
    assert result["errors"] == [[str(tmp_path / "locked"), "directory cannot be read (permission denied)"]]


def test_predict_takes_paths_that_are_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import os
    import shutil

    sample = Path(__file__).resolve().parents[1] / "docs" / "samples" / "test00000_ankle-boot.png"
    odd = tmp_path / os.fsdecode(b"boot\xff.png")  # a Latin-1 name on a UTF-8 system
    shutil.copy(sample, odd)
    main(["predict", "--pretrained", "--json", str(odd)])
    result = json.loads(capsys.readouterr().out)
    assert [p["label"] for p in result["predictions"]] == ["Ankle boot"] and not result["errors"]
    main(["predict", "--pretrained", str(tmp_path)])  # the table prints it too
    assert "Ankle boot" in capsys.readouterr().out


def test_demo_passes_its_other_arguments_to_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """`iamnn demo --trainer.max_epochs 1 ...` (both `--key value` and `--key=value`), then its report."""
    monkeypatch.chdir(tmp_path)
    main(["demo", "--config", str(DIGITS_RECIPE), "--trainer.max_epochs", "1", "-o", "report",
          "--trainer.enable_progress_bar=false", "--model.tau", "0.02"])  # fmt: skip
    config = yaml.safe_load((tmp_path / "runs" / "digits_iamnn_r18" / "config.yaml").read_text())
    assert config["trainer"]["max_epochs"] == 1 and config["model"]["tau"] == 0.02
    assert (tmp_path / "report" / "report.md").is_file() and "report/report.md" in capsys.readouterr().out
