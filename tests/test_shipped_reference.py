"""The shipped model gives, to float rounding, the outputs it gave before the code was restructured.

``tests/data/shipped_reference.json`` holds its logits, iterations and MACs on 16 fixed input
patterns, computed by the code of commit 01c17f6 (before the halting-policy seam and the package
layers): in PyTorch under ``act`` (ε = 0.01 and 0.5, batched and batch 1), ``full`` and k = 2, and
from its ONNX export under ``act``. Any change of algorithm shows here.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import iamnn

REFERENCE = json.loads((Path(__file__).parent / "data" / "shipped_reference.json").read_text())


def patterns(n: int = 16) -> torch.Tensor:
    """(n, 1, 28, 28) deterministic inputs of growing amplitude (no RNG: the same on every machine)."""
    i = torch.arange(28.0)
    b = torch.arange(1.0, n + 1)[:, None, None]
    waves = torch.sin(0.37 * b * i[None, :, None] + 0.23 * (b % 5 + 1) * i[None, None, :])
    return (waves * torch.cos(0.11 * b * i[None, None, :]) * (b / 4))[:, None]


@pytest.fixture(scope="module")
def shipped() -> iamnn.IamNN:
    return iamnn.create_model("iamnn_r34_fmnist", pretrained=True).eval()


def _check(logits: torch.Tensor, want: dict, iterations: torch.Tensor | None = None) -> None:
    torch.testing.assert_close(logits, torch.tensor(want["logits"]), atol=1e-4, rtol=0)
    if iterations is not None:
        assert iterations.tolist() == want["iterations"]


@pytest.mark.parametrize(("key", "halting"), [("act", "act"), ("full", "full"), ("2", 2), ("act_eps0.5", None)])
@torch.no_grad()
def test_pytorch_outputs_unchanged(shipped: iamnn.IamNN, key: str, halting: object) -> None:
    policy = iamnn.ACT(epsilon=0.5) if halting is None else halting
    logits, stats = shipped(patterns(), return_stats=True, halting=policy)
    want = REFERENCE[f"torch_{key}"]
    _check(logits, want, stats.iterations)
    assert stats.macs.tolist() == want["macs"]


@torch.no_grad()
def test_batch_one_outputs_unchanged(shipped: iamnn.IamNN) -> None:
    x = patterns()
    logits = torch.cat([shipped(x[j : j + 1], halting=iamnn.ACT(epsilon=0.5)) for j in range(len(x))])
    _check(logits, REFERENCE["torch_act_eps0.5_batch1"])


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs the export extra")
@pytest.mark.parametrize("epsilon", [0.01, 0.5])
def test_onnx_export_outputs_unchanged(shipped: iamnn.IamNN, epsilon: float, tmp_path: Path) -> None:
    from iamnn.export import OnnxModel, export_onnx

    path = export_onnx(shipped, tmp_path / "m.onnx", input_size=(28, 28), halting=iamnn.ACT(epsilon=epsilon))
    logits, iterations = OnnxModel(path, threads=1)(patterns())
    _check(torch.from_numpy(logits), REFERENCE[f"onnx_act_eps{epsilon}"], torch.from_numpy(iterations))
