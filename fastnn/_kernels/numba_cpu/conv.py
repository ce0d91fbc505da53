"""Convolution (conv1d/conv2d) and pooling (max/avg, 1-D/2-D) forward and backward; matches the "convolution and pooling" section of fastnn/_kernels/reference.py.

Convolution takes one of two paths, chosen by the kernel's tap count
K = C_in * kh * kw (measured at the target sizes: batch 100, 25 channels,
kernels 5/3/3, stride 2, length 40 -> 18 -> 8 -> 3, float32):

* K >= GEMM_MIN_TAPS (the 25-channel layers, K = 75): im2col into
  (N*Ho*Wo, K) rows, then the packed GEMM of gemm.py (bias preloaded into the
  output, dW = dy^T cols, dcols = dy W, col2im). It won over the direct loops,
  1.3-1.7x forward and 1.4x backward (single thread, medians of interleaved
  runs): the GEMM's register tiles beat the direct loops' per-FMA loads and
  stores (LLVM does not vectorize them: it cannot rule out aliasing), even
  with the im2col and the transposes.
* small K (the first layer, C_in = 1, K = 5): direct loops, one sample at a
  time, vectorised along the output channels: with wt = w reshaped
  (K, C_out), acc[p, :] += x[ci, ih, iw] * wt[k, :] for every tap k and
  output position p (tap-outer / position-inner, so consecutive FMAs update
  different rows), then the (positions, C_out) tile is transposed into y.
  There the GEMM's K is 5: direct was 1.7x faster forward and even
  (within noise) backward.

Conv1d is conv2d on a height-1 image.

The direct path splits samples over threads (prange over contiguous sample
ranges, each with its own dW / db accumulator) when the batch's multiply-adds
reach PARALLEL_MIN_WORK (not at the target sizes: the thread start costs more);
the GEMM path parallelises inside the GEMM by its own rule. Pooling is
memory-bound and stays on one thread.
"""
import numpy as np
from numba import njit, prange

from . import _threads
from .gemm import _gemm_into, _gemm_serial

# 'contract' for FMAs; 'reassoc' only where a reduction needs it (none of the
# loops below reduces across a vector: they all update rows).
FM = {"contract", "nsz", "arcp"}
# Run the direct conv over threads when N * C_out * C_in * kh * kw * Ho * Wo reaches this.
PARALLEL_MIN_WORK = 1 << 21
# Kernels with at least this many taps (C_in * kh * kw) go through im2col + GEMM.
GEMM_MIN_TAPS = 16
# Convolution GEMMs below this many multiply-adds run on this thread: at the small-CNN
# sizes (7M) the two-thread GEMM of gemm.py lost 10-40x on two shared cores (the conv2d of
# the BatchNorm CNN's second layer took 9 ms instead of 0.2 ms), as in the Cython backend.
GEMM_PAR_MIN_WORK = 1 << 24
# Batches of at least this many samples, and more samples than output columns, use
# the batch-inner layout (below).
BI_MIN_N = 8
# 2x2 stride-2 max pools use the unrolled kernel.
MAXPOOL_2X2 = True


# ----------------------------------------------------------- convolution


