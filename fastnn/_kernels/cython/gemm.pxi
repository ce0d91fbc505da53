# Cache-blocked GEMM (BLIS loops jc->pc->ic->jr->ir over packed panels) plus the Dense kernels built on it: reference.matmul, bias_add, bias_grad, linear, linear_backward.

# Block sizes (elements): KC x NC panel of op(B), MC x KC block of op(A); the
# defaults are this ISA's row of fastnn/_kernels/tiles.py (via fnn_tiles.h).
cdef Py_ssize_t _MC_S = FNN_MC_S, _KC_S = FNN_KC_S, _NC_S = FNN_NC_S
cdef Py_ssize_t _MC_D = FNN_MC_D, _KC_D = FNN_KC_D, _NC_D = FNN_NC_D
# Below this many multiply-adds (M*N*K) the GEMM stays on one thread.
cdef Py_ssize_t _PAR_MIN_WORK = 1 << 20
# Strips per thread when they are big enough (see _gemm).
cdef Py_ssize_t _STRIPS = 1
# Split the threads' work along the side that packs the least per thread (see _gemm);
# 0: along the longer side in tiles (the rule before issue 13).
cdef bint _SPLIT_BY_PACKING = 1
# With at most this many micro-tile rows (M <= _DIRECT_B_TILES * MR) a non-transposed
# B is read in place instead of packed: its panel would be reused too few times.
cdef Py_ssize_t _DIRECT_B_TILES = FNN_DIRECT_B_TILES


def _set_blocking(str dtype, Py_ssize_t mc, Py_ssize_t kc, Py_ssize_t nc):
    """Tuning hook: the (MC, KC, NC) block sizes for 'float32' or 'float64'."""
    global _MC_S, _KC_S, _NC_S, _MC_D, _KC_D, _NC_D
    if mc < 1 or kc < 1 or nc < 1:
        raise ValueError("block sizes must be positive")
    if dtype == "float32":
        _MC_S, _KC_S, _NC_S = mc, kc, nc
    else:
        _MC_D, _KC_D, _NC_D = mc, kc, nc


def _get_blocking():
    return {"float32": (_MC_S, _KC_S, _NC_S), "float64": (_MC_D, _KC_D, _NC_D),
            "tile_float32": (FNN_MR_S, FNN_NR_S), "tile_float64": (FNN_MR_D, FNN_NR_D),
            "parallel_min_work": _PAR_MIN_WORK, "direct_b_tiles": _DIRECT_B_TILES,
            "strips_per_thread": _STRIPS, "split_by_packing": _SPLIT_BY_PACKING}


def _set_parallel_min_work(Py_ssize_t w):
    global _PAR_MIN_WORK
    _PAR_MIN_WORK = w


def _set_direct_b_tiles(Py_ssize_t t):
    global _DIRECT_B_TILES
    _DIRECT_B_TILES = t


def _set_split_by_packing(bint on):
    """Tuning hook: threads split C where they pack least (on) or along its longer side in tiles."""
    global _SPLIT_BY_PACKING
    _SPLIT_BY_PACKING = on


def _set_strips_per_thread(Py_ssize_t s):
    global _STRIPS
    _STRIPS = s if s > 0 else 1


