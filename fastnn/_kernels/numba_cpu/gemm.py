"""GEMM and the dense-layer kernels: matmul, bias_add, bias_grad, linear, linear_backward.

matmul is BLIS/GotoBLAS-style: for each NC-wide panel of op(B) (jc) and each
KC-deep slice of K (pc), the KC x NC panel is packed into NR-wide strips; for
each MC-tall block of op(A) (ic) the MC x KC block is packed into MR-tall
strips; then every MR x NR tile of C (jr, ir) is one call of the register-tile
microkernel of _micro.py. Packing reads op(A) and op(B) through the transpose
flags, so x.T @ g and g @ W.T run without copies. Edge tiles are zero-padded in
the packed buffers and computed into a scratch tile, of which only the valid
part reaches C. Two threads or more split C's rows (or columns, when that
duplicates less packing) between them when the product is big enough. Small
products run unpacked (_gemm_direct), their ragged edges by smaller kernels
(sliver, short, narrow, corner); backend.matmul's small calls are one compiled
call (_matmul_small) into a C aligned to a 64-byte line.

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


# The microkernels, compiled once each and cached on disk on their own: the callers below
# (overloads) call them, so compiling a caller for another signature does not compile them
# again (returning the Python function from an overload compiled a kernel into every caller:
# the first small float32 product took 25 s to compile, 8 s before the edge kernels).
_PACKED_KERNELS = {tag: njit(cache=True, fastmath=FM, error_model="numpy")(getattr(_micro, f"micro_{tag}"))
                   for tag in ("f32", "f64")}
# The strided kernels per dtype tag: sliver, corner, short, narrow, full.
_WINDOW_KERNELS = {
    tag: [njit(cache=True, fastmath=FM, error_model="numpy")(
        getattr(_micro, f"micro_{tag}{edge}_strided"))
          for edge in ("_sliver", "_corner", "_short", "_narrow", "")]
    for tag in ("f32", "f64")}


def _tag(dtype):
    return "f32" if dtype == types.float32 else "f64"


def _micro_kernel(kc, ap, ao, bp, bo, c, co, ldc, accumulate):
    """Placeholder resolved at compile time to _micro.micro_f32 / micro_f64."""
    raise NotImplementedError


@overload(_micro_kernel, jit_options={"fastmath": FM})
def _micro_kernel_impl(kc, ap, ao, bp, bo, c, co, ldc, accumulate):
    kernel = _PACKED_KERNELS[_tag(ap.dtype)]

    def impl(kc, ap, ao, bp, bo, c, co, ldc, accumulate):
        kernel(kc, ap, ao, bp, bo, c, co, ldc, accumulate)
    return impl


def _micro_strided(kc, ap, ao, ars, aks, bp, bo, bks, c, co, ldc, accumulate):
    """Placeholder resolved at compile time to _micro.micro_f32_strided / micro_f64_strided
    (a full tile: called straight, not through _micro_window's choice, one call a tile)."""
    raise NotImplementedError


@overload(_micro_strided, jit_options={"fastmath": FM})
def _micro_strided_impl(kc, ap, ao, ars, aks, bp, bo, bks, c, co, ldc, accumulate):
    kernel = _WINDOW_KERNELS[_tag(ap.dtype)][-1]

    def impl(kc, ap, ao, ars, aks, bp, bo, bks, c, co, ldc, accumulate):
        kernel(kc, ap, ao, ars, aks, bp, bo, bks, c, co, ldc, accumulate)
    return impl


def _micro_window(kc, ap, ao, ars, aks, bp, bo, bks, c, co, ldc, accumulate, rows, narrow):
    """Placeholder: the strided kernel of a tile window: its top `rows` rows (MR, MR/2 or
    MR/4), and only its left NR/2 columns when narrow."""
    raise NotImplementedError


@overload(_micro_window, jit_options={"fastmath": FM})
def _micro_window_impl(kc, ap, ao, ars, aks, bp, bo, bks, c, co, ldc, accumulate, rows, narrow):
    tag = _tag(ap.dtype)
    (sliver, corner, short, narrow_k, full), mr = _WINDOW_KERNELS[tag], getattr(_micro, "MR_" + tag)

    def impl(kc, ap, ao, ars, aks, bp, bo, bks, c, co, ldc, accumulate, rows, narrow):
        if 4 * rows <= mr and not narrow:
            sliver(kc, ap, ao, ars, aks, bp, bo, bks, c, co, ldc, accumulate)
        elif 2 * rows <= mr and narrow:
            corner(kc, ap, ao, ars, aks, bp, bo, bks, c, co, ldc, accumulate)
        elif 2 * rows <= mr:
            short(kc, ap, ao, ars, aks, bp, bo, bks, c, co, ldc, accumulate)
        elif narrow:
            narrow_k(kc, ap, ao, ars, aks, bp, bo, bks, c, co, ldc, accumulate)
        else:
            full(kc, ap, ao, ars, aks, bp, bo, bks, c, co, ldc, accumulate)
    return impl


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
def _store_edge(c, tile, nr, row, col, nrow, ncol, acc, t0=0):
    """An edge tile's valid nrow x ncol block (of the MR x NR scratch tile, from its element
    t0 on) into C at (row, col)."""
    for i in range(nrow):
        for j in range(ncol):
            if acc:
                c[row + i, col + j] += tile[t0 + i * nr + j]
            else:
                c[row + i, col + j] = tile[t0 + i * nr + j]


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
    reads op(a) where it lies, and op(b) too unless b is transposed (then it is packed).
    A ragged last strip of rows (or of columns) is computed as a window that ends at C's
    last row (column): MR/2 or MR rows tall (NR/2 or NR wide), overlapping the strip before
    it, so it too is read in place; only the new rows (columns) of it are kept. Only a C
    smaller than the window is copied under zeros. The KC slices and the per-element sums
    are _gemm_block's: bit-identical results."""
    mr, nr = _tile(a)
    m, n = c.shape
    k_total = a.shape[0] if ta else a.shape[1]
    kc_max = min(kc_max, k_total)
    u = np.uint64
    af, bf, cf = a.reshape(-1), b.reshape(-1), c.reshape(-1)
    ars, aks = (u(1), u(m)) if ta else (u(k_total), u(1))
    full_rows, full_cols = m // mr * mr, n // nr * nr
    rag_m, rag_n = m - full_rows, n - full_cols
    narrow = 0 < rag_n <= nr // 2
    # the ragged rows' window: MR/4 (there is no narrow kernel that short), MR/2 or MR tall
    win_m = mr // 4 if rag_m <= mr // 4 and not narrow else (mr // 2 if rag_m <= mr // 2 else mr)
    win_n = nr // 2 if narrow else nr
    pad_rows = rag_m > 0 and m < win_m           # C is shorter than the window: pad it
    pack_cols = rag_n > 0 and (tb or n < win_n)  # ... or narrower (or op(b) is packed)
    n_strips = (n + nr - 1) // nr
    # one allocation for the packed op(b), the padded rows and the edge tile
    nbp = kc_max * nr * (n_strips if tb else (1 if pack_cols else 0))
    npad = mr * kc_max if pad_rows else 0
    work = np.empty(nbp + npad + mr * nr, dtype=a.dtype)
    bp, pad, tile = work[:nbp], work[nbp:nbp + npad], work[nbp + npad:]
    pad[:] = 0
    uldc, unr = u(n), u(nr)
    for pc in range(0, k_total, kc_max):
        kc = min(kc_max, k_total - pc)
        ukc = u(kc)
        acc = accumulate or pc > 0
        if tb:
            _pack_b(b, tb, pc, kc, 0, n, nr, bp)
        if pad_rows:   # the ragged rows as rows of kc values, zeros below
            for i in range(m):
                for p in range(kc):
                    pad[i * kc + p] = a[pc + p, i] if ta else a[i, pc + p]
        for s in range(n_strips):
            jc = s * nr
            ncol = min(nr, n - jc)
            edge_n = ncol < nr
            col0 = jc        # the window's first column in C
            if tb:
                bsrc, bo, bks = bp, u(s * nr * kc), unr
            elif edge_n and pack_cols:
                _pack_b(b, tb, pc, kc, jc, ncol, nr, bp)
                bsrc, bo, bks = bp, u(0), unr
            else:
                if edge_n:
                    col0 = n - win_n
                bsrc, bo, bks = bf, u(pc * n + col0), u(n)
            # full strips of rows: op(a) is read in place (no array is assigned in this
            # loop: each such assignment costs numba a reference-count call, per tile)
            in_c = not edge_n or not (tb or pack_cols)      # the column window lies in C
            nw = edge_n and narrow
            for ir in range(0, full_rows, mr):
                ao = u(ir) * ars + u(pc) * aks
                if not edge_n:
                    _micro_strided(ukc, af, ao, ars, aks, bsrc, bo, bks, cf, u(ir * n + jc), uldc,
                                   acc)
                elif in_c and not acc:
                    # rewriting the window's overlap with the same values is harmless when
                    # nothing is added to C
                    _micro_window(ukc, af, ao, ars, aks, bsrc, bo, bks, cf, u(ir * n + col0), uldc,
                                  False, mr, nw)
                else:
                    _micro_window(ukc, af, ao, ars, aks, bsrc, bo, bks, tile, u(0), unr, False,
                                  mr, nw)
                    _store_edge(c, tile, nr, ir, jc, mr, ncol, acc, jc - col0)
            if rag_m == 0:
                continue
            ir = full_rows   # the ragged rows: a window in place, or the padded copy
            t0 = jc - col0
            if pad_rows:
                _micro_window(ukc, pad, u(0), ukc, u(1), bsrc, bo, bks, tile, u(0), unr, False,
                              win_m, nw)
            else:
                row0 = m - win_m
                ao = u(row0) * ars + u(pc) * aks
                if in_c and not acc:
                    _micro_window(ukc, af, ao, ars, aks, bsrc, bo, bks, cf, u(row0 * n + col0),
                                  uldc, False, win_m, nw)
                    continue
                _micro_window(ukc, af, ao, ars, aks, bsrc, bo, bks, tile, u(0), unr, False,
                              win_m, nw)
                t0 += (ir - row0) * nr
            _store_edge(c, tile, nr, ir, jc, rag_m, ncol, acc, t0)


@njit(cache=True, error_model="numpy")
def _aligned_empty(m, n, like):
    """An uninitialized (m, n) C-contiguous array of like's dtype whose data starts on a
    64-byte line, so a tile row's vector stores do not straddle lines (NumPy's and Numba's
    own allocations are 16- or 32-byte aligned: an unaligned C made 128x10x128 1.4x slower)."""
    pad = 64 // like.itemsize
    buf = np.empty(m * n + pad, like.dtype)
    o = (pad - buf.ctypes.data // like.itemsize % pad) % pad
    return buf[o:o + m * n].reshape((m, n))


def _matmul_usual(a, b, ta, tb, kc_max, max_work):
    """Placeholder for the compiled fast path of _checked_matmul (see _matmul_usual_impl)."""
    raise NotImplementedError


@overload(_matmul_usual, jit_options={"fastmath": FM, "error_model": "numpy"})
def _matmul_usual_impl(a, b, ta, tb, kc_max, max_work):
    """op(a) @ op(b) into a new aligned C by _gemm_direct when the call is the usual one: two
    aligned C-contiguous 2-D arrays of one float dtype, bool flags, fitting non-empty shapes,
    under max_work multiply-adds. Anything else gives None (the caller's general path, which
    checks and threads). The types are tested here, at compile time: numba's dispatcher has
    already read them, so the usual call costs no Python check beyond the dtype."""
    usual = (isinstance(a, types.Array) and isinstance(b, types.Array) and a.ndim == 2
             and b.ndim == 2 and a.layout == "C" and b.layout == "C" and a.aligned and b.aligned
             and a.dtype == b.dtype and a.dtype in (types.float32, types.float64)
             and isinstance(ta, types.Boolean) and isinstance(tb, types.Boolean))
    if not usual:
        return lambda a, b, ta, tb, kc_max, max_work: None

    def impl(a, b, ta, tb, kc_max, max_work):
        k, m = (a.shape[0], a.shape[1]) if ta else (a.shape[1], a.shape[0])
        n, kb = (b.shape[0], b.shape[1]) if tb else (b.shape[1], b.shape[0])
        if k != kb or m == 0 or n == 0 or k == 0 or m * n * k >= max_work:
            return None
        c = _aligned_empty(m, n, a)
        _gemm_direct(a, b, c, ta, tb, False, kc_max)
        return c
    return impl


@njit(cache=True, fastmath=FM, error_model="numpy")
def _matmul_small(a, b, ta, tb, kc_max, parallel_min_work, direct_max_work):
    return _matmul_usual(a, b, ta, tb, kc_max, min(parallel_min_work, direct_max_work))


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
    c = _matmul_small(a, b, trans_a, trans_b, BLOCKS[a.dtype][1], PARALLEL_MIN_WORK, DIRECT_MAX_WORK)
    if c is not None:
        return c
    m = a.shape[1] if trans_a else a.shape[0]
    n = b.shape[0] if trans_b else b.shape[1]
    return _gemm_into(a, b, _aligned_empty(m, n, a), trans_a, trans_b)


_F32, _F64, _ndarray = np.dtype(np.float32), np.dtype(np.float64), np.ndarray


def _checked_matmul(a, b, trans_a=False, trans_b=False):
    """backend.matmul: checks.matmul, then matmul. A product too small for threads, in the
    usual call (see _matmul_usual_impl), is checked and computed by one compiled call; the
    Python here only keeps from numba's dispatcher what it cannot type (a swapped byte order,
    a subclass). Bigger usual products skip checks.matmul's own calls."""
    dt = a.dtype if type(a) is _ndarray and type(b) is _ndarray else None
    if (dt is _F32 or dt is _F64) and b.dtype is dt:
        c = _matmul_small(a, b, trans_a, trans_b, BLOCKS[dt][1], PARALLEL_MIN_WORK, DIRECT_MAX_WORK)
        if c is not None:
            return c
        if a.ndim == 2 and b.ndim == 2 and a.size and b.size and a.flags.c_contiguous \
                and b.flags.c_contiguous:
            ta, tb = bool(trans_a), bool(trans_b)
            k, m = a.shape if ta else a.shape[::-1]
            n, kb = b.shape if tb else b.shape[::-1]
            if k == kb:
                return _gemm_into(a, b, _aligned_empty(m, n, a), ta, tb)
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
    c = _aligned_empty(x.shape[0], w.shape[0], x)
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
