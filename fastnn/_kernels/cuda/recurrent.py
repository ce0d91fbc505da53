"""numba.cuda RNN, LSTM and GRU forwards and BPTT backwards (reference.py's "recurrent": same signatures, returns and gate order).

Forward: the input projection of every step is one GEMM up front,
x (N*T, F) @ w_ih.T + b_ih (bias fused). Then per time step two launches: the
recurrent product h_{t-1} @ w_hh.T + b_hh (the tiled GEMM reading h_{t-1}
straight out of the (N, T, H) output as a strided view, writing one reused
(N, G*H) buffer), and a fused gate kernel, one thread per (sample, hidden
unit), that adds the two parts, applies the gate nonlinearities, updates the
cell and writes h, c, gates, hn at step t.

Backward: per step (last to first) a fused kernel computes the step's
pre-activation gradients from dh, the carried dh_next / dc_next and the saved
gates, then one GEMM carries the recurrent gradient to step t - 1 (skipped at
t = 0, where the reference throws it away). The weight gradients, bias
gradients and dx are then three GEMMs and two column sums over all steps at
once, as in reference._rnn_weight_grads.
"""
import functools
import math

import numpy as np
from numba import cuda

from ._device import Call, as_device, empty, launch, zeros
from .gemm import _gemm, bias_grad_device


@functools.lru_cache(maxsize=None)
def _kernels(dtype):
    t_ = np.dtype(dtype).type
    zero, one = t_(0), t_(1)

    @cuda.jit(device=True)
    def sigmoid(v):
        e = math.exp(-abs(v))       # never overflows
        return one / (one + e) if v >= zero else e / (one + e)

    @cuda.jit
    def rnn_step(xs, ah, h, t):
        n, hid = ah.shape
        start, stride = cuda.grid(1), cuda.gridsize(1)
        for e in range(start, n * hid, stride):
            b = e // hid
            j = e - b * hid
            h[b, t, j] = math.tanh(xs[b, t, j] + ah[b, j])

    @cuda.jit
    def lstm_step(xs, ah, h, c, gates, t):
        n, hid = h.shape[0], h.shape[2]
        start, stride = cuda.grid(1), cuda.gridsize(1)
        for e in range(start, n * hid, stride):
            b = e // hid
            j = e - b * hid
            i = sigmoid(xs[b, t, j] + ah[b, j])
            f = sigmoid(xs[b, t, hid + j] + ah[b, hid + j])
            g = math.tanh(xs[b, t, 2 * hid + j] + ah[b, 2 * hid + j])
            o = sigmoid(xs[b, t, 3 * hid + j] + ah[b, 3 * hid + j])
            c_prev = c[b, t - 1, j] if t > 0 else zero
            c_t = f * c_prev + i * g
            c[b, t, j] = c_t
            h[b, t, j] = o * math.tanh(c_t)
            gates[b, t, j] = i
            gates[b, t, hid + j] = f
            gates[b, t, 2 * hid + j] = g
            gates[b, t, 3 * hid + j] = o

    @cuda.jit
    def gru_step(xs, ah, h, gates, hn, t):
        n, hid = h.shape[0], h.shape[2]
        start, stride = cuda.grid(1), cuda.gridsize(1)
        for e in range(start, n * hid, stride):
            b = e // hid
            j = e - b * hid
            r = sigmoid(xs[b, t, j] + ah[b, j])
            z = sigmoid(xs[b, t, hid + j] + ah[b, hid + j])
            a_n = ah[b, 2 * hid + j]
            new = math.tanh(xs[b, t, 2 * hid + j] + r * a_n)
            h_prev = h[b, t - 1, j] if t > 0 else zero
            h[b, t, j] = (one - z) * new + z * h_prev
            gates[b, t, j] = r
            gates[b, t, hid + j] = z
            gates[b, t, 2 * hid + j] = new
            hn[b, t, j] = a_n

    @cuda.jit
    def rnn_back_step(dh, h, carry, da, t):
        n, hid = carry.shape
        start, stride = cuda.grid(1), cuda.gridsize(1)
        for e in range(start, n * hid, stride):
            b = e // hid
            j = e - b * hid
            y = h[b, t, j]
            da[b, t, j] = (dh[b, t, j] + carry[b, j]) * (one - y * y)

    @cuda.jit
    def lstm_back_step(dh, c, gates, dh_next, dc_next, da, t):
        n, hid = dh_next.shape
        start, stride = cuda.grid(1), cuda.gridsize(1)
        for e in range(start, n * hid, stride):
            b = e // hid
            j = e - b * hid
            i = gates[b, t, j]
            f = gates[b, t, hid + j]
            g = gates[b, t, 2 * hid + j]
            o = gates[b, t, 3 * hid + j]
            tc = math.tanh(c[b, t, j])
            dh_t = dh[b, t, j] + dh_next[b, j]
            dc = dc_next[b, j] + dh_t * o * (one - tc * tc)
            c_prev = c[b, t - 1, j] if t > 0 else zero
            da[b, t, j] = dc * g * i * (one - i)
            da[b, t, hid + j] = dc * c_prev * f * (one - f)
            da[b, t, 2 * hid + j] = dc * i * (one - g * g)
            da[b, t, 3 * hid + j] = dh_t * tc * o * (one - o)
            dc_next[b, j] = dc * f

    @cuda.jit
    def gru_back_step(dh, h_prev, gates, hn, zpart, mm, d_in, d_hid, t):
        n, hid = zpart.shape
        start, stride = cuda.grid(1), cuda.gridsize(1)
        for e in range(start, n * hid, stride):
            b = e // hid
            j = e - b * hid
            r = gates[b, t, j]
            z = gates[b, t, hid + j]
            new = gates[b, t, 2 * hid + j]
            dh_t = dh[b, t, j] + (zpart[b, j] + mm[b, j])     # reference: dh + (dh_t z + W-part)
            d_new = dh_t * (one - z) * (one - new * new)
            d_r = d_new * hn[b, t, j] * r * (one - r)
            d_z = dh_t * (h_prev[b, t, j] - new) * z * (one - z)
            d_in[b, t, j] = d_r
            d_in[b, t, hid + j] = d_z
            d_in[b, t, 2 * hid + j] = d_new
            d_hid[b, t, j] = d_r
            d_hid[b, t, hid + j] = d_z
            d_hid[b, t, 2 * hid + j] = d_new * r
            zpart[b, j] = dh_t * z

    @cuda.jit
    def previous(h, out):
        n, t_len, hid = h.shape
        start, stride = cuda.grid(1), cuda.gridsize(1)
        for e in range(start, n * t_len * hid, stride):
            j = e % hid
            r = e // hid
            t = r % t_len
            b = r // t_len
            out[b, t, j] = h[b, t - 1, j] if t > 0 else zero

    return dict(rnn_step=rnn_step, lstm_step=lstm_step, gru_step=gru_step,
                rnn_back_step=rnn_back_step, lstm_back_step=lstm_back_step,
                gru_back_step=gru_back_step, previous=previous)


