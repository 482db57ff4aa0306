"""Loading refuses pickled code; bad inputs get clear errors (parts of the reliability issue)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import iamnn
from iamnn.cli import main
from iamnn.weights import WeightsError, load_model

MARKER = "iamnn-pwned"


class _Exploit:
    """Unpickling this calls os.system: a checkpoint that runs code when plainly unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _crafted_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / MARKER
    ckpt = tmp_path / "evil.ckpt"
    payload = {"state_dict": {}, "hyper_parameters": {"model": "iamnn_r18"}, "evil": _Exploit(marker)}
    with open(ckpt, "wb") as f:
        pickle.dump(payload, f)
    torch.save(payload, tmp_path / "evil_torchsave.ckpt")
    return ckpt, marker


def test_crafted_pickle_checkpoint_is_refused_everywhere(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt, marker = _crafted_checkpoint(tmp_path)
    for path in (ckpt, tmp_path / "evil_torchsave.ckpt"):
        with pytest.raises(WeightsError, match="refused to load checkpoint|refused: not a PyTorch checkpoint"):
            load_model(path)
        with pytest.raises(WeightsError, match="refused"):
            iamnn.create_model("iamnn_r18", checkpoint_path=path)
        (tmp_path / "img.png").write_bytes(b"")
        with pytest.raises(SystemExit) as exit_info:
            main(["predict", "--weights", str(path), str(tmp_path / "img.png")])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("iamnn predict: error:") and "refused" in err and len(err.splitlines()) == 1
    assert not marker.exists(), "unpickling ran the payload"


@pytest.mark.parametrize(
    "x, error, match",
    [
        (torch.randn(2, 3, 16, 16), ValueError, "1 input channel"),
        (torch.randn(1, 16, 16), ValueError, r"\(B, C, H, W\)"),
        (torch.zeros(2, 1, 16, 16, dtype=torch.uint8), TypeError, "floating-point"),
        (torch.full((2, 1, 16, 16), float("nan")), ValueError, "NaN or Inf"),
        (torch.full((1, 1, 16, 16), float("inf")), ValueError, "NaN or Inf"),
        (torch.randn(0, 1, 16, 16), ValueError, "empty batch"),
        (torch.randn(1, 1, 4, 4), ValueError, "too small"),
    ],
)
@pytest.mark.parametrize("name", ["iamnn_r18", "resnet18"])
def test_bad_inputs_get_clear_errors(name: str, x: torch.Tensor, error: type, match: str) -> None:
    model = iamnn.create_model(name, stem="cifar", in_chans=1, num_classes=3, width=1 / 16).eval()
    if name == "resnet18" and match == "too small":  # strided convolutions and adaptive pooling take any size
        assert model(x).shape == (1, 3)
        return
    with pytest.raises(error, match=match):
        model(x)


def test_crafted_pickle_checkpoint_is_refused_by_lightning_commands(tmp_path: Path, capsys) -> None:
    ckpt, marker = _crafted_checkpoint(tmp_path)
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "digits" / "iamnn_r18.yaml"
    for path in (ckpt, tmp_path / "evil_torchsave.ckpt"):
        for command in ("test", "fit"):  # `fit --ckpt_path` resumes from a checkpoint
            with pytest.raises(SystemExit) as exit_info:
                main([command, "--config", str(recipe), "--runs_dir", str(tmp_path), "--name", "t",
                      "--trainer.enable_progress_bar=false", "--ckpt_path", str(path)])  # fmt: skip
            assert exit_info.value.code == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert err[-1].startswith(f"iamnn {command}: error:") and "refused" in err[-1], err[-3:]
            assert not any(line.startswith("Traceback") for line in err)
    assert not marker.exists(), "unpickling ran the payload"


def test_truncated_checkpoint_fails_cleanly_everywhere(tmp_path: Path, capsys) -> None:
    model = iamnn.create_model("iamnn_r18", stem="cifar", in_chans=1, num_classes=3, width=0.125)
    path = tmp_path / "cut.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(WeightsError, match="not a readable checkpoint"):
        load_model(path)
    with pytest.raises(WeightsError, match="not a readable checkpoint"):
        iamnn.create_model("iamnn_r18", stem="cifar", in_chans=1, num_classes=3, width=0.125, checkpoint_path=path)
    with pytest.raises(SystemExit):
        main(["predict", "--weights", str(path), str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a readable checkpoint" in err


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["--config", "{bad_recipe}"], "does not accept option 'model.bogus_key'"),
        (["--model.bogus_key=3"], "unrecognized arguments: --model.bogus_key=3"),
        (["--trainer.max_epochs=abc"], "trainer.max_epochs"),
        (["--model.model=iamnn_r7"], "unknown model 'iamnn_r7'"),
        (["--model.halting=sometimes"], "halting must be"),
        (["--data.batch_size=-3"], "batch_size must be a positive integer"),
        (["--config", "no/such/recipe.yaml"], "does not exist"),
        (["--ckpt_path", "no/such.ckpt"], "no/such.ckpt: no such file"),
        (["--model.lr=-1"], "lr must be > 0"),
        (["--model.width=0"], "width must be a number in (0, 64]"),
        (["--model.epsilon=1.5"], "must be in [0, 1)"),
        (["--trainer.max_epochs=0"], "trains nothing"),
        (["--trainer.max_epochs=-1"], "leaves the cosine schedule no length"),
        (["--data.data_dir=/no/such/folder"], "is not a folder"),
    ],
)
def test_bad_recipe_is_one_line_error_and_writes_nothing(overrides: list[str], match: str, tmp_path: Path, capsys):
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "digits" / "iamnn_r18.yaml"
    runs, bad_recipe = tmp_path / "runs", tmp_path / "bad.yaml"
    bad_recipe.write_text("model:\n  model: iamnn_r18\n  bogus_key: 3\n")  # a key no class takes
    overrides = [o.format(bad_recipe=bad_recipe) for o in overrides]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(recipe), "--runs_dir", str(runs), "--name", "bad", *overrides])
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("iamnn fit: error:") and match in err[0], err[-3:]
    assert not any("Traceback" in line for line in err), err
    assert not runs.exists() or not any(runs.rglob("*")), "a failed start leaves no run folder behind"


