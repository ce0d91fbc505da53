"""Fused Dense kernels: reference.linear_act (bias + activation on the GEMM's
output) and reference.linear_backward_into (gradients accumulated by the GEMM
straight into the model's gradient buffers)."""
import numpy as np
from numba import njit

from . import activations
from ._math import FM
from .gemm import _aligned_empty, _fill_rows, _gemm_into, matmul


@njit(cache=True, fastmath=FM, error_model="numpy")
def _leaky_relu_inplace(y, alpha):
    yf = y.reshape(-1)
    for i in range(yf.size):
        v = yf[i]
        yf[i] = v if v > 0 else v * alpha       # alpha = 0: relu


@njit(cache=True, fastmath=FM, error_model="numpy")
def _column_sums_into(dy, db, accumulate):
    if not accumulate:
        db[:] = 0
    for i in range(dy.shape[0]):
        for j in range(dy.shape[1]):
            db[j] += dy[i, j]


def linear_act(x, w, b, activation, alpha=0.01):
    """activation(x @ w.T + b): the bias seeds C, the GEMM adds into it, and the
    activation runs over C while it is still in cache."""
    c = _aligned_empty(x.shape[0], w.shape[0], x)
    if b is None:
        _gemm_into(x, w, c, False, True)
    else:
        _fill_rows(c, b)
        _gemm_into(x, w, c, False, True, accumulate=True)
    if activation == "relu" or activation == "leaky_relu":
        _leaky_relu_inplace(c, c.dtype.type(alpha if activation == "leaky_relu" else 0.0))
        return c
    return getattr(activations, activation)(c)


def linear_backward_into(dy, x, w, dw, db, need_dx=True, accumulate=True):
    """dw (+)= dy.T @ x and db (+)= column sums of dy, in place; returns dx or None."""
    _gemm_into(dy, x, dw, True, False, accumulate)
    if db is not None:
        _column_sums_into(dy, db, accumulate)
    return matmul(dy, w) if need_dx else None

