"""Write the recipes of the full-data study (``recipes/fashion_mnist/study/*.yaml``).

Every point shares the shipped model's recipe: IamNN-r34 preset (at most 3/4/6/3 iterations) at
width 1/8, the cifar stem, Fashion-MNIST with 55 000 training images, a 5 000-image validation split
and the full 10 000-image test set; 12 epochs of SGD one-cycle (0.1, nesterov, weight decay 5e-4),
batch 128, bf16 autocast. A point changes only what it is about. Run from the repository root:
``python -m benchmarks.study_recipes``; then ``iamnn fit --config recipes/fashion_mnist/study/<point>.yaml``
(resume after a kill: add ``--ckpt_path last``). ``benchmarks/run_study.sh`` runs them in order.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.frontier_recipes import write_recipes

OUT = Path(__file__).resolve().parents[1] / "recipes" / "fashion_mnist" / "study"
EPOCHS = 12
BACKBONE = "runs/study/anytime_backbone/checkpoints/last.ckpt"

MOBILE = {"model": "iamnn_mobile_r34", "width": 0.5, "tau": 0.0}

# point name -> (comment, model overrides, trainer overrides)
POINTS: dict[str, tuple[str, dict, dict]] = {
    "fixed_k1": ("every stage runs 1 iteration", {"halting": 1, "tau": 0.0}, {}),
    "fixed_k2": ("every stage runs 2 iterations", {"halting": 2, "tau": 0.0}, {}),
    "fixed_k3": ("every stage runs 3 iterations", {"halting": 3, "tau": 0.0}, {}),
    "fixed_full": ("every stage runs all its iterations (3/4/6/3), no halting", {"halting": "full", "tau": 0.0}, {}),
    "resnet34": ("basic-block ResNet-34 of the same width (the paper's baseline)", {"model": "resnet34"}, {}),
    "mobilenet_v3_small": (
        "torchvision's MobileNetV3-Small at width 1 (4.93 M MACs with the stride-1 stem), what a user "
        "would otherwise pick for cheap inference",
        {"model": "mobilenet_v3_small", "width": 1.0},
        {},
    ),
    # IamNN-Mobile (issue: the paper's future work) against torchvision's mobile networks; width 1/2
    # gives it 0.24 M parameters and 2.62 M MACs at one iteration per stage
    "mobile_k1": ("IamNN-Mobile-r34 at width 1/2, every stage runs 1 iteration", {**MOBILE, "halting": 1}, {}),
    "mobile_k2": ("IamNN-Mobile-r34 at width 1/2, every stage runs 2 iterations", {**MOBILE, "halting": 2}, {}),
    "mobile_act": ("IamNN-Mobile-r34 at width 1/2, paper-style ACT, ponder cost 0.003", {**MOBILE, "tau": 0.003}, {}),
    # expansion 4 instead of MobileNet's 6: 0.15 M parameters and 1.74 M MACs at one iteration per stage
    "mobile_k1_e4": (
        "IamNN-Mobile-r34 at width 1/2, expansion 4, every stage runs 1 iteration",
        {**MOBILE, "halting": 1, "model_kwargs": {"expansion": 4}},
        {},
    ),
    "mobilenet_v2_w0.35": (
        "torchvision's MobileNetV2 at width 0.35 (3.96 M MACs, 0.41 M params)",
        {"model": "mobilenet_v2", "width": 0.35},
        {},
    ),
    "mobilenet_v2_w0.5": (
        "torchvision's MobileNetV2 at width 0.5 (6.77 M MACs, 0.70 M params)",
        {"model": "mobilenet_v2", "width": 0.5},
        {},
    ),
    "act_tau0.003": ("paper-style ACT trained end to end, ponder cost 0.003 (the shipped model)", {"tau": 0.003}, {}),
    "act_tau0.01": ("paper-style ACT trained end to end, ponder cost 0.01", {"tau": 0.01}, {}),
    "act_tau0.03": ("paper-style ACT trained end to end, ponder cost 0.03", {"tau": 0.03}, {}),
    "anytime_backbone": (
        "phase 1 of two-phase training: every depth trained (full on the labels; one iteration per "
        "stage and 2 random per-stage depths on full's detached soft targets), halting units untouched",
        {"halting": "full", "tau": 0.0, "anytime": True, "anytime_random": 2},
        {},
    ),
    "anytime_act": (
        "phase 2: ACT halting units trained on the frozen anytime backbone (CE + 0.01 ponder); "
        "needs anytime_backbone's last checkpoint",
        {
            "halting": "act", "tau": 0.01, "freeze_backbone": True, "init_weights": BACKBONE,
            "lr_schedule": "cosine", "weight_decay": 0.0,
        },
        {"max_epochs": 3},
    ),
    "anytime_pondernet": (
        "phase 2: PonderNet-style halting units trained on the frozen anytime backbone (CE + 0.01 "
        "KL to a Geometric(0.5) prior); needs anytime_backbone's last checkpoint",
        {
            "halting": "pondernet", "tau": 0.01, "freeze_backbone": True, "init_weights": BACKBONE,
            "lr_schedule": "cosine", "weight_decay": 0.0,
        },
        {"max_epochs": 3},
    ),
    # the cascade study: second seeds of the fixed depths, and one network whose depths are trained
    # to be each accurate and different (a cascade over its depths wants them to disagree)
    "fixed_k1_seed1": ("fixed_k1, seed 1 (initial weights and training order)", {"halting": 1, "tau": 0.0}, {}),
    "fixed_k2_seed1": ("fixed_k2, seed 1 (initial weights and training order)", {"halting": 2, "tau": 0.0}, {}),
    "depth_ce": (
        "deep supervision over depth: every step trains 1 and 2 iterations per stage, each on the "
        "labels (mean of the two cross-entropies, no distillation); validation runs 2",
        {"halting": 2, "tau": 0.0, "depth_supervision": [1, 2]},
        {},
    ),
}  # fmt: skip
SEEDS = {"fixed_k1_seed1": 1, "fixed_k2_seed1": 1}

# Before the study's points: does separately trained depth pay >= 1 point on some recipe? The study
# recipe gives k = 2 only +0.39 over k = 1; these probe narrower and longer variants of it.
PROBES_OUT = OUT.parent / "depth_probes"
PROBES: dict[str, tuple[str, dict, dict]] = {
    "w16_k1": ("width 1/16, every stage runs 1 iteration", {"halting": 1, "tau": 0.0, "width": 0.0625}, {}),
    "w16_k2": ("width 1/16, every stage runs 2 iterations", {"halting": 2, "tau": 0.0, "width": 0.0625}, {}),
    "e30_k1": ("30 epochs, every stage runs 1 iteration", {"halting": 1, "tau": 0.0}, {"max_epochs": 30}),
    "e30_k2": ("30 epochs, every stage runs 2 iterations", {"halting": 2, "tau": 0.0}, {"max_epochs": 30}),
}  # fmt: skip

BASE_MODEL = {
    "model": "iamnn_r34", "stem": "cifar", "width": 0.125, "tau": 0.003,
    "lr": 0.1, "lr_schedule": "onecycle", "weight_decay": 5.0e-4,
}  # fmt: skip


DATA = {"batch_size": 128, "eval_batch_size": 500, "val_size": 5000}


def main() -> None:
    write_recipes(OUT, POINTS, "Full-data study", "benchmarks/study_recipes.py", base_model=BASE_MODEL, data=DATA,
                  epochs=EPOCHS, save_dir="runs/study", seeds=SEEDS)  # fmt: skip
    write_recipes(PROBES_OUT, PROBES, "Depth probe", "benchmarks/study_recipes.py", base_model=BASE_MODEL, data=DATA,
                  epochs=EPOCHS, save_dir="runs/depth_probes")  # fmt: skip


if __name__ == "__main__":
    main()