def test_a_recipe_is_checked_before_any_module_it_names_is_imported(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "digits" / "iamnn_r18.yaml"
    marker = tmp_path / "imported.txt"
    (tmp_path / "evil_datamodule.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nclass Data: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    evil = tmp_path / "evil.yaml"
    evil.write_text("data:\n  class_path: evil_datamodule.Data\n")
    # nested aliases: 600 bytes that safe_load would expand to 10^7 nodes
    bomb = tmp_path / "bomb.yaml"
    rows = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    rows += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 7)]
    bomb.write_text("\n".join(rows) + "\n")
    for extra, match in ((["--config", str(evil)], "is not an iamnn data module (not imported)"),
                         (["--data", "evil_datamodule.Data"], "is not an iamnn data module (not imported)"),
                         (["--config", str(bomb)], "expand to more than")):  # fmt: skip
        start = time.perf_counter()
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", str(recipe), "--runs_dir", str(tmp_path / "runs"), *extra])
        assert exit_info.value.code == 2 and time.perf_counter() - start < 5
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and match in err, err
    assert not marker.exists(), "the recipe's module was imported"


def test_inputs_too_small_for_the_model_fail_before_training_in_one_line(tmp_path: Path, capsys) -> None:
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "digits" / "iamnn_r18.yaml"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(recipe), "--runs_dir", str(tmp_path), "--model.stem=imagenet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and "16x16 inputs are too small" in err[-1] and "Traceback" not in "".join(err)


