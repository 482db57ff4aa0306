"""Write the recipes of the Cluttered Fashion-MNIST study (``recipes/cluttered_fashion_mnist/study/*.yaml``).

The full-data study's recipe (``benchmarks/study_recipes.py``: IamNN-r34 preset at width 1/8, the
cifar stem, 55 000 / 5 000 / 10 000 images, 12 epochs of SGD one-cycle, batch 128, bf16 autocast) on
Cluttered Fashion-MNIST (40 x 40 canvases, items 20-32 px, 0-8 distractors of 10 px). Twelve epochs
keep the whole study near 10 CPU hours on 2 cores (a point costs about twice its Fashion-MNIST
time: the canvas has twice the pixels). ``python -m benchmarks.cluttered_recipes``, then
``STUDY=cluttered_fashion_mnist/study RUNS=runs/cluttered benchmarks/run_study.sh`` (resumable).
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.frontier_recipes import write_recipes
from benchmarks.study_recipes import BASE_MODEL, DATA, EPOCHS

OUT = Path(__file__).resolve().parents[1] / "recipes" / "cluttered_fashion_mnist" / "study"

POINTS: dict[str, tuple[str, dict, dict]] = {
    "fixed_k1": ("every stage runs 1 iteration", {"halting": 1, "tau": 0.0}, {}),
    "fixed_k2": ("every stage runs 2 iterations", {"halting": 2, "tau": 0.0}, {}),
    "fixed_k3": ("every stage runs 3 iterations", {"halting": 3, "tau": 0.0}, {}),
    "fixed_full": ("every stage runs all its iterations (3/4/6/3)", {"halting": "full", "tau": 0.0}, {}),
    "act_tau0.003": ("paper-style ACT, ponder cost 0.003", {"tau": 0.003}, {}),
    "act_tau0.01": ("paper-style ACT, ponder cost 0.01", {"tau": 0.01}, {}),
    "act_tau0.03": ("paper-style ACT, ponder cost 0.03", {"tau": 0.03}, {}),
    "resnet34": ("basic-block ResNet-34 of the same width", {"model": "resnet34"}, {}),
    "mobilenet_v3_small": (
        "torchvision's MobileNetV3-Small at width 1",
        {"model": "mobilenet_v3_small", "width": 1.0},
        {},
    ),
    # a second seed of the depth the shipped cascade runs on, to test its +0.37-point lead
    "fixed_k2_seed1": ("fixed_k2, seed 1 (initial weights and training order)", {"halting": 2, "tau": 0.0}, {}),
}
SEEDS = {"fixed_k2_seed1": 1}


def main() -> None:
    write_recipes(OUT, POINTS, "Cluttered Fashion-MNIST study", "benchmarks/cluttered_recipes.py",
                  base_model=BASE_MODEL, data=DATA, epochs=EPOCHS, save_dir="runs/cluttered",
                  data_class="iamnn.data.ClutteredFashionMNISTDataModule", seeds=SEEDS)  # fmt: skip


if __name__ == "__main__":
    main()
