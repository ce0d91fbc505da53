"""Losses from outputs: (loss as a Python float, d loss / d output), one pass.

cross_entropy fuses log-softmax, the loss and its gradient into one pass per
row; binary_cross_entropy fuses sigmoid, loss and gradient per element. Both
work from exp(-|z|) or exp(z - max), so logits of +-1e4 stay finite. Sums
accumulate in float64.
"""
import math

import numpy as np
from numba import njit

from ._math import FM, exp, log1p_unit
from .activations import row_max


@njit(cache=True, fastmath=FM, error_model="numpy")
def _mse(pred, target):
    grad = np.empty_like(pred)
    pf, tf, gf = pred.reshape(-1), target.reshape(-1), grad.reshape(-1)
    scale = 2.0 / pf.size
    s = 0.0
    for i in range(pf.size):
        d = pf[i] - tf[i]
        s += np.float64(d) * d
        gf[i] = scale * d
    return s / pf.size, grad


@njit(cache=True, fastmath=FM, error_model="numpy")
def _log_softmax_row(row, g):
    """g <- exp(row - max); returns (max, sum of g)."""
    m = np.float64(row_max(row))
    s = 0.0
    for j in range(row.size):
        e = exp(row[j] - m)
        g[j] = e
        s += e
    return m, s


@njit(cache=True, fastmath=FM, error_model="numpy")
def _cross_entropy_index(logits, labels):
    n = logits.shape[0]
    grad = np.empty_like(logits)
    total = 0.0
    for i in range(n):
        row, g = logits[i], grad[i]
        m, s = _log_softmax_row(row, g)
        log_z = math.log(s)
        scale = 1.0 / (n * s)                       # p / n = e / (sum * n)
        for j in range(row.size):
            g[j] = g[j] * scale
        k = labels[i]
        total -= (row[k] - m) - log_z
        g[k] -= 1.0 / n
    return total / n, grad


@njit(cache=True, fastmath=FM, error_model="numpy")
def _cross_entropy_soft(logits, labels):
    n = logits.shape[0]
    grad = np.empty_like(logits)
    total = 0.0
    for i in range(n):
        row, t, g = logits[i], labels[i], grad[i]
        m, s = _log_softmax_row(row, g)
        log_z = math.log(s)
        scale = 1.0 / s
        for j in range(row.size):
            total -= t[j] * ((row[j] - m) - log_z)
            g[j] = (g[j] * scale - t[j]) / n
    return total / n, grad


@njit(cache=True, fastmath=FM, error_model="numpy")
def _binary_cross_entropy(logits, target):
    grad = np.empty_like(logits)
    zf, tf, gf = logits.reshape(-1), target.reshape(-1), grad.reshape(-1)
    inv = 1.0 / zf.size
    total = 0.0
    for i in range(zf.size):
        z = np.float64(zf[i])
        t = tf[i]
        e = exp(-abs(z))
        r = 1.0 / (1.0 + e)
        sig = r if z >= 0 else e * r
        total += (z if z > 0 else 0.0) - z * t + log1p_unit(e)
        gf[i] = (sig - t) * inv
    return total * inv, grad


def mse(pred, target):
    """Mean over every element of (pred - target)**2."""
    loss, grad = _mse(pred, target)
    return float(loss), grad


def cross_entropy(logits, labels):
    """Softmax cross-entropy from logits (N, C), averaged over the batch.

    labels are int64 class indices (N,) or float target rows (N, C).
    """
    if labels.ndim == 1:
        loss, grad = _cross_entropy_index(logits, labels)
    else:
        loss, grad = _cross_entropy_soft(logits, labels)
    return float(loss), grad


def binary_cross_entropy(logits, target):
    """Sigmoid + binary cross-entropy from logits, averaged over elements."""
    loss, grad = _binary_cross_entropy(logits, target)
    return float(loss), grad
