# Convolution (conv1d/conv2d) and pooling (max/avg, 1-D/2-D) forward and backward on whole batches; matches the "convolution and pooling" section of fastnn/_kernels/reference.py.
#
# Convolution (conv1d is conv2d on a height-1 image), with K = C_in * kh * kw taps and
# R = N*Ho*Wo output positions, everything in the "transposed" layout so that the
# GEMM reads its B operand in place (no packing) and needs no transposes:
#  * forward, K >= _CONV_GEMM_MIN_TAPS: im2col into colt (K, R) (one row per tap),
#    yt (C_out, R) = b + W colt (W as stored is A), then yt's (C_out, P) blocks
#    copied into (N, C_out, Ho, Wo);
#  * forward, fewer taps (a first layer over one channel): direct loops per sample,
#    the sample's taps laid out as (K, Ho*Wo) rows so the innermost loop runs along
#    output positions with no reduction (it vectorizes);
#  * backward (every K): dyt (C_out, R) by block copies (db its row sums),
#    dW = dyt colt^T and dcolt = W^T dyt by the GEMM, and col2im of dcolt for dx.
# The GEMMs thread only above _CONV_PAR_MIN_WORK multiply-adds; the rest is one pass of memory
# traffic and stays on one thread. Pooling is memory-bound and single-threaded.
# Small images (batch-inner layout, below): the transposes in and out of it run in 8x8 register
# tiles, the bias added on the way out (fnn_transpose.h); a team runs pieces of samples, each
# a whole convolution of its own (from _CONV_BI_PAR_MIN_WORK); 2x2 stride-2 max pools run in 16
# lanes on AVX-512 builds (fnn_pool.h); dW dots and db sums in fnn_vec.h's vector types.

# (measured: the GEMM path is 4.5x faster than the direct loops even for the 5-tap
# one-channel first layer of the small CNN, 19 vs 86 us at batch 100)
cdef Py_ssize_t _CONV_GEMM_MIN_TAPS = 1
# dW by row dot products (both operands contiguous along positions, no packing) up to
# this many taps (first layer: 60 vs 96 us), the GEMM above it (75 taps: even or better).
cdef Py_ssize_t _CONV_DW_DOT_MAX_TAPS = 16


def _set_conv_dw_dot_max_taps(Py_ssize_t k):
    """Tuning hook: weight gradients with at most k taps use row dot products."""
    global _CONV_DW_DOT_MAX_TAPS
    _CONV_DW_DOT_MAX_TAPS = k
# Convolution GEMMs below this many multiply-adds stay on one thread: at the small-CNN
# sizes (~1.5M) a two-thread team lost badly on two shared cores (the main thread
# spent 4x its kernel time waiting in libgomp; the CNN step went 1.4k -> 40 steps/s
# when another OpenMP pool was busy).
cdef Py_ssize_t _CONV_PAR_MIN_WORK = 1 << 24


def _set_conv_par_min_work(Py_ssize_t w):
    """Tuning hook: convolution GEMMs with fewer multiply-adds run on one thread."""
    global _CONV_PAR_MIN_WORK
    _CONV_PAR_MIN_WORK = w


def _set_conv_gemm_min_taps(Py_ssize_t k):
    """Tuning hook: forward convolutions with at least k taps use im2col + GEMM."""
    global _CONV_GEMM_MIN_TAPS
    _CONV_GEMM_MIN_TAPS = k


cdef inline Py_ssize_t _conv_out(Py_ssize_t size, Py_ssize_t k, Py_ssize_t s, Py_ssize_t p) noexcept nogil:
    return (size + 2 * p - k) // s + 1


cdef inline cnp.ndarray _empty4(Py_ssize_t a, Py_ssize_t b, Py_ssize_t c, Py_ssize_t d, int typenum):
    cdef cnp.npy_intp dims[4]
    dims[0] = a
    dims[1] = b
    dims[2] = c
    dims[3] = d
    return cnp.PyArray_EMPTY(4, dims, typenum, 0)


cdef inline cnp.ndarray _zeros4(Py_ssize_t a, Py_ssize_t b, Py_ssize_t c, Py_ssize_t d, int typenum):
    cdef cnp.npy_intp dims[4]
    dims[0] = a
    dims[1] = b
    dims[2] = c
    dims[3] = d
    return cnp.PyArray_ZEROS(4, dims, typenum, 0)


cdef void _conv_direct_fwd(const floating *x, const floating *w, const floating *b, floating *y,
                           floating *colt, Py_ssize_t n, Py_ssize_t c, Py_ssize_t hgt,
                           Py_ssize_t wid, Py_ssize_t c_out, Py_ssize_t kh, Py_ssize_t kw,
                           Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                           Py_ssize_t ho, Py_ssize_t wo) noexcept nogil:
    """y per sample: the taps as colt (K, Ho*Wo) rows, then y[co, :] = b[co] +
    sum_k w[co, k] colt[k, :] (innermost loop along positions)."""
    cdef Py_ssize_t a, ci, i, j, oh, ow, ih, iw, k, co, p
    cdef Py_ssize_t kk = c * kh * kw, npos = ho * wo
    cdef floating *trow
    cdef floating *yrow
    cdef const floating *xr
    cdef floating wv, bv
    for a in range(n):
        for ci in range(c):
            for i in range(kh):
                for j in range(kw):
                    trow = colt + ((ci * kh + i) * kw + j) * npos
                    for oh in range(ho):
                        ih = oh * sh + i - ph
                        if ih < 0 or ih >= hgt:
                            for ow in range(wo):
                                trow[oh * wo + ow] = 0
                            continue
                        xr = x + ((a * c + ci) * hgt + ih) * wid
                        for ow in range(wo):
                            iw = ow * sw + j - pw
                            trow[oh * wo + ow] = xr[iw] if (iw >= 0 and iw < wid) else 0
        for co in range(c_out):
            yrow = y + (a * c_out + co) * npos
            bv = b[co] if b != NULL else 0
            for p in range(npos):
                yrow[p] = bv
            for k in range(kk):
                wv = w[co * kk + k]
                trow = colt + k * npos
                for p in range(npos):
                    yrow[p] += wv * trow[p]


