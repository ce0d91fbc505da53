"""numba.cuda GEMM and the Dense kernels: matmul, bias_add, bias_grad, linear, linear_backward (reference.py's).

The GEMM tiles C into BM x BN blocks, one thread block each. Per step of K the
block stages a BK-deep slice of op(A) (BM x BK) and op(B) (BK x BN) in shared
memory; each thread then keeps a TM x TN tile of C in registers (2-D register
blocking: per k it loads TM values of A and TN of B and does TM*TN multiply-adds).
Transposes are absorbed by the indexing of the shared-memory loads, which are
coalesced for either layout, so backprop's dy.T @ x and dy @ w need no copies.
A thread owns rows ty + i*(BM/TM) and columns tx + j*(BN/TN): neighbouring
threads read neighbouring shared-memory words and write neighbouring columns.
linear fuses the bias into the GEMM's epilogue.
"""
import functools
import math

import numpy as np
from numba import cuda, float32, float64

from ._device import Call, as_device, copy_into, empty, launch

# (BM, BN, BK, TM, TN) tiles, largest first: 256, 256 and 64 threads a block.
LARGE = (128, 128, 8, 8, 8)
SMALL = (64, 64, 16, 4, 4)
TINY = (32, 32, 8, 4, 4)
CONFIGS = (LARGE, SMALL, TINY)
_NUMBA_TYPES = {np.dtype(np.float32): float32, np.dtype(np.float64): float64}


@functools.lru_cache(maxsize=None)
def sm_count():
    """Streaming multiprocessors of the current GPU (132 on an H100; assumed under the simulator)."""
    try:
        return int(cuda.get_current_device().MULTIPROCESSOR_COUNT)
    except Exception:
        return 132


def choose_config(m, n, sms=None):
    """The largest tile that still gives every SM a block for an m x n output
    (batch-sized GEMMs such as 256 x 128 need small tiles to fill the GPU)."""
    sms = sm_count() if sms is None else sms
    for config in CONFIGS:
        if math.ceil(m / config[0]) * math.ceil(n / config[1]) >= sms:
            return config
    return TINY


@functools.lru_cache(maxsize=None)
def _gemm_kernel(config, trans_a, trans_b, with_bias, dtype):
    bm, bn, bk, tm, tn = config
    nty, ntx = bm // tm, bn // tn
    nt = ntx * nty
    a_loads, b_loads = (bm * bk) // nt, (bk * bn) // nt
    assert a_loads * nt == bm * bk and b_loads * nt == bk * bn
    ty_ = _NUMBA_TYPES[np.dtype(dtype)]
    zero = np.dtype(dtype).type(0)

    @cuda.jit
    def gemm(a, b, bias, c, m, n, k):
        tid = cuda.threadIdx.x
        tx = tid % ntx
        ty = tid // ntx
        row0 = cuda.blockIdx.y * bm
        col0 = cuda.blockIdx.x * bn
        a_s = cuda.shared.array((bk, bm), ty_)
        b_s = cuda.shared.array((bk, bn), ty_)
        acc = cuda.local.array((tm, tn), ty_)
        ra = cuda.local.array(tm, ty_)
        rb = cuda.local.array(tn, ty_)
        for i in range(tm):
            for j in range(tn):
                acc[i, j] = zero
        for k0 in range(0, k, bk):
            # Stage op(A)[row0:row0+bm, k0:k0+bk] as a_s[kk, mm]; reads run along
            # the array's contiguous axis in either layout.
            for l in range(a_loads):
                e = tid + l * nt
                if trans_a:        # a is (K, M)
                    mm = e % bm
                    kk = e // bm
                    gr = k0 + kk
                    gc = row0 + mm
                    a_s[kk, mm] = a[gr, gc] if (gr < k and gc < m) else zero
                else:              # a is (M, K)
                    kk = e % bk
                    mm = e // bk
                    gr = row0 + mm
                    gc = k0 + kk
                    a_s[kk, mm] = a[gr, gc] if (gr < m and gc < k) else zero
            for l in range(b_loads):
                e = tid + l * nt
                if trans_b:        # b is (N, K)
                    kk = e % bk
                    nn = e // bk
                    gr = col0 + nn
                    gc = k0 + kk
                    b_s[kk, nn] = b[gr, gc] if (gr < n and gc < k) else zero
                else:              # b is (K, N)
                    nn = e % bn
                    kk = e // bn
                    gr = k0 + kk
                    gc = col0 + nn
                    b_s[kk, nn] = b[gr, gc] if (gr < k and gc < n) else zero
            cuda.syncthreads()
            for kk in range(bk):
                for i in range(tm):
                    ra[i] = a_s[kk, ty + i * nty]
                for j in range(tn):
                    rb[j] = b_s[kk, tx + j * ntx]
                for i in range(tm):
                    for j in range(tn):
                        acc[i, j] += ra[i] * rb[j]
            cuda.syncthreads()
        for i in range(tm):
            r = row0 + ty + i * nty
            if r < m:
                for j in range(tn):
                    col = col0 + tx + j * ntx
                    if col < n:
                        if with_bias:
                            c[r, col] = acc[i, j] + bias[col]
                        else:
                            c[r, col] = acc[i, j]

    return gemm, nt


