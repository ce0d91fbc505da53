# Fused scaled-dot-product attention forward and backward (reference.attention, reference.attention_backward): per (sample, head, query row) the scores, masked softmax and p @ v in one pass; only p is written. The head's keys (values in the backward) are packed transposed so every inner loop is an axpy over contiguous memory.
from libc.math cimport INFINITY as _INF


cdef void _attn_fwd(const floating *q, const floating *k, const floating *v, const floating *mask,
                    bint use_mask, bint causal, Py_ssize_t n, Py_ssize_t l, Py_ssize_t s, Py_ssize_t e,
                    Py_ssize_t heads, floating scale, floating *out, floating *p, floating *kt) noexcept nogil:
    # kt: scratch for the head's keys transposed (d x s), its values (s x d), a q row and an output row (d each)
    cdef Py_ssize_t d = e // heads, b, h, i, j, c, o, jmax, live
    cdef floating *vh = kt + d * s
    cdef floating *qi = vh + s * d
    cdef floating *acc = qi + d
    cdef floating *row
    cdef floating qc, top, total, inv, w, x
    for b in range(n):
        for h in range(heads):
            o = h * d
            for j in range(s):
                for c in range(d):
                    kt[c * s + j] = k[(b * s + j) * e + o + c]
                    vh[j * d + c] = v[(b * s + j) * e + o + c]
            for i in range(l):
                row = p + ((b * heads + h) * l + i) * s
                for c in range(d):
                    qi[c] = q[(b * l + i) * e + o + c] * scale
                for j in range(s):
                    row[j] = 0
                for c in range(d):
                    qc = qi[c]
                    for j in range(s):
                        row[j] = row[j] + qc * kt[c * s + j]
                jmax = (i + 1 if i + 1 < s else s) if causal else s
                top = -_INF
                live = 0
                for j in range(s):
                    if j >= jmax or (use_mask and mask[b * s + j] != 0):
                        row[j] = -_INF
                    else:
                        live += 1
                        if row[j] > top:
                            top = row[j]
                if live == 0:
                    top = 0
                for j in range(s):          # fnn_exp(-inf) = 0: masked keys drop out
                    if floating is float:
                        row[j] = fnn_expf(row[j] - top)
                    else:
                        row[j] = fnn_exp(row[j] - top)
                total = 0
                for j in range(s):
                    total = total + row[j]
                inv = (1 / total) if live > 0 else 0
                for c in range(d):
                    acc[c] = 0
                for j in range(s):
                    w = row[j] * inv
                    row[j] = w
                    for c in range(d):
                        acc[c] = acc[c] + w * vh[j * d + c]
                for c in range(d):
                    out[(b * l + i) * e + o + c] = acc[c]


cdef void _attn_bwd(const floating *dout, const floating *q, const floating *k, const floating *v,
                    const floating *p, Py_ssize_t n, Py_ssize_t l, Py_ssize_t s, Py_ssize_t e,
                    Py_ssize_t heads, floating scale, floating *dq, floating *dk, floating *dv,
                    floating *vt) noexcept nogil:
    # vt: scratch for the head's values transposed (d x s), keys, dk, dv (s x d each), a dp row (s)
    # and a q row, a dout row, a dq row (d each)
    cdef Py_ssize_t d = e // heads, b, h, i, j, c, o
    cdef floating *kh = vt + d * s
    cdef floating *dkh = kh + s * d
    cdef floating *dvh = dkh + s * d
    cdef floating *dp = dvh + s * d
    cdef floating *qi = dp + s
    cdef floating *gi = qi + d
    cdef floating *acc = gi + d
    cdef const floating *pr
    cdef floating g, delta, w, ds
    for b in range(n):
        for h in range(heads):
            o = h * d
            for j in range(s):
                for c in range(d):
                    vt[c * s + j] = v[(b * s + j) * e + o + c]
                    kh[j * d + c] = k[(b * s + j) * e + o + c]
                    dkh[j * d + c] = 0
                    dvh[j * d + c] = 0
            for i in range(l):
                pr = p + ((b * heads + h) * l + i) * s
                for c in range(d):
                    qi[c] = q[(b * l + i) * e + o + c]
                    gi[c] = dout[(b * l + i) * e + o + c]
                for j in range(s):
                    dp[j] = 0
                for c in range(d):
                    g = gi[c]
                    for j in range(s):
                        dp[j] = dp[j] + g * vt[c * s + j]
                delta = 0
                for j in range(s):
                    delta = delta + pr[j] * dp[j]
                for j in range(s):
                    dp[j] = pr[j] * (dp[j] - delta) * scale
                for c in range(d):
                    acc[c] = 0
                # three loops, one store stream each: GCC vectorizes them (one fused loop it did not)
                for j in range(s):
                    ds = dp[j]
                    for c in range(d):
                        acc[c] = acc[c] + ds * kh[j * d + c]
                for j in range(s):
                    ds = dp[j]
                    for c in range(d):
                        dkh[j * d + c] = dkh[j * d + c] + ds * qi[c]
                for j in range(s):
                    w = pr[j]
                    for c in range(d):
                        dvh[j * d + c] = dvh[j * d + c] + w * gi[c]
                for c in range(d):
                    dq[(b * l + i) * e + o + c] = acc[c]
            for j in range(s):
                for c in range(d):
                    dk[(b * s + j) * e + o + c] = dkh[j * d + c]
                    dv[(b * s + j) * e + o + c] = dvh[j * d + c]


