"""Devices: one rule for every command. ``None``/``"auto"`` means CUDA when present, else the CPU; a device torch
does not know, or CUDA asked for where there is none, is a :class:`UserError` with one clear line. Under torchrun
(``LOCAL_RANK`` set) ``auto`` and ``cuda`` mean this process's GPU, ``cuda:LOCAL_RANK`` (modulo the number of GPUs,
so that more processes than GPUs share them)."""

from __future__ import annotations

from agebias.errors import UserError


def resolve_device(device=None):
    """A ``torch.device`` for ``device`` (``None``, ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a device)."""
    import os

    import torch

    local = os.environ.get("LOCAL_RANK")
    if device is None or str(device) in ("", "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device) == "cuda" and local is not None and torch.cuda.is_available():
        return torch.device(f"cuda:{int(local) % torch.cuda.device_count()}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device '{device}' (use cpu, cuda, cuda:N or auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{device}' requested but CUDA is not available (use --device cpu)")
    return dev
