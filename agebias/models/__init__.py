"""Face-recognition backbones, heads, checkpoints, ONNX and embedders."""

from agebias.models.iresnet import IResNet, iresnet18, iresnet34, iresnet50, iresnet100, iresnet200
from agebias.models.registry import create_backbone, list_backbones, register_backbone

__all__ = [
    "IResNet", "iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200",
    "create_backbone", "list_backbones", "register_backbone",
]
