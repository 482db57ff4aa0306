"""Training on your own folder of images, end to end: the commands of docs/tutorials/own-data.md run
here, read from its code blocks (so the page cannot drift from the code), in a scratch folder where
``recipes/`` is the repository's. The example folder is the one the page makes, with 30 images a
class instead of 200; the fit the page shows as a first check runs as written, and every longer one
runs for one batch.

Beside them, what the data module decides about a folder: its two layouts, what it skips, what it
refuses (one line each), grey images, and that ``iamnn predict`` feeds the model exactly what
validation fed it.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch.utils.data import DataLoader

import iamnn
from iamnn.cli import main
from iamnn.data import DatasetError, ImageFolderDataModule
from iamnn.data.__main__ import main as data_main
from iamnn.errors import DatasetNotFoundError
from iamnn.prediction import load_image
from iamnn.weights import CONFIG_KEY, WeightsError, data_config, load_model, load_model_with_config

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "tutorials" / "own-data.md"
RECIPE = REPO / "recipes" / "image_folder" / "iamnn_r18.yaml"
ONE_BATCH = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1"]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def page_blocks() -> list[tuple[str, list[str]]]:
    """(language, lines) of each fenced block of the page, shell continuations joined."""
    blocks, language, lines = [], None, []
    for raw in PAGE.read_text().splitlines():
        if raw.startswith("```"):
            if language is None:
                language, lines = raw[3:].strip(), []
            else:
                blocks.append((language, [line for line in lines if line]))
                language = None
            continue
        if language is not None:
            if lines and lines[-1].endswith("\\"):
                lines[-1] = lines[-1][:-1] + raw.strip()
            else:
                lines.append(raw.strip())
    return blocks


def page_commands() -> list[str]:
    """The shell lines of the page (its blocks without a language, or bash), comments dropped."""
    lines = [re.sub(r"\s+#.*$", "", line) for lang, block in page_blocks() if lang in ("", "bash") for line in block]
    return [line for line in lines if line and not line.startswith("#")]


def test_the_page_shows_only_commands_this_test_runs() -> None:
    commands = page_commands()
    known = ("iamnn ", "python -m iamnn.data ", "source .venv/bin/activate")
    assert [c for c in commands if not c.startswith(known)] == []
    assert {"fit", "predict", "test"} <= {c.split()[1] for c in commands if c.startswith("iamnn ")}, commands
    assert any(c.startswith("python -m iamnn.data make-example-folder") for c in commands)
    assert any("--config recipes/image_folder/iamnn_r18.yaml" in c for c in commands)


def test_the_tutorial_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)  # the page's relative paths (data/shapes, runs/shapes) land here
    (tmp_path / "recipes").symlink_to(REPO / "recipes")
    printed: dict[str, str] = {}
    for command in page_commands():
        if command.startswith("source "):
            continue
        args = shlex.split(command)
        if args[0] == "python":
            data_main(args[3:] + ([] if "--per-class" in args else ["--per-class", "30"]))
            continue
        args = args[1:]
        if args[0] == "fit":
            epochs = int(_flag(args, "--trainer.max_epochs") or 40)
            args += QUIET + (ONE_BATCH if epochs > 3 else [])
        elif args[0] == "test":
            args += QUIET
        capsys.readouterr()
        try:
            main(args)
        except SystemExit as exit_info:
            pytest.fail(f"{command!r} exited {exit_info.code}: {capsys.readouterr().err.strip()[-600:]}")
        printed[command] = capsys.readouterr().out

    classes = ["circle", "square", "triangle"]
    assert sorted(p.name for p in (tmp_path / "data" / "shapes").iterdir()) == classes
    (predict,) = [out for command, out in printed.items() if command.startswith("iamnn predict")]
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in predict.splitlines() if ".png" in line]
    assert rows and all(row[1] in classes for row in rows), predict

    # the weights predict used, and the image size of the fit that wrote them
    weights = _flag(shlex.split(next(c for c in printed if c.startswith("iamnn predict"))), "--weights")
    fits = [shlex.split(c) for c in printed if c.startswith("iamnn fit")]
    (side,) = [int(_flag(f, "--data.image_size")) for f in fits if weights.startswith(f"runs/{_flag(f, '--name')}/")]
    model, config = load_model_with_config(tmp_path / weights)
    data = config["data"]
    assert data["class_names"] == classes and data["dataset"] == "ImageFolderDataModule"
    assert (data["in_chans"], data["input_size"], data["crop_pct"]) == (3, [side, side], 0.875)
    assert data["mean"] == pytest.approx([0.485, 0.456, 0.406]) and data["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert model.num_classes == 3 and model.in_chans == 3

    for language, block in page_blocks():  # the page's Python, in the same folder
        if language == "python":
            scope: dict = {}
            exec(compile("\n".join(block), str(PAGE), "exec"), scope)  # noqa: S102 - our own page
            assert all(p.label in classes for p in scope["predictions"])


def _flag(args: list[str], flag: str) -> str | None:
    """The value of ``flag`` (``--flag value``) in ``args``, the last one given; None if absent."""
    values = [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag]
    return values[-1] if values else None


# -------------------- what the data module decides about a folder


def _images(folder: Path, n: int) -> None:
    """``n`` small PNGs of plain colours in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (20, 14), (200, (30 + 37 * i) % 256, 30)).save(folder / f"{i}.png")


