"""Backbones by name, in the manner of timm's ``create_model``.

Names: ``iresnet18`` ... ``iresnet200``; ``iresnet:D1,D2,D3,D4[@W1,W2,W3,W4]`` for custom stage depths (and widths);
``timm:<name>`` for any timm model (optional extra ``agebias[search]``) with a 512-d embedding head at 112x112.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from agebias.errors import UserError
from agebias.models import iresnet as _ir

_BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _BACKBONES[name] = fn
        return fn

    return deco


for _name in _ir.STAGE_DEPTHS:
    register_backbone(_name)(getattr(_ir, _name))


def list_backbones() -> list[str]:
    return sorted(_BACKBONES) + ["iresnet:D1,D2,D3,D4[@W1,W2,W3,W4]", "timm:<name>"]


def create_backbone(name: str, **kwargs) -> nn.Module:
    """Build an untrained backbone by name (see module docstring); raises :class:`UserError` for unknown names."""
    if name in _BACKBONES:
        return _BACKBONES[name](**kwargs)
    if name.startswith("iresnet:"):
        return _custom_iresnet(name[len("iresnet:"):], **kwargs)
    if name.startswith("timm:"):
        from agebias.models.timm_backbone import create_timm_backbone

        return create_timm_backbone(name[len("timm:"):], **kwargs)
    raise UserError(f"unknown architecture '{name}'; choose one of: {', '.join(list_backbones())}")


def parse_iresnet_spec(name: str) -> tuple[list[int], list[int]]:
    """``iresnet:1,1,2,1@16,32,64,128`` -> ``([1, 1, 2, 1], [16, 32, 64, 128])`` (widths default 64..512)."""
    depth_part, _, width_part = name[len("iresnet:"):].partition("@")
    try:
        depths = [int(v) for v in depth_part.split(",")]
        widths = [int(v) for v in width_part.split(",")] if width_part else [64, 128, 256, 512]
    except ValueError:
        raise UserError(f"bad iresnet spec '{name}': expected e.g. iresnet:2,2,2,2@32,64,128,256") from None
    if len(depths) != 4 or len(widths) != 4 or min(depths) < 1 or min(widths) < 1:
        raise UserError(f"bad iresnet spec '{name}': need 4 stage depths >= 1 (and 4 widths >= 1)")
    return depths, widths


def _custom_iresnet(spec: str, **kwargs) -> nn.Module:
    depths, widths = parse_iresnet_spec("iresnet:" + spec)
    return _ir.IResNet(depths, widths=widths, **kwargs)