cdef void _im2col_t(const floating *x, floating *colt, Py_ssize_t n, Py_ssize_t c,
                    Py_ssize_t hgt, Py_ssize_t wid, Py_ssize_t kh, Py_ssize_t kw,
                    Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                    Py_ssize_t ho, Py_ssize_t wo) noexcept nogil:
    """colt (C*kh*kw, N*Ho*Wo): one row per tap, columns ordered (n, oh, ow), zeros
    where padded. This is the GEMM's B read in place (no packing, no transposes)."""
    cdef Py_ssize_t rows = n * ho * wo
    cdef Py_ssize_t a, oh, ow, ci, i, j, ih, off, lo, hi
    cdef floating *dst
    cdef const floating *xr
    for ci in range(c):
        for i in range(kh):
            for j in range(kw):
                off = j - pw
                # ow in [lo, hi) reads inside the row: 0 <= ow*sw + off < wid
                lo = 0 if off >= 0 else (-off + sw - 1) // sw
                hi = (wid - 1 - off) // sw + 1 if wid - 1 - off >= 0 else 0
                if hi > wo:
                    hi = wo
                if lo > hi:
                    lo = hi
                for a in range(n):
                    for oh in range(ho):
                        dst = colt + ((ci * kh + i) * kw + j) * rows + (a * ho + oh) * wo
                        ih = oh * sh + i - ph
                        if ih < 0 or ih >= hgt:
                            for ow in range(wo):
                                dst[ow] = 0
                            continue
                        xr = x + ((a * c + ci) * hgt + ih) * wid + off
                        for ow in range(lo):
                            dst[ow] = 0
                        for ow in range(lo, hi):
                            dst[ow] = xr[ow * sw]
                        for ow in range(hi, wo):
                            dst[ow] = 0


cdef void _col2im_t(const floating *dcolt, floating *dx, Py_ssize_t n, Py_ssize_t c,
                    Py_ssize_t hgt, Py_ssize_t wid, Py_ssize_t kh, Py_ssize_t kw,
                    Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                    Py_ssize_t ho, Py_ssize_t wo) noexcept nogil:
    """The adjoint of _im2col_t: dx (zeroed here) += the tap rows scattered back."""
    cdef Py_ssize_t rows = n * ho * wo
    cdef Py_ssize_t a, oh, ow, ci, i, j, ih, off, lo, hi, q
    cdef const floating *src
    cdef floating *xr
    for q in range(n * c * hgt * wid):
        dx[q] = 0
    for a in range(n):
        for ci in range(c):
            for i in range(kh):
                for j in range(kw):
                    off = j - pw
                    lo = 0 if off >= 0 else (-off + sw - 1) // sw
                    hi = (wid - 1 - off) // sw + 1 if wid - 1 - off >= 0 else 0
                    if hi > wo:
                        hi = wo
                    for oh in range(ho):
                        ih = oh * sh + i - ph
                        if ih < 0 or ih >= hgt:
                            continue
                        src = dcolt + ((ci * kh + i) * kw + j) * rows + (a * ho + oh) * wo
                        xr = dx + ((a * c + ci) * hgt + ih) * wid + off
                        for ow in range(lo, hi):
                            xr[ow * sw] += src[ow]


cdef int _conv_fwd_gemm(const floating *x, const floating *w, const floating *b, floating *y,
                        Py_ssize_t n, Py_ssize_t c, Py_ssize_t hgt, Py_ssize_t wid,
                        Py_ssize_t c_out, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                        Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t ho,
                        Py_ssize_t wo, int nthreads) noexcept nogil:
    """yt (C_out, N*P) = b + W colt (W is the GEMM's A as stored, colt its B read in
    place), then yt's (C_out, P) blocks copied into y (N, C_out, P)."""
    cdef Py_ssize_t kk = c * kh * kw, npos = ho * wo, rows = n * ho * wo, r, co, a, p
    cdef floating *colt = <floating *> fnn_aligned_alloc((rows * kk + rows * c_out) * sizeof(floating))
    if colt == NULL:
        return -1
    cdef floating *yt = colt + rows * kk
    cdef floating bv
    cdef int rc
    _im2col_t(x, colt, n, c, hgt, wid, kh, kw, sh, sw, ph, pw, ho, wo)
    for co in range(c_out):
        bv = b[co] if b != NULL else 0
        for r in range(rows):
            yt[co * rows + r] = bv
    if c_out * rows * kk < _CONV_PAR_MIN_WORK:
        nthreads = 1
    rc = _gemm(w, colt, yt, c_out, rows, kk, False, False, True, nthreads)
    if rc == 0:
        for a in range(n):
            for co in range(c_out):
                for p in range(npos):
                    y[(a * c_out + co) * npos + p] = yt[co * rows + a * npos + p]
    fnn_aligned_free(colt)
    return rc


cdef void _dw_dots(const floating *dyt, const floating *colt, floating *dw, Py_ssize_t c_out,
                   Py_ssize_t kk, Py_ssize_t rows) noexcept nogil:
    """dw[co, k] = dyt[co, :] . colt[k, :], four taps at a time in 16-lane vectors (fnn_vec.h:
    the plain 16-lane loops here were split into scalars by gcc 12)."""
    cdef Py_ssize_t co, k, nb, q
    cdef floating out[4]
    cdef const floating *dr
    cdef const floating *cq[4]
    for co in range(c_out):
        dr = dyt + co * rows
        k = 0
        while k < kk:
            nb = kk - k if kk - k < 4 else 4
            for q in range(4):
                cq[q] = colt + (k + q if q < nb else k) * rows
            if floating is float:
                fnn_vdot4_s(dr, cq[0], cq[1], cq[2], cq[3], rows, out)
            else:
                fnn_vdot4_d(dr, cq[0], cq[1], cq[2], cq[3], rows, out)
            for q in range(nb):
                dw[co * kk + k + q] = out[q]
            k += nb


cdef int _dw_gemm(const floating *dyt, const floating *colt, floating *dw, Py_ssize_t c_out,
                  Py_ssize_t kk, Py_ssize_t rows, int nthreads) noexcept nogil:
    """dw (C_out, K) = dyt colt^T, computed as its transpose colt dyt^T and then
    transposed: the GEMM then packs the transposed operand from dyt (C_out rows)
    instead of colt (K rows); 1.6x faster at the BatchNorm CNN's 32 x 144 x 1600."""
    cdef floating *dwt = <floating *> fnn_aligned_alloc(kk * c_out * sizeof(floating))
    cdef Py_ssize_t co, k
    cdef int rc
    if dwt == NULL:
        return -1
    rc = _gemm(colt, dyt, dwt, kk, c_out, rows, False, True, False, nthreads)
    if rc == 0:
        for co in range(c_out):
            for k in range(kk):
                dw[co * kk + k] = dwt[k * c_out + co]
    fnn_aligned_free(dwt)
    return rc


cdef void _row_sums16(const floating *a, floating *out, Py_ssize_t m, Py_ssize_t cols) noexcept nogil:
    """out[i] = sum of row i of a (m, cols), in 16 lanes (fnn_vec.h; a serial sum was 60 us of
    the first layer's 95)."""
    cdef Py_ssize_t i
    for i in range(m):
        out[i] = _vsum(a + i * cols, cols)


