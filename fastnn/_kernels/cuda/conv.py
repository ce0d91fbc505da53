"""numba.cuda convolution and pooling: conv1d/2d (im2col kernel + the tiled GEMM), max/avg pool 1d/2d and backwards (reference.py's "convolution and pooling").

conv2d: an im2col kernel writes cols (N*Ho*Wo, C_in*kh*kw) (rows (n, i, j),
columns (c, ki, kj), zeros for the padding), gemm._gemm multiplies it by the
weight (C_out, C_in*kh*kw) transposed with the bias fused, and a permute kernel
turns (N*Ho*Wo, C_out) into (N, C_out, Ho, Wo). conv2d_backward permutes dy the
other way and runs three GEMMs (dw = dy2.T @ cols, dcols = dy2 @ w) plus the
column sums for db; col2im is a gather (one thread per dx element sums the
cols entries that read it, kernel offsets in the reference's order), so no
atomics and the sums are deterministic. The 1-D kernels are the 2-D ones on a
height-1 image, as in the reference (reshapes only, no copies).

Pooling gives one thread each output (forward) or input (backward) element.
maxpool keeps the first maximum of a window (NaN counts as the maximum, as
np.argmax does) and stores its int64 flat position in H*W; its backward
gathers, for each input element, the dy of the windows whose maximum it is,
summed in float64 as the reference's np.bincount does.
"""
import functools

import numpy as np
from numba import cuda

from ._device import Call, as_device, empty, launch
from .gemm import _gemm, bias_grad_device


def _out_size(size, k, stride, padding=0):
    return (size + 2 * padding - k) // stride + 1


