# LayerNorm, BatchNorm and global average pooling forward and backward; match the "normalization" section of fastnn/_kernels/reference.py.
#
# Statistics in one sweep: sums of d = x - k and d * d, k the first value of the row
# (channel), so the variance does not cancel when the mean dwarfs the spread. Every
# reduction runs in 16 independent lanes (the compiler vectorizes those; it may not
# reorder one running sum). LayerNorm's backward is one fused pass per row (dweight and
# dbias accumulated, sum(g) and sum(g * xhat) reduced), then dx from the row in cache.
# BatchNorm's (N, C, S) with S == 1 (an (N, C) batch) runs along the channels instead.
# Memory-bound and small at the sizes they meet: one thread.

cdef enum:
    _NL = 16    # reduction lanes
    _ACC = 34   # BatchNorm's scratch a channel: 2 x 16 lanes and 2 tail sums


cdef extern from "fnn_vec.h":
    float fnn_hsum16_s(const float *a) nogil
    double fnn_hsum16_d(const double *a) nogil


cdef inline floating _hsum16(const floating *a) noexcept nogil:
    """a[0] + ... + a[15], fnn_vec.h's tree."""
    if floating is float:
        return fnn_hsum16_s(a)
    else:
        return fnn_hsum16_d(a)


# Row reductions of LayerNorm (one row's sums) and BatchNorm (an (N, C, S) row's contribution to
# its channel's 2 x 16 lanes), in C: written as plain loops
# (in Cython or C) gcc 12 unrolled the 16 lanes into scalars and never vectorized them (perf:
# vsubss/vfmadd231ss per value); fnn_vec.h's 16-lane vector types make each 16-value step a
# vector op, and its fnn_lanes / fnn_hsum16 reduce the lanes.
cdef extern from *:
    """
    #include <string.h>
    #include "fnn_simd.h"
    #include "fnn_vec.h"
    #if defined(__GNUC__)
    #define FNN_BN_ROWS(T, S)                                                                \
    static void fnn_ln_sums_##S(long f, const T *row, T k, T *s, T *ss) {                    \
        fnn_v16##S a1 = {0}, a2 = {0}, v;                                                    \
        T t1 = 0, t2 = 0;                                                                    \
        long p = 0;                                                                          \
        for (; p + 16 <= f; p += 16) {                                                       \
            FNN_VEC_LOAD(v, row + p); v -= k; a1 += v; a2 += v * v;                          \
        }                                                                                    \
        for (; p < f; ++p) { T d = row[p] - k; t1 += d; t2 += d * d; }                       \
        *s = t1 + fnn_lanes_##S(&a1); *ss = t2 + fnn_lanes_##S(&a2);                         \
    }                                                                                        \
    /* dw += dy * xhat, db += dy; *sg = sum(g), *sgx = sum(g * xhat), g = dy * w (w may be NULL) */ \
    static void fnn_ln_bwd_row_##S(long f, const T *row, const T *d, const T *w, T mu, T rs, \
                                   T *dw, T *db, T *sg, T *sgx) {                            \
        fnn_v16##S ag = {0}, ax = {0}, xv, dv, wv, xh, g, acc;                               \
        T t1 = 0, t2 = 0;                                                                    \
        long p = 0;                                                                          \
        for (; p + 16 <= f; p += 16) {                                                       \
            FNN_VEC_LOAD(xv, row + p); FNN_VEC_LOAD(dv, d + p);                              \
            xh = (xv - mu) * rs;                                                             \
            FNN_VEC_LOAD(acc, dw + p); acc += dv * xh; FNN_VEC_STORE(dw + p, acc);           \
            FNN_VEC_LOAD(acc, db + p); acc += dv; FNN_VEC_STORE(db + p, acc);                \
            if (w) { FNN_VEC_LOAD(wv, w + p); g = dv * wv; } else g = dv;                    \
            ag += g; ax += g * xh;                                                           \
        }                                                                                    \
        for (; p < f; ++p) {                                                                 \
            T x1 = (row[p] - mu) * rs, g1 = w ? d[p] * w[p] : d[p];                          \
            dw[p] += d[p] * x1; db[p] += d[p]; t1 += g1; t2 += g1 * x1;                      \
        }                                                                                    \
        *sg = t1 + fnn_lanes_##S(&ag); *sgx = t2 + fnn_lanes_##S(&ax);                       \
    }                                                                                        \
    static void fnn_bn_sums_row_##S(long sl, const T *row, T k, T *lanes, T *tail) {         \
        fnn_v16##S a1, a2, v;                                                                \
        long p = 0;                                                                          \
        FNN_VEC_LOAD(a1, lanes); FNN_VEC_LOAD(a2, lanes + 16);                               \
        for (; p + 16 <= sl; p += 16) {                                                      \
            FNN_VEC_LOAD(v, row + p); v -= k; a1 += v; a2 += v * v;                          \
        }                                                                                    \
        FNN_VEC_STORE(lanes, a1); FNN_VEC_STORE(lanes + 16, a2);                             \
        for (; p < sl; ++p) { T d = row[p] - k; tail[0] += d; tail[1] += d * d; }            \
    }                                                                                        \
    static void fnn_bn_dots_row_##S(long sl, const T *dy, const T *x, T m, T *lanes, T *tail) { \
        fnn_v16##S a1, a2, g, v;                                                             \
        long p = 0;                                                                          \
        FNN_VEC_LOAD(a1, lanes); FNN_VEC_LOAD(a2, lanes + 16);                               \
        for (; p + 16 <= sl; p += 16) {                                                      \
            FNN_VEC_LOAD(g, dy + p); FNN_VEC_LOAD(v, x + p);                                 \
            a1 += g; a2 += g * (v - m);                                                      \
        }                                                                                    \
        FNN_VEC_STORE(lanes, a1); FNN_VEC_STORE(lanes + 16, a2);                             \
        for (; p < sl; ++p) { tail[0] += dy[p]; tail[1] += dy[p] * (x[p] - m); }             \
    }
    #else
    #define FNN_BN_ROWS(T, S)                                                                \
    static void fnn_ln_sums_##S(long f, const T *row, T k, T *s, T *ss) {                    \
        T t1 = 0, t2 = 0;                                                                    \
        for (long p = 0; p < f; ++p) { T d = row[p] - k; t1 += d; t2 += d * d; }             \
        *s = t1; *ss = t2;                                                                   \
    }                                                                                        \
    static void fnn_ln_bwd_row_##S(long f, const T *row, const T *d, const T *w, T mu, T rs, \
                                   T *dw, T *db, T *sg, T *sgx) {                            \
        T t1 = 0, t2 = 0;                                                                    \
        for (long p = 0; p < f; ++p) {                                                       \
            T x1 = (row[p] - mu) * rs, g1 = w ? d[p] * w[p] : d[p];                          \
            dw[p] += d[p] * x1; db[p] += d[p]; t1 += g1; t2 += g1 * x1;                      \
        }                                                                                    \
        *sg = t1; *sgx = t2;                                                                 \
    }                                                                                        \
    static void fnn_bn_sums_row_##S(long sl, const T *row, T k, T *lanes, T *tail) {         \
        long p = 0;                                                                          \
        for (; p + 16 <= sl; p += 16)                                                        \
            for (int j = 0; j < 16; ++j) {                                                   \
                T d = row[p + j] - k; lanes[j] += d; lanes[16 + j] += d * d;                 \
            }                                                                                \
        for (; p < sl; ++p) { T d = row[p] - k; tail[0] += d; tail[1] += d * d; }            \
    }                                                                                        \
    static void fnn_bn_dots_row_##S(long sl, const T *dy, const T *x, T m, T *lanes, T *tail) { \
        long p = 0;                                                                          \
        for (; p + 16 <= sl; p += 16)                                                        \
            for (int j = 0; j < 16; ++j) {                                                   \
                lanes[j] += dy[p + j]; lanes[16 + j] += dy[p + j] * (x[p + j] - m);          \
            }                                                                                \
        for (; p < sl; ++p) { tail[0] += dy[p]; tail[1] += dy[p] * (x[p] - m); }             \
    }
    #endif
    FNN_BN_ROWS(float, s)
    FNN_BN_ROWS(double, d)
    #undef FNN_BN_ROWS
    """
    void fnn_ln_sums_s(long f, const float *row, float k, float *s, float *ss) nogil
    void fnn_ln_sums_d(long f, const double *row, double k, double *s, double *ss) nogil
    void fnn_ln_bwd_row_s(long f, const float *row, const float *d, const float *w, float mu, float rs, float *dw, float *db, float *sg, float *sgx) nogil
    void fnn_ln_bwd_row_d(long f, const double *row, const double *d, const double *w, double mu, double rs, double *dw, double *db, double *sg, double *sgx) nogil
    void fnn_bn_sums_row_s(long sl, const float *row, float k, float *lanes, float *tail) nogil
    void fnn_bn_sums_row_d(long sl, const double *row, double k, double *lanes, double *tail) nogil
    void fnn_bn_dots_row_s(long sl, const float *dy, const float *x, float m, float *lanes, float *tail) nogil
    void fnn_bn_dots_row_d(long sl, const double *dy, const double *x, double m, double *lanes, double *tail) nogil