@pytest.mark.parametrize(
    "class_path",
    ["iamnn.files.write_text_atomic", "os.system", "iamnn.data.base.TensorImageDataset", "iamnn.data.NoSuchModule"],
)
def test_a_run_folder_names_only_registered_data_modules(class_path: str, tmp_path: Path) -> None:
    """A downloaded run folder's config.yaml is data: its data class must be a registered iamnn data
    module, so it cannot make `iamnn report` call another function (here: write a file)."""
    from iamnn.errors import DatasetError
    from iamnn.runs import load_datamodule

    target = tmp_path / "written.txt"
    (tmp_path / "config.yaml").write_text(
        f"data:\n  class_path: {class_path}\n  init_args: {{path: {target}, text: owned}}\n"
    )
    with pytest.raises((ValueError, DatasetError), match="not an iamnn data module|unknown data module"):
        load_datamodule(tmp_path)
    assert not target.exists()


def test_a_diverging_training_stops_with_one_line_and_writes_no_weights(tmp_path: Path, capsys) -> None:
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "digits" / "iamnn_r18.yaml"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(recipe), "--runs_dir", str(tmp_path), "--name", "nan", "--model.lr=1e6",
              "--trainer.enable_progress_bar=false"])  # fmt: skip
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("iamnn")]
    assert len(err) == 1 and "training diverged: the loss is nan" in err[0], err
    assert not list(tmp_path.rglob("*.safetensors"))


def test_weights_are_never_written_over_by_their_sidecar_nor_saved_non_finite(tmp_path: Path) -> None:
    model = iamnn.create_model("iamnn_r18", width=1 / 16, num_classes=3)
    with pytest.raises(WeightsError, match="must end in .safetensors"):
        iamnn.weights.save_weights(model, tmp_path / "w.json")
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
    with pytest.raises(WeightsError, match="1 of .* tensors hold NaN or Inf"):
        iamnn.weights.save_weights(model, tmp_path / "w.safetensors")
    assert not list(tmp_path.iterdir())


def test_the_sidecar_names_the_weights_it_describes(tmp_path: Path) -> None:
    """Weights and sidecar are renamed one after the other; the sidecar's digest tells a stale one."""
    path = iamnn.weights.save_weights(
        iamnn.create_model("iamnn_r18", width=1 / 16, num_classes=3), tmp_path / "w.safetensors"
    )
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.json", "w.safetensors"]  # no temporary files left


@pytest.mark.parametrize(
    "content, match",
    [(b"", "the file is empty"), (b"hello", "neither a zip archive"), (pickle.dumps({"a": 1}), "a plain pickle")],
)
def test_a_file_that_is_no_torch_checkpoint_is_named_for_what_it_is(tmp_path: Path, content: bytes, match: str) -> None:
    (tmp_path / "x.ckpt").write_bytes(content)
    with pytest.raises(WeightsError, match=f"not a PyTorch checkpoint \\({match}"):
        iamnn.weights.read_checkpoint(tmp_path / "x.ckpt")


