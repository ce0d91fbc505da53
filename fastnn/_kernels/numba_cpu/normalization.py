"""LayerNorm, BatchNorm and global average pooling kernels; match reference.py's "normalization" section.

Statistics in one sweep: the sums of d = x - k and d * d with the shift k the first
value of the row (channel), so the variance sum(d*d)/n - mean(d)**2 does not cancel
catastrophically when the mean is large next to the spread. LayerNorm's backward
is one fused pass per row (dweight / dbias accumulated along the way, then dx from
the row still in cache); BatchNorm's is one reduction sweep and one elementwise sweep.
Sums in the data's dtype with reassociation allowed (FM), so they vectorize.
"""
import numpy as np
from numba import njit

from ._math import FM, sqrt


def _or(v, f, fill, dtype):
    """weight or bias, or ones / zeros where the layer has none."""
    return np.full(f, fill, dtype) if v is None else v


# ---------------------------------------------------------------- LayerNorm


@njit(cache=True, fastmath=FM, error_model="numpy")
def _ln(x, w, b, eps, y, mean, rstd):
    r_len, f = x.shape
    inv_f = 1 / x.dtype.type(f)
    for r in range(r_len):
        row, out = x[r], y[r]
        k = row[0]
        s = row[0] - k
        s2 = s
        for j in range(f):
            d = row[j] - k
            s += d
            s2 += d * d
        md = s * inv_f
        var = max(s2 * inv_f - md * md, s - s)
        mu = k + md
        rs = 1 / sqrt(var + eps)
        mean[r] = mu
        rstd[r] = rs
        for j in range(f):
            out[j] = (row[j] - mu) * rs * w[j] + b[j]


@njit(cache=True, fastmath=FM, error_model="numpy")
def _ln_backward(dy, x, mean, rstd, w, dx, dw, db, need_dx):
    r_len, f = x.shape
    zero = x.dtype.type(0)
    inv_f = 1 / x.dtype.type(f)
    for j in range(f):
        dw[j] = zero
        db[j] = zero
    for r in range(r_len):
        row, d = x[r], dy[r]
        mu, rs = mean[r], rstd[r]
        sg = zero
        sgx = zero
        for j in range(f):
            xh = (row[j] - mu) * rs
            dw[j] += d[j] * xh
            db[j] += d[j]
            g = d[j] * w[j]
            sg += g
            sgx += g * xh
        if need_dx:
            a, c = sg * inv_f, sgx * inv_f
            out = dx[r]
            for j in range(f):
                xh = (row[j] - mu) * rs
                out[j] = rs * (d[j] * w[j] - a - xh * c)


def layer_norm(x, weight, bias, eps=1e-5):
    r, f = x.shape
    y = np.empty_like(x)
    mean, rstd = np.empty(r, x.dtype), np.empty(r, x.dtype)
    _ln(x, _or(weight, f, 1, x.dtype), _or(bias, f, 0, x.dtype), x.dtype.type(eps), y, mean, rstd)
    return y, mean, rstd


def layer_norm_backward(dy, x, mean, rstd, weight, need_dx=True):
    f = x.shape[1]
    dx = np.empty_like(x) if need_dx else x[:0]
    dw, db = np.empty(f, x.dtype), np.empty(f, x.dtype)
    _ln_backward(dy, x, mean, rstd, _or(weight, f, 1, x.dtype), dx, dw, db, bool(need_dx))
    return (dx if need_dx else None), dw, db


# ---------------------------------------------------------------- BatchNorm


@njit(cache=True, fastmath=FM, error_model="numpy")
def _bn_sums(x, shift):
    """Per channel: (sum of x - shift, sum of (x - shift)**2) over N and S, (C,) each.
    S == 1 (an (N, C) batch) runs along the channels, so it vectorizes there."""
    n, c, s_len = x.shape
    s1, s2 = np.zeros(c, x.dtype), np.zeros(c, x.dtype)
    if s_len == 1:
        for i in range(n):
            for ch in range(c):
                d = x[i, ch, 0] - shift[ch]
                s1[ch] += d
                s2[ch] += d * d
    else:
        for i in range(n):
            for ch in range(c):
                row, k = x[i, ch], shift[ch]
                a = k - k
                b = a
                for p in range(s_len):
                    d = row[p] - k
                    a += d
                    b += d * d
                s1[ch] += a
                s2[ch] += b
    return s1, s2


@njit(cache=True, fastmath=FM, error_model="numpy")
def _bn_apply(x, scale, offset, y):
    """y = x * scale[c] + offset[c]."""
    n, c, s_len = x.shape
    for i in range(n):
        for ch in range(c):
            a, b = scale[ch], offset[ch]
            row, out = x[i, ch], y[i, ch]
            for p in range(s_len):
                out[p] = row[p] * a + b


