"""numba.cuda Dropout (mask + scale fused, and its backward) and Embedding (row gather, atomic
scatter-add backward): reference.dropout, dropout_backward, embedding, embedding_backward_into.

The mask is the reference's counter-based hash, so a seed gives the same mask here as on
the CPU backends; each thread hashes its own element indices (no RNG state on the device).
"""
import contextlib
import functools
import warnings

import numpy as np
from numba import cuda

from .. import reference as _r
from ._device import SIMULATED, Call, as_device, empty, launch

_U = np.uint64


@functools.lru_cache(maxsize=None)
def _kernels(dtype):
    t = np.dtype(dtype).type
    zero = t(0)
    gold, m1, m2 = _U(_r.SPLITMIX_GOLDEN), _U(_r.SPLITMIX_M1), _U(_r.SPLITMIX_M2)
    s27, s30, s31, s32, one = _U(27), _U(30), _U(31), _U(32), _U(1)

    @cuda.jit
    def dropout(x, seed, thr, scale, y, mask):
        s, d = cuda.grid(1), cuda.gridsize(1)
        for i in range(s, x.shape[0], d):
            h = seed[0] + (_U(i) + one) * gold
            h = (h ^ (h >> s30)) * m1
            h = (h ^ (h >> s27)) * m2
            h ^= h >> s31
            keep = (h >> s32) >= thr[0]
            mask[i] = 1 if keep else 0
            y[i] = x[i] * scale if keep else zero

    @cuda.jit
    def dropout_backward(dy, mask, scale, dx):
        s, d = cuda.grid(1), cuda.gridsize(1)
        for i in range(s, dy.shape[0], d):
            dx[i] = dy[i] * scale if mask[i] != 0 else zero

    @cuda.jit
    def gather(w, idx, out):
        s, d = cuda.grid(1), cuda.gridsize(1)
        dim = w.shape[1]
        for e in range(s, out.shape[0] * dim, d):
            n, j = e // dim, e % dim
            out[n, j] = w[idx[n], j]

    @cuda.jit
    def scatter_add(dy, idx, dw, pad):
        s, d = cuda.grid(1), cuda.gridsize(1)
        dim = dw.shape[1]
        for e in range(s, dy.shape[0] * dim, d):
            n, j = e // dim, e % dim
            r = idx[n]
            if r != pad:
                cuda.atomic.add(dw, (r, j), dy[n, j])

    return dict(dropout=dropout, dropout_backward=dropout_backward, gather=gather, scatter_add=scatter_add)


@contextlib.contextmanager
def _wrapping():
    """The simulator runs the hash on NumPy uint64 scalars, which wrap as on the GPU but warn
    about it; silence that warning (of this module only) while a simulated kernel runs."""
    if not SIMULATED:
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning, __name__)
        yield


def _flat(a):
    return a.arr.reshape(a.size)


def dropout(x, p, seed):
    call = Call(x)
    x = as_device(x)
    y, mask = empty(x.shape, x.dtype), empty(x.shape, np.uint8)
    if x.size:
        # uint64 scalars go in as one-element arrays: a kernel argument above 2**63 would not fit int64
        consts = as_device(np.array([seed, _r.dropout_threshold(p)], dtype=np.uint64))
        with _wrapping():
            _kernels(x.dtype)["dropout"][launch(x.size)](
                _flat(x), consts.arr[0:1], consts.arr[1:2], x.dtype.type(1.0 / (1.0 - p)), _flat(y), _flat(mask))
    return call.out(y), call.out(mask)


def dropout_backward(dy, mask, p):
    call = Call(dy, mask)
    dy, mask = as_device(dy), as_device(mask)
    dx = empty(dy.shape, dy.dtype)
    if dy.size:
        _kernels(dy.dtype)["dropout_backward"][launch(dy.size)](
            _flat(dy), _flat(mask), dy.dtype.type(1.0 / (1.0 - p)), _flat(dx))
    return call.out(dx)


def embedding(weight, idx):
    call = Call(weight, idx)
    weight, idx = as_device(weight), as_device(idx)
    d = weight.shape[1]
    out = empty((idx.size, d), weight.dtype)
    if out.size:
        _kernels(weight.dtype)["gather"][launch(out.size)](weight.arr, _flat(idx), out.arr)
    return call.out(out.reshape(tuple(idx.shape) + (d,)))


def embedding_backward_into(dy, idx, dw, padding_idx=-1):
    dy, idx, dw_dev = as_device(dy), as_device(idx), as_device(dw)
    if idx.size:
        _kernels(dw_dev.dtype)["scatter_add"][launch(dy.size)](
            dy.arr.reshape(idx.size, dw_dev.shape[1]), _flat(idx), dw_dev.arr, np.int64(padding_idx))
    if isinstance(dw, np.ndarray):     # host dw: the sums go back into it
        dw[...] = dw_dev.arr.copy_to_host()
