"""Fused scaled-dot-product attention forward and backward; matches attention and attention_backward in fastnn/_kernels/reference.py.

Per (sample, head) the head's q, k, v blocks are copied into small contiguous buffers
and every product (scores q k^T, p v; in the backward dP, dv, dq, dk) is one call of
gemm.py's blocked, packed _gemm_block; the masked softmax works on the score block in
place in p, which is all the backward needs (the scores are never kept). Serial: at
the target sizes (batch 32, 4 heads, 32 steps) the forward is about 8 MFLOP, below
what a parallel region pays back on a shared 2-core machine.
"""
import math

import numpy as np
from numba import njit, types
from numba.extending import overload

from ._math import exp, exp32
from .gemm import BLOCKS, _gemm_block

# 'reassoc' lets the row sums (softmax total, delta) vectorize; exp keeps its own flags.
FM = {"reassoc", "contract", "nsz", "arcp"}


def _exp(v):
    """Branch-free, vectorizable exp in v's precision (resolved per dtype)."""
    raise NotImplementedError


@overload(_exp, jit_options={"fastmath": FM, "error_model": "numpy"})
def _exp_impl(v):
    if v == types.float32:
        return lambda v: exp32(v)
    return lambda v: exp(v)


@njit(cache=True, fastmath=FM, error_model="numpy")
def _softmax_rows(sc, i0, causal, mrow, use_mask, scale, one, neg_inf):
    """Each row i of sc (raw scores of query i0 + i) -> softmax(scale * row) over its live keys."""
    zero = one - one
    s = sc.shape[1]
    for i in range(sc.shape[0]):
        row = sc[i]
        jmax = min(s, i0 + i + 1) if causal else s
        top = neg_inf
        live = 0
        for j in range(s):
            if j >= jmax or (use_mask and mrow[j] != 0):
                row[j] = neg_inf
            else:
                live += 1
                row[j] *= scale
                top = max(top, row[j])
        if live == 0:
            top = zero
        for j in range(s):
            x = row[j]
            w = _exp(x - top)
            row[j] = w if x != neg_inf else zero
        total = zero
        for j in range(s):
            total += row[j]
        inv = one / total if live > 0 else zero
        for j in range(s):
            row[j] *= inv


@njit(cache=True, fastmath=FM, error_model="numpy")
def _head(x, r0, rows, o, dst):
    """dst (rows, D) = x[r0:r0+rows, o:o+D] (one head's block, made contiguous)."""
    for i in range(rows):
        for c in range(dst.shape[1]):
            dst[i, c] = x[r0 + i, o + c]


@njit(cache=True, fastmath=FM, error_model="numpy")
def _unhead_t(src_t, x, r0, o):
    """x[r0 + i, o + c] = src_t[c, i]: a head's block computed transposed."""
    for i in range(src_t.shape[1]):
        for c in range(src_t.shape[0]):
            x[r0 + i, o + c] = src_t[c, i]


@njit(cache=True, fastmath=FM, error_model="numpy")
def _forward(q, k, v, mask, use_mask, causal, l, s, heads, scale, one, neg_inf, out, p, mc, kc, nc):
    # q, out: (N*L, E); k, v: (N*S, E); p: (N, H, L, S); mask: (N, S)
    e = q.shape[1]
    n = q.shape[0] // l
    d = e // heads
    qh, oh = np.empty((l, d), q.dtype), np.empty((d, l), q.dtype)
    kh, vh = np.empty((s, d), q.dtype), np.empty((s, d), q.dtype)
    for b in range(n):
        for h in range(heads):
            o = h * d
            _head(q, b * l, l, o, qh)
            _head(k, b * s, s, o, kh)
            _head(v, b * s, s, o, vh)
            sc = p[b, h]               # (L, S): scores, then probabilities, in place
            _gemm_block(qh, kh, sc, False, True, 0, l, 0, s, False, mc, kc, nc)
            _softmax_rows(sc, 0, causal, mask[b], use_mask, scale, one, neg_inf)
            _gemm_block(vh, sc, oh, True, True, 0, d, 0, l, False, mc, kc, nc)   # (p @ v_h).T
            _unhead_t(oh, out, b * l, o)


@njit(cache=True, fastmath=FM, error_model="numpy")
def _backward(dout, q, k, v, p, l, s, heads, scale, dq, dk, dv, mc, kc, nc):
    e = q.shape[1]
    n = q.shape[0] // l
    d = e // heads
    gh, qh, dqh = np.empty((l, d), q.dtype), np.empty((l, d), q.dtype), np.empty((d, l), q.dtype)
    kh, vh = np.empty((s, d), q.dtype), np.empty((s, d), q.dtype)
    dkh, dvh = np.empty((d, s), q.dtype), np.empty((d, s), q.dtype)
    ds = np.empty((l, s), q.dtype)
    for b in range(n):
        for h in range(heads):
            o = h * d
            _head(dout, b * l, l, o, gh)
            _head(q, b * l, l, o, qh)
            _head(k, b * s, s, o, kh)
            _head(v, b * s, s, o, vh)
            pb = p[b, h]
            # dP = dout_h @ v_h.T, then d scores = p * (dP - rowsum(p * dP)) * scale
            _gemm_block(gh, vh, ds, False, True, 0, l, 0, s, False, mc, kc, nc)
            for i in range(l):
                pr, dr = pb[i], ds[i]
                delta = scale - scale
                for j in range(s):
                    delta += pr[j] * dr[j]
                for j in range(s):
                    dr[j] = pr[j] * (dr[j] - delta) * scale
            # transposed, so the D rows (few) are the tile's M side: dv_h.T = dout_h.T @ p,
            # dq_h.T = k_h.T @ dS.T, dk_h.T = q_h.T @ dS
            _gemm_block(gh, pb, dvh, True, False, 0, d, 0, s, False, mc, kc, nc)
            _gemm_block(kh, ds, dqh, True, True, 0, d, 0, l, False, mc, kc, nc)
            _gemm_block(qh, ds, dkh, True, False, 0, d, 0, s, False, mc, kc, nc)
            _unhead_t(dqh, dq, b * l, o)
            _unhead_t(dkh, dk, b * s, o)
            _unhead_t(dvh, dv, b * s, o)


def attention(q, k, v, mask, num_heads, causal=False):
    n, l, e = q.shape
    s = k.shape[1]
    out = np.empty_like(q)
    p = np.empty((n, num_heads, l, s), q.dtype)
    t = q.dtype.type
    m = mask if mask is not None else np.zeros((n, 1), q.dtype)
    _forward(q.reshape(n * l, e), k.reshape(n * s, e), v.reshape(n * s, e), m, mask is not None, bool(causal),
             l, s, num_heads, t(1.0 / math.sqrt(e // num_heads)), t(1), t(-np.inf), out.reshape(n * l, e),
             p, *BLOCKS[q.dtype])
    return out, p


def attention_backward(dout, q, k, v, p, num_heads):
    n, l, e = q.shape
    s = k.shape[1]
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    scale = q.dtype.type(1.0 / math.sqrt(e // num_heads))
    _backward(dout.reshape(n * l, e), q.reshape(n * l, e), k.reshape(n * s, e), v.reshape(n * s, e),
              p, l, s, num_heads, scale, dq.reshape(n * l, e),
              dk.reshape(n * s, e), dv.reshape(n * s, e), *BLOCKS[q.dtype])
    return dq, dk, dv
