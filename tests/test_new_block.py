"""A processing block is one module and one registration: a toy block, defined and registered here
and nowhere else, goes through training, the report, the ONNX export and the bench (the README's
Architecture page, "Where to add")."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from helpers import run_iamnn
from torch import Tensor, nn
from torch.nn import functional as F

import iamnn
from iamnn.cost import conv_macs
from iamnn.models.blocks import (
    BLOCKS,
    FoldedBlock,
    IterationBlock,
    fold_conv_bn,
    iteration_norms,
    register_block,
    stack_iterations,
)
from iamnn.models.fold import fold_batchnorm


@register_block("plain_test")
class PlainBlock(IterationBlock):
    """u_i = BN(conv3x3(ReLU(BN(conv3x3(concat(x0, s)))))), s_i = ReLU(s + u_i): ResNet's basic block."""

    def __init__(self, in_channels: int, out_channels: int, max_iterations: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels + out_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.out_channels = out_channels
        self.norms = iteration_norms(max_iterations, out_channels, out_channels)

    def forward(self, x0: Tensor, s: Tensor | None, i: int) -> Tensor:
        bn1, bn2 = self.norms[i]
        x = torch.cat([x0, torch.zeros_like(x0[:, :1]).expand(-1, self.out_channels, -1, -1) if s is None else s], 1)
        return bn2(self.conv2(torch.relu(bn1(self.conv1(x)))))

    @staticmethod
    def update(s: Tensor | None, u: Tensor) -> Tensor:
        return torch.relu(u if s is None else s + u)

    def macs(self, hw: tuple[int, int], first: bool = False) -> int:
        return conv_macs(self.conv1, hw) + conv_macs(self.conv2, hw)

    def fold(self, memory_format: torch.memory_format) -> FoldedPlainBlock:
        return FoldedPlainBlock(self, memory_format)


class FoldedPlainBlock(FoldedBlock):
    def __init__(self, block: PlainBlock, memory_format: torch.memory_format) -> None:
        super().__init__()
        self.out_channels = block.out_channels
        folded = {name: [] for name in ("w1", "b1", "w2", "b2")}
        for bn1, bn2 in block.norms:
            for name, conv, bn in (("1", block.conv1, bn1), ("2", block.conv2, bn2)):
                w, b = fold_conv_bn(conv.weight, bn)
                folded[f"w{name}"].append(w)
                folded[f"b{name}"].append(b)
        for name, tensors in folded.items():
            self.register_buffer(name, stack_iterations(tensors, memory_format))
        self.conv1, self.conv2 = block.conv1, block.conv2

    def compute(self, x: Tensor, pick: Callable[[Tensor], Tensor], first: bool = False) -> Tensor:
        if first:  # the zero state's channels
            x = torch.cat([x, x.new_zeros(x.shape[0], self.out_channels, *x.shape[2:])], 1)
        return F.conv2d(torch.relu(F.conv2d(x, pick(self.w1), pick(self.b1), padding=1)), pick(self.w2),
                        pick(self.b2), padding=1)  # fmt: skip

    update = staticmethod(PlainBlock.update)
    macs = PlainBlock.macs


def test_the_toy_block_builds_folds_and_counts_its_macs() -> None:
    assert BLOCKS["plain_test"] is PlainBlock
    model = iamnn.create_model("iamnn_r18", stem="cifar", num_classes=5, width=1 / 16, block="plain_test").eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        logits, stats = model(x, return_stats=True, halting=2)
        folded = fold_batchnorm(model)
        torch.testing.assert_close(folded(x, halting=2), logits, atol=1e-4, rtol=1e-4)
    with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        model(x[:1], halting=2)
    assert counter.get_total_flops() // 2 == int(stats.macs[0])


def test_a_registered_block_trains_reports_exports_and_benches(fit_digits, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    run = fit_digits(tmp_path / "runs", "plain", '--model.model_kwargs={"block": "plain_test"}',
                     "--trainer.max_epochs=1", "--model.width=0.0625")  # fmt: skip
    weights = run / "model.safetensors"
    model = iamnn.load_model(weights)
    assert all(type(stage.block) is PlainBlock for stage in model.stages)

    status, _, err = run_iamnn(capsys, "report", str(run), "-o", str(tmp_path / "report"), "--quick-sweep",
                            "--test-subset", "64")  # fmt: skip
    assert status == 0, err
    assert (tmp_path / "report" / "report.md").is_file() and (tmp_path / "report" / "report.json").is_file()

    onnx = tmp_path / "plain.onnx"
    status, _, err = run_iamnn(capsys, "export", "--weights", str(weights), "-o", str(onnx))
    assert status == 0, err
    from iamnn.export import OnnxModel

    x = torch.randn(2, model.in_chans, 16, 16)
    with torch.no_grad():
        logits, stats = model.eval()(x, return_stats=True)
    onnx_logits, onnx_iterations = OnnxModel(onnx)(x)
    assert np.array_equal(onnx_iterations, stats.iterations.numpy())
    np.testing.assert_allclose(onnx_logits, logits.numpy(), atol=1e-4, rtol=1e-4)

    out = tmp_path / "bench.json"
    status, _, err = run_iamnn(capsys, "bench", "--weights", str(weights), "--smoke", "--input-size", "16",
                            "--batch-sizes", "1,2", "--threads", "1", "--json", str(out))  # fmt: skip
    assert status == 0, err
    result = json.loads(out.read_text())
    assert result["rows"] and "resnet18" in out.read_text()  # a block that names no baseline: the preset's ResNet
