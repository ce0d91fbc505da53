/* AVX-512 edge tiles of the GEMM microkernels in fnn_simd.h (reference.matmul): an MR x NR tile
 * whose valid part is at most half as wide (n <= NR/2) or half as tall (m <= 4) runs only the
 * FMAs of that half. Small layers live on edges (N = 100 = 3*32 + 4, N = 40 = 32 + 8, M = 10):
 * the full 8x32 tile spent up to 7/8 of its FMAs on padding there. Each output element is the
 * same sum in the same order as in the full tile, so results do not change. Included by
 * fnn_simd.h inside its AVX-512 section. */
#ifndef FNN_UKR_EDGE512_H
#define FNN_UKR_EDGE512_H

/* T: element type, V: vector type, W: lanes, S: intrinsic suffix (ps/pd), MASK: mask type.
 * a is the packed A panel (8 per k step), b the packed B panel (ldb apart). */
#define FNN_EDGE512_KERNELS(NAME, T, V, W, S, MASK)                                              \
/* rows 0..7 of a tile, one vector of columns (n <= W) */                                       \
static void NAME##_narrow(long k, const T *FNN_RESTRICT a, const T *FNN_RESTRICT b, long ldb,    \
                          T *FNN_RESTRICT c, long ldc, int m, int n, int acc)                    \
{                                                                                               \
    V x0 = _mm512_setzero_##S(), x1 = x0, x2 = x0, x3 = x0, x4 = x0, x5 = x0, x6 = x0, x7 = x0;   \
    for (long p = 0; p < k; ++p) {                                                              \
        V b0 = _mm512_loadu_##S(b);                                                             \
        x0 = _mm512_fmadd_##S(_mm512_set1_##S(a[0]), b0, x0);                                    \
        x1 = _mm512_fmadd_##S(_mm512_set1_##S(a[1]), b0, x1);                                    \
        x2 = _mm512_fmadd_##S(_mm512_set1_##S(a[2]), b0, x2);                                    \
        x3 = _mm512_fmadd_##S(_mm512_set1_##S(a[3]), b0, x3);                                    \
        x4 = _mm512_fmadd_##S(_mm512_set1_##S(a[4]), b0, x4);                                    \
        x5 = _mm512_fmadd_##S(_mm512_set1_##S(a[5]), b0, x5);                                    \
        x6 = _mm512_fmadd_##S(_mm512_set1_##S(a[6]), b0, x6);                                    \
        x7 = _mm512_fmadd_##S(_mm512_set1_##S(a[7]), b0, x7);                                    \
        a += 8; b += ldb;                                                                       \
    }                                                                                           \
    MASK k0 = n >= W ? (MASK)~0u : (MASK)((1u << n) - 1u);                                      \
    V rows[8] = {x0, x1, x2, x3, x4, x5, x6, x7};                                               \
    for (int r = 0; r < m; ++r) {                                                               \
        T *cr = c + (long)r * ldc;                                                              \
        V v = rows[r];                                                                          \
        if (acc) v = _mm512_add_##S(v, _mm512_maskz_loadu_##S(k0, cr));                          \
        _mm512_mask_storeu_##S(cr, k0, v);                                                      \
    }                                                                                           \
}                                                                                               \
/* rows 0..3 of a tile, both vectors of columns (W < n <= 2W) */                               \
static void NAME##_short(long k, const T *FNN_RESTRICT a, const T *FNN_RESTRICT b, long ldb,     \
                         T *FNN_RESTRICT c, long ldc, int m, int n, int acc)                     \
{                                                                                               \
    V x00 = _mm512_setzero_##S(), x01 = x00, x10 = x00, x11 = x00;                               \
    V x20 = x00, x21 = x00, x30 = x00, x31 = x00;                                               \
    for (long p = 0; p < k; ++p) {                                                              \
        V b0 = _mm512_loadu_##S(b), b1 = _mm512_loadu_##S(b + W), av;                           \
        av = _mm512_set1_##S(a[0]); x00 = _mm512_fmadd_##S(av, b0, x00); x01 = _mm512_fmadd_##S(av, b1, x01); \
        av = _mm512_set1_##S(a[1]); x10 = _mm512_fmadd_##S(av, b0, x10); x11 = _mm512_fmadd_##S(av, b1, x11); \
        av = _mm512_set1_##S(a[2]); x20 = _mm512_fmadd_##S(av, b0, x20); x21 = _mm512_fmadd_##S(av, b1, x21); \
        av = _mm512_set1_##S(a[3]); x30 = _mm512_fmadd_##S(av, b0, x30); x31 = _mm512_fmadd_##S(av, b1, x31); \
        a += 8; b += ldb;                                                                       \
    }                                                                                           \
    MASK k1 = n >= 2 * W ? (MASK)~0u : (MASK)((1u << (n - W)) - 1u);                             \
    V lo[4] = {x00, x10, x20, x30}, hi[4] = {x01, x11, x21, x31};                                \
    for (int r = 0; r < m; ++r) {                                                               \
        T *cr = c + (long)r * ldc;                                                              \
        V v0 = lo[r], v1 = hi[r];                                                               \
        if (acc) {                                                                              \
            v0 = _mm512_add_##S(v0, _mm512_loadu_##S(cr));                                       \
            v1 = _mm512_add_##S(v1, _mm512_maskz_loadu_##S(k1, cr + W));                         \
        }                                                                                       \
        _mm512_storeu_##S(cr, v0);                                                              \
        _mm512_mask_storeu_##S(cr + W, k1, v1);                                                 \
    }                                                                                           \
}

FNN_EDGE512_KERNELS(fnn_ukr_s, float, __m512, 16, ps, __mmask16)
FNN_EDGE512_KERNELS(fnn_ukr_d, double, __m512d, 8, pd, __mmask8)
#undef FNN_EDGE512_KERNELS

/* In fnn_ukr_s/_d: an edge tile goes to its half kernel and the caller returns. */
#define FNN_EDGE512_DISPATCH(NAME, W)                                                   \
    do {                                                                                \
        if (n <= (W)) { NAME##_narrow(k, a, b, ldb, c, ldc, m, n, acc); return; }       \
        if (m <= 4) { NAME##_short(k, a, b, ldb, c, ldc, m, n, acc); return; }          \
    } while (0)

#endif
