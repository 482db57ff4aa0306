"""The networks: IamNN and its halting policies, the ResNet baselines, and one registered builder
per preset (presets are data: iterations per stage, or block and units)."""

from __future__ import annotations

from .baselines import MOBILENETS, RESNETS, MobileNet, ResNet
from .blocks import FoldedBlock, IterationBlock, register_block
from .cascade import Cascade, Pass
from .halting import ACT, Fixed, Full, HaltingPolicy, PonderNet, halting_policy, policy_names, register_policy
from .iamnn import (
    BLOCKS,
    PRESETS,
    IamNN,
    IamNNStats,
    InvertedResidualBlock,
    IterativeStage,
    ProcessingBlock,
    check_model_args,
    scaled_channels,
    upgrade_state_dict,
)
from .registry import build_model, list_models, pretrained_file, register_model, register_pretrained

__all__ = [
    "ACT",
    "Cascade",
    "Fixed",
    "FoldedBlock",
    "Full",
    "HaltingPolicy",
    "IamNN",
    "IamNNStats",
    "InvertedResidualBlock",
    "IterationBlock",
    "IterativeStage",
    "MobileNet",
    "Pass",
    "PonderNet",
    "ProcessingBlock",
    "ResNet",
    "BLOCKS",
    "MOBILENETS",
    "PRESETS",
    "RESNETS",
    "build_model",
    "halting_policy",
    "list_models",
    "policy_names",
    "pretrained_file",
    "register_block",
    "register_model",
    "register_policy",
    "register_pretrained",
    "upgrade_state_dict",
]


def _iamnn(preset: str, **kwargs) -> IamNN:
    """An IamNN of ``preset`` (``"r34"``), which it keeps: the preset names its ResNet baseline
    (r34 and r50 share their iterations per stage, so the structure cannot tell them apart)."""
    model = IamNN(PRESETS[preset], **kwargs)
    model.preset = preset
    return model


# IamNN-Mobile at width 1: stem and stage output widths, MobileNet-like (16 · 2^k), and the
# inverted residual's expansion (MobileNetV2's 6); ``width`` scales them to multiples of 8
MOBILE = {"stem_channels": 16, "channels": (16, 32, 64, 128), "expansion": 6.0}


def _iamnn_mobile(preset: str, width: float = 1.0, **kwargs) -> IamNN:
    check_model_args(kwargs.get("num_classes", 1), kwargs.get("in_chans", 1), width, kwargs.get("stem", "imagenet"))
    scaled = {
        "stem_channels": scaled_channels(MOBILE["stem_channels"], width, 8),
        "channels": tuple(scaled_channels(c, width, 8) for c in MOBILE["channels"]),
        "expansion": MOBILE["expansion"],
    }
    return _iamnn(preset, width=width, block="inverted_residual", **{**scaled, **kwargs})


def _resnet(name: str, **kwargs) -> ResNet:
    block, layers = RESNETS[name]
    return ResNet(block, layers, **kwargs)


@register_model
def iamnn_r18(**kwargs) -> IamNN:
    """IamNN after ResNet-18: at most 2, 2, 2, 2 iterations per stage."""
    return _iamnn("r18", **kwargs)


@register_model
def iamnn_r34(**kwargs) -> IamNN:
    """IamNN after ResNet-34: at most 3, 4, 6, 3 iterations per stage."""
    return _iamnn("r34", **kwargs)


@register_model
def iamnn_r50(**kwargs) -> IamNN:
    """IamNN after ResNet-50: at most 3, 4, 6, 3 iterations per stage."""
    return _iamnn("r50", **kwargs)


@register_model
def iamnn_r101(**kwargs) -> IamNN:
    """IamNN after ResNet-101 (the paper's CIFAR model): at most 3, 4, 23, 3 iterations."""
    return _iamnn("r101", **kwargs)


@register_model
def iamnn_r152(**kwargs) -> IamNN:
    """IamNN after ResNet-152 (the paper's ImageNet model): at most 3, 8, 36, 3 iterations."""
    return _iamnn("r152", **kwargs)