def _gemm(a, b, trans_a, trans_b, bias=None, config=None, out=None):
    """C = op(a) @ op(b) (+ bias per column) on the device; a, b, bias DeviceArrays
    (a and b may be strided 2-D views); out, when given, an (m, n) DeviceArray
    (it too may be a view) that receives C."""
    m = a.shape[1] if trans_a else a.shape[0]
    k = a.shape[0] if trans_a else a.shape[1]
    n = b.shape[0] if trans_b else b.shape[1]
    c = empty((m, n), a.dtype) if out is None else out
    if m == 0 or n == 0:
        return c
    if k == 0:
        zero = empty((m, n), a.dtype)
        zero.fill(0)
        result = zero if bias is None else bias_add_device(zero, bias)
        if out is None:
            return result
        copy_into(result, out)
        return out
    config = config or choose_config(m, n)
    kernel, nt = _gemm_kernel(config, bool(trans_a), bool(trans_b), bias is not None, a.dtype)
    grid = (math.ceil(n / config[1]), math.ceil(m / config[0]))
    # Without a bias the kernel never reads this argument, but Numba types it:
    # hand it a 1-D array of the right dtype (a view of c).
    b_arg = bias.arr if bias is not None else b.arr[0]
    kernel[grid, nt](a.arr, b.arr, b_arg, c.arr, m, n, k)
    return c


def matmul(a, b, trans_a=False, trans_b=False):
    """op(a) @ op(b), where op transposes when the flag is set."""
    call = Call(a, b)
    a, b = as_device(a), as_device(b)
    return call.out(_gemm(a, b, trans_a, trans_b))


# ------------------------------------------------------------- bias


@cuda.jit
def _bias_add_kernel(x, b, y):
    n, f = x.shape
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, n * f, stride):
        i = e // f
        j = e - i * f
        y[i, j] = x[i, j] + b[j]


def bias_add_device(x, b):
    y = empty(x.shape, x.dtype)
    if x.size:
        _bias_add_kernel[launch(x.size)](x.arr, b.arr, y.arr)
    return y


def bias_add(x, b):
    """x (N, F) + b (F,) broadcast over rows."""
    call = Call(x, b)
    return call.out(bias_add_device(as_device(x), as_device(b)))


_BG_COLS, _BG_ROWS = 32, 8      # a block sums 32 columns, 8 row-strided partial sums each


@functools.lru_cache(maxsize=None)
def _bias_grad_kernel(dtype):
    ty_ = _NUMBA_TYPES[np.dtype(dtype)]
    zero = np.dtype(dtype).type(0)

    @cuda.jit
    def kernel(dy, out):
        n, f = dy.shape
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        col = cuda.blockIdx.x * _BG_COLS + tx
        part = cuda.shared.array((_BG_ROWS, _BG_COLS), ty_)
        s = zero
        if col < f:
            for i in range(ty, n, _BG_ROWS):
                s += dy[i, col]
        part[ty, tx] = s
        cuda.syncthreads()
        if ty == 0 and col < f:
            total = zero
            for r in range(_BG_ROWS):
                total += part[r, tx]
            out[col] = total
    return kernel


def bias_grad_device(dy):
    n, f = dy.shape
    out = empty((f,), dy.dtype)
    if f == 0:
        return out
    if n == 0:
        out.fill(0)
        return out
    _bias_grad_kernel(dy.dtype)[math.ceil(f / _BG_COLS), (_BG_COLS, _BG_ROWS)](dy.arr, out.arr)
    return out


def bias_grad(dy):
    """Gradient of bias_add for b: the column sums of dy (N, F)."""
    call = Call(dy)
    return call.out(bias_grad_device(as_device(dy)))


# ------------------------------------------------------------ dense


def linear(x, w, b):
    """Dense forward: x (N, in) @ w.T, w (out, in), plus b (out,) or None (bias fused)."""
    call = Call(x, w, b)
    x, w = as_device(x), as_device(w)
    b = None if b is None else as_device(b)
    return call.out(_gemm(x, w, False, True, bias=b))


def linear_backward(dy, x, w, need_dx=True):
    """Dense backward from dy (N, out) and the saved x: (dx or None, dw, db)."""
    call = Call(dy, x, w)
    dy, x, w = as_device(dy), as_device(x), as_device(w)
    dw = _gemm(dy, x, True, False)                    # (out, in)
    db = bias_grad_device(dy)
    dx = _gemm(dy, w, False, False) if need_dx else None
    return call.out(dx), call.out(dw), call.out(db)