# ------------------------------------------ batch-inner layout (small images)
# For a batch of small images (n >= _CONV_BI_MIN_N and n > wo) the tap rows above are
# made of runs only wo long (4 at 4x4), and the loops over those runs cost more than the
# GEMM. So the columns of colt/yt/dyt go in (oh, ow, n) order instead, with x first
# transposed to xt (C*H*W, N): every im2col/col2im run is then one whole batch (n
# values, contiguous on both sides). The GEMMs are the same calls.
cdef Py_ssize_t _CONV_BI_MIN_N = 8


def _set_conv_bi_min_n(Py_ssize_t n):
    """Tuning hook: batches of at least n samples (and n > Wo) use the batch-inner layout."""
    global _CONV_BI_MIN_N
    _CONV_BI_MIN_N = n


cdef inline bint _conv_use_bi(Py_ssize_t n, Py_ssize_t wo) noexcept nogil:
    return n >= _CONV_BI_MIN_N and n > wo


cdef extern from "fnn_transpose.h" nogil:
    void fnn_transpose_s(const float *src, long rows, long cols, float *dst)
    void fnn_transpose_d(const double *src, long rows, long cols, double *dst)
    void fnn_transpose_bias_s(const float *src, long rows, long cols, float *dst,
                              const float *bias, long group)
    void fnn_transpose_bias_d(const double *src, long rows, long cols, double *dst,
                              const double *bias, long group)


cdef inline void _to_batch_inner(const floating *src, floating *dst, Py_ssize_t n,
                                 Py_ssize_t inner) noexcept nogil:
    """dst (inner, n) = src (n, inner) transposed, in 8x8 register tiles (fnn_transpose.h)."""
    if floating is float:
        fnn_transpose_s(src, n, inner, dst)
    else:
        fnn_transpose_d(src, n, inner, dst)


cdef inline void _from_batch_inner(const floating *src, floating *dst, Py_ssize_t n,
                                   Py_ssize_t inner) noexcept nogil:
    """dst (n, inner) = src (inner, n) transposed."""
    if floating is float:
        fnn_transpose_s(src, inner, n, dst)
    else:
        fnn_transpose_d(src, inner, n, dst)


cdef void _im2col_bi(const floating *xt, floating *colt, Py_ssize_t n, Py_ssize_t c,
                     Py_ssize_t hgt, Py_ssize_t wid, Py_ssize_t kh, Py_ssize_t kw,
                     Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                     Py_ssize_t ho, Py_ssize_t wo) noexcept nogil:
    """colt (C*kh*kw, Ho*Wo*N) from xt (C*H*W, N): run (tap, oh, ow) is xt's row
    (ci, ih, iw), or zeros where padded."""
    cdef Py_ssize_t rows = n * ho * wo
    cdef Py_ssize_t ci, i, j, oh, ow, ih, iw, a
    cdef floating *dst
    cdef const floating *src
    for ci in range(c):
        for i in range(kh):
            for j in range(kw):
                for oh in range(ho):
                    ih = oh * sh + i - ph
                    for ow in range(wo):
                        iw = ow * sw + j - pw
                        dst = colt + ((ci * kh + i) * kw + j) * rows + (oh * wo + ow) * n
                        if ih < 0 or ih >= hgt or iw < 0 or iw >= wid:
                            for a in range(n):
                                dst[a] = 0
                        else:
                            src = xt + ((ci * hgt + ih) * wid + iw) * n
                            for a in range(n):
                                dst[a] = src[a]


cdef void _col2im_bi(const floating *dcolt, floating *dxt, Py_ssize_t n, Py_ssize_t c,
                     Py_ssize_t hgt, Py_ssize_t wid, Py_ssize_t kh, Py_ssize_t kw,
                     Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                     Py_ssize_t ho, Py_ssize_t wo) noexcept nogil:
    """The adjoint of _im2col_bi: dxt (C*H*W, N), zeroed here, += the runs."""
    cdef Py_ssize_t rows = n * ho * wo
    cdef Py_ssize_t ci, i, j, oh, ow, ih, iw, a, q
    cdef floating *dst
    cdef const floating *src
    for q in range(c * hgt * wid * n):
        dxt[q] = 0
    for ci in range(c):
        for i in range(kh):
            for j in range(kw):
                for oh in range(ho):
                    ih = oh * sh + i - ph
                    if ih < 0 or ih >= hgt:
                        continue
                    for ow in range(wo):
                        iw = ow * sw + j - pw
                        if iw < 0 or iw >= wid:
                            continue
                        src = dcolt + ((ci * kh + i) * kw + j) * rows + (oh * wo + ow) * n
                        dst = dxt + ((ci * hgt + ih) * wid + iw) * n
                        for a in range(n):
                            dst[a] += src[a]


# Threads in the batch-inner layout: a team splits one convolution into pieces of samples, each
# a whole convolution of its sub-batch on one thread, so no core reads what the other has just
# written (splitting each GEMM instead ran slower than one thread: the second core fetched colt,
# just written by the first, out of the first one's cache; split by samples the BatchNorm CNN's
# second layer runs 1.95x one thread's speed, and 0.23M multiply-adds still 1.6x). The forward's
# pieces change no sums: one per thread. The backward's dw and db are sums over the samples, so
# its pieces are set by the sizes alone (_bi_pieces), each sums into a buffer of its own, and
# the buffers are added in piece order: the same bits on any number of threads. Convolutions
# below _CONV_BI_PAR_MIN_WORK multiply-adds run as one piece.
cdef Py_ssize_t _CONV_BI_PAR_MIN_WORK = 1 << 17
cdef Py_ssize_t _CONV_BI_PIECES = 1
cdef Py_ssize_t _CONV_BI_MAX_PIECES = 16


def _set_conv_bi_par(Py_ssize_t min_work, Py_ssize_t pieces_per_thread, Py_ssize_t max_pieces=16):
    """Tuning hook: batch-inner convolutions of at least min_work multiply-adds run in pieces of
    samples: the forward pieces_per_thread per thread, the backward at most max_pieces."""
    global _CONV_BI_PAR_MIN_WORK, _CONV_BI_PIECES, _CONV_BI_MAX_PIECES
    _CONV_BI_PAR_MIN_WORK = min_work
    _CONV_BI_PIECES = pieces_per_thread if pieces_per_thread > 0 else 1
    _CONV_BI_MAX_PIECES = max_pieces if max_pieces > 0 else 1


cdef inline int _bi_team(Py_ssize_t work, Py_ssize_t units, int nthreads,
                         Py_ssize_t *per, Py_ssize_t *npieces) noexcept nogil:
    """The team for a batch-inner forward of work multiply-adds over units samples; per[0]
    samples a piece, npieces[0] pieces."""
    cdef Py_ssize_t want = 1
    if nthreads > 1 and work >= _CONV_BI_PAR_MIN_WORK and units > 1:
        nthreads = _team_size(nthreads)
    else:
        nthreads = 1
    if nthreads > 1:
        want = _imin(units, _CONV_BI_PIECES * nthreads)
    per[0] = (units + want - 1) // want
    npieces[0] = (units + per[0] - 1) // per[0]
    if nthreads > npieces[0]:
        nthreads = <int> npieces[0]
    return nthreads


