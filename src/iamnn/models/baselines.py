"""Baselines: torchvision's ResNets and MobileNets with a ``cifar`` stem option, ``in_chans`` and ``width``.

The blocks and forwards are torchvision's own. For the ResNets this module only swaps the stem
(3x3/1 conv, no max-pool for ``cifar``) and, for ``width != 1``, rebuilds the stages with scaled
widths through torchvision's ``_make_layer``. The MobileNets are torchvision's builders with
``width_mult``; ``cifar`` makes their first convolution stride 1 (a 28x28 image then ends at 2x2,
not 1x1), ``in_chans`` replaces it. Every baseline answers ``return_stats`` as IamNN does, with
one cost for every sample.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models import mobilenetv2, mobilenetv3
from torchvision.models import resnet as tv

from ..cost import model_macs
from .iamnn import IamNNStats, Stem, check_input, check_model_args, init_resnet_style, scaled_channels

RESNETS: dict[str, tuple[type[tv.BasicBlock] | type[tv.Bottleneck], tuple[int, int, int, int]]] = {
    "resnet18": (tv.BasicBlock, (2, 2, 2, 2)),
    "resnet34": (tv.BasicBlock, (3, 4, 6, 3)),
    "resnet50": (tv.Bottleneck, (3, 4, 6, 3)),
    "resnet101": (tv.Bottleneck, (3, 4, 23, 3)),
    "resnet152": (tv.Bottleneck, (3, 8, 36, 3)),
}


class StaticCost:
    """``forward(x, return_stats=True)`` for a network whose every sample costs the same: the
    IamNN-style stats say so (``max_iterations`` units per stage, ponder N + 1, the static MACs)."""

    in_chans: int
    max_iterations: tuple[int, ...]

    def forward(
        self, x: Tensor, return_stats: bool = False, halting: object = None
    ) -> Tensor | tuple[Tensor, IamNNStats]:
        """Logits, and with ``return_stats`` IamNN-style costs; ``halting`` is accepted and ignored
        (a baseline has no halting), so that one call serves every kind of model."""
        check_input(x, self.in_chans)
        logits = self.forward_head(self.forward_features(x))
        if not return_stats:
            return logits
        batch = x.shape[0]
        units = torch.tensor(self.max_iterations, dtype=torch.long, device=x.device).expand(batch, -1)
        macs = torch.full((batch,), self.static_macs(tuple(x.shape[-2:])), dtype=torch.long, device=x.device)
        return logits, IamNNStats(units.clone(), units.to(x.dtype) + 1.0, macs)

    def static_macs(self, input_hw: tuple[int, int]) -> int:
        """Per-sample MACs at ``input_hw`` (every sample costs the same), from FlopCounterMode."""
        cache = self.__dict__.setdefault("_macs_cache", {})
        if input_hw not in cache:
            cache[input_hw] = model_macs(self, (self.in_chans, *input_hw))
        return cache[input_hw]

    def max_macs(self, input_hw: tuple[int, int], halting: object = None) -> int:
        return self.static_macs(tuple(input_hw))


class ResNet(StaticCost, tv.ResNet):
    """torchvision ResNet plus ``stem``, ``in_chans``, ``width`` and IamNN-style ``return_stats``."""

    def __init__(
        self,
        block: type[tv.BasicBlock] | type[tv.Bottleneck],
        layers: tuple[int, int, int, int],
        num_classes: int = 1000,
        in_chans: int = 3,
        stem: Stem = "imagenet",
        width: float = 1.0,
        zero_init_residual: bool = False,
    ) -> None:
        check_model_args(num_classes, in_chans, width, stem)
        super().__init__(block, list(layers), num_classes=num_classes, zero_init_residual=zero_init_residual)
        self.layers, self.in_chans, self.stem_type, self.width = tuple(layers), in_chans, stem, width
        stem_channels = scaled_channels(64, width)
        if stem == "cifar":
            self.conv1 = nn.Conv2d(in_chans, stem_channels, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_chans, stem_channels, 7, stride=2, padding=3, bias=False)
        if width != 1.0:
            self.inplanes = stem_channels
            self.bn1 = nn.BatchNorm2d(stem_channels)
            planes = [scaled_channels(64 * 2**k, width) for k in range(4)]
            self.layer1 = self._make_layer(block, planes[0], layers[0])
            self.layer2 = self._make_layer(block, planes[1], layers[1], stride=2)
            self.layer3 = self._make_layer(block, planes[2], layers[2], stride=2)
            self.layer4 = self._make_layer(block, planes[3], layers[3], stride=2)
            self.fc = nn.Linear(planes[3] * block.expansion, num_classes)
        self.num_features = self.fc.in_features
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        init_resnet_style(self)  # torchvision's initialisation, re-applied to the modules replaced above
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, tv.Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, tv.BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    @property
    def max_iterations(self) -> tuple[int, ...]:
        return self.layers

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, features: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(features), 1))

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = nn.Linear(self.num_features, num_classes)


MOBILENETS = {"mobilenet_v2": mobilenetv2.mobilenet_v2, "mobilenet_v3_small": mobilenetv3.mobilenet_v3_small,
              "mobilenet_v3_large": mobilenetv3.mobilenet_v3_large}  # fmt: skip


class MobileNet(StaticCost, nn.Module):
    """torchvision's MobileNetV2 / V3 (``arch``, a key of :data:`MOBILENETS`) at ``width_mult``,
    with ``in_chans`` input channels and a stride-1 first convolution for ``stem="cifar"``."""

    def __init__(
        self,
        arch: str,
        num_classes: int = 1000,
        in_chans: int = 3,
        stem: Stem = "imagenet",
        width: float = 1.0,
        dropout: float = 0.2,
    ) -> None:
        check_model_args(num_classes, in_chans, width, stem)
        super().__init__()
        self.arch, self.in_chans, self.stem_type, self.width = arch, in_chans, stem, width
        self.net = MOBILENETS[arch](num_classes=num_classes, width_mult=width, dropout=dropout)
        first = self.net.features[0][0]
        self.net.features[0][0] = nn.Conv2d(
            in_chans, first.out_channels, 3, stride=1 if stem == "cifar" else 2, padding=1, bias=False
        )
        nn.init.kaiming_normal_(self.net.features[0][0].weight, mode="fan_out")  # torchvision's init
        self.num_features = self.net.classifier[0].in_features if arch != "mobilenet_v2" else self.net.last_channel

    @property
    def max_iterations(self) -> tuple[int, ...]:
        return ()  # no stages that iterate

    def forward_features(self, x: Tensor) -> Tensor:
        return self.net.features(x)

    def forward_head(self, features: Tensor) -> Tensor:
        return self.net.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1))

    def reset_classifier(self, num_classes: int) -> None:
        last = self.net.classifier[-1]
        self.net.classifier[-1] = nn.Linear(last.in_features, num_classes)
