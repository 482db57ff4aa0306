"""The ACT kernel (``iamnn.models.act_kernel``): the same answers as the PyTorch paths at batch 1
and on a batch, and a clean fallback when it cannot build."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import iamnn
from iamnn.models import act_kernel
from iamnn.models.fold import FoldedProcessingBlock, fold_batchnorm
from iamnn.models.halting import ACT
from tests.helpers import spread_halting, varied_model

needs_compiler = pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler: the kernel cannot build"
)


def _folded(
    batch: int = 12, channels_last: bool = True, name: str = "iamnn_r34"
) -> tuple[torch.Tensor, torch.nn.Module]:
    """A folded model whose samples halt at different iterations, and its inputs (two decades of scale)."""
    x, model = varied_model(name, batch)
    return x, fold_batchnorm(model, channels_last=channels_last)


def _one_by_one(model: torch.nn.Module, x: torch.Tensor, halting: object = None) -> tuple[torch.Tensor, ...]:
    with torch.inference_mode():
        runs = [model(x[b : b + 1], return_stats=True, halting=halting) for b in range(len(x))]
    return (torch.cat([r[0] for r in runs]), torch.cat([r[1].iterations for r in runs]),
            torch.cat([r[1].ponder for r in runs]))  # fmt: skip


def _batched(model: torch.nn.Module, x: torch.Tensor, halting: object) -> tuple[torch.Tensor, ...]:
    with torch.inference_mode():
        logits, stats = model(x, return_stats=True, halting=halting)
    return logits, stats.iterations, stats.ponder


@needs_compiler
@pytest.mark.parametrize(
    "name, fused", [("iamnn_r34", False), ("iamnn_r34", True), ("iamnn_mobile_r34", False)],
    ids=["eager-block", "fused-block", "mobile-block"],
)  # fmt: skip
@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("policy", [ACT(0.01), ACT(0.05, min_iterations=2)], ids=["act", "act-min2"])
def test_kernel_gives_the_pytorch_paths_answers(
    name: str, fused: bool, channels_last: bool, policy: ACT, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel at batch 1 and on a batch (with compaction) == the PyTorch paths: iterations
    exactly, logits and ponder cost to float rounding (the kernel sums in another order)."""
    monkeypatch.setattr(FoldedProcessingBlock, "fused_min_pixels", 0 if fused else 10**9)
    x, model = _folded(channels_last=channels_last, name=name)
    used: dict[str, list[object]] = {"one_sample_halting": [], "halting_step": []}

    def spy(path: str) -> object:
        def run(*args: object) -> object:
            used[path].append(getattr(act_kernel, path)(*args))
            return used[path][-1]

        return run

    for path in used:
        monkeypatch.setattr(f"iamnn.models.iamnn.{path}", spy(path))
    kernel_runs = _one_by_one(model, x, policy), _batched(model, x, policy)
    for path, results in used.items():  # batch 1 took one_sample_halting, the batch halting_step
        assert results and all(r is not None for r in results), f"the kernel did not run ({path})"
    monkeypatch.setattr(act_kernel, "library", lambda: None)
    reference = _one_by_one(model, x, policy)
    if policy.min_iterations == 0:  # (with a minimum, the mobile model's samples all take 3/2/6/3)
        assert len(reference[1].unique(dim=0)) > 2, "the test needs samples that halt at different iterations"
    assert torch.equal(_batched(model, x, policy)[1], reference[1])
    for logits, iterations, ponder in kernel_runs:
        assert torch.equal(iterations, reference[1])
        torch.testing.assert_close(logits, reference[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ponder, reference[2], atol=1e-5, rtol=1e-5)


@needs_compiler
def test_kernel_stays_out_of_what_it_does_not_cover() -> None:
    """Other policies, unfolded models, float64, autograd and an operator counter take the PyTorch path."""
    _, folded = _folded(batch=2)
    stage, x0 = folded.stages[0], torch.randn(1, folded.stages[0].in_channels, 8, 8)
    with torch.inference_mode():
        unfolded = iamnn.create_model("iamnn_r34", stem="cifar", num_classes=7, width=1 / 16).eval()
        for path in (act_kernel.halting_step, act_kernel.one_sample_halting):
            assert path(stage, x0, ACT()) is not None
            assert path(stage, x0, folded.policies("pondernet")[0]) is None
            assert path(stage, x0.double(), ACT()) is None
            assert path(unfolded.stages[0], x0, ACT()) is None
    for path in (act_kernel.halting_step, act_kernel.one_sample_halting):
        with torch.enable_grad():
            assert path(stage, x0, ACT()) is None
        with torch.inference_mode(), FlopCounterMode(display=False):  # it would hide MACs from the counter
            assert path(stage, x0, ACT()) is None


def test_without_a_compiler_the_model_runs_on_pytorch(monkeypatch: pytest.MonkeyPatch, tmp_path, capsys) -> None:
    monkeypatch.setenv("IAMNN_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    act_kernel.library.cache_clear()
    try:
        assert act_kernel.library() is None
        assert "iamnn: note: the ACT kernel did not build" in capsys.readouterr().err
        x, model = _folded(batch=3)
        logits, iterations, _ = _one_by_one(model, x, "act")
        assert logits.shape == (3, 7) and iterations.shape == (3, 4)
        monkeypatch.setenv("IAMNN_KERNELS", "0")
        act_kernel.library.cache_clear()
        assert act_kernel.library() is None  # switched off: not even tried
    finally:
        act_kernel.library.cache_clear()


@needs_compiler
def test_two_processes_share_one_build(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The library is compiled once into the cache (under a file lock) and reused."""
    monkeypatch.setenv("IAMNN_KERNEL_CACHE", str(tmp_path))
    act_kernel.library.cache_clear()
    try:
        assert act_kernel.library() is not None
        built = sorted(tmp_path.glob("act_kernel-*.so"))
        assert len(built) == 1 and not list(tmp_path.glob("*.tmp"))
        act_kernel.library.cache_clear()
        mtime = built[0].stat().st_mtime_ns
        assert act_kernel.library() is not None
        assert built[0].stat().st_mtime_ns == mtime  # not rebuilt
    finally:
        act_kernel.library.cache_clear()


@needs_compiler
def test_threads_sharing_a_model_get_their_own_answers() -> None:
    """Concurrent batch-1 calls on one folded model (a threaded server) do not share buffers."""
    x, model = _folded(batch=12)
    alone = _one_by_one(model, x, "act")

    def one(b: int) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            logits, stats = model(x[b : b + 1], return_stats=True)
        return logits[0], stats.iterations[0]

    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(one, list(range(len(x))) * 4))
    for k, (logits, iterations) in enumerate(together):
        assert torch.equal(iterations, alone[1][k % len(x)])
        torch.testing.assert_close(logits, alone[0][k % len(x)], atol=1e-5, rtol=1e-5)


@needs_compiler
@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("first", [True, False], ids=["first", "accumulate"])
@pytest.mark.parametrize("states", [1, 3])
@pytest.mark.parametrize("upstream", ["same-layout", "other-layout"])
def test_weighted_sum_has_addcmuls_values_and_gradients(
    channels_last: bool, first: bool, states: int, upstream: str
) -> None:
    """y + Σ p_j·s_j in one C pass (forward, and backward under autograd) == one ``torch.addcmul``
    per state, values and gradients; at inference in place, the same float32 numbers; a gradient
    in another layout is read in the states' layout."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y0, *s0 = (
        torch.randn(6, 8, 13, 11).contiguous(memory_format=fmt) for _ in range(1 + states)
    )  # 1144 floats a sample: more than one of the kernel's blocks
    p0, r = [torch.rand(6) for _ in range(states)], torch.randn(6, 8, 13, 11)
    other = torch.contiguous_format if channels_last else torch.channels_last
    r = r.contiguous(memory_format=fmt if upstream == "same-layout" else other)

    def reference(y: torch.Tensor | None, terms: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        for p, s in terms:
            y = p[:, None, None, None] * s if y is None else torch.addcmul(y, p[:, None, None, None], s)
        return y

    results = []
    for add in (act_kernel.weighted_sum, reference):
        y, ps, ss = (
            y0.clone().requires_grad_(),
            [p.clone().requires_grad_() for p in p0],
            [s.clone().requires_grad_() for s in s0],
        )
        out = add(None if first else y, list(zip(ps, ss, strict=True)))
        (out * r).sum().backward()
        results.append((out.detach(), *(p.grad for p in ps), *(s.grad for s in ss), None if first else y.grad))
    assert "WeightedSum" in type(act_kernel.weighted_sum(None, [(p0[0].requires_grad_(), s0[0])]).grad_fn).__name__
    for got, want in zip(*results, strict=True):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with torch.inference_mode():  # no autograd: in place into y, the numbers the per-iteration kernel adds
        y = y0.clone()
        out = act_kernel.weighted_sum(None if first else y, list(zip(p0, s0, strict=True)))
        want = reference(None if first else y0.clone(), list(zip(p0, s0, strict=True)))
        assert first or out.data_ptr() == y.data_ptr()
        torch.testing.assert_close(out, want, atol=1e-6, rtol=1e-6)


@needs_compiler
@pytest.mark.parametrize("first", [True, False], ids=["from-zero", "residual"])
@pytest.mark.parametrize("upstream", ["same-layout", "other-layout"])
def test_pooled_update_has_pytorchs_values_and_gradients(first: bool, upstream: str) -> None:
    """Training's s = ReLU(s_prev + u) with GAP(s) and GAP(u) in one pass == the PyTorch ops, values
    and gradients (a gradient for every output, some of s's entries exactly 0 after the ReLU)."""
    torch.manual_seed(0)
    fmt = torch.channels_last
    s0, u0 = (torch.randn(6, 16, 5, 5).contiguous(memory_format=fmt) for _ in range(2))
    r, rs, ru = torch.randn(6, 16, 5, 5), torch.randn(6, 16), torch.randn(6, 16)
    r = r.contiguous(memory_format=fmt if upstream == "same-layout" else torch.contiguous_format)

    def reference(s_prev: torch.Tensor | None, u: torch.Tensor) -> tuple[torch.Tensor, ...]:
        s = torch.relu(u if s_prev is None else s_prev + u)
        return s, s.mean((2, 3)), u.mean((2, 3))

    results = []
    for update in (act_kernel.pooled_relu_update, reference):
        s_prev, u = (t.clone().requires_grad_() for t in (s0, u0))
        s, s_gap, u_gap = update(None if first else s_prev, u)
        ((s * r).sum() + (s_gap * rs).sum() + (u_gap * ru).sum()).backward()
        results.append((s.detach(), s_gap.detach(), u_gap.detach(), u.grad, None if first else s_prev.grad))
    assert "PooledUpdate" in type(act_kernel.pooled_relu_update(None, u0.requires_grad_())[0].grad_fn).__name__
    for got, want in zip(*results, strict=True):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # inference, another layout: the PyTorch path
        assert act_kernel.pooled_relu_update(None, u0) is None
    assert act_kernel.pooled_relu_update(None, u0.contiguous().requires_grad_()) is None


@needs_compiler
def test_training_gradients_are_the_same_with_and_without_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """A training step's gradients (ACT, samples halting apart, compaction) do not depend on the kernel."""
    torch.manual_seed(0)
    x = torch.randn(12, 3, 16, 16) * torch.logspace(-1, 1, 12)[:, None, None, None]
    model = spread_halting(iamnn.create_model("iamnn_r34", stem="cifar", num_classes=7, width=1 / 16), x).train()
    grads = []
    for built in (True, False):
        if not built:
            monkeypatch.setattr(act_kernel, "library", lambda: None)
        model.zero_grad()
        torch.manual_seed(1)  # the same BatchNorm batch statistics and halting: the same graph
        logits, stats = model(x.contiguous(memory_format=torch.channels_last), return_stats=True)
        (logits.square().mean() + 0.01 * stats.ponder.sum()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any("halting_unit" in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-4, rtol=1e-4, msg=name)


@needs_compiler
def test_replaced_weights_are_packed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel holds pointers to the halting units' tensors: when ``.to()`` replaces them (or a
    bias changes in place), it reads the new ones, never freed memory or a stale copy."""
    x, model = _folded(batch=6)
    before = _one_by_one(model, x, "act")
    model.to(torch.float64).to(torch.float32)  # every buffer is a new tensor now
    torch.testing.assert_close(_one_by_one(model, x, "act")[0], before[0], atol=1e-6, rtol=1e-6)
    with torch.no_grad():
        for stage in model.stages:
            stage.halting_unit.b3 += 2.0  # higher scores: samples stop earlier
    after = _one_by_one(model, x, "act")
    assert after[1].sum() < before[1].sum()
    monkeypatch.setattr(act_kernel, "library", lambda: None)
    reference = _one_by_one(model, x, "act")
    assert torch.equal(after[1], reference[1])
    torch.testing.assert_close(after[0], reference[0], atol=1e-5, rtol=1e-5)


def _plant(folder: Path, marker: Path) -> list[Path]:
    """A library whose constructor touches ``marker``, under every name the kernel may load."""
    source = folder.parent / "planted.c"
    source.write_text(f'#include <stdio.h>\n__attribute__((constructor)) static void run(void) '
                      f'{{ FILE *f = fopen("{marker}", "w"); if (f) fclose(f); }}\n')  # fmt: skip
    built = folder.parent / "planted.so"
    subprocess.run([shutil.which("cc") or "gcc", "-shared", "-fPIC", "-o", str(built), str(source)], check=True)
    names = _cache_names(folder)
    return [built, *names]


@needs_compiler
@pytest.mark.parametrize("plant", ["file", "symlink", "open_folder", "other_user"])
def test_a_planted_library_in_the_kernel_cache_is_never_loaded(tmp_path, monkeypatch, plant: str) -> None:  # noqa: ANN001
    """A library planted under the cache's name had its constructor run in the process that loaded
    it: only a library this user built, in a private folder, whose hash was recorded, is loaded."""
    cache, marker = tmp_path / "cache", tmp_path / "constructor-ran"
    cache.mkdir()
    built, *names = _plant(cache, marker)
    for name in names:
        if plant == "symlink":
            name.symlink_to(built)
        else:
            shutil.copy(built, name)
            name.with_name(name.name + ".sha256").write_text("0" * 64 + "\n")  # a record that does not match
    if plant == "open_folder":
        os.chmod(cache, 0o777)
    if plant == "other_user":  # a library another user wrote, with a record that matches it
        if os.getuid() != 0:
            pytest.skip("giving a file to another user needs root")
        for name in names:
            name.with_name(name.name + ".sha256").write_text(hashlib.sha256(name.read_bytes()).hexdigest() + "\n")
            os.chown(name, 65534, 65534)
    monkeypatch.setenv("IAMNN_KERNEL_CACHE", str(cache))
    act_kernel.library.cache_clear()
    act_kernel._private_dir.cache_clear()
    try:
        assert act_kernel.library() is not None  # the real kernel, built afresh
        assert not marker.exists(), "the planted library's constructor ran"
    finally:
        act_kernel.library.cache_clear()
        act_kernel._private_dir.cache_clear()


def _cache_names(folder: Path) -> list[Path]:
    """The names the kernel looks for in ``folder``, as ``_compile`` derives them."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    names = []
    for flags in act_kernel.FLAGS:
        key = hashlib.sha256(b"\0".join([act_kernel.SOURCE.read_bytes(), compiler.encode(), *map(str.encode, flags),
                                         act_kernel._cpu_id()])).hexdigest()  # fmt: skip
        names.append(folder / f"act_kernel-{key[:16]}.so")
    return names


@needs_compiler
def test_a_read_only_cache_serves_its_library_and_builds_elsewhere_once(tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    """A read-only cache or a zero-byte library fell back to PyTorch with a Python warning (and its
    source line) on every run: a library it holds is used, else one is built elsewhere, said once."""
    served, broken = tmp_path / "served", tmp_path / "broken"
    broken.mkdir()
    for name in _cache_names(broken):
        name.write_bytes(b"")
    try:
        for cache in (served, broken):
            monkeypatch.setenv("IAMNN_KERNEL_CACHE", str(cache))
            act_kernel.library.cache_clear()
            act_kernel._private_dir.cache_clear()
            if cache == served:
                assert act_kernel.library() is not None  # built into it, then the folder made read-only
                act_kernel.library.cache_clear()
            os.chmod(cache, 0o500)
            capsys.readouterr()
            assert act_kernel.library() is not None
            err = capsys.readouterr().err.strip().splitlines()
            if cache == served:
                assert err == []  # its own library, served from the read-only folder, silently
            else:  # rebuilt over the empty file, or (where the folder really is read-only: not as root) elsewhere
                rebuilt = any(act_kernel._verified(name) for name in _cache_names(cache))
                assert (rebuilt and err == []) or (len(err) == 1 and err[0].startswith("iamnn: note: the kernel cache"))
    finally:
        for cache in (served, broken):
            os.chmod(cache, 0o700)
        act_kernel.library.cache_clear()
        act_kernel._private_dir.cache_clear()
