"""IResNet backbones with exactly insightface ``arcface_torch``'s module tree and state-dict keys.

Input: 112x112 RGB, CHW, normalised ``(x / 255 - 0.5) / 0.5``. Output: 512-d embedding, *not* L2-normalised.
Stage depths: r18 [2,2,2,2], r34 [3,4,6,3], r50 [3,4,14,3], r100 [3,13,30,3], r200 [6,26,60,6]; widths
64/128/256/512, each stage starting with stride 2. All BatchNorms use eps 1e-5. ``features`` is a BatchNorm1d
whose weight is fixed at 1 and never trained (``requires_grad=False``), as in arcface_torch.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

STAGE_DEPTHS: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
    "iresnet200": (6, 26, 60, 6),
}
DEFAULT_WIDTHS = (64, 128, 256, 512)
BN_EPS = 1e-5


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class IBasicBlock(nn.Module):
    """``bn1 -> conv1 -> bn2 -> prelu -> conv2(stride) -> bn3`` plus identity or ``downsample``."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=BN_EPS)
        self.conv1 = conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.prelu = nn.PReLU(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + identity


class IResNet(nn.Module):
    """The arcface_torch IResNet. ``widths`` may be narrowed for tiny test or search models."""

    fc_scale = 7 * 7

    def __init__(self, layers: Sequence[int], num_features: int = 512, dropout: float = 0.0,
                 widths: Sequence[int] = DEFAULT_WIDTHS, stem_width: int | None = None):
        super().__init__()
        self.layers_config = tuple(int(n) for n in layers)
        self.widths = tuple(int(w) for w in widths)
        self.num_features = num_features
        self.inplanes = int(stem_width or self.widths[0])
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes, eps=BN_EPS)
        self.prelu = nn.PReLU(self.inplanes)
        self.layer1 = self._make_layer(self.widths[0], self.layers_config[0], stride=2)
        self.layer2 = self._make_layer(self.widths[1], self.layers_config[1], stride=2)
        self.layer3 = self._make_layer(self.widths[2], self.layers_config[2], stride=2)
        self.layer4 = self._make_layer(self.widths[3], self.layers_config[3], stride=2)
        self.bn2 = nn.BatchNorm2d(self.widths[3], eps=BN_EPS)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        self.fc = nn.Linear(self.widths[3] * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=BN_EPS)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes, stride), nn.BatchNorm2d(planes, eps=BN_EPS))
        layers = [IBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers.extend(IBasicBlock(planes, planes) for _ in range(1, blocks))
        return nn.Sequential(*layers)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(self.bn1(self.conv1(x)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """From layer4's output to the 512-d embedding: ``bn2 -> flatten -> dropout -> fc -> features``."""
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.forward_head(x)


def iresnet18(**kwargs) -> IResNet:
    return IResNet(STAGE_DEPTHS["iresnet18"], **kwargs)


def iresnet34(**kwargs) -> IResNet:
    return IResNet(STAGE_DEPTHS["iresnet34"], **kwargs)


def iresnet50(**kwargs) -> IResNet:
    return IResNet(STAGE_DEPTHS["iresnet50"], **kwargs)


def iresnet100(**kwargs) -> IResNet:
    return IResNet(STAGE_DEPTHS["iresnet100"], **kwargs)


def iresnet200(**kwargs) -> IResNet:
    return IResNet(STAGE_DEPTHS["iresnet200"], **kwargs)
