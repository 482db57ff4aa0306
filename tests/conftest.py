"""Shared test set-up."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

# Under pytest-xdist (`make test`: one worker per core), each worker and the commands it starts
# use one OpenMP thread: N workers with N threads each on N cores would slow each other several
# times over. Set before anything imports torch; an explicit OMP_NUM_THREADS is kept.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

DIGITS_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "digits" / "iamnn_r18.yaml"


@pytest.fixture(autouse=True)
def _lightning_logs_to_current_stderr() -> None:
    # Lightning's console handlers keep the stderr of the test that first imported it; pytest has
    # closed that capture since, and every later log line would print a "Logging error" traceback.
    names = [name for name in list(logging.root.manager.loggerDict) if name.startswith("lightning")]
    for logger in map(logging.getLogger, names):
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.stream = sys.stderr  # not setStream: it flushes the closed one


@pytest.fixture(scope="session")
def fit_digits() -> Callable[..., Path]:
    """``fit_digits(runs_dir, name, *overrides)``: train the digits recipe in-process; returns the run folder."""
    from iamnn.training.lightning_cli import run_lightning_cli

    def fit(runs_dir: Path, name: str = "digits", *overrides: str) -> Path:
        cli = run_lightning_cli(
            ["fit", "--config", str(DIGITS_RECIPE), "--runs_dir", str(runs_dir), "--name", name,
             "--trainer.enable_progress_bar=false", *overrides]
        )  # fmt: skip
        return Path(cli.trainer.log_dir)

    return fit
