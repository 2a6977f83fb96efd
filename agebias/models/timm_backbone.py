"""Any timm model as a face backbone: 112x112 RGB input normalised ``(x/255-0.5)/0.5`` -> 512-d embedding.

The timm trunk's pooled features go through ``Linear(-> num_features)`` and ``BatchNorm1d`` (the iresnet head's
``fc`` + ``features`` pattern). timm is optional (``agebias[search]``); no pretrained weights are downloaded.
"""

from __future__ import annotations

import torch
from torch import nn

from agebias.errors import UserError


class TimmBackbone(nn.Module):
    """``trunk (timm, num_classes=0) -> fc -> features (BatchNorm1d)``."""

    def __init__(self, trunk: nn.Module, in_features: int, num_features: int = 512, dropout: float = 0.0):
        super().__init__()
        self.trunk = trunk
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(in_features, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.fc(self.dropout(self.trunk(x))))


def create_timm_backbone(name: str, num_features: int = 512, input_size: int = 112, dropout: float = 0.0,
                         **kwargs) -> TimmBackbone:
    """Build ``timm.create_model(name, pretrained=False, num_classes=0)`` with a 512-d embedding head."""
    try:
        import timm
    except ImportError:
        raise UserError(f"'timm:{name}' needs the optional package timm: pip install 'agebias[search]'") from None
    if not name or not timm.is_model(name):
        raise UserError(f"unknown timm model '{name}' (see timm.list_models())")
    extra = dict(kwargs)
    try:
        trunk = timm.create_model(name, pretrained=False, num_classes=0, img_size=input_size, **extra)
    except TypeError:  # convolutional models take no img_size
        trunk = timm.create_model(name, pretrained=False, num_classes=0, **extra)
    except Exception as err:  # noqa: BLE001 - timm models fail to build with many exception types
        reason = str(err).splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"timm cannot build '{name}' at {input_size}x{input_size}: {reason}") from None
    trunk.eval()
    with torch.no_grad():
        in_features = int(trunk(torch.zeros(1, 3, input_size, input_size)).shape[-1])
    return TimmBackbone(trunk, in_features, num_features=num_features, dropout=dropout)