@functools.lru_cache(maxsize=None)
def _kernels(dtype):
    t = np.dtype(dtype).type
    zero = t(0)

    @cuda.jit
    def im2col(x, cols, kh, kw, sh, sw, ph, pw, ho, wo):
        n, c, h, w = x.shape
        q_len = c * kh * kw
        total = n * ho * wo * q_len
        start, stride = cuda.grid(1), cuda.gridsize(1)
        for e in range(start, total, stride):
            row = e // q_len
            q = e - row * q_len
            kj = q % kw
            r = q // kw
            ki = r % kh
            ci = r // kh
            j = row % wo
            r = row // wo
            i = r % ho
            b = r // ho
            hi = i * sh - ph + ki
            wi = j * sw - pw + kj
            if hi >= 0 and hi < h and wi >= 0 and wi < w:
                cols[row, q] = x[b, ci, hi, wi]
            else:
                cols[row, q] = zero

    @cuda.jit
    def col2im(dcols, dx, kh, kw, sh, sw, ph, pw, ho, wo):
        n, c, h, w = dx.shape
        total = n * c * h * w
        q_len = c * kh * kw
        start, stride = cuda.grid(1), cuda.gridsize(1)
        for e in range(start, total, stride):
            wi = e % w
            r = e // w
            hi = r % h
            r = r // h
            ci = r % c
            b = r // c
            s = zero
            for ki in range(kh):
                di = hi + ph - ki
                if di < 0 or di % sh != 0:
                    continue
                i = di // sh
                if i >= ho:
                    continue
                for kj in range(kw):
                    dj = wi + pw - kj
                    if dj < 0 or dj % sw != 0:
                        continue
                    j = dj // sw
                    if j >= wo:
                        continue
                    s += dcols[(b * ho + i) * wo + j, (ci * kh + ki) * kw + kj]
            dx[b, ci, hi, wi] = s

    @cuda.jit
    def rows_to_nchw(y2, y):
        """y (N, C, Ho, Wo) from y2 (N*Ho*Wo, C)."""
        n, c, ho, wo = y.shape
        start, stride = cuda.grid(1), cuda.gridsize(1)
        for e in range(start, n * c * ho * wo, stride):
            j = e % wo
            r = e // wo
            i = r % ho
            r = r // ho
            ch = r % c
            b = r // c
            y[b, ch, i, j] = y2[(b * ho + i) * wo + j, ch]

    @cuda.jit
    def nchw_to_rows(y, y2):
        """y2 (N*Ho*Wo, C) from y (N, C, Ho, Wo)."""
        n, c, ho, wo = y.shape
        start, stride = cuda.grid(1), cuda.gridsize(1)
        for e in range(start, n * c * ho * wo, stride):
            ch = e % c
            row = e // c
            j = row % wo
            r = row // wo
            i = r % ho
            b = r // ho
            y2[row, ch] = y[b, ch, i, j]

    @cuda.jit
    def maxpool(x, y, idx, kh, kw, sh, sw):
        n, c, ho, wo = y.shape
        w = x.shape[3]
        start, stride = cuda.grid(1), cuda.gridsize(1)
        for e in range(start, n * c * ho * wo, stride):
            j = e % wo
            r = e // wo
            i = r % ho
            r = r // ho
            ch = r % c
            b = r // c
            r0 = i * sh
            c0 = j * sw
            best = x[b, ch, r0, c0]
            at = r0 * w + c0
            if best == best:               # a NaN already is the maximum
                for ki in range(kh):
                    for kj in range(kw):
                        v = x[b, ch, r0 + ki, c0 + kj]
                        if v > best or v != v:
                            best = v
                            at = (r0 + ki) * w + c0 + kj
                            if v != v:
                                break
                    if best != best:
                        break
            y[b, ch, i, j] = best
            idx[b, ch, i, j] = at

    @cuda.jit
    def maxpool_backward(dy, idx, dx, kh, kw, sh, sw):
        n, c, h, w = dx.shape
        ho, wo = dy.shape[2], dy.shape[3]
        start, stride = cuda.grid(1), cuda.gridsize(1)
        for e in range(start, n * c * h * w, stride):
            wi = e % w
            r = e // w
            hi = r % h
            r = r // h
            ch = r % c
            b = r // c
            flat = hi * w + wi
            i_lo = max(0, (hi - kh + sh) // sh)     # ceil((hi - kh + 1) / sh)
            i_hi = min(ho - 1, hi // sh)
            j_lo = max(0, (wi - kw + sw) // sw)
            j_hi = min(wo - 1, wi // sw)
            s = 0.0                                  # float64, as np.bincount sums
            for i in range(i_lo, i_hi + 1):
                for j in range(j_lo, j_hi + 1):
                    if idx[b, ch, i, j] == flat:
                        s += dy[b, ch, i, j]
            dx[b, ch, hi, wi] = s

    @cuda.jit
    def avgpool(x, y, kh, kw, sh, sw):
        n, c, ho, wo = y.shape
        count = t(kh * kw)
        start, stride = cuda.grid(1), cuda.gridsize(1)
        for e in range(start, n * c * ho * wo, stride):
            j = e % wo
            r = e // wo
            i = r % ho
            r = r // ho
            ch = r % c
            b = r // c
            s = zero
            for ki in range(kh):
                for kj in range(kw):
                    s += x[b, ch, i * sh + ki, j * sw + kj]
            y[b, ch, i, j] = s / count

    @cuda.jit
    def avgpool_backward(dy, dx, kh, kw, sh, sw):
        n, c, h, w = dx.shape
        ho, wo = dy.shape[2], dy.shape[3]
        count = t(kh * kw)
        start, stride = cuda.grid(1), cuda.gridsize(1)
        for e in range(start, n * c * h * w, stride):
            wi = e % w
            r = e // w
            hi = r % h
            r = r // h
            ch = r % c
            b = r // c
            s = zero
            for ki in range(kh):                     # the reference's order of offsets
                di = hi - ki
                if di < 0 or di % sh != 0 or di // sh >= ho:
                    continue
                for kj in range(kw):
                    dj = wi - kj
                    if dj < 0 or dj % sw != 0 or dj // sw >= wo:
                        continue
                    s += dy[b, ch, di // sh, dj // sw] / count
            dx[b, ch, hi, wi] = s

    return dict(im2col=im2col, col2im=col2im, rows_to_nchw=rows_to_nchw,
                nchw_to_rows=nchw_to_rows, maxpool=maxpool, maxpool_backward=maxpool_backward,
                avgpool=avgpool, avgpool_backward=avgpool_backward)


def _run(name, dtype, n, *args):
    if n:
        _kernels(dtype)[name][launch(n)](*(a.arr if hasattr(a, "arr") else a for a in args))


# ------------------------------------------------------------------ conv


def _im2col(x, kh, kw, stride, padding):
    n, c, h, w = x.shape
    ho, wo = _out_size(h, kh, stride[0], padding[0]), _out_size(w, kw, stride[1], padding[1])
    cols = empty((n * ho * wo, c * kh * kw), x.dtype)
    _run("im2col", x.dtype, cols.size, x, cols, kh, kw, *stride, *padding, ho, wo)
    return cols, ho, wo


def _conv2d(x, w, b, stride, padding):
    c_out, _, kh, kw = w.shape
    cols, ho, wo = _im2col(x, kh, kw, stride, padding)
    y2 = _gemm(cols, w.reshape(c_out, -1), False, True, bias=b)       # (N*Ho*Wo, C_out)
    y = empty((x.shape[0], c_out, ho, wo), x.dtype)
    _run("rows_to_nchw", x.dtype, y.size, y2, y)
    return y


def _conv2d_backward(dy, x, w, stride, padding, need_dx):
    c_out, _, kh, kw = w.shape
    cols, ho, wo = _im2col(x, kh, kw, stride, padding)
    dy2 = empty((dy.size // c_out if c_out else 0, c_out), dy.dtype)
    _run("nchw_to_rows", dy.dtype, dy.size, dy, dy2)
    w2 = w.reshape(c_out, -1)
    dw = _gemm(dy2, cols, True, False).reshape(w.shape)
    db = bias_grad_device(dy2)
    dx = None
    if need_dx:
        dcols = _gemm(dy2, w2, False, False)
        dx = empty(x.shape, x.dtype)
        _run("col2im", x.dtype, dx.size, dcols, dx, kh, kw, *stride, *padding, ho, wo)
    return dx, dw, db


def _pair(v):
    return tuple(int(a) for a in v)


def conv2d(x, w, b, stride=(1, 1), padding=(0, 0)):
    """Cross-correlation of x (N, C_in, H, W) with w (C_out, C_in, kh, kw), plus
    b (C_out,) or None: (N, C_out, Ho, Wo), as torch.nn.functional.conv2d."""
    call = Call(x, w, b)
    x, w = as_device(x), as_device(w)
    b = None if b is None else as_device(b)
    return call.out(_conv2d(x, w, b, _pair(stride), _pair(padding)))


def conv2d_backward(dy, x, w, stride=(1, 1), padding=(0, 0), need_dx=True):
    """From dy (N, C_out, Ho, Wo) and the saved x, w: (dx or None, dw, db)."""
    call = Call(dy, x, w)
    dy, x, w = as_device(dy), as_device(x), as_device(w)
    dx, dw, db = _conv2d_backward(dy, x, w, _pair(stride), _pair(padding), need_dx)
    return call.out(dx), call.out(dw), call.out(db)


def _as_2d(a):
    """(N, C, L) -> (N, C, 1, L), a reshape (no copy)."""
    return a.reshape(a.shape[0], a.shape[1], 1, a.shape[2])


def _as_1d(a):
    return None if a is None else a.reshape(a.shape[0], a.shape[1], a.shape[3])


def conv1d(x, w, b, stride=1, padding=0):
    """x (N, C_in, L) with w (C_out, C_in, k), plus b or None: (N, C_out, L_out)."""
    call = Call(x, w, b)
    x, w = as_device(x), as_device(w)
    b = None if b is None else as_device(b)
    y = _conv2d(_as_2d(x), _as_2d(w), b, (1, int(stride)), (0, int(padding)))
    return call.out(_as_1d(y))


def conv1d_backward(dy, x, w, stride=1, padding=0, need_dx=True):
    """From dy (N, C_out, L_out) and the saved x, w: (dx or None, dw, db)."""
    call = Call(dy, x, w)
    dy, x, w = as_device(dy), as_device(x), as_device(w)
    dx, dw, db = _conv2d_backward(_as_2d(dy), _as_2d(x), _as_2d(w), (1, int(stride)),
                                  (0, int(padding)), need_dx)
    return call.out(_as_1d(dx)), call.out(_as_1d(dw)), call.out(db)


# --------------------------------------------------------------- pooling


def _maxpool2d(x, kernel_size, stride):
    (kh, kw), (sh, sw) = kernel_size, stride
    n, c, h, w = x.shape
    shape = (n, c, _out_size(h, kh, sh), _out_size(w, kw, sw))
    y, idx = empty(shape, x.dtype), empty(shape, np.int64)
    _run("maxpool", x.dtype, y.size, x, y, idx, kh, kw, sh, sw)
    return y, idx


def _maxpool2d_backward(dy, x, idx, kernel_size, stride):
    dx = empty(x.shape, dy.dtype)
    _run("maxpool_backward", dy.dtype, dx.size, dy, idx, dx, *kernel_size, *stride)
    return dx


def _avgpool2d(x, kernel_size, stride):
    (kh, kw), (sh, sw) = kernel_size, stride
    n, c, h, w = x.shape
    y = empty((n, c, _out_size(h, kh, sh), _out_size(w, kw, sw)), x.dtype)
    _run("avgpool", x.dtype, y.size, x, y, kh, kw, sh, sw)
    return y


def _avgpool2d_backward(dy, x, kernel_size, stride):
    dx = empty(x.shape, dy.dtype)
    _run("avgpool_backward", dy.dtype, dx.size, dy, dx, *kernel_size, *stride)
    return dx


def maxpool2d(x, kernel_size, stride):
    """Max over each window of x (N, C, H, W): (y (N, C, Ho, Wo), idx int64 flat in H*W)."""
    call = Call(x)
    y, idx = _maxpool2d(as_device(x), _pair(kernel_size), _pair(stride))
    return call.out(y), call.out(idx)


def maxpool2d_backward(dy, x, idx, kernel_size, stride):
    """dx: each dy routed to its window's maximum (summed where windows overlap)."""
    call = Call(dy, x, idx)
    dy, x, idx = as_device(dy), as_device(x), as_device(idx, np.int64)
    return call.out(_maxpool2d_backward(dy, x, idx, _pair(kernel_size), _pair(stride)))


def avgpool2d(x, kernel_size, stride):
    """Mean over each window of x (N, C, H, W): (N, C, Ho, Wo)."""
    call = Call(x)
    return call.out(_avgpool2d(as_device(x), _pair(kernel_size), _pair(stride)))


def avgpool2d_backward(dy, x, kernel_size, stride):
    """dx: each dy spread evenly over its window (x gives only the shape)."""
    call = Call(dy, x)
    dy, x = as_device(dy), as_device(x)
    return call.out(_avgpool2d_backward(dy, x, _pair(kernel_size), _pair(stride)))


def maxpool1d(x, kernel_size, stride):
    """Max over windows of x (N, C, L): (y (N, C, L_out), idx flat in L)."""
    call = Call(x)
    y, idx = _maxpool2d(_as_2d(as_device(x)), (1, int(kernel_size)), (1, int(stride)))
    return call.out(_as_1d(y)), call.out(_as_1d(idx))


def maxpool1d_backward(dy, x, idx, kernel_size, stride):
    call = Call(dy, x, idx)
    dy, x, idx = as_device(dy), as_device(x), as_device(idx, np.int64)
    dx = _maxpool2d_backward(_as_2d(dy), _as_2d(x), _as_2d(idx), (1, int(kernel_size)),
                             (1, int(stride)))
    return call.out(_as_1d(dx))


def avgpool1d(x, kernel_size, stride):
    """Mean over windows of x (N, C, L): (N, C, L_out)."""
    call = Call(x)
    y = _avgpool2d(_as_2d(as_device(x)), (1, int(kernel_size)), (1, int(stride)))
    return call.out(_as_1d(y))


def avgpool1d_backward(dy, x, kernel_size, stride):
    call = Call(dy, x)
    dy, x = as_device(dy), as_device(x)
    dx = _avgpool2d_backward(_as_2d(dy), _as_2d(x), (1, int(kernel_size)), (1, int(stride)))
    return call.out(_as_1d(dx))
