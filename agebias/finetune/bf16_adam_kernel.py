"""The compiled Adam/AdamW pass of :mod:`agebias.finetune.bf16_weights` (needs numba; imported only by that module).

Module level with an explicit signature, as :mod:`agebias.finetune.bf16_sgd_kernel`: compiled once, then loaded from
numba's cache by later processes.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange, types

from agebias.finetune.bf16_bits import fma32, from_bf16, to_bf16

SIGNATURE = types.void(types.float32[::1], types.uint16[::1], types.float32[::1], types.float32[::1],
                       types.uint16[::1], types.float32, types.float32, types.float32, types.float32, types.float32,
                       types.float32, types.float32, types.float32, types.boolean)


@njit(SIGNATURE, parallel=True, cache=True)
def adam_bf16(w, g, exp_avg, exp_avg_sq, s, decay, l2, avg_weight, beta2, sq_weight, step_size, bias2_sqrt, eps,
              maximize):  # pragma: no cover - compiled
    """In place, element by element in fp32, in the order of torch's Adam (``g`` and ``s`` hold bf16 bit
    patterns; the scalars are computed in float64 by the caller and rounded to fp32 as torch's fused CPU Adam
    rounds them, whose weights and first moments this matches bit for bit): d = ±g; w *= decay (AdamW:
    1 - lr * weight_decay, else 1); d += l2 * w (Adam's weight decay, else 0); exp_avg = lerp(exp_avg, d,
    avg_weight = 1 - beta1); exp_avg_sq = exp_avg_sq * beta2 + sq_weight * d * d (sq_weight = 1 - beta2);
    w += -step_size * exp_avg / (sqrt(exp_avg_sq) / bias2_sqrt + eps); s = bf16(w)."""
    one, half = np.float32(1.0), np.float32(0.5)
    for i in prange(w.size):
        wi = w[i]
        d = from_bf16(g[i])
        if maximize:
            d = -d
        if decay != one:
            wi = wi * decay
        if l2 != 0:  # torch's add with alpha, its lerp and its addcmul are fused multiply-adds
            d = fma32(l2, wi, d)
        m = exp_avg[i]
        m = fma32(avg_weight, d - m, m) if avg_weight < half else fma32(m - d, one - avg_weight, d)
        exp_avg[i] = m
        v = fma32(sq_weight * d, d, exp_avg_sq[i] * beta2)
        exp_avg_sq[i] = v
        wi = wi + -step_size * m / (np.float32(math.sqrt(v)) / bias2_sqrt + eps)
        w[i] = wi
        s[i] = to_bf16(wi)