def test_one_folder_per_class_holds_out_validation_which_is_the_test_set(tmp_path: Path) -> None:
    for name in ("b_dog", "a_cat"):
        _images(tmp_path / name, 10)
    dm = ImageFolderDataModule(str(tmp_path), image_size=16, batch_size=4)
    dm.setup("fit")
    assert dm.class_names == ["a_cat", "b_dog"] and (dm.in_chans, dm.input_size) == (3, (16, 16))
    assert (len(dm.train_set), len(dm.val_set)) == (16, 4)  # 20 % held out by default
    assert dm.test_set.indices == dm.val_set.indices  # no val/: the held-out images are the test set
    raw, _ = dm.test_dataset_raw()[0]
    assert raw.shape == (3, 16, 16) and 0 <= raw.min() and raw.max() <= 1

    (tmp_path / "train").mkdir()  # train/ beside class folders: train/ is the layout, its classes count
    for name in ("x", "y", "z"):
        _images(tmp_path / "train" / name, 5)
    assert ImageFolderDataModule(str(tmp_path)).class_names == ["x", "y", "z"]
    _images(tmp_path / "val" / "y", 3)
    split = ImageFolderDataModule(str(tmp_path), image_size=16, val_size=3)
    split.setup("test")
    assert len(split.test_set) == 3 and {y for _, y in split.test_set.samples} == {1}  # val/ is the test set


def test_files_that_are_not_images_and_hidden_ones_are_skipped(tmp_path: Path) -> None:
    for name in ("cat", "dog"):
        _images(tmp_path / name, 3)
        (tmp_path / name / "notes.txt").write_text("taken in the garden")
        (tmp_path / name / "._0.png").write_bytes(b"\x00\x05\x16\x07")  # macOS metadata beside 0.png
        (tmp_path / name / ".DS_Store").write_bytes(b"\x00")
    _images(tmp_path / ".ipynb_checkpoints", 1)
    (tmp_path / "README.md").write_text("my photos")
    dm = ImageFolderDataModule(str(tmp_path), image_size=8, val_size=2)
    dm.setup("fit")
    assert dm.class_names == ["cat", "dog"]
    assert sorted(Path(p).name for p, _ in dm.train_set.dataset.samples) == ["0.png", "0.png", "1.png", "1.png",
                                                                             "2.png", "2.png"]  # fmt: skip


@pytest.mark.parametrize("make, error, match", [
    (lambda root: _images(root / "cat", 3), DatasetError, r"one class folder \(cat\); a classifier needs two or more"),
    (lambda root: (_images(root / "cat", 3), (root / "dog").mkdir()), DatasetError,
     r"Found no valid file for the classes dog.* add images or remove the folder"),
    (lambda root: _images(root, 3), DatasetNotFoundError, r"Couldn't find any class folder in .*<class>/\*\.jpg"),
])  # fmt: skip
def test_a_folder_that_cannot_train_a_classifier_is_one_line(tmp_path: Path, make, error, match: str) -> None:  # noqa: ANN001
    make(tmp_path)
    with pytest.raises(error, match=match) as info:
        ImageFolderDataModule(str(tmp_path)).setup("fit")
    assert "\n" not in str(info.value)


def test_the_cli_says_what_is_wrong_with_the_folder_in_one_line(tmp_path: Path, capsys) -> None:
    _images(tmp_path / "photos" / "only_class", 4)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(RECIPE), "--data.data_dir", str(tmp_path / "photos"),
              "--runs_dir", str(tmp_path / "runs")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.count("\n") == 0, err
    assert err.startswith("iamnn fit: error: ") and "one class folder (only_class)" in err
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(RECIPE), "--runs_dir", str(tmp_path / "runs")])  # no --data.data_dir
    assert "Set data_dir (--data.data_dir)" in capsys.readouterr().err


