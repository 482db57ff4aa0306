"""Model structure, ACT maths, compaction, gradients and MAC accounting."""

from __future__ import annotations

import pytest
import torch
from helpers import spread_halting
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import iamnn
from iamnn.cost import count_params, measure_macs, model_macs
from iamnn.models.halting import ACT
from iamnn.models.iamnn import PRESETS, IamNN

SMALL = 1 / 16  # width multiplier that keeps every preset tiny
INPUT = {"cifar": 16, "imagenet": 64}  # smallest sizes where stage 4 still has a 2x2 map


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@torch.no_grad()
def _unit_logits(model: IamNN, x: torch.Tensor) -> None:
    """Rescale the classifier so that the logits of ``x`` are O(1): inputs spanning two decades give
    logits up to ~1e4, where a 1e-5 comparison would test float32 resolution, not the code."""
    scale = model(x).abs().max()
    model.fc.weight /= scale
    model.fc.bias /= scale


def _varied_input(batch: int, size: int, channels: int = 3) -> torch.Tensor:
    """Inputs whose scales span two decades, so that their halting scores differ widely."""
    torch.manual_seed(0)
    return torch.randn(batch, channels, size, size) * torch.logspace(-1, 1, batch)[:, None, None, None]


# -- ACT maths -----------------------------------------------------------------------------------
def _run_act(h: torch.Tensor, epsilon: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Drive the ACT policy's step over dense scores (B, N_k) the way the stage loop does: returns p, N, R."""
    batch, n_max = h.shape
    p = torch.zeros_like(h)
    n = torch.zeros(batch, dtype=torch.long)
    r = torch.zeros(batch)
    cum_h = torch.zeros(batch)
    active = torch.ones(batch, dtype=torch.bool)
    for i in range(n_max):
        is_last = i == n_max - 1
        # the stage passes h_{N_k} := 1 at the last iteration
        p_i, halt, _ = ACT(epsilon).step(cum_h, torch.ones(batch) if is_last else h[:, i])
        p[active, i] = p_i[active]
        now = active & halt
        n[now], r[now] = i + 1, (1 - cum_h)[now]
        active &= ~halt
        if not is_last:
            cum_h = cum_h + h[:, i]
    return p, n, r


@settings(max_examples=200, deadline=None)
@given(
    n_max=st.integers(1, 36),
    epsilon=st.sampled_from([0.0, 0.01, 0.1]),
    seed=st.integers(0, 2**31 - 1),
    mode=st.sampled_from(["uniform", "zeros", "ones", "tiny"]),
)
def test_act_invariants(n_max: int, epsilon: float, seed: int, mode: str) -> None:
    g = torch.Generator().manual_seed(seed)
    h = {
        "uniform": lambda: torch.rand(16, n_max, generator=g),
        "zeros": lambda: torch.zeros(16, n_max),  # nobody halts before N_k
        "ones": lambda: torch.ones(16, n_max),  # everybody halts at iteration 1
        "tiny": lambda: torch.rand(16, n_max, generator=g) * 1e-3,
    }[mode]()
    p, n, r = _run_act(h, epsilon)
    assert torch.isfinite(p).all()
    assert torch.allclose(p.sum(1), torch.ones(16), atol=1e-5)  # Σ p_n = 1
    assert ((n >= 1) & (n <= n_max)).all()  # 1 ≤ N ≤ N_k
    assert ((r > 0) & (r <= 1 + 1e-6)).all()  # 0 < R ≤ 1
    for b in range(16):
        k = int(n[b])
        assert torch.allclose(p[b, : k - 1], h[b, : k - 1])  # p_n = h_n before N
        assert p[b, k:].eq(0).all()
        assert torch.isclose(p[b, k - 1], r[b])  # p_N = R
        # N is the first n with Σ_{i≤n} h_i ≥ 1 − ε, unless forced at N_k (h_{N_k} := 1)
        cum = h[b].cumsum(0)
        if k < n_max:
            assert cum[k - 1] >= 1 - epsilon
        assert (cum[: k - 1] < 1 - epsilon).all()
    if mode == "ones":
        assert n.eq(1).all() and torch.allclose(r, torch.ones(16))
    if mode == "zeros":
        assert n.eq(n_max).all() and torch.allclose(r, torch.ones(16))


@pytest.mark.parametrize("bias, expected", [(20.0, "first"), (-20.0, "last")])
def test_all_or_none_halt_early_gives_finite_outputs(bias: float, expected: str) -> None:
    model = iamnn.create_model("iamnn_r34", stem="cifar", num_classes=5, width=SMALL, halting_bias=bias)
    model.train()
    logits, stats = model(torch.randn(4, 3, 16, 16), return_stats=True)
    (logits.logsumexp(1).mean() + 0.01 * stats.ponder.sum(1).mean()).backward()
    assert torch.isfinite(logits).all() and torch.isfinite(stats.ponder).all()
    want = torch.ones(4, 4) if expected == "first" else torch.tensor(PRESETS["r34"]).expand(4, 4)
    assert torch.equal(stats.iterations, want.long())
    assert torch.allclose(stats.ponder, stats.iterations.float() + 1.0, atol=1e-3)  # ρ = N + R, R ≈ 1
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# -- compaction ----------------------------------------------------------------------------------
@torch.no_grad()
def _dense_reference(model: IamNN, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sample runs every iteration; a halted sample's output and counters are frozen."""
    x = model.maxpool(torch.relu(model.bn1(model.conv1(x))))
    counts = []
    for k, stage in enumerate(model.stages):
        if k > 0:
            x = model.pool(x)
        batch = x.shape[0]
        s = x.new_zeros(batch, stage.out_channels, *x.shape[2:])
        y = torch.zeros_like(s)
        cum_h = x.new_zeros(batch)
        running = torch.ones(batch, dtype=torch.bool)
        n = torch.zeros(batch, dtype=torch.long)
        for i in range(stage.max_iterations):
            s, u = stage.block.step(x, s, i)
            last = i == stage.max_iterations - 1
            h = torch.ones(batch) if last else stage.halting_unit(s, x, u)
            halt = running & (last | (cum_h + h >= 1 - model.epsilon))
            p = torch.where(halt, 1 - cum_h, h) * running
            y = y + p[:, None, None, None] * s
            n[halt] = i + 1
            running &= ~halt
            cum_h = cum_h + h
        x = y
        counts.append(n)
    return model.forward_head(x), torch.stack(counts, 1)


@torch.no_grad()
def _varied_halting_batch(n: int, stem: str) -> tuple[torch.Tensor, IamNN]:
    """``n`` inputs and an eval-mode IamNN-r101 whose samples halt at different iterations."""
    x = _varied_input(n, INPUT[stem])
    model = spread_halting(iamnn.create_model("iamnn_r101", stem=stem, num_classes=7, width=SMALL), x).eval()
    _unit_logits(model, x)
    return x, model


@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_compaction_matches_dense_reference(stem: str) -> None:
    x, model = _varied_halting_batch(12, stem)
    with torch.no_grad():
        logits, stats = model(x, return_stats=True)
    ref_logits, ref_iterations = _dense_reference(model, x)
    assert len(stats.iterations.unique()) > 2, "the test needs a batch that halts at different iterations"
    assert torch.equal(stats.iterations, ref_iterations)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)


# -- gradients -----------------------------------------------------------------------------------
def test_gradients_reach_halting_unit_and_shared_convs() -> None:
    x, y = _varied_input(16, 16), torch.randint(0, 10, (16,))
    model = spread_halting(iamnn.create_model("iamnn_r34", stem="cifar", num_classes=10, width=SMALL), x)
    model.train()
    logits, stats = model(x, return_stats=True)
    assert len(stats.iterations.unique()) > 1
    loss = nn.functional.cross_entropy(logits, y) + 0.01 * stats.ponder.sum(1).mean()  # CE + τ·Σ_k ρ_k
    loss.backward()
    for k, stage in enumerate(model.stages):
        for name in ("fc1", "fc2", "fc3"):
            grad = getattr(stage.halting_unit, name).weight.grad
            assert grad is not None and grad.abs().sum() > 0, f"stage {k} halting {name} has no gradient"
        for name in ("conv1", "conv2", "conv3"):
            grad = getattr(stage.block, name).weight.grad
            assert grad is not None and grad.abs().sum() > 0, f"stage {k} {name} has no gradient"


def test_ponder_gradient_flows_through_remainder() -> None:
    """ρ = N + R alone (no CE) still trains the halting unit: dρ/dh = −1 through R."""
    x = _varied_input(6, 16)
    model = spread_halting(iamnn.create_model("iamnn_r18", stem="cifar", num_classes=3, width=SMALL), x)
    _, stats = model(x, return_stats=True)
    stats.ponder.sum().backward()
    assert model.stages[0].halting_unit.fc3.bias.grad.abs() > 0


# -- MAC accounting ------------------------------------------------------------------------------
ITERATIVE = [f"iamnn_{p}" for p in sorted(PRESETS)] + ["iamnn_mobile_r18", "iamnn_mobile_r34"]


@pytest.mark.parametrize("name", ITERATIVE)
@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
@pytest.mark.parametrize("halting", ["act", "full", 1, 2])
def test_per_sample_macs_equal_flop_counter(name: str, stem: str, halting: object) -> None:
    model = iamnn.create_model(name, stem=stem, num_classes=10, width=SMALL, halting=halting)
    x = _varied_input(12, INPUT[stem])
    model = spread_halting(model, x).eval()
    with torch.no_grad():
        _, stats = model(x, return_stats=True)
        assert measure_macs(lambda: model(x)) == int(stats.macs.sum())
        for b in range(len(x)):  # and sample by sample (eval BN makes each sample independent)
            assert measure_macs(lambda b=b: model(x[b : b + 1])) == int(stats.macs[b])
    if halting == "act":
        assert len(stats.macs.unique()) > 1, "the batch should mix iteration counts"


def test_macs_grow_with_iterations() -> None:
    model = iamnn.create_model("iamnn_r101", stem="cifar", num_classes=10)
    one, full, act = (model.max_macs((32, 32), h) for h in (1, "full", "act"))
    assert one < full < act  # act's maximum adds the halting units to the full network


# -- baselines -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, stem, size, classes, params, macs",
    [
        ("resnet18", "imagenet", 224, 1000, 11_689_512, 1.81e9),
        ("resnet101", "imagenet", 224, 1000, 44_549_160, 7.80e9),
        ("resnet152", "imagenet", 224, 1000, 60_192_808, 11.51e9),
        ("resnet101", "cifar", 32, 10, 42_512_970, 2.51e9),
        ("resnet101", "cifar", 32, 100, 42_697_380, 2.51e9),
    ],
)
def test_baseline_params_and_macs_match_reference(name, stem, size, classes, params, macs) -> None:
    with torch.device("meta"):
        model = iamnn.create_model(name, stem=stem, num_classes=classes)
    assert count_params(model) == params
    assert round(model_macs(model, (3, size, size)) / 1e7) == round(macs / 1e7)