@pytest.mark.parametrize(
    "config, match",
    [
        ({"model": "iamnn_r18", "kwargs": {"width": 0.0625, "num_classes": 10**9}}, "shape mismatches"),
        ([1, 2], "names no model"),
        (None, "names no model"),
        ({"model": "no_such_net", "kwargs": {}}, "unknown model"),
        ({"model": "iamnn_r18", "kwargs": {"bogus": 1}}, "unexpected keyword argument 'bogus'"),
        ({"model": "iamnn_r18", "kwargs": {"width": 0.0625, "stem": "weird"}}, "stem must be"),
        ({"model": "iamnn_r18", "kwargs": [1]}, "kwargs are not a mapping"),
        ({"model": "iamnn_r18", "kwargs": {"width": 0.0625, "num_classes": 10}, "data": 3}, "data section"),
        ("{not json", "not JSON"),
        # a preprocessing config that would make predict allocate terabytes per image (found by test_fuzz.py)
        (
            {
                "model": "iamnn_r18",
                "kwargs": {"width": 0.0625, "num_classes": 10},
                "data": {"in_chans": 1, "input_size": [10**6, 10**6], "mean": [0.5], "std": [0.25]},
            },
            "input_size",
        ),
        (
            {
                "model": "iamnn_r18",
                "kwargs": {"width": 0.0625, "num_classes": 10},
                "data": {"in_chans": 1, "input_size": [16, 16], "mean": [0.5], "std": [0.0]},
            },
            "std outside 1e-6..1000",
        ),
    ],
)
def test_crafted_weights_metadata_is_refused_before_anything_is_allocated(config, match: str, tmp_path: Path) -> None:
    """The model is built on the meta device and checked against the file's tensor shapes first:
    a small file whose config asks for 10⁹ classes costs nothing and fails in one line."""
    from safetensors.torch import save_file

    from iamnn.weights import CONFIG_KEY

    model = iamnn.create_model("iamnn_r18", width=0.0625, num_classes=10)
    text = config if isinstance(config, str) else json.dumps(config)
    path = tmp_path / "crafted.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata={CONFIG_KEY: text})
    with pytest.raises(WeightsError, match=match):
        load_model(path)


def test_a_second_fit_into_a_locked_run_folder_stops_in_one_line(tmp_path: Path, capsys) -> None:
    from filelock import FileLock

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "digits" / "iamnn_r18.yaml"
    (tmp_path / "busy").mkdir()
    with FileLock(tmp_path / "busy" / ".lock"):  # another `iamnn fit --name busy` holds it
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", str(recipe), "--runs_dir", str(tmp_path), "--name", "busy"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is being written by another `iamnn fit`" in err[0], err
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == [".lock"]  # nothing of the second run