cdef void _ln_fwd(const floating *x, const floating *w, const floating *b, floating eps,
                  Py_ssize_t rows, Py_ssize_t f, floating *y, floating *mean,
                  floating *rstd) noexcept nogil:
    cdef Py_ssize_t r, i
    cdef floating k, s, ss, md, var, mu, rs, inv_f = (<floating> 1) / f
    cdef const floating *row
    cdef floating *out
    for r in range(rows):
        row = x + r * f
        out = y + r * f
        k = row[0]
        if floating is float:
            fnn_ln_sums_s(f, row, k, &s, &ss)
        else:
            fnn_ln_sums_d(f, row, k, &s, &ss)
        md = s * inv_f
        var = ss * inv_f - md * md
        if var < 0:
            var = 0
        mu = k + md
        rs = (<floating> 1) / sqrt(var + eps)
        mean[r] = mu
        rstd[r] = rs
        if w != NULL and b != NULL:
            for i in range(f):
                out[i] = (row[i] - mu) * rs * w[i] + b[i]
        else:
            for i in range(f):
                out[i] = (row[i] - mu) * rs
            if w != NULL:
                for i in range(f):
                    out[i] = out[i] * w[i]
            if b != NULL:
                for i in range(f):
                    out[i] = out[i] + b[i]


