"""ONNX export: the halting loop stays in the graph, onnxruntime matches PyTorch, early exit saves time."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import spread_halting
from torch import nn

import iamnn
from iamnn.models.iamnn import IamNN

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from iamnn.export import OnnxModel, export_onnx  # noqa: E402

SMALL = 1 / 16  # width multiplier that keeps every preset tiny
HW = (16, 16)  # cifar stem: stage 4 still sees a 2x2 map
CONFIG = {
    "model": "iamnn_r34",
    "kwargs": {"stem": "cifar", "num_classes": 10, "width": SMALL, "in_chans": 1},
    "data": {"in_chans": 1, "input_size": list(HW), "mean": [0.5], "std": [0.25], "class_names": list("abcdefghij")},
}


def _varied_input(batch: int, seed: int = 0) -> torch.Tensor:
    """Inputs whose scales span two decades, so that their halting scores differ widely."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, *HW, generator=g) * torch.logspace(-1, 1, batch)[:, None, None, None]


@torch.no_grad()
def _randomise_batchnorm(model: nn.Module) -> None:
    """Non-trivial BN statistics and affine parameters, so that folding them is really tested."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0, 0.1)


@pytest.fixture(scope="module")
def act_model() -> IamNN:
    torch.manual_seed(0)
    model = iamnn.create_model("iamnn_r34", **CONFIG["kwargs"]).eval()
    _randomise_batchnorm(model)
    x = _varied_input(64)
    spread_halting(model, x)
    with torch.no_grad():  # inputs spanning two decades give large logits: rescale them to O(1)
        scale = model(x).abs().max()
        model.fc.weight /= scale
        model.fc.bias /= scale
    return model


@pytest.fixture(scope="module")
def act_onnx(act_model: IamNN, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(act_model, tmp_path_factory.mktemp("onnx") / "act.onnx", input_size=HW, config=CONFIG)


def _assert_matches(model: IamNN, runner: OnnxModel, x: torch.Tensor, halting: object = None) -> np.ndarray:
    with torch.no_grad():
        ref_logits, stats = model(x, return_stats=True, halting=halting)
    logits, iterations = runner(x)
    assert logits.shape == tuple(ref_logits.shape) and iterations.dtype == np.int64
    np.testing.assert_array_equal(iterations, stats.iterations.numpy())
    np.testing.assert_array_equal(logits.argmax(1), ref_logits.argmax(1).numpy())
    np.testing.assert_allclose(logits, ref_logits.numpy(), atol=1e-4, rtol=0)
    return iterations


def test_act_export_matches_pytorch(act_model: IamNN, act_onnx: Path) -> None:
    runner = OnnxModel(act_onnx, threads=1)
    x = _varied_input(64)
    iterations = _assert_matches(act_model, runner, x)  # one batch of 64: halted samples are masked
    for k in range(4):
        assert len(np.unique(iterations[:, k])) > 1, f"stage {k}: the test needs samples halting at different points"
    for j in (0, 21, 42, 63):  # batch 1 gives the same answer as the sample's row of the batch
        logits, n = runner(x[j].numpy())  # (C, H, W) is taken as a batch of one
        np.testing.assert_array_equal(n[0], iterations[j])
        assert logits.shape == (1, 10)


def test_graph_keeps_a_data_dependent_loop_per_stage(act_onnx: Path) -> None:
    graph = onnx.load(act_onnx).graph
    loops = [node for node in graph.node if node.op_type == "Loop"]
    assert len(loops) == 4  # one per stage, every r34 stage has N_k > 1
    for loop in loops:
        assert loop.input[0] == "", "no trip count: only the halting condition ends the loop"
        body = next(a.g for a in loop.attribute if a.name == "body")
        ops = {node.op_type for node in body.node}
        assert {"Conv", "Sigmoid", "GreaterOrEqual"} <= ops  # block, halting unit, ACT decision in the body
    assert [o.name for o in graph.output] == ["logits", "iterations"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch


def test_act_with_min_iterations_matches_pytorch(act_model: IamNN, tmp_path: Path) -> None:
    """Iterations before ``min_iterations`` get no score (the policy's ``wants_score``), as in PyTorch:
    with 3, iteration 1 (before the Loop) and iteration 2 (inside it) are unscored."""
    least = 3
    halting = iamnn.ACT(min_iterations=least)
    path = export_onnx(act_model, tmp_path / "min.onnx", input_size=HW, halting=halting)
    iterations = _assert_matches(act_model, OnnxModel(path, threads=1), _varied_input(16), halting=halting)
    assert (iterations >= least).all() and len(np.unique(iterations)) > 1


def test_config_is_stored_in_the_onnx_file(act_onnx: Path) -> None:
    assert OnnxModel(act_onnx).config == CONFIG


def test_fixed_halting_mode(act_model: IamNN, tmp_path: Path) -> None:
    path = export_onnx(act_model, tmp_path / "fixed.onnx", input_size=HW, halting=2)
    iterations = _assert_matches(act_model, OnnxModel(path, threads=1), _varied_input(8), halting=2)
    assert (iterations == 2).all()
    config = act_model.model_config  # default: the create_model config, with the halting exported
    assert OnnxModel(path).config == {**config, "kwargs": {**config["kwargs"], "halting": 2}}
    # a fixed count is unrolled, its weights constants (onnxruntime pre-packs them): no Loop
    assert "Loop" not in {node.op_type for node in onnx.load(path).graph.node}


@pytest.mark.parametrize("halting", ["act", 2])
def test_mobile_export_matches_pytorch(tmp_path: Path, halting: object) -> None:
    """IamNN-Mobile (depthwise convolutions, squeeze-excitation, linear residual) keeps its loops too."""
    torch.manual_seed(0)
    model = iamnn.create_model("iamnn_mobile_r34", **{**CONFIG["kwargs"], "width": 0.25}).eval()
    _randomise_batchnorm(model)
    x = _varied_input(16)
    spread_halting(model, x)
    path = export_onnx(model, tmp_path / "mobile.onnx", input_size=HW, halting=halting)
    iterations = _assert_matches(model, OnnxModel(path, threads=1), x, halting=halting)
    if halting == "act":
        assert len(np.unique(iterations)) > 1
        assert sum(node.op_type == "Loop" for node in onnx.load(path).graph.node) == 4


def _forced(bias: float) -> IamNN:
    """iamnn_r101 (3, 4, 23, 3 iterations) whose halting units always output σ(bias)."""
    model = iamnn.create_model("iamnn_r101", **CONFIG["kwargs"]).eval()
    with torch.no_grad():
        for stage in model.stages:
            stage.halting_unit.fc3.weight.zero_()
            stage.halting_unit.fc3.bias.fill_(bias)
    return model


def test_early_exit_skips_work(tmp_path: Path) -> None:
    x = _varied_input(1).numpy()
    early = OnnxModel(export_onnx(_forced(20.0), tmp_path / "early.onnx", input_size=HW), threads=1)
    full = OnnxModel(export_onnx(_forced(-20.0), tmp_path / "full.onnx", input_size=HW), threads=1)
    assert early(x)[1].tolist() == [[1, 1, 1, 1]]
    assert full(x)[1].tolist() == [[3, 4, 23, 3]]
    times: dict[str, list[float]] = {"early": [], "full": []}
    for _ in range(25):  # interleaved, so that both see the same load; the first 5 warm up
        for name, runner in (("early", early), ("full", full)):
            start = time.perf_counter()
            runner(x)
            times[name].append(time.perf_counter() - start)
    ratio = np.median(times["full"][5:]) / np.median(times["early"][5:])
    assert ratio > 3, f"33 vs 4 iterations should cost clearly more; measured ratio {ratio:.1f}"


def test_missing_extra_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"pip install 'iamnn\[export\]'"):
        OnnxModel(tmp_path / "any.onnx")
