"""Run folders written before the training code moved from ``iamnn.lit`` to ``iamnn.training`` still load.

Their ``config.yaml`` names the Trainer plugin ``iamnn.lit.SafeCheckpointIO``; ``iamnn.lit`` re-exports
every public training name from its new home, so the old class paths resolve to the same classes.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

import iamnn.lit
from iamnn.data.fashion_mnist import SYSTEM_FASHION_MNIST_DIR
from iamnn.models import IamNN
from iamnn.runs import load_datamodule
from iamnn.training import callbacks, checkpoint_io, classifier, lightning_cli, recipes
from iamnn.training.lightning_cli import run_lightning_cli
from iamnn.weights import load_model_with_config

REPO = Path(__file__).resolve().parents[1]
OLD_RUN = REPO / "benchmarks" / "results" / "study_runs" / "fixed_k1"  # written by iamnn.lit
DIGITS_RECIPE = REPO / "recipes" / "digits" / "iamnn_r18.yaml"


def test_the_old_names_are_the_new_objects() -> None:
    assert iamnn.lit.Classifier is classifier.Classifier
    assert iamnn.lit.SafeCheckpointIO is checkpoint_io.SafeCheckpointIO
    assert iamnn.lit.run_lightning_cli is lightning_cli.run_lightning_cli
    homes = (classifier, callbacks, checkpoint_io, recipes, lightning_cli)
    for name in iamnn.lit.__all__:  # no copies: each old name is its new home's object
        assert any(getattr(home, name, None) is getattr(iamnn.lit, name) for home in homes), name


def _printed_config(*args: str) -> str:
    """What ``iamnn <args> --print_config`` prints: the parsed configuration, every class_path resolved."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        run_lightning_cli([*args, "--print_config"])
    assert exit_.value.code in (0, None)
    return out.getvalue()


def test_an_old_run_folders_config_still_parses() -> None:
    assert "iamnn.lit.SafeCheckpointIO" in (OLD_RUN / "config.yaml").read_text()
    printed = _printed_config("test", "--config", str(OLD_RUN / "config.yaml"))
    assert "iamnn.lit.SafeCheckpointIO" in printed and "model: iamnn_r34" in printed


def test_a_new_run_names_the_new_home() -> None:
    printed = _printed_config("fit", "--config", str(DIGITS_RECIPE))
    assert "class_path: iamnn.training.checkpoint_io.SafeCheckpointIO" in printed and "iamnn.lit" not in printed


def test_an_old_run_folders_model_and_data_load() -> None:
    model, config = load_model_with_config(OLD_RUN / "model.safetensors")
    assert isinstance(model, IamNN) and config["model"] == "iamnn_r34"
    if not Path(SYSTEM_FASHION_MNIST_DIR).is_dir():
        pytest.skip("needs dataset-fashion-mnist")
    dm = load_datamodule(OLD_RUN)
    assert type(dm).__name__ == "FashionMNISTDataModule" and tuple(dm.input_size) == (28, 28)