cdef inline Py_ssize_t _bi_pieces(Py_ssize_t work, Py_ssize_t n) noexcept nogil:
    """The backward's sample pieces, set by the sizes alone, never by the threads (its dw and db
    are sums over the pieces): 2 from _CONV_BI_PAR_MIN_WORK multiply-adds on, doubling with
    each doubling of the work from 2^24 (teams of more threads for big layers), at least 8
    samples a piece."""
    cdef Py_ssize_t p = 1
    while 2 * p <= _CONV_BI_MAX_PIECES and n >= 16 * p and (
            (p == 1 and work >= _CONV_BI_PAR_MIN_WORK) or work >= p * (1 << 23)):
        p *= 2
    return p


cdef int _conv_fwd_bi_one(const floating *x, const floating *w, const floating *b, floating *y,
                          Py_ssize_t n, Py_ssize_t c, Py_ssize_t hgt, Py_ssize_t wid,
                          Py_ssize_t c_out, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                          Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t ho,
                          Py_ssize_t wo) noexcept nogil:
    """yt (C_out, Ho*Wo*N) = W colt in the batch-inner layout, then y = yt transposed + b, on
    the calling thread."""
    cdef Py_ssize_t kk = c * kh * kw, rows = n * ho * wo, chw = c * hgt * wid
    cdef floating *xt = <floating *> fnn_aligned_alloc(
        (chw * n + rows * kk + rows * c_out) * sizeof(floating))
    if xt == NULL:
        return -1
    cdef floating *colt = xt + chw * n
    cdef floating *yt = colt + rows * kk
    cdef int rc
    _to_batch_inner(x, xt, n, chw)
    _im2col_bi(xt, colt, n, c, hgt, wid, kh, kw, sh, sw, ph, pw, ho, wo)
    rc = _gemm(w, colt, yt, c_out, rows, kk, False, False, False, 1)
    if rc == 0:   # y = yt transposed, the bias added on the way (yt's row q is channel q / (Ho*Wo))
        if floating is float:
            fnn_transpose_bias_s(yt, c_out * ho * wo, n, y, b, ho * wo)
        else:
            fnn_transpose_bias_d(yt, c_out * ho * wo, n, y, b, ho * wo)
    fnn_aligned_free(xt)
    return rc


cdef int _conv_fwd_bi(const floating *x, const floating *w, const floating *b, floating *y,
                      Py_ssize_t n, Py_ssize_t c, Py_ssize_t hgt, Py_ssize_t wid,
                      Py_ssize_t c_out, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                      Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t ho,
                      Py_ssize_t wo, int nthreads) noexcept nogil:
    """The batch-inner forward, on a team in pieces of samples (above)."""
    cdef Py_ssize_t chw = c * hgt * wid, oshw = c_out * ho * wo
    cdef Py_ssize_t per, npieces, q, a0
    cdef long next_piece = 0
    cdef long claimed[_MAX_TEAM]
    cdef double master_done[1]
    cdef int fails[1]
    cdef int t
    nthreads = _bi_team(c_out * n * ho * wo * c * kh * kw, n, nthreads, &per, &npieces)
    if nthreads <= 1:
        return _conv_fwd_bi_one(x, w, b, y, n, c, hgt, wid, c_out, kh, kw, sh, sw, ph, pw, ho, wo)
    fails[0] = 0
    for t in range(nthreads):
        claimed[t] = 0
    master_done[0] = 0
    with parallel(num_threads=nthreads):
        t = fnn_team_rank()
        while True:
            q = fnn_atomic_next(&next_piece)
            if q >= npieces:
                break
            claimed[t] += 1
            a0 = q * per
            if _conv_fwd_bi_one(x + a0 * chw, w, b, y + a0 * oshw, _imin(per, n - a0), c, hgt,
                                wid, c_out, kh, kw, sh, sw, ph, pw, ho, wo) != 0:
                fails[0] = -1
        if t == 0:
            master_done[0] = fnn_now()
    _team_report(claimed, master_done, nthreads)
    return fails[0]


cdef int _conv_bwd_bi_one(const floating *dy, const floating *x, const floating *w, floating *dx,
                          floating *dw, floating *db, Py_ssize_t n, Py_ssize_t c, Py_ssize_t hgt,
                          Py_ssize_t wid, Py_ssize_t c_out, Py_ssize_t kh, Py_ssize_t kw,
                          Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                          Py_ssize_t ho, Py_ssize_t wo) noexcept nogil:
    """_conv_bwd in the batch-inner layout on the calling thread: dyt = dy transposed,
    dw = dyt colt^T, dxt = col2im(W^T dyt), dx = dxt transposed (dx NULL: skipped)."""
    cdef Py_ssize_t kk = c * kh * kw, rows = n * ho * wo, chw = c * hgt * wid
    cdef Py_ssize_t extra = rows * kk if dx != NULL else 0
    cdef floating *xt = <floating *> fnn_aligned_alloc(
        (chw * n + rows * kk + rows * c_out + extra) * sizeof(floating))
    if xt == NULL:
        return -1
    cdef floating *colt = xt + chw * n
    cdef floating *dyt = colt + rows * kk
    cdef floating *dcolt = dyt + rows * c_out
    cdef int rc = 0
    _to_batch_inner(x, xt, n, chw)
    _im2col_bi(xt, colt, n, c, hgt, wid, kh, kw, sh, sw, ph, pw, ho, wo)
    _to_batch_inner(dy, dyt, n, c_out * ho * wo)
    _row_sums16(dyt, db, c_out, rows)
    if kk <= _CONV_DW_DOT_MAX_TAPS:
        _dw_dots(dyt, colt, dw, c_out, kk, rows)
    else:
        rc = _dw_gemm(dyt, colt, dw, c_out, kk, rows, 1)
    if rc == 0 and dx != NULL:
        rc = _gemm(w, dyt, dcolt, kk, rows, c_out, True, False, False, 1)
        if rc == 0:
            _col2im_bi(dcolt, xt, n, c, hgt, wid, kh, kw, sh, sw, ph, pw, ho, wo)   # xt reused as dxt
            _from_batch_inner(xt, dx, n, chw)
    fnn_aligned_free(xt)
    return rc