def _launch(name, dtype, n, *args):
    if n:
        _kernels(dtype)[name][launch(n)](*(a.arr if hasattr(a, "arr") else a for a in args))


def _input_part(x, w_ih, b_ih):
    """x_t @ w_ih.T + b_ih for every step at once: (N, T, G*H), one GEMM."""
    n, t, f = x.shape
    return _gemm(x.reshape(n * t, f), w_ih, False, True, bias=b_ih).reshape(n, t, w_ih.shape[0])


def _previous(h):
    out = empty(h.shape, h.dtype)
    _launch("previous", h.dtype, h.size, h, out)
    return out


def _weight_grads(x, h_prev, d_in, d_hid, w_ih, need_dx):
    """reference._rnn_weight_grads on the device: three GEMMs and two column sums."""
    n, t, f = x.shape
    d_in2, d_hid2 = d_in.reshape(n * t, -1), d_hid.reshape(n * t, -1)
    dw_ih = _gemm(d_in2, x.reshape(n * t, f), True, False)
    dw_hh = _gemm(d_hid2, h_prev.reshape(n * t, -1), True, False)
    dx = _gemm(d_in2, w_ih, False, False).reshape(x.shape) if need_dx else None
    db_ih = bias_grad_device(d_in2)
    db_hh = db_ih.copy() if d_hid is d_in else bias_grad_device(d_hid2)
    return dx, dw_ih, dw_hh, db_ih, db_hh


def _forward(kind, x, w_ih, w_hh, b_ih, b_hh):
    """h (and c, gates / gates, hn) of the whole sequence; every array on the device."""
    x, w_ih, w_hh, b_ih, b_hh = (as_device(a) for a in (x, w_ih, w_hh, b_ih, b_hh))
    xs = _input_part(x, w_ih, b_ih)
    n, t_len, gh = xs.shape
    hid = w_hh.shape[1]
    dt = x.dtype
    h = empty((n, t_len, hid), dt)
    if kind == "lstm":
        extra = (empty((n, t_len, hid), dt), empty((n, t_len, gh), dt))     # c, gates
    elif kind == "gru":
        extra = (empty((n, t_len, gh), dt), empty((n, t_len, hid), dt))     # gates, hn
    else:
        extra = ()
    ah = empty((n, gh), dt)
    h0 = zeros((n, hid), dt)
    for t in range(t_len):
        _gemm(h0 if t == 0 else h[:, t - 1], w_hh, False, True, bias=b_hh, out=ah)
        _launch(kind + "_step", dt, n * hid, xs, ah, h, *extra, t)
    return (h,) + extra


