"""Kill-safe training: atomic checkpoint writes and bitwise-identical resumes after SIGKILL."""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import pytest
import torch

from benchmarks import kill_resume as kr
from iamnn.data import EpochShuffleSampler
from iamnn.files import atomic_write
from iamnn.training.checkpoint_io import SafeCheckpointIO


def test_sigkilled_training_resumes_with_bitwise_identical_weights(tmp_path: Path) -> None:
    reference, _, epoch_s = kr.reference_run(tmp_path)
    # a fixed random schedule: SIGKILL a random fraction of an epoch after the 1st and 2nd checkpoint
    # write of each (resumed) process, so the kills land in different epochs (the benchmark
    # `benchmarks/kill_resume.py` runs more trials at random schedules)
    rng = random.Random(7)
    kills = [(saves, rng.uniform(0.05, 0.95) * epoch_s) for saves in (1, 2)]
    run_dir, landed = kr.killed_run(tmp_path, "killed", kills)
    assert landed == len(kills), f"only {landed} of the kills {kills} landed before the run finished"
    assert not list((run_dir / "checkpoints").glob("*.tmp")), "a finished run leaves no temporary files"
    differing = kr.differences(reference, kr.final_state(run_dir))
    assert not differing, f"after kills {kills} these tensors differ: {differing[:5]}"
    # the training history survives the kills: every epoch's validation row, once, as in the reference
    want, got = (_validation_epochs(d / "metrics.csv") for d in (tmp_path / "reference", run_dir))
    assert got == want == list(range(kr.EPOCHS)), (got, want)


def _validation_epochs(metrics: Path) -> list[int]:
    rows = csv.DictReader(metrics.open())
    return [int(r["epoch"]) for r in rows if r.get("val/acc1")]


def test_test_and_validate_keep_the_training_runs_files(tmp_path: Path, fit_digits) -> None:
    from iamnn.cli import main

    run = fit_digits(tmp_path, "kept", "--trainer.max_epochs=1")
    before = {name: (run / name).read_bytes() for name in ("metrics.csv", "config.yaml")}
    for command in ("test", "validate"):
        main([command, "--config", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
              "--trainer.enable_progress_bar=false"])  # fmt: skip
        assert (run / command / "metrics.csv").is_file() and (run / command / "config.yaml").is_file()
    assert {name: (run / name).read_bytes() for name in before} == before


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    path.write_bytes(b"old complete checkpoint")
    (tmp_path / ".last.ckpt.orphan.tmp").write_bytes(b"left by a SIGKILL")
    with pytest.raises(RuntimeError), atomic_write(path) as f:
        f.write(b"half a checkp")
        raise RuntimeError("killed mid-write")
    assert path.read_bytes() == b"old complete checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary file, orphan included


