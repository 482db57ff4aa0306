"""Output paths: no command removes or replaces a file of the user's without ``--force``, and every
refusal is one line (exit 2) before the work starts, whatever stands at the path given."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iamnn.cli import main

# what may stand where a command is told to write
STANDING = ("nothing", "file", "folder", "folder of pngs", "symlink to file", "dangling symlink", "file as parent")


def _stage(root: Path, what: str, name: str) -> tuple[Path, dict[Path, bytes]]:
    """The output path ``root/name`` with ``what`` at it, and every user file made (path -> content)."""
    out, files = root / name, {}
    if what == "file":
        files[out] = b"mine"
    elif what in ("folder", "folder of pngs"):
        out.mkdir()
        for name in ("a.png", "b.png") if what == "folder of pngs" else ("notes.txt",):
            files[out / name] = b"mine"
    elif what == "symlink to file":
        files[root / "target"] = b"mine"
        out.symlink_to(root / "target")
    elif what == "dangling symlink":
        out.symlink_to(root / "nowhere")
    elif what == "file as parent":
        files[out] = b"mine"
        out = out / "sub"
    for path, content in files.items():
        path.write_bytes(content)
    return out, files


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, fit_digits) -> Path:  # noqa: ANN001
    return fit_digits(tmp_path_factory.mktemp("outputs"), "k1", "--model.halting=1", "--model.tau=0",
                      "--trainer.max_epochs=1")  # fmt: skip


def _commands(run: Path, out: Path) -> dict[str, list[str]]:
    weights = str(run / "model.safetensors")
    return {
        "report": ["report", str(run), "-o", str(out), "--no-sweep", "--test-subset", "20"],
        "frontier": ["frontier", str(run), "-o", str(out), "--budgets", "0", "--test-subset", "20"],
        "export": ["export", "--weights", weights, "--format", "safetensors", "-o", str(out)],
        "recalibrate": ["recalibrate", "--ckpt", str(run), "--halting", "2", "-o", str(out), "--test-subset", "20"],
        "evaluate --json": ["evaluate", "--weights", weights, "--test-subset", "20", "--json", str(out)],
    }


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(["report", "frontier", "export", "recalibrate", "evaluate --json"]),
       standing=st.sampled_from(STANDING), force=st.booleans())  # fmt: skip
def test_no_user_file_is_lost_and_every_refusal_is_one_line(run: Path, capsys, command: str, standing: str,
                                                            force: bool) -> None:  # fmt: skip  # noqa: ANN001
    root = Path(tempfile.mkdtemp())
    name = {"export": "out.safetensors", "recalibrate": "out.safetensors", "evaluate --json": "out.json"}
    out, files = _stage(root, standing, name.get(command, "out"))
    if command == "export" and standing == "nothing":  # the sidecar export writes beside its weights
        files[out.with_suffix(".json")] = b"mine"
        out.with_suffix(".json").write_bytes(b"mine")
    args = _commands(run, out)[command]
    forced = force and command in ("export", "recalibrate")
    capsys.readouterr()
    try:
        main([*args, *(["--force"] if forced else [])])
        status = 0
    except SystemExit as stop:
        status = stop.code
    err = capsys.readouterr().err.strip()
    assert status in (0, 2), (status, err[-400:])
    if status == 2:
        assert len(err.splitlines()) == 1 and err.startswith("iamnn "), err[-400:]
    for path, content in files.items():
        # --json PATH names a result file the command rewrites (as `iamnn frontier ... --json` in the README)
        replaced = ((forced or command == "evaluate --json") and path == out and standing == "file") or (
            forced and path == out.with_suffix(".json")
        )  # --force: the weights' sidecar too
        assert replaced or (path.is_file() and path.read_bytes() == content), (command, standing, path)
    if standing == "nothing" and command not in ("evaluate --json", "export"):
        assert status == 0 and os.path.exists(out), err[-400:]


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(tmp_path: Path, monkeypatch, capsys) -> None:  # noqa: ANN001
    """ENOSPC ended fit, export and recalibrate with tracebacks (fit: 82 lines), stdout to /dev/full too."""
    import errno
    import subprocess
    import sys

    command = f"{sys.executable} -m iamnn.cli models > /dev/full"
    got = subprocess.run(command, shell=True, capture_output=True, text=True)
    assert got.returncode == 1, got.stderr
    assert got.stderr.strip() == "iamnn models: error: no space left on the device; nothing was half-written"

    from iamnn import files

    real = files.atomic_path

    def full(path):  # noqa: ANN001, ANN202 - the device fills while the file is written
        with real(path) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
            yield tmp

    monkeypatch.setattr(files, "atomic_path", files.contextlib.contextmanager(full))
    out = tmp_path / "w.safetensors"
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--pretrained", "--format", "safetensors", "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1 and len(err.splitlines()) == 1 and "no space left" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written, no temporary file left
