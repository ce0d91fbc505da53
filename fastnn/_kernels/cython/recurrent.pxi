# RNN (tanh), LSTM and GRU forward and BPTT backward over whole sequences; matches rnn, lstm, gru and their *_backward in fastnn/_kernels/reference.py.
#
# Layout: samples in rows, as the outputs are. The batch is cut into tiles of
# MR samples (the GEMM microkernel's rows: 8 with AVX-512) and each tile runs
# the whole time loop on its own (tiles are independent, so threads take tiles
# from a shared counter and never wait for each other between steps).
#
# Forward, per step and tile: A = [x_t ; h_{t-1}] packed MR-interleaved (the
# microkernel's A panel), times B = the weights [W_ih | W_hh]^T packed once
# per call as a (F+H, G'*H) panel padded to NR columns, which stays in L1 for
# the whole call. One register-blocked microkernel sweep (fnn_ukr_*) gives
# every gate pre-activation of the tile, input part included. For the GRU the
# panel has four column groups (r, z, n from x, n from h) so W_in x and
# W_hn h + b_hn stay apart; the two n groups sweep only their own rows of the
# panel (F, or H), not its zero rows. The gate math then runs along the hidden axis of
# each sample row in a per-tile scratch row [pre-activations | c | h] (one
# base pointer, so it vectorizes with no alias checks), the new h goes into
# the A panel for the next step, and the row's outputs are copied out.
#
# Backward, per step (reverse) and tile: the pre-activation gradients da of
# each sample row (from dh_t + the carried dh, and the saved states) go to the
# output arrays and into an A panel; one microkernel sweep against the packed
# W_hh panel (H columns, padded to NR) gives the dh_{t-1} carry. The GRU's A
# holds (d_r, d_z, d_new * r), as W_hh's n rows meet d_new * r. dx_t needs no
# carry, so it comes after the time loop from da W_ih (at F = 1, H = 32
# sweeping [W_hh | W_ih] per step padded 33 columns to 64). dW_ih and the bias
# gradients are column sums of da, and dW_hh^T = h_prev^T d_hid is a GEMM over
# the rows with t > 0 (d_hid's t = 0 rows zeroed, h read shifted by one row: no
# [x | h] copy). With F < 16 each tile does all of these over its own m*T rows
# right after its time loop, while they are in cache, and the tiles' partial
# sums are added in tile order (the same bits on any number of threads); with
# wider inputs, or partials past _RNN_TILE_DW_MAX, they run over all N*T rows.
#
# Small hidden sizes (H <= _RNN_LANES_MAX_H) take the samples-in-lanes path of
# fnn_rec_lanes.h instead: LB samples (one ISA vector: 16 floats with AVX-512)
# per block, each gate row one vector, so the gate nonlinearities run on full
# vectors where the row path above would leave most lanes idle (H = 6: 6 of
# 16). The saved states keep the reference's (N, T, ...) layout: chunks of
# steps are transposed into and out of the lanes. Its backward sums dW, db and
# dx in the time loop while its accumulators are small (_RNN_FUSED_MAX_BYTES;
# per block, added in block order: the same result on any number of threads),
# else it writes da rows for the GEMMs above. Measured (batch 100, T = 40,
# F = 1): lanes win below H = 16 in float32 (8 in float64), rows from one full
# vector of hidden units a row.

from libc.string cimport memcpy

# The per-row gate math, in C with restrict pointers (every gate block its own
# pointer) so the compiler vectorizes along the hidden axis with no alias checks.
cdef extern from *:
    """
    #include "fnn_simd.h"
    #define FNN_GATES(T, S, EXP, TANH)                                                     \
    static inline T fnn_sig_##S(T v) { return (T)1 / ((T)1 + EXP(-v)); }                  \
    static void fnn_lstm_fwd_##S(long H, T *FNN_RESTRICT pi, T *FNN_RESTRICT pf,           \
            T *FNN_RESTRICT pg, T *FNN_RESTRICT po, const T *FNN_RESTRICT b,                \
            T *FNN_RESTRICT c, T *FNN_RESTRICT h) {                                        \
        for (long j = 0; j < H; ++j) {                                                     \
            T iv = fnn_sig_##S(pi[j] + b[j]), fv = fnn_sig_##S(pf[j] + b[H + j]);          \
            T gv = TANH(pg[j] + b[2 * H + j]), ov = fnn_sig_##S(po[j] + b[3 * H + j]);     \
            T cv = fv * c[j] + iv * gv;                                                    \
            pi[j] = iv; pf[j] = fv; pg[j] = gv; po[j] = ov; c[j] = cv; h[j] = ov * TANH(cv); \
        }                                                                                  \
    }                                                                                      \
    static void fnn_gru_fwd_##S(long H, T *FNN_RESTRICT pr, T *FNN_RESTRICT pz,            \
            T *FNN_RESTRICT pn, T *FNN_RESTRICT ph, const T *FNN_RESTRICT b,                \
            T *FNN_RESTRICT h) {                                                           \
        for (long j = 0; j < H; ++j) {                                                     \
            T rv = fnn_sig_##S(pr[j] + b[j]), zv = fnn_sig_##S(pz[j] + b[H + j]);          \
            T hv = ph[j] + b[3 * H + j];                                                   \
            T nv = TANH(pn[j] + b[2 * H + j] + rv * hv);                                   \
            pr[j] = rv; pz[j] = zv; pn[j] = nv; ph[j] = hv;                                \
            h[j] = ((T)1 - zv) * nv + zv * h[j];                                           \
        }                                                                                  \
    }                                                                                      \
    static void fnn_rnn_fwd_##S(long H, const T *FNN_RESTRICT p, const T *FNN_RESTRICT b,  \
            T *FNN_RESTRICT h) {                                                           \
        for (long j = 0; j < H; ++j) h[j] = TANH(p[j] + b[j]);                             \
    }                                                                                      \
    static void fnn_lstm_bwd_##S(long H, const T *FNN_RESTRICT dh, const T *FNN_RESTRICT carry, \
            T *FNN_RESTRICT dcs, const T *FNN_RESTRICT gt, const T *FNN_RESTRICT ct,        \
            const T *FNN_RESTRICT prev, T *FNN_RESTRICT gi, T *FNN_RESTRICT gf,             \
            T *FNN_RESTRICT gg, T *FNN_RESTRICT go) {                                      \
        for (long j = 0; j < H; ++j) {                                                     \
            T d = dh[j] + carry[j];                                                        \
            T iv = gt[j], fv = gt[H + j], gv = gt[2 * H + j], ov = gt[3 * H + j];          \
            T tc = TANH(ct[j]);                                                            \
            T dc = dcs[j] + d * ov * ((T)1 - tc * tc);                                     \
            gi[j] = dc * gv * iv * ((T)1 - iv);                                            \
            gf[j] = dc * prev[j] * fv * ((T)1 - fv);                                       \
            gg[j] = dc * iv * ((T)1 - gv * gv);                                            \
            go[j] = d * tc * ov * ((T)1 - ov);                                             \
            dcs[j] = dc * fv;                                                              \
        }                                                                                  \
    }                                                                                      \
    static void fnn_gru_bwd_##S(long H, const T *FNN_RESTRICT dh, const T *FNN_RESTRICT carry, \
            T *FNN_RESTRICT dz_state, const T *FNN_RESTRICT gt, const T *FNN_RESTRICT hn,   \
            const T *FNN_RESTRICT prev, T *FNN_RESTRICT gr, T *FNN_RESTRICT gz,             \
            T *FNN_RESTRICT gn, T *FNN_RESTRICT gnr) {                                     \
        for (long j = 0; j < H; ++j) {                                                     \
            T d = dh[j] + carry[j] + dz_state[j];                                          \
            T rv = gt[j], zv = gt[H + j], nv = gt[2 * H + j];                              \
            T dnew = d * ((T)1 - zv) * ((T)1 - nv * nv);                                   \
            gr[j] = dnew * hn[j] * rv * ((T)1 - rv);                                       \
            gz[j] = d * (prev[j] - nv) * zv * ((T)1 - zv);                                 \
            gn[j] = dnew;                                                                  \
            gnr[j] = dnew * rv;                                                            \
            dz_state[j] = d * zv;                                                          \
        }                                                                                  \
    }                                                                                      \
    static void fnn_rnn_bwd_##S(long H, const T *FNN_RESTRICT dh, const T *FNN_RESTRICT carry, \
            const T *FNN_RESTRICT h, T *FNN_RESTRICT g) {                                  \
        for (long j = 0; j < H; ++j) g[j] = (dh[j] + carry[j]) * ((T)1 - h[j] * h[j]);     \
    }                                                                                      \
    /* dx[s, f] = sum_p da[s, p] * wt[f, p] (wt: W_ih transposed, F x G) for small F */ \
    static void fnn_rec_dx_##S(long NT, long G, long F, const T *FNN_RESTRICT da,           \
            const T *FNN_RESTRICT wt, T *FNN_RESTRICT dx) {                                \
        for (long s = 0; s < NT; ++s) {                                                    \
            const T *FNN_RESTRICT a = da + s * G;                                          \
            for (long f = 0; f < F; ++f) {                                                 \
                const T *FNN_RESTRICT w = wt + f * G;                                      \
                T acc[16] = {0}, sum = 0;                                                  \
                long p = 0;                                                                \
                for (; p + 16 <= G; p += 16)                                               \
                    for (int q = 0; q < 16; ++q) acc[q] += a[p + q] * w[p + q];            \
                for (; p < G; ++p) sum += a[p] * w[p];                                     \
                for (int q = 0; q < 16; ++q) sum += acc[q];                                \
                dx[s * F + f] = sum;                                                       \
            }                                                                              \
        }                                                                                  \
    }                                                                                      \
    /* db[p] += sum_s da[s, p]; acc[f, p] += sum_s da[s, p] x[s, f] (dW_ih^T for small F) */ \
    static void fnn_rec_colsums_##S(long NT, long G, long F, const T *FNN_RESTRICT da,       \
            const T *FNN_RESTRICT x, T *FNN_RESTRICT acc, T *FNN_RESTRICT db) {            \
        for (long s = 0; s < NT; ++s) {                                                    \
            const T *FNN_RESTRICT a = da + s * G;                                          \
            for (long p = 0; p < G; ++p) db[p] += a[p];                                    \
            for (long f = 0; f < F; ++f) {                                                 \
                T xv = x[s * F + f];                                                       \
                T *FNN_RESTRICT w = acc + f * G;                                           \
                for (long p = 0; p < G; ++p) w[p] += a[p] * xv;                            \
            }                                                                              \
        }                                                                                  \
    }
    FNN_GATES(float, s, fnn_expf, fnn_tanhf)
    /* prefetch n bytes from p (a sample row's saved state of an earlier step: rows of
       one tile lie T*H apart, too far for the hardware prefetcher) */
    static inline void fnn_prefetch(const void *p, long n) {
        for (long o = 0; o < n; o += 64) __builtin_prefetch((const char *)p + o, 0, 3);
    }
    FNN_GATES(double, d, fnn_exp, fnn_tanh)
    #undef FNN_GATES
    #include "fnn_rec_lanes.h"
    """
    void fnn_lstm_fwd_s(long H, float *pi, float *pf, float *pg, float *po, const float *b, float *c, float *h) nogil
    void fnn_lstm_fwd_d(long H, double *pi, double *pf, double *pg, double *po, const double *b, double *c, double *h) nogil
    void fnn_gru_fwd_s(long H, float *pr, float *pz, float *pn, float *ph, const float *b, float *h) nogil
    void fnn_gru_fwd_d(long H, double *pr, double *pz, double *pn, double *ph, const double *b, double *h) nogil
    void fnn_rnn_fwd_s(long H, const float *p, const float *b, float *h) nogil
    void fnn_rnn_fwd_d(long H, const double *p, const double *b, double *h) nogil
    void fnn_lstm_bwd_s(long H, const float *dh, const float *carry, float *dcs, const float *gt, const float *ct, const float *prev, float *gi, float *gf, float *gg, float *go) nogil
    void fnn_lstm_bwd_d(long H, const double *dh, const double *carry, double *dcs, const double *gt, const double *ct, const double *prev, double *gi, double *gf, double *gg, double *go) nogil
    void fnn_gru_bwd_s(long H, const float *dh, const float *carry, float *dzs, const float *gt, const float *hn, const float *prev, float *gr, float *gz, float *gn, float *gnr) nogil
    void fnn_gru_bwd_d(long H, const double *dh, const double *carry, double *dzs, const double *gt, const double *hn, const double *prev, double *gr, double *gz, double *gn, double *gnr) nogil
    void fnn_rnn_bwd_s(long H, const float *dh, const float *carry, const float *h, float *g) nogil
    void fnn_rnn_bwd_d(long H, const double *dh, const double *carry, const double *h, double *g) nogil
    void fnn_prefetch(const void *p, long n) nogil
    void fnn_rec_dx_s(long NT, long G, long F, const float *da, const float *wt, float *dx) nogil
    void fnn_rec_dx_d(long NT, long G, long F, const double *da, const double *wt, double *dx) nogil
    void fnn_rec_colsums_s(long NT, long G, long F, const float *da, const float *x, float *acc, float *db) nogil
    void fnn_rec_colsums_d(long NT, long G, long F, const double *da, const double *x, double *acc, double *db) nogil
    # the samples-in-lanes time loops (fnn_rec_lanes.h; FNN_LANES is 0 without vector extensions)
    enum:
        FNN_LANES
        FNN_LB_S
        FNN_LB_D
    long fnn_lanes_bufsize_s(int kind, long T, long F, long H) nogil
    long fnn_lanes_bufsize_d(int kind, long T, long F, long H) nogil
    void fnn_lanes_fwd_s(int kind, long n0, long nl, long T, long F, long H, const float *x, const float *wih, const float *whh, const float *bias, float *h, float *c, float *gates, float *hn, void *buf) nogil
    void fnn_lanes_fwd_d(int kind, long n0, long nl, long T, long F, long H, const double *x, const double *wih, const double *whh, const double *bias, double *h, double *c, double *gates, double *hn, void *buf) nogil
    long fnn_lanes_accbytes_s(int kind, long F, long H) nogil
    long fnn_lanes_accbytes_d(int kind, long F, long H) nogil
    void fnn_lanes_bwd_s(int kind, long n0, long nl, long T, long F, long H, const float *dh, const float *x, const float *h, const float *c, const float *gates, const float *hn, const float *whht, const float *wiht, float *da, float *dhid, float *dx, float *part, void *buf) nogil
    void fnn_lanes_bwd_d(int kind, long n0, long nl, long T, long F, long H, const double *dh, const double *x, const double *h, const double *c, const double *gates, const double *hn, const double *whht, const double *wiht, double *da, double *dhid, double *dx, double *part, void *buf) nogil

