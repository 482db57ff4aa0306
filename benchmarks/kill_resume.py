"""Kill a digits training run with SIGKILL at random moments, resume it with ``--ckpt_path last``,
and compare its final weights with an uninterrupted run of the same recipe and seed.

    python benchmarks/kill_resume.py --trials 20 [--json benchmarks/results/kill_resume.json]

Each trial: start ``iamnn fit`` and SIGKILL it after a random delay, ``--kills`` times in a row (each
restart resumes from the last checkpoint on disk), then let it finish. A trial passes when every
tensor of the final ``last.ckpt`` (weights, BatchNorm statistics, optimizer state) equals the
reference bit for bit. ``tests/test_resume.py`` runs the same code with a few fixed delays.
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


def run(command: list[str], kill_after: float | None = None) -> bool:
    """Run ``command``; SIGKILL it after ``kill_after`` seconds. Returns whether it was killed."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True
    if proc.returncode != 0:
        raise RuntimeError(f"training failed ({proc.returncode}):\n{proc.stderr.read()[-3000:]}")
    return False


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


def killed_run(runs_dir: Path, name: str, delays: list[float]) -> tuple[Path, int]:
    """Start, SIGKILL after each delay in turn (resuming each time), then finish. Returns (run dir, kills)."""
    kills = sum(run(fit_command(runs_dir, name), kill_after=d) for d in delays)
    run(fit_command(runs_dir, name))
    return runs_dir / name, kills


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--kills", type=int, default=2, help="SIGKILLs per trial before it may finish")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        start = time.perf_counter()
        run(fit_command(runs, "reference"))
        reference_s = time.perf_counter() - start
        reference = final_state(runs / "reference")
        print(f"reference run: {reference_s:.1f} s for {EPOCHS} epochs; kills uniform in [2, {reference_s:.0f}] s")
        trials = []
        for t in range(args.trials):
            delays = [round(rng.uniform(2.0, reference_s), 2) for _ in range(args.kills)]
            run_dir, kills = killed_run(runs, f"trial{t:02d}", delays)
            diff = differences(reference, final_state(run_dir))
            trials.append({"delays_s": delays, "killed": kills, "identical": not diff, "differing": diff[:5]})
            print(f"trial {t:2d}: kills at {delays} s ({kills} landed) -> {'identical' if not diff else diff[:3]}")
    identical = sum(t["identical"] for t in trials)
    landed = sum(t["killed"] for t in trials)
    print(f"{identical}/{len(trials)} resumed runs ended with weights bitwise identical to the uninterrupted run "
          f"({landed} SIGKILLs landed)")  # fmt: skip
    if args.json:
        result = {"trials": trials, "identical": identical, "kills_landed": landed, "reference_s": reference_s}
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
