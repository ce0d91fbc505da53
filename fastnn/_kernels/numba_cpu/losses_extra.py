"""huber, l1 and cross_entropy_weighted from outputs, one pass each: reference.py's (torch's definitions).

Sums accumulate in float64; cross_entropy_weighted first sums the kept rows'
class weights (its mean's denominator), then does log-softmax, loss and gradient
per row.
"""
import math

import numpy as np
from numba import njit

from ._math import FM, exp
from .activations import row_max


@njit(cache=True, fastmath=FM, error_model="numpy")
def _huber(pred, target, delta):
    grad = np.empty_like(pred)
    pf, tf, gf = pred.reshape(-1), target.reshape(-1), grad.reshape(-1)
    inv = 1.0 / pf.size
    half = 0.5 * delta
    s = 0.0
    for i in range(pf.size):
        d = pf[i] - tf[i]
        a = abs(d)
        if a < delta:
            s += 0.5 * np.float64(d) * d
            gf[i] = d * inv
        else:
            s += delta * (np.float64(a) - half)
            gf[i] = (delta * inv) if d > 0 else (-delta * inv)
    return s * inv, grad


@njit(cache=True, fastmath=FM, error_model="numpy")
def _l1(pred, target):
    grad = np.empty_like(pred)
    pf, tf, gf = pred.reshape(-1), target.reshape(-1), grad.reshape(-1)
    inv = 1.0 / pf.size
    s = 0.0
    for i in range(pf.size):
        d = pf[i] - tf[i]
        s += abs(np.float64(d))
        gf[i] = inv if d > 0 else (-inv if d < 0 else 0.0)
    return s * inv, grad


@njit(cache=True, fastmath=FM, error_model="numpy")
def _ce_weighted(logits, labels, weight, ls, ignore):
    n, c = logits.shape
    grad = np.zeros_like(logits)
    total_w = 0.0
    for i in range(n):
        if labels[i] != ignore:
            total_w += weight[labels[i]]
    if total_w == 0:
        return 0.0, grad
    sum_w = 0.0
    for j in range(c):
        sum_w += weight[j]
    b = ls / (c * total_w)
    total = 0.0
    for i in range(n):
        k = labels[i]
        if k == ignore:
            continue
        row, g = logits[i], grad[i]
        m = np.float64(row_max(row))
        s = 0.0
        for j in range(c):
            e = exp(row[j] - m)
            g[j] = e
            s += e
        log_z = math.log(s) + m
        a = (1 - ls) * weight[k] / total_w
        scale = (a + b * sum_w) / s
        smooth = 0.0
        for j in range(c):
            smooth += weight[j] * (row[j] - log_z)
            g[j] = g[j] * scale - b * weight[j]
        g[k] -= a
        total -= a * (row[k] - log_z) + b * smooth
    return total, grad


def huber(pred, target, delta=1.0):
    """torch.nn.HuberLoss (mean) and its gradient."""
    loss, grad = _huber(pred, target, float(delta))
    return float(loss), grad


def l1(pred, target):
    """torch.nn.L1Loss (mean) and its gradient sign(d) / size."""
    loss, grad = _l1(pred, target)
    return float(loss), grad


def cross_entropy_weighted(logits, labels, weight, label_smoothing=0.0, ignore_index=-1):
    """torch.nn.CrossEntropyLoss(weight, label_smoothing, ignore_index), class indices."""
    loss, grad = _ce_weighted(logits, labels, weight, float(label_smoothing), int(ignore_index))
    return float(loss), grad
