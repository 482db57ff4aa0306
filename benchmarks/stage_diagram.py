"""Draw one IamNN stage and its halting (docs/stage.png, the README's picture).

    python -m benchmarks.stage_diagram [OUT]

A drawing of what ``IterativeStage`` computes (src/iamnn/models/iamnn.py), not a measurement.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

BOXES = {  # name: (x, y, text, colour)
    "x0": (0.0, 2.0, "stage input\n$x_0$", "#eeeeee"),
    "cat": (2.2, 2.0, "concat($x_0$, $s_{i-1}$)", "#eeeeee"),
    "block": (4.4, 2.0, "shared bottleneck\nconvs shared,\nBatchNorm$_i$ per iteration", "#c9d7f2"),
    "state": (6.6, 2.0, "$s_i$ = ReLU($s_{i-1}$ + $u_i$)\n$s_0$ = 0", "#c9d7f2"),
    "halt": (6.6, 0.35, "halting unit\n$h_i$ = σ(MLP(GAP[$s_i$, $x_0$, $u_i$]))", "#f6d7a7"),
    "test": (4.4, 0.35, "Σ$h$ ≥ 1 − ε ?\n(ACT, per image)", "#f6d7a7"),
    "out": (2.2, 0.35, "stage output\n$y$ = Σ $p_n s_n$", "#d5ecd4"),
}


def box(ax: plt.Axes, x: float, y: float, text: str, colour: str) -> None:
    ax.add_patch(FancyBboxPatch((x - 0.9, y - 0.45), 1.8, 0.9, boxstyle="round,pad=0.05", fc=colour, ec="#444444"))
    ax.text(x, y, text, ha="center", va="center", fontsize=8.5)


def arrow(ax: plt.Axes, a: tuple[float, float], b: tuple[float, float], label: str = "", rad: float = 0) -> None:
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=12, color="#333333",
                                 connectionstyle=f"arc3,rad={rad}"))  # fmt: skip
    if label:
        ax.text((a[0] + b[0]) / 2, (a[1] + b[1]) / 2 + 0.12, label, ha="center", fontsize=8, color="#333333")


def draw(out: Path) -> None:
    fig, ax = plt.subplots(figsize=(8.4, 3.0))
    for x, y, text, colour in BOXES.values():
        box(ax, x, y, text, colour)
    for a, b, label in (("x0", "cat", ""), ("cat", "block", ""), ("block", "state", "$u_i$"),
                        ("halt", "test", ""), ("test", "out", "yes")):  # fmt: skip
        (xa, ya), (xb, yb) = BOXES[a][:2], BOXES[b][:2]
        step = 0.95 if xb > xa else -0.95
        arrow(ax, (xa + step, ya), (xb - step, yb), label)
    arrow(ax, (6.6, 1.5), (6.6, 0.85))
    arrow(ax, (3.9, 0.85), (2.6, 1.5), rad=-0.3)
    ax.text(3.55, 1.22, "no: next iteration", fontsize=8, color="#333333")
    ax.text(3.3, 2.75, "one stage: the same block iterated up to as many times as the ResNet stage had units",
            ha="center", fontsize=9, style="italic")  # fmt: skip
    ax.set_xlim(-1.0, 7.6)
    ax.set_ylim(-0.3, 3.0)
    ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(out)


if __name__ == "__main__":
    draw(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/stage.png"))