def test_baseline_is_torchvision_resnet() -> None:
    from torchvision.models import resnet101

    ours = iamnn.create_model("resnet101")
    theirs = resnet101()
    assert isinstance(ours, type(theirs))
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.shape) for k, v in theirs.state_dict().items()
    ]


# -- every registered model ----------------------------------------------------------------------
@pytest.mark.parametrize("name", iamnn.list_models())
@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
@pytest.mark.parametrize("batch", [1, 3])
def test_registered_model_forward_backward(name: str, stem: str, batch: int) -> None:
    model = iamnn.create_model(name, stem=stem, num_classes=4, width=SMALL, in_chans=1)
    model.train()
    size = INPUT[stem] * (2 if isinstance(model, iamnn.MobileNet) else 1)  # a MobileNet downsamples 16x or 32x
    x = torch.randn(batch, 1, size, size)
    logits, stats = model(x, return_stats=True)
    assert logits.shape == (batch, 4) and torch.isfinite(logits).all()
    stages = len(model.max_iterations)  # 4, or 0 for a MobileNet (no stages that iterate)
    assert stats.iterations.shape == (batch, stages) and stats.macs.shape == (batch,)
    assert (stats.iterations >= 1).all() and (stats.iterations <= torch.tensor(model.max_iterations)).all()
    (nn.functional.cross_entropy(logits, torch.arange(batch) % 4) + 0.01 * stats.ponder.sum()).backward()
    params = list(model.parameters())
    assert params[0].grad is not None and params[0].grad.abs().sum() > 0  # the stem's convolution
    assert params[-1].grad.abs().sum() > 0  # the classifier's bias