# Threads over sample tiles only above this N*T*(F+H)*G'. A worker preempted while
# it holds a tile (the whole time loop of MR samples) stalls the call for a
# scheduler slice; the straggler guard (common.pxi) then keeps the kernels on one
# thread for a while. Measured at batch 100, 40 steps, F = 1 (work 4.4e6 at H = 16,
# 1.7e7 at H = 32): two threads made LSTM/GRU steps 1.4-1.5x as fast on a quiet
# machine and kept 0.59-0.66 of that beside a busy process (0.86x one thread's);
# below 2^22 a call is too short for the second thread to pay.
# _set_rnn_parallel_min_work moves it.
cdef Py_ssize_t _RNN_PAR_MIN_WORK = 1 << 22
cdef enum:
    _K_RNN = 0
    _K_LSTM = 1
    _K_GRU = 2


# Hidden sizes up to these run the samples-in-lanes time loops (fnn_rec_lanes.h): one
# vector of the ISA holds a gate row of LB samples, so the gate math runs on full
# vectors at any H. From one full vector of hidden units (16 floats, 8 doubles with
# AVX-512) the samples-in-rows path below (GEMM microkernel per step, gate math along
# the hidden axis) measured faster. _set_rnn_lanes_max_h moves them (tests: -1 forces
# rows, a large value lanes).
cdef Py_ssize_t _RNN_LANES_MAX_H = 15
cdef Py_ssize_t _RNN_LANES_MAX_H_D = 7


def _set_rnn_lanes_max_h(Py_ssize_t h_float, Py_ssize_t h_double):
    """Tuning hook: recurrent kernels with hidden size <= h_float (float32) or <= h_double
    (float64) use the samples-in-lanes path (where this build has it); returns the
    previous (h_float, h_double)."""
    global _RNN_LANES_MAX_H, _RNN_LANES_MAX_H_D
    old = (_RNN_LANES_MAX_H, _RNN_LANES_MAX_H_D)
    _RNN_LANES_MAX_H = h_float
    _RNN_LANES_MAX_H_D = h_double
    return old


def _rnn_lanes_width(dtype):
    """Samples per lane block for dtype in this build (0: no lanes path)."""
    if not FNN_LANES:
        return 0
    return FNN_LB_S if dtype == "float32" else FNN_LB_D


cdef inline bint _use_lanes(Py_ssize_t H, bint is_double) noexcept nogil:
    return FNN_LANES != 0 and H <= (_RNN_LANES_MAX_H_D if is_double else _RNN_LANES_MAX_H)


# The BPTT sweep prefetches each sample row's saved states this many steps ahead (0: off)
cdef Py_ssize_t _PF_DIST = 2


def _set_rnn_prefetch(Py_ssize_t steps):
    """Tuning hook: the backward sweep prefetches saved states `steps` steps ahead (0: not at
    all); returns the previous value."""
    global _PF_DIST
    old = _PF_DIST
    _PF_DIST = steps if steps > 0 else 0
    return old


def _set_rnn_parallel_min_work(Py_ssize_t w):
    """Tuning hook: recurrent kernels thread over sample tiles when N*T*(F+H)*G*H reaches w;
    returns the previous value."""
    global _RNN_PAR_MIN_WORK
    old = _RNN_PAR_MIN_WORK
    _RNN_PAR_MIN_WORK = w
    return old