cdef void _ln_bwd(const floating *dy, const floating *x, const floating *mean,
                  const floating *rstd, const floating *w, Py_ssize_t rows, Py_ssize_t f,
                  floating *dx, floating *dw, floating *db) noexcept nogil:
    cdef Py_ssize_t r, i
    cdef floating mu, rs, sg, sgx, a, c, inv_f = (<floating> 1) / f
    cdef const floating *row
    cdef const floating *d
    cdef floating *out
    for i in range(f):
        dw[i] = 0
        db[i] = 0
    for r in range(rows):
        row = x + r * f
        d = dy + r * f
        mu = mean[r]
        rs = rstd[r]
        if floating is float:
            fnn_ln_bwd_row_s(f, row, d, w, mu, rs, dw, db, &sg, &sgx)
        else:
            fnn_ln_bwd_row_d(f, row, d, w, mu, rs, dw, db, &sg, &sgx)
        if dx == NULL:
            continue
        a = sg * inv_f
        c = sgx * inv_f
        out = dx + r * f
        if w != NULL:
            for i in range(f):
                out[i] = rs * (d[i] * w[i] - a - (row[i] - mu) * rs * c)
        else:
            for i in range(f):
                out[i] = rs * (d[i] - a - (row[i] - mu) * rs * c)


cdef inline const void *_ptr_or_null(object a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray> a)


def layer_norm(x, weight, bias, eps=1e-5):
    """Each row of x (R, F) normalised over its features: (y, mean (R,), rstd (R,))."""
    cdef cnp.ndarray X = x
    cdef Py_ssize_t rows = X.shape[0], f = X.shape[1]
    cdef int typ = cnp.PyArray_TYPE(X)
    cdef cnp.ndarray Y = _empty_like(X), M = _empty1(rows, typ), R = _empty1(rows, typ)
    cdef const void *w = _ptr_or_null(weight)
    cdef const void *b = _ptr_or_null(bias)
    cdef double e = eps
    if _is_f32(X):
        with nogil:
            _ln_fwd(<const float *> cnp.PyArray_DATA(X), <const float *> w, <const float *> b, <float> e,
                    rows, f, <float *> cnp.PyArray_DATA(Y), <float *> cnp.PyArray_DATA(M),
                    <float *> cnp.PyArray_DATA(R))
    else:
        with nogil:
            _ln_fwd(<const double *> cnp.PyArray_DATA(X), <const double *> w, <const double *> b,
                    <double> e, rows, f, <double *> cnp.PyArray_DATA(Y),
                    <double *> cnp.PyArray_DATA(M), <double *> cnp.PyArray_DATA(R))
    return Y, M, R


