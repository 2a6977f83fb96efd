"""The compiled PReLU backward pass of :mod:`agebias.finetune.bf16_prelu` (needs numba; imported only by that
module). Module level with an explicit signature, so that later processes load it from numba's cache."""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types

from agebias.finetune.bf16_bits import from_bf16, to_bf16

SIGNATURE = types.void(types.uint16[:, ::1], types.uint16[:, ::1], types.float32[::1], types.uint16[:, ::1],
                       types.float32[:, ::1])


@njit(SIGNATURE, parallel=True, cache=True)
def prelu_backward_bf16(x, grad, weight, grad_x, partial):  # pragma: no cover - compiled
    """PReLU's gradients for a channels-last input viewed as (positions, channels); ``x``, ``grad`` and ``grad_x``
    hold bf16 bit patterns, ``weight`` the per-channel slope (a bf16 value, as float32). grad_x = grad where x > 0,
    else bf16(grad * weight), rounded to nearest even (NaN stays NaN); partial[t, c] = the sum over thread t's
    share of the positions of grad * x where x <= 0 (the slope's gradient, summed in float32)."""
    n, c = x.shape
    shares = partial.shape[0]
    zero = np.float32(0.0)
    for t in prange(shares):
        acc = partial[t]
        for ch in range(c):
            acc[ch] = zero
        for i in range(n * t // shares, n * (t + 1) // shares):
            for ch in range(c):
                xv = from_bf16(x[i, ch])
                bits = grad[i, ch]
                if xv > zero:
                    grad_x[i, ch] = bits
                    continue
                gv = from_bf16(bits)
                grad_x[i, ch] = to_bf16(gv * weight[ch])
                acc[ch] += gv * xv