cdef inline Py_ssize_t _roundup(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return ((a + b - 1) // b) * b


cdef inline void _ukr(Py_ssize_t k, const floating *a, const floating *b, Py_ssize_t ldb,
                      floating *c, Py_ssize_t ldc) noexcept nogil:
    if floating is float:
        fnn_ukr_s(k, a, b, ldb, c, ldc, FNN_MR_S, FNN_NR_S, 0)
    else:
        fnn_ukr_d(k, a, b, ldb, c, ldc, FNN_MR_D, FNN_NR_D, 0)


cdef inline void _copy(floating *dst, const floating *src, Py_ssize_t n) noexcept nogil:
    memcpy(dst, src, n * sizeof(floating))


cdef inline void _panel8(const floating *src, Py_ssize_t ls, Py_ssize_t n, floating *ap) noexcept nogil:
    """ap[j * 8 + r] = src[r * ls + j] for r < 8, j < n: a full tile's 8 rows (ls apart) into
    its A panel, in 8x8 register transposes (gemm.pxi's _tr8), not 8n strided stores."""
    cdef Py_ssize_t j = 0, r
    while j + 8 <= n:
        _tr8(src + j, ls, ap + j * 8, 8)
        j += 8
    while j < n:
        for r in range(8):
            ap[j * 8 + r] = src[r * ls + j]
        j += 1


cdef void _tr_block(const floating *src, Py_ssize_t ls, Py_ssize_t rows, Py_ssize_t cols,
                    floating *dst, Py_ssize_t ld) noexcept nogil:
    """dst[c * ld + r] = src[r * ls + c] for r < rows, c < cols: 8x8 register tiles (_tr8),
    the edges by the plain loop (weight panels: a scattered store a value was 4% of a call)."""
    cdef Py_ssize_t r8 = rows - rows % 8, c8 = cols - cols % 8, r, c
    for c in range(0, c8, 8):
        for r in range(0, r8, 8):
            _tr8(src + r * ls + c, ls, dst + c * ld + r, ld)
    for c in range(c8, cols):
        for r in range(rows):
            dst[c * ld + r] = src[r * ls + c]
    for c in range(c8):
        for r in range(r8, rows):
            dst[c * ld + r] = src[r * ls + c]


# ----------------------------------------------------------------- forward


cdef void _pack_fwd(int kind, const floating *w_ih, const floating *w_hh, const floating *b_ih,
                    const floating *b_hh, floating *bp, floating *bias, Py_ssize_t F,
                    Py_ssize_t H, Py_ssize_t gp) noexcept nogil:
    """bp (F+H, gp): rows p < F from W_ih^T, the rest from W_hh^T; bias per column.
    RNN/LSTM columns are the G*H gate rows (bias b_ih + b_hh). GRU columns: r, z
    (both parts), n from x (b_in), n from h (b_hn)."""
    cdef Py_ssize_t p, col, k = F + H, g = H * (1 if kind == _K_RNN else 4 if kind == _K_LSTM else 3)
    for p in range(k * gp):
        bp[p] = 0
    if kind != _K_GRU:
        _tr_block(w_ih, F, g, F, bp, gp)
        _tr_block(w_hh, H, g, H, bp + F * gp, gp)
        for col in range(g):
            bias[col] = b_ih[col] + b_hh[col]
        return
    _tr_block(w_ih, F, 3 * H, F, bp, gp)                        # r, z, n from x
    _tr_block(w_hh, H, 2 * H, H, bp + F * gp, gp)               # r, z from h
    _tr_block(w_hh + 2 * H * H, H, H, H, bp + F * gp + 3 * H, gp)   # n from h
    for col in range(2 * H):
        bias[col] = b_ih[col] + b_hh[col]
    for col in range(2 * H, 3 * H):
        bias[col] = b_ih[col]
        bias[col + H] = b_hh[col]


cdef void _fwd_tile(int kind, const floating *x, const floating *bp, const floating *bias,
                    floating *h, floating *c, floating *gates, floating *hn,
                    Py_ssize_t n0, Py_ssize_t m, Py_ssize_t T, Py_ssize_t F, Py_ssize_t H,
                    Py_ssize_t gp, floating *ap, floating *cs) noexcept nogil:
    """The whole time loop for samples n0 .. n0+m-1 (m <= MR). ap: (F+H)*MR A panel;
    cs: MR scratch rows of gp + 2H ([pre-activations | c | h])."""
    cdef Py_ssize_t MR, NR
    if floating is float:
        MR = FNN_MR_S
        NR = FNN_NR_S
    else:
        MR = FNN_MR_D
        NR = FNN_NR_D
    cdef Py_ssize_t k = F + H, cstr = gp + 2 * H, t, r, f, j, jt, s, G, c0
    cdef floating *row
    G = H * (1 if kind == _K_RNN else 4 if kind == _K_LSTM else 3)
    for j in range(k * MR):
        ap[j] = 0
    for j in range(MR * cstr):
        cs[j] = 0
    for t in range(T):
        for r in range(m):
            for f in range(F):
                ap[f * MR + r] = x[((n0 + r) * T + t) * F + f]
        for jt in range(gp // NR):
            c0 = jt * NR
            if kind == _K_GRU and c0 >= 3 * H:   # W_hn h: only the panel's H rows of W_hh
                _ukr(H, ap + F * MR, bp + F * gp + c0, gp, cs + c0, cstr)
            elif kind == _K_GRU and c0 >= 2 * H and c0 + NR <= 3 * H:   # W_in x: the F rows
                _ukr(F, ap, bp + c0, gp, cs + c0, cstr)
            else:
                _ukr(k, ap, bp + c0, gp, cs + c0, cstr)
        for r in range(m):
            row = cs + r * cstr
            s = (n0 + r) * T + t
            if kind == _K_LSTM:
                if floating is float:
                    fnn_lstm_fwd_s(H, row, row + H, row + 2 * H, row + 3 * H, bias, row + gp, row + gp + H)
                else:
                    fnn_lstm_fwd_d(H, row, row + H, row + 2 * H, row + 3 * H, bias, row + gp, row + gp + H)
                _copy(gates + s * G, row, G)
                _copy(c + s * H, row + gp, H)
            elif kind == _K_GRU:
                if floating is float:
                    fnn_gru_fwd_s(H, row, row + H, row + 2 * H, row + 3 * H, bias, row + gp + H)
                else:
                    fnn_gru_fwd_d(H, row, row + H, row + 2 * H, row + 3 * H, bias, row + gp + H)
                _copy(gates + s * G, row, G)
                _copy(hn + s * H, row + 3 * H, H)
            else:
                if floating is float:
                    fnn_rnn_fwd_s(H, row, bias, row + gp + H)
                else:
                    fnn_rnn_fwd_d(H, row, bias, row + gp + H)
            _copy(h + s * H, row + gp + H, H)
            if m < 8 or MR != 8:
                for j in range(H):
                    ap[(F + j) * MR + r] = row[gp + H + j]
        if m == 8 and MR == 8:
            _panel8(cs + gp + H, cstr, H, ap + F * MR)


cdef void _fwd_worker(int kind, const floating *x, const floating *bp, const floating *bias,
                      floating *h, floating *c, floating *gates, floating *hn,
                      Py_ssize_t N, Py_ssize_t T, Py_ssize_t F, Py_ssize_t H, Py_ssize_t gp,
                      long *next_tile, long *claimed, int *fail) noexcept nogil:
    cdef Py_ssize_t MR
    if floating is float:
        MR = FNN_MR_S
    else:
        MR = FNN_MR_D
    cdef Py_ssize_t ntiles = (N + MR - 1) // MR, q, n0
    cdef Py_ssize_t a_sz = _roundup((F + H) * MR, 16), c_sz = _roundup(MR * (gp + 2 * H), 16)
    cdef floating *buf = NULL
    while True:
        q = fnn_atomic_next(next_tile)
        if q >= ntiles:
            break
        if buf == NULL:
            buf = <floating *> fnn_aligned_alloc((a_sz + c_sz) * sizeof(floating))
            if buf == NULL:
                fail[0] = 1
                return
        claimed[0] += 1
        n0 = q * MR
        _fwd_tile(kind, x, bp, bias, h, c, gates, hn, n0, _imin(MR, N - n0), T, F, H, gp,
                  buf, buf + a_sz)
    if buf != NULL:
        fnn_aligned_free(buf)


cdef void _lanes_fwd_worker(int kind, const floating *x, const floating *w_ih, const floating *w_hh,
                            const floating *bias, floating *h, floating *c, floating *gates,
                            floating *hn, Py_ssize_t N, Py_ssize_t T, Py_ssize_t F, Py_ssize_t H,
                            long *next_tile, long *claimed, int *fail) noexcept nogil:
    """Forward time loops of lane blocks taken from the shared counter."""
    cdef Py_ssize_t LB = FNN_LB_S if floating is float else FNN_LB_D
    cdef Py_ssize_t nblk = (N + LB - 1) // LB, q, n0
    cdef void *buf = NULL
    while True:
        q = fnn_atomic_next(next_tile)
        if q >= nblk:
            break
        if buf == NULL:
            if floating is float:
                buf = fnn_aligned_alloc(fnn_lanes_bufsize_s(-1 - kind, T, F, H) * LB * sizeof(float))
            else:
                buf = fnn_aligned_alloc(fnn_lanes_bufsize_d(-1 - kind, T, F, H) * LB * sizeof(double))
            if buf == NULL:
                fail[0] = 1
                return
        claimed[0] += 1
        n0 = q * LB
        if floating is float:
            fnn_lanes_fwd_s(kind, n0, _imin(LB, N - n0), T, F, H, x, w_ih, w_hh, bias, h, c, gates, hn, buf)
        else:
            fnn_lanes_fwd_d(kind, n0, _imin(LB, N - n0), T, F, H, x, w_ih, w_hh, bias, h, c, gates, hn, buf)
    if buf != NULL:
        fnn_aligned_free(buf)


cdef void _lanes_bwd_worker(int kind, const floating *dh, const floating *x, const floating *h,
                            const floating *c, const floating *gates, const floating *hn,
                            const floating *whht, const floating *wiht, floating *da,
                            floating *dhid, floating *dx, floating *parts, Py_ssize_t pw,
                            Py_ssize_t N, Py_ssize_t T, Py_ssize_t F, Py_ssize_t H,
                            long *next_tile, long *claimed, int *fail) noexcept nogil:
    """BPTT time loops of lane blocks taken from the shared counter; parts != NULL: the
    fused path, block q's weight gradients into parts + q * pw."""
    cdef Py_ssize_t LB = FNN_LB_S if floating is float else FNN_LB_D
    cdef Py_ssize_t nblk = (N + LB - 1) // LB, q, n0
    cdef void *buf = NULL
    cdef floating *part
    while True:
        q = fnn_atomic_next(next_tile)
        if q >= nblk:
            break
        if buf == NULL:
            if floating is float:
                buf = fnn_aligned_alloc(fnn_lanes_bufsize_s(kind, T, F, H) * LB * sizeof(float))
            else:
                buf = fnn_aligned_alloc(fnn_lanes_bufsize_d(kind, T, F, H) * LB * sizeof(double))
            if buf == NULL:
                fail[0] = 1
                return
        claimed[0] += 1
        n0 = q * LB
        part = NULL if parts == NULL else parts + q * pw
        if floating is float:
            fnn_lanes_bwd_s(kind, n0, _imin(LB, N - n0), T, F, H, dh, x, h, c, gates, hn, whht, wiht,
                            da, dhid, dx, part, buf)
        else:
            fnn_lanes_bwd_d(kind, n0, _imin(LB, N - n0), T, F, H, dh, x, h, c, gates, hn, whht, wiht,
                            da, dhid, dx, part, buf)
    if buf != NULL:
        fnn_aligned_free(buf)


# The fused lanes backward keeps every weight gradient of a block in lane
# accumulators, G * (H + F + 2) vectors, read and written every step: only
# while they stay near L1 (72 KB: an LSTM up to H = 15 at F = 1; measured
# faster than da rows + GEMMs there).
cdef Py_ssize_t _RNN_FUSED_MAX_BYTES = 73728


# The rows path's backward takes dW_hh per tile (a GEMM over the tile's rows while they are
# in cache; partials added in tile order: the same on any threads) while ntiles * G * H
# stays at most this (16 MB of float partials: an LSTM H = 128 to batch 500); above it one
# GEMM over all rows. Measured at batch 100, 2 threads: LSTM H = 32 backward 501 -> 354 us,
# H = 64 and 128 10% faster, RNN H = 128 5%.
cdef Py_ssize_t _RNN_TILE_DW_MAX = 1 << 22


def _set_rnn_tile_dw_max(Py_ssize_t n):
    """Tuning hook: the rows backward sums dW_hh per tile while ntiles * G * H <= n (0: never);
    returns the old value."""
    global _RNN_TILE_DW_MAX
    old = _RNN_TILE_DW_MAX
    _RNN_TILE_DW_MAX = n
    return old


def _set_rnn_fused_max_bytes(Py_ssize_t b):
    """Tuning hook: the lanes backward sums the weight gradients in its time loop while
    their accumulators take at most b bytes (else da rows and GEMMs); returns the old value."""
    global _RNN_FUSED_MAX_BYTES
    old = _RNN_FUSED_MAX_BYTES
    _RNN_FUSED_MAX_BYTES = b
    return old


cdef int _rec_bwd_fused(int kind, const floating *dh, const floating *x, const floating *h,
                        const floating *c, const floating *gates, const floating *hn,
                        const floating *w_ih, const floating *w_hh, floating *dx, floating *dw_ih,
                        floating *dw_hh, floating *db_ih, floating *db_hh, Py_ssize_t N, Py_ssize_t T,
                        Py_ssize_t F, Py_ssize_t H, int nthreads) noexcept nogil:
    """BPTT on the lanes with every gradient summed in the time loop: no (N*T, G) rows,
    no GEMM. Block partial sums are added in block order (the same result on any
    number of threads)."""
    cdef Py_ssize_t LB = FNN_LB_S if floating is float else FNN_LB_D
    cdef Py_ssize_t G = H * (1 if kind == _K_RNN else 4 if kind == _K_LSTM else 3)
    cdef Py_ssize_t nblk = (N + LB - 1) // LB, pw = G * (H + F + 2), i, j, q, tt
    cdef long next_tile = 0
    cdef long claimed[_MAX_TEAM]
    cdef double master_done[1]
    cdef int fail = 0
    cdef Py_ssize_t wt_sz = _roundup(G * H, 16) + _roundup(G * F, 16)
    cdef floating *whht = <floating *> fnn_aligned_alloc((wt_sz + nblk * pw + 16) * sizeof(floating))
    if whht == NULL:
        return -1
    cdef floating *wiht = whht + _roundup(G * H, 16)
    cdef floating *parts = whht + wt_sz
    cdef floating *p
    for i in range(G):
        for j in range(H):
            whht[j * G + i] = w_hh[i * H + j]
        for j in range(F):
            wiht[j * G + i] = w_ih[i * F + j]
    for i in range(nblk * pw):
        parts[i] = 0
    nthreads = _team_for(nblk, N * T * G * (F + H), nthreads)
    for tt in range(nthreads):
        claimed[tt] = 0
    if nthreads > 1:
        master_done[0] = 0
        with parallel(num_threads=nthreads):
            tt = fnn_team_rank()
            _lanes_bwd_worker(kind, dh, x, h, c, gates, hn, whht, wiht, NULL, NULL, dx, parts, pw,
                              N, T, F, H, &next_tile, &claimed[tt], &fail)
            if tt == 0:
                master_done[0] = fnn_now()
        _team_report(claimed, master_done, nthreads)
    else:
        _lanes_bwd_worker(kind, dh, x, h, c, gates, hn, whht, wiht, NULL, NULL, dx, parts, pw,
                          N, T, F, H, &next_tile, &claimed[0], &fail)
    if fail:
        fnn_aligned_free(whht)
        return -1
    for i in range(G * H):
        dw_hh[i] = 0
    for i in range(G * F):
        dw_ih[i] = 0
    for i in range(G):
        db_ih[i] = 0
        db_hh[i] = 0
    for q in range(nblk):
        p = parts + q * pw
        for i in range(G * H):
            dw_hh[i] += p[i]
        p = p + G * H
        for i in range(G * F):
            dw_ih[i] += p[i]
        p = p + G * F
        for i in range(G):
            db_ih[i] += p[i]
            db_hh[i] += p[G + i]
    fnn_aligned_free(whht)
    return 0


cdef int _team_for(Py_ssize_t ntiles, Py_ssize_t work, int nthreads) noexcept nogil:
    if nthreads < 2 or ntiles < 2 or work < _RNN_PAR_MIN_WORK:
        return 1
    nthreads = _team_size(nthreads)
    if nthreads > ntiles:
        nthreads = <int> ntiles
    return nthreads


cdef int _rec_fwd(int kind, const floating *x, const floating *w_ih, const floating *w_hh,
                  const floating *b_ih, const floating *b_hh, floating *h, floating *c,
                  floating *gates, floating *hn, Py_ssize_t N, Py_ssize_t T, Py_ssize_t F,
                  Py_ssize_t H, int nthreads) noexcept nogil:
    cdef Py_ssize_t MR, NR
    if floating is float:
        MR = FNN_MR_S
        NR = FNN_NR_S
    else:
        MR = FNN_MR_D
        NR = FNN_NR_D
    cdef Py_ssize_t cols = H * (1 if kind == _K_RNN else 4)
    cdef Py_ssize_t gp = _roundup(cols, NR), ntiles = (N + MR - 1) // MR, tt
    cdef long next_tile = 0
    cdef long claimed[_MAX_TEAM]
    cdef double master_done[1]
    cdef int fail = 0
    cdef floating *bp = <floating *> fnn_aligned_alloc(((F + H) * gp + cols + 16) * sizeof(floating))
    if bp == NULL:
        return -1
    cdef floating *bias = bp + (F + H) * gp
    _pack_fwd(kind, w_ih, w_hh, b_ih, b_hh, bp, bias, F, H, gp)
    cdef bint lanes = _use_lanes(H, floating is double)
    cdef Py_ssize_t LB = FNN_LB_S if floating is float else FNN_LB_D
    if lanes:
        ntiles = (N + LB - 1) // LB
    nthreads = _team_for(ntiles, N * T * (F + H) * cols, nthreads)
    for tt in range(nthreads):
        claimed[tt] = 0
    if lanes:
        # the lanes path reads W_ih, W_hh as given and only the packed bias
        if nthreads > 1:
            master_done[0] = 0
            with parallel(num_threads=nthreads):
                tt = fnn_team_rank()
                _lanes_fwd_worker(kind, x, w_ih, w_hh, bias, h, c, gates, hn, N, T, F, H,
                                  &next_tile, &claimed[tt], &fail)
                if tt == 0:
                    master_done[0] = fnn_now()
            _team_report(claimed, master_done, nthreads)
        else:
            _lanes_fwd_worker(kind, x, w_ih, w_hh, bias, h, c, gates, hn, N, T, F, H,
                              &next_tile, &claimed[0], &fail)
    elif nthreads > 1:
        master_done[0] = 0
        with parallel(num_threads=nthreads):
            tt = fnn_team_rank()
            _fwd_worker(kind, x, bp, bias, h, c, gates, hn, N, T, F, H, gp, &next_tile,
                        &claimed[tt], &fail)
            if tt == 0:
                master_done[0] = fnn_now()
        _team_report(claimed, master_done, nthreads)
    else:
        _fwd_worker(kind, x, bp, bias, h, c, gates, hn, N, T, F, H, gp, &next_tile,
                    &claimed[0], &fail)
    fnn_aligned_free(bp)
    return -1 if fail else 0


# ---------------------------------------------------------------- backward


cdef void _pack_bwd(int kind, const floating *w_ih, const floating *w_hh, floating *bp,
                    Py_ssize_t F, Py_ssize_t H, Py_ssize_t gb) noexcept nogil:
    """bp (G, gb): W_hh^T, columns [H: the carry into dh_{t-1} | zero padding]. Rows:
    the G*H gate pre-activation gradients (the GRU's n rows meet d_new * r)."""
    cdef Py_ssize_t p, j, G = H * (1 if kind == _K_RNN else 4 if kind == _K_LSTM else 3)
    for p in range(G * gb):
        bp[p] = 0
    for p in range(G):
        for j in range(H):
            bp[p * gb + j] = w_hh[p * H + j]


cdef int _bwd_tile(int kind, const floating *dh, const floating *h, const floating *c,
                    const floating *gates, const floating *hn, const floating *bp,
                    floating *da, floating *dhid, floating *dx, const floating *x,
                    const floating *wt, floating *part, floating *da_tile, floating *dwp,
                    Py_ssize_t n0, Py_ssize_t m, Py_ssize_t T, Py_ssize_t F, Py_ssize_t H,
                    Py_ssize_t gb, floating *ap, floating *cs, const floating *zeros) noexcept nogil:
    """BPTT for samples n0 .. n0+m-1. ap: G*MR A panel; cs: MR scratch rows of
    gb + H + K ([carry from the sweep, padded | state (dc, or dh_t z) | gradients]).
    part != NULL (small F): the tile's dx (from wt = W_ih^T) here, and its dW_ih^T and
    bias sums into part ([F x G | G]) while its da rows are in cache. da_tile != NULL (the
    GRU, whose da serves nothing else then): the tile's m*T da rows go there, not into da.
    dwp != NULL (with part): the tile's own dW_hh^T (H x G) there, from its d_hid rows (da,
    or the GRU's dhid; t = 0 rows zeroed) against its h rows shifted by one, and the GRU's
    db_hh sums into part's last G. Returns -1 if out of memory."""
    cdef Py_ssize_t MR, NR
    if floating is float:
        MR = FNN_MR_S
        NR = FNN_NR_S
    else:
        MR = FNN_MR_D
        NR = FNN_NR_D
    cdef Py_ssize_t G = H * (1 if kind == _K_RNN else 4 if kind == _K_LSTM else 3)
    cdef Py_ssize_t K = G + (H if kind == _K_GRU else 0)
    cdef Py_ssize_t cstr = gb + H + K, t, r, j, jt, s, f
    cdef floating *row
    cdef floating *st
    cdef floating *g
    cdef const floating *gt
    cdef const floating *dht
    cdef const floating *prev
    cdef const floating *ct
    cdef const floating *hnt
    for j in range(G * MR):
        ap[j] = 0
    for j in range(MR * cstr):
        cs[j] = 0
    for t in range(T - 1, -1, -1):
        for r in range(m):
            row = cs + r * cstr
            st = row + gb
            g = row + gb + H
            s = (n0 + r) * T + t
            dht = dh + s * H
            if _PF_DIST > 0 and t >= _PF_DIST:
                fnn_prefetch(dh + (s - _PF_DIST) * H, H * sizeof(floating))
                if kind == _K_RNN:
                    fnn_prefetch(h + (s - _PF_DIST) * H, H * sizeof(floating))
                else:
                    fnn_prefetch(gates + (s - _PF_DIST) * G, G * sizeof(floating))
                    if kind == _K_LSTM:
                        fnn_prefetch(c + (s - _PF_DIST - 1) * H, 2 * H * sizeof(floating))
                    else:
                        fnn_prefetch(hn + (s - _PF_DIST) * H, H * sizeof(floating))
                        fnn_prefetch(h + (s - _PF_DIST - 1) * H, H * sizeof(floating))
            if kind == _K_LSTM:
                prev = (c + (s - 1) * H) if t > 0 else zeros
                g = da + s * G
                if floating is float:
                    fnn_lstm_bwd_s(H, dht, row, st, gates + s * G, c + s * H, prev, g, g + H, g + 2 * H, g + 3 * H)
                else:
                    fnn_lstm_bwd_d(H, dht, row, st, gates + s * G, c + s * H, prev, g, g + H, g + 2 * H, g + 3 * H)
            elif kind == _K_GRU:
                prev = (h + (s - 1) * H) if t > 0 else zeros
                if floating is float:
                    fnn_gru_bwd_s(H, dht, row, st, gates + s * G, hn + s * H, prev, g, g + H, g + 2 * H, g + 3 * H)
                else:
                    fnn_gru_bwd_d(H, dht, row, st, gates + s * G, hn + s * H, prev, g, g + H, g + 2 * H, g + 3 * H)
                _copy((da_tile + (s - n0 * T) * G) if da_tile != NULL else (da + s * G), g, G)
                _copy(dhid + s * G, g, 2 * H)
                _copy(dhid + s * G + 2 * H, g + 3 * H, H)
            else:
                g = da + s * G
                if floating is float:
                    fnn_rnn_bwd_s(H, dht, row, h + s * H, g)
                else:
                    fnn_rnn_bwd_d(H, dht, row, h + s * H, g)
            if m == 8 and MR == 8:
                continue   # the whole panel below
            if kind == _K_GRU:
                for j in range(2 * H):
                    ap[j * MR + r] = g[j]
                for j in range(2 * H, G):
                    ap[j * MR + r] = g[j + H]
            else:
                for j in range(G):
                    ap[j * MR + r] = g[j]
        if t == 0:
            break
        if m == 8 and MR == 8:
            if kind == _K_GRU:   # rows of [d_r | d_z | d_new | d_new r], cstr apart
                _panel8(cs + gb + H, cstr, 2 * H, ap)
                _panel8(cs + gb + H + 3 * H, cstr, H, ap + 2 * H * MR)
            else:                # the rows of da, T*G apart
                _panel8(da + (n0 * T + t) * G, T * G, G, ap)
        for jt in range(gb // NR):
            _ukr(G, ap, bp + jt * NR, gb, cs + jt * NR, cstr)
    cdef floating *dat
    if part != NULL:   # the tile's m*T rows of da are contiguous, and still in cache
        s = n0 * T
        dat = da_tile if da_tile != NULL else da + s * G
        if floating is float:
            if dx != NULL:
                fnn_rec_dx_s(m * T, G, F, dat, wt, dx + s * F)
            fnn_rec_colsums_s(m * T, G, F, dat, x + s * F, part, part + G * F)
        else:
            if dx != NULL:
                fnn_rec_dx_d(m * T, G, F, dat, wt, dx + s * F)
            fnn_rec_colsums_d(m * T, G, F, dat, x + s * F, part, part + G * F)
    if dwp != NULL:   # (the rows just used for dx and the sums, so in cache)
        s = n0 * T
        dat = (dhid if kind == _K_GRU else da) + s * G
        if kind == _K_GRU:
            _colsum_k(dat, part + G * F + G, m * T, G)
        for r in range(m):
            for j in range(G):
                dat[r * T * G + j] = 0
        if m * T < 2:
            for j in range(G * H):
                dwp[j] = 0
        elif _gemm(h + s * H, dat + G, dwp, H, G, m * T - 1, True, False, False, 1) != 0:
            return -1
    return 0


cdef void _bwd_worker(int kind, const floating *dh, const floating *h, const floating *c,
                      const floating *gates, const floating *hn, const floating *bp,
                      floating *da, floating *dhid, floating *dx, const floating *x,
                      const floating *wt, floating *parts, Py_ssize_t pw, floating *dwparts,
                      Py_ssize_t N, Py_ssize_t T, Py_ssize_t F, Py_ssize_t H, Py_ssize_t gb,
                      long *next_tile, long *claimed, int *fail) noexcept nogil:
    cdef Py_ssize_t MR
    if floating is float:
        MR = FNN_MR_S
    else:
        MR = FNN_MR_D
    cdef Py_ssize_t G = H * (1 if kind == _K_RNN else 4 if kind == _K_LSTM else 3)
    cdef Py_ssize_t K = G + (H if kind == _K_GRU else 0)
    cdef Py_ssize_t ntiles = (N + MR - 1) // MR, q, n0, j
    cdef Py_ssize_t a_sz = _roundup(G * MR, 16), c_sz = _roundup(MR * (gb + H + K), 16)
    cdef Py_ssize_t z_sz = _roundup(H, 16)
    # the GRU's fused path keeps da per tile (MR*T rows), not in an (N*T, G) array
    cdef Py_ssize_t t_sz = MR * T * G if (parts != NULL and kind == _K_GRU) else 0
    cdef floating *buf = NULL
    while True:
        q = fnn_atomic_next(next_tile)
        if q >= ntiles:
            break
        if buf == NULL:
            buf = <floating *> fnn_aligned_alloc((a_sz + c_sz + z_sz + t_sz) * sizeof(floating))
            if buf == NULL:
                fail[0] = 1
                return
            for j in range(z_sz):
                buf[a_sz + c_sz + j] = 0
        claimed[0] += 1
        n0 = q * MR
        if _bwd_tile(kind, dh, h, c, gates, hn, bp, da, dhid, dx, x, wt,
                     NULL if parts == NULL else parts + q * pw,
                     (buf + a_sz + c_sz + z_sz) if t_sz else NULL,
                     NULL if dwparts == NULL else dwparts + q * G * H, n0, _imin(MR, N - n0),
                     T, F, H, gb, buf, buf + a_sz, buf + a_sz + c_sz) != 0:
            fail[0] = 1
    if buf != NULL:
        fnn_aligned_free(buf)


cdef int _rec_bwd(int kind, const floating *dh, const floating *x, const floating *h,
                  const floating *c, const floating *gates, const floating *hn,
                  const floating *w_ih, const floating *w_hh, floating *dx, floating *dw_ih,
                  floating *dw_hh, floating *db_ih, floating *db_hh, Py_ssize_t N, Py_ssize_t T,
                  Py_ssize_t F, Py_ssize_t H, int nthreads) noexcept nogil:
    """BPTT: the per-step sweeps (threads over sample tiles, or lane blocks), then dW_hh
    from one GEMM over every (n, t) row, dW_ih and the bias gradients from column sums
    (a GEMM for wide inputs)."""
    cdef Py_ssize_t MR, NR
    if floating is float:
        MR = FNN_MR_S
        NR = FNN_NR_S
    else:
        MR = FNN_MR_D
        NR = FNN_NR_D
    cdef Py_ssize_t G = H * (1 if kind == _K_RNN else 4 if kind == _K_LSTM else 3)
    cdef Py_ssize_t K = G + (H if kind == _K_GRU else 0)
    cdef Py_ssize_t gb = _roundup(H, NR), ntiles = (N + MR - 1) // MR, tt, NT = N * T
    cdef Py_ssize_t i, t, j, q
    cdef long next_tile = 0
    cdef long claimed[_MAX_TEAM]
    cdef double master_done[1]
    cdef int fail = 0, rc
    cdef Py_ssize_t bp_sz = _roundup(G * gb, 16), da_sz = _roundup(NT * G, 16)
    cdef Py_ssize_t dh_sz = da_sz if kind == _K_GRU else 0
    cdef Py_ssize_t wt_sz = _roundup(G * F, 16)
    cdef bint lanes = _use_lanes(H, floating is double)
    cdef Py_ssize_t LB = FNN_LB_S if floating is float else FNN_LB_D
    cdef Py_ssize_t accb
    if lanes:
        if floating is float:
            accb = fnn_lanes_accbytes_s(kind, F, H)
        else:
            accb = fnn_lanes_accbytes_d(kind, F, H)
        if accb <= _RNN_FUSED_MAX_BYTES:
            return _rec_bwd_fused(kind, dh, x, h, c, gates, hn, w_ih, w_hh, dx, dw_ih, dw_hh,
                                  db_ih, db_hh, N, T, F, H, nthreads)
    # the rows path with a small F sums dx, dW_ih and db in its sweep: per tile
    # partials (pw values each), added in tile order (the same on any threads)
    cdef bint fused = (not lanes) and F < 16
    # ... and their dW_hh (and the GRU's db_hh), while the partials stay small
    cdef bint tile_dw = fused and ntiles * G * H <= _RNN_TILE_DW_MAX
    cdef Py_ssize_t pw = G * (F + (2 if tile_dw and kind == _K_GRU else 1))
    cdef Py_ssize_t parts_sz = _roundup(ntiles * pw, 16) if fused else 0
    if fused and kind == _K_GRU:
        da_sz = 0   # the tiles keep their da rows (dW_hh comes from d_hid)
    cdef Py_ssize_t dwp_sz = _roundup(ntiles * G * H, 16) if tile_dw else 0
    cdef floating *bp = <floating *> fnn_aligned_alloc(
        (bp_sz + da_sz + dh_sz + wt_sz + _roundup(G * H, 16) + parts_sz + dwp_sz) * sizeof(floating))
    if bp == NULL:
        return -1
    cdef floating *da = bp + bp_sz
    cdef floating *dhid = da + da_sz
    cdef floating *wt = dhid + dh_sz
    cdef floating *dwt = wt + wt_sz
    cdef floating *parts = dwt + _roundup(G * H, 16) if fused else NULL
    cdef floating *dwparts = (dwt + _roundup(G * H, 16) + parts_sz) if tile_dw else NULL
    cdef floating *pq
    if F < 16:
        for i in range(G):
            for j in range(F):
                wt[j * G + i] = w_ih[i * F + j]
    for i in range(parts_sz):
        parts[i] = 0
    if lanes:
        # W_hh^T (H, G) for the carry; bp has room (G * gb >= G * H)
        for i in range(G):
            for j in range(H):
                bp[j * G + i] = w_hh[i * H + j]
        ntiles = (N + LB - 1) // LB
    else:
        _pack_bwd(kind, w_ih, w_hh, bp, F, H, gb)
    nthreads = _team_for(ntiles, NT * K * (F + H), nthreads)
    for tt in range(nthreads):
        claimed[tt] = 0
    if lanes:
        if nthreads > 1:
            master_done[0] = 0
            with parallel(num_threads=nthreads):
                tt = fnn_team_rank()
                _lanes_bwd_worker(kind, dh, x, h, c, gates, hn, bp, NULL, da, dhid, NULL, NULL, 0,
                                  N, T, F, H, &next_tile, &claimed[tt], &fail)
                if tt == 0:
                    master_done[0] = fnn_now()
            _team_report(claimed, master_done, nthreads)
        else:
            _lanes_bwd_worker(kind, dh, x, h, c, gates, hn, bp, NULL, da, dhid, NULL, NULL, 0,
                              N, T, F, H, &next_tile, &claimed[0], &fail)
    elif nthreads > 1:
        master_done[0] = 0
        with parallel(num_threads=nthreads):
            tt = fnn_team_rank()
            _bwd_worker(kind, dh, h, c, gates, hn, bp, da, dhid, dx, x, wt, parts, pw, dwparts,
                        N, T, F, H, gb, &next_tile, &claimed[tt], &fail)
            if tt == 0:
                master_done[0] = fnn_now()
        _team_report(claimed, master_done, nthreads)
    else:
        _bwd_worker(kind, dh, h, c, gates, hn, bp, da, dhid, dx, x, wt, parts, pw, dwparts,
                    N, T, F, H, gb, &next_tile, &claimed[0], &fail)
    if fail:
        fnn_aligned_free(bp)
        return -1
    # dx = da W_ih over all N*T rows (the GRU's da holds d_r, d_z, d_new: W_ih's rows)
    rc = 0
    if dx != NULL and not fused:
        if F < 16:
            if floating is float:
                fnn_rec_dx_s(NT, G, F, da, wt, dx)
            else:
                fnn_rec_dx_d(NT, G, F, da, wt, dx)
        else:
            rc = _gemm(da, w_ih, dx, NT, F, G, False, False, False, nthreads)
        if rc != 0:
            fnn_aligned_free(bp)
            return rc
    # dW_ih and db_ih from da; db_hh from d_hid (the GRU's) or equal to db_ih
    for i in range(G):
        db_ih[i] = 0
    if fused:
        for i in range(G * F):
            wt[i] = 0
        for q in range(ntiles):
            pq = parts + q * pw
            for i in range(G * F):
                wt[i] += pq[i]
            for i in range(G):
                db_ih[i] += pq[G * F + i]
        for i in range(G):
            for j in range(F):
                dw_ih[i * F + j] = wt[j * G + i]
    elif F < 16:
        for i in range(G * F):
            wt[i] = 0
        if floating is float:
            fnn_rec_colsums_s(NT, G, F, da, x, wt, db_ih)
        else:
            fnn_rec_colsums_d(NT, G, F, da, x, wt, db_ih)
        for i in range(G):
            for j in range(F):
                dw_ih[i * F + j] = wt[j * G + i]
    else:
        _colsum_k(da, db_ih, NT, G)
        rc = _gemm(da, x, dw_ih, G, F, NT, True, False, False, nthreads)
    cdef floating *dsrc = dhid if kind == _K_GRU else da
    if kind == _K_GRU and tile_dw:
        for i in range(G):
            db_hh[i] = 0
        for q in range(ntiles):
            pq = parts + q * pw + G * F + G
            for i in range(G):
                db_hh[i] += pq[i]
    elif kind == _K_GRU:
        _colsum_k(dhid, db_hh, NT, G)
    else:
        _copy(db_hh, db_ih, G)
    if tile_dw:   # the tiles' dW_hh^T, added in tile order
        for i in range(G * H):
            dwt[i] = 0
        for q in range(ntiles):
            pq = dwparts + q * G * H
            for i in range(G * H):
                dwt[i] += pq[i]
        _tr_block(dwt, G, H, G, dw_hh, H)
        fnn_aligned_free(bp)
        return rc
    # dW_hh = sum over rows s with t > 0 of d_hid[s]^T h[s - 1]: with the t = 0 rows of d_hid
    # zeroed (da has served dx and the sums above), one GEMM of rows 1.. against h's rows
    # 0.. (h shifted by a row, no copy) gives it
    for i in range(N):
        for j in range(G):
            dsrc[i * T * G + j] = 0
    # (as dW_hh^T = h^T d_hid: the GEMM then packs the narrow h and reads d_hid in place)
    if rc == 0:
        if NT > 1:
            rc = _gemm(h, dsrc + G, dwt, H, G, NT - 1, True, False, False, nthreads)
            for i in range(G):
                for j in range(H):
                    dw_hh[i * H + j] = dwt[j * G + i]
        else:
            for i in range(G * H):
                dw_hh[i] = 0
    fnn_aligned_free(bp)
    return rc


# ----------------------------------------------------------- entry points


cdef inline cnp.ndarray _empty3(Py_ssize_t a, Py_ssize_t b, Py_ssize_t c, int typenum):
    cdef cnp.npy_intp dims[3]
    dims[0] = a
    dims[1] = b
    dims[2] = c
    return cnp.PyArray_EMPTY(3, dims, typenum, 0)


cdef inline void *_ptr(cnp.ndarray a):
    return NULL if a is None else cnp.PyArray_DATA(a)


cdef object _rec_forward(int kind, cnp.ndarray X, cnp.ndarray WI, cnp.ndarray WH,
                         cnp.ndarray BI, cnp.ndarray BH):
    cdef Py_ssize_t N = X.shape[0], T = X.shape[1], F = X.shape[2], H = WH.shape[1]
    cdef Py_ssize_t G = WH.shape[0]
    cdef int typ = cnp.PyArray_TYPE(X), rc, nth = _num_threads
    cdef cnp.ndarray Hs = _empty3(N, T, H, typ)
    cdef cnp.ndarray Cs = None, Gs = None, HN = None
    if kind == _K_LSTM:
        Cs = _empty3(N, T, H, typ)
    if kind != _K_RNN:
        Gs = _empty3(N, T, G, typ)
    if kind == _K_GRU:
        HN = _empty3(N, T, H, typ)
    cdef void *xp = _ptr(X)
    cdef void *wip = _ptr(WI)
    cdef void *whp = _ptr(WH)
    cdef void *bip = _ptr(BI)
    cdef void *bhp = _ptr(BH)
    cdef void *hp = _ptr(Hs)
    cdef void *cp = _ptr(Cs)
    cdef void *gp = _ptr(Gs)
    cdef void *hnp = _ptr(HN)
    if typ == cnp.NPY_FLOAT32:
        with nogil:
            rc = _rec_fwd(kind, <const float *> xp, <const float *> wip, <const float *> whp,
                          <const float *> bip, <const float *> bhp, <float *> hp, <float *> cp,
                          <float *> gp, <float *> hnp, N, T, F, H, nth)
    else:
        with nogil:
            rc = _rec_fwd(kind, <const double *> xp, <const double *> wip, <const double *> whp,
                          <const double *> bip, <const double *> bhp, <double *> hp, <double *> cp,
                          <double *> gp, <double *> hnp, N, T, F, H, nth)
    if rc != 0:
        raise MemoryError("recurrent kernel: cannot allocate work buffers")
    if kind == _K_LSTM:
        return Hs, Cs, Gs
    if kind == _K_GRU:
        return Hs, Gs, HN
    return Hs


cdef object _rec_backward(int kind, cnp.ndarray DH, cnp.ndarray X, cnp.ndarray Hs,
                          cnp.ndarray Cs, cnp.ndarray Gs, cnp.ndarray HN, cnp.ndarray WI,
                          cnp.ndarray WH, bint need_dx):
    cdef Py_ssize_t N = X.shape[0], T = X.shape[1], F = X.shape[2], H = WH.shape[1]
    cdef Py_ssize_t G = WH.shape[0]
    cdef int typ = cnp.PyArray_TYPE(X), rc, nth = _num_threads
    cdef cnp.ndarray DX = _empty3(N, T, F, typ) if need_dx else None
    cdef cnp.ndarray DWI = _empty2(G, F, typ)
    cdef cnp.ndarray DWH = _empty2(G, H, typ)
    cdef cnp.ndarray DBI = _empty1(G, typ)
    cdef cnp.ndarray DBH = _empty1(G, typ)
    cdef void *dhp = _ptr(DH)
    cdef void *xp = _ptr(X)
    cdef void *hp = _ptr(Hs)
    cdef void *cp = _ptr(Cs)
    cdef void *gp = _ptr(Gs)
    cdef void *hnp = _ptr(HN)
    cdef void *wip = _ptr(WI)
    cdef void *whp = _ptr(WH)
    cdef void *dxp = _ptr(DX)
    cdef void *dwip = _ptr(DWI)
    cdef void *dwhp = _ptr(DWH)
    cdef void *dbip = _ptr(DBI)
    cdef void *dbhp = _ptr(DBH)
    if typ == cnp.NPY_FLOAT32:
        with nogil:
            rc = _rec_bwd(kind, <const float *> dhp, <const float *> xp, <const float *> hp,
                          <const float *> cp, <const float *> gp, <const float *> hnp,
                          <const float *> wip, <const float *> whp, <float *> dxp,
                          <float *> dwip, <float *> dwhp, <float *> dbip, <float *> dbhp,
                          N, T, F, H, nth)
    else:
        with nogil:
            rc = _rec_bwd(kind, <const double *> dhp, <const double *> xp, <const double *> hp,
                          <const double *> cp, <const double *> gp, <const double *> hnp,
                          <const double *> wip, <const double *> whp, <double *> dxp,
                          <double *> dwip, <double *> dwhp, <double *> dbip, <double *> dbhp,
                          N, T, F, H, nth)
    if rc != 0:
        raise MemoryError("recurrent backward kernel: cannot allocate work buffers")
    return DX, DWI, DWH, DBI, DBH


def rnn(x, w_ih, w_hh, b_ih, b_hh):
    """Elman RNN: h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh); returns h (N, T, H) (reference.rnn)."""
    return _rec_forward(_K_RNN, x, w_ih, w_hh, b_ih, b_hh)


def rnn_backward(dh, x, h, w_ih, w_hh, need_dx=True):
    """BPTT from dh (N, T, H): (dx or None, dw_ih, dw_hh, db_ih, db_hh) (reference.rnn_backward)."""
    return _rec_backward(_K_RNN, dh, x, h, None, None, None, w_ih, w_hh, need_dx)


def lstm(x, w_ih, w_hh, b_ih, b_hh):
    """LSTM (gates i, f, g, o): (h, c, gates after activation) (reference.lstm)."""
    return _rec_forward(_K_LSTM, x, w_ih, w_hh, b_ih, b_hh)


def lstm_backward(dh, x, h, c, gates, w_ih, w_hh, need_dx=True):
    """BPTT: (dx or None, dw_ih, dw_hh, db_ih, db_hh) (reference.lstm_backward)."""
    return _rec_backward(_K_LSTM, dh, x, h, c, gates, None, w_ih, w_hh, need_dx)


def gru(x, w_ih, w_hh, b_ih, b_hh):
    """GRU (gates r, z, n): (h, gates, hn = W_hn h_{t-1} + b_hn) (reference.gru)."""
    return _rec_forward(_K_GRU, x, w_ih, w_hh, b_ih, b_hh)


def gru_backward(dh, x, h, gates, hn, w_ih, w_hh, need_dx=True):
    """BPTT: (dx or None, dw_ih, dw_hh, db_ih, db_hh) (reference.gru_backward)."""
    return _rec_backward(_K_GRU, dh, x, h, None, gates, hn, w_ih, w_hh, need_dx)


# ------------------------------------------- both directions of a layer at once
#
# A bidirectional layer's two directions are independent calls of the kernels
# above. One direction at batch 100 is a single-threaded call (under
# _RNN_PAR_MIN_WORK, or 7 lane blocks), so one after the other leaves the
# second core idle: _recurrent_pair runs them in one OpenMP region of 2
# threads, one direction each and single-threaded inside. Every direction runs
# the same code on the same data as alone on one thread (tiles and lane blocks
# never depend on the thread count, the GEMMs split no K), so the results are
# bit-identical to the sequential calls.

cdef struct _RecJob:
    bint backward
    bint is_double
    int kind
    Py_ssize_t N, T, F, H
    void *x
    void *wi
    void *wh
    void *bi
    void *bh
    void *h
    void *c
    void *g
    void *hn
    void *dh
    void *dx
    void *dwi
    void *dwh
    void *dbi
    void *dbh
    int rc


cdef void _run_job(_RecJob *j, int nthreads) noexcept nogil:
    if not j.backward:
        if j.is_double:
            j.rc = _rec_fwd(j.kind, <const double *> j.x, <const double *> j.wi, <const double *> j.wh,
                            <const double *> j.bi, <const double *> j.bh, <double *> j.h, <double *> j.c,
                            <double *> j.g, <double *> j.hn, j.N, j.T, j.F, j.H, nthreads)
        else:
            j.rc = _rec_fwd(j.kind, <const float *> j.x, <const float *> j.wi, <const float *> j.wh,
                            <const float *> j.bi, <const float *> j.bh, <float *> j.h, <float *> j.c,
                            <float *> j.g, <float *> j.hn, j.N, j.T, j.F, j.H, nthreads)
    elif j.is_double:
        j.rc = _rec_bwd(j.kind, <const double *> j.dh, <const double *> j.x, <const double *> j.h,
                        <const double *> j.c, <const double *> j.g, <const double *> j.hn,
                        <const double *> j.wi, <const double *> j.wh, <double *> j.dx,
                        <double *> j.dwi, <double *> j.dwh, <double *> j.dbi, <double *> j.dbh,
                        j.N, j.T, j.F, j.H, nthreads)
    else:
        j.rc = _rec_bwd(j.kind, <const float *> j.dh, <const float *> j.x, <const float *> j.h,
                        <const float *> j.c, <const float *> j.g, <const float *> j.hn,
                        <const float *> j.wi, <const float *> j.wh, <float *> j.dx,
                        <float *> j.dwi, <float *> j.dwh, <float *> j.dbi, <float *> j.dbh,
                        j.N, j.T, j.F, j.H, nthreads)


cdef void _pair_worker(_RecJob *jobs, long *next_job, long *claimed) noexcept nogil:
    """Run the jobs left (a team of one, OpenMP's choice, runs both), single-threaded."""
    cdef long q
    while True:
        q = fnn_atomic_next(next_job)
        if q >= 2:
            break
        claimed[0] += 1
        _run_job(&jobs[q], 1)


cdef object _fwd_job(int kind, tuple a, _RecJob *j):
    """Fill j for a forward call on the checked arrays a = (x, w_ih, w_hh, b_ih, b_hh);
    returns the outputs it will write (the kernel's return value)."""
    cdef cnp.ndarray X = a[0], WH = a[2]
    cdef Py_ssize_t N = X.shape[0], T = X.shape[1], H = WH.shape[1], G = WH.shape[0]
    cdef int typ = cnp.PyArray_TYPE(X)
    cdef cnp.ndarray Hs = _empty3(N, T, H, typ)
    cdef cnp.ndarray Cs = _empty3(N, T, H, typ) if kind == _K_LSTM else None
    cdef cnp.ndarray Gs = _empty3(N, T, G, typ) if kind != _K_RNN else None
    cdef cnp.ndarray HN = _empty3(N, T, H, typ) if kind == _K_GRU else None
    j.backward = 0
    j.is_double = typ == cnp.NPY_FLOAT64
    j.kind = kind
    j.N = N
    j.T = T
    j.F = X.shape[2]
    j.H = H
    j.x = _ptr(X)
    j.wi = _ptr(a[1])
    j.wh = _ptr(WH)
    j.bi = _ptr(a[3])
    j.bh = _ptr(a[4])
    j.h = _ptr(Hs)
    j.c = _ptr(Cs)
    j.g = _ptr(Gs)
    j.hn = _ptr(HN)
    j.rc = 0
    if kind == _K_LSTM:
        return Hs, Cs, Gs
    if kind == _K_GRU:
        return Hs, Gs, HN
    return Hs


cdef object _bwd_job(int kind, tuple a, _RecJob *j):
    """Fill j for a backward call on the checked arguments of rnn/lstm/gru_backward;
    returns (dx or None, dw_ih, dw_hh, db_ih, db_hh) it will write."""
    cdef cnp.ndarray DH = a[0], X = a[1], Hs = a[2], WI = a[len(a) - 3], WH = a[len(a) - 2]
    cdef cnp.ndarray Cs = None, Gs = None, HN = None
    cdef bint need_dx = a[len(a) - 1]
    if kind == _K_LSTM:
        Cs, Gs = a[3], a[4]
    elif kind == _K_GRU:
        Gs, HN = a[3], a[4]
    cdef Py_ssize_t N = X.shape[0], T = X.shape[1], F = X.shape[2], H = WH.shape[1], G = WH.shape[0]
    cdef int typ = cnp.PyArray_TYPE(X)
    cdef cnp.ndarray DX = _empty3(N, T, F, typ) if need_dx else None
    cdef cnp.ndarray DWI = _empty2(G, F, typ), DWH = _empty2(G, H, typ)
    cdef cnp.ndarray DBI = _empty1(G, typ), DBH = _empty1(G, typ)
    j.backward = 1
    j.is_double = typ == cnp.NPY_FLOAT64
    j.kind = kind
    j.N = N
    j.T = T
    j.F = F
    j.H = H
    j.dh = _ptr(DH)
    j.x = _ptr(X)
    j.h = _ptr(Hs)
    j.c = _ptr(Cs)
    j.g = _ptr(Gs)
    j.hn = _ptr(HN)
    j.wi = _ptr(WI)
    j.wh = _ptr(WH)
    j.dx = _ptr(DX)
    j.dwi = _ptr(DWI)
    j.dwh = _ptr(DWH)
    j.dbi = _ptr(DBI)
    j.dbh = _ptr(DBH)
    j.rc = 0
    return DX, DWI, DWH, DBI, DBH


_PAIR_KINDS = {"rnn": _K_RNN, "lstm": _K_LSTM, "gru": _K_GRU}
_PAIR_NSAVED = {_K_RNN: 1, _K_LSTM: 3, _K_GRU: 3}
# 0: never run the two directions at once (tests and A/B: the sequential calls)
cdef bint _RNN_PAIR_CONCURRENT = 1


def _set_rnn_pair_concurrent(bint on):
    """Tuning hook: whether _recurrent_pair runs its two calls at once on 2 threads
    (else one after the other, each with the usual threads); returns the old setting."""
    global _RNN_PAIR_CONCURRENT
    old = bool(_RNN_PAIR_CONCURRENT)
    _RNN_PAIR_CONCURRENT = on
    return old


def _pair_checked(cell, bint backward, int kind, tuple a, tuple b):
    """Both calls' arguments through the public kernels' checks."""
    from fastnn._kernels import checks
    check = checks.recurrent(cell)[1 if backward else 0]
    args = []
    for arg in (a, b):
        if backward and len(arg) == _PAIR_NSAVED[kind] + 5:   # need_dx given as the last item
            args.append(check(*arg[:len(arg) - 1], need_dx=arg[len(arg) - 1])[0])
        else:
            args.append(check(*arg)[0])
    return args


def _recurrent_pair(kernel, a, b, bint check=True):
    """Two calls of one recurrent kernel ('rnn', 'lstm', 'gru' or their '_backward'), a and b
    the argument tuples of each (a bidirectional layer's two directions; a backward's need_dx
    may be its last item), checked as the public kernels check them, run at once on two
    threads where this module may use two, else one after the other. Returns (result of a,
    result of b), each what the kernel returns; bit-identical to the two calls in turn.
    check=False: the raw-kernel contract (arrays already checked, as the layers call it)."""
    cdef str name = str(kernel)
    cdef bint backward = name.endswith("_backward")
    cell = name[:len(name) - len("_backward")] if backward else name
    if cell not in _PAIR_KINDS:
        raise ValueError(f"_recurrent_pair: unknown recurrent kernel {kernel!r} "
                         f"(rnn, lstm, gru or their _backward)")
    cdef int kind = _PAIR_KINDS[cell]
    for arg in (a, b):
        if not isinstance(arg, tuple):
            raise TypeError(f"_recurrent_pair: each call's arguments must be a tuple, got {type(arg).__name__}")
    if not check:
        args = [a, b]
    else:
        args = _pair_checked(cell, backward, kind, a, b)
    cdef cnp.ndarray first = args[0][1], second = args[1][1]
    if cnp.PyArray_TYPE(first) != cnp.PyArray_TYPE(second):
        raise ValueError("_recurrent_pair: both calls must have one dtype, got "
                         f"{args[0][1].dtype} and {args[1][1].dtype}")
    cdef _RecJob jobs[2]
    cdef int nth = _num_threads, tt
    if backward:
        outs = (_bwd_job(kind, args[0], &jobs[0]), _bwd_job(kind, args[1], &jobs[1]))
    else:
        outs = (_fwd_job(kind, args[0], &jobs[0]), _fwd_job(kind, args[1], &jobs[1]))
    cdef long next_job = 0
    cdef long claimed[2]
    cdef double master_done[1]
    if _RNN_PAIR_CONCURRENT and nth >= 2:
        nth = _team_size(2)
    else:
        nth = 1
    with nogil:
        if nth > 1:
            claimed[0] = 0
            claimed[1] = 0
            master_done[0] = 0
            with parallel(num_threads=2):
                tt = fnn_team_rank()
                _pair_worker(jobs, &next_job, &claimed[tt])
                if tt == 0:
                    master_done[0] = fnn_now()
            _team_report(claimed, master_done, 2)
        else:
            _run_job(&jobs[0], _num_threads)
            _run_job(&jobs[1], _num_threads)
    if jobs[0].rc != 0 or jobs[1].rc != 0:
        raise MemoryError("recurrent kernel: cannot allocate work buffers")
    return outs[0], outs[1]