@njit(cache=True, fastmath=FM, error_model="numpy")
def _conv_fwd_range(x, wt, b, y, sh, sw, ph, pw, kh, kw, n0, n1):
    """y[n0:n1] of the cross-correlation; wt (C_in*kh*kw, C_out), b (C_out,)."""
    _, c_in, hgt, wid = x.shape
    c_out, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    acc = np.empty((ho * wo, c_out), x.dtype)
    for n in range(n0, n1):
        for p in range(ho * wo):
            for co in range(c_out):
                acc[p, co] = b[co]
        for ci in range(c_in):
            for i in range(kh):
                # output rows whose input row oh*sh + i - ph lies inside the image
                oh0 = max(0, (ph - i + sh - 1) // sh)
                oh1 = min(ho, (hgt - 1 + ph - i) // sh + 1)
                for j in range(kw):
                    ow0 = max(0, (pw - j + sw - 1) // sw)
                    ow1 = min(wo, (wid - 1 + pw - j) // sw + 1)
                    k = (ci * kh + i) * kw + j
                    for oh in range(oh0, oh1):
                        ih = oh * sh + i - ph
                        for ow in range(ow0, ow1):
                            xv = x[n, ci, ih, ow * sw + j - pw]
                            p = oh * wo + ow
                            for co in range(c_out):
                                acc[p, co] += xv * wt[k, co]
        for co in range(c_out):
            for oh in range(ho):
                for ow in range(wo):
                    y[n, co, oh, ow] = acc[oh * wo + ow, co]


@njit(cache=True, fastmath=FM, error_model="numpy")
def _conv_bwd_range(dy, x, wt, w2, dx, dwt, db, need_dx, sh, sw, ph, pw, kh, kw, n0, n1):
    """dW (as dwt (K, C_out)), db and dx[n0:n1] from dy[n0:n1]; w2 (C_out, K)."""
    _, c_in, hgt, wid = x.shape
    c_out, ho, wo = dy.shape[1], dy.shape[2], dy.shape[3]
    kk = c_in * kh * kw
    npos = ho * wo
    dyt = np.empty((npos, c_out), x.dtype)
    dcols = np.empty((npos, kk), x.dtype)
    for n in range(n0, n1):
        for co in range(c_out):
            s = dy.dtype.type(0)
            for oh in range(ho):
                for ow in range(wo):
                    v = dy[n, co, oh, ow]
                    dyt[oh * wo + ow, co] = v
                    s += v
            db[co] += s
        # dW: position-outer, tap-inner (each tap's row is a different accumulator)
        for oh in range(ho):
            for ow in range(wo):
                p = oh * wo + ow
                for ci in range(c_in):
                    for i in range(kh):
                        ih = oh * sh + i - ph
                        if ih < 0 or ih >= hgt:
                            continue
                        for j in range(kw):
                            iw = ow * sw + j - pw
                            if iw < 0 or iw >= wid:
                                continue
                            xv = x[n, ci, ih, iw]
                            k = (ci * kh + i) * kw + j
                            for co in range(c_out):
                                dwt[k, co] += xv * dyt[p, co]
        if not need_dx:
            continue
        # dcols[p, :] = sum_co dy[co, p] * w2[co, :]; channel-outer, position-inner
        dcols[:, :] = 0
        for co in range(c_out):
            for p in range(npos):
                v = dyt[p, co]
                for k in range(kk):
                    dcols[p, k] += v * w2[co, k]
        for ci in range(c_in):
            for ih in range(hgt):
                for iw in range(wid):
                    dx[n, ci, ih, iw] = 0
        for oh in range(ho):
            for ow in range(wo):
                p = oh * wo + ow
                for ci in range(c_in):
                    for i in range(kh):
                        ih = oh * sh + i - ph
                        if ih < 0 or ih >= hgt:
                            continue
                        for j in range(kw):
                            iw = ow * sw + j - pw
                            if iw < 0 or iw >= wid:
                                continue
                            dx[n, ci, ih, iw] += dcols[p, (ci * kh + i) * kw + j]


@njit(cache=True, parallel=True)
def _conv_fwd_par(x, wt, b, y, sh, sw, ph, pw, kh, kw, chunks):
    n = x.shape[0]
    for c in prange(chunks):
        _conv_fwd_range(x, wt, b, y, sh, sw, ph, pw, kh, kw, n * c // chunks, n * (c + 1) // chunks)


@njit(cache=True, parallel=True)
def _conv_bwd_par(dy, x, wt, w2, dx, dwt, db, need_dx, sh, sw, ph, pw, kh, kw, chunks):
    n = x.shape[0]
    for c in prange(chunks):
        _conv_bwd_range(dy, x, wt, w2, dx, dwt[c], db[c], need_dx, sh, sw, ph, pw, kh, kw,
                        n * c // chunks, n * (c + 1) // chunks)


# ------------------------------------------- im2col + GEMM (wide kernels)


@njit(cache=True, fastmath=FM, error_model="numpy")
def _im2col(x, kh, kw, sh, sw, ph, pw, ho, wo):
    """cols (N*Ho*Wo, C*kh*kw), rows ordered (n, oh, ow), zeros where padded.
    Written row by row (a tap-outer order that writes down the columns of cols
    measured 2x slower)."""
    n, c, hgt, wid = x.shape
    kk = c * kh * kw
    cols = np.empty((n * ho * wo, kk), x.dtype)
    z = x.dtype.type(0)
    for a in range(n):
        for oh in range(ho):
            for ow in range(wo):
                r = (a * ho + oh) * wo + ow
                for ci in range(c):
                    for i in range(kh):
                        ih = oh * sh + i - ph
                        k0 = (ci * kh + i) * kw
                        if ih < 0 or ih >= hgt:
                            for j in range(kw):
                                cols[r, k0 + j] = z
                            continue
                        for j in range(kw):
                            iw = ow * sw + j - pw
                            cols[r, k0 + j] = x[a, ci, ih, iw] if iw >= 0 and iw < wid else z
    return cols


@njit(cache=True, fastmath=FM, error_model="numpy")
def _col2im(dcols, n, c, hgt, wid, kh, kw, sh, sw, ph, pw, ho, wo):
    """The adjoint of _im2col: scatter-add the rows back into (N, C, H, W)."""
    dx = np.zeros((n, c, hgt, wid), dcols.dtype)
    for a in range(n):
        for oh in range(ho):
            for ow in range(wo):
                r = (a * ho + oh) * wo + ow
                for ci in range(c):
                    for i in range(kh):
                        ih = oh * sh + i - ph
                        if ih < 0 or ih >= hgt:
                            continue
                        for j in range(kw):
                            iw = ow * sw + j - pw
                            if iw >= 0 and iw < wid:
                                dx[a, ci, ih, iw] += dcols[r, (ci * kh + i) * kw + j]
    return dx


@njit(cache=True, fastmath=FM, error_model="numpy")
def _rows_to_nchw(y2, n, ho, wo):
    """(N*Ho*Wo, C) -> (N, C, Ho, Wo)."""
    c = y2.shape[1]
    y = np.empty((n, c, ho, wo), y2.dtype)
    for a in range(n):
        for ch in range(c):
            for oh in range(ho):
                for ow in range(wo):
                    y[a, ch, oh, ow] = y2[(a * ho + oh) * wo + ow, ch]
    return y


@njit(cache=True, fastmath=FM, error_model="numpy")
def _nchw_to_rows(dy, db):
    """(N, C, Ho, Wo) -> (N*Ho*Wo, C), adding each channel's sum into db."""
    n, c, ho, wo = dy.shape
    out = np.empty((n * ho * wo, c), dy.dtype)
    for a in range(n):
        for ch in range(c):
            s = dy.dtype.type(0)
            for oh in range(ho):
                for ow in range(wo):
                    v = dy[a, ch, oh, ow]
                    out[(a * ho + oh) * wo + ow, ch] = v
                    s += v
            db[ch] += s
    return out


def _gemm(a, b, c, trans_a, trans_b, accumulate=False):
    """c (+)= op(a) @ op(b); on this thread below GEMM_PAR_MIN_WORK multiply-adds."""
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    if m * n * k >= GEMM_PAR_MIN_WORK:
        return _gemm_into(a, b, c, trans_a, trans_b, accumulate)
    return _gemm_serial(a, b, c, trans_a, trans_b, accumulate)


# ------------------------------------ batch-inner layout (small images)
# For a batch of small images the (n, oh, ow) rows above hold runs only kw long and
# the loops cost more than the GEMM (the BatchNorm CNN's 4x4 layer: im2col 0.8 ms,
# GEMM 0.2 ms). Here the columns of colt (K, Ho*Wo*N), yt and dyt go in (oh, ow, n)
# order, x transposed first to xt (C, H, W, N): every copy is one whole batch long.


@njit(cache=True, fastmath=FM, error_model="numpy")
def _im2col_bi(x, kh, kw, sh, sw, ph, pw, ho, wo):
    """colt (C*kh*kw, Ho*Wo*N): run (tap, oh, ow) is xt[ci, ih, iw, :] or zeros."""
    n, c, hgt, wid = x.shape
    xt = np.empty((c, hgt, wid, n), x.dtype)
    for a0 in range(0, n, 8):          # 8 samples a pass: the strided side stays in cache
        for ci in range(c):
            for ih in range(hgt):
                for iw in range(wid):
                    for a in range(a0, min(a0 + 8, n)):
                        xt[ci, ih, iw, a] = x[a, ci, ih, iw]
    colt = np.empty((c * kh * kw, ho * wo * n), x.dtype)
    z = x.dtype.type(0)
    for ci in range(c):
        for i in range(kh):
            for j in range(kw):
                k = (ci * kh + i) * kw + j
                for oh in range(ho):
                    ih = oh * sh + i - ph
                    for ow in range(wo):
                        iw = ow * sw + j - pw
                        base = (oh * wo + ow) * n
                        if ih < 0 or ih >= hgt or iw < 0 or iw >= wid:
                            for a in range(n):
                                colt[k, base + a] = z
                        else:
                            for a in range(n):
                                colt[k, base + a] = xt[ci, ih, iw, a]
    return colt


@njit(cache=True, fastmath=FM, error_model="numpy")
def _col2im_bi(dcolt, n, c, hgt, wid, kh, kw, sh, sw, ph, pw, ho, wo):
    """The adjoint of _im2col_bi: (N, C, H, W)."""
    dxt = np.zeros((c, hgt, wid, n), dcolt.dtype)
    for ci in range(c):
        for i in range(kh):
            for j in range(kw):
                k = (ci * kh + i) * kw + j
                for oh in range(ho):
                    ih = oh * sh + i - ph
                    if ih < 0 or ih >= hgt:
                        continue
                    for ow in range(wo):
                        iw = ow * sw + j - pw
                        if iw < 0 or iw >= wid:
                            continue
                        base = (oh * wo + ow) * n
                        for a in range(n):
                            dxt[ci, ih, iw, a] += dcolt[k, base + a]
    dx = np.empty((n, c, hgt, wid), dcolt.dtype)
    for a in range(n):
        for ci in range(c):
            for ih in range(hgt):
                for iw in range(wid):
                    dx[a, ci, ih, iw] = dxt[ci, ih, iw, a]
    return dx


@njit(cache=True, fastmath=FM, error_model="numpy")
def _bias_rows(b, rows):
    out = np.empty((b.shape[0], rows), b.dtype)
    for co in range(b.shape[0]):
        for r in range(rows):
            out[co, r] = b[co]
    return out


@njit(cache=True, fastmath=FM, error_model="numpy")
def _bi_to_nchw(yt, n, ho, wo):
    """yt (C, Ho*Wo*N) -> (N, C, Ho, Wo)."""
    c = yt.shape[0]
    y = np.empty((n, c, ho, wo), yt.dtype)
    for a in range(n):
        for ch in range(c):
            for oh in range(ho):
                for ow in range(wo):
                    y[a, ch, oh, ow] = yt[ch, (oh * wo + ow) * n + a]
    return y


@njit(cache=True, fastmath=FM, error_model="numpy")
def _nchw_to_bi(dy, db):
    """(N, C, Ho, Wo) -> (C, Ho*Wo*N), adding each channel's sum into db."""
    n, c, ho, wo = dy.shape
    out = np.empty((c, ho * wo * n), dy.dtype)
    for ch in range(c):
        for a0 in range(0, n, 8):
            for oh in range(ho):
                for ow in range(wo):
                    for a in range(a0, min(a0 + 8, n)):
                        out[ch, (oh * wo + ow) * n + a] = dy[a, ch, oh, ow]
    _row_sums_into(out, db)
    return out


@njit(cache=True, fastmath={"contract", "reassoc", "nsz", "arcp"}, error_model="numpy")
def _row_sums_into(a, out):
    for i in range(a.shape[0]):
        s = a.dtype.type(0)
        for r in range(a.shape[1]):
            s += a[i, r]
        out[i] += s


@njit(cache=True, fastmath={"contract", "reassoc", "nsz", "arcp"}, error_model="numpy")
def _dw_dots(dyt, colt, dw):
    """dw[co, k] = dyt[co, :] . colt[k, :] (few taps: the GEMM's packing costs more)."""
    for co in range(dyt.shape[0]):
        for k in range(colt.shape[0]):
            s = dyt.dtype.type(0)
            for r in range(dyt.shape[1]):
                s += dyt[co, r] * colt[k, r]
            dw[co, k] = s
    return dw


@njit(cache=True, fastmath=FM, error_model="numpy")
def _rows_axpy(w2, src, dst, trans):
    """dst[i, :] += sum_j w[i, j] src[j, :] (w = w2, or w2^T when trans): few taps."""
    m = dst.shape[0]
    kk = src.shape[0]
    for i in range(m):
        for j in range(kk):
            v = w2[j, i] if trans else w2[i, j]
            for r in range(dst.shape[1]):
                dst[i, r] += v * src[j, r]


def _conv_bi(x, w, b, sh, sw, ph, pw, ho, wo):
    c_out, _, kh, kw = w.shape
    colt = _im2col_bi(x, kh, kw, sh, sw, ph, pw, ho, wo)
    yt = _bias_rows(b, colt.shape[1])
    if colt.shape[0] < GEMM_MIN_TAPS:
        _rows_axpy(w.reshape(c_out, -1), colt, yt, False)
    else:
        _gemm(w.reshape(c_out, -1), colt, yt, False, False, accumulate=True)
    return _bi_to_nchw(yt, x.shape[0], ho, wo)


def _conv_bi_backward(dy, x, w, sh, sw, ph, pw, need_dx):
    c_out, c_in, kh, kw = w.shape
    ho, wo = dy.shape[2], dy.shape[3]
    w2 = w.reshape(c_out, -1)
    colt = _im2col_bi(x, kh, kw, sh, sw, ph, pw, ho, wo)
    db = np.zeros(c_out, x.dtype)
    dyt = _nchw_to_bi(dy, db)
    few = colt.shape[0] < GEMM_MIN_TAPS
    if few:
        dw = _dw_dots(dyt, colt, np.empty(w2.shape, x.dtype)).reshape(w.shape)
    else:
        dw = _gemm(dyt, colt, np.empty(w2.shape, x.dtype), False, True).reshape(w.shape)
    dx = None
    if need_dx:
        if few:
            dcolt = np.zeros(colt.shape, x.dtype)
            _rows_axpy(w2, dyt, dcolt, True)
        else:
            dcolt = _gemm(w2, dyt, np.empty(colt.shape, x.dtype), True, False)
        dx = _col2im_bi(dcolt, x.shape[0], c_in, x.shape[2], x.shape[3], kh, kw, sh, sw, ph, pw, ho, wo)
    return dx, dw, db


def _use_bi(x, wo):
    return x.shape[0] >= BI_MIN_N and x.shape[0] > wo


def _conv_gemm(x, w, b, sh, sw, ph, pw, ho, wo):
    c_out, _, kh, kw = w.shape
    cols = _im2col(x, kh, kw, sh, sw, ph, pw, ho, wo)
    y2 = np.empty((cols.shape[0], c_out), x.dtype)
    y2[:] = b
    _gemm(cols, w.reshape(c_out, -1), y2, False, True, accumulate=True)
    return _rows_to_nchw(y2, x.shape[0], ho, wo)


def _conv_gemm_backward(dy, x, w, sh, sw, ph, pw, need_dx):
    c_out, c_in, kh, kw = w.shape
    ho, wo = dy.shape[2], dy.shape[3]
    w2 = w.reshape(c_out, -1)
    cols = _im2col(x, kh, kw, sh, sw, ph, pw, ho, wo)
    db = np.zeros(c_out, x.dtype)
    dy2 = _nchw_to_rows(dy, db)
    dw = _gemm(dy2, cols, np.empty(w2.shape, x.dtype), True, False).reshape(w.shape)
    dx = None
    if need_dx:
        dcols = _gemm(dy2, w2, np.empty(cols.shape, x.dtype), False, False)
        dx = _col2im(dcols, x.shape[0], c_in, x.shape[2], x.shape[3], kh, kw, sh, sw, ph, pw, ho, wo)
    return dx, dw, db


def _chunks(x, w, out_hw):
    """How many sample ranges to run at once (1: on this thread)."""
    threads = _threads.usable()
    if threads < 2 or x.shape[0] < 2:
        return 1
    work = x.shape[0] * w.size * out_hw[0] * out_hw[1]
    return min(threads, x.shape[0]) if work >= PARALLEL_MIN_WORK else 1


def _out(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def conv2d(x, w, b, stride=(1, 1), padding=(0, 0)):
    """Cross-correlation of x (N, C_in, H, W) with w (C_out, C_in, kh, kw), plus
    b (C_out,) or None: (N, C_out, Ho, Wo), as torch.nn.functional.conv2d."""
    (sh, sw), (ph, pw) = stride, padding
    c_out, c_in, kh, kw = w.shape
    ho, wo = _out(x.shape[2], kh, sh, ph), _out(x.shape[3], kw, sw, pw)
    if b is None:
        b = np.zeros(c_out, x.dtype)
    if _use_bi(x, wo):
        return _conv_bi(x, w, b, sh, sw, ph, pw, ho, wo)
    if c_in * kh * kw >= GEMM_MIN_TAPS:
        return _conv_gemm(x, w, b, sh, sw, ph, pw, ho, wo)
    y = np.empty((x.shape[0], c_out, ho, wo), x.dtype)
    wt = np.ascontiguousarray(w.reshape(c_out, -1).T)
    chunks = _chunks(x, w, (ho, wo))
    if chunks > 1:
        _conv_fwd_par(x, wt, b, y, sh, sw, ph, pw, kh, kw, chunks)
    else:
        _conv_fwd_range(x, wt, b, y, sh, sw, ph, pw, kh, kw, 0, x.shape[0])
    return y


def conv2d_backward(dy, x, w, stride=(1, 1), padding=(0, 0), need_dx=True):
    """From dy (N, C_out, Ho, Wo) and the saved x, w: (dx or None, dw, db)."""
    (sh, sw), (ph, pw) = stride, padding
    c_out, c_in, kh, kw = w.shape
    if _use_bi(x, dy.shape[3]):
        return _conv_bi_backward(dy, x, w, sh, sw, ph, pw, need_dx)
    if c_in * kh * kw >= GEMM_MIN_TAPS:
        return _conv_gemm_backward(dy, x, w, sh, sw, ph, pw, need_dx)
    w2 = w.reshape(c_out, -1)
    wt = np.ascontiguousarray(w2.T)
    dx = np.empty(x.shape, x.dtype) if need_dx else np.empty((1, 1, 1, 1), x.dtype)
    chunks = _chunks(x, w, dy.shape[2:])
    dwt = np.zeros((chunks, c_in * kh * kw, c_out), x.dtype)
    db = np.zeros((chunks, c_out), x.dtype)
    if chunks > 1:
        _conv_bwd_par(dy, x, wt, w2, dx, dwt, db, need_dx, sh, sw, ph, pw, kh, kw, chunks)
        dwt, db = dwt.sum(axis=0), db.sum(axis=0)
    else:
        _conv_bwd_range(dy, x, wt, w2, dx, dwt[0], db[0], need_dx, sh, sw, ph, pw, kh, kw,
                        0, x.shape[0])
        dwt, db = dwt[0], db[0]
    dw = np.ascontiguousarray(dwt.T).reshape(w.shape)
    return (dx if need_dx else None), dw, db


def conv1d(x, w, b, stride=1, padding=0):
    """x (N, C_in, L) with w (C_out, C_in, k), plus b or None: (N, C_out, L_out)."""
    n, c, length = x.shape
    y = conv2d(x.reshape(n, c, 1, length), w.reshape(w.shape[0], w.shape[1], 1, w.shape[2]),
               b, (1, stride), (0, padding))
    return y.reshape(y.shape[0], y.shape[1], y.shape[3])


def conv1d_backward(dy, x, w, stride=1, padding=0, need_dx=True):
    """From dy (N, C_out, L_out) and the saved x, w: (dx or None, dw, db)."""
    dx, dw, db = conv2d_backward(dy.reshape(dy.shape[0], dy.shape[1], 1, dy.shape[2]),
                                 x.reshape(x.shape[0], x.shape[1], 1, x.shape[2]),
                                 w.reshape(w.shape[0], w.shape[1], 1, w.shape[2]),
                                 (1, stride), (0, padding), need_dx)
    return (None if dx is None else dx.reshape(x.shape)), dw.reshape(w.shape), db


# --------------------------------------------------------------- pooling


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _maxpool(x, kh, kw, sh, sw, ho, wo):
    """Max and its first flat position in H*W per window; a NaN wins (as argmax)."""
    n, c, hgt, wid = x.shape
    y = np.empty((n, c, ho, wo), x.dtype)
    idx = np.empty((n, c, ho, wo), np.int64)
    for a in range(n):
        for ch in range(c):
            plane = x[a, ch]
            for oh in range(ho):
                for ow in range(wo):
                    r0, c0 = oh * sh, ow * sw
                    best = plane[r0, c0]
                    where = r0 * wid + c0
                    if best == best:
                        for i in range(kh):
                            row = plane[r0 + i]
                            for j in range(kw):
                                v = row[c0 + j]
                                if v > best or v != v:
                                    best = v
                                    where = (r0 + i) * wid + c0 + j
                                    if v != v:
                                        break
                            if best != best:
                                break
                    y[a, ch, oh, ow] = best
                    idx[a, ch, oh, ow] = where
    return y, idx


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _maxpool2x2(x, ho, wo):
    """_maxpool for 2x2 windows at stride 2, unrolled and branch-free (random data
    mispredicts the branches): the same rule per value in window order (take it when
    greater, or a NaN over a number)."""
    n, c, hgt, wid = x.shape
    y = np.empty((n, c, ho, wo), x.dtype)
    idx = np.empty((n, c, ho, wo), np.int64)
    for a in range(n):
        for ch in range(c):
            for oh in range(ho):
                r = 2 * oh
                base = r * wid
                for ow in range(wo):
                    c0 = 2 * ow
                    best = x[a, ch, r, c0]
                    where = base + c0
                    v = x[a, ch, r, c0 + 1]
                    t = (v > best) | ((v != v) & (best == best))
                    best = v if t else best
                    where = base + c0 + 1 if t else where
                    v = x[a, ch, r + 1, c0]
                    t = (v > best) | ((v != v) & (best == best))
                    best = v if t else best
                    where = base + wid + c0 if t else where
                    v = x[a, ch, r + 1, c0 + 1]
                    t = (v > best) | ((v != v) & (best == best))
                    best = v if t else best
                    where = base + wid + c0 + 1 if t else where
                    y[a, ch, oh, ow] = best
                    idx[a, ch, oh, ow] = where
    return y, idx


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _maxpool_backward(dy, idx, h, w):
    n, c = dy.shape[0], dy.shape[1]
    dx = np.zeros((n, c, h, w), dy.dtype)
    # flat (plane, position) views: per-plane views cost more than the scatter itself
    planes, plane_out = n * c, dy.shape[2] * dy.shape[3]
    d = dx.reshape(planes, h * w)
    g = np.ascontiguousarray(dy).reshape(planes, plane_out)
    k = np.ascontiguousarray(idx).reshape(planes, plane_out)
    for pl in range(planes):
        for p in range(plane_out):
            d[pl, k[pl, p]] += g[pl, p]
    return dx


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _avgpool(x, kh, kw, sh, sw, ho, wo):
    n, c = x.shape[0], x.shape[1]
    y = np.empty((n, c, ho, wo), x.dtype)
    count = x.dtype.type(kh * kw)
    for a in range(n):
        for ch in range(c):
            plane = x[a, ch]
            for oh in range(ho):
                for ow in range(wo):
                    s = x.dtype.type(0)
                    for i in range(kh):
                        row = plane[oh * sh + i]
                        for j in range(kw):
                            s += row[ow * sw + j]
                    y[a, ch, oh, ow] = s / count
    return y


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _avgpool_backward(dy, kh, kw, sh, sw, h, w):
    n, c, ho, wo = dy.shape
    dx = np.zeros((n, c, h, w), dy.dtype)
    count = dy.dtype.type(kh * kw)
    for a in range(n):
        for ch in range(c):
            d = dx[a, ch]
            for oh in range(ho):
                for ow in range(wo):
                    share = dy[a, ch, oh, ow] / count
                    for i in range(kh):
                        row = d[oh * sh + i]
                        for j in range(kw):
                            row[ow * sw + j] += share
    return dx


def maxpool2d(x, kernel_size, stride):
    """Max over each window of x (N, C, H, W): (y, idx), idx the int64 flat
    position in H * W of each maximum (the first on ties)."""
    (kh, kw), (sh, sw) = kernel_size, stride
    if kh == kw == sh == sw == 2 and MAXPOOL_2X2:
        return _maxpool2x2(x, (x.shape[2] - 2) // 2 + 1, (x.shape[3] - 2) // 2 + 1)
    return _maxpool(x, kh, kw, sh, sw, (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1)


def maxpool2d_backward(dy, x, idx, kernel_size, stride):
    """dx: each dy routed to its window's maximum (summed where windows overlap)."""
    return _maxpool_backward(dy, idx, x.shape[2], x.shape[3])


def avgpool2d(x, kernel_size, stride):
    """Mean over each window of x (N, C, H, W): (N, C, Ho, Wo)."""
    (kh, kw), (sh, sw) = kernel_size, stride
    return _avgpool(x, kh, kw, sh, sw, (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1)


def avgpool2d_backward(dy, x, kernel_size, stride):
    """dx: each dy spread evenly over its window (x gives only the shape)."""
    (kh, kw), (sh, sw) = kernel_size, stride
    return _avgpool_backward(dy, kh, kw, sh, sw, x.shape[2], x.shape[3])


def _as2d(a):
    return a.reshape(a.shape[0], a.shape[1], 1, a.shape[2])


def maxpool1d(x, kernel_size, stride):
    """Max over windows of x (N, C, L): (y (N, C, L_out), idx flat in L)."""
    y, idx = maxpool2d(_as2d(x), (1, kernel_size), (1, stride))
    return y.reshape(y.shape[0], y.shape[1], -1), idx.reshape(idx.shape[0], idx.shape[1], -1)


def maxpool1d_backward(dy, x, idx, kernel_size, stride):
    return maxpool2d_backward(_as2d(dy), _as2d(x), _as2d(idx), (1, kernel_size),
                              (1, stride)).reshape(x.shape)


def avgpool1d(x, kernel_size, stride):
    """Mean over windows of x (N, C, L): (N, C, L_out)."""
    y = avgpool2d(_as2d(x), (1, kernel_size), (1, stride))
    return y.reshape(y.shape[0], y.shape[1], -1)


def avgpool1d_backward(dy, x, kernel_size, stride):
    return avgpool2d_backward(_as2d(dy), _as2d(x), (1, kernel_size), (1, stride)).reshape(x.shape)