@register_model
def iamnn_mobile_r18(**kwargs) -> IamNN:
    """IamNN-Mobile: depthwise-separable (inverted residual) stages, at most 2, 2, 2, 2 iterations."""
    return _iamnn_mobile("r18", **kwargs)


@register_model
def iamnn_mobile_r34(**kwargs) -> IamNN:
    """IamNN-Mobile: depthwise-separable (inverted residual) stages, at most 3, 4, 6, 3 iterations."""
    return _iamnn_mobile("r34", **kwargs)


@register_model
def resnet18(**kwargs) -> ResNet:
    return _resnet("resnet18", **kwargs)


@register_model
def resnet34(**kwargs) -> ResNet:
    return _resnet("resnet34", **kwargs)


@register_model
def resnet50(**kwargs) -> ResNet:
    return _resnet("resnet50", **kwargs)


@register_model
def resnet101(**kwargs) -> ResNet:
    return _resnet("resnet101", **kwargs)


@register_model
def resnet152(**kwargs) -> ResNet:
    return _resnet("resnet152", **kwargs)


@register_model
def mobilenet_v2(**kwargs) -> MobileNet:
    """torchvision's MobileNetV2 (``width`` is its ``width_mult``)."""
    return MobileNet("mobilenet_v2", **kwargs)


@register_model
def mobilenet_v3_small(**kwargs) -> MobileNet:
    """torchvision's MobileNetV3-Small (``width`` is its ``width_mult``)."""
    return MobileNet("mobilenet_v3_small", **kwargs)


@register_model
def mobilenet_v3_large(**kwargs) -> MobileNet:
    """torchvision's MobileNetV3-Large (``width`` is its ``width_mult``)."""
    return MobileNet("mobilenet_v3_large", **kwargs)


# -- trained weights shipped with the package (iamnn/weights/, see README "Shipped weights") --------
@register_model
def iamnn_r34_fmnist(**kwargs) -> IamNN:
    """IamNN-r34 at width 1/8 for Fashion-MNIST (1x28x28, 10 classes), as trained by
    ``recipes/fashion_mnist/iamnn_r34_shipped.yaml``; ``pretrained=True`` loads its weights."""
    return _iamnn("r34", **{"stem": "cifar", "in_chans": 1, "num_classes": 10, "width": 0.125, **kwargs})


register_pretrained("iamnn_r34_fmnist", "iamnn_r34_fmnist.safetensors")


@register_model
def iamnn_r34_fmnist_cascade(**kwargs) -> IamNN:
    """The same network as ``iamnn_r34_fmnist``, trained at one iteration per stage
    (``recipes/fashion_mnist/study/fixed_k1.yaml``), whose regime is a confidence cascade: every
    image runs once, the least sure also mirrored (``cascade:1,flip-1@t``, t chosen on the
    validation split for half of fixed k = 2's MACs); ``pretrained=True`` loads its weights."""
    return _iamnn("r34", **{"stem": "cifar", "in_chans": 1, "num_classes": 10, "width": 0.125, **kwargs})


register_pretrained("iamnn_r34_fmnist_cascade", "iamnn_r34_fmnist_cascade.safetensors")


@register_model
def iamnn_r34_cluttered_fmnist(**kwargs) -> IamNN:
    """IamNN-r34 at width 1/8 for Cluttered Fashion-MNIST (1x40x40, 10 classes; ``iamnn.data.
    ClutteredFashionMNISTDataModule``), trained at two iterations per stage
    (``recipes/cluttered_fashion_mnist/study/fixed_k2.yaml``), whose regime is a confidence cascade:
    every image runs once, the least sure also mirrored (``cascade:2,flip-2@t``, t chosen on the
    validation split for 16 M MACs); ``pretrained=True`` loads its weights."""
    return _iamnn("r34", **{"stem": "cifar", "in_chans": 1, "num_classes": 10, "width": 0.125, **kwargs})


register_pretrained("iamnn_r34_cluttered_fmnist", "iamnn_r34_cluttered_fmnist.safetensors")
