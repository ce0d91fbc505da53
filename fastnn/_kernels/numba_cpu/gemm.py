"""GEMM and the dense-layer kernels: matmul, bias_add, bias_grad, linear, linear_backward.

matmul is BLIS/GotoBLAS-style: for each NC-wide panel of op(B) (jc) and each
KC-deep slice of K (pc), the KC x NC panel is packed into NR-wide strips; for
each MC-tall block of op(A) (ic) the MC x KC block is packed into MR-tall
strips; then every MR x NR tile of C (jr, ir) is one call of the register-tile
microkernel of _micro.py. Packing reads op(A) and op(B) through the transpose
flags, so x.T @ g and g @ W.T run without copies. Edge tiles are zero-padded in
the packed buffers and computed into a scratch tile, of which only the valid
part reaches C. Two threads or more split C's rows (or columns, when that
duplicates less packing) between them when the product is big enough.

Tile (MR x NR) and block (KC, MC, NC) sizes are TILES["numba"] of
fastnn/_kernels/tiles.py, the table _micro.py is generated from.
"""
from time import perf_counter as _perf_counter

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from .. import checks as _checks
from .. import tiles as _tiles
from . import _micro, _threads

# Explicit fast-math flags: 'contract' lets LLVM fuse a*b+c into an FMA. The
# 'reassoc' flag of fastmath=True reorders the microkernel's accumulators and
# ruins its vectorization, so it stays off.
FM = {"contract"}

TILES = {np.dtype(d): t for d, t in _tiles.TILES["numba"].items()}
for _dt, _t in TILES.items():
    _tag = {"float32": "f32", "float64": "f64"}[_dt.name]
    if (getattr(_micro, "MR_" + _tag), getattr(_micro, "NR_" + _tag)) != (_t.mr, _t.nr):
        raise ImportError(f"numba_cpu/_micro.py was generated for other {_dt.name} tiles than "
                          "tiles.py holds: run python -m fastnn._kernels.generate")
# Cache blocking, per dtype: (MC, KC, NC) from the table (tests shrink them here).
BLOCKS = {dt: (t.mc, t.kc, t.nc) for dt, t in TILES.items()}
# Below this many multiply-adds (M*N*K) one thread does the whole product.
PARALLEL_MIN_WORK = 1 << 21
# ... and below this many it runs unpacked (_gemm_direct): at 64^3, or into a 10-wide
# output layer, packing op(A) measured as costly as the multiply itself.
DIRECT_MAX_WORK = 1 << 21


def _micro_kernel(kc, ap, ao, bp, bo, c, co, ldc, accumulate):
    """Placeholder resolved at compile time to _micro.micro_f32 / micro_f64."""
    raise NotImplementedError


@overload(_micro_kernel, jit_options={"fastmath": FM})
def _micro_kernel_impl(kc, ap, ao, bp, bo, c, co, ldc, accumulate):
    return _micro.micro_f32 if ap.dtype == types.float32 else _micro.micro_f64


def _micro_strided(kc, ap, ao, ars, aks, bp, bo, bks, c, co, ldc, accumulate):
    """Placeholder resolved at compile time to _micro.micro_f32_strided / micro_f64_strided."""
    raise NotImplementedError


@overload(_micro_strided, jit_options={"fastmath": FM})
def _micro_strided_impl(kc, ap, ao, ars, aks, bp, bo, bks, c, co, ldc, accumulate):
    return _micro.micro_f32_strided if ap.dtype == types.float32 else _micro.micro_f64_strided


def _tile(x):
    """(MR, NR) of the microkernel for x's dtype."""
    raise NotImplementedError


_MR32, _NR32 = _micro.MR_f32, _micro.NR_f32
_MR64, _NR64 = _micro.MR_f64, _micro.NR_f64


@overload(_tile)
def _tile_impl(x):
    if x.dtype == types.float32:
        return lambda x: (_MR32, _NR32)
    return lambda x: (_MR64, _NR64)