cdef inline int _bwd_bi_piece(const floating *dy, const floating *x, const floating *w,
                              floating *dx, floating *part, Py_ssize_t a0, Py_ssize_t na,
                              Py_ssize_t c, Py_ssize_t hgt, Py_ssize_t wid, Py_ssize_t c_out,
                              Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                              Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t ho, Py_ssize_t wo) noexcept nogil:
    """Samples a0 .. a0+na-1: their dx, and their dw and db into part ([C_out x K | C_out])."""
    cdef Py_ssize_t chw = c * hgt * wid
    return _conv_bwd_bi_one(dy + a0 * c_out * ho * wo, x + a0 * chw, w,
                            (dx + a0 * chw) if dx != NULL else NULL, part,
                            part + c_out * c * kh * kw, na, c, hgt, wid, c_out, kh, kw, sh, sw,
                            ph, pw, ho, wo)


cdef int _conv_bwd_bi(const floating *dy, const floating *x, const floating *w, floating *dx,
                      floating *dw, floating *db, Py_ssize_t n, Py_ssize_t c, Py_ssize_t hgt,
                      Py_ssize_t wid, Py_ssize_t c_out, Py_ssize_t kh, Py_ssize_t kw,
                      Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                      Py_ssize_t ho, Py_ssize_t wo, int nthreads) noexcept nogil:
    """The batch-inner backward in pieces of samples (above): each piece's dw and db into a
    buffer of its own, then summed in piece order."""
    cdef Py_ssize_t kk = c * kh * kw
    cdef Py_ssize_t npieces = _bi_pieces(c_out * n * ho * wo * kk, n)
    cdef Py_ssize_t per = (n + npieces - 1) // npieces, q, i, g = c_out * kk + c_out
    cdef long next_piece = 0
    cdef long claimed[_MAX_TEAM]
    cdef double master_done[1]
    cdef int fails[1]
    cdef int t
    if npieces <= 1:
        return _conv_bwd_bi_one(dy, x, w, dx, dw, db, n, c, hgt, wid, c_out, kh, kw, sh, sw,
                                ph, pw, ho, wo)
    cdef floating *part = <floating *> fnn_aligned_alloc(npieces * g * sizeof(floating))
    if part == NULL:
        return -1
    nthreads = _team_size(nthreads) if nthreads > 1 else 1
    if nthreads > npieces:
        nthreads = <int> npieces
    fails[0] = 0
    if nthreads <= 1:
        for q in range(npieces):
            if _bwd_bi_piece(dy, x, w, dx, part + q * g, q * per, _imin(per, n - q * per), c, hgt,
                             wid, c_out, kh, kw, sh, sw, ph, pw, ho, wo) != 0:
                fails[0] = -1
    else:
        for t in range(nthreads):
            claimed[t] = 0
        master_done[0] = 0
        with parallel(num_threads=nthreads):
            t = fnn_team_rank()
            while True:
                q = fnn_atomic_next(&next_piece)
                if q >= npieces:
                    break
                claimed[t] += 1
                if _bwd_bi_piece(dy, x, w, dx, part + q * g, q * per, _imin(per, n - q * per), c,
                                 hgt, wid, c_out, kh, kw, sh, sw, ph, pw, ho, wo) != 0:
                    fails[0] = -1
            if t == 0:
                master_done[0] = fnn_now()
        _team_report(claimed, master_done, nthreads)
    if fails[0] == 0:   # the pieces' sums, in piece order whatever thread ran them
        for i in range(c_out * kk):
            dw[i] = part[i]
        for i in range(c_out):
            db[i] = part[c_out * kk + i]
        for q in range(1, npieces):
            for i in range(c_out * kk):
                dw[i] += part[q * g + i]
            for i in range(c_out):
                db[i] += part[q * g + c_out * kk + i]
    fnn_aligned_free(part)
    return fails[0]


cdef int _conv_bwd(const floating *dy, const floating *x, const floating *w, floating *dx,
                   floating *dw, floating *db, Py_ssize_t n, Py_ssize_t c, Py_ssize_t hgt,
                   Py_ssize_t wid, Py_ssize_t c_out, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                   Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t ho, Py_ssize_t wo,
                   int nthreads) noexcept nogil:
    """dyt (C_out, N*P) (block copies of dy; db its row sums), dw = dyt colt^T,
    dx = col2im(W^T dyt) (dx NULL: skipped)."""
    cdef Py_ssize_t kk = c * kh * kw, npos = ho * wo, rows = n * ho * wo, a, co, p, r
    if _conv_use_bi(n, wo):
        return _conv_bwd_bi(dy, x, w, dx, dw, db, n, c, hgt, wid, c_out, kh, kw, sh, sw,
                            ph, pw, ho, wo, nthreads)
    cdef Py_ssize_t extra = rows * kk if dx != NULL else 0
    cdef floating *colt = <floating *> fnn_aligned_alloc(
        (rows * kk + rows * c_out + extra) * sizeof(floating))
    if colt == NULL:
        return -1
    cdef floating *dyt = colt + rows * kk
    cdef floating *dcolt = dyt + rows * c_out
    cdef int rc
    if c_out * rows * kk < _CONV_PAR_MIN_WORK:
        nthreads = 1
    _im2col_t(x, colt, n, c, hgt, wid, kh, kw, sh, sw, ph, pw, ho, wo)
    for a in range(n):
        for co in range(c_out):
            for p in range(npos):
                dyt[co * rows + a * npos + p] = dy[(a * c_out + co) * npos + p]
    _row_sums16(dyt, db, c_out, rows)
    if kk <= _CONV_DW_DOT_MAX_TAPS:
        _dw_dots(dyt, colt, dw, c_out, kk, rows)
        rc = 0
    else:
        rc = _dw_gemm(dyt, colt, dw, c_out, kk, rows, nthreads)
    if rc == 0 and dx != NULL:
        rc = _gemm(w, dyt, dcolt, kk, rows, c_out, True, False, False, nthreads)
        if rc == 0:
            _col2im_t(dcolt, dx, n, c, hgt, wid, kh, kw, sh, sw, ph, pw, ho, wo)
    fnn_aligned_free(colt)
    return rc


cdef int _conv_fwd(const floating *x, const floating *w, const floating *b, floating *y,
                   Py_ssize_t n, Py_ssize_t c, Py_ssize_t hgt, Py_ssize_t wid,
                   Py_ssize_t c_out, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                   Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t ho,
                   Py_ssize_t wo, int nthreads) noexcept nogil:
    cdef Py_ssize_t kk = c * kh * kw
    cdef floating *colt
    if _conv_use_bi(n, wo):
        return _conv_fwd_bi(x, w, b, y, n, c, hgt, wid, c_out, kh, kw, sh, sw, ph, pw,
                            ho, wo, nthreads)
    if kk >= _CONV_GEMM_MIN_TAPS:
        return _conv_fwd_gemm(x, w, b, y, n, c, hgt, wid, c_out, kh, kw, sh, sw, ph, pw,
                              ho, wo, nthreads)
    colt = <floating *> fnn_aligned_alloc(kk * ho * wo * sizeof(floating))
    if colt == NULL:
        return -1
    _conv_direct_fwd(x, w, b, y, colt, n, c, hgt, wid, c_out, kh, kw, sh, sw, ph, pw, ho, wo)
    fnn_aligned_free(colt)
    return 0