def test_atomic_write_leaves_another_live_writers_temporary_file(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, live = tmp_path / f".w.json.{gone.stdout.strip()}.a.tmp", tmp_path / f".w.json.{os.getppid()}.b.tmp"
    for tmp in (dead, live):
        tmp.write_text("in flight")
    with atomic_write(tmp_path / "w.json", "w") as f:
        f.write("{}")
    assert not dead.exists() and live.exists()  # a dead writer's orphan goes; a live one's write is left alone


def test_checkpoint_io_never_leaves_a_truncated_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io, path = SafeCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"w": torch.ones(3)}, path)

    def dies_halfway(obj: object, f) -> None:
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(io.load_checkpoint(path, weights_only=True)["w"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_epoch_shuffle_depends_only_on_seed_and_epoch() -> None:
    data = list(range(50))
    a, b = EpochShuffleSampler(data, seed=3), EpochShuffleSampler(data, seed=3)
    b.set_epoch(2)
    b_epoch2 = list(b)
    torch.rand(5)  # the global RNG does not matter
    a.set_epoch(2)
    assert list(a) == b_epoch2 and sorted(b_epoch2) == data
    a.set_epoch(3)
    assert list(a) != b_epoch2
    assert list(EpochShuffleSampler(data, seed=4)) != list(EpochShuffleSampler(data, seed=3))


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_a_resume_with_more_epochs_continues_on_a_schedule_for_the_new_length(
    tmp_path: Path, fit_digits, schedule: str
) -> None:
    first = fit_digits(tmp_path, schedule, "--trainer.max_epochs=1", f"--model.lr_schedule={schedule}")
    steps_per_epoch = torch.load(first / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    run = fit_digits(tmp_path, schedule, "--trainer.max_epochs=2", f"--model.lr_schedule={schedule}",
                     "--ckpt_path", "last")  # fmt: skip
    assert run == first
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 2 * steps_per_epoch
    scheduler = state["lr_schedulers"][0]
    assert scheduler["last_epoch"] == 2 * steps_per_epoch
    if schedule == "onecycle":
        assert scheduler["total_steps"] == 2 * steps_per_epoch
    assert _validation_epochs(run / "metrics.csv") == [0, 1]


def test_an_output_folder_of_the_users_files_is_never_replaced(tmp_path: Path) -> None:
    """``iamnn report RUN -o DIR`` with the user's a.png b.png c.png in DIR deleted them (they matched
    the report's "*.png"): only a folder that holds the marker of an earlier iamnn output is replaced."""
    from iamnn.files import atomic_folder

    mine = tmp_path / "pictures"
    mine.mkdir()
    for name in ("a.png", "b.png", "report.md"):
        (mine / name).write_bytes(b"mine")
    with pytest.raises(ValueError, match="did not write"), atomic_folder(mine, ("*.md", "*.png")) as tmp:
        (tmp / "report.md").write_text("report")
    assert sorted(p.name for p in mine.iterdir()) == ["a.png", "b.png", "report.md"]
    assert all(p.read_bytes() == b"mine" for p in mine.iterdir())
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to(mine)
    for taken in ("file", "link"):
        with pytest.raises(ValueError), atomic_folder(tmp_path / taken, ("*.png",)):
            pass
    assert (tmp_path / "file").read_text() == "x" and sorted(p.name for p in mine.iterdir())[0] == "a.png"
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_folder(empty, ("*.md",)) as tmp:
        (tmp / "report.md").write_text("report")
    assert (empty / "report.md").read_text() == "report"


def test_an_output_folder_is_replaced_as_a_set(tmp_path: Path) -> None:
    from iamnn.files import atomic_folder

    out = tmp_path / "report"
    with atomic_folder(out, ("*.md", "*.png")) as tmp:
        (tmp / "report.md").write_text("one")
        (tmp / "old_run.png").write_bytes(b"png")
    with pytest.raises(RuntimeError), atomic_folder(out, ("*.md", "*.png")) as tmp:
        (tmp / "report.md").write_text("half")
        raise RuntimeError("killed mid-report")
    assert sorted(p.name for p in out.iterdir()) == [".iamnn-output", "old_run.png", "report.md"]  # untouched
    assert (out / "report.md").read_text() == "one"
    with atomic_folder(out, ("*.md", "*.png")) as tmp:
        (tmp / "report.md").write_text("two")
    assert sorted(p.name for p in out.iterdir()) == [".iamnn-output", "report.md"]  # the earlier figure is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no temporary folder left
    # a folder holding someone else's files is refused, untouched
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt"), atomic_folder(out, ("*.md", "*.png")):
        pass
    assert (out / "notes.txt").read_text() == "mine"
    # a swap cut short between its two renames (a dead writer's .old, no report): the old set comes back
    (out / "notes.txt").unlink()
    out.rename(tmp_path / ".report.999999999.old")
    with pytest.raises(RuntimeError), atomic_folder(out, ("*.md", "*.png")):
        raise RuntimeError("fails before it commits")
    assert (out / "report.md").read_text() == "two" and sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_a_sigterm_ends_a_run_with_one_line_and_a_failure_code(tmp_path: Path) -> None:
    """SIGTERM (timeout, SLURM, kill) made `iamnn fit` exit 0, which a CI or a scheduler reads as success."""
    import signal
    import subprocess
    import time

    command = kr.fit_command(tmp_path, "termed", epochs=200)
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})  # fmt: skip
    last = tmp_path / "termed" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-800:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("iamnn fit: error: interrupted by SIGTERM at epoch ") and "--ckpt_path last" in line
    assert not (tmp_path / "termed" / "model.safetensors").exists()  # an interrupted run exports nothing
