"""One resolver from a model's name, weights file, run folder or shipped weights to (model,
preprocessing, class names): ``iamnn.weights.resolve``, used by the commands, ``iamnn.predict``,
the app's launch and the benchmark, reading a weights file once."""

from __future__ import annotations

import builtins
import json
import shutil
from pathlib import Path

import pytest
import torch

import iamnn
from iamnn import bench, prediction, weights
from iamnn.cli import main
from iamnn.errors import RunFolderError
from iamnn.weights import DEFAULT_MODEL, Resolved, pretrained_path, resolve

SAMPLE = Path(__file__).resolve().parents[1] / "docs" / "samples" / "test00000_ankle-boot.png"


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts of the safetensors files opened, of ``open`` on a .ckpt, and of ``check_fits``."""
    counts = {"safetensors": 0, "ckpt": 0, "check_fits": 0}
    real_safe_open, real_open, real_check = weights.safe_open, builtins.open, weights.check_fits

    def safe_open(path: str, *args: object, **kwargs: object):  # noqa: ANN202
        counts["safetensors"] += 1
        return real_safe_open(path, *args, **kwargs)

    def counted_open(file, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        counts["ckpt"] += str(file).endswith(".ckpt")
        return real_open(file, *args, **kwargs)

    def check_fits(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        counts["check_fits"] += 1
        real_check(*args, **kwargs)

    monkeypatch.setattr(weights, "safe_open", safe_open)
    monkeypatch.setattr(builtins, "open", counted_open)
    monkeypatch.setattr(weights, "check_fits", check_fits)
    return counts


def test_every_kind_of_source_resolves(tmp_path: Path) -> None:
    shipped = resolve()  # the shipped model by default
    assert shipped.shipped == DEFAULT_MODEL and shipped.path == pretrained_path(DEFAULT_MODEL)
    assert not shipped.model.training and shipped.model.data_config is shipped.data
    assert shipped.class_names[9] == "Ankle boot" and shipped.data["input_size"] == [28, 28]

    from_file = resolve(shipped.path)  # a weights file: the same model, not "shipped"
    assert from_file.shipped is None and from_file.config == shipped.config
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(shipped.path, run / "model.safetensors")
    from_run = resolve(run)  # a run folder: its model.safetensors
    assert from_run.path == run / "model.safetensors" and from_run.class_names == shipped.class_names
    assert all(torch.equal(a, b) for a, b in zip(from_run.model.state_dict().values(),
                                                 shipped.model.state_dict().values(), strict=True))  # fmt: skip

    untrained = resolve("iamnn_r18", width=0.125)  # a registered name without shipped weights: untrained
    assert untrained.data is None and untrained.path is None and untrained.config["kwargs"] == {"width": 0.125}
    assert resolve(shipped.model).model is shipped.model  # a model already built is kept as it is
    assert resolve(DEFAULT_MODEL, pretrained=False).path is None  # untrained on request
    with pytest.raises(weights.WeightsError, match="no pretrained weights ship for 'iamnn_r18'"):
        resolve("iamnn_r18", pretrained=True)
    with pytest.raises(weights.WeightsError, match="nope: no such file, run folder or registered model"):
        resolve("nope")
    with pytest.raises(weights.WeightsError, match="no model.safetensors"):
        resolve(tmp_path / "run" / "..")  # a folder with no weights


def test_a_weights_file_is_opened_once_and_checked_once(opened: dict[str, int]) -> None:
    resolve(DEFAULT_MODEL)
    assert opened == {"safetensors": 1, "ckpt": 0, "check_fits": 1}
    iamnn.create_model(DEFAULT_MODEL, pretrained=True)
    assert opened["safetensors"] == 2 and opened["check_fits"] == 2


def test_predict_opens_its_weights_once(opened: dict[str, int], capsys: pytest.CaptureFixture) -> None:
    (prediction_,) = iamnn.predict(SAMPLE)
    assert prediction_.label == "Ankle boot" and opened["safetensors"] == 1 and opened["check_fits"] == 1
    main(["predict", "--json", str(SAMPLE)])  # the command: the same one read
    assert json.loads(capsys.readouterr().out)["weights"] == "shipped iamnn_r34_fmnist"
    assert opened["safetensors"] == 2 and opened["check_fits"] == 2


def test_a_checkpoint_is_opened_once(tmp_path: Path, opened: dict[str, int]) -> None:
    model = iamnn.create_model("iamnn_r18", stem="cifar", in_chans=1, num_classes=3, width=0.125)
    hparams = {"model": "iamnn_r18", "stem": "cifar", "in_chans": 1, "num_classes": 3, "width": 0.125}
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": hparams}, path)  # fmt: skip
    opened["ckpt"] = 0
    loaded = resolve(path)
    assert opened["ckpt"] == 1 and opened["check_fits"] == 1 and loaded.config["model"] == "iamnn_r18"
    assert torch.equal(loaded.model.conv1.weight, model.conv1.weight)


def test_predict_bench_and_the_commands_go_through_the_resolver(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    calls: list[tuple[object, object]] = []
    real = weights.resolve

    def spy(source: object = None, **kwargs: object) -> Resolved:
        calls.append((source, kwargs.get("pretrained")))
        return real(source, **kwargs)

    for module in (weights, prediction, bench):
        monkeypatch.setattr(module, "resolve", spy)
    iamnn.predict(SAMPLE)
    assert calls.pop() == (DEFAULT_MODEL, None)
    assert bench.bench_model("iamnn_r18", width=0.0625).data is None
    assert calls.pop() == ("iamnn_r18", False)
    main(["predict", "--model", "iamnn_r34_fmnist_cascade", "--pretrained", str(SAMPLE)])
    assert calls.pop() == ("iamnn_r34_fmnist_cascade", True) and "Ankle boot" in capsys.readouterr().out
    with pytest.raises(bench.BenchError, match="bench compares an IamNN"):
        bench.bench_model("resnet18")


def test_a_missing_run_folder_is_the_services_own_error(tmp_path: Path) -> None:
    from iamnn.runs import run_folders

    with pytest.raises(RunFolderError, match="no such run directory"):
        run_folders([tmp_path / "nothing"])
    with pytest.raises(RunFolderError, match="no run folders"):
        run_folders([tmp_path])