def layer_norm_backward(dy, x, mean, rstd, weight, need_dx=True):
    """(dx or None, dweight, dbias) of layer_norm, one fused pass per row."""
    cdef cnp.ndarray X = x, DY = dy, M = mean, R = rstd
    cdef Py_ssize_t rows = X.shape[0], f = X.shape[1]
    cdef int typ = cnp.PyArray_TYPE(X)
    cdef cnp.ndarray DW = _empty1(f, typ), DB = _empty1(f, typ)
    cdef cnp.ndarray DX = _empty_like(X) if need_dx else None
    cdef void *dxp = NULL if DX is None else cnp.PyArray_DATA(DX)
    cdef const void *w = _ptr_or_null(weight)
    if _is_f32(X):
        with nogil:
            _ln_bwd(<const float *> cnp.PyArray_DATA(DY), <const float *> cnp.PyArray_DATA(X),
                    <const float *> cnp.PyArray_DATA(M), <const float *> cnp.PyArray_DATA(R),
                    <const float *> w, rows, f, <float *> dxp, <float *> cnp.PyArray_DATA(DW),
                    <float *> cnp.PyArray_DATA(DB))
    else:
        with nogil:
            _ln_bwd(<const double *> cnp.PyArray_DATA(DY), <const double *> cnp.PyArray_DATA(X),
                    <const double *> cnp.PyArray_DATA(M), <const double *> cnp.PyArray_DATA(R),
                    <const double *> w, rows, f, <double *> dxp, <double *> cnp.PyArray_DATA(DW),
                    <double *> cnp.PyArray_DATA(DB))
    return DX, DW, DB


# ---------------------------------------------------------------- BatchNorm


cdef void _bn_sums(const floating *x, Py_ssize_t n, Py_ssize_t c, Py_ssize_t sl,
                   const floating *k, floating *acc, floating *s, floating *ss) noexcept nogil:
    """Per channel sum(x - k[c]) into s and sum((x - k[c])**2) into ss over (N, C, S), walked in
    memory order (a channel's rows are C * S apart, often 4 KiB, which thrashes the L1 cache's sets
    when walked one channel at a time). Each channel keeps 2 x 16 lanes and 2 tail sums in acc
    (C * 34 scratch) across its rows: the lanes are reduced once a channel, not once a row (that
    reduction cost more than a 64-value row)."""
    cdef Py_ssize_t i, ch, j
    cdef floating *lanes
    for j in range(c * _ACC):
        acc[j] = 0
    for i in range(n):
        for ch in range(c):
            lanes = acc + ch * _ACC
            if floating is float:
                fnn_bn_sums_row_s(sl, x + (i * c + ch) * sl, k[ch], lanes, lanes + 2 * _NL)
            else:
                fnn_bn_sums_row_d(sl, x + (i * c + ch) * sl, k[ch], lanes, lanes + 2 * _NL)
    for ch in range(c):
        lanes = acc + ch * _ACC
        s[ch] = lanes[2 * _NL] + _hsum16(lanes)
        ss[ch] = lanes[2 * _NL + 1] + _hsum16(lanes + _NL)


cdef void _bn_dots(const floating *dy, const floating *x, Py_ssize_t n, Py_ssize_t c,
                   Py_ssize_t sl, const floating *mu, floating *acc, floating *sd,
                   floating *sdx) noexcept nogil:
    """Per channel sum(dy) into sd and sum(dy * (x - mu[c])) into sdx, laid out as _bn_sums."""
    cdef Py_ssize_t i, ch, j, base
    cdef floating *lanes
    for j in range(c * _ACC):
        acc[j] = 0
    for i in range(n):
        for ch in range(c):
            lanes = acc + ch * _ACC
            base = (i * c + ch) * sl
            if floating is float:
                fnn_bn_dots_row_s(sl, dy + base, x + base, mu[ch], lanes, lanes + 2 * _NL)
            else:
                fnn_bn_dots_row_d(sl, dy + base, x + base, mu[ch], lanes, lanes + 2 * _NL)
    for ch in range(c):
        lanes = acc + ch * _ACC
        sd[ch] = lanes[2 * _NL] + _hsum16(lanes)
        sdx[ch] = lanes[2 * _NL + 1] + _hsum16(lanes + _NL)


