"""The compiled PReLU backward pass of :mod:`agebias.finetune.bf16_prelu` (needs numba; imported only by that
module). Module level with an explicit signature, so that later processes load it from numba's cache."""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types

from agebias.finetune.bf16_sgd_kernel import _as_f32, _as_u32

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
                xv = _as_f32(np.uint32(x[i, ch]) << np.uint32(16))
                bits = grad[i, ch]
                if xv > zero:
                    grad_x[i, ch] = bits
                    continue
                gv = _as_f32(np.uint32(bits) << np.uint32(16))
                r = gv * weight[ch]
                u = _as_u32(r)
                if r != r:
                    grad_x[i, ch] = np.uint16(0x7FC0)
                else:
                    grad_x[i, ch] = np.uint16((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
                                              >> np.uint32(16))
                acc[ch] += gv * xv
