"""numba.cuda LayerNorm, BatchNorm and global average pooling; match reference.py's "normalization" section.

LayerNorm gives a block each row: its threads sum the row shifted by its first value
(sum of d and of d*d, float64, in one sweep), reduce in shared memory, and write y;
the backward block reduces sum(g) and sum(g * xhat) the same way and writes dx, and a
second kernel gives a thread each feature for dweight / dbias (sums over the rows,
coalesced along the features). BatchNorm gives a block each channel: it reduces over
N and the S positions, moves the running buffers (thread 0), then writes y (or, in the
backward, dx) for its channel. Global average pooling gives a thread each (n, c).
"""
import functools

import numpy as np
from numba import cuda, float64

from ._device import SIMULATED, Call, as_device, empty, launch

# Threads per block of the reducing kernels (a power of two); few under the simulator.
_T = 32 if SIMULATED else 256


@cuda.jit(device=True)
def _reduce2(a, b, sa, sb):
    """Sum each thread's a and b over the block (float64 shared memory): every thread gets both."""
    tid = cuda.threadIdx.x
    sa[tid] = a
    sb[tid] = b
    cuda.syncthreads()
    half = _T // 2
    while half > 0:
        if tid < half:
            sa[tid] += sa[tid + half]
            sb[tid] += sb[tid + half]
        cuda.syncthreads()
        half //= 2
    a, b = sa[0], sb[0]
    cuda.syncthreads()     # every thread has read them before the buffers are reused
    return a, b


