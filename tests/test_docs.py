"""The documentation site builds with warnings as errors: a broken link, a missing page or a
docstring that names a parameter the function does not have fails here, not on a reader's screen."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_the_docs_site_builds_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="the docs extra (part of the dev extra) is not installed")
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    home = (site / "index.html").read_text()
    assert "make demo" in home and "stage.png" in home  # the README, as the home page
    assert (site / "api" / "index.html").read_text().count('class="doc doc-heading"') >= 15  # the API reference
