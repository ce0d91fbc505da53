"""numba.cuda scaled-dot-product attention forward and backward; matches attention and attention_backward in fastnn/_kernels/reference.py.

The forward gives one thread a (sample, head, query row): it writes the row's
scores into its own row of p, turns them into the masked softmax in place and
accumulates p @ v into its slice of out (no other thread writes there). The
backward runs two kernels without atomics: one thread per query row computes
delta_i = sum_j p_ij dp_ij and dq_i; then one thread per key row computes
dk_j and dv_j from the same p and delta.
"""
import functools
import math

import numpy as np
from numba import cuda

from ._device import Call, as_device, empty, launch, zeros


@functools.lru_cache(maxsize=None)
def _kernels(dtype):
    t = np.dtype(dtype).type
    zero, one = t(0), t(1)
    neg_inf = t(-np.inf)

    @cuda.jit
    def forward(q, k, v, mask, use_mask, causal, heads, scale, out, p):
        n, l, e = q.shape
        s = k.shape[1]
        d = e // heads
        start, stride = cuda.grid(1), cuda.gridsize(1)
        for r in range(start, n * heads * l, stride):
            i = r % l
            h = (r // l) % heads
            b = r // (l * heads)
            o = h * d
            top = neg_inf
            live = 0
            for j in range(s):
                if (use_mask and mask[b, j] != zero) or (causal and j > i):
                    p[b, h, i, j] = neg_inf
                    continue
                acc = zero
                for c in range(d):
                    acc += q[b, i, o + c] * k[b, j, o + c]
                acc *= scale
                p[b, h, i, j] = acc
                live += 1
                if acc > top:
                    top = acc
            total = zero
            for j in range(s):
                w = p[b, h, i, j]
                if w == neg_inf:
                    p[b, h, i, j] = zero
                else:
                    w = math.exp(w - top)
                    p[b, h, i, j] = w
                    total += w
            inv = one / total if live > 0 else zero
            for c in range(d):
                out[b, i, o + c] = zero
            for j in range(s):
                w = p[b, h, i, j] * inv
                p[b, h, i, j] = w
                if w != zero:
                    for c in range(d):
                        out[b, i, o + c] += w * v[b, j, o + c]

    @cuda.jit
    def backward_q(dout, q, k, v, p, heads, scale, delta, dq):
        n, l, e = q.shape
        s = k.shape[1]
        d = e // heads
        start, stride = cuda.grid(1), cuda.gridsize(1)
        for r in range(start, n * heads * l, stride):
            i = r % l
            h = (r // l) % heads
            b = r // (l * heads)
            o = h * d
            dl = zero
            for j in range(s):
                w = p[b, h, i, j]
                if w != zero:
                    acc = zero
                    for c in range(d):
                        acc += dout[b, i, o + c] * v[b, j, o + c]
                    dl += w * acc
            delta[b, h, i] = dl
            for j in range(s):
                w = p[b, h, i, j]
                if w != zero:
                    acc = zero
                    for c in range(d):
                        acc += dout[b, i, o + c] * v[b, j, o + c]
                    ds = w * (acc - dl) * scale
                    for c in range(d):
                        dq[b, i, o + c] += ds * k[b, j, o + c]

    @cuda.jit
    def backward_kv(dout, q, k, v, p, heads, scale, delta, dk, dv):
        n, l, e = q.shape
        s = k.shape[1]
        d = e // heads
        start, stride = cuda.grid(1), cuda.gridsize(1)
        for r in range(start, n * heads * s, stride):
            j = r % s
            h = (r // s) % heads
            b = r // (s * heads)
            o = h * d
            for i in range(l):
                w = p[b, h, i, j]
                if w != zero:
                    acc = zero
                    for c in range(d):
                        acc += dout[b, i, o + c] * v[b, j, o + c]
                    ds = w * (acc - delta[b, h, i]) * scale
                    for c in range(d):
                        dk[b, j, o + c] += ds * q[b, i, o + c]
                        dv[b, j, o + c] += w * dout[b, i, o + c]

    return forward, backward_q, backward_kv


def attention(q, k, v, mask, num_heads, causal=False):
    call = Call(q, k, v, mask)
    q, k, v = as_device(q), as_device(k), as_device(v)
    n, l, e = q.shape
    s = k.shape[1]
    t = q.dtype.type
    m = as_device(mask, q.dtype) if mask is not None else zeros((1, 1), q.dtype)
    out = empty(q.shape, q.dtype)
    p = empty((n, num_heads, l, s), q.dtype)
    forward = _kernels(q.dtype)[0]
    forward[launch(n * num_heads * l)](q.arr, k.arr, v.arr, m.arr, mask is not None, bool(causal),
                                       num_heads, t(1.0 / math.sqrt(e // num_heads)), out.arr, p.arr)
    return call.out(out), call.out(p)


def attention_backward(dout, q, k, v, p, num_heads):
    call = Call(dout, q, k, v, p)
    dout, q, k, v, p = (as_device(a) for a in (dout, q, k, v, p))
    n, l, e = q.shape
    s = k.shape[1]
    scale = q.dtype.type(1.0 / math.sqrt(e // num_heads))
    dq, dk, dv = zeros(q.shape, q.dtype), zeros(k.shape, q.dtype), zeros(k.shape, q.dtype)
    delta = empty((n, num_heads, l), q.dtype)
    _, backward_q, backward_kv = _kernels(q.dtype)
    backward_q[launch(n * num_heads * l)](dout.arr, q.arr, k.arr, v.arr, p.arr, num_heads, scale, delta.arr, dq.arr)
    backward_kv[launch(n * num_heads * s)](dout.arr, q.arr, k.arr, v.arr, p.arr, num_heads, scale, delta.arr,
                                           dk.arr, dv.arr)
    return call.out(dq), call.out(dk), call.out(dv)
