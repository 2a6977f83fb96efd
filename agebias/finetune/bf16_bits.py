"""bf16 bit patterns and fused multiply-adds inside numba kernels (imported only by the kernel modules, which need
numba).

bf16 values travel as uint16 bit patterns (numpy has no bf16 type): the upper half of a float32's bits. numba's
cache checks only each kernel's own source file: after editing this module, touch the kernel modules (or delete
their ``__pycache__/*.nbi`` files) so that they are compiled again.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def as_f32(typingctx, bits):  # pragma: no cover - compiled
    """The float32 whose bit pattern is the uint32 ``bits``."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))
    return types.float32(types.uint32), codegen


@intrinsic
def as_u32(typingctx, value):  # pragma: no cover - compiled
    """The bit pattern of the float32 ``value``, as a uint32."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.uint32))
    return types.uint32(types.float32), codegen


@intrinsic
def fma32(typingctx, a, b, c):  # pragma: no cover - compiled
    """``a * b + c`` for float32 values, rounded once (LLVM's fma: one instruction on CPUs with FMA), as torch's
    vectorised CPU kernels compute lerp, addcmul and add with alpha."""
    def codegen(context, builder, signature, args):
        return builder.fma(*args)
    return types.float32(types.float32, types.float32, types.float32), codegen


@njit(inline="always")
def from_bf16(bits):  # pragma: no cover - compiled
    """The float32 value of the bf16 bit pattern ``bits`` (uint16)."""
    return as_f32(np.uint32(bits) << np.uint32(16))


@njit(inline="always")
def to_bf16(value):  # pragma: no cover - compiled
    """The bf16 bit pattern (uint16) of the float32 ``value``, rounded to nearest even as torch rounds; NaN stays
    NaN."""
    if value != value:
        return np.uint16(0x7FC0)
    u = as_u32(value)
    return np.uint16((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))
