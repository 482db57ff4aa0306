"""Every ``iamnn`` command the README and the docs show runs, on tiny inputs, so they cannot drift from the code.

The commands are read from the code blocks of the README and the docs pages (``PAGES``, in the order
of the site's navigation) and run in order in a scratch folder. What they
name is made tiny: the Fashion-MNIST recipes become the digits recipe for one short epoch, every
run folder (``runs/fmnist_iamnn_r18``, ``runs/frontier/act_tau0.01``, ...) is one digits run, and
the slow commands get their own small-input flags (bench ``--smoke``, ``--test-subset``,
``--quick-sweep``). The few lines that need hardware or data this machine lacks (4 GPUs, CIFAR in
``~/data``) are listed in ``NEEDS_MORE``, and the test fails if one of those lines disappears, so
the list stays honest.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from iamnn.cli import build_parser, main
from iamnn.data.folder import make_example_folder

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "recipes" / "digits" / "iamnn_r18.yaml"
TINY_FIT = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false"]  # fmt: skip
TINY_EVAL = ["--trainer.limit_test_batches=1", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false"]

# the pages whose commands run here, in order; every other docs page with `iamnn` commands is in ELSEWHERE
PAGES = ["README.md", "docs/getting-started.md", "docs/halting-policies.md", "docs/results.md", "docs/speed.md",
         "docs/deploy.md", "docs/reliability.md"]  # fmt: skip
ELSEWHERE = {
    "docs/tutorials/own-data.md": "tests/test_own_folder.py runs the tutorial on a generated image folder",
    "docs/frontier-12k.md": "a superseded study whose run folders are not stored (it says to train them first)",
}
# lines that need what a test machine lacks; each must still be in the pages
NEEDS_MORE = {
    "--trainer.devices 4": "4 devices and CIFAR-10 in ~/data",
    "--trainer.devices 8": "8 GPUs",
}
# README lines only parsed, not run: what they do is run by the test named (here they would add ~45 s)
PARSED_ONLY = {
    "--runtime onnxruntime": "tests/test_bench.py::test_bench_onnxruntime_smoke",
    "iamnn app": "tests/test_app.py (a server that runs until stopped, driven by a browser)",
    "export --pretrained --format onnx -o shipped.onnx": "docs/deploy.md's export of the same model, run below",
}
# per command: flags that keep it small (appended)
SMALL = {
    "report": ["--no-sweep", "--test-subset", "60"],  # the sweep: test_report_writes_table_and_figures
    "frontier": ["--test-subset", "60", "--budgets", "2"],
    "calibrate": ["--no-recalibrate", "--test-subset", "60"],  # re-estimation: tests/test_frontier.py
    "headroom": ["--test-subset", "60"],
    "recalibrate": ["--test-subset", "60"],
    "evaluate": ["--test-subset", "60"],
    "bench": ["--smoke", "--batch-sizes", "1,2", "--threads", "1"],
}


def page_commands(page: str) -> list[str]:
    """The ``iamnn ...`` lines of a page's code blocks, continuations joined, comments dropped."""
    lines, block, pending = [], False, ""
    for raw in (REPO / page).read_text().splitlines():
        if raw.startswith("```"):
            block = not block
            continue
        if not block:
            continue
        text = pending + raw.strip()
        if text.endswith("\\"):
            pending = text[:-1] + " "
            continue
        pending = ""
        if re.match(r"iamnn [a-z]", text):
            lines.append(re.sub(r"\s+#.*$", "", text).strip())
    return lines


def readme_commands() -> list[str]:
    return [command for page in PAGES for command in page_commands(page)]


def tiny(command: str, world: Path) -> list[str]:
    args = shlex.split(command)[1:]
    if args[0] in ("fit", "validate", "test"):
        config = args.index("--config") + 1
        if args[config].startswith("recipes/image_folder/"):  # the world's my_photos, small inputs, tiny width
            args[config] = str(REPO / args[config])
            args += ["--data.image_size", "32", "--model.width", "0.125", "--data.num_workers", "0"]
        elif args[config].startswith("recipes/"):
            args[config] = str(DIGITS)
        args += (
            TINY_FIT if args[0] == "fit" else ["--trainer.limit_test_batches=1", "--trainer.enable_progress_bar=false"]
        )
    args = [("docs/samples/test00000_ankle-boot.png" if a == "shirt.png" else a) for a in args]
    return args + SMALL.get(args[0], [])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, fit_digits) -> Path:
    """A scratch folder in which every path the README names exists, tiny."""
    root = tmp_path_factory.mktemp("readme")
    run = fit_digits(root / "runs", "fmnist_iamnn_r18", *TINY_FIT)
    text = "\n".join((REPO / page).read_text() for page in PAGES)
    names = set(re.findall(r"(?:benchmarks/results/(?:study|cluttered)_)?runs/[\w./-]+", text))
    for name in sorted(names):
        folder = root / name.split("/model.safetensors")[0].split("/config.yaml")[0].split("/checkpoints")[0]
        if folder.name in ("runs", "frontier", "study", "study_runs", "cluttered_runs") or folder.exists():
            continue
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(run, folder)
    make_example_folder(root / "data" / "shapes", per_class=8, size=40)  # the README's own-folder fit
    (root / "docs").mkdir()
    (root / "docs" / "samples").symlink_to(REPO / "docs" / "samples")
    return root


def test_the_readme_lists_the_commands_this_test_knows() -> None:
    commands = readme_commands()
    assert len(commands) >= 20
    for needle in NEEDS_MORE:
        assert any(needle in c for c in commands), f"NEEDS_MORE names {needle!r}, no longer in the pages"
    for page in sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").rglob("*.md")):
        if page_commands(page) and page not in PAGES:
            assert page in ELSEWHERE, f"{page} shows iamnn commands: add it to PAGES, or to ELSEWHERE with the reason"


def _fashion_mnist_here() -> bool:
    from iamnn.data.fashion_mnist import SYSTEM_FASHION_MNIST_DIR

    return any((Path(SYSTEM_FASHION_MNIST_DIR) / f"t10k-images-idx3-ubyte{gz}").is_file() for gz in ("", ".gz"))


def test_every_readme_command_runs_on_tiny_inputs(world: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(world)
    ran = []
    for command in readme_commands():
        if any(needle in command for needle in NEEDS_MORE):
            continue
        if command.startswith("iamnn evaluate") and not _fashion_mnist_here():
            continue  # the shipped model's test set (CI installs dataset-fashion-mnist)
        args = tiny(command, world)
        if any(needle in command for needle in PARSED_ONLY):
            build_parser().parse_args(args)  # exits 2 on a flag the command no longer has
            continue
        try:
            main(args)
        except SystemExit as exit_info:
            pytest.fail(f"README command {command!r} (run as {args}) exited {exit_info.code}: "
                        f"{capsys.readouterr().err.strip()[-400:]}")  # fmt: skip
        ran.append(args[0])
    assert {"fit", "test", "report", "predict", "frontier", "calibrate", "recalibrate", "bench", "export",
            "models", "profile"} <= set(ran)  # fmt: skip
