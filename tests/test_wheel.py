"""The wheel works outside the repository: built as a user builds it, installed into a fresh venv,
and run from a folder that is not the checkout.

Two variants. The fast one (``make test``) installs the wheel alone and borrows the dev venv's
dependencies through a ``.pth`` file: a real install of PyTorch and its CUDA libraries is ~6 GB.
The slow one (``make test-wheel``, run by ``.ci/run``) lets pip resolve every dependency from the
package index, as ``pip install iamnn-*.whl`` does for a user.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "docs" / "samples" / "test00000_ankle-boot.png"
FASHION_MNIST = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot")  # fmt: skip
# left out of the commands' environment: nothing may point back at the checkout (PYTHONPATH) or the
# dev venv (VIRTUAL_ENV)
DROPPED_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE")


def _env(**extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in DROPPED_ENV} | extra


def _run(cmd: list[str | Path], cwd: Path, env: dict[str, str] | None = None) -> str:
    """stdout of ``cmd``; a failure shows its stderr."""
    proc = subprocess.run(list(map(str, cmd)), cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m build --wheel`` of a copy of the sources: setuptools writes build/ and *.egg-info
    into the tree it builds, which must not be the shared checkout."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(REPO / "src", source / "src", ignore=junk)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    # (byte-compiling off, PYTHONDONTWRITEBYTECODE, would make setuptools warn about that alone)
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(root / "dist"), str(source)],
        cwd=root, env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    # e.g. "WARNING `project.license` as a TOML table is deprecated" (setuptools' warnings, as build shows them)
    warnings = re.findall(r"^.*warning.*$", log, re.MULTILINE | re.IGNORECASE)
    assert not warnings, warnings
    (path,) = (root / "dist").glob("iamnn-*.whl")
    return path


def _check_contents(wheel: Path) -> str:
    """The wheel holds every file of the package (weights, the C kernel's source…); returns its version."""
    import iamnn

    names = set(zipfile.ZipFile(wheel).namelist())
    package = REPO / "src" / "iamnn"
    files = {f"iamnn/{p.relative_to(package).as_posix()}" for p in package.rglob("*") if p.is_file()}
    files = {f for f in files if "__pycache__" not in f}
    assert {"iamnn/weights/iamnn_r34_fmnist.safetensors", "iamnn/models/act_kernel.c"} <= files
    assert not files - names, f"left out of the wheel (tool.setuptools.package-data): {sorted(files - names)}"
    version = wheel.name.split("-")[1]
    assert version == iamnn.__version__  # the one home of the version reaches the wheel's metadata
    metadata = zipfile.ZipFile(wheel).read(f"iamnn-{version}.dist-info/METADATA").decode()
    assert "License-Expression: MIT" in metadata and f"iamnn-{version}.dist-info/licenses/LICENSE" in names
    return version


def _fresh_venv(path: Path) -> Path:
    """A venv with nothing installed; pip comes from the dev venv (``pip --python``), which is faster."""
    _run([sys.executable, "-m", "venv", "--without-pip", path], cwd=path.parent)
    return path / "bin" / "python"


def _pip(python: Path, *args: str | Path) -> str:
    return _run([sys.executable, "-m", "pip", "--python", python, *args], cwd=python.parent, env=_env())


def _site_packages(python: Path) -> Path:
    where = [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]
    return Path(_run(where, python.parent, _env()).strip())


def _check_outside_the_checkout(venv: Path, version: str, tmp_path: Path) -> None:
    """The installed ``iamnn`` command and package, run from a folder that is not the checkout."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy2(SAMPLE, elsewhere / "boot.png")
    kernels = tmp_path / "kernels"  # the C kernel compiled from the wheel's source, not a cached build
    env = _env(PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", IAMNN_KERNEL_CACHE=str(kernels))
    iamnn_cmd = venv / "bin" / "iamnn"

    assert _run([iamnn_cmd, "--version"], elsewhere, env) == f"iamnn {version}\n"

    out = _run([iamnn_cmd, "predict", "--pretrained", "boot.png"], elsewhere, env)
    row = next(line for line in out.splitlines() if "boot.png" in line)
    assert [c for c in FASHION_MNIST if c in row] == ["Ankle boot"], out
    if os.environ.get("IAMNN_KERNELS") != "0" and (shutil.which("cc") or shutil.which("gcc")):
        assert list(kernels.glob("act_kernel-*.so")), "the shipped act_kernel.c was not compiled"

    out = _run([iamnn_cmd, "models"], elsewhere, env)
    shipped = next(line for line in out.splitlines() if " iamnn_r34_fmnist " in line)
    assert "yes" in shipped, out

    probe = (
        "import json, sys, iamnn; m = iamnn.create_model('iamnn_r34_fmnist', pretrained=True); "
        "print(json.dumps({'file': iamnn.__file__, 'path': sys.path, 'kind': type(m).__name__}))"
    )
    found = json.loads(_run([venv / "bin" / "python", "-c", probe], elsewhere, env))
    site = _site_packages(venv / "bin" / "python")
    assert Path(found["file"]) == site / "iamnn" / "__init__.py", found["file"]  # not the checkout's src/
    assert str(REPO / "src") not in found["path"] and found["kind"] == "IamNN"


def test_the_wheel_runs_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    version = _check_contents(wheel)
    python = _fresh_venv(tmp_path / "venv")
    _pip(python, "install", "--no-deps", wheel)
    # only then the dev venv's packages (a .pth written before would show pip the dev venv's
    # editable iamnn as already installed). A plain path line: site does not read the .pth files of
    # a folder added this way, so the editable install's own (which adds the checkout's src/) stays out
    (_site_packages(python) / "dev-venv.pth").write_text(sysconfig.get_path("purelib") + "\n")
    # the wheel's requirements are met by the borrowed versions (the fresh iamnn is found first)
    assert "No broken requirements found" in _pip(python, "check")
    _check_outside_the_checkout(tmp_path / "venv", version, tmp_path)


@pytest.mark.slow
def test_the_wheel_installs_its_dependencies_from_the_index(wheel: Path, tmp_path: Path) -> None:
    # 2 to 5 min on 2 busy cores: pip takes 72-141 s for PyTorch with its CUDA libraries (5.7 GB)
    # from a local index, deleting them up to 105 s
    version = _check_contents(wheel)
    venv = tmp_path / "venv"
    python = _fresh_venv(venv)
    try:
        _pip(python, "install", wheel)
        assert "No broken requirements found" in _pip(python, "check")
        _check_outside_the_checkout(venv, version, tmp_path)
    finally:
        shutil.rmtree(venv)  # pytest keeps the last runs' tmp folders: not 6 GB each
