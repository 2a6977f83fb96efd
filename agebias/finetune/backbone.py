"""The backbone a run starts from, and what the trainer needs to know about it.

A backbone is a random-init architecture (``init="random"``), a ``.pth``/``.safetensors`` checkpoint, an iresnet or
SFace-layout ONNX file (imported into the torch iresnet or :class:`~agebias.models.sface_net.SFaceNet`), or a
pretrained model shipped in a package (``sface``). Backbones with stages (:mod:`agebias.finetune.freeze`: iresnet,
SFace) can have a frozen prefix run separately; other backbones run whole.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from agebias.errors import ModelError, UserError
from agebias.finetune.config import FinetuneConfig


def build_backbone(config: FinetuneConfig) -> nn.Module:
    """A random-init architecture (``init="random"``), a packaged pretrained model (``sface``) or a checkpoint /
    ONNX file."""
    from agebias.models.checkpoints import PRETRAINED_BACKBONES, load_backbone
    from agebias.models.registry import create_backbone

    if config.init == "random":
        return create_backbone(config.arch or config.backbone)
    if config.backbone in PRETRAINED_BACKBONES:
        return load_backbone(config.backbone, arch=config.arch)
    path = Path(config.backbone).expanduser()
    if not path.exists():
        try:
            create_backbone(config.backbone)
        except UserError:
            raise ModelError(f"backbone {path} not found") from None
        raise ModelError(f"'{config.backbone}' is an architecture name, not a weights file: pass --init random to "
                         f"train it from random weights, or give a .pth/.safetensors/.onnx file")
    if path.suffix.lower() == ".onnx":
        from agebias.models.onnx_backbone import import_onnx_backbone

        model = import_onnx_backbone(path)
        if config.arch:
            _check_arch(model, config.arch, path)
        return model
    return load_backbone(path, arch=config.arch, trust_checkpoint=config.trust_checkpoint)


def _check_arch(model: nn.Module, arch: str, path: Path) -> None:
    from agebias.models.checkpoints import check_state_dict
    from agebias.models.registry import create_backbone

    check_state_dict(create_backbone(arch), model.state_dict(), source=str(path), arch=arch)


def embedding_dim(model: nn.Module) -> int:
    """``num_features`` when the model has it, else the width of its output on two blank 112x112 images."""
    dim = getattr(model, "num_features", None)
    if isinstance(dim, int):
        return dim
    was = model.training
    model.eval()
    with torch.no_grad():
        dim = int(model(torch.zeros(2, 3, 112, 112, device=next(model.parameters()).device)).shape[1])
    model.train(was)
    return dim


def arch_name(model: nn.Module, config: FinetuneConfig) -> str | None:
    """The architecture for config.json: the configured one, else inferred from the weights (None if unknown)."""
    if config.arch:
        return config.arch
    if config.init == "random":
        return config.backbone
    from agebias.models.checkpoints import infer_arch

    try:
        return infer_arch(model.state_dict())
    except UserError:  # not an iresnet layout: recorded as unknown
        return None
