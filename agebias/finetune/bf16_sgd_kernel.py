"""The compiled SGD pass of :mod:`agebias.finetune.bf16_weights` (needs numba; imported only by that module).

Defined at module level with an explicit signature, so that numba compiles it once at import and later processes
load it from numba's cache (a kernel built inside a function would carry a new cache key in every process).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic


@intrinsic
def _as_f32(typingctx, bits):  # pragma: no cover - compiled
    """The float32 whose bit pattern is the uint32 ``bits``."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))
    return types.float32(types.uint32), codegen


@intrinsic
def _as_u32(typingctx, value):  # pragma: no cover - compiled
    """The bit pattern of the float32 ``value``, as a uint32."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.uint32))
    return types.uint32(types.float32), codegen


SIGNATURE = types.void(types.float32[::1], types.uint16[::1], types.float32[::1], types.uint16[::1], types.float32,
                       types.float32, types.float32, types.float32, types.boolean, types.boolean, types.boolean)


@njit(SIGNATURE, parallel=True, cache=True)
def sgd_bf16(w, g, buf, s, lr, momentum, dampening, weight_decay, nesterov, maximize, first):  # pragma: no cover
    """In place, element by element in fp32 (``g`` and ``s`` hold bf16 bit patterns): d = ±g + weight_decay * w;
    with momentum: buf = d on the first step, else momentum * buf + (1 - dampening) * d, then d = buf (nesterov:
    d + momentum * buf); w -= lr * d; s = bf16(w), rounded to nearest even (NaN stays NaN). ``buf`` is neither
    read nor written without momentum."""
    one = np.float32(1.0)
    for i in prange(w.size):
        wi = w[i]
        d = _as_f32(np.uint32(g[i]) << np.uint32(16))
        if maximize:
            d = -d
        if weight_decay != 0:
            d = d + weight_decay * wi
        if momentum != 0:
            b = d if first else momentum * buf[i] + (one - dampening) * d
            buf[i] = b
            d = d + momentum * b if nesterov else b
        wi = wi - lr * d
        w[i] = wi
        u = _as_u32(wi)
        if wi != wi:
            s[i] = np.uint16(0x7FC0)
        else:
            s[i] = np.uint16((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))
