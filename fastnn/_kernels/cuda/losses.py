"""numba.cuda losses: mse, cross_entropy, binary_cross_entropy (reference.py's), each (loss float, gradient).

Each loss is one fused pass that writes the gradient and a per-block partial sum
of the loss (float64, reduced in shared memory); a one-block kernel adds the
partials, and only that one number is copied back to the host. cross_entropy
gives a thread a row: max, log-sum-exp, then p - target, so logits of +-1e4
stay finite; labels are int64 class indices (N,) or float target rows (N, C).
"""
import functools
import math

import numpy as np
from numba import cuda, float64

from ._device import SIMULATED, Call, as_device, empty

# Threads per block of the loss kernels (a power of two); fewer under the
# simulator, which runs each GPU thread as a Python thread.
_T = 32 if SIMULATED else 128
_MAX_BLOCKS = 512   # also the size of the partial-sum buffer


def _blocks(n):
    return max(1, min(_MAX_BLOCKS, math.ceil(n / _T)))


@cuda.jit(device=True)
def _block_sum(value, partials):
    """Tree-reduce each thread's float64 value in shared memory; thread 0 writes the block's sum."""
    buf = cuda.shared.array(_T, float64)
    tid = cuda.threadIdx.x
    buf[tid] = value
    cuda.syncthreads()
    half = _T // 2
    while half > 0:
        if tid < half:
            buf[tid] += buf[tid + half]
        cuda.syncthreads()
        half //= 2
    if tid == 0:
        partials[cuda.blockIdx.x] = buf[0]


@cuda.jit
def _finish(partials, count, out):
    buf = cuda.shared.array(_T, float64)
    tid = cuda.threadIdx.x
    s = 0.0
    for i in range(tid, count, _T):
        s += partials[i]
    buf[tid] = s
    cuda.syncthreads()
    half = _T // 2
    while half > 0:
        if tid < half:
            buf[tid] += buf[tid + half]
        cuda.syncthreads()
        half //= 2
    if tid == 0:
        out[0] = buf[0]


def _total(partials, blocks):
    out = cuda.device_array(1, np.float64)
    _finish[1, _T](partials, blocks, out)
    return float(out.copy_to_host()[0])


@functools.lru_cache(maxsize=None)
def _kernels(dtype):
    t = np.dtype(dtype).type
    zero, one = t(0), t(1)

    @cuda.jit
    def mse(pred, target, scale, grad, partials):
        s, d = cuda.grid(1), cuda.gridsize(1)
        acc = 0.0
        for i in range(s, pred.shape[0], d):
            diff = pred[i] - target[i]
            acc += float64(diff) * float64(diff)
            grad[i] = scale * diff
        _block_sum(acc, partials)

    @cuda.jit
    def bce(z, target, scale, grad, partials):
        s, d = cuda.grid(1), cuda.gridsize(1)
        acc = 0.0
        for i in range(s, z.shape[0], d):
            v = z[i]
            y = target[i]
            e = math.exp(-abs(v))
            acc += float64(max(v, zero) - v * y + math.log1p(e))
            sig = one / (one + e) if v >= zero else e / (one + e)
            grad[i] = (sig - y) * scale
        _block_sum(acc, partials)

    @cuda.jit(device=True)
    def shift(logits, r, c):
        """max + log-sum-exp of row r: log p_j = logits[r, j] - shift (stable for large logits)."""
        top = logits[r, 0]
        for j in range(1, c):
            top = max(top, logits[r, j])
        total = zero
        for j in range(c):
            total += math.exp(logits[r, j] - top)
        return top + math.log(total)

    @cuda.jit
    def ce_labels(logits, labels, scale, grad, partials):
        n, c = logits.shape
        s, d = cuda.grid(1), cuda.gridsize(1)
        acc = 0.0
        for r in range(s, n, d):
            log_z = shift(logits, r, c)
            label = labels[r]
            for j in range(c):
                log_p = logits[r, j] - log_z
                p = math.exp(log_p)
                if j == label:
                    acc -= float64(log_p)
                    p -= one
                grad[r, j] = p * scale
        _block_sum(acc, partials)

    @cuda.jit
    def ce_rows(logits, target, scale, grad, partials):
        n, c = logits.shape
        s, d = cuda.grid(1), cuda.gridsize(1)
        acc = 0.0
        for r in range(s, n, d):
            log_z = shift(logits, r, c)
            for j in range(c):
                log_p = logits[r, j] - log_z
                acc -= float64(target[r, j]) * float64(log_p)
                grad[r, j] = (math.exp(log_p) - target[r, j]) * scale
        _block_sum(acc, partials)

    return dict(mse=mse, bce=bce, ce_labels=ce_labels, ce_rows=ce_rows)


def _elementwise(name, a, target, scale_of_size):
    call = Call(a, target)
    a, target = as_device(a), as_device(target, a.dtype)
    grad = empty(a.shape, a.dtype)
    n = a.size
    blocks = _blocks(n)
    partials = cuda.device_array(blocks, np.float64)
    kernel = _kernels(a.dtype)[name]
    kernel[blocks, _T](a.arr.reshape(n), target.arr.reshape(n), a.dtype.type(scale_of_size(n)),
                       grad.arr.reshape(n), partials)
    return _total(partials, blocks) / n, call.out(grad)


def mse(pred, target):
    """Mean over every element of (pred - target)**2."""
    return _elementwise("mse", pred, target, lambda n: 2.0 / n)


def binary_cross_entropy(logits, target):
    """Sigmoid + binary cross-entropy from logits, averaged over elements."""
    return _elementwise("bce", logits, target, lambda n: 1.0 / n)


def cross_entropy(logits, labels):
    """Softmax cross-entropy from logits (N, C), averaged over the batch; labels
    int64 class indices (N,) or float target rows (N, C)."""
    call = Call(logits, labels)
    logits = as_device(logits)
    rows = len(getattr(labels, "shape", ())) == 2
    labels = as_device(labels, logits.dtype if rows else np.int64)
    n = logits.shape[0]
    grad = empty(logits.shape, logits.dtype)
    blocks = _blocks(n)
    partials = cuda.device_array(blocks, np.float64)
    kernel = _kernels(logits.dtype)["ce_rows" if rows else "ce_labels"]
    kernel[blocks, _T](logits.arr, labels.arr, logits.dtype.type(1.0 / n), grad.arr, partials)
    return _total(partials, blocks) / n, call.out(grad)