cdef object _conv2d_impl(cnp.ndarray X, cnp.ndarray W, object b, Py_ssize_t sh, Py_ssize_t sw,
                         Py_ssize_t ph, Py_ssize_t pw, bint one_d):
    cdef Py_ssize_t n = X.shape[0], c = X.shape[1]
    cdef Py_ssize_t hgt = 1 if one_d else X.shape[2]
    cdef Py_ssize_t wid = X.shape[2] if one_d else X.shape[3]
    cdef Py_ssize_t c_out = W.shape[0]
    cdef Py_ssize_t kh = 1 if one_d else W.shape[2]
    cdef Py_ssize_t kw = W.shape[2] if one_d else W.shape[3]
    cdef Py_ssize_t ho = _conv_out(hgt, kh, sh, ph), wo = _conv_out(wid, kw, sw, pw)
    cdef int t = cnp.PyArray_TYPE(X), rc
    cdef int nth = _num_threads
    cdef cnp.ndarray Y
    cdef cnp.ndarray Bv
    cdef const void *bp = NULL
    if one_d:
        Y = _empty2(n * c_out, wo, t).reshape(n, c_out, wo)
    else:
        Y = _empty4(n, c_out, ho, wo, t)
    if b is not None:
        Bv = b
        bp = cnp.PyArray_DATA(Bv)
    if t == cnp.NPY_FLOAT32:
        with nogil:
            rc = _conv_fwd(<const float *> cnp.PyArray_DATA(X), <const float *> cnp.PyArray_DATA(W),
                           <const float *> bp, <float *> cnp.PyArray_DATA(Y), n, c, hgt, wid,
                           c_out, kh, kw, sh, sw, ph, pw, ho, wo, nth)
    else:
        with nogil:
            rc = _conv_fwd(<const double *> cnp.PyArray_DATA(X), <const double *> cnp.PyArray_DATA(W),
                           <const double *> bp, <double *> cnp.PyArray_DATA(Y), n, c, hgt, wid,
                           c_out, kh, kw, sh, sw, ph, pw, ho, wo, nth)
    if rc != 0:
        raise MemoryError("conv: cannot allocate work buffers")
    return Y


cdef object _conv2d_backward_impl(cnp.ndarray DY, cnp.ndarray X, cnp.ndarray W, Py_ssize_t sh,
                                  Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, bint need_dx,
                                  bint one_d):
    cdef Py_ssize_t n = X.shape[0], c = X.shape[1]
    cdef Py_ssize_t hgt = 1 if one_d else X.shape[2]
    cdef Py_ssize_t wid = X.shape[2] if one_d else X.shape[3]
    cdef Py_ssize_t c_out = W.shape[0]
    cdef Py_ssize_t kh = 1 if one_d else W.shape[2]
    cdef Py_ssize_t kw = W.shape[2] if one_d else W.shape[3]
    cdef Py_ssize_t ho = _conv_out(hgt, kh, sh, ph), wo = _conv_out(wid, kw, sw, pw)
    cdef int t = cnp.PyArray_TYPE(X), rc
    cdef int nth = _num_threads
    cdef cnp.ndarray DW = _empty_like(W)
    cdef cnp.ndarray DB = _empty1(c_out, t)
    cdef cnp.ndarray DX = None
    cdef void *dxp = NULL
    if need_dx:
        DX = _empty_like(X)
        dxp = cnp.PyArray_DATA(DX)
    if t == cnp.NPY_FLOAT32:
        with nogil:
            rc = _conv_bwd(<const float *> cnp.PyArray_DATA(DY), <const float *> cnp.PyArray_DATA(X),
                           <const float *> cnp.PyArray_DATA(W), <float *> dxp,
                           <float *> cnp.PyArray_DATA(DW), <float *> cnp.PyArray_DATA(DB),
                           n, c, hgt, wid, c_out, kh, kw, sh, sw, ph, pw, ho, wo, nth)
    else:
        with nogil:
            rc = _conv_bwd(<const double *> cnp.PyArray_DATA(DY), <const double *> cnp.PyArray_DATA(X),
                           <const double *> cnp.PyArray_DATA(W), <double *> dxp,
                           <double *> cnp.PyArray_DATA(DW), <double *> cnp.PyArray_DATA(DB),
                           n, c, hgt, wid, c_out, kh, kw, sh, sw, ph, pw, ho, wo, nth)
    if rc != 0:
        raise MemoryError("conv_backward: cannot allocate work buffers")
    return (DX if need_dx else None), DW, DB


def conv2d(x, w, b, stride=(1, 1), padding=(0, 0)):
    """Cross-correlation of x (N, C_in, H, W) with w (C_out, C_in, kh, kw), plus b or
    None: (N, C_out, Ho, Wo) (reference.conv2d)."""
    return _conv2d_impl(x, w, b, stride[0], stride[1], padding[0], padding[1], False)


def conv2d_backward(dy, x, w, stride=(1, 1), padding=(0, 0), need_dx=True):
    """(dx or None, dw, db) from dy (N, C_out, Ho, Wo) (reference.conv2d_backward)."""
    return _conv2d_backward_impl(dy, x, w, stride[0], stride[1], padding[0], padding[1],
                                 need_dx, False)


def conv1d(x, w, b, stride=1, padding=0):
    """x (N, C_in, L) with w (C_out, C_in, k), plus b or None: (N, C_out, L_out) (reference.conv1d)."""
    return _conv2d_impl(x, w, b, 1, stride, 0, padding, True)


def conv1d_backward(dy, x, w, stride=1, padding=0, need_dx=True):
    """(dx or None, dw, db) from dy (N, C_out, L_out) (reference.conv1d_backward)."""
    return _conv2d_backward_impl(dy, x, w, 1, stride, 0, padding, need_dx, True)


# --------------------------------------------------------------- pooling

cdef bint _MAXPOOL_2X2 = True

# 2x2 stride-2 max pools in 16 lanes where the shape allows (fnn_pool.h; AVX-512 builds only:
# returns 0 elsewhere, and _maxpool2x2_k runs)
cdef extern from "fnn_pool.h" nogil:
    int FNN_POOL_VEC2X2
    int fnn_maxpool2x2_s(const float *x, float *y, cnp.int64_t *idx, long planes, long hgt,
                         long wid, long ho, long wo)
    int fnn_maxpool2x2_d(const double *x, double *y, cnp.int64_t *idx, long planes, long hgt,
                         long wid, long ho, long wo)