@functools.lru_cache(maxsize=None)
def _kernels(dtype):
    t = np.dtype(dtype).type

    @cuda.jit
    def ln_forward(x, w, b, eps, y, mean, rstd):
        r = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        f = x.shape[1]
        sa = cuda.shared.array(_T, float64)
        sb = cuda.shared.array(_T, float64)
        k = float64(x[r, 0])
        s = 0.0
        s2 = 0.0
        for j in range(tid, f, _T):
            d = float64(x[r, j]) - k
            s += d
            s2 += d * d
        s, s2 = _reduce2(s, s2, sa, sb)
        md = s / f
        var = max(s2 / f - md * md, 0.0)
        mu = k + md
        rs = 1.0 / (var + eps) ** 0.5
        if tid == 0:
            mean[r] = mu
            rstd[r] = rs
        for j in range(tid, f, _T):
            y[r, j] = t((float64(x[r, j]) - mu) * rs * w[j] + b[j])

    @cuda.jit
    def ln_backward_dx(dy, x, mean, rstd, w, dx):
        r = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        f = x.shape[1]
        sa = cuda.shared.array(_T, float64)
        sb = cuda.shared.array(_T, float64)
        mu, rs = float64(mean[r]), float64(rstd[r])
        sg = 0.0
        sgx = 0.0
        for j in range(tid, f, _T):
            g = float64(dy[r, j]) * w[j]
            sg += g
            sgx += g * (x[r, j] - mu) * rs
        sg, sgx = _reduce2(sg, sgx, sa, sb)
        a, c = sg / f, sgx / f
        for j in range(tid, f, _T):
            xh = (x[r, j] - mu) * rs
            dx[r, j] = t(rs * (float64(dy[r, j]) * w[j] - a - xh * c))

    @cuda.jit
    def ln_backward_params(dy, x, mean, rstd, dw, db):
        rows, f = x.shape
        start, stride = cuda.grid(1), cuda.gridsize(1)
        for j in range(start, f, stride):
            sw = 0.0
            sd = 0.0
            for r in range(rows):
                d = float64(dy[r, j])
                sw += d * (x[r, j] - mean[r]) * rstd[r]
                sd += d
            dw[j] = t(sw)
            db[j] = t(sd)

    @cuda.jit
    def bn_forward(x, w, b, rm, rv, momentum, eps, training, y, mean, rstd):
        c = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        n, _, s_len = x.shape
        m = n * s_len
        sa = cuda.shared.array(_T, float64)
        sb = cuda.shared.array(_T, float64)
        if training:
            k = float64(x[0, c, 0])
            s = 0.0
            s2 = 0.0
            for e in range(tid, m, _T):
                d = float64(x[e // s_len, c, e % s_len]) - k
                s += d
                s2 += d * d
            s, s2 = _reduce2(s, s2, sa, sb)
            md = s / m
            var = max(s2 / m - md * md, 0.0)
            mu = k + md
        else:
            mu, var = float64(rm[c]), float64(rv[c])
        rs = 1.0 / (var + eps) ** 0.5
        if tid == 0:
            mean[c] = mu
            rstd[c] = rs
            if training:
                rm[c] = t((1 - momentum) * rm[c] + momentum * mu)
                rv[c] = t((1 - momentum) * rv[c] + momentum * var * m / (m - 1))
        scale = rs * w[c]
        offset = b[c] - mu * scale
        for e in range(tid, m, _T):
            i, p = e // s_len, e % s_len
            y[i, c, p] = t(x[i, c, p] * scale + offset)

    @cuda.jit
    def bn_backward(dy, x, mean, rstd, w, training, need_dx, dx, dw, db):
        c = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        n, _, s_len = x.shape
        m = n * s_len
        sa = cuda.shared.array(_T, float64)
        sb = cuda.shared.array(_T, float64)
        mu, rs = float64(mean[c]), float64(rstd[c])
        sd = 0.0
        sdx = 0.0
        for e in range(tid, m, _T):
            i, p = e // s_len, e % s_len
            d = float64(dy[i, c, p])
            sd += d
            sdx += d * (x[i, c, p] - mu)
        sd, sdx = _reduce2(sd, sdx, sa, sb)
        gw = sdx * rs
        if tid == 0:
            dw[c] = t(gw)
            db[c] = t(sd)
        if need_dx:
            scale = w[c] * rs
            q = sd / m if training else 0.0
            k2 = rs * gw / m if training else 0.0
            for e in range(tid, m, _T):
                i, p = e // s_len, e % s_len
                dx[i, c, p] = t(scale * (dy[i, c, p] - q - (x[i, c, p] - mu) * k2))

    @cuda.jit
    def gap(x, y):
        n, c, s_len = x.shape
        start, stride = cuda.grid(1), cuda.gridsize(1)
        for e in range(start, n * c, stride):
            i, ch = e // c, e % c
            s = 0.0
            for p in range(s_len):
                s += x[i, ch, p]
            y[i, ch] = t(s / s_len)

    @cuda.jit
    def gap_backward(dy, dx):
        n, c, s_len = dx.shape
        start, stride = cuda.grid(1), cuda.gridsize(1)
        for e in range(start, n * c * s_len, stride):
            r = e // s_len
            dx[r // c, r % c, e % s_len] = t(dy[r // c, r % c] / s_len)

    return dict(ln_forward=ln_forward, ln_backward_dx=ln_backward_dx,
                ln_backward_params=ln_backward_params, bn_forward=bn_forward,
                bn_backward=bn_backward, gap=gap, gap_backward=gap_backward)


def _k(name, dtype):
    return _kernels(np.dtype(dtype))[name]


def _or(v, n, fill, dtype):
    """weight or bias on the device, or ones / zeros where the layer has none."""
    return as_device(np.full(n, fill, dtype)) if v is None else as_device(v)


def layer_norm(x, weight, bias, eps=1e-5):
    call = Call(x, weight, bias)
    x = as_device(x)
    r, f = x.shape
    w, b = _or(weight, f, 1, x.dtype), _or(bias, f, 0, x.dtype)
    y, mean, rstd = empty(x.shape, x.dtype), empty(r, x.dtype), empty(r, x.dtype)
    _k("ln_forward", x.dtype)[r, _T](x.arr, w.arr, b.arr, float(eps), y.arr, mean.arr, rstd.arr)
    return call.out(y), call.out(mean), call.out(rstd)


def layer_norm_backward(dy, x, mean, rstd, weight, need_dx=True):
    call = Call(dy, x, mean, rstd, weight)
    dy, x, mean, rstd = as_device(dy), as_device(x), as_device(mean), as_device(rstd)
    r, f = x.shape
    dw, db = empty(f, x.dtype), empty(f, x.dtype)
    _k("ln_backward_params", x.dtype)[launch(f, 128)](dy.arr, x.arr, mean.arr, rstd.arr, dw.arr, db.arr)
    dx = None
    if need_dx:
        dx = empty(x.shape, x.dtype)
        w = _or(weight, f, 1, x.dtype)
        _k("ln_backward_dx", x.dtype)[r, _T](dy.arr, x.arr, mean.arr, rstd.arr, w.arr, dx.arr)
    return call.out(dx), call.out(dw), call.out(db)


def batch_norm(x, weight, bias, running_mean, running_var, momentum=0.1, eps=1e-5, training=True):
    call = Call(x, weight, bias, running_mean, running_var)
    x = as_device(x)
    c = x.shape[1]
    w, b = _or(weight, c, 1, x.dtype), _or(bias, c, 0, x.dtype)
    # host buffers (a direct kernel call) are copied in, updated and copied back
    rm, rv = as_device(running_mean), as_device(running_var)
    y, mean, rstd = empty(x.shape, x.dtype), empty(c, x.dtype), empty(c, x.dtype)
    _k("bn_forward", x.dtype)[c, _T](x.arr, w.arr, b.arr, rm.arr, rv.arr, float(momentum), float(eps),
                                     bool(training), y.arr, mean.arr, rstd.arr)
    for host, dev in ((running_mean, rm), (running_var, rv)):
        if isinstance(host, np.ndarray):
            host[...] = dev.copy_to_host()
    return call.out(y), call.out(mean), call.out(rstd)


def batch_norm_backward(dy, x, mean, rstd, weight, training=True, need_dx=True):
    call = Call(dy, x, mean, rstd, weight)
    dy, x, mean, rstd = as_device(dy), as_device(x), as_device(mean), as_device(rstd)
    c = x.shape[1]
    w = _or(weight, c, 1, x.dtype)
    dw, db = empty(c, x.dtype), empty(c, x.dtype)
    dx = empty(x.shape if need_dx else (1, 1, 1), x.dtype)
    _k("bn_backward", x.dtype)[c, _T](dy.arr, x.arr, mean.arr, rstd.arr, w.arr, bool(training),
                                      bool(need_dx), dx.arr, dw.arr, db.arr)
    return call.out(dx if need_dx else None), call.out(dw), call.out(db)


def global_avgpool(x):
    call = Call(x)
    x = as_device(x)
    y = empty(x.shape[:2], x.dtype)
    _k("gap", x.dtype)[launch(y.size)](x.arr, y.arr)
    return call.out(y)


def global_avgpool_backward(dy, x):
    call = Call(dy, x)
    dy = as_device(dy)
    dx = empty(tuple(x.shape), dy.dtype)
    _k("gap_backward", dy.dtype)[launch(dx.size)](dy.arr, dx.arr)
    return call.out(dx)