cdef void _bn_fwd(const floating *x, const floating *w, const floating *b, floating *rm,
                  floating *rv, floating momentum, floating eps, bint training, Py_ssize_t n,
                  Py_ssize_t c, Py_ssize_t sl, floating *y, floating *mean, floating *rstd,
                  floating *scale, floating *offset, floating *acc, bint relu) noexcept nogil:
    """mean, rstd (and the running buffers in training), then y = x * scale[c] + offset[c]
    (relu: clipped at 0 in the same sweep, NaN kept as np.maximum keeps it). scale and offset
    are (C,) scratch, acc (C * 32); mean and rstd double as the sums while reducing."""
    cdef Py_ssize_t i, ch, p, base
    cdef floating d, md, var, a, o, v, m = n * sl, one = 1
    if training:
        for ch in range(c):
            offset[ch] = x[ch * sl]       # the shift k, per channel
            mean[ch] = 0
            rstd[ch] = 0
        if sl == 1:
            for i in range(n):
                base = i * c
                for ch in range(c):
                    d = x[base + ch] - offset[ch]
                    mean[ch] += d
                    rstd[ch] += d * d
        else:
            _bn_sums(x, n, c, sl, offset, acc, mean, rstd)
        for ch in range(c):
            md = mean[ch] / m
            var = rstd[ch] / m - md * md
            if var < 0:
                var = 0
            mean[ch] = offset[ch] + md
            rstd[ch] = one / sqrt(var + eps)
            rm[ch] = (one - momentum) * rm[ch] + momentum * mean[ch]
            rv[ch] = (one - momentum) * rv[ch] + momentum * var * (m / (m - one))
    else:
        for ch in range(c):
            mean[ch] = rm[ch]
            rstd[ch] = one / sqrt(rv[ch] + eps)
    for ch in range(c):
        scale[ch] = rstd[ch] * (w[ch] if w != NULL else one)
        offset[ch] = (b[ch] if b != NULL else 0) - mean[ch] * scale[ch]
    if sl == 1:
        for i in range(n):
            base = i * c
            for ch in range(c):
                v = x[base + ch] * scale[ch] + offset[ch]
                y[base + ch] = 0 if relu and v < 0 else v
    else:
        for i in range(n):
            for ch in range(c):
                base = (i * c + ch) * sl
                a, o = scale[ch], offset[ch]     # locals: y might alias scale for all gcc knows
                if relu:
                    for p in range(sl):
                        v = x[base + p] * a + o
                        y[base + p] = 0 if v < 0 else v
                else:
                    for p in range(sl):
                        y[base + p] = x[base + p] * a + o


cdef void _bn_bwd(const floating *dy, const floating *x, const floating *mean,
                  const floating *rstd, const floating *w, bint training, Py_ssize_t n,
                  Py_ssize_t c, Py_ssize_t sl, floating *dx, floating *dw, floating *db,
                  floating *scale, floating *q, floating *k2, floating *acc) noexcept nogil:
    """dweight, dbias (C,), then dx = scale[c] * (dy - q[c] - (x - mean[c]) * k2[c])."""
    cdef Py_ssize_t i, ch, p, base
    cdef floating a, qq, mu, kk, m = n * sl
    for ch in range(c):
        db[ch] = 0
        dw[ch] = 0
    if sl == 1:
        for i in range(n):
            base = i * c
            for ch in range(c):
                db[ch] += dy[base + ch]
                dw[ch] += dy[base + ch] * (x[base + ch] - mean[ch])
    else:
        _bn_dots(dy, x, n, c, sl, mean, acc, db, dw)
    for ch in range(c):
        dw[ch] = dw[ch] * rstd[ch]
        scale[ch] = rstd[ch] * (w[ch] if w != NULL else 1)
        q[ch] = db[ch] / m if training else 0
        k2[ch] = rstd[ch] * dw[ch] / m if training else 0
    if dx == NULL:
        return
    if sl == 1:
        for i in range(n):
            base = i * c
            for ch in range(c):
                dx[base + ch] = scale[ch] * (dy[base + ch] - q[ch] - (x[base + ch] - mean[ch]) * k2[ch])
    else:
        for i in range(n):
            for ch in range(c):
                base = (i * c + ch) * sl
                a, qq, mu, kk = scale[ch], q[ch], mean[ch], k2[ch]
                for p in range(sl):
                    dx[base + p] = a * (dy[base + p] - qq - (x[base + p] - mu) * kk)


