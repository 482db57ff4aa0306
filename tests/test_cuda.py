"""On a CUDA device: the CPU's answers, training under bf16 autocast, and `iamnn bench --device cuda`.

Skipped where PyTorch sees no CUDA device (the CI machine has none); `benchmarks/gpu_check.sh`
runs this module on a GPU machine. Comparisons run in float64, where a GPU's convolution
algorithms (TF32 included) cannot move a halting score across its threshold.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from iamnn.cli import main
from iamnn.models.fold import fold_batchnorm
from iamnn.models.halting import ACT
from tests.helpers import varied_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


@pytest.mark.parametrize("name", ["iamnn_r34", "iamnn_mobile_r34"])
@pytest.mark.parametrize("fold", [False, True], ids=["eval", "folded"])
@pytest.mark.parametrize("halting", ["act", ACT(0.05, min_iterations=2), "full", 2])
def test_cuda_gives_the_cpus_answers(name: str, fold: bool, halting: object) -> None:
    x, model = varied_model(name, 32)
    model = (fold_batchnorm(model) if fold else model).double()
    with torch.inference_mode():
        ref_logits, ref = model(x.double(), return_stats=True, halting=halting)
        model = model.to(CUDA)
        logits, stats = model(x.double().to(CUDA), return_stats=True, halting=halting)
        one, one_stats = model(x[:1].double().to(CUDA), return_stats=True, halting=halting)  # a batch of one
    if halting == "act":
        assert len(ref.iterations.unique(dim=0)) > 3  # samples really halt at different iterations
    assert torch.equal(stats.iterations.cpu(), ref.iterations)
    assert torch.equal(one_stats.iterations.cpu(), ref.iterations[:1])
    torch.testing.assert_close(logits.cpu(), ref_logits, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(stats.ponder.cpu(), ref.ponder)
    torch.testing.assert_close(stats.macs.cpu(), ref.macs)
    torch.testing.assert_close(one.cpu(), ref_logits[:1], rtol=1e-9, atol=1e-9)


def test_cuda_gradients_equal_the_cpus() -> None:
    x, model = varied_model(batch=16)
    model.train().double()
    target = torch.arange(16) % 7
    grads = []
    for device in ("cpu", CUDA):
        net = model.to(device)
        net.zero_grad()
        logits, stats = net(x.double().to(device), return_stats=True)
        loss = torch.nn.functional.cross_entropy(logits, target.to(device)) + 0.01 * stats.ponder.sum(1).mean()
        loss.backward()
        grads.append({n: p.grad.cpu() for n, p in net.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any("halting_unit" in n for n in grads[0])
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-7, atol=1e-9, msg=n)


def test_bf16_autocast_training_on_cuda_stays_finite() -> None:
    x, model = varied_model(batch=64)
    model = model.train().to(CUDA)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, target = x.to(CUDA), (torch.arange(64) % 7).to(CUDA)
    for step in range(5):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits, stats = model(x, return_stats=True)
            loss = torch.nn.functional.cross_entropy(logits.float(), target) + 0.01 * stats.ponder.sum(1).mean()
        if step == 0:  # compaction runs: samples halt apart (a few steps at this rate may end that)
            assert len(stats.iterations.unique(dim=0)) > 1
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bench_runs_on_cuda(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    main(["bench", "--model", "iamnn_r34", "--width", "0.0625", "--stem", "cifar", "--input-size", "16",
          "--batch-sizes", "1,4", "--smoke", "--device", "cuda", "--json", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    assert result["device"].startswith("cuda") and result["act_kernel"] is False
    assert all(row["latency_p50_ms"] > 0 for row in result["rows"])
