"""Cluttered Fashion-MNIST (``data/cluttered.py``): the same images on every machine, a cache that
is used when it is right and regenerated when it is not, difficulty levels kept per image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from iamnn.data import ClutteredFashionMNISTDataModule, FashionMNISTDataModule, cluttered
from iamnn.data.fashion_mnist import SYSTEM_FASHION_MNIST_DIR

pytestmark = pytest.mark.skipif(not Path(SYSTEM_FASHION_MNIST_DIR).is_dir(), reason="needs dataset-fashion-mnist")
SMALL = {"train_images": 300, "test_images": 100, "val_size": 50}


def _loaded(folder: Path, **kwargs) -> ClutteredFashionMNISTDataModule:  # noqa: ANN003
    dm = ClutteredFashionMNISTDataModule(data_dir=str(folder), **{**SMALL, **kwargs})
    dm.setup("fit")
    dm.setup("test")
    return dm


def test_the_set_is_a_function_of_the_files_and_the_parameters(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a, b = _loaded(tmp_path / "a"), _loaded(tmp_path / "b")
    for i in range(4):
        assert torch.equal(a._tensors()[i], b._tensors()[i])
    assert torch.equal(a.levels("test"), b.levels("test")) and a.levels("train").shape == (300, 2)
    x, _ = a.test_dataset_raw()[0]
    assert x.shape == (1, 40, 40) and a.input_size == (40, 40)
    plain = FashionMNISTDataModule(val_size=0)
    plain.setup("test")
    assert torch.equal(a._tensors()[3], plain._tensors()[3][:100])  # each canvas keeps its item's label
    count, side = a.levels("test").unbind(1)
    assert 0 <= int(count.min()) and int(count.max()) <= 8 and 20 <= int(side.min()) and int(side.max()) <= 32
    assert len(count.unique()) > 3  # the difficulty varies
    more = _loaded(tmp_path / "a", distractors=[8, 8])
    assert set(more.levels("test")[:, 0].tolist()) == {8}
    assert float(more._tensors()[2].float().mean()) > float(a._tensors()[2].float().mean())  # more ink


def test_the_cache_is_used_when_right_and_regenerated_when_not(tmp_path: Path, monkeypatch, capsys) -> None:  # noqa: ANN001
    first = _loaded(tmp_path)
    (cache,) = tmp_path.glob("cluttered-fashion-mnist-*.npz")
    calls = []
    real = cluttered.clutter
    monkeypatch.setattr(cluttered, "clutter", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = _loaded(tmp_path)
    assert calls == [] and torch.equal(again._tensors()[0], first._tensors()[0])  # read, not generated
    # tampered: one canvas changed, the header left as it was
    with np.load(cache, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["test"][0, 0, 0] ^= 0xFF
    np.savez_compressed(cache, **arrays)
    tampered = _loaded(tmp_path)
    assert calls == [1, 1] and "cannot be trusted" in capsys.readouterr().err
    assert torch.equal(tampered._tensors()[2], first._tensors()[2])  # regenerated as it was
    cache.write_bytes(b"not an npz")
    assert torch.equal(_loaded(tmp_path)._tensors()[2], first._tensors()[2])
    assert "cannot be trusted" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs", [{"scale": [30, 20]}, {"scale": [20, 50]}, {"distractors": [-1, 3]},
                                    {"canvas": 10}, {"distractor_size": 40}, {"train_images": 0}])  # fmt: skip
def test_parameters_out_of_range_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ClutteredFashionMNISTDataModule(**kwargs)


def test_results_by_level_and_their_rank_correlation() -> None:
    from iamnn.evaluation import by_level

    levels = torch.tensor([[0, 20], [0, 32], [4, 20], [8, 32]])
    macs = torch.tensor([10, 10, 20, 40])
    correct = torch.tensor([True, True, False, True])
    iterations = torch.tensor([[1, 1], [1, 1], [2, 1], [3, 3]])
    result = by_level(levels, ("distractors", "object_px"), macs, correct, iterations)
    rows = {r["level"]: r for r in result["distractors"]["levels"]}
    assert [rows[v]["images"] for v in (0, 4, 8)] == [2, 1, 1]
    assert rows[0]["top1"] == 100.0 and rows[4]["top1"] == 0.0 and rows[8]["macs_mean"] == 40.0
    assert rows[8]["iterations_mean"] == [3.0, 3.0]
    assert result["distractors"]["spearman_macs"] == pytest.approx(1.0)  # MACs rise with every distractor
    same = by_level(levels, ("distractors", "object_px"), torch.full((4,), 7), correct)
    assert same["distractors"]["spearman_macs"] is None  # a fixed depth: nothing to correlate


def test_report_and_frontier_break_a_cluttered_run_down_by_level(tmp_path: Path, fit_digits) -> None:  # noqa: ANN001
    from iamnn.frontier import build_frontier
    from iamnn.report import build_report

    run = fit_digits(tmp_path / "runs", "cluttered", "--data", "iamnn.data.ClutteredFashionMNISTDataModule",
                     "--data.data_dir", str(tmp_path), "--data.train_images", "300", "--data.test_images", "100",
                     "--data.val_size", "50", "--trainer.max_epochs", "1")  # fmt: skip
    frontier = build_frontier([run], tmp_path / "frontier", budgets=0)
    record = frontier["models"][0]
    assert record["dataset"] == "ClutteredFashionMNISTDataModule"
    for column in ("distractors", "object_px"):
        assert sum(r["images"] for r in record["by_level"][column]["levels"]) == 100
        assert "spearman_macs" in record["by_level"][column]
    assert "## By difficulty level" in (tmp_path / "frontier" / "frontier.md").read_text()
    report = build_report([run], tmp_path / "report", sweep=False)
    assert report["models"][0]["by_level"] == record["by_level"]
    assert "by distractors" in (tmp_path / "report" / "report.md").read_text()


def test_the_shipped_cluttered_model_loads_in_its_regime_and_opens_in_the_app() -> None:
    import iamnn
    from iamnn.app import Explorer
    from iamnn.models import Cascade, Pass

    model = iamnn.create_model("iamnn_r34_cluttered_fmnist", pretrained=True)
    assert isinstance(model.halting, Cascade) and model.halting.passes == (Pass(2), Pass(2, "flip"))
    assert model.data_config["dataset"] == "ClutteredFashionMNISTDataModule"
    assert tuple(model.data_config["input_size"]) == (40, 40)
    with torch.no_grad():
        _, stats = model(torch.randn(4, 1, 40, 40), return_stats=True)
    k2 = model.max_macs((40, 40), 2)
    assert set(stats.macs.tolist()) <= {k2, 2 * k2}  # one pass, or both
    explorer = Explorer(model, test_images=0)  # `iamnn app --model iamnn_r34_cluttered_fmnist`
    assert explorer.cascade is not None
