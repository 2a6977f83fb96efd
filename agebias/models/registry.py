"""Backbones by name, in the manner of timm's ``create_model``.

Names: ``iresnet18`` ... ``iresnet200`` and ``sface`` (SFace's network, :mod:`agebias.models.sface_net`), registered
in :data:`BACKBONES`; ``iresnet:D1,D2,D3,D4[@W1,W2,W3,W4]`` for custom stage depths (and widths); ``timm:<name>`` for
any timm model (optional extra ``agebias[search]``) with a 512-d embedding head at 112x112.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from agebias.errors import SettingsError
from agebias.models import iresnet as _ir
from agebias.models.sface_net import sface_net
from agebias.registry import Registry

BackboneFactory = Callable[..., nn.Module]
PATTERNS = ("iresnet:D1,D2,D3,D4[@W1,W2,W3,W4]", "timm:<name>")
BACKBONES: Registry[BackboneFactory] = Registry("architecture", field="arch", hints=PATTERNS)
register_backbone = BACKBONES.register

for _name in _ir.STAGE_DEPTHS:
    register_backbone(_name, getattr(_ir, _name))
register_backbone("sface", sface_net)


def list_backbones() -> list[str]:
    """Registered names, then the ``iresnet:...`` and ``timm:<name>`` patterns."""
    return BACKBONES.names() + list(PATTERNS)


def create_backbone(name: str, **kwargs) -> nn.Module:
    """Build an untrained backbone by name (see module docstring); :class:`SettingsError` for unknown names."""
    if name.startswith("iresnet:"):
        depths, widths = parse_iresnet_spec(name)
        return _ir.IResNet(depths, widths=widths, **kwargs)
    if name.startswith("timm:"):
        from agebias.models.timm_backbone import create_timm_backbone

        return create_timm_backbone(name[len("timm:"):], **kwargs)
    return BACKBONES.get(name)(**kwargs)


def parse_iresnet_spec(name: str) -> tuple[list[int], list[int]]:
    """``iresnet:1,1,2,1@16,32,64,128`` -> ``([1, 1, 2, 1], [16, 32, 64, 128])`` (widths default 64..512)."""
    depth_part, _, width_part = name[len("iresnet:"):].partition("@")
    try:
        depths = [int(v) for v in depth_part.split(",")]
        widths = [int(v) for v in width_part.split(",")] if width_part else list(_ir.DEFAULT_WIDTHS)
    except ValueError:
        raise SettingsError(f"bad iresnet spec '{name}': expected e.g. iresnet:2,2,2,2@32,64,128,256",
                            field="arch") from None
    if len(depths) != 4 or len(widths) != 4 or min(depths) < 1 or min(widths) < 1:
        raise SettingsError(f"bad iresnet spec '{name}': need 4 stage depths >= 1 (and 4 widths >= 1)", field="arch")
    return depths, widths