def batch_norm(x, weight, bias, running_mean, running_var, momentum=0.1, eps=1e-5, training=True):
    """x (N, C, S) normalised per channel: (y, mean, rstd); training moves the running buffers."""
    return _batch_norm(x, weight, bias, running_mean, running_var, momentum, eps, training, False)


def batch_norm_relu(x, weight, bias, running_mean, running_var, momentum=0.1, eps=1e-5, training=True):
    """relu(batch_norm(...)) in batch_norm's output sweep (reference.batch_norm_relu)."""
    return _batch_norm(x, weight, bias, running_mean, running_var, momentum, eps, training, True)


cdef tuple _batch_norm(x, weight, bias, running_mean, running_var, momentum, eps, training, bint relu):
    cdef cnp.ndarray X = x, RM = running_mean, RV = running_var
    cdef Py_ssize_t n = X.shape[0], c = X.shape[1], sl = X.shape[2]
    cdef int typ = cnp.PyArray_TYPE(X)
    cdef cnp.ndarray Y = _empty_like(X), M = _empty1(c, typ), R = _empty1(c, typ)
    cdef cnp.ndarray S = _empty1(c, typ), O = _empty1(c, typ), A = _empty1(c * _ACC, typ)
    cdef const void *w = _ptr_or_null(weight)
    cdef const void *b = _ptr_or_null(bias)
    cdef bint tr = bool(training)
    cdef double e = eps, mom = momentum
    if _is_f32(X):
        with nogil:
            _bn_fwd(<const float *> cnp.PyArray_DATA(X), <const float *> w, <const float *> b,
                    <float *> cnp.PyArray_DATA(RM), <float *> cnp.PyArray_DATA(RV), <float> mom,
                    <float> e, tr, n, c, sl, <float *> cnp.PyArray_DATA(Y), <float *> cnp.PyArray_DATA(M),
                    <float *> cnp.PyArray_DATA(R), <float *> cnp.PyArray_DATA(S), <float *> cnp.PyArray_DATA(O),
                    <float *> cnp.PyArray_DATA(A), relu)
    else:
        with nogil:
            _bn_fwd(<const double *> cnp.PyArray_DATA(X), <const double *> w, <const double *> b,
                    <double *> cnp.PyArray_DATA(RM), <double *> cnp.PyArray_DATA(RV), <double> mom,
                    <double> e, tr, n, c, sl, <double *> cnp.PyArray_DATA(Y),
                    <double *> cnp.PyArray_DATA(M), <double *> cnp.PyArray_DATA(R),
                    <double *> cnp.PyArray_DATA(S), <double *> cnp.PyArray_DATA(O),
                    <double *> cnp.PyArray_DATA(A), relu)
    return Y, M, R


def batch_norm_backward(dy, x, mean, rstd, weight, training=True, need_dx=True):
    """(dx or None, dweight, dbias) of batch_norm: one reduction sweep, one elementwise sweep."""
    return _batch_norm_backward(dy, x, None, mean, rstd, weight, training, need_dx)


def batch_norm_relu_backward(dy, x, y, mean, rstd, weight, training=True, need_dx=True):
    """batch_norm_backward of dy cut where y <= 0 (reference.batch_norm_relu_backward): the cut
    dy is written into dx's buffer, which the two sweeps then read (dx is computed in place)."""
    return _batch_norm_backward(dy, x, y, mean, rstd, weight, training, need_dx)


