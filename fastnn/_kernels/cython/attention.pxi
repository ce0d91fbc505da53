# Fused scaled-dot-product attention forward and backward (reference.attention, reference.attention_backward): per (sample, head, query row) the scores, masked softmax and p @ v in one pass; only p is written. The head's keys (values in the backward) are packed transposed so every inner loop is an axpy over contiguous memory.
from libc.math cimport INFINITY as _INF


cdef void _attn_fwd(const floating *q, const floating *k, const floating *v, const floating *mask,
                    bint use_mask, bint causal, Py_ssize_t n, Py_ssize_t l, Py_ssize_t s, Py_ssize_t e,
                    Py_ssize_t heads, floating scale, floating *out, floating *p, floating *kt) noexcept nogil:
    # kt: scratch of d * s (the head's keys, transposed) + s (a score row) + d (an output row)
    cdef Py_ssize_t d = e // heads, b, h, i, j, c, o, jmax
    cdef floating *row = kt + d * s
    cdef floating *acc = row + s
    cdef const floating *vj
    cdef floating *pr
    cdef floating qc, top, total, inv, w
    for b in range(n):
        for h in range(heads):
            o = h * d
            for j in range(s):
                for c in range(d):
                    kt[c * s + j] = k[(b * s + j) * e + o + c]
            for i in range(l):
                jmax = (i + 1 if i + 1 < s else s) if causal else s
                for j in range(jmax):
                    row[j] = 0
                for c in range(d):
                    qc = q[(b * l + i) * e + o + c] * scale
                    for j in range(jmax):
                        row[j] = row[j] + qc * kt[c * s + j]
                top = -_INF
                for j in range(jmax):
                    if use_mask and mask[b * s + j] != 0:
                        row[j] = -_INF
                    elif row[j] > top:
                        top = row[j]
                if top == -_INF:
                    top = 0
                total = 0
                for j in range(jmax):       # fnn_exp(-inf) = 0: masked keys drop out
                    if floating is float:
                        row[j] = fnn_expf(row[j] - top)
                    else:
                        row[j] = fnn_exp(row[j] - top)
                    total = total + row[j]
                inv = (1 / total) if total > 0 else 0
                for c in range(d):
                    acc[c] = 0
                pr = p + ((b * heads + h) * l + i) * s
                for j in range(jmax):
                    w = row[j] * inv
                    pr[j] = w
                    if w != 0:
                        vj = v + (b * s + j) * e + o
                        for c in range(d):
                            acc[c] = acc[c] + w * vj[c]
                for j in range(jmax, s):
                    pr[j] = 0
                for c in range(d):
                    out[(b * l + i) * e + o + c] = acc[c]


cdef void _attn_bwd(const floating *dout, const floating *q, const floating *k, const floating *v,
                    const floating *p, Py_ssize_t n, Py_ssize_t l, Py_ssize_t s, Py_ssize_t e,
                    Py_ssize_t heads, floating scale, floating *dq, floating *dk, floating *dv,
                    floating *vt) noexcept nogil:
    # vt: scratch of d * s (the head's values, transposed) + s (a dp row) + d (a dq row)
    cdef Py_ssize_t d = e // heads, b, h, i, j, c, o
    cdef floating *dp = vt + d * s
    cdef floating *acc = dp + s
    cdef const floating *doi
    cdef const floating *qi
    cdef const floating *pr
    cdef const floating *kj
    cdef floating *dkj
    cdef floating *dvj
    cdef floating g, delta, w, ds
    for b in range(n):
        for h in range(heads):
            o = h * d
            for j in range(s):
                for c in range(d):
                    vt[c * s + j] = v[(b * s + j) * e + o + c]
            for i in range(l):
                doi = dout + (b * l + i) * e + o
                qi = q + (b * l + i) * e + o
                pr = p + ((b * heads + h) * l + i) * s
                for j in range(s):
                    dp[j] = 0
                for c in range(d):
                    g = doi[c]
                    for j in range(s):
                        dp[j] = dp[j] + g * vt[c * s + j]
                delta = 0
                for j in range(s):
                    delta = delta + pr[j] * dp[j]
                for c in range(d):
                    acc[c] = 0
                for j in range(s):
                    w = pr[j]
                    if w == 0:
                        continue
                    ds = w * (dp[j] - delta) * scale
                    kj = k + (b * s + j) * e + o
                    dkj = dk + (b * s + j) * e + o
                    dvj = dv + (b * s + j) * e + o
                    for c in range(d):
                        acc[c] = acc[c] + ds * kj[c]
                        dkj[c] = dkj[c] + ds * qi[c]
                        dvj[c] = dvj[c] + w * doi[c]
                for c in range(d):
                    dq[(b * l + i) * e + o + c] = acc[c]


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
    rdims[0] = (e // heads + 1) * s + e // heads
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
    cdef cnp.ndarray DK = cnp.PyArray_ZEROS(3, K.shape, typenum, 0)
    cdef cnp.ndarray DV = cnp.PyArray_ZEROS(3, K.shape, typenum, 0)
    cdef cnp.npy_intp rdims[1]
    rdims[0] = (e // heads + 1) * s + e // heads
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
