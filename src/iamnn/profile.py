"""Params and MACs of every model of the paper's Table 1, ours beside the paper's (``iamnn profile``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .cost import count_params
from .models import IamNN
from .weights import create_model


@dataclass(frozen=True)
class Table1Row:
    dataset: str
    network: str
    model: str
    stem: str
    in_chans: int
    input_size: int
    num_classes: int
    halting: str | int = "act"
    paper_params: str = "–"
    paper_macs: str = "–"


TABLE1: list[Table1Row] = [
    Table1Row("CIFAR-10", "ResNet-101", "resnet101", "cifar", 3, 32, 10, paper_params="42 M", paper_macs="2.5 G"),
    Table1Row("CIFAR-10", "IamNN", "iamnn_r101", "cifar", 3, 32, 10, "act", "4.5 M", "1.1 G (0.7–2 G)"),
    Table1Row("CIFAR-100", "ResNet-101", "resnet101", "cifar", 3, 32, 100, paper_params="43 M", paper_macs="2.5 G"),
    Table1Row("CIFAR-100", "IamNN", "iamnn_r101", "cifar", 3, 32, 100, "act", "4.6 M", "1.6 G (0.7–2 G)"),
    Table1Row(
        "ImageNet", "ResNet-152", "resnet152", "imagenet", 3, 224, 1000, paper_params="60 M", paper_macs="11.5 G"
    ),
    Table1Row("ImageNet", "ResNet-18", "resnet18", "imagenet", 3, 224, 1000, paper_params="12 M", paper_macs="1.8 G"),
    Table1Row("ImageNet", "IamNN 1 iter", "iamnn_r152", "imagenet", 3, 224, 1000, 1, "4.8 M", "0.9 G"),
    Table1Row("ImageNet", "IamNN", "iamnn_r152", "imagenet", 3, 224, 1000, "act", "5 M", "4 G (2.5–9 G)"),
    Table1Row("Fashion-MNIST", "ResNet-18", "resnet18", "cifar", 1, 28, 10),
    Table1Row("Fashion-MNIST", "IamNN-r18", "iamnn_r18", "cifar", 1, 28, 10),
    Table1Row("Fashion-MNIST", "ResNet-101", "resnet101", "cifar", 1, 28, 10),
    Table1Row("Fashion-MNIST", "IamNN-r101", "iamnn_r101", "cifar", 1, 28, 10),
    # beyond the paper: its future work (depthwise-separable blocks) beside the mobile baseline
    Table1Row("Fashion-MNIST", "MobileNetV3-Small", "mobilenet_v3_small", "cifar", 1, 28, 10),
    Table1Row("Fashion-MNIST", "IamNN-Mobile-r34", "iamnn_mobile_r34", "cifar", 1, 28, 10),
]


def profile_row(row: Table1Row, width: float = 1.0) -> dict[str, object]:
    """Params, MACs with one iteration per stage and MACs at the maximum iterations, for ``row``.

    Models are built on the meta device: nothing is allocated, so ResNet-152 costs milliseconds.
    """
    with torch.device("meta"):
        model = create_model(row.model, stem=row.stem, in_chans=row.in_chans, num_classes=row.num_classes, width=width)
    hw = (row.input_size, row.input_size)
    if isinstance(model, IamNN):
        macs_1 = model.max_macs(hw, 1)
        macs_max = model.max_macs(hw, row.halting)
        iterations = [p.limit(n) for p, n in zip(model.policies(row.halting), model.max_iterations, strict=True)]
        params_used = model.params_used(row.halting)
    else:
        macs_1 = None
        macs_max = model.max_macs(hw)
        iterations = list(model.max_iterations)
        params_used = count_params(model)
    return {
        **asdict(row),
        "width": width,
        "params": count_params(model),
        "params_used": params_used,
        "macs_1_iter": macs_1,
        "macs_max": macs_max,
        "max_iterations": iterations,
    }


def profile_table1(width: float = 1.0) -> list[dict[str, object]]:
    return [profile_row(row, width if row.model.startswith("iamnn") else 1.0) for row in TABLE1]
