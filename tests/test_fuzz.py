"""Property-based fuzzing (Hypothesis): whatever a weights file's metadata or a command-line value
holds, a command gives its result or one stderr line with exit 2, never a traceback."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save_file

import iamnn
from iamnn.calibrate import parse_macs
from iamnn.cli import main
from iamnn.weights import CONFIG_KEY

FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.none() | st.booleans() | st.integers(-(10**12), 10**12) | st.floats() | st.text(max_size=12)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def mostly(good: object, bad: st.SearchStrategy = values) -> st.SearchStrategy:
    """``good`` three times in four, else anything: most files get far enough to test the deep checks."""
    good = good if isinstance(good, st.SearchStrategy) else st.just(good)
    return st.one_of(good, good, good, bad)


kwargs = st.fixed_dictionaries(
    {"width": mostly(0.0625), "num_classes": mostly(10), "stem": mostly("cifar"), "in_chans": mostly(1)},
    optional={"halting": mostly(st.sampled_from(["act", "full", 2, [1, 2, "act", "full"]])), "epsilon": st.floats(),
              "iterations": values},
)  # fmt: skip
data = st.fixed_dictionaries(
    {"in_chans": mostly(1), "input_size": mostly([16, 16]), "mean": mostly([0.5]), "std": mostly([0.25])},
    optional={"dataset": mostly("DigitsDataModule"), "class_names": mostly([str(i) for i in range(10)])},
)
configs = mostly(
    st.fixed_dictionaries({"model": mostly("iamnn_r18", st.sampled_from(["resnet18", "no_such"]) | values),
                           "kwargs": mostly(kwargs)}, optional={"data": mostly(data)})
)  # fmt: skip


@pytest.fixture(scope="module")
def tensors() -> dict[str, torch.Tensor]:
    model = iamnn.create_model("iamnn_r18", width=0.0625, num_classes=10, in_chans=1, stem="cifar")
    return {k: v.contiguous() for k, v in model.state_dict().items()}


@FUZZ
@given(config=configs)
def test_any_weights_metadata_gives_an_answer_or_one_line(config, tensors, tmp_path: Path, capsys) -> None:
    path, image = tmp_path / "crafted.safetensors", tmp_path / "x.png"
    Image.new("L", (16, 16), 128).save(image)
    save_file(tensors, str(path), metadata={CONFIG_KEY: json.dumps(config)})
    capsys.readouterr()
    code = 0
    try:
        main(["predict", "--weights", str(path), "--json", str(image)])
    except SystemExit as exit_info:
        code = exit_info.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    if code == 0:
        (prediction,) = json.loads(out)["predictions"]
        assert 0 <= prediction["confidence"] <= 1
    else:  # the weights refused (2) in one line, or the image skipped (1) with one line saying why
        assert code in (1, 2) and len(err.strip().splitlines()) == 1, (code, err)


@FUZZ
@given(text=st.text(max_size=12) | st.from_regex(r"-?[0-9.e+]{1,8}[kKmMgG]?", fullmatch=True))
def test_a_macs_budget_parses_to_a_positive_finite_number_or_is_refused(text: str) -> None:
    try:
        value = parse_macs(text)
    except ValueError as err:
        assert str(err) and "\n" not in str(err)
    else:
        assert math.isfinite(value) and value > 0


@FUZZ
@given(halting=st.text(max_size=8), output=st.sampled_from(["m.onnx", "m.json", "m.safetensors"]))
def test_export_flags_give_a_file_or_one_line(halting: str, output: str, tmp_path: Path, capsys) -> None:
    capsys.readouterr()
    target = tmp_path / output
    target.unlink(missing_ok=True)
    fmt = "safetensors" if output != "m.onnx" else "onnx"
    code = 0
    try:
        main(["export", "--pretrained", "--format", fmt, "--halting", halting, "-o", str(target)])
    except SystemExit as exit_info:
        code = exit_info.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert (code == 0 and target.is_file()) or (code == 2 and len(err.strip().splitlines()) == 1), (code, err)


@FUZZ
@given(
    name=st.sampled_from(["lr", "momentum", "weight_decay", "tau", "gamma", "label_smoothing", "warmup_epochs",
                          "width", "epsilon", "halting", "num_classes"]),
    value=scalars,
)  # fmt: skip
def test_a_training_value_builds_or_is_refused_with_a_reason(name: str, value: object) -> None:
    """`iamnn fit` builds the Classifier from the recipe; a ValueError or TypeError is turned into one
    line ("the recipe does not build: ..."), anything else would be a traceback."""
    from iamnn.training.classifier import Classifier

    base = {"model": "iamnn_r18", "width": 0.0625, "num_classes": 10, "in_chans": 1, "stem": "cifar"}
    try:
        with torch.device("meta"):  # a legitimate but huge width (770) must not allocate 48 GB here
            Classifier(**{**base, name: value})
    except (ValueError, TypeError) as err:
        assert str(err)
