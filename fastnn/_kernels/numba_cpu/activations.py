"""Activations and their backward kernels: one fused pass over the data each.

Every forward returns y from x; every backward returns dx from (dy, x, y), as
in reference.py. exp comes from _math.exp, which vectorizes.
"""
import numpy as np
from numba import njit

from ._math import FM, FM_MAX, exp, exp32


@njit(cache=True, fastmath=FM, error_model="numpy")
def _step(x):
    out = np.empty_like(x)
    xf, of = x.reshape(-1), out.reshape(-1)
    for i in range(xf.size):
        of[i] = 1.0 if xf[i] > 0 else 0.0
    return out


@njit(cache=True, fastmath=FM, error_model="numpy")
def _sigmoid(x):
    out = np.empty_like(x)
    xf, of = x.reshape(-1), out.reshape(-1)
    for i in range(xf.size):
        v = np.float64(xf[i])
        e = exp(-abs(v))                    # never overflows
        r = 1.0 / (1.0 + e)
        of[i] = r if v >= 0 else e * r
    return out


@njit(cache=True, fastmath=FM, error_model="numpy")
def _sigmoid_backward(dy, y):
    out = np.empty_like(dy)
    df, yf, of = dy.reshape(-1), y.reshape(-1), out.reshape(-1)
    for i in range(df.size):
        of[i] = df[i] * yf[i] * (1 - yf[i])
    return out


@njit(cache=True, fastmath=FM, error_model="numpy")
def _tanh(x):
    out = np.empty_like(x)
    xf, of = x.reshape(-1), out.reshape(-1)
    for i in range(xf.size):
        v = np.float64(xf[i])
        t = exp(-2.0 * abs(v))
        r = (1.0 - t) / (1.0 + t)
        of[i] = r if v >= 0 else -r
    return out


@njit(cache=True, fastmath=FM, error_model="numpy")
def _tanh32(x):
    """tanh in float32 arithmetic; an odd Taylor polynomial below |x| = 1/16
    avoids the cancellation of 1 - exp(-2|x|) there."""
    out = np.empty_like(x)
    xf, of = x.reshape(-1), out.reshape(-1)
    one, two = np.float32(1), np.float32(2)
    c3, c5, c7 = np.float32(-1 / 3), np.float32(2 / 15), np.float32(-17 / 315)
    for i in range(xf.size):
        v = xf[i]
        a = abs(v)
        t = exp32(-two * a)
        r = two / (one + t) - one           # (1 - t) / (1 + t), one division
        s = v * v
        small = a * (one + s * (c3 + s * (c5 + s * c7)))
        r = small if a < np.float32(0.0625) else r
        of[i] = r if v >= 0 else -r
    return out


@njit(cache=True, fastmath=FM, error_model="numpy")
def _sigmoid32(x):
    out = np.empty_like(x)
    xf, of = x.reshape(-1), out.reshape(-1)
    one = np.float32(1)
    for i in range(xf.size):
        v = xf[i]
        e = exp32(-abs(v))
        r = one / (one + e)
        of[i] = r if v >= 0 else e * r
    return out


@njit(cache=True, fastmath=FM, error_model="numpy")
def _tanh_backward(dy, y):
    out = np.empty_like(dy)
    df, yf, of = dy.reshape(-1), y.reshape(-1), out.reshape(-1)
    for i in range(df.size):
        of[i] = df[i] * (1 - yf[i] * yf[i])
    return out


@njit(cache=True, fastmath=FM, error_model="numpy")
def _relu(x):
    out = np.empty_like(x)
    xf, of = x.reshape(-1), out.reshape(-1)
    for i in range(xf.size):
        v = xf[i]
        of[i] = 0 if v <= 0 else v          # NaN stays NaN, as np.maximum
    return out


@njit(cache=True, fastmath=FM, error_model="numpy")
def _leaky_relu(x, alpha):
    out = np.empty_like(x)
    xf, of = x.reshape(-1), out.reshape(-1)
    for i in range(xf.size):
        v = xf[i]
        of[i] = v if v > 0 else v * alpha
    return out


@njit(cache=True, fastmath=FM, error_model="numpy")
def _gate_backward(dy, x, alpha):
    """dy where x > 0, else alpha * dy (relu: alpha = 0); alpha in dy's dtype."""
    out = np.empty_like(dy)
    df, xf, of = dy.reshape(-1), x.reshape(-1), out.reshape(-1)
    for i in range(df.size):
        of[i] = df[i] if xf[i] > 0 else df[i] * alpha
    return out


@njit(cache=True, fastmath=FM_MAX, error_model="numpy")
def row_max(row):
    """max(row) with four independent running maxima: LLVM does not vectorize a
    max reduction written as one chain, and one chain is latency-bound."""
    n = row.size
    m0 = m1 = m2 = m3 = row[0]
    j = 0
    while j + 4 <= n:
        m0 = max(m0, row[j])
        m1 = max(m1, row[j + 1])
        m2 = max(m2, row[j + 2])
        m3 = max(m3, row[j + 3])
        j += 4
    while j < n:
        m0 = max(m0, row[j])
        j += 1
    return max(max(m0, m1), max(m2, m3))


@njit(cache=True, fastmath=FM, error_model="numpy")
def _softmax(x):
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        row, o = x[i], out[i]
        m = np.float64(row_max(row))
        s = 0.0
        for j in range(row.size):
            e = exp(row[j] - m)
            o[j] = e
            s += e
        inv = 1.0 / s
        for j in range(row.size):
            o[j] = o[j] * inv
    return out


@njit(cache=True, fastmath=FM, error_model="numpy")
def _softmax_backward(dy, y):
    out = np.empty_like(dy)
    for i in range(dy.shape[0]):
        d, yr, o = dy[i], y[i], out[i]
        s = 0.0
        for j in range(d.size):
            s += d[j] * yr[j]
        for j in range(d.size):
            o[j] = yr[j] * (d[j] - s)
    return out


def step(x):
    """Heaviside step: 1 where x > 0, else 0."""
    return _step(x)


def step_backward(dy, x, y):
    """Zero almost everywhere: the step is for perceptrons, not gradient descent."""
    return np.zeros_like(dy)


def sigmoid(x):
    return _sigmoid32(x) if x.dtype == np.float32 else _sigmoid(x)


def sigmoid_backward(dy, x, y):
    return _sigmoid_backward(dy, y)


def tanh(x):
    return _tanh32(x) if x.dtype == np.float32 else _tanh(x)


def tanh_backward(dy, x, y):
    return _tanh_backward(dy, y)


def relu(x):
    return _relu(x)


def relu_backward(dy, x, y):
    return _gate_backward(dy, x, dy.dtype.type(0))


def leaky_relu(x, alpha=0.01):
    return _leaky_relu(x, x.dtype.type(alpha))


def leaky_relu_backward(dy, x, y, alpha=0.01):
    return _gate_backward(dy, x, dy.dtype.type(alpha))


def softmax(x):
    """Softmax along the last axis of a 2-D x."""
    return _softmax(x)


def softmax_backward(dy, x, y):
    return _softmax_backward(dy, y)