def test_an_image_that_does_not_decode_stops_training_naming_it(tmp_path: Path) -> None:
    for name in ("cat", "dog"):
        _images(tmp_path / name, 2)
    (tmp_path / "dog" / "9.jpg").write_bytes(b"\xff\xd8\xff not really a JPEG")
    dm = ImageFolderDataModule(str(tmp_path), image_size=8, val_size=1)
    dm.setup("fit")
    folder = dm.train_set.dataset
    broken = next(i for i, (path, _) in enumerate(folder.samples) if path.endswith("9.jpg"))
    with pytest.raises(DatasetError, match=r"dog/9.jpg: not a readable image .*; remove or replace the file"):
        folder[broken]
    # read by a DataLoader worker, it comes back as the same one line, not the worker's traceback
    batches = iter(DataLoader(folder, batch_size=len(folder), num_workers=1))
    try:
        with pytest.raises(DatasetError) as info:
            next(batches)
    finally:  # now: left to the garbage collector, the worker stalls a later test for 5 s
        batches._shutdown_workers()
    message = str(info.value)
    assert "\n" not in message and message.endswith("9.jpg: not a readable image (not an image format Pillow reads); "
                                                    "remove or replace the file")  # fmt: skip
    with pytest.raises(DatasetError, match="val_size 0 holds out no image"):
        ImageFolderDataModule(str(tmp_path), val_size=0).setup("fit")


@pytest.mark.parametrize("kwargs, match", [
    ({"mean": [0.5]}, "mean must be 3 finite number"),
    ({"grayscale": True, "std": [0.2, 0.2, 0.2]}, "std must be 1 finite number"),
    ({"std": [0.2, 0.0, 0.2]}, "std must be > 0"),
    ({"crop_pct": 0}, "crop_pct must be a number in 0.05..1"),
    ({"min_scale": 1.5}, "min_scale must be a fraction"),
])  # fmt: skip
def test_preprocessing_options_are_checked(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ImageFolderDataModule(str(tmp_path), **kwargs)


def test_grey_images_and_predict_see_what_validation_saw(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for i in range(4):  # odd sizes: every image is resized and cropped
            Image.fromarray(rng.integers(0, 256, (30 + i, 41, 3), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    for grayscale in (False, True):
        dm = ImageFolderDataModule(str(tmp_path), image_size=24, val_size=0.25, grayscale=grayscale, crop_pct=0.8)
        dm.setup("fit")
        data = data_config(dm)
        assert (data["in_chans"], data["mean"], data["crop_pct"]) == (
            (1, [0.449], 0.8) if grayscale else (3, [0.485, 0.456, 0.406], 0.8)
        )
        folder = dm.test_set.dataset
        for index in dm.test_set.indices:
            x, _ = folder[index]
            seen = load_image(Path(folder.samples[index][0]), data)
            assert x.shape == (data["in_chans"], 24, 24)
            torch.testing.assert_close(seen, x, atol=1e-5, rtol=0)


def test_make_example_folder_refuses_a_folder_in_use(tmp_path: Path, capsys) -> None:
    _images(tmp_path / "mine" / "cat", 1)
    with pytest.raises(SystemExit) as exit_info:
        data_main(["make-example-folder", str(tmp_path / "mine")])
    assert exit_info.value.code == 2 and "is not an empty folder" in capsys.readouterr().err
    data_main(["make-example-folder", str(tmp_path / "new"), "--per-class", "2", "--size", "16", "--seed", "3"])
    files = sorted((tmp_path / "new").rglob("*.png"))
    assert [f.relative_to(tmp_path / "new").as_posix() for f in files][:2] == ["circle/0000.png", "circle/0001.png"]
    assert len(files) == 6 and all(12 <= side <= 20 for f in files for side in Image.open(f).size)


def test_a_crafted_crop_pct_is_refused_at_load(tmp_path: Path) -> None:
    model = iamnn.create_model("iamnn_r18", width=0.0625, num_classes=2)
    data = {"in_chans": 3, "input_size": [32, 32], "mean": [0.5] * 3, "std": [0.25] * 3, "crop_pct": 1e-4}
    config = {"model": "iamnn_r18", "kwargs": {"width": 0.0625, "num_classes": 2}, "data": data}
    path = tmp_path / "crafted.safetensors"  # 1e-4 would resize every image to 320 000 pixels a side
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), {CONFIG_KEY: json.dumps(config)})
    with pytest.raises(WeightsError, match="crop_pct outside 0.05..1"):
        load_model(path)