cdef inline Py_ssize_t _imin(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a < b else b


from libc.string cimport memcpy, memset


cdef extern from "fnn_transpose.h" nogil:
    # one 8x8 tile: dst[c * ld + r] = src[r * ls + c] (GCC vector shuffles; plain C elsewhere)
    void fnn_tr8_s(const float *src, long ls, float *dst, long ld, const float *rb)
    void fnn_tr8_d(const double *src, long ls, double *dst, long ld, const double *rb)


cdef inline void _tr8(const floating *src, Py_ssize_t ls, floating *dst, Py_ssize_t ld) noexcept nogil:
    if floating is float:
        fnn_tr8_s(src, ls, dst, ld, NULL)
    else:
        fnn_tr8_d(src, ls, dst, ld, NULL)


cdef void _pack_a(const floating *A, Py_ssize_t lda, bint ta, Py_ssize_t ic, Py_ssize_t mc,
                  Py_ssize_t pc, Py_ssize_t kc, floating *Ap,
                  Py_ssize_t q0, Py_ssize_t q1) noexcept nogil:
    """Micro-panels q0..q1 of op(A)[ic:ic+mc, pc:pc+kc], each MR rows interleaved
    along k (Ap[q*MR*kc + p*MR + r]), zero-padded past mc."""
    cdef Py_ssize_t MR
    if floating is float:
        MR = FNN_MR_S
    else:
        MR = FNN_MR_D
    cdef Py_ssize_t q, p, r, i0, mr
    cdef floating *dst
    cdef const floating *src
    for q in range(q0, q1):
        i0 = q * MR
        mr = _imin(MR, mc - i0)
        dst = Ap + q * MR * kc
        if ta:
            # op(A)[i, p] = A[p, i]: MR contiguous values per k
            for p in range(kc):
                src = A + (pc + p) * lda + ic + i0
                if mr == MR:   # (memcpy: the loop compiled to scalar moves, src and dst may alias)
                    memcpy(dst + p * MR, src, MR * sizeof(floating))
                else:
                    for r in range(mr):
                        dst[p * MR + r] = src[r]
                    for r in range(mr, MR):
                        dst[p * MR + r] = 0
        else:
            if mr == MR:
                src = A + (ic + i0) * lda + pc
                p = 0
                if MR == 8:   # 8 rows by 8 k-values at a time, in registers
                    while p + 8 <= kc:
                        _tr8(src + p, lda, dst + p * MR, MR)
                        p += 8
                while p < kc:
                    for r in range(MR):
                        dst[p * MR + r] = src[r * lda + p]
                    p += 1
            else:
                for r in range(mr):
                    src = A + (ic + i0 + r) * lda + pc
                    for p in range(kc):
                        dst[p * MR + r] = src[p]
                for r in range(mr, MR):
                    for p in range(kc):
                        dst[p * MR + r] = 0


cdef void _pack_b(const floating *B, Py_ssize_t ldb, bint tb, Py_ssize_t jc, Py_ssize_t nc,
                  Py_ssize_t pc, Py_ssize_t kc, floating *Bp,
                  Py_ssize_t q0, Py_ssize_t q1) noexcept nogil:
    """Micro-panels q0..q1 of op(B)[pc:pc+kc, jc:jc+nc], each NR columns wide
    (Bp[q*NR*kc + p*NR + j]), zero-padded past nc."""
    cdef Py_ssize_t NR
    if floating is float:
        NR = FNN_NR_S
    else:
        NR = FNN_NR_D
    cdef Py_ssize_t q, p, j, j0, nr, p0, pe, nr8
    cdef floating *dst
    cdef const floating *src
    for q in range(q0, q1):
        j0 = q * NR
        nr = _imin(NR, nc - j0)
        dst = Bp + q * NR * kc
        if not tb:
            # op(B)[p, j] = B[p, j]: rows of B are contiguous in j
            for p in range(kc):
                src = B + (pc + p) * ldb + jc + j0
                if nr == NR:
                    for j in range(NR):
                        dst[p * NR + j] = src[j]
                else:
                    for j in range(nr):
                        dst[p * NR + j] = src[j]
                    for j in range(nr, NR):
                        dst[p * NR + j] = 0
        else:
            # op(B)[p, j] = B[j, p]: transpose in strips of 8 k-values
            src = B + (jc + j0) * ldb + pc
            if nr == NR:
                p0 = 0
                while p0 + 8 <= kc:
                    if NR % 8 == 0:   # 8x8 register tiles
                        for j in range(0, NR, 8):
                            _tr8(src + j * ldb + p0, ldb, dst + p0 * NR + j, NR)
                    else:
                        for j in range(NR):
                            for p in range(8):
                                dst[(p0 + p) * NR + j] = src[j * ldb + p0 + p]
                    p0 += 8
                for p in range(p0, kc):
                    for j in range(NR):
                        dst[p * NR + j] = src[j * ldb + p]
            else:
                # a ragged panel (N not a multiple of NR, e.g. a conv's dW into 25 channels): one
                # memset for the padding (a zero loop a row became a memset call a row: 8 us of 45
                # at 75x800x25), 8x8 tiles over whole groups of 8 rows, the rest one by one
                memset(dst, 0, kc * NR * sizeof(floating))
                nr8 = nr - nr % 8
                p0 = 0
                while p0 + 8 <= kc:
                    for j in range(0, nr8, 8):
                        _tr8(src + j * ldb + p0, ldb, dst + p0 * NR + j, NR)
                    p0 += 8
                for p in range(kc):
                    for j in range(nr8 if p < p0 else 0, nr):
                        dst[p * NR + j] = src[j * ldb + p]


cdef void _gemm_serial(const floating *A, Py_ssize_t lda, const floating *B, Py_ssize_t ldb,
                       floating *C, Py_ssize_t ldc, Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                       bint ta, bint tb, bint acc, floating *Ap, floating *Bp,
                       Py_ssize_t MC, Py_ssize_t KC, Py_ssize_t NC) noexcept nogil:
    """C[:M, :N] (+)= op(A) @ op(B) on one thread: loops jc -> pc -> ic -> jr -> ir,
    the KC x NC panel of op(B) packed into Bp, each MC x KC block of op(A) into Ap,
    and an MR x NR register tile (fnn_ukr_*) per (jr, ir)."""
    cdef Py_ssize_t MR, NR
    if floating is float:
        MR = FNN_MR_S
        NR = FNN_NR_S
    else:
        MR = FNN_MR_D
        NR = FNN_NR_D
    cdef Py_ssize_t jc, pc, ic, nc, kc, mc, n_jr, n_ir, jr, ir, bst
    cdef bint beta
    cdef bint direct_b = (not tb) and M <= _DIRECT_B_TILES * MR
    cdef floating *cblk
    cdef const floating *bptr
    jc = 0
    while jc < N:
        nc = _imin(NC, N - jc)
        n_jr = (nc + NR - 1) // NR
        pc = 0
        while pc < K:
            kc = _imin(KC, K - pc)
            beta = acc or pc > 0
            if not direct_b:
                _pack_b(B, ldb, tb, jc, nc, pc, kc, Bp, 0, n_jr)
            elif nc % NR:
                _pack_b(B, ldb, tb, jc, nc, pc, kc, Bp, n_jr - 1, n_jr)   # the ragged last panel
            ic = 0
            while ic < M:
                mc = _imin(MC, M - ic)
                n_ir = (mc + MR - 1) // MR
                _pack_a(A, lda, ta, ic, mc, pc, kc, Ap, 0, n_ir)
                for jr in range(n_jr):
                    if direct_b and (jr + 1) * NR <= nc:
                        bptr = B + pc * ldb + jc + jr * NR
                        bst = ldb
                    else:
                        bptr = Bp + jr * NR * kc
                        bst = NR
                    for ir in range(n_ir):
                        cblk = C + (ic + ir * MR) * ldc + jc + jr * NR
                        if floating is float:
                            fnn_ukr_s(kc, Ap + ir * MR * kc, bptr, bst, cblk, ldc,
                                      _imin(MR, mc - ir * MR), _imin(NR, nc - jr * NR), beta)
                        else:
                            fnn_ukr_d(kc, Ap + ir * MR * kc, bptr, bst, cblk, ldc,
                                      _imin(MR, mc - ir * MR), _imin(NR, nc - jr * NR), beta)
                ic += MC
            pc += KC
        jc += NC


cdef void _gemm_worker(const floating *A, const floating *B, floating *C,
                       Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, bint ta, bint tb, bint acc,
                       floating *Ap, floating *Bp, Py_ssize_t MC, Py_ssize_t KC, Py_ssize_t NC,
                       bint split_m, Py_ssize_t chunk, Py_ssize_t nchunks,
                       long *next_chunk, long *claimed) noexcept nogil:
    """A thread of the team: takes C chunks (row or column strips) from a shared
    counter until none are left and runs the serial blocked GEMM on each with
    its own packing buffers. No barriers, so a thread the OS delays (two cores
    shared with other processes) only costs the chunks it is holding."""
    cdef Py_ssize_t lda = M if ta else K
    cdef Py_ssize_t ldb = K if tb else N
    cdef Py_ssize_t q, r0, c0, ms, ns
    while True:
        q = fnn_atomic_next(next_chunk)
        if q >= nchunks:
            break
        claimed[0] += 1
        if split_m:
            r0 = q * chunk
            ms = _imin(chunk, M - r0)
            _gemm_serial((A + r0) if ta else (A + r0 * lda), lda, B, ldb, C + r0 * N, N,
                         ms, N, K, ta, tb, acc, Ap, Bp, MC, KC, NC)
        else:
            c0 = q * chunk
            ns = _imin(chunk, N - c0)
            _gemm_serial(A, lda, (B + c0 * ldb) if tb else (B + c0), ldb, C + c0, N,
                         M, ns, K, ta, tb, acc, Ap, Bp, MC, KC, NC)



# ---- narrow shapes (issue 13): a small model's output layer, where packing costs more than it saves.
# C (M x N) (+)= A @ B.T with N <= 16 (linear into a few outputs), for EVERY M (so a row's sum
# never depends on the rows it came with: scikit-learn's subset-invariance checks): B.T packed as
# K x 16 (zero columns past N), 8 rows of C at a time, each row one 16-wide accumulator the
# compiler keeps in vector registers; A read in place. Threads take chunks of rows.
cdef enum:
    _NARROW = 16
    _NARROW_CHUNK = 256   # rows a thread takes at a time

cdef inline void _narrow8(const floating *A, Py_ssize_t lda, const floating *Bt,
                          floating *out, Py_ssize_t K) noexcept nogil:
    """out (8 x 16) = 8 rows of A (lda apart) @ Bt: the one code path every row goes through.
    The sums live in a local array (kept in vector registers), stored once at the end."""
    cdef Py_ssize_t j, k, r
    cdef floating c[8][_NARROW]
    cdef const floating *bk
    for r in range(8):
        for j in range(_NARROW):
            c[r][j] = 0
    for k in range(K):
        bk = Bt + k * _NARROW
        for j in range(_NARROW):
            c[0][j] += A[k] * bk[j]
            c[1][j] += A[lda + k] * bk[j]
            c[2][j] += A[2 * lda + k] * bk[j]
            c[3][j] += A[3 * lda + k] * bk[j]
            c[4][j] += A[4 * lda + k] * bk[j]
            c[5][j] += A[5 * lda + k] * bk[j]
            c[6][j] += A[6 * lda + k] * bk[j]
            c[7][j] += A[7 * lda + k] * bk[j]
    for r in range(8):
        for j in range(_NARROW):
            out[r * _NARROW + j] = c[r][j]


cdef void _narrow_rows(const floating *A, const floating *Bt, floating *C, Py_ssize_t i0,
                       Py_ssize_t i1, Py_ssize_t N, Py_ssize_t K, bint acc,
                       floating *pad) noexcept nogil:
    """Rows i0..i1 of C; a last group of fewer than 8 rows is copied into pad (8 x K, zeros
    below it) and takes the same 8-row code, so each row's rounding is the same anywhere."""
    cdef Py_ssize_t i, j, k, r, rows
    cdef floating c[8 * _NARROW]
    i = i0
    while i < i1:
        rows = _imin(8, i1 - i)
        if rows == 8:
            _narrow8(A + i * K, K, Bt, c, K)
        else:
            for r in range(8):
                for k in range(K):
                    pad[r * K + k] = A[(i + r) * K + k] if r < rows else 0
            _narrow8(pad, K, Bt, c, K)
        for r in range(rows):
            for j in range(N):
                C[(i + r) * N + j] = (C[(i + r) * N + j] + c[r * _NARROW + j]) if acc else c[r * _NARROW + j]
        i += 8


cdef int _gemm_nt_narrow(const floating *A, const floating *B, floating *C, Py_ssize_t M,
                         Py_ssize_t N, Py_ssize_t K, bint acc, int nthreads) noexcept nogil:
    cdef Py_ssize_t nchunks = (M + _NARROW_CHUNK - 1) // _NARROW_CHUNK
    if nthreads > nchunks:
        nthreads = <int> nchunks
    if nthreads < 1:
        nthreads = 1
    # Bt, then one 8 x K padding block per thread (a chunk's ragged last rows)
    cdef floating *Bt = <floating *> fnn_aligned_alloc((K * _NARROW + nthreads * 8 * K) * sizeof(floating))
    if Bt == NULL:
        return -1
    cdef floating *pads = Bt + K * _NARROW
    cdef Py_ssize_t j, k, q, lo
    cdef long next_chunk = 0
    for k in range(K):
        for j in range(_NARROW):
            Bt[k * _NARROW + j] = B[j * K + k] if j < N else 0
    if nthreads <= 1:
        _narrow_rows(A, Bt, C, 0, M, N, K, acc, pads)
    else:
        with parallel(num_threads=nthreads):
            while True:   # chunk boundaries are multiples of 8 rows: the same sums as one thread
                q = fnn_atomic_next(&next_chunk)
                if q >= nchunks:
                    break
                lo = q * _NARROW_CHUNK
                _narrow_rows(A, Bt, C, lo, _imin(lo + _NARROW_CHUNK, M), N, K, acc,
                             pads + fnn_team_rank() * 8 * K)
    fnn_aligned_free(Bt)
    return 0


cdef int _gemm(const floating *A, const floating *B, floating *C,
               Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, bint ta, bint tb, bint acc,
               int nthreads) noexcept nogil:
    """C (M x N, row-major) (+)= op(A) @ op(B); returns -1 if out of memory.
    Threads (when the work pays for them) share C as strips of rows (M large)
    or of columns (N large), several strips per thread, handed out dynamically."""
    cdef Py_ssize_t MR, NR, MC, KC, NC, mc, kc, nc, chunk, nchunks, a_sz, b_sz, t, D, g, minc
    cdef bint split_m
    cdef long next_chunk = 0
    cdef long claimed[_MAX_TEAM]
    cdef double master_done[1]
    if floating is float:
        MR = FNN_MR_S
        NR = FNN_NR_S
        MC = _MC_S
        KC = _KC_S
        NC = _NC_S
    else:
        MR = FNN_MR_D
        NR = FNN_NR_D
        MC = _MC_D
        KC = _KC_D
        NC = _NC_D
    MC = ((MC + MR - 1) // MR) * MR
    NC = ((NC + NR - 1) // NR) * NR
    if M * N * K < _PAR_MIN_WORK or nthreads < 1:
        nthreads = 1
    if tb and not ta and 0 < N <= _NARROW and 0 < K <= 65536 and M > 0:
        return _gemm_nt_narrow(A, B, C, M, N, K, acc, _team_size(nthreads) if nthreads > 1 else 1)
    nthreads = _team_size(nthreads)
    # Strips along the longer side (in tiles). Each strip repacks the other
    # operand, so strips stay big: one per thread by default (measured best
    # on an idle machine), _STRIPS per thread once they still hold >= MC rows
    # (or >= 256 columns).
    split_m = (M + MR - 1) // MR >= (N + NR - 1) // NR
    if _SPLIT_BY_PACKING and nthreads > 1:
        # A thread of a row split packs all of op(B) and its rows of op(A); of a column split, all
        # of op(A) and its columns of op(B): at batch 128, x @ W.T into 256 columns packed W twice
        # (once per thread) along rows. A non-transposed B beside few rows is read in place.
        if not tb and M <= _DIRECT_B_TILES * MR:
            split_m = (M + MR - 1) // MR >= nthreads
        else:
            split_m = M >= N
    if nthreads == 1:
        chunk = M if split_m else N
        nchunks = 1
    else:
        D = M if split_m else N
        g = MR if split_m else NR
        minc = MC if split_m else (8 * NR if 8 * NR > 256 else 256)
        nchunks = _STRIPS * nthreads if D >= _STRIPS * nthreads * minc else nthreads
        chunk = (D + nchunks - 1) // nchunks
        chunk = ((chunk + g - 1) // g) * g
        nchunks = (D + chunk - 1) // chunk
    if nthreads > nchunks:
        nthreads = <int> nchunks
    mc = _imin(MC, (((M if not split_m else _imin(chunk, M)) + MR - 1) // MR) * MR)
    nc = _imin(NC, (((N if split_m else _imin(chunk, N)) + NR - 1) // NR) * NR)
    kc = _imin(KC, K)
    a_sz = ((mc * kc + 15) // 16) * 16
    b_sz = ((nc * kc + 15) // 16) * 16
    cdef floating *buf = <floating *> fnn_aligned_alloc(nthreads * (a_sz + b_sz) * sizeof(floating))
    if buf == NULL:
        return -1
    if nthreads > 1:
        for t in range(nthreads):
            claimed[t] = 0
        master_done[0] = 0
        with parallel(num_threads=nthreads):
            t = fnn_team_rank()
            _gemm_worker(A, B, C, M, N, K, ta, tb, acc, buf + t * (a_sz + b_sz),
                         buf + t * (a_sz + b_sz) + a_sz, MC, KC, NC, split_m, chunk, nchunks,
                         &next_chunk, &claimed[t])
            if t == 0:
                master_done[0] = fnn_now()
        _team_report(claimed, master_done, nthreads)
    else:
        _gemm_worker(A, B, C, M, N, K, ta, tb, acc, buf, buf + a_sz, MC, KC, NC,
                     split_m, chunk, nchunks, &next_chunk, &claimed[0])
    fnn_aligned_free(buf)
    return 0


cdef int _gemm_arrays(cnp.ndarray a, cnp.ndarray b, cnp.ndarray c, bint ta, bint tb,
                      bint acc, int nthreads) except -1:
    """c (+)= op(a) @ op(b) for C-contiguous arrays of one float dtype."""
    cdef Py_ssize_t M = c.shape[0], N = c.shape[1]
    cdef Py_ssize_t K = a.shape[0] if ta else a.shape[1]
    cdef int rc
    if _is_f32(c):
        with nogil:
            rc = _gemm(<const float *> cnp.PyArray_DATA(a), <const float *> cnp.PyArray_DATA(b),
                       <float *> cnp.PyArray_DATA(c), M, N, K, ta, tb, acc, nthreads)
    else:
        with nogil:
            rc = _gemm(<const double *> cnp.PyArray_DATA(a), <const double *> cnp.PyArray_DATA(b),
                       <double *> cnp.PyArray_DATA(c), M, N, K, ta, tb, acc, nthreads)
    if rc != 0:
        raise MemoryError("matmul: cannot allocate packing buffers")
    return 0


def matmul(a, b, trans_a=False, trans_b=False):
    """op(a) @ op(b) (reference.matmul); a, b C-contiguous, one float dtype."""
    cdef cnp.ndarray A = a, B = b
    cdef bint ta = trans_a, tb = trans_b
    cdef Py_ssize_t M = A.shape[1] if ta else A.shape[0]
    cdef Py_ssize_t N = B.shape[0] if tb else B.shape[1]
    cdef cnp.ndarray C = _empty2(M, N, cnp.PyArray_TYPE(A))
    _gemm_arrays(A, B, C, ta, tb, False, _num_threads)
    return C


cdef object _python_matmul_check = None


def _checked_matmul(a, b, trans_a=False, trans_b=False):
    """backend.matmul: checks.matmul, then matmul. The usual call (two aligned, native-order,
    C-contiguous, non-empty 2-D arrays of one float dtype whose shapes fit) is checked here in C;
    the Python check's own fast path cost about 1 us a call, a quarter of a 64^3 product."""
    global _python_matmul_check
    cdef cnp.ndarray A, B
    cdef int ty
    cdef bint ta = trans_a, tb = trans_b
    if cnp.PyArray_CheckExact(a) and cnp.PyArray_CheckExact(b):
        A, B = a, b
        ty = cnp.PyArray_TYPE(A)
        if (cnp.PyArray_NDIM(A) == 2 and cnp.PyArray_NDIM(B) == 2 and cnp.PyArray_TYPE(B) == ty
                and (ty == cnp.NPY_FLOAT32 or ty == cnp.NPY_FLOAT64)
                and cnp.PyArray_ISNOTSWAPPED(A) and cnp.PyArray_ISNOTSWAPPED(B)
                and cnp.PyArray_ISALIGNED(A) and cnp.PyArray_ISALIGNED(B)
                and cnp.PyArray_IS_C_CONTIGUOUS(A) and cnp.PyArray_IS_C_CONTIGUOUS(B)
                and cnp.PyArray_SIZE(A) > 0 and cnp.PyArray_SIZE(B) > 0
                and (A.shape[0] if ta else A.shape[1]) == (B.shape[1] if tb else B.shape[0])):
            return matmul(A, B, ta, tb)
    if _python_matmul_check is None:
        from fastnn._kernels.checks import matmul as _python_matmul_check
    args, kwargs = _python_matmul_check(a, b, trans_a, trans_b)
    return matmul(*args, **kwargs)


cdef extern from "fnn_peak.h" nogil:
    float fnn_fma_loop(long iters)
    enum:
        FNN_PEAK_CHAINS
        FNN_PEAK_LANES


def _fma_peak(double seconds=0.2, int nthreads=1):
    """(GFLOP/s, threads that ran) of float32 multiply-adds alone (fnn_peak.h) on nthreads
    threads at once, best of rounds of about 8 ms (a 1024^3 GEMM's time) over `seconds`: the
    rate no float32 kernel of this ISA can pass here."""
    cdef long iters = 1 << 21
    cdef double best = 0.0, start, took, until
    cdef float sink[_MAX_TEAM]
    cdef int ran[_MAX_TEAM]
    cdef int t, team = 0
    if nthreads < 1 or nthreads > _MAX_TEAM:
        raise ValueError(f"_fma_peak: nthreads must be 1..{_MAX_TEAM}, got {nthreads}")
    until = fnn_now() + seconds
    while True:
        for t in range(nthreads):
            ran[t] = 0
        start = fnn_now()
        if nthreads > 1:
            with nogil, parallel(num_threads=nthreads):
                t = fnn_team_rank()
                sink[t] = fnn_fma_loop(iters)
                ran[t] = 1
        else:
            with nogil:
                sink[0] = fnn_fma_loop(iters)
                ran[0] = 1
        took = fnn_now() - start
        # count the threads that ran: without OpenMP, or under a thread limit, fewer do
        team = 0
        for t in range(nthreads):
            team += ran[t]
        if took > 0:
            best = max(best, 2.0 * iters * FNN_PEAK_CHAINS * FNN_PEAK_LANES * team / took)
        if fnn_now() >= until:
            break
    if sink[0] != sink[0]:   # never: keeps the loops' results live
        raise ArithmeticError("_fma_peak: NaN")
    return best / 1e9, team


def _matmul_threads(a, b, trans_a=False, trans_b=False, int nthreads=1):
    """matmul on exactly nthreads threads (or fewer when too small): for tests and benchmarks."""
    cdef cnp.ndarray A = a, B = b
    cdef bint ta = trans_a, tb = trans_b
    cdef Py_ssize_t M = A.shape[1] if ta else A.shape[0]
    cdef Py_ssize_t N = B.shape[0] if tb else B.shape[1]
    cdef cnp.ndarray C = _empty2(M, N, cnp.PyArray_TYPE(A))
    _gemm_arrays(A, B, C, ta, tb, False, nthreads)
    return C


cdef void _bias_fill(const floating *b, floating *y, Py_ssize_t n, Py_ssize_t f) noexcept nogil:
    cdef Py_ssize_t i, j
    for i in range(n):
        for j in range(f):
            y[i * f + j] = b[j]


cdef void _bias_add_k(const floating *x, const floating *b, floating *y,
                      Py_ssize_t n, Py_ssize_t f) noexcept nogil:
    cdef Py_ssize_t i, j
    for i in range(n):
        for j in range(f):
            y[i * f + j] = x[i * f + j] + b[j]


cdef void _colsum_k(const floating *dy, floating *db, Py_ssize_t n, Py_ssize_t f) noexcept nogil:
    cdef Py_ssize_t i, j
    for j in range(f):
        db[j] = 0
    for i in range(n):
        for j in range(f):
            db[j] += dy[i * f + j]


def bias_add(x, b):
    """x (N, F) + b (F,) broadcast over rows (reference.bias_add)."""
    cdef cnp.ndarray X = x, Bv = b
    cdef cnp.ndarray Y = _empty_like(X)
    cdef Py_ssize_t n = X.shape[0], f = X.shape[1]
    if _is_f32(X):
        _bias_add_k(<const float *> cnp.PyArray_DATA(X), <const float *> cnp.PyArray_DATA(Bv),
                    <float *> cnp.PyArray_DATA(Y), n, f)
    else:
        _bias_add_k(<const double *> cnp.PyArray_DATA(X), <const double *> cnp.PyArray_DATA(Bv),
                    <double *> cnp.PyArray_DATA(Y), n, f)
    return Y


def bias_grad(dy):
    """Column sums of dy (N, F) (reference.bias_grad)."""
    cdef cnp.ndarray D = dy
    cdef Py_ssize_t n = D.shape[0], f = D.shape[1]
    cdef cnp.ndarray G = _empty1(f, cnp.PyArray_TYPE(D))
    if _is_f32(D):
        _colsum_k(<const float *> cnp.PyArray_DATA(D), <float *> cnp.PyArray_DATA(G), n, f)
    else:
        _colsum_k(<const double *> cnp.PyArray_DATA(D), <double *> cnp.PyArray_DATA(G), n, f)
    return G


def linear(x, w, b):
    """x (N, in) @ w.T + b (reference.linear): the bias seeds C, the GEMM adds into it."""
    cdef cnp.ndarray X = x, W = w, Bv
    cdef Py_ssize_t n = X.shape[0], out = W.shape[0]
    cdef cnp.ndarray Y = _empty2(n, out, cnp.PyArray_TYPE(X))
    if b is None:
        _gemm_arrays(X, W, Y, False, True, False, _num_threads)
        return Y
    Bv = b
    if _is_f32(X):
        _bias_fill(<const float *> cnp.PyArray_DATA(Bv), <float *> cnp.PyArray_DATA(Y), n, out)
    else:
        _bias_fill(<const double *> cnp.PyArray_DATA(Bv), <double *> cnp.PyArray_DATA(Y), n, out)
    _gemm_arrays(X, W, Y, False, True, True, _num_threads)
    return Y


def linear_backward(dy, x, w, need_dx=True):
    """(dx or None, dw, db) from dy (N, out), x (N, in), w (out, in) (reference.linear_backward)."""
    cdef cnp.ndarray DY = dy, X = x, W = w
    cdef int t = cnp.PyArray_TYPE(DY)
    cdef cnp.ndarray DW = _empty2(W.shape[0], W.shape[1], t)
    _gemm_arrays(DY, X, DW, True, False, False, _num_threads)      # dy.T @ x
    db = bias_grad(DY)
    cdef cnp.ndarray DX
    if need_dx:
        DX = _empty2(X.shape[0], X.shape[1], t)
        _gemm_arrays(DY, W, DX, False, False, False, _num_threads)  # dy @ w
        return DX, DW, db
    return None, DW, db