cdef bint _MAXPOOL_VEC = True


def _set_maxpool_2x2(bint on):
    """Tuning hook: 2x2 stride-2 max pools use the unrolled kernel (else the general one)."""
    global _MAXPOOL_2X2
    _MAXPOOL_2X2 = on


def _set_maxpool_vec(bint on):
    """Tuning hook: 2x2 stride-2 max pools use the 16-lane kernel where it applies (fnn_pool.h)."""
    global _MAXPOOL_VEC
    _MAXPOOL_VEC = on


def _maxpool_vec_built():
    """Whether this module has the 16-lane 2x2 max pool (AVX-512 builds)."""
    return bool(FNN_POOL_VEC2X2)


cdef void _maxpool_k(const floating *x, floating *y, cnp.int64_t *idx, Py_ssize_t planes,
                     Py_ssize_t hgt, Py_ssize_t wid, Py_ssize_t kh, Py_ssize_t kw,
                     Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ho, Py_ssize_t wo) noexcept nogil:
    """Max and the first flat position in H*W of it per window; a NaN wins (as argmax)."""
    cdef Py_ssize_t pl, oh, ow, i, j, r0, c0, where
    cdef const floating *plane
    cdef floating best, v
    cdef bint nan
    for pl in range(planes):
        plane = x + pl * hgt * wid
        for oh in range(ho):
            for ow in range(wo):
                r0 = oh * sh
                c0 = ow * sw
                best = plane[r0 * wid + c0]
                where = r0 * wid + c0
                nan = best != best
                if not nan:
                    for i in range(kh):
                        for j in range(kw):
                            v = plane[(r0 + i) * wid + c0 + j]
                            if v > best or v != v:
                                best = v
                                where = (r0 + i) * wid + c0 + j
                                if v != v:
                                    nan = True
                                    break
                        if nan:
                            break
                y[(pl * ho + oh) * wo + ow] = best
                idx[(pl * ho + oh) * wo + ow] = where


cdef void _maxpool2x2_k(const floating *x, floating *y, cnp.int64_t *idx, Py_ssize_t planes,
                        Py_ssize_t hgt, Py_ssize_t wid, Py_ssize_t ho, Py_ssize_t wo) noexcept nogil:
    """_maxpool_k for 2x2 windows at stride 2 (the usual pool), unrolled and branch-free
    (random data mispredicted the branches, and gcc kept them for `a if t else b`): the
    same rule per value in window order (take it when greater, or a NaN over a number),
    with the position updated by integer arithmetic and the best value reloaded from it."""
    cdef Py_ssize_t pl, oh, ow, base, where, t
    cdef const floating *plane
    cdef floating best, v
    for pl in range(planes):
        plane = x + pl * hgt * wid
        for oh in range(ho):
            base = 2 * oh * wid
            for ow in range(wo):
                where = base + 2 * ow
                best = plane[where]
                v = plane[base + 2 * ow + 1]
                t = (v > best) | ((v != v) & (best == best))
                where = where + t * (base + 2 * ow + 1 - where)
                best = plane[where]
                v = plane[base + wid + 2 * ow]
                t = (v > best) | ((v != v) & (best == best))
                where = where + t * (base + wid + 2 * ow - where)
                best = plane[where]
                v = plane[base + wid + 2 * ow + 1]
                t = (v > best) | ((v != v) & (best == best))
                where = where + t * (base + wid + 2 * ow + 1 - where)
                y[(pl * ho + oh) * wo + ow] = plane[where]
                idx[(pl * ho + oh) * wo + ow] = where

cdef void _maxpool_back_k(const floating *dy, const cnp.int64_t *idx, floating *dx,
                          Py_ssize_t planes, Py_ssize_t plane_in, Py_ssize_t plane_out) noexcept nogil:
    cdef Py_ssize_t pl, p
    for p in range(planes * plane_in):
        dx[p] = 0
    for pl in range(planes):
        for p in range(plane_out):
            dx[pl * plane_in + idx[pl * plane_out + p]] += dy[pl * plane_out + p]


cdef void _avgpool_k(const floating *x, floating *y, Py_ssize_t planes, Py_ssize_t hgt,
                     Py_ssize_t wid, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                     Py_ssize_t ho, Py_ssize_t wo) noexcept nogil:
    cdef Py_ssize_t pl, oh, ow, i, j
    cdef const floating *row
    cdef floating s
    cdef floating count = <floating> (kh * kw)
    for pl in range(planes):
        for oh in range(ho):
            for ow in range(wo):
                s = 0
                for i in range(kh):
                    row = x + (pl * hgt + oh * sh + i) * wid + ow * sw
                    for j in range(kw):
                        s = s + row[j]
                y[(pl * ho + oh) * wo + ow] = s / count


cdef void _avgpool_back_k(const floating *dy, floating *dx, Py_ssize_t planes, Py_ssize_t hgt,
                          Py_ssize_t wid, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                          Py_ssize_t sw, Py_ssize_t ho, Py_ssize_t wo) noexcept nogil:
    cdef Py_ssize_t pl, oh, ow, i, j, p
    cdef floating *row
    cdef floating share
    cdef floating count = <floating> (kh * kw)
    for p in range(planes * hgt * wid):
        dx[p] = 0
    for pl in range(planes):
        for oh in range(ho):
            for ow in range(wo):
                share = dy[(pl * ho + oh) * wo + ow] / count
                for i in range(kh):
                    row = dx + (pl * hgt + oh * sh + i) * wid + ow * sw
                    for j in range(kw):
                        row[j] += share


cdef object _pool_out(cnp.ndarray X, Py_ssize_t ho, Py_ssize_t wo, int typenum, bint one_d):
    if one_d:
        return _empty2(X.shape[0] * X.shape[1], wo, typenum).reshape(X.shape[0], X.shape[1], wo)
    return _empty4(X.shape[0], X.shape[1], ho, wo, typenum)


