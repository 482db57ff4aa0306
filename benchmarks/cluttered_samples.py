"""The picture of Cluttered Fashion-MNIST in docs/results.md: test images by distractor count.

python -m benchmarks.cluttered_samples   # writes docs/results/cluttered/samples.png (a few seconds)
"""

from __future__ import annotations

from pathlib import Path

from iamnn.data import ClutteredFashionMNISTDataModule
from iamnn.plots import pyplot_agg, save_figure

OUT = Path("docs/results/cluttered/samples.png")


def main() -> None:
    dm = ClutteredFashionMNISTDataModule(val_size=0)
    dm.setup("test")
    images, labels = dm._tensors()[2:]
    levels = dm.levels("test")
    counts, rows = (0, 2, 4, 6, 8), 4
    plt = pyplot_agg()
    fig, axes = plt.subplots(rows, len(counts), figsize=(1.6 * len(counts), 1.75 * rows), layout="constrained")
    for j, count in enumerate(counts):
        picks = (levels[:, 0] == count).nonzero().flatten()[:rows].tolist()
        for i, k in enumerate(picks):
            ax = axes[i, j]
            ax.imshow(images[k, 0], cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_xlabel(f"{dm.class_names[int(labels[k])]} · {int(levels[k, 1])} px", fontsize=7)
        axes[0, j].set_title(f"{count} distractors", fontsize=9)
    fig.suptitle("Cluttered Fashion-MNIST (test images, 40 x 40): difficulty by distractor count", fontsize=10)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
