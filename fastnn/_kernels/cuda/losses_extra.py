"""numba.cuda huber, l1 and cross_entropy_weighted (reference.py's, torch's definitions), each (loss float, gradient).

As losses.py: one fused pass writes the gradient and per-block float64 partial
sums, and only the total comes back. cross_entropy_weighted gives a thread a row;
the kept rows' weight sum (the mean's denominator) is one more such reduction
before it, and that single number is read back to scale the pass.
"""
import functools
import math

import numpy as np
from numba import cuda, float64

from ._device import Call, as_device, empty
from .losses import _T, _block_sum, _blocks, _total


@functools.lru_cache(maxsize=None)
def _kernels(dtype):
    t = np.dtype(dtype).type
    zero = t(0)

    @cuda.jit
    def huber(pred, target, delta, inv, grad, partials):
        s, d = cuda.grid(1), cuda.gridsize(1)
        acc = 0.0
        for i in range(s, pred.shape[0], d):
            diff = pred[i] - target[i]
            a = abs(diff)
            if a < delta:
                acc += 0.5 * float64(diff) * float64(diff)
                grad[i] = diff * inv
            else:
                acc += float64(delta) * (float64(a) - 0.5 * float64(delta))
                grad[i] = delta * inv if diff > zero else -delta * inv
        _block_sum(acc, partials)

    @cuda.jit
    def l1(pred, target, inv, grad, partials):
        s, d = cuda.grid(1), cuda.gridsize(1)
        acc = 0.0
        for i in range(s, pred.shape[0], d):
            diff = pred[i] - target[i]
            acc += abs(float64(diff))
            grad[i] = inv if diff > zero else (-inv if diff < zero else zero)
        _block_sum(acc, partials)

    @cuda.jit
    def kept_weight(labels, weight, ignore, partials):
        s, d = cuda.grid(1), cuda.gridsize(1)
        acc = 0.0
        for i in range(s, labels.shape[0], d):
            if labels[i] != ignore:
                acc += float64(weight[labels[i]])
        _block_sum(acc, partials)

    @cuda.jit
    def ce_weighted(logits, labels, weight, ls, ignore, total_w, sum_w, grad, partials):
        n, c = logits.shape
        s, d = cuda.grid(1), cuda.gridsize(1)
        b = ls / (c * total_w)
        acc = 0.0
        for r in range(s, n, d):
            k = labels[r]
            if k == ignore:
                for j in range(c):
                    grad[r, j] = zero
                continue
            top = logits[r, 0]
            for j in range(1, c):
                top = max(top, logits[r, j])
            z = 0.0
            for j in range(c):
                z += math.exp(float64(logits[r, j] - top))
            log_z = math.log(z) + float64(top)
            a = (1 - ls) * float64(weight[k]) / total_w
            smooth = 0.0
            for j in range(c):
                log_p = float64(logits[r, j]) - log_z
                smooth += float64(weight[j]) * log_p
                g = math.exp(log_p) * (a + b * sum_w) - b * float64(weight[j])
                if j == k:
                    g -= a
                grad[r, j] = g
            acc -= a * (float64(logits[r, k]) - log_z) + b * smooth
        _block_sum(acc, partials)

    return dict(huber=huber, l1=l1, kept_weight=kept_weight, ce_weighted=ce_weighted)


def _elementwise(name, pred, target, *scalars):
    call = Call(pred, target)
    pred, target = as_device(pred), as_device(target, pred.dtype)
    grad = empty(pred.shape, pred.dtype)
    n = pred.size
    blocks = _blocks(n)
    partials = cuda.device_array(blocks, np.float64)
    ty = pred.dtype.type
    _kernels(pred.dtype)[name][blocks, _T](pred.arr.reshape(n), target.arr.reshape(n),
                                           *[ty(s) for s in scalars], ty(1.0 / n),
                                           grad.arr.reshape(n), partials)
    return _total(partials, blocks) / n, call.out(grad)


def huber(pred, target, delta=1.0):
    """torch.nn.HuberLoss (mean) and its gradient."""
    return _elementwise("huber", pred, target, delta)


def l1(pred, target):
    """torch.nn.L1Loss (mean) and its gradient sign(d) / size."""
    return _elementwise("l1", pred, target)


def cross_entropy_weighted(logits, labels, weight, label_smoothing=0.0, ignore_index=-1):
    """torch.nn.CrossEntropyLoss(weight, label_smoothing, ignore_index), class indices (N,)."""
    call = Call(logits, labels, weight)
    logits = as_device(logits)
    labels, weight = as_device(labels, np.int64), as_device(weight, logits.dtype)
    n = logits.shape[0]
    kernels = _kernels(logits.dtype)
    blocks = _blocks(n)
    partials = cuda.device_array(blocks, np.float64)
    kernels["kept_weight"][blocks, _T](labels.arr, weight.arr, int(ignore_index), partials)
    total_w = _total(partials, blocks)
    grad = empty(logits.shape, logits.dtype)
    if total_w == 0:
        grad.fill(0)
        return 0.0, call.out(grad)
    sum_w = float(np.asarray(weight.copy_to_host(), dtype=np.float64).sum())   # C numbers
    kernels["ce_weighted"][blocks, _T](logits.arr, labels.arr, weight.arr, float(label_smoothing),
                                       int(ignore_index), total_w, sum_w, grad.arr, partials)
    return _total(partials, blocks), call.out(grad)
