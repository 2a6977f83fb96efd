"""Mixed precision: whether this machine computes bf16 natively, and what ``--precision auto`` means on a device.

``auto`` is bf16 on a CUDA GPU that supports it and on a CPU with native bf16 instructions (Intel AMX-BF16 or
AVX512-BF16: the ``amx_bf16`` / ``avx512_bf16`` flags of ``/proc/cpuinfo``), else fp32. There oneDNN runs bf16
convolutions and matrix products several times faster than fp32; elsewhere bf16 is emulated and slower than fp32.
bf16 and fp16 runs use autocast with fp32 master weights and channels-last convolutions (:func:`channels_last`).
"""

from __future__ import annotations

from pathlib import Path

CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> list[str]:
    """The native-bf16 flags of this CPU (of :data:`CPU_BF16_FLAGS`; empty when none or unknown, e.g. not Linux)."""
    try:
        text = Path(cpuinfo).read_text(encoding="ascii", errors="replace")
    except OSError:
        return []
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
    return [f for f in CPU_BF16_FLAGS if f in flags]


def cuda_bf16(device) -> bool:
    """True when ``device`` is a CUDA GPU with bf16 support (compute capability 8.0 or later)."""
    import torch

    return torch.device(device).type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_precision(precision: str, device) -> str:
    """``precision`` with ``auto`` made concrete for ``device``: bf16 where it is native (see the module notes),
    else fp32; other values are returned as they are."""
    import torch

    if precision != "auto":
        return precision
    dev = torch.device(device)
    native = cuda_bf16(dev) if dev.type == "cuda" else dev.type == "cpu" and bool(cpu_bf16_flags())
    return "bf16" if native else "fp32"


def channels_last(precision: str) -> bool:
    """Whether runs in ``precision`` keep 4-D weights and activations channels-last (bf16 and fp16: the layout the
    reduced-precision convolution kernels of oneDNN and cuDNN are fastest with; fp32 keeps torch's default)."""
    return precision in ("bf16", "fp16")


def prefix_channels_last(precision: str, device) -> bool:
    """Whether a frozen prefix (no autograd) takes its images channels-last: where :func:`channels_last` holds, and
    on CPU in every precision (oneDNN's fp32 inference convolutions are faster so: 0.86x the time of iresnet50's
    stem + layer1..3 at batch 25 on a 2-core AMX Xeon). Cached and recomputed prefix outputs both come this way."""
    import torch

    return channels_last(precision) or torch.device(device).type == "cpu"
