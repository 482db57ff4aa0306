"""Why does ACT's deep stage collapse? Gradients on each stage's halting bias.

    python benchmarks/collapse_gradients.py [--batches 4] [--weights runs/frontier/act_tau0.01/model.safetensors]

For a freshly initialised IamNN-r101 (width 1/8, the frontier study's model), or trained weights, on Fashion-MNIST
training batches, prints per stage: iterations used, and the gradient on the halting unit's
output bias from the cross-entropy and from the ponder cost Σ_k ρ_k (before the τ factor). A
negative gradient means gradient descent raises the bias, i.e. makes the stage halt earlier.
"""

from __future__ import annotations

import argparse

import torch

import iamnn
from iamnn.data import FashionMNISTDataModule
from iamnn.models.halting import ponder_loss
from iamnn.weights import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--halting-bias", type=float, default=-3.0)
    parser.add_argument("--weights", help="measure a trained model (a run's model.safetensors or .ckpt) instead")
    args = parser.parse_args()
    torch.manual_seed(0)
    dm = FashionMNISTDataModule(batch_size=128, train_subset=128 * args.batches, val_size=2000)
    dm.setup("fit")
    if args.weights:
        model = load_model(args.weights).train()
    else:
        model = iamnn.create_model("iamnn_r101", stem="cifar", width=0.125, in_chans=1, num_classes=10,
                                   halting_bias=args.halting_bias).train()  # fmt: skip
    biases = [stage.halting_unit.fc3.bias for stage in model.stages]
    ce_grad, ponder_grad, iterations = torch.zeros(4), torch.zeros(4), torch.zeros(4)
    for x, y in dm.train_dataloader():
        logits, stats = model(x, return_stats=True)
        ce = torch.nn.functional.cross_entropy(logits, y)
        ponder = ponder_loss(model.policies(), stats.ponder)  # the loss term before τ
        ce_grad += torch.stack([g.sum() for g in torch.autograd.grad(ce, biases, retain_graph=True)])
        ponder_grad += torch.stack([g.sum() for g in torch.autograd.grad(ponder, biases)])
        iterations += stats.iterations.float().mean(0)
    n = len(dm.train_dataloader())
    state = args.weights or f"initialisation (halting bias {args.halting_bias})"
    print(f"{model.model_config['model']} x{model.model_config['kwargs']['width']:g} at {state}, {n} batches of 128")
    print("stage | max iterations | iterations used | dCE/db | dPonder/db | tau at which ponder = CE")
    for k in range(4):
        ce_k, p_k = float(ce_grad[k] / n), float(ponder_grad[k] / n)
        ratio = abs(ce_k / p_k) if p_k else float("inf")
        print(f"{k + 1} | {model.max_iterations[k]} | {float(iterations[k] / n):.2f} | {ce_k:+.5f} | {p_k:+.4f} | "
              f"{ratio:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
