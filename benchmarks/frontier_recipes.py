"""Write the recipes of the accuracy-vs-MACs study (``recipes/fashion_mnist/frontier/*.yaml``).

Every point shares one recipe (IamNN-r101 preset at width 1/8; Fashion-MNIST with 12 000 training
images, a 2 000-image validation split and the full 10 000-image test set; 6 epochs of SGD one-cycle,
bf16 autocast: minutes per model on 2 CPU cores) and changes only what the point is about. Run from the repository root:
``python -m benchmarks.frontier_recipes``; then ``iamnn fit --config recipes/fashion_mnist/frontier/<point>.yaml``.
"""

from __future__ import annotations

from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parents[1] / "recipes" / "fashion_mnist" / "frontier"
EPOCHS = 6

# point name -> (comment, model overrides, trainer overrides)
POINTS: dict[str, tuple[str, dict, dict]] = {
    "resnet101": ("bottleneck ResNet-101 of the same width (the baseline)", {"model": "resnet101"}, {}),
    "fixed_k1": ("every stage runs 1 iteration (the paper's '1 iter')", {"halting": 1, "tau": 0.0}, {}),
    "fixed_k2": ("every stage runs min(2, its maximum) iterations", {"halting": 2, "tau": 0.0}, {}),
    "fixed_k4": ("every stage runs min(4, its maximum) iterations", {"halting": 4, "tau": 0.0}, {}),
    "fixed_full": ("every stage runs all its iterations (3/4/23/3), no halting", {"halting": "full", "tau": 0.0}, {}),
    "act_tau0": ("ACT, no ponder cost", {"tau": 0.0}, {}),
    "act_tau0.001": ("ACT, ponder cost 0.001", {"tau": 0.001}, {}),
    "act_tau0.003": ("ACT, ponder cost 0.003", {"tau": 0.003}, {}),
    "act_tau0.01": ("ACT, ponder cost 0.01", {"tau": 0.01}, {}),
    # cures tried for the deep stage's collapse, each on top of act_tau0.01
    "cure_bias-8": ("act_tau0.01 with the halting bias initialised at -8 instead of -3", {"halting_bias": -8.0}, {}),
    "cure_tau_warmup": ("act_tau0.01 with tau ramped up from 0 over 3 epochs", {"tau_warmup_epochs": 3.0}, {}),
    "cure_min_iter": (
        "act_tau0.01, every iteration forced for the first 2 epochs",
        {"min_iterations": 23, "min_iterations_epochs": 2.0},
        {},
    ),
    "cure_ponder_norm": ("act_tau0.01 with each stage's ponder cost divided by its maximum", {"ponder_norm": True}, {}),
    "cure_long": ("act_tau0.01 trained twice as long", {}, {"max_epochs": 2 * EPOCHS}),
    # cure_long's fair partners: the fixed-k models next to it, trained as long
    "fixed_k1_long": ("fixed_k1 trained twice as long", {"halting": 1, "tau": 0.0}, {"max_epochs": 2 * EPOCHS}),
    "fixed_k2_long": ("fixed_k2 trained twice as long", {"halting": 2, "tau": 0.0}, {"max_epochs": 2 * EPOCHS}),
}

BASE_MODEL = {
    "model": "iamnn_r101", "stem": "cifar", "width": 0.125, "tau": 0.01,
    "lr": 0.1, "lr_schedule": "onecycle", "weight_decay": 5.0e-4,
}  # fmt: skip


DATA = {"batch_size": 128, "eval_batch_size": 500, "val_size": 2000, "train_subset": 12000}


def recipe(
    name: str, model: dict, trainer: dict, base_model: dict = BASE_MODEL, data: dict = DATA,
    epochs: int = EPOCHS, save_dir: str = "runs/frontier", seed: int = 0,
    data_class: str = "iamnn.data.FashionMNISTDataModule",
) -> dict:  # fmt: skip
    """One study point: the shared recipe with the point's model and trainer overrides; ``seed``
    seeds the weights' initialisation and the training order (the validation split stays)."""
    logger = {"save_dir": save_dir, "name": name, "version": ""}
    return {
        "seed_everything": seed,
        "trainer": {
            "max_epochs": epochs, "accelerator": "auto", "precision": "bf16-mixed", "enable_model_summary": False,
            "logger": [{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": logger}],
            **trainer,
        },
        "model": {**base_model, **model},
        "data": {"class_path": data_class, "init_args": data},
    }  # fmt: skip


def write_recipes(
    out: Path, points: dict[str, tuple[str, dict, dict]], title: str, writer: str,
    seeds: dict[str, int] | None = None, **shared,
) -> None:  # fmt: skip
    """``out/<point>.yaml`` for every point, each headed by what it is about; ``seeds``: a point's
    seed where it is not 0."""
    out.mkdir(parents=True, exist_ok=True)
    for name, (comment, model, trainer) in points.items():
        seed = (seeds or {}).get(name, 0)
        text = yaml.safe_dump(recipe(name, model, trainer, seed=seed, **shared), sort_keys=False, width=100)
        (out / f"{name}.yaml").write_text(f"# {title} point '{name}': {comment}.\n# Written by {writer}.\n" + text)
    print(f"wrote {len(points)} recipes to {out}")


def main() -> None:
    write_recipes(OUT, POINTS, "Frontier study", "benchmarks/frontier_recipes.py")


if __name__ == "__main__":
    main()
