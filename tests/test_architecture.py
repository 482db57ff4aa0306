"""The package's layout stays as the README's "Architecture" section draws it.

The import contracts (layers that point one way, no cycles) live in pyproject.toml and are checked
by import-linter, function-local imports included. Private names (a leading underscore) stay in the
module that defines them: no ``from iamnn.x import _name`` in the package, the benchmarks or the
tests (a test may reach into its own module only, and there is none such).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from importlinter.cli import lint_imports

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_hold(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # import-linter reads the contracts from ./pyproject.toml
    code = lint_imports(config_filename=str(REPO / "pyproject.toml"), no_cache=True, no_logo=True)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "0 broken" in out and "No import cycles" in out


def _private_imports(path: Path, root: Path = REPO) -> list[str]:
    """``file:line name`` of every private name imported from iamnn (or relatively) in ``path``."""
    where = path.relative_to(root)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("iamnn")):
            # a dunder (`from . import __version__`) is public by convention, not private
            private = [a.name for a in node.names if a.name.startswith("_") and not a.name.endswith("__")]
            found += [f"{where}:{node.lineno} {name}" for name in private]
        if isinstance(node, ast.Import):
            found += [f"{where}:{node.lineno} {a.name}" for a in node.names if "._" in a.name]
    return found


def test_no_private_name_is_imported_across_modules() -> None:
    files = [p for d in ("src", "benchmarks", "tests") for p in (REPO / d).rglob("*.py")]
    assert len(files) > 30
    private = [hit for path in files for hit in _private_imports(path) if "__future__" not in hit]
    assert not private, private


def test_private_import_detector_sees_one(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from iamnn.models.iamnn import _hidden\nfrom .x import _y\nimport iamnn._z\nfrom os import _exit\n"
        "from . import __version__\n"
    )
    assert [h.split()[-1] for h in _private_imports(probe, tmp_path)] == ["_hidden", "_y", "iamnn._z"]


def test_the_package_imports_its_names_on_first_use() -> None:
    import subprocess
    import sys

    # the `iamnn` command starts without PyTorch: `iamnn --help` and a parse error answer at once
    probe = "import sys, iamnn.cli; assert 'torch' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", probe], check=True)
    import iamnn
    import iamnn.prediction  # the module named apart from the function, which it does not replace

    assert sorted(iamnn.__all__) == sorted(iamnn._HOMES)
    for name in iamnn.__all__:
        home = __import__(f"iamnn.{iamnn._HOMES[name]}", fromlist=[name])
        assert getattr(iamnn, name) is getattr(home, name), name
    assert callable(iamnn.predict) and set(iamnn.__all__) <= set(dir(iamnn))
    assert not {"Any", "TYPE_CHECKING", "annotations", "importlib", "_HOMES"} & set(dir(iamnn))  # helpers stay out
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        iamnn.nope  # noqa: B018


def test_the_stage_loop_is_written_once_where_the_docs_say() -> None:
    """docs/architecture.md names the one stage loop by file:line; it is there, and no other module
    of the package loops over a stage's iterations (a ``for`` that asks a policy ``wants_score``;
    the ONNX export's ``while_loop`` body has no Python loop)."""
    import re

    text = (REPO / "docs" / "architecture.md").read_text()
    path, line = re.search(r"`(src/iamnn/models/iamnn\.py):(\d+)`", text).groups()
    assert (REPO / path).read_text().splitlines()[int(line) - 1].strip() == "def run("
    loops = []
    for file in (REPO / "src" / "iamnn").rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.For) and any(
                isinstance(n, ast.Attribute) and n.attr == "wants_score" for n in ast.walk(node)
            ):
                loops.append(f"{file.relative_to(REPO)}:{node.lineno}")
    assert loops == [f"{path}:{_run_loop_line(REPO / path)}"], loops


def _run_loop_line(path: Path) -> int:
    """The line of the ``for`` inside ``IterativeStage.run``."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef) and node.name == "run":
            return next(n.lineno for n in ast.walk(node) if isinstance(n, ast.For))
    raise AssertionError("no IterativeStage.run")