def test_registry_api() -> None:
    assert {f"iamnn_{p}" for p in PRESETS} <= set(iamnn.list_models("iamnn_*"))
    assert "resnet152" in iamnn.list_models("resnet*")
    model = iamnn.create_model("iamnn_r18", width=SMALL, num_classes=None, epsilon=None)  # None → default
    assert model.num_classes == 1000 and model.epsilon == 0.01
    model.reset_classifier(3)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    with pytest.raises(ValueError, match="unknown model"):
        iamnn.create_model("iamnn_r9")
    with pytest.raises(ValueError, match="halting"):
        model.halting = "sometimes"
    with pytest.raises(ValueError, match="halting"):
        model.halting = 0


def test_halting_modes_iteration_counts() -> None:
    model = iamnn.create_model("iamnn_r101", stem="cifar", width=SMALL, num_classes=2).eval()
    x = torch.randn(2, 3, 16, 16)
    for mode, want in [("full", [3, 4, 23, 3]), (1, [1, 1, 1, 1]), (4, [3, 4, 4, 3])]:
        model.halting = mode
        _, stats = model(x, return_stats=True)
        assert stats.iterations.tolist() == [want, want]


def test_parameter_sharing_and_per_iteration_batchnorm() -> None:
    model = iamnn.create_model("iamnn_r101", stem="cifar", num_classes=10)
    stage3 = model.stages[2]
    assert len(stage3.block.norms) == 23  # one BN triple per iteration
    convs = [m for m in stage3.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3  # ... and one set of shared convolutions
    # the paper's ~90 % reduction against ResNet-101 (ours: 7.36 M, see README)
    resnet = count_params(iamnn.create_model("resnet101", stem="cifar", num_classes=10))
    assert count_params(model) < 0.2 * resnet


# -- inference with folded BatchNorm -------------------------------------------------------------
@pytest.mark.parametrize(
    "name, fused",
    [("iamnn_r34", False), ("iamnn_r34", True), ("iamnn_mobile_r34", False)],
    ids=["eager", "fused", "mobile"],
)
@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
@pytest.mark.parametrize("halting", ["act", "full", 2])
def test_folded_batchnorm_matches_eval_forward(
    name: str, stem: str, halting: object, fused: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from iamnn.models.fold import FoldedProcessingBlock, fold_batchnorm

    # fused: every iteration takes the oneDNN path (by default only maps of >= 4096 pixels do)
    monkeypatch.setattr(FoldedProcessingBlock, "fused_min_pixels", 0 if fused else 10**9)

    x = _varied_input(12, INPUT[stem])
    model = iamnn.create_model(name, stem=stem, num_classes=7, width=SMALL, halting=halting)
    model = spread_halting(model, x)
    with torch.no_grad():  # give every BatchNorm non-trivial statistics and affine parameters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        _unit_logits(model.eval(), x)
        logits, stats = model(x, return_stats=True)
        folded = fold_batchnorm(model)
        f_logits, f_stats = folded(x, return_stats=True)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert torch.equal(f_stats.iterations, stats.iterations)
    torch.testing.assert_close(f_logits, logits, atol=1e-4, rtol=0)
    assert torch.equal(f_stats.macs, stats.macs)
    with torch.no_grad():
        counted = measure_macs(lambda: folded(x))
    extra = 0
    for k, stage in enumerate(model.stages if halting == "act" else []):
        calls = int(f_stats.iterations[:, k].clamp(max=stage.max_iterations - 1).sum())
        # x0's part of the halting unit's first layer runs once per sample and stage, not per call
        extra -= (calls - len(x)) * stage.in_channels * stage.halting_unit.fc1.out_features
        if fused:  # + per halting call, GAP(u) = W3 · GAP(z): C_out x C_out/4 MACs
            extra += calls * stage.out_channels * (stage.out_channels // 4)
    assert counted == int(f_stats.macs.sum()) + extra
    if halting == "act":  # batch 1 takes the host-side ACT path, through the folded halting unit
        with torch.no_grad():
            for b in (0, len(x) // 2, len(x) - 1):
                one, one_stats = folded(x[b : b + 1], return_stats=True)
                assert torch.equal(one_stats.iterations[0], f_stats.iterations[b])
                torch.testing.assert_close(one[0], f_logits[b], atol=1e-5, rtol=0)
    with pytest.raises(RuntimeError, match="inference only"):
        folded.train()


@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_single_sample_inference_path_matches_batched(stem: str) -> None:
    """Batch 1 at inference takes the host-side ACT path; it must agree with the batched loop."""
    x, model = _varied_halting_batch(10, stem)
    with torch.no_grad():
        logits, stats = model(x, return_stats=True)
        for b in range(len(x)):
            one, one_stats = model(x[b : b + 1], return_stats=True)
            assert torch.equal(one_stats.iterations[0], stats.iterations[b])
            torch.testing.assert_close(one[0], logits[b], atol=1e-5, rtol=0)
            torch.testing.assert_close(one_stats.ponder[0], stats.ponder[b], atol=1e-5, rtol=0)
    assert len(stats.iterations.unique()) > 2


def test_params_used_by_a_mode() -> None:
    model = iamnn.create_model("iamnn_r101", stem="cifar", num_classes=10, width=SMALL)
    total = count_params(model)
    halting = sum(count_params(s.halting_unit) for s in model.stages)
    assert model.params_used("act") == total
    assert model.params_used("full") == total - halting
    extra_bn = sum(count_params(s.block.norms[1:]) for s in model.stages)
    assert model.params_used(1) == total - halting - extra_bn


def test_chunked_inference_equals_whole_batch() -> None:
    x = _varied_input(10, 16)
    model = spread_halting(iamnn.create_model("iamnn_r34", stem="cifar", num_classes=5, width=SMALL), x).eval()
    with torch.no_grad():
        model.inference_chunk = 0
        _unit_logits(model, x)
        logits, stats = model(x, return_stats=True)
        model.inference_chunk = 3
        c_logits, c_stats = model(x, return_stats=True)
        assert measure_macs(lambda: model(x)) == int(c_stats.macs.sum())
    torch.testing.assert_close(c_logits, logits, atol=1e-5, rtol=0)
    for name in ("iterations", "macs"):
        assert torch.equal(getattr(c_stats, name), getattr(stats, name))


def test_channels_last_input_keeps_its_layout() -> None:
    """`Classifier(channels_last=True)` hands the model NHWC batches: an RGB one must reach the
    stem as it is, not be copied back to NCHW (a folded copy converts to its own format)."""
    from iamnn.models.fold import fold_batchnorm

    model = iamnn.create_model("iamnn_r18", stem="cifar", num_classes=5, width=SMALL)
    model = model.to(memory_format=torch.channels_last).eval()
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    folded = fold_batchnorm(model, channels_last=False)
    seen: list[torch.Tensor] = []
    for net in (model, folded):
        net.conv1.register_forward_pre_hook(lambda module, args: seen.append(args[0]) and None)
        with torch.no_grad():
            net(x)
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    assert seen[1].is_contiguous() and not seen[1].is_contiguous(memory_format=torch.channels_last)


def test_create_model_takes_the_architecture_from_the_weights_file(tmp_path) -> None:  # noqa: ANN001
    from iamnn.weights import WeightsError, pretrained_path, save_weights

    shipped = iamnn.create_model("iamnn_r34_fmnist", pretrained=True)
    x = torch.randn(2, 1, 28, 28)
    # a plain preset name and the file: width, stem, in_chans and classes come from the file
    model = iamnn.create_model("iamnn_r34", checkpoint_path=pretrained_path("iamnn_r34_fmnist")).eval()
    torch.testing.assert_close(model(x), shipped(x))
    assert iamnn.create_model("iamnn_r34_fmnist", pretrained=True, halting=2).halting == 2  # a regime may change
    with pytest.raises(WeightsError, match="width=0.25 contradicts the file's width=0.125"):
        iamnn.create_model("iamnn_r34", checkpoint_path=pretrained_path("iamnn_r34_fmnist"), width=0.25)
    small = iamnn.create_model("resnet18", width=SMALL, num_classes=3, in_chans=1, stem="cifar")
    save_weights(small, tmp_path / "r18.safetensors")
    again = iamnn.create_model("resnet18", checkpoint_path=tmp_path / "r18.safetensors")
    assert again.fc.out_features == 3 and again.in_chans == 1


def test_models_command_lists_every_registered_model(capsys) -> None:  # noqa: ANN001
    import json

    from iamnn.cli import main

    main(["models", "--json"])
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(iamnn.list_models())
    assert rows["iamnn_r34_fmnist"]["pretrained"] and rows["iamnn_r34_fmnist"]["params"] == 205_062
    assert rows["iamnn_r101"]["max_iterations"] == [3, 4, 23, 3] and rows["resnet18"]["kind"] == "ResNet"
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("iamnn ")


def test_mobile_block_is_a_depthwise_separable_inverted_residual() -> None:
    model = iamnn.create_model("iamnn_mobile_r34", stem="cifar", in_chans=1, num_classes=10, width=0.5)
    block = model.stages[1].block
    assert isinstance(block, iamnn.models.InvertedResidualBlock)
    hidden = block.depthwise.out_channels
    assert block.depthwise.groups == hidden and block.depthwise.kernel_size == (3, 3)  # depthwise
    assert block.expand.in_channels == 8 + 16 and hidden == 6 * 16  # concat(x0, s) -> 6x expansion
    assert block.project.out_channels == 16 and block.se is not None
    assert len(block.norms) == 4 and all(len(n) == 3 for n in block.norms)  # one BN triple per iteration
    # the linear residual: s_i = s_{i-1} + u_i, no ReLU after the addition
    x0, s = torch.randn(2, 8, 6, 6), torch.randn(2, 16, 6, 6)
    with torch.no_grad():
        s1, u = block.eval().step(x0, s, 1)
    torch.testing.assert_close(s1, s + u)
    assert (s1 < 0).any()
    with pytest.raises(ValueError, match="block must be one of"):
        IamNN(PRESETS["r18"], block="transformer")
