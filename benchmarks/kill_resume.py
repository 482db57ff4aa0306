"""Kill a digits training run with SIGKILL at random moments, resume it with ``--ckpt_path last``,
and compare its final weights with an uninterrupted run of the same recipe and seed.

    python benchmarks/kill_resume.py [--trials 10] [--kills 2] [--json benchmarks/results/kill_resume.json]

Each trial: start ``iamnn fit`` and SIGKILL it a uniformly random fraction of an epoch after its
1st or 2nd checkpoint write (mid-epoch, or during a checkpoint write), ``--kills`` times in a row
(each restart resumes from the last checkpoint on disk), then let it finish. A trial passes when
every tensor of the final ``last.ckpt`` (weights, BatchNorm statistics, optimizer state) equals
the reference bit for bit. ``tests/test_resume.py`` runs the same code with a fixed schedule of
two kills.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "digits" / "iamnn_r18.yaml"
EPOCHS = 6


def fit_command(runs_dir: Path, name: str, epochs: int = EPOCHS) -> list[str]:
    return [
        sys.executable, "-m", "iamnn.cli", "fit", "--config", str(RECIPE), "--runs_dir", str(runs_dir),
        "--name", name, "--ckpt_path", "last", f"--trainer.max_epochs={epochs}",
        "--trainer.enable_progress_bar=false",
    ]  # fmt: skip


def run(command: list[str], last: Path, kill: tuple[int, float] | None = None) -> tuple[bool, list[float]]:
    """Run ``command``. ``kill=(saves, delay)``: SIGKILL it ``delay`` s after it has rewritten ``last``
    (the run's last.ckpt) ``saves`` times (0: after its start). Returns (killed, times of the saves)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    start, seen, saves, deadline = time.perf_counter(), _mtime(last), [], None
    while proc.poll() is None:
        time.sleep(0.01)
        mtime = _mtime(last)
        if mtime != seen:
            seen = mtime
            saves.append(time.perf_counter() - start)
        if kill and deadline is None and len(saves) >= kill[0]:
            deadline = time.perf_counter() + kill[1]
        if deadline is not None and time.perf_counter() >= deadline:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True, saves
    if proc.returncode != 0:
        raise RuntimeError(f"training failed ({proc.returncode}):\n{proc.stderr.read()[-3000:]}")
    return False, saves


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the final checkpoint (model, optimizer), flattened to ``path -> tensor``."""
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    out: dict[str, torch.Tensor] = {}

    def walk(prefix: str, obj: object) -> None:
        if isinstance(obj, torch.Tensor):
            out[prefix] = obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(obj, list | tuple):
            for i, v in enumerate(obj):
                walk(f"{prefix}/{i}", v)

    walk("state_dict", checkpoint["state_dict"])
    walk("optimizer", checkpoint["optimizer_states"])
    assert checkpoint["epoch"] == EPOCHS - 1, checkpoint["epoch"]
    return out


def differences(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    if a.keys() != b.keys():
        return [f"keys differ: {sorted(a.keys() ^ b.keys())[:5]}"]
    return [k for k in a if not torch.equal(a[k], b[k])]


def killed_run(runs_dir: Path, name: str, kills: list[tuple[int, float]]) -> tuple[Path, int]:
    """Start, SIGKILL per each ``(saves, delay)`` in turn (resuming each time), then finish.

    Returns the run folder and how many SIGKILLs landed before the run had finished anyway."""
    last = runs_dir / name / "checkpoints" / "last.ckpt"
    landed = sum(run(fit_command(runs_dir, name), last, kill)[0] for kill in kills)
    run(fit_command(runs_dir, name), last)
    return runs_dir / name, landed


def reference_run(runs_dir: Path) -> tuple[dict[str, torch.Tensor], float, float]:
    """The uninterrupted run: its final tensors, wall time and seconds per epoch."""
    start = time.perf_counter()
    _, saves = run(fit_command(runs_dir, "reference"), runs_dir / "reference" / "checkpoints" / "last.ckpt")
    epoch_s = (saves[-1] - saves[0]) / max(1, len(saves) - 1) if len(saves) > 1 else 1.0
    return final_state(runs_dir / "reference"), time.perf_counter() - start, epoch_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--kills", type=int, default=2, help="SIGKILLs per trial before it may finish")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        reference, reference_s, epoch_s = reference_run(runs)
        print(f"reference run: {reference_s:.1f} s for {EPOCHS} epochs ({epoch_s:.2f} s per epoch); each kill lands "
              f"0-1 epoch after the 1st or 2nd checkpoint write of its process")  # fmt: skip
        trials = []
        for t in range(args.trials):
            kills = [(rng.randint(1, 2), round(rng.uniform(0, 1.0) * epoch_s, 2)) for _ in range(args.kills)]
            run_dir, landed = killed_run(runs, f"trial{t:02d}", kills)
            diff = differences(reference, final_state(run_dir))
            trials.append({"kills": kills, "landed": landed, "identical": not diff, "differing": diff[:5]})
            print(f"trial {t:2d}: kills (after n saves, +s) {kills}, {landed} landed -> "
                  f"{'identical' if not diff else diff[:3]}")  # fmt: skip
    identical = sum(t["identical"] for t in trials)
    landed = sum(t["landed"] for t in trials)
    print(f"{identical}/{len(trials)} resumed runs ended with weights bitwise identical to the uninterrupted run "
          f"({landed} SIGKILLs landed)")  # fmt: skip
    if args.json:
        result = {"trials": trials, "identical": identical, "kills_landed": landed, "reference_s": reference_s}
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
