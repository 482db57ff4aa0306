"""`iamnn bench` in smoke mode: one table, and a JSON with every column."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iamnn.bench import BenchError, bench_model, results_file, row
from iamnn.cli import main
from iamnn.models import act_kernel


def _bench_smoke(out: Path, model: str, batch_sizes: str, *extra: str) -> None:
    """`iamnn bench --smoke` at a tiny width and input size, one thread, JSON to ``out``."""
    main(["bench", "--model", model, "--width", "0.0625", "--stem", "cifar", "--input-size", "16",
          "--batch-sizes", batch_sizes, "--threads", "1", "--smoke", *extra, "--json", str(out)])  # fmt: skip


def test_bench_smoke_writes_every_column(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bench.json"
    _bench_smoke(out, "iamnn_r34", "1,4")
    printed = capsys.readouterr().out
    assert "IamNN act" in printed and "speedup" in printed
    assert "mean ms @1" in printed and "img/s @4" in printed and "img/s @1" not in printed  # one unit per batch size
    result = json.loads(out.read_text())
    assert result["threads"] == 1 and result["inputs"].startswith("synthetic")
    # every row names itself: read by name, never by position
    assert [r["name"] for r in result["rows"]] == ["baseline", "full", "act", "fixed-1", "no-halt", "bottleneck_twin"]
    labels = {r["name"]: r["row"] for r in result["rows"]}
    assert labels["baseline"] == "ResNet resnet34" and labels["bottleneck_twin"] == "ResNet resnet50"
    assert labels["full"] == "IamNN full" and labels["act"] == "IamNN act" and labels["fixed-1"] == "IamNN fixed-1"
    assert "halting machinery: act / no-halt" in printed
    for each in result["rows"]:
        for key in ("params", "macs_mean", "latency_p50_ms", "latency_p95_ms", "images_per_s@1", "images_per_s@4"):
            assert each[key] > 0, (each["row"], key)
    act, full = row(result, "act"), row(result, "full")
    for key in ("mac_ratio", "speedup_over_full@1", "efficiency@1", "efficiency@4", "efficiency_p50@1"):
        assert act[key] > 0
    assert full["time_per_mac_vs_baseline@1"] > 0 and full["time_per_mac_vs_bottleneck_twin@4"] > 0
    assert row(result, "fixed-1")["macs_mean"] < full["macs_mean"]
    assert result["train_step"]["full"] > 0 and result["train_step"]["act"] > 0 and result["train_step"]["no-halt"] > 0
    # no-halt runs act's most common per-stage schedule as fixed counts, named in its row
    schedule = act["no_halt_iterations"]
    assert labels["no-halt"] == "IamNN no-halt " + "/".join(map(str, schedule)) and 0 < act["no_halt_share"] <= 1
    for key in ("halting_overhead@1", "halting_overhead@4", "halting_overhead_p50@1", "no_halt_bound@4"):
        assert act[key] > 0, key
    assert result["train_step"]["halting_overhead"] > 0
    # the title says where act's halting steps ran: the C kernel wherever it builds
    assert result["act_kernel"] == act_kernel.available()
    assert f"ACT steps in {'C' if result['act_kernel'] else 'PyTorch'}" in printed


def test_bench_onnxruntime_smoke(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bench.json"
    _bench_smoke(out, "iamnn_r18", "1,2", "--runtime", "onnxruntime")
    result = json.loads(out.read_text())
    assert result["runtime"] == "onnxruntime" and [r["name"] for r in result["rows"]] == [
        "baseline",
        "full",
        "act",
        "fixed-1",
        "no-halt",
    ]  # no bottleneck twin for r18
    assert all(r["images_per_s@2"] > 0 for r in result["rows"])
    assert "ACT steps in the ONNX graph" in capsys.readouterr().out
    assert result["act_kernel"] is False  # the graph's own ops, not the kernel


@pytest.mark.parametrize(
    "device, runtime, says",
    [("cuda:7", "torch", "CUDA device"), ("tpu", "torch", "--device tpu:"), ("mps", "torch", "cpu or cuda"),
     ("cuda", "onnxruntime", "onnxruntime rows run on the CPU")],
)  # fmt: skip
def test_bench_refuses_a_device_it_cannot_use_in_one_line(device: str, runtime: str, says: str, capsys) -> None:
    import torch

    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--model", "iamnn_r18", "--smoke", "--device", device, "--runtime", runtime])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and says in err, err


def test_the_bench_notices_another_process_on_its_cores() -> None:
    import subprocess
    import sys
    import time

    from iamnn.bench import Disturbance

    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        with Disturbance() as busy:
            time.sleep(1.0)
    finally:
        hog.kill()
    assert busy.other_cores is not None and busy.other_cores > 0.6, busy.summary()
    assert not busy.summary()["trustworthy"] and busy.summary()["wall_s"] >= 1.0


def test_bench_rows_are_read_by_name_and_the_service_picks_the_file() -> None:
    result = {"rows": [{"name": "act", "row": "IamNN act"}, {"name": "full", "row": "IamNN full"}]}
    assert row(result, "full")["row"] == "IamNN full" and row(result, "bottleneck_twin") is None
    assert results_file("torch") == Path("benchmarks/results/bench.json")
    assert results_file("onnxruntime") == Path("benchmarks/results/bench.onnxruntime.json")
    assert bench_model("iamnn_r18", width=0.0625, stem="cifar").config["kwargs"] == {"width": 0.0625, "stem": "cifar"}
    with pytest.raises(BenchError, match="give an iamnn_\\* model"):
        bench_model("resnet18")
