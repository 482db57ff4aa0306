"""Anytime training (every depth in each step) and the second phase that trains the halting units
with the backbone frozen: tiny models, one step each, and one short digits run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from iamnn.training.classifier import Classifier
from iamnn.weights import load_model


def _classifier(**options: object) -> Classifier:
    torch.manual_seed(0)
    return Classifier(model="iamnn_r34", num_classes=10, in_chans=1, stem="cifar", width=0.0625, **options)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 1, 16, 16, generator=g), torch.randint(0, 10, (16,), generator=g)


def test_an_anytime_step_trains_every_depth() -> None:
    module = _classifier(anytime=True, anytime_random=2).train()
    x, y = _batch()
    logits, stats, loss = module._sandwich(x, y)
    assert stats.iterations.tolist() == [[3, 4, 6, 3]] * 16  # the logged forward is the deepest
    assert loss > module.criterion(logits, y)  # the shallower networks' distillation terms are in
    loss.backward()
    model = module.model
    for k, stage in enumerate(model.stages):  # every iteration's BatchNorm of every stage learns
        for i, norms in enumerate(stage.block.norms):
            for bn in norms:
                assert bn.weight.grad is not None and bn.weight.grad.abs().sum() > 0, f"stage {k + 1} iteration {i + 1}"
        assert all(p.grad is None for p in stage.halting_unit.parameters())  # fixed depths: no halting


def test_the_shallow_networks_learn_from_the_deepest() -> None:
    """With the deepest network's output as its own target, only the students' KL terms remain:
    their gradient reaches iteration 1 but not a BatchNorm that only the deepest network runs."""
    module = _classifier(anytime=True, anytime_random=0).train()  # full + one iteration per stage
    x, y = _batch()
    _, _, loss = module._sandwich(x, y)
    logits = module.model(x, halting="full")
    (loss - module.criterion(logits, y)).backward()  # the KL of k = 1 to the detached full output
    norms = module.model.stages[2].block.norms
    assert norms[0][0].weight.grad.abs().sum() > 0
    assert norms[5][0].weight.grad is None or norms[5][0].weight.grad.abs().sum() == 0


def test_freeze_backbone_trains_only_the_halting_units() -> None:
    module = _classifier(freeze_backbone=True, halting="act", tau=0.01)
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert trainable and all(".halting_unit." in n for n in trainable)
    assert len(trainable) == 4 * 6  # fc1..fc3, weight and bias, per stage
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    opt = torch.optim.SGD([p for p in module.model.parameters() if p.requires_grad], lr=0.1)
    x, y = _batch()
    logits, stats = module.model.train()(x, return_stats=True)
    (module.criterion(logits, y) + 0.01 * stats.ponder.mean(0).sum()).backward()
    opt.step()
    for n, p in module.model.named_parameters():
        assert torch.equal(p, before[n]) != (n in trainable), n


def test_anytime_needs_an_iamnn() -> None:
    with pytest.raises(ValueError, match="anytime, depth_supervision and freeze_backbone"):
        Classifier(model="resnet18", anytime=True)
    with pytest.raises(ValueError, match="depth_supervision takes ints"):
        Classifier(model="iamnn_r18", depth_supervision=[1, "full"])
    with pytest.raises(ValueError, match="is a cascade, an inference regime"):
        Classifier(model="iamnn_r18", halting="cascade:1,flip-1@0.9")


def test_depth_supervision_is_the_mean_of_each_depths_cross_entropy() -> None:
    torch.manual_seed(0)
    clf = Classifier(model="iamnn_r18", width=0.125, in_chans=1, num_classes=10, depth_supervision=[2, 1]).train()
    x, y = torch.randn(8, 1, 16, 16), torch.arange(8) % 10
    torch.manual_seed(1)
    logits, stats, loss = clf._depth_supervised(x, y)
    torch.manual_seed(1)
    want = [nn.functional.cross_entropy(clf.model(x, halting=k), y) for k in (1, 2)]
    torch.testing.assert_close(loss, torch.stack(want).mean())
    assert stats.iterations.tolist() == [[2, 2, 2, 2]] * 8  # the deepest depth's stats are what the step logs


@pytest.fixture(scope="module")
def two_phase(tmp_path_factory: pytest.TempPathFactory, fit_digits) -> tuple[Path, Path]:  # noqa: ANN001
    """An anytime backbone (every depth trained, ``full``) and halting units trained on it frozen."""
    runs = tmp_path_factory.mktemp("anytime")
    backbone = fit_digits(runs, "anytime", "--model.anytime=true", "--model.halting=full", "--trainer.max_epochs=1")
    policy = fit_digits(
        runs, "policy", "--model.freeze_backbone=true", "--model.halting=act", "--trainer.max_epochs=1",
        f"--model.init_weights={backbone / 'model.safetensors'}",
    )  # fmt: skip
    return backbone, policy


def test_anytime_then_frozen_backbone_on_digits(two_phase: tuple[Path, Path]) -> None:
    backbone, policy = two_phase
    model = load_model(backbone / "model.safetensors")
    assert model.halting == "full"
    trained = load_model(policy / "model.safetensors")
    assert trained.halting == "act"
    for (name, p), q in zip(trained.named_parameters(), model.parameters(), strict=True):
        assert torch.equal(p, q) != (".halting_unit." in name), name  # only the halting units moved
    # the frontier gives the two-phase model its kind and a calibrated curve, each budget met on validation
    from iamnn.frontier import frontier_records

    records = frontier_records(policy, budgets=2)
    assert [r["kind"] for r in records] == ["adaptive"] * 3 and records[0]["name"] == "policy"
    curve = records[1:]
    budgets = [r["budget_macs"] for r in curve]
    assert budgets == sorted(budgets) and len(set(budgets)) == 2
    one, most = trained.max_macs((16, 16), halting=1), trained.max_macs((16, 16), halting="act")
    assert one < budgets[0] < budgets[-1] <= most  # ACT at one iteration per stage still runs its units
    for r in curve:
        assert r["name"] == f"policy@{r['budget_macs'] / 1e6:.2f}M" and r["feasible"]
        assert r["val_macs_mean"] <= r["budget_macs"] and r["macs_min"] <= r["macs_mean"] <= r["macs_max"]
        assert r["train_samples"] > 1000 and r["epochs"] == 1 and 0 <= r["top1"] <= 100


def test_report_writes_its_files_for_an_anytime_run(two_phase: tuple[Path, Path], tmp_path: Path) -> None:
    """``iamnn report`` on both phases: the anytime backbone (``full``: its halting units swept
    under ACT) and the halting units trained on it."""
    from iamnn.cli import main

    main(["report", *map(str, two_phase), "-o", str(tmp_path / "report"), "--quick-sweep"])
    result = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [m["network"] for m in result["models"]] == ["anytime", "policy"]
    for name in ("anytime", "policy"):
        assert [p["regime"] for p in result["sweeps"][name]] == ["act"] * 5 + ["fixed", "full", "trained"]
    assert sorted(result["figures"]) == sorted(
        ["accuracy_vs_macs.png", *(f"{n}_{f}.png" for n in ("anytime", "policy") for f in ("iterations", "easy_hard"))]
    )
    assert all((tmp_path / "report" / f).is_file() for f in result["figures"])
    md = (tmp_path / "report" / "report.md").read_text()
    assert md.count("| act ε=0.01 |") == 2 and md.count("| full |") == 2