cdef tuple _batch_norm_backward(dy, x, y, mean, rstd, weight, training, need_dx):
    cdef cnp.ndarray X = x, DY = dy, M = mean, R = rstd, Yr
    cdef Py_ssize_t n = X.shape[0], c = X.shape[1], sl = X.shape[2]
    cdef int typ = cnp.PyArray_TYPE(X)
    cdef cnp.ndarray DW = _empty1(c, typ), DB = _empty1(c, typ)
    cdef cnp.ndarray S = _empty1(c, typ), Q = _empty1(c, typ), K2 = _empty1(c, typ)
    cdef cnp.ndarray A = _empty1(c * _ACC, typ)
    cdef cnp.ndarray DX = _empty_like(X) if need_dx or y is not None else None
    cdef void *dxp = NULL if DX is None else cnp.PyArray_DATA(DX)
    cdef const void *w = _ptr_or_null(weight)
    cdef bint tr = bool(training)
    if y is not None:   # dy cut by the relu mask (relu_backward's loop), into DX: both sweeps then read it
        Yr = y
        if _is_f32(X):
            _relu_b(<const float *> cnp.PyArray_DATA(DY), <const float *> cnp.PyArray_DATA(Yr),
                    <const float *> cnp.PyArray_DATA(Yr), <float *> dxp, cnp.PyArray_SIZE(X))
        else:
            _relu_b(<const double *> cnp.PyArray_DATA(DY), <const double *> cnp.PyArray_DATA(Yr),
                    <const double *> cnp.PyArray_DATA(Yr), <double *> dxp, cnp.PyArray_SIZE(X))
        DY = DX
        if not need_dx:
            dxp = NULL
    if _is_f32(X):
        with nogil:
            _bn_bwd(<const float *> cnp.PyArray_DATA(DY), <const float *> cnp.PyArray_DATA(X),
                    <const float *> cnp.PyArray_DATA(M), <const float *> cnp.PyArray_DATA(R),
                    <const float *> w, tr, n, c, sl, <float *> dxp, <float *> cnp.PyArray_DATA(DW),
                    <float *> cnp.PyArray_DATA(DB), <float *> cnp.PyArray_DATA(S),
                    <float *> cnp.PyArray_DATA(Q), <float *> cnp.PyArray_DATA(K2), <float *> cnp.PyArray_DATA(A))
    else:
        with nogil:
            _bn_bwd(<const double *> cnp.PyArray_DATA(DY), <const double *> cnp.PyArray_DATA(X),
                    <const double *> cnp.PyArray_DATA(M), <const double *> cnp.PyArray_DATA(R),
                    <const double *> w, tr, n, c, sl, <double *> dxp, <double *> cnp.PyArray_DATA(DW),
                    <double *> cnp.PyArray_DATA(DB), <double *> cnp.PyArray_DATA(S),
                    <double *> cnp.PyArray_DATA(Q), <double *> cnp.PyArray_DATA(K2),
                    <double *> cnp.PyArray_DATA(A))
    return (DX if need_dx else None), DW, DB


# -------------------------------------------------------- global avg pooling


cdef void _gap_fwd(const floating *x, Py_ssize_t rows, Py_ssize_t sl, floating *y) noexcept nogil:
    cdef Py_ssize_t r
    cdef floating inv = (<floating> 1) / sl
    cdef floating a[_NL]
    cdef floating t
    cdef Py_ssize_t p, j, s16 = sl - sl % _NL
    cdef const floating *row
    for r in range(rows):
        row = x + r * sl
        for j in range(16):
            a[j] = 0
        t = 0
        for p in range(0, s16, 16):
            for j in range(16):
                a[j] += row[p + j]
        for p in range(s16, sl):
            t += row[p]
        y[r] = (t + _hsum16(a)) * inv


cdef void _gap_bwd(const floating *dy, Py_ssize_t rows, Py_ssize_t sl, floating *dx) noexcept nogil:
    cdef Py_ssize_t r, p
    cdef floating v, inv = (<floating> 1) / sl
    for r in range(rows):
        v = dy[r] * inv
        for p in range(sl):
            dx[r * sl + p] = v


def global_avgpool(x):
    """Mean of x (N, C, S) over S: (N, C)."""
    cdef cnp.ndarray X = x
    cdef Py_ssize_t n = X.shape[0], c = X.shape[1], sl = X.shape[2]
    cdef cnp.ndarray Y = _empty2(n, c, cnp.PyArray_TYPE(X))
    if _is_f32(X):
        with nogil:
            _gap_fwd(<const float *> cnp.PyArray_DATA(X), n * c, sl, <float *> cnp.PyArray_DATA(Y))
    else:
        with nogil:
            _gap_fwd(<const double *> cnp.PyArray_DATA(X), n * c, sl, <double *> cnp.PyArray_DATA(Y))
    return Y


def global_avgpool_backward(dy, x):
    """dx (N, C, S): each dy spread evenly over the S positions."""
    cdef cnp.ndarray X = x, DY = dy
    cdef Py_ssize_t n = X.shape[0], c = X.shape[1], sl = X.shape[2]
    cdef cnp.ndarray DX = _empty_like(X)
    if _is_f32(X):
        with nogil:
            _gap_bwd(<const float *> cnp.PyArray_DATA(DY), n * c, sl, <float *> cnp.PyArray_DATA(DX))
    else:
        with nogil:
            _gap_bwd(<const double *> cnp.PyArray_DATA(DY), n * c, sl, <double *> cnp.PyArray_DATA(DX))
    return DX