@njit(cache=True, fastmath=FM, error_model="numpy")
def _bn_stats(x, w, rm, rv, momentum, eps, training, mean, rstd, scale):
    """mean, rstd and scale = w * rstd per channel; training also moves the running buffers."""
    n, c, s_len = x.shape
    one = x.dtype.type(1)
    if training:
        shift = np.empty(c, x.dtype)
        for ch in range(c):
            shift[ch] = x[0, ch, 0]
        s1, s2 = _bn_sums(x, shift)
        m = x.dtype.type(n * s_len)
        unbias = m / (m - one)
        for ch in range(c):
            md = s1[ch] / m
            var = max(s2[ch] / m - md * md, one - one)
            mean[ch] = shift[ch] + md
            rstd[ch] = one / sqrt(var + eps)
            rm[ch] = (one - momentum) * rm[ch] + momentum * mean[ch]
            rv[ch] = (one - momentum) * rv[ch] + momentum * var * unbias
    else:
        for ch in range(c):
            mean[ch] = rm[ch]
            rstd[ch] = one / sqrt(rv[ch] + eps)
    for ch in range(c):
        scale[ch] = w[ch] * rstd[ch]


@njit(cache=True, fastmath=FM, error_model="numpy")
def _bn_backward_sums(dy, x, mean):
    """Per channel: sum of dy and sum of dy * (x - mean) over N and S."""
    n, c, s_len = x.shape
    sd, sdx = np.zeros(c, x.dtype), np.zeros(c, x.dtype)
    if s_len == 1:
        for i in range(n):
            for ch in range(c):
                d = dy[i, ch, 0]
                sd[ch] += d
                sdx[ch] += d * (x[i, ch, 0] - mean[ch])
    else:
        for i in range(n):
            for ch in range(c):
                row, drow, mu = x[i, ch], dy[i, ch], mean[ch]
                a = drow[0] - drow[0]
                b = a
                for p in range(s_len):
                    a += drow[p]
                    b += drow[p] * (row[p] - mu)
                sd[ch] += a
                sdx[ch] += b
    return sd, sdx


@njit(cache=True, fastmath=FM, error_model="numpy")
def _bn_dx(dy, x, mean, scale, mdb, k2, dx):
    """dx = scale[c] * (dy - mdb[c] - (x - mean[c]) * k2[c])."""
    n, c, s_len = x.shape
    for i in range(n):
        for ch in range(c):
            a, mu, q, k = scale[ch], mean[ch], mdb[ch], k2[ch]
            row, drow, out = x[i, ch], dy[i, ch], dx[i, ch]
            for p in range(s_len):
                out[p] = a * (drow[p] - q - (row[p] - mu) * k)


def batch_norm(x, weight, bias, running_mean, running_var, momentum=0.1, eps=1e-5, training=True):
    c = x.shape[1]
    t = x.dtype.type
    mean, rstd, scale = np.empty(c, x.dtype), np.empty(c, x.dtype), np.empty(c, x.dtype)
    _bn_stats(x, _or(weight, c, 1, x.dtype), running_mean, running_var, t(momentum), t(eps),
              bool(training), mean, rstd, scale)
    offset = (_or(bias, c, 0, x.dtype) - mean * scale).astype(x.dtype)
    y = np.empty_like(x)
    _bn_apply(x, scale, offset, y)
    return y, mean, rstd


def batch_norm_backward(dy, x, mean, rstd, weight, training=True, need_dx=True):
    c = x.shape[1]
    sd, sdx = _bn_backward_sums(dy, x, mean)
    dweight = sdx * rstd
    dx = None
    if need_dx:
        scale = _or(weight, c, 1, x.dtype) * rstd
        dx = np.empty_like(x)
        if training:
            m = x.dtype.type(x.shape[0] * x.shape[2])
            _bn_dx(dy, x, mean, scale, sd / m, rstd * dweight / m, dx)
        else:
            _bn_apply(dy, scale, np.zeros(c, x.dtype), dx)
    return dx, dweight, sd


# -------------------------------------------------------- global avg pooling


@njit(cache=True, fastmath=FM, error_model="numpy")
def _gap(x, y):
    n, c, s_len = x.shape
    inv = 1 / x.dtype.type(s_len)
    for i in range(n):
        for ch in range(c):
            row = x[i, ch]
            s = row[0] - row[0]
            for p in range(s_len):
                s += row[p]
            y[i, ch] = s * inv


@njit(cache=True, fastmath=FM, error_model="numpy")
def _gap_backward(dy, dx):
    n, c, s_len = dx.shape
    inv = 1 / dx.dtype.type(s_len)
    for i in range(n):
        for ch in range(c):
            v = dy[i, ch] * inv
            out = dx[i, ch]
            for p in range(s_len):
                out[p] = v


def global_avgpool(x):
    y = np.empty(x.shape[:2], x.dtype)
    _gap(x, y)
    return y


def global_avgpool_backward(dy, x):
    dx = np.empty_like(x)
    _gap_backward(dy, dx)
    return dx