def test_a_closed_pipe_ends_a_command_quietly() -> None:
    """`iamnn profile --json | head`: no BrokenPipeError traceback when the reader leaves early."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "iamnn.cli", "profile", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait() == 1 and "Traceback" not in err and "BrokenPipe" not in err, err


@pytest.mark.parametrize(
    "change, match",
    [
        ({"input_size": [8192, 8192]}, "more than 1,048,576 pixels"),  # predict was OOM-killed at 10 GB
        ({"input_size": [1, 8192]}, "too small for the model"),
        ({"input_size": [4, 4]}, "too small for the model"),
        ({"in_chans": 3, "mean": [0.5] * 3, "std": [0.5] * 3}, "3-channel inputs to a model of 1"),
        ({"mean": [1e308]}, "a mean outside"),
        ({"std": [1e-320]}, "std outside 1e-6..1000"),
    ],
)
def test_a_data_config_the_model_cannot_use_is_refused_at_load(tmp_path: Path, capsys, change, match) -> None:  # noqa: ANN001
    from iamnn.weights import save_weights

    model = iamnn.create_model("iamnn_r18", stem="imagenet", width=0.125, in_chans=1, num_classes=3)
    data = {"dataset": "x", "in_chans": 1, "input_size": [64, 64], "mean": [0.5], "std": [0.5], **change}
    path = save_weights(model, tmp_path / "w.safetensors", data=data)
    with pytest.raises(WeightsError, match=match):
        load_model(path)
    from PIL import Image

    Image.new("L", (8, 8)).save(tmp_path / "one.png")
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--weights", str(path), str(tmp_path / "one.png")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and match.split()[0] in err


def test_names_from_files_are_shown_as_data_and_a_fifo_is_a_bad_input(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """A class name '[/x]' raised rich's MarkupError, '[bold red]' styled the table, ESC reached the
    terminal raw; a FIFO among the images hung predict, and the next image was never answered."""
    from PIL import Image

    from iamnn.weights import save_weights

    model = iamnn.create_model("iamnn_r18", stem="cifar", width=0.125, in_chans=1, num_classes=3)
    names = ["[/x]", "[bold red]A[/bold red]", "\x1b[2Jwiped"]
    data = {"dataset": "x", "in_chans": 1, "input_size": [16, 16], "mean": [0.5], "std": [0.5], "class_names": names}
    weights = save_weights(model, tmp_path / "w.safetensors", data=data)
    images = []
    (tmp_path / "d[").mkdir()
    for i in range(6):
        images.append(tmp_path / f"d[/x]{i}.png")  # the folder "d[", the file "x]0.png"
        Image.fromarray((torch.rand(16, 16) * 255).byte().numpy()).save(images[-1])
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    with pytest.raises(SystemExit) as exit_info:  # exit 1: a listed bad input, the others answered
        main(["predict", "--weights", str(weights), str(fifo), *map(str, images)])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 1 and "fifo.png: not a regular file" in err
    assert "\x1b" not in out and all(f"d[/x]{i}.png" in out for i in range(6))
    assert any(name in out for name in ("[/x]", "[bold red]A[/bold red]", "\\x1b[2Jwiped"))


def test_deeply_nested_metadata_is_refused_in_one_line(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from iamnn.weights import CONFIG_KEY

    path = tmp_path / "deep.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={CONFIG_KEY: "[" * 100_000 + "]" * 100_000})
    with pytest.raises(WeightsError, match="nested too deeply"):
        load_model(path)
    with pytest.raises(WeightsError, match="nested too deeply"):
        iamnn.create_model("iamnn_r18", checkpoint_path=path)


@pytest.mark.parametrize("change", [{"width": 64.0}, {"num_classes": 100_000_000}, {"loops": "bad"}])
def test_checkpoint_hyper_parameters_are_matched_to_its_tensors_before_a_model_is_built(
    tmp_path: Path, capsys, fit_digits, change: dict
) -> None:  # noqa: ANN001
    """`iamnn test --ckpt_path` with width 64 in a 1.7 MB checkpoint was OOM-killed at 3 GB (and left
    a stale .lock); num_classes 1e8 tried to allocate 102 GB."""
    import resource
    import time

    run = fit_digits(tmp_path, "small", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2")
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    if "loops" in change:  # the loop state Lightning restores by name (it raised KeyError: 'test_loop')
        ckpt["loops"] = {"fit_loop": change["loops"]}
    else:
        ckpt["hyper_parameters"].update(change)
    crafted = tmp_path / "crafted.ckpt"
    torch.save(ckpt, crafted)
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "digits" / "iamnn_r18.yaml"
    for command in ("test", "fit"):
        start, peak = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--config", str(recipe), "--runs_dir", str(tmp_path), "--name", "crafted",
                  "--ckpt_path", str(crafted)])  # fmt: skip
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2, err[-300:]
        assert "do not fit" in err or "does not build" in err or "not Lightning's" in err, err[-300:]
        assert len(err.splitlines()) == 1 and time.monotonic() - start < 20
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 500_000  # KiB: nothing large allocated
        assert not (tmp_path / "crafted" / ".lock").exists()


def test_config_values_that_would_exhaust_the_machine_are_refused(tmp_path: Path, capsys, monkeypatch) -> None:  # noqa: ANN001
    """num_workers 10 000 / 64, image_size 1000, --trainer.devices 1000 on a CPU: one line each."""
    from lightning.pytorch.strategies.launchers import subprocess_script

    from iamnn.data import DigitsDataModule

    def no_launch(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - if the check failed, no process storm
        raise AssertionError("a process launch was attempted")

    monkeypatch.setattr(subprocess_script._SubprocessScriptLauncher, "launch", no_launch)
    for kwargs, match in (({"num_workers": 10_000}, "num_workers must be in"), ({"num_workers": -1}, "num_workers"),
                          ({"image_size": 1000}, "image_size must be an int in 1..256"),
                          ({"image_size": -1}, "image_size"), ({"image_size": "abc"}, "image_size")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            DigitsDataModule(**kwargs)
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "digits" / "iamnn_r18.yaml"
    for flags, match in ((["--trainer.devices", "1000"], "asks for more than this machine has"),
                         (["--data.init_args.num_workers", "10000"], "num_workers must be in")):  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", str(recipe), "--runs_dir", str(tmp_path), "--name", "big", *flags])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and match in err and len(err.splitlines()) == 1, err[-300:]


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "--batch-sizes", "a"],
        ["bench", "--batch-sizes", ""],
        ["bench", "--batch-sizes", "1,,2"],
        ["bench", "--batch-sizes", "1e3"],
        ["bench", "--batch-sizes", "0"],
        ["bench", "--batch-sizes", "-1"],
        ["bench", "--threads", "-1"],
        ["bench", "--threads", "1e11"],
        ["bench", "--input-size", "-1"],
        ["bench", "--input-size", "1"],
        ["bench", "--input-size", "100000"],
        ["profile", "--width", "0"],
        ["profile", "--width", "nan"],
        ["profile", "--width", "inf"],
        ["profile", "--width", "-1"],
        ["profile", "--width", "1e308"],
        ["evaluate", "--pretrained", "--test-subset", "0"],
        ["frontier", "runs", "--budgets", "-1"],
        ["evaluate", "--pretrained", "--halting", "foo"],
    ],
)
def test_numeric_options_are_checked_when_parsed(argv: list[str], capsys) -> None:  # noqa: ANN001
    """Each of these was a traceback (ZeroDivisionError, a negative tensor size, ...) or accepted."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "argument --" in err, err