def _call_forward(kind, x, w_ih, w_hh, b_ih, b_hh):
    call = Call(x, w_ih, w_hh, b_ih, b_hh)
    return tuple(call.out(a) for a in _forward(kind, x, w_ih, w_hh, b_ih, b_hh))


def rnn(x, w_ih, w_hh, b_ih, b_hh):
    """Elman RNN: h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh). Returns h (N, T, H)."""
    return _call_forward("rnn", x, w_ih, w_hh, b_ih, b_hh)[0]


def lstm(x, w_ih, w_hh, b_ih, b_hh):
    """LSTM (gates i, f, g, o). Returns (h, c, gates): h, c (N, T, H), gates (N, T, 4H) after activation."""
    return _call_forward("lstm", x, w_ih, w_hh, b_ih, b_hh)


def gru(x, w_ih, w_hh, b_ih, b_hh):
    """GRU (gates r, z, n). Returns (h, gates, hn): gates (N, T, 3H), hn (N, T, H) = W_hn h_{t-1} + b_hn."""
    return _call_forward("gru", x, w_ih, w_hh, b_ih, b_hh)


def _out(call, grads):
    return tuple(call.out(g) for g in grads)


def rnn_backward(dh, x, h, w_ih, w_hh, need_dx=True):
    """BPTT from dh (N, T, H): (dx or None, dw_ih, dw_hh, db_ih, db_hh)."""
    call = Call(dh, x, h, w_ih, w_hh)
    dh, x, h, w_ih, w_hh = (as_device(a) for a in (dh, x, h, w_ih, w_hh))
    n, t_len, hid = h.shape
    da = empty(h.shape, h.dtype)
    carry = zeros((n, hid), h.dtype)          # d loss / d h_t from step t + 1
    for t in range(t_len - 1, -1, -1):
        _launch("rnn_back_step", h.dtype, n * hid, dh, h, carry, da, t)
        if t > 0:
            _gemm(da[:, t], w_hh, False, False, out=carry)
    return _out(call, _weight_grads(x, _previous(h), da, da, w_ih, need_dx))


def lstm_backward(dh, x, h, c, gates, w_ih, w_hh, need_dx=True):
    """BPTT from dh (N, T, H) and the forward's (h, c, gates): (dx or None, dw_ih, dw_hh, db_ih, db_hh)."""
    call = Call(dh, x, h, c, gates, w_ih, w_hh)
    dh, x, h, c, gates, w_ih, w_hh = (as_device(a) for a in (dh, x, h, c, gates, w_ih, w_hh))
    n, t_len, hid = h.shape
    da = empty(gates.shape, h.dtype)
    dh_next, dc_next = zeros((n, hid), h.dtype), zeros((n, hid), h.dtype)
    for t in range(t_len - 1, -1, -1):
        _launch("lstm_back_step", h.dtype, n * hid, dh, c, gates, dh_next, dc_next, da, t)
        if t > 0:
            _gemm(da[:, t], w_hh, False, False, out=dh_next)
    return _out(call, _weight_grads(x, _previous(h), da, da, w_ih, need_dx))


def gru_backward(dh, x, h, gates, hn, w_ih, w_hh, need_dx=True):
    """BPTT from dh (N, T, H) and the forward's (h, gates, hn): (dx or None, dw_ih, dw_hh, db_ih, db_hh)."""
    call = Call(dh, x, h, gates, hn, w_ih, w_hh)
    dh, x, h, gates, hn, w_ih, w_hh = (as_device(a) for a in (dh, x, h, gates, hn, w_ih, w_hh))
    n, t_len, hid = h.shape
    h_prev = _previous(h)
    d_in, d_hid = empty(gates.shape, h.dtype), empty(gates.shape, h.dtype)
    zpart, mm = zeros((n, hid), h.dtype), zeros((n, hid), h.dtype)   # dh_next = zpart + mm
    for t in range(t_len - 1, -1, -1):
        _launch("gru_back_step", h.dtype, n * hid, dh, h_prev, gates, hn, zpart, mm, d_in, d_hid, t)
        if t > 0:
            _gemm(d_hid[:, t], w_hh, False, False, out=mm)
    return _out(call, _weight_grads(x, h_prev, d_in, d_hid, w_ih, need_dx))
