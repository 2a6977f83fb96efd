"""The compiled SGD pass of :mod:`agebias.finetune.bf16_weights` (needs numba; imported only by that module).

Defined at module level with an explicit signature, so that numba compiles it once at import and later processes
load it from numba's cache (a kernel built inside a function would carry a new cache key in every process).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types

from agebias.finetune.bf16_bits import from_bf16, to_bf16


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
        d = from_bf16(g[i])
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
        s[i] = to_bf16(wi)