def test_an_empty_path_is_a_bad_input_not_the_current_folder(capsys) -> None:  # noqa: ANN001
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--pretrained", ""])
    assert exit_info.value.code == 1 and "an empty path" in capsys.readouterr().err


def test_weights_holding_nan_are_refused_at_load(tmp_path: Path) -> None:
    """predict printed "confidence": NaN (not JSON) and evaluate 7.81 % without a word."""
    from safetensors.torch import save_file

    from iamnn.weights import CONFIG_KEY, save_weights

    model = iamnn.create_model("iamnn_r18", stem="cifar", width=0.125, in_chans=1, num_classes=3)
    path = save_weights(model, tmp_path / "w.safetensors")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["fc.weight"][0, 0] = float("nan")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    save_file(state, str(tmp_path / "nan.safetensors"), metadata={CONFIG_KEY: metadata[CONFIG_KEY]})
    with pytest.raises(WeightsError, match="hold NaN or Inf .first: fc.weight"):
        load_model(tmp_path / "nan.safetensors")


def test_an_exif_rotated_photo_is_seen_upright(tmp_path: Path) -> None:
    from PIL import Image

    from iamnn.prediction import load_image

    pixels = np.zeros((16, 16), dtype=np.uint8)
    pixels[:, :8] = 255  # white on the left as stored; EXIF orientation 3 says "turn me by 180°"
    exif = Image.Exif()
    exif[0x0112] = 3
    Image.fromarray(pixels).save(tmp_path / "photo.jpg", exif=exif, quality=100)
    x = load_image(tmp_path / "photo.jpg", {"in_chans": 1, "input_size": [16, 16], "mean": [0.0], "std": [1.0]})
    assert x[0, :, 8:].mean() > 0.9 and x[0, :, :8].mean() < 0.1  # white on the right, as a viewer shows it


@pytest.mark.parametrize("flags, match", [
    (["--seed_everything", str(2**70)], "seed_everything must be a whole number"),
    (["--trainer.limit_train_batches", "-1"], "limit_train_batches"),
])  # fmt: skip
def test_trainer_values_out_of_range_are_one_line(tmp_path: Path, capsys, flags: list[str], match: str) -> None:  # noqa: ANN001
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "digits" / "iamnn_r18.yaml"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(recipe), "--runs_dir", str(tmp_path), "--name", "x", *flags])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("iamnn fit:")]
    assert exit_info.value.code == 2 and len(err) == 1 and match in err[0]
    assert not (tmp_path / "x").exists()  # no run folder (nor lock) left