def attention(q, k, v, mask, num_heads, causal=False):
    """(out, p): scaled-dot-product attention over heads (reference.attention)."""
    cdef cnp.ndarray Q = q, K = k, V = v, M
    cdef Py_ssize_t n = Q.shape[0], l = Q.shape[1], e = Q.shape[2], s = K.shape[1], heads = num_heads
    cdef int typenum = cnp.PyArray_TYPE(Q)
    cdef cnp.ndarray OUT = cnp.PyArray_EMPTY(3, Q.shape, typenum, 0)
    cdef cnp.npy_intp pdims[4]
    pdims[0] = n; pdims[1] = heads; pdims[2] = l; pdims[3] = s
    cdef cnp.ndarray P = cnp.PyArray_EMPTY(4, pdims, typenum, 0)
    cdef cnp.npy_intp rdims[1]
    rdims[0] = 2 * (e // heads) * s + 2 * (e // heads)
    cdef cnp.ndarray ROW = cnp.PyArray_EMPTY(1, rdims, typenum, 0)
    cdef bint use_mask = mask is not None, caus = causal
    cdef double scale = 1.0 / sqrt(<double> (e // heads))
    cdef void *mp = NULL
    if use_mask:
        M = mask
        mp = cnp.PyArray_DATA(M)
    if _is_f32(Q):
        _attn_fwd(<const float *> cnp.PyArray_DATA(Q), <const float *> cnp.PyArray_DATA(K),
                  <const float *> cnp.PyArray_DATA(V), <const float *> mp, use_mask, caus, n, l, s, e, heads,
                  <float> scale, <float *> cnp.PyArray_DATA(OUT), <float *> cnp.PyArray_DATA(P),
                  <float *> cnp.PyArray_DATA(ROW))
    else:
        _attn_fwd(<const double *> cnp.PyArray_DATA(Q), <const double *> cnp.PyArray_DATA(K),
                  <const double *> cnp.PyArray_DATA(V), <const double *> mp, use_mask, caus, n, l, s, e, heads,
                  scale, <double *> cnp.PyArray_DATA(OUT), <double *> cnp.PyArray_DATA(P),
                  <double *> cnp.PyArray_DATA(ROW))
    return OUT, P


def attention_backward(dout, q, k, v, p, num_heads):
    """(dq, dk, dv) from dout and the forward's probabilities (reference.attention_backward)."""
    cdef cnp.ndarray DO = dout, Q = q, K = k, V = v, P = p
    cdef Py_ssize_t n = Q.shape[0], l = Q.shape[1], e = Q.shape[2], s = K.shape[1], heads = num_heads
    cdef int typenum = cnp.PyArray_TYPE(Q)
    cdef cnp.ndarray DQ = cnp.PyArray_EMPTY(3, Q.shape, typenum, 0)
    cdef cnp.ndarray DK = cnp.PyArray_EMPTY(3, K.shape, typenum, 0)
    cdef cnp.ndarray DV = cnp.PyArray_EMPTY(3, K.shape, typenum, 0)
    cdef cnp.npy_intp rdims[1]
    rdims[0] = 4 * (e // heads) * s + s + 3 * (e // heads)
    cdef cnp.ndarray DP = cnp.PyArray_EMPTY(1, rdims, typenum, 0)
    cdef double scale = 1.0 / sqrt(<double> (e // heads))
    if _is_f32(Q):
        _attn_bwd(<const float *> cnp.PyArray_DATA(DO), <const float *> cnp.PyArray_DATA(Q),
                  <const float *> cnp.PyArray_DATA(K), <const float *> cnp.PyArray_DATA(V),
                  <const float *> cnp.PyArray_DATA(P), n, l, s, e, heads, <float> scale,
                  <float *> cnp.PyArray_DATA(DQ), <float *> cnp.PyArray_DATA(DK), <float *> cnp.PyArray_DATA(DV),
                  <float *> cnp.PyArray_DATA(DP))
    else:
        _attn_bwd(<const double *> cnp.PyArray_DATA(DO), <const double *> cnp.PyArray_DATA(Q),
                  <const double *> cnp.PyArray_DATA(K), <const double *> cnp.PyArray_DATA(V),
                  <const double *> cnp.PyArray_DATA(P), n, l, s, e, heads, scale,
                  <double *> cnp.PyArray_DATA(DQ), <double *> cnp.PyArray_DATA(DK), <double *> cnp.PyArray_DATA(DV),
                  <double *> cnp.PyArray_DATA(DP))
    return DQ, DK, DV