@njit(cache=True, fastmath=FM, error_model="numpy")
def _pack_a(a, ta, i0, mc, p0, kc, mr, ap):
    """ap[s*mr*kc + p*mr + i] = op(a)[i0 + s*mr + i, p0 + p]; rows past mc are 0.

    Indices are uint64 (so no negative-index wraparound): that makes the copy
    loops vectorize, about 8x faster than with signed indices.
    """
    u = np.uint64
    kc, mr, p0, z = u(kc), u(mr), u(p0), a.dtype.type(0)
    for strip in range((mc + mr - 1) // mr):
        s = u(strip)
        base = s * mr * kc
        r0 = u(i0) + s * mr
        rows = u(min(mr, mc - strip * mr))
        if ta:       # op(a)[i, p] = a[p, i]: rows of a are contiguous along i
            for p in range(kc):
                src = a[p0 + p]
                o = base + p * mr
                for i in range(rows):
                    ap[o + i] = src[r0 + i]
                for i in range(rows, mr):
                    ap[o + i] = z
        else:
            for i in range(rows):
                src = a[r0 + i]
                for p in range(kc):
                    ap[base + p * mr + i] = src[p0 + p]
            for i in range(rows, mr):
                for p in range(kc):
                    ap[base + p * mr + i] = z


@njit(cache=True, fastmath=FM, error_model="numpy")
def _pack_b(b, tb, p0, kc, j0, nc, nr, bp):
    """bp[s*nr*kc + p*nr + j] = op(b)[p0 + p, j0 + s*nr + j]; columns past nc are 0."""
    u = np.uint64
    kc, nr, p0, z = u(kc), u(nr), u(p0), b.dtype.type(0)
    for strip in range((nc + nr - 1) // nr):
        s = u(strip)
        base = s * nr * kc
        c0 = u(j0) + s * nr
        cols = u(min(nr, nc - strip * nr))
        if tb:       # op(b)[p, j] = b[j, p]: gather nr rows of b, a column at a time
            for p in range(kc):
                o = base + p * nr
                for j in range(cols):
                    bp[o + j] = b[c0 + j, p0 + p]
                for j in range(cols, nr):
                    bp[o + j] = z
        else:
            for p in range(kc):
                src = b[p0 + p]
                o = base + p * nr
                for j in range(cols):
                    bp[o + j] = src[c0 + j]
                for j in range(cols, nr):
                    bp[o + j] = z


@njit(cache=True, fastmath=FM, error_model="numpy", inline="always")   # (a call a tile cost 12%)
def _store_edge(c, tile, nr, row, col, nrow, ncol, acc):
    """An edge tile's valid nrow x ncol corner (of the MR x NR scratch tile) into C at (row, col)."""
    for i in range(nrow):
        for j in range(ncol):
            if acc:
                c[row + i, col + j] += tile[i * nr + j]
            else:
                c[row + i, col + j] = tile[i * nr + j]


@njit(cache=True, fastmath=FM, error_model="numpy")
def _gemm_block(a, b, c, ta, tb, i0, i1, j0, j1, accumulate, mc_max, kc_max, nc_max):
    """c[i0:i1, j0:j1] (+)= op(a)[i0:i1, :] @ op(b)[:, j0:j1], blocked and packed."""
    mr, nr = _tile(a)
    k_total = a.shape[0] if ta else a.shape[1]
    ldc = c.shape[1]
    mc_max = min(mc_max, (i1 - i0 + mr - 1) // mr * mr)
    nc_max = min(nc_max, (j1 - j0 + nr - 1) // nr * nr)
    kc_max = min(kc_max, k_total)
    ap = np.empty(mc_max * kc_max, dtype=a.dtype)
    bp = np.empty(kc_max * nc_max, dtype=a.dtype)
    tile = np.empty(mr * nr, dtype=a.dtype)
    cf = c.reshape(-1)
    uldc = np.uint64(ldc)
    for jc in range(j0, j1, nc_max):
        nc = min(nc_max, j1 - jc)
        for pc in range(0, k_total, kc_max):
            kc = min(kc_max, k_total - pc)
            ukc = np.uint64(kc)
            acc = accumulate or pc > 0
            _pack_b(b, tb, pc, kc, jc, nc, nr, bp)
            for ic in range(i0, i1, mc_max):
                mc = min(mc_max, i1 - ic)
                _pack_a(a, ta, ic, mc, pc, kc, mr, ap)
                for jr in range(0, nc, nr):
                    ncol = min(nr, nc - jr)
                    bo = np.uint64(jr * kc)
                    for ir in range(0, mc, mr):
                        nrow = min(mr, mc - ir)
                        ao = np.uint64(ir * kc)
                        row, col = ic + ir, jc + jr
                        if nrow == mr and ncol == nr:
                            _micro_kernel(ukc, ap, ao, bp, bo, cf,
                                          np.uint64(row * ldc + col), uldc, acc)
                        else:
                            _micro_kernel(ukc, ap, ao, bp, bo, tile, np.uint64(0),
                                          np.uint64(nr), False)
                            _store_edge(c, tile, nr, row, col, nrow, ncol, acc)


@njit(cache=True, fastmath=FM, error_model="numpy")
def _gemm_direct(a, b, c, ta, tb, accumulate, kc_max):
    """c (+)= op(a) @ op(b) on C-contiguous arrays without packing: the strided microkernel
    reads op(a) where it lies, and op(b) too unless b is transposed. Packed only: a ragged
    last strip of rows (copied under zero rows) and transposed or ragged strips of op(b).
    The KC slices and the edge-tile scratch are _gemm_block's: bit-identical results."""
    mr, nr = _tile(a)
    m, n = c.shape
    k_total = a.shape[0] if ta else a.shape[1]
    kc_max = min(kc_max, k_total)
    u = np.uint64
    af, bf, cf = a.reshape(-1), b.reshape(-1), c.reshape(-1)
    ars, aks = (u(1), u(m)) if ta else (u(k_total), u(1))
    full_rows = m // mr * mr
    n_strips = (n + nr - 1) // nr
    bp = np.empty(kc_max * nr * (n_strips if tb else 1), dtype=a.dtype)
    pad = np.zeros(mr * kc_max, dtype=a.dtype)
    tile = np.empty(mr * nr, dtype=a.dtype)
    uldc, unr = u(n), u(nr)
    for pc in range(0, k_total, kc_max):
        kc = min(kc_max, k_total - pc)
        ukc = u(kc)
        acc = accumulate or pc > 0
        if tb:
            _pack_b(b, tb, pc, kc, 0, n, nr, bp)
        if full_rows < m:   # the ragged last rows, as rows of kc values, zeros below
            for i in range(mr):
                for p in range(kc):
                    pad[i * kc + p] = 0
            for i in range(m - full_rows):
                for p in range(kc):
                    pad[i * kc + p] = a[pc + p, full_rows + i] if ta else a[full_rows + i, pc + p]
        for s in range(n_strips):
            jc = s * nr
            ncol = min(nr, n - jc)
            if tb:
                bsrc, bo, bks = bp, u(s * nr * kc), unr
            elif ncol < nr:
                _pack_b(b, tb, pc, kc, jc, ncol, nr, bp)
                bsrc, bo, bks = bp, u(0), unr
            else:
                bsrc, bo, bks = bf, u(pc * n + jc), u(n)
            for ir in range(0, m, mr):
                nrow = min(mr, m - ir)
                if nrow == mr:
                    src, ao, rs, ks = af, u(ir) * ars + u(pc) * aks, ars, aks
                else:
                    src, ao, rs, ks = pad, u(0), ukc, u(1)
                if nrow == mr and ncol == nr:
                    _micro_strided(ukc, src, ao, rs, ks, bsrc, bo, bks, cf, u(ir * n + jc), uldc, acc)
                else:
                    _micro_strided(ukc, src, ao, rs, ks, bsrc, bo, bks, tile, u(0), unr, False)
                    _store_edge(c, tile, nr, ir, jc, nrow, ncol, acc)


@njit(cache=True, parallel=True)
def _gemm_parallel(a, b, c, ta, tb, split_rows, chunks, accumulate, mc_max, kc_max, nc_max):
    """_gemm_block over `chunks` tile-aligned slices of C's rows (or columns)."""
    m, n = c.shape
    mr, nr = _tile(a)
    unit = mr if split_rows else nr
    extent = m if split_rows else n
    units = (extent + unit - 1) // unit
    for t in prange(chunks):
        lo = units * t // chunks * unit
        hi = min(extent, units * (t + 1) // chunks * unit)
        if lo >= hi:
            continue
        if split_rows:
            _gemm_block(a, b, c, ta, tb, lo, hi, 0, n, accumulate, mc_max, kc_max, nc_max)
        else:
            _gemm_block(a, b, c, ta, tb, 0, m, lo, hi, accumulate, mc_max, kc_max, nc_max)


def _split(m, n, k, dtype, threads):
    """(split_rows, chunks): how _gemm_into shares an (m, n, k) product of dtype
    among threads; chunks == 1 runs it on this thread."""
    if threads < 2 or m * n * k < PARALLEL_MIN_WORK:
        return True, 1
    t = TILES[np.dtype(dtype)]
    # Split C along the dimension whose split duplicates less packing:
    # splitting rows makes every thread pack all of op(B) (k*n values).
    split_rows = m >= n or n < 2 * t.nr
    extent, unit = (m, t.mr) if split_rows else (n, t.nr)
    return split_rows, min(threads, (extent + unit - 1) // unit)


def _gemm_serial(a, b, c, trans_a, trans_b, accumulate=False):
    """c (+)= op(a) @ op(b) on this thread: unpacked when small and contiguous."""
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    mc, kc, nc = BLOCKS[a.dtype]
    if (m * n * k < DIRECT_MAX_WORK and a.flags.c_contiguous and b.flags.c_contiguous
            and c.flags.c_contiguous):
        _gemm_direct(a, b, c, trans_a, trans_b, accumulate, kc)
    else:
        _gemm_block(a, b, c, trans_a, trans_b, 0, m, 0, n, accumulate, mc, kc, nc)
    return c


def _gemm_into(a, b, c, trans_a, trans_b, accumulate=False):
    """c (+)= op(a) @ op(b), on as many threads as the size deserves."""
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    if m * n * k < PARALLEL_MIN_WORK:   # before asking Numba for its threads (0.7 us)
        return _gemm_serial(a, b, c, trans_a, trans_b, accumulate)
    mc, kc, nc = BLOCKS[a.dtype]
    split_rows, chunks = _split(m, n, k, a.dtype, _threads.usable())
    if chunks > 1:
        t0 = _perf_counter()
        _gemm_parallel(a, b, c, trans_a, trans_b, split_rows, chunks, accumulate, mc, kc, nc)
        _threads.report(m * n * k, _perf_counter() - t0, a.itemsize)   # the straggler guard
    else:
        _gemm_serial(a, b, c, trans_a, trans_b, accumulate)
    return c


def matmul(a, b, trans_a=False, trans_b=False):
    """op(a) @ op(b), where op transposes when the flag is set."""
    m = a.shape[1] if trans_a else a.shape[0]
    n = b.shape[0] if trans_b else b.shape[1]
    return _gemm_into(a, b, np.empty((m, n), dtype=a.dtype), trans_a, trans_b)


def _checked_matmul(a, b, trans_a=False, trans_b=False):
    """backend.matmul: checks.matmul, then matmul. Its usual case (two C-contiguous non-empty
    2-D arrays of one float dtype whose shapes fit) is checked inline, and a product too small
    for threads goes straight to _gemm_direct: four Python calls fewer (about 1 us, a sixth of
    a 64^3 product here)."""
    if (type(a) is np.ndarray and type(b) is np.ndarray and a.ndim == 2 and b.ndim == 2
            and a.dtype == b.dtype and a.dtype in _checks._GEMM_FLOATS and a.size and b.size
            and a.flags.c_contiguous and b.flags.c_contiguous):
        ta, tb = bool(trans_a), bool(trans_b)
        k, m = a.shape if ta else a.shape[::-1]
        n, kb = b.shape if tb else b.shape[::-1]
        if k == kb:
            c = np.empty((m, n), dtype=a.dtype)
            work = m * n * k
            if work < PARALLEL_MIN_WORK and work < DIRECT_MAX_WORK:
                _gemm_direct(a, b, c, ta, tb, False, BLOCKS[a.dtype][1])
                return c
            return _gemm_into(a, b, c, ta, tb)
    args, kwargs = _checks.matmul(a, b, trans_a, trans_b)
    return matmul(*args, **kwargs)


@njit(cache=True, fastmath=FM, error_model="numpy")
def _bias_add(x, b):
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = x[i, j] + b[j]
    return out


@njit(cache=True, fastmath=FM, error_model="numpy")
def _fill_rows(c, b):
    for i in range(c.shape[0]):
        c[i, :] = b


@njit(cache=True, fastmath=FM, error_model="numpy")
def _column_sums(dy):
    out = np.zeros(dy.shape[1], dtype=dy.dtype)
    for i in range(dy.shape[0]):
        for j in range(dy.shape[1]):
            out[j] += dy[i, j]
    return out


def bias_add(x, b):
    """x (N, F) + b (F,) broadcast over rows."""
    return _bias_add(x, b)


def bias_grad(dy):
    """Gradient of bias_add for b: the column sums of dy (N, F)."""
    return _column_sums(dy)


def linear(x, w, b):
    """Dense forward: x (N, in) @ w.T, w (out, in), plus b (out,) or None.

    The bias is written into the output first and the GEMM accumulates onto it.
    """
    c = np.empty((x.shape[0], w.shape[0]), dtype=x.dtype)
    if b is None:
        return _gemm_into(x, w, c, False, True)
    _fill_rows(c, b)
    return _gemm_into(x, w, c, False, True, accumulate=True)


def linear_backward(dy, x, w, need_dx=True):
    """Dense backward from dy (N, out) and the saved x: (dx or None, dw, db)."""
    dw = matmul(dy, x, trans_a=True)
    db = _column_sums(dy)
    dx = matmul(dy, w) if need_dx else None
    return dx, dw, db
