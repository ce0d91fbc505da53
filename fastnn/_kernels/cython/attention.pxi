# Fused scaled-dot-product attention forward and backward (reference.attention, reference.attention_backward): per (sample, head) the score block, its masked softmax and each product run as small blocked GEMMs (gemm.pxi's _gemm_serial reads a head in place through its row stride e); only p is written.
from libc.math cimport INFINITY as _INF


cdef Py_ssize_t _attn_blocks(Py_ssize_t l, Py_ssize_t s, Py_ssize_t d, bint single,
                             Py_ssize_t *blk) noexcept nogil:
    """blk = (MC, KC, NC) of this ISA; returns the size of one packing buffer (A's, then B's,
    each rounded to 16) that covers every GEMM of one head."""
    cdef Py_ssize_t MR, NR, MC, KC, NC, big = l if l > s else s, kmax, a_sz, b_sz
    if single:
        MR, NR, MC, KC, NC = FNN_MR_S, FNN_NR_S, _MC_S, _KC_S, _NC_S
    else:
        MR, NR, MC, KC, NC = FNN_MR_D, FNN_NR_D, _MC_D, _KC_D, _NC_D
    MC = ((MC + MR - 1) // MR) * MR
    NC = ((NC + NR - 1) // NR) * NR
    kmax = _imin(KC, d if d > big else big)
    a_sz = ((_imin(MC, ((big + MR - 1) // MR) * MR) * kmax + 15) // 16) * 16
    b_sz = ((_imin(NC, (((s if s > d else d) + NR - 1) // NR) * NR) * kmax + 15) // 16) * 16
    blk[0] = MC
    blk[1] = KC
    blk[2] = NC
    blk[3] = a_sz
    return a_sz + b_sz


cdef void _softmax_row(floating *row, Py_ssize_t s, Py_ssize_t jmax, const floating *mrow,
                       bint use_mask, floating scale) noexcept nogil:
    """row[:s] (raw scores) -> softmax(scale * row) over the keys j < jmax not masked (0 elsewhere)."""
    cdef Py_ssize_t j, live = 0
    cdef floating top = -_INF, total = 0, inv
    for j in range(s):
        if j >= jmax or (use_mask and mrow[j] != 0):
            row[j] = -_INF
        else:
            live += 1
            row[j] = row[j] * scale
            if row[j] > top:
                top = row[j]
    if live == 0:
        top = 0
    for j in range(s):          # fnn_exp(-inf) = 0: masked keys drop out
        if floating is float:
            row[j] = fnn_expf(row[j] - top)
        else:
            row[j] = fnn_exp(row[j] - top)
    for j in range(s):
        total = total + row[j]
    inv = (1 / total) if live > 0 else 0
    for j in range(s):
        row[j] = row[j] * inv


cdef int _attn_fwd(const floating *q, const floating *k, const floating *v, const floating *mask,
                   bint use_mask, bint causal, Py_ssize_t n, Py_ssize_t l, Py_ssize_t s, Py_ssize_t e,
                   Py_ssize_t heads, floating scale, floating *out, floating *p) noexcept nogil:
    cdef Py_ssize_t d = e // heads, b, h, i, o
    cdef Py_ssize_t blk[4]
    cdef floating *pb
    cdef Py_ssize_t sz = _attn_blocks(l, s, d, floating is float, blk)
    cdef floating *buf = <floating *> fnn_aligned_alloc(sz * sizeof(floating))
    if buf == NULL:
        return -1
    cdef floating *Ap = buf
    cdef floating *Bp = buf + blk[3]
    for b in range(n):
        for h in range(heads):
            o = h * d
            pb = p + (b * heads + h) * l * s
            # scores = q_h @ k_h.T (l x s), then the softmax row by row, then out_h = p @ v_h
            _gemm_serial(q + b * l * e + o, e, k + b * s * e + o, e, pb, s, l, s, d,
                         False, True, False, Ap, Bp, blk[0], blk[1], blk[2])
            for i in range(l):
                _softmax_row(pb + i * s, s, (i + 1 if i + 1 < s else s) if causal else s,
                             mask + b * s, use_mask, scale)
            _gemm_serial(pb, s, v + b * s * e + o, e, out + b * l * e + o, e, l, d, s,
                         False, False, False, Ap, Bp, blk[0], blk[1], blk[2])
    fnn_aligned_free(buf)
    return 0


cdef int _attn_bwd(const floating *dout, const floating *q, const floating *k, const floating *v,
                   const floating *p, Py_ssize_t n, Py_ssize_t l, Py_ssize_t s, Py_ssize_t e,
                   Py_ssize_t heads, floating scale, floating *dq, floating *dk, floating *dv) noexcept nogil:
    cdef Py_ssize_t d = e // heads, b, h, i, j, o
    cdef Py_ssize_t blk[4]
    cdef const floating *pb
    cdef const floating *pr
    cdef floating *dr
    cdef floating delta
    cdef Py_ssize_t sz = _attn_blocks(l, s, d, floating is float, blk)
    # packing buffers, then dS (l x s)
    cdef floating *buf = <floating *> fnn_aligned_alloc((sz + l * s) * sizeof(floating))
    if buf == NULL:
        return -1
    cdef floating *Ap = buf
    cdef floating *Bp = buf + blk[3]
    cdef floating *ds = buf + sz
    for b in range(n):
        for h in range(heads):
            o = h * d
            pb = p + (b * heads + h) * l * s
            # dP = dout_h @ v_h.T; dS = p * (dP - rowsum(p * dP)) * scale
            _gemm_serial(dout + b * l * e + o, e, v + b * s * e + o, e, ds, s, l, s, d,
                         False, True, False, Ap, Bp, blk[0], blk[1], blk[2])
            for i in range(l):
                pr = pb + i * s
                dr = ds + i * s
                delta = 0
                for j in range(s):
                    delta = delta + pr[j] * dr[j]
                for j in range(s):
                    dr[j] = pr[j] * (dr[j] - delta) * scale
            # dv_h = p.T @ dout_h, dq_h = dS @ k_h, dk_h = dS.T @ q_h
            _gemm_serial(pb, s, dout + b * l * e + o, e, dv + b * s * e + o, e, s, d, l,
                         True, False, False, Ap, Bp, blk[0], blk[1], blk[2])
            _gemm_serial(ds, s, k + b * s * e + o, e, dq + b * l * e + o, e, l, d, s,
                         False, False, False, Ap, Bp, blk[0], blk[1], blk[2])
            _gemm_serial(ds, s, q + b * l * e + o, e, dk + b * s * e + o, e, s, d, l,
                         True, False, False, Ap, Bp, blk[0], blk[1], blk[2])
    fnn_aligned_free(buf)
    return 0


def attention(q, k, v, mask, num_heads, causal=False):
    """(out, p): scaled-dot-product attention over heads (reference.attention)."""
    cdef cnp.ndarray Q = q, K = k, V = v, M
    cdef Py_ssize_t n = Q.shape[0], l = Q.shape[1], e = Q.shape[2], s = K.shape[1], heads = num_heads
    cdef int typenum = cnp.PyArray_TYPE(Q), rc
    cdef cnp.ndarray OUT = cnp.PyArray_EMPTY(3, Q.shape, typenum, 0)
    cdef cnp.npy_intp pdims[4]
    pdims[0] = n; pdims[1] = heads; pdims[2] = l; pdims[3] = s
    cdef cnp.ndarray P = cnp.PyArray_EMPTY(4, pdims, typenum, 0)
    cdef bint use_mask = mask is not None, caus = causal
    cdef double scale = 1.0 / sqrt(<double> (e // heads))
    cdef void *mp = NULL
    if use_mask:
        M = mask
        mp = cnp.PyArray_DATA(M)
    if _is_f32(Q):
        with nogil:
            rc = _attn_fwd(<const float *> cnp.PyArray_DATA(Q), <const float *> cnp.PyArray_DATA(K),
                           <const float *> cnp.PyArray_DATA(V), <const float *> mp, use_mask, caus,
                           n, l, s, e, heads, <float> scale, <float *> cnp.PyArray_DATA(OUT),
                           <float *> cnp.PyArray_DATA(P))
    else:
        with nogil:
            rc = _attn_fwd(<const double *> cnp.PyArray_DATA(Q), <const double *> cnp.PyArray_DATA(K),
                           <const double *> cnp.PyArray_DATA(V), <const double *> mp, use_mask, caus,
                           n, l, s, e, heads, scale, <double *> cnp.PyArray_DATA(OUT),
                           <double *> cnp.PyArray_DATA(P))
    if rc != 0:
        raise MemoryError("attention: cannot allocate packing buffers")
    return OUT, P


def attention_backward(dout, q, k, v, p, num_heads):
    """(dq, dk, dv) from dout and the forward's probabilities (reference.attention_backward)."""
    cdef cnp.ndarray DO = dout, Q = q, K = k, V = v, P = p
    cdef Py_ssize_t n = Q.shape[0], l = Q.shape[1], e = Q.shape[2], s = K.shape[1], heads = num_heads
    cdef int typenum = cnp.PyArray_TYPE(Q), rc
    cdef cnp.ndarray DQ = cnp.PyArray_EMPTY(3, Q.shape, typenum, 0)
    cdef cnp.ndarray DK = cnp.PyArray_EMPTY(3, K.shape, typenum, 0)
    cdef cnp.ndarray DV = cnp.PyArray_EMPTY(3, K.shape, typenum, 0)
    cdef double scale = 1.0 / sqrt(<double> (e // heads))
    if _is_f32(Q):
        with nogil:
            rc = _attn_bwd(<const float *> cnp.PyArray_DATA(DO), <const float *> cnp.PyArray_DATA(Q),
                           <const float *> cnp.PyArray_DATA(K), <const float *> cnp.PyArray_DATA(V),
                           <const float *> cnp.PyArray_DATA(P), n, l, s, e, heads, <float> scale,
                           <float *> cnp.PyArray_DATA(DQ), <float *> cnp.PyArray_DATA(DK),
                           <float *> cnp.PyArray_DATA(DV))
    else:
        with nogil:
            rc = _attn_bwd(<const double *> cnp.PyArray_DATA(DO), <const double *> cnp.PyArray_DATA(Q),
                           <const double *> cnp.PyArray_DATA(K), <const double *> cnp.PyArray_DATA(V),
                           <const double *> cnp.PyArray_DATA(P), n, l, s, e, heads, scale,
                           <double *> cnp.PyArray_DATA(DQ), <double *> cnp.PyArray_DATA(DK),
                           <double *> cnp.PyArray_DATA(DV))
    if rc != 0:
        raise MemoryError("attention_backward: cannot allocate packing buffers")
    return DQ, DK, DV