cdef object _maxpool_impl(cnp.ndarray X, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                          Py_ssize_t sw, bint one_d):
    cdef Py_ssize_t planes = X.shape[0] * X.shape[1]
    cdef Py_ssize_t hgt = 1 if one_d else X.shape[2]
    cdef Py_ssize_t wid = X.shape[2] if one_d else X.shape[3]
    cdef Py_ssize_t ho = (hgt - kh) // sh + 1, wo = (wid - kw) // sw + 1
    cdef cnp.ndarray Y = _pool_out(X, ho, wo, cnp.PyArray_TYPE(X), one_d)
    cdef cnp.ndarray I = _pool_out(X, ho, wo, cnp.NPY_INT64, one_d)
    if kh == 2 and kw == 2 and sh == 2 and sw == 2 and _MAXPOOL_2X2:
        if _is_f32(X):
            with nogil:
                if not (_MAXPOOL_VEC and fnn_maxpool2x2_s(
                        <const float *> cnp.PyArray_DATA(X), <float *> cnp.PyArray_DATA(Y),
                        <cnp.int64_t *> cnp.PyArray_DATA(I), planes, hgt, wid, ho, wo)):
                    _maxpool2x2_k(<const float *> cnp.PyArray_DATA(X), <float *> cnp.PyArray_DATA(Y),
                                  <cnp.int64_t *> cnp.PyArray_DATA(I), planes, hgt, wid, ho, wo)
        else:
            with nogil:
                if not (_MAXPOOL_VEC and fnn_maxpool2x2_d(
                        <const double *> cnp.PyArray_DATA(X), <double *> cnp.PyArray_DATA(Y),
                        <cnp.int64_t *> cnp.PyArray_DATA(I), planes, hgt, wid, ho, wo)):
                    _maxpool2x2_k(<const double *> cnp.PyArray_DATA(X), <double *> cnp.PyArray_DATA(Y),
                                  <cnp.int64_t *> cnp.PyArray_DATA(I), planes, hgt, wid, ho, wo)
        return Y, I
    if _is_f32(X):
        with nogil:
            _maxpool_k(<const float *> cnp.PyArray_DATA(X), <float *> cnp.PyArray_DATA(Y),
                       <cnp.int64_t *> cnp.PyArray_DATA(I), planes, hgt, wid, kh, kw, sh, sw, ho, wo)
    else:
        with nogil:
            _maxpool_k(<const double *> cnp.PyArray_DATA(X), <double *> cnp.PyArray_DATA(Y),
                       <cnp.int64_t *> cnp.PyArray_DATA(I), planes, hgt, wid, kh, kw, sh, sw, ho, wo)
    return Y, I


cdef object _maxpool_back_impl(cnp.ndarray DY, cnp.ndarray X, cnp.ndarray I):
    cdef Py_ssize_t planes = X.shape[0] * X.shape[1]
    cdef Py_ssize_t plane_in = cnp.PyArray_SIZE(X) // planes
    cdef Py_ssize_t plane_out = cnp.PyArray_SIZE(DY) // planes
    cdef cnp.ndarray DX = _empty_like(X)
    if _is_f32(X):
        with nogil:
            _maxpool_back_k(<const float *> cnp.PyArray_DATA(DY), <const cnp.int64_t *> cnp.PyArray_DATA(I),
                            <float *> cnp.PyArray_DATA(DX), planes, plane_in, plane_out)
    else:
        with nogil:
            _maxpool_back_k(<const double *> cnp.PyArray_DATA(DY), <const cnp.int64_t *> cnp.PyArray_DATA(I),
                            <double *> cnp.PyArray_DATA(DX), planes, plane_in, plane_out)
    return DX


cdef object _avgpool_impl(cnp.ndarray X, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                          Py_ssize_t sw, bint one_d):
    cdef Py_ssize_t planes = X.shape[0] * X.shape[1]
    cdef Py_ssize_t hgt = 1 if one_d else X.shape[2]
    cdef Py_ssize_t wid = X.shape[2] if one_d else X.shape[3]
    cdef Py_ssize_t ho = (hgt - kh) // sh + 1, wo = (wid - kw) // sw + 1
    cdef cnp.ndarray Y = _pool_out(X, ho, wo, cnp.PyArray_TYPE(X), one_d)
    if _is_f32(X):
        with nogil:
            _avgpool_k(<const float *> cnp.PyArray_DATA(X), <float *> cnp.PyArray_DATA(Y),
                       planes, hgt, wid, kh, kw, sh, sw, ho, wo)
    else:
        with nogil:
            _avgpool_k(<const double *> cnp.PyArray_DATA(X), <double *> cnp.PyArray_DATA(Y),
                       planes, hgt, wid, kh, kw, sh, sw, ho, wo)
    return Y


cdef object _avgpool_back_impl(cnp.ndarray DY, cnp.ndarray X, Py_ssize_t kh, Py_ssize_t kw,
                               Py_ssize_t sh, Py_ssize_t sw, bint one_d):
    cdef Py_ssize_t planes = X.shape[0] * X.shape[1]
    cdef Py_ssize_t hgt = 1 if one_d else X.shape[2]
    cdef Py_ssize_t wid = X.shape[2] if one_d else X.shape[3]
    cdef Py_ssize_t ho = 1 if one_d else DY.shape[2]
    cdef Py_ssize_t wo = DY.shape[2] if one_d else DY.shape[3]
    cdef cnp.ndarray DX = _empty_like(X)
    if _is_f32(X):
        with nogil:
            _avgpool_back_k(<const float *> cnp.PyArray_DATA(DY), <float *> cnp.PyArray_DATA(DX),
                            planes, hgt, wid, kh, kw, sh, sw, ho, wo)
    else:
        with nogil:
            _avgpool_back_k(<const double *> cnp.PyArray_DATA(DY), <double *> cnp.PyArray_DATA(DX),
                            planes, hgt, wid, kh, kw, sh, sw, ho, wo)
    return DX


def maxpool2d(x, kernel_size, stride):
    """Max over each window of x (N, C, H, W): (y, idx int64 flat in H*W, first on ties) (reference.maxpool2d)."""
    return _maxpool_impl(x, kernel_size[0], kernel_size[1], stride[0], stride[1], False)


def maxpool2d_backward(dy, x, idx, kernel_size, stride):
    """dx: each dy routed to its window's maximum (reference.maxpool2d_backward)."""
    return _maxpool_back_impl(dy, x, idx)


def avgpool2d(x, kernel_size, stride):
    """Mean over each window of x (N, C, H, W) (reference.avgpool2d)."""
    return _avgpool_impl(x, kernel_size[0], kernel_size[1], stride[0], stride[1], False)


def avgpool2d_backward(dy, x, kernel_size, stride):
    """dx: each dy spread evenly over its window (reference.avgpool2d_backward)."""
    return _avgpool_back_impl(dy, x, kernel_size[0], kernel_size[1], stride[0], stride[1], False)


def maxpool1d(x, kernel_size, stride):
    """Max over windows of x (N, C, L): (y, idx flat in L) (reference.maxpool1d)."""
    return _maxpool_impl(x, 1, kernel_size, 1, stride, True)


def maxpool1d_backward(dy, x, idx, kernel_size, stride):
    return _maxpool_back_impl(dy, x, idx)


def avgpool1d(x, kernel_size, stride):
    """Mean over windows of x (N, C, L) (reference.avgpool1d)."""
    return _avgpool_impl(x, 1, kernel_size, 1, stride, True)


def avgpool1d_backward(dy, x, kernel_size, stride):
    return _avgpool_back_impl(dy, x, 1, kernel_size, 1, stride, True)
