/* GEMM register-tile microkernels (AVX-512 / AVX2 / plain C, picked by the compiler's ISA macros) and vectorizable exp/log: the inner loops behind reference.matmul and the activations/losses. */
#ifndef FNN_SIMD_H
#define FNN_SIMD_H

#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <math.h>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(_MSC_VER)
#include <intrin.h>
#endif

#if defined(_MSC_VER)
#define FNN_RESTRICT __restrict
#define FNN_INLINE static __forceinline
#define FNN_ALIGNED(T, name, n) __declspec(align(32)) T name[n]
#else
#define FNN_RESTRICT __restrict__
#define FNN_INLINE static inline __attribute__((always_inline))
#define FNN_ALIGNED(T, name, n) T name[n] __attribute__((aligned(32)))
#endif

/* ------------------------------------------------------------ build facts */

#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__FMA__)
#define FNN_ISA_AVX512 1
#define FNN_ISA_NAME "avx512"
#elif defined(__AVX2__) && defined(__FMA__)
#define FNN_ISA_AVX2 1
#define FNN_ISA_NAME "avx2"
#else
#define FNN_ISA_GENERIC 1
#define FNN_ISA_NAME "generic"
#endif

static const char *fnn_isa_name(void) { return FNN_ISA_NAME; }

#ifdef _OPENMP
static double fnn_now(void) { return omp_get_wtime(); }
static int fnn_have_openmp(void) { return 1; }
static int fnn_team_size(void) { return omp_get_num_threads(); }
static int fnn_team_rank(void) { return omp_get_thread_num(); }
#else
static double fnn_now(void) { return 0.0; }
static int fnn_have_openmp(void) { return 0; }
static int fnn_team_size(void) { return 1; }
static int fnn_team_rank(void) { return 0; }
#endif

/* Before fork (fastnn/_kernels/forksafe.py): end the calling thread's OpenMP
 * pool; its threads exit and the next parallel region starts a fresh pool, in
 * the parent and in the child alike. GNU libgomp has no fork handler: a child
 * that inherits a live pool waits forever for threads that do not exist in it.
 * 0 on success (or nothing to do), -1 where the runtime cannot pause. */
static int fnn_omp_pause(void) {
#if !defined(_OPENMP)
    return 0;
#elif !defined(_MSC_VER) && (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 9))
    return omp_pause_resource_all(omp_pause_hard) == 0 ? 0 : -1;
#else
    return -1;
#endif
}

/* Hand out the next work item: a relaxed atomic fetch-and-add on a shared counter. */
static long fnn_atomic_next(long *counter) {
#if defined(_MSC_VER)
    return (long)_InterlockedExchangeAdd((volatile long *)counter, 1);
#else
    return __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
#endif
}

static void *fnn_aligned_alloc(size_t bytes) {
    void *p = NULL;
    if (bytes == 0) bytes = 64;
#if defined(_MSC_VER)
    p = _aligned_malloc(bytes, 64);
#else
    if (posix_memalign(&p, 64, bytes) != 0) p = NULL;
#endif
    return p;
}

static void fnn_aligned_free(void *p) {
#if defined(_MSC_VER)
    _aligned_free(p);
#else
    free(p);
#endif
}

/* ------------------------------------------------------------ tile sizes */

/* MR x NR register tiles, MC/KC/NC cache blocks and FNN_DIRECT_B_TILES per ISA:
 * generated from the table in fastnn/_kernels/tiles.py (shared with the Numba GEMM). */
#include "fnn_tiles.h"

/* Edge tiles (m < MR or n < NR): add/store a full tile kept in t. */
#define FNN_EDGE_STORE(T, t, NR, c, ldc, m, n, acc)                      \
    do {                                                                 \
        for (int r_ = 0; r_ < (m); ++r_) {                               \
            T *cr_ = (c) + (long)r_ * (ldc);                             \
            const T *tr_ = (t) + r_ * (NR);                              \
            if (acc) for (int j_ = 0; j_ < (n); ++j_) cr_[j_] += tr_[j_];\
            else for (int j_ = 0; j_ < (n); ++j_) cr_[j_] = tr_[j_];     \
        }                                                                \
    } while (0)

/* ====================================================== AVX-512 kernels */
#if defined(FNN_ISA_AVX512)
#if FNN_MR_S != 8 || FNN_NR_S != 32 || FNN_MR_D != 8 || FNN_NR_D != 16
#error "tiles.py disagrees with the AVX-512 microkernels below (8x32 float, 8x16 double)"
#endif
#include "fnn_ukr_edge512.h"

/* C[0:m, 0:n] (+)= sum_p a[p*8 + i] * b[p*ldb + j]   (8x32 float tile). b is a packed
 * micro-panel (ldb = NR) or, for full-width tiles, op(B) read in place (ldb = its row stride). */
static void fnn_ukr_s(long k, const float *FNN_RESTRICT a, const float *FNN_RESTRICT b, long ldb,
                      float *FNN_RESTRICT c, long ldc, int m, int n, int acc)
{
    FNN_EDGE512_DISPATCH(fnn_ukr_s, 16);
    __m512 c00 = _mm512_setzero_ps(), c01 = _mm512_setzero_ps();
    __m512 c10 = _mm512_setzero_ps(), c11 = _mm512_setzero_ps();
    __m512 c20 = _mm512_setzero_ps(), c21 = _mm512_setzero_ps();
    __m512 c30 = _mm512_setzero_ps(), c31 = _mm512_setzero_ps();
    __m512 c40 = _mm512_setzero_ps(), c41 = _mm512_setzero_ps();
    __m512 c50 = _mm512_setzero_ps(), c51 = _mm512_setzero_ps();
    __m512 c60 = _mm512_setzero_ps(), c61 = _mm512_setzero_ps();
    __m512 c70 = _mm512_setzero_ps(), c71 = _mm512_setzero_ps();
    for (int r = 0; r < m; ++r) {
        _mm_prefetch((const char *)(c + r * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + r * ldc + 31), _MM_HINT_T0);
    }
#define FNN_S512_STEP(P)                                                        \
    do {                                                                        \
        __m512 b0 = _mm512_loadu_ps(b + ldb * (P)), b1 = _mm512_loadu_ps(b + ldb * (P) + 16); \
        __m512 av;                                                              \
        av = _mm512_set1_ps(a[8 * (P) + 0]); c00 = _mm512_fmadd_ps(av, b0, c00); c01 = _mm512_fmadd_ps(av, b1, c01); \
        av = _mm512_set1_ps(a[8 * (P) + 1]); c10 = _mm512_fmadd_ps(av, b0, c10); c11 = _mm512_fmadd_ps(av, b1, c11); \
        av = _mm512_set1_ps(a[8 * (P) + 2]); c20 = _mm512_fmadd_ps(av, b0, c20); c21 = _mm512_fmadd_ps(av, b1, c21); \
        av = _mm512_set1_ps(a[8 * (P) + 3]); c30 = _mm512_fmadd_ps(av, b0, c30); c31 = _mm512_fmadd_ps(av, b1, c31); \
        av = _mm512_set1_ps(a[8 * (P) + 4]); c40 = _mm512_fmadd_ps(av, b0, c40); c41 = _mm512_fmadd_ps(av, b1, c41); \
        av = _mm512_set1_ps(a[8 * (P) + 5]); c50 = _mm512_fmadd_ps(av, b0, c50); c51 = _mm512_fmadd_ps(av, b1, c51); \
        av = _mm512_set1_ps(a[8 * (P) + 6]); c60 = _mm512_fmadd_ps(av, b0, c60); c61 = _mm512_fmadd_ps(av, b1, c61); \
        av = _mm512_set1_ps(a[8 * (P) + 7]); c70 = _mm512_fmadd_ps(av, b0, c70); c71 = _mm512_fmadd_ps(av, b1, c71); \
    } while (0)
    long p = 0;
    for (; p + 4 <= k; p += 4) {
        _mm_prefetch((const char *)(b + ldb * 16), _MM_HINT_T0);
        _mm_prefetch((const char *)(b + ldb * 16 + 16), _MM_HINT_T0);
        _mm_prefetch((const char *)(b + ldb * 17), _MM_HINT_T0);
        _mm_prefetch((const char *)(b + ldb * 17 + 16), _MM_HINT_T0);
        FNN_S512_STEP(0); FNN_S512_STEP(1); FNN_S512_STEP(2); FNN_S512_STEP(3);
        a += 32; b += 4 * ldb;
    }
    for (; p < k; ++p) { FNN_S512_STEP(0); a += 8; b += ldb; }
#undef FNN_S512_STEP
    if (n == 32) {
#define FNN_S512_ROW(R, x0, x1)                                                 \
        if ((R) < m) {                                                          \
            float *cr = c + (long)(R) * ldc;                                    \
            if (acc) { x0 = _mm512_add_ps(x0, _mm512_loadu_ps(cr)); x1 = _mm512_add_ps(x1, _mm512_loadu_ps(cr + 16)); } \
            _mm512_storeu_ps(cr, x0); _mm512_storeu_ps(cr + 16, x1);           \
        }
        FNN_S512_ROW(0, c00, c01) FNN_S512_ROW(1, c10, c11) FNN_S512_ROW(2, c20, c21) FNN_S512_ROW(3, c30, c31)
        FNN_S512_ROW(4, c40, c41) FNN_S512_ROW(5, c50, c51) FNN_S512_ROW(6, c60, c61) FNN_S512_ROW(7, c70, c71)
#undef FNN_S512_ROW
    } else {
        __mmask16 k0 = n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1u);
        __mmask16 k1 = n > 16 ? (__mmask16)((1u << (n - 16)) - 1u) : (__mmask16)0;
#define FNN_S512_ROWM(R, x0, x1)                                                \
        if ((R) < m) {                                                          \
            float *cr = c + (long)(R) * ldc;                                    \
            if (acc) { x0 = _mm512_add_ps(x0, _mm512_maskz_loadu_ps(k0, cr)); x1 = _mm512_add_ps(x1, _mm512_maskz_loadu_ps(k1, cr + 16)); } \
            _mm512_mask_storeu_ps(cr, k0, x0); _mm512_mask_storeu_ps(cr + 16, k1, x1); \
        }
        FNN_S512_ROWM(0, c00, c01) FNN_S512_ROWM(1, c10, c11) FNN_S512_ROWM(2, c20, c21) FNN_S512_ROWM(3, c30, c31)
        FNN_S512_ROWM(4, c40, c41) FNN_S512_ROWM(5, c50, c51) FNN_S512_ROWM(6, c60, c61) FNN_S512_ROWM(7, c70, c71)
#undef FNN_S512_ROWM
    }
}

/* 8x16 double tile */
static void fnn_ukr_d(long k, const double *FNN_RESTRICT a, const double *FNN_RESTRICT b, long ldb,
                      double *FNN_RESTRICT c, long ldc, int m, int n, int acc)
{
    FNN_EDGE512_DISPATCH(fnn_ukr_d, 8);
    __m512d c00 = _mm512_setzero_pd(), c01 = _mm512_setzero_pd();
    __m512d c10 = _mm512_setzero_pd(), c11 = _mm512_setzero_pd();
    __m512d c20 = _mm512_setzero_pd(), c21 = _mm512_setzero_pd();
    __m512d c30 = _mm512_setzero_pd(), c31 = _mm512_setzero_pd();
    __m512d c40 = _mm512_setzero_pd(), c41 = _mm512_setzero_pd();
    __m512d c50 = _mm512_setzero_pd(), c51 = _mm512_setzero_pd();
    __m512d c60 = _mm512_setzero_pd(), c61 = _mm512_setzero_pd();
    __m512d c70 = _mm512_setzero_pd(), c71 = _mm512_setzero_pd();
    for (int r = 0; r < m; ++r) {
        _mm_prefetch((const char *)(c + r * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + r * ldc + 15), _MM_HINT_T0);
    }
#define FNN_D512_STEP(P)                                                        \
    do {                                                                        \
        __m512d b0 = _mm512_loadu_pd(b + ldb * (P)), b1 = _mm512_loadu_pd(b + ldb * (P) + 8); \
        __m512d av;                                                             \
        av = _mm512_set1_pd(a[8 * (P) + 0]); c00 = _mm512_fmadd_pd(av, b0, c00); c01 = _mm512_fmadd_pd(av, b1, c01); \
        av = _mm512_set1_pd(a[8 * (P) + 1]); c10 = _mm512_fmadd_pd(av, b0, c10); c11 = _mm512_fmadd_pd(av, b1, c11); \
        av = _mm512_set1_pd(a[8 * (P) + 2]); c20 = _mm512_fmadd_pd(av, b0, c20); c21 = _mm512_fmadd_pd(av, b1, c21); \
        av = _mm512_set1_pd(a[8 * (P) + 3]); c30 = _mm512_fmadd_pd(av, b0, c30); c31 = _mm512_fmadd_pd(av, b1, c31); \
        av = _mm512_set1_pd(a[8 * (P) + 4]); c40 = _mm512_fmadd_pd(av, b0, c40); c41 = _mm512_fmadd_pd(av, b1, c41); \
        av = _mm512_set1_pd(a[8 * (P) + 5]); c50 = _mm512_fmadd_pd(av, b0, c50); c51 = _mm512_fmadd_pd(av, b1, c51); \
        av = _mm512_set1_pd(a[8 * (P) + 6]); c60 = _mm512_fmadd_pd(av, b0, c60); c61 = _mm512_fmadd_pd(av, b1, c61); \
        av = _mm512_set1_pd(a[8 * (P) + 7]); c70 = _mm512_fmadd_pd(av, b0, c70); c71 = _mm512_fmadd_pd(av, b1, c71); \
    } while (0)
    long p = 0;
    for (; p + 4 <= k; p += 4) {
        _mm_prefetch((const char *)(b + ldb * 16), _MM_HINT_T0);
        _mm_prefetch((const char *)(b + ldb * 16 + 8), _MM_HINT_T0);
        _mm_prefetch((const char *)(b + ldb * 17), _MM_HINT_T0);
        _mm_prefetch((const char *)(b + ldb * 17 + 8), _MM_HINT_T0);
        FNN_D512_STEP(0); FNN_D512_STEP(1); FNN_D512_STEP(2); FNN_D512_STEP(3);
        a += 32; b += 4 * ldb;
    }
    for (; p < k; ++p) { FNN_D512_STEP(0); a += 8; b += ldb; }
#undef FNN_D512_STEP
    __mmask8 k0 = n >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << n) - 1u);
    __mmask8 k1 = n >= 16 ? (__mmask8)0xFF : (n > 8 ? (__mmask8)((1u << (n - 8)) - 1u) : (__mmask8)0);
#define FNN_D512_ROWM(R, x0, x1)                                                \
    if ((R) < m) {                                                              \
        double *cr = c + (long)(R) * ldc;                                       \
        if (acc) { x0 = _mm512_add_pd(x0, _mm512_maskz_loadu_pd(k0, cr)); x1 = _mm512_add_pd(x1, _mm512_maskz_loadu_pd(k1, cr + 8)); } \
        _mm512_mask_storeu_pd(cr, k0, x0); _mm512_mask_storeu_pd(cr + 8, k1, x1); \
    }
    FNN_D512_ROWM(0, c00, c01) FNN_D512_ROWM(1, c10, c11) FNN_D512_ROWM(2, c20, c21) FNN_D512_ROWM(3, c30, c31)
    FNN_D512_ROWM(4, c40, c41) FNN_D512_ROWM(5, c50, c51) FNN_D512_ROWM(6, c60, c61) FNN_D512_ROWM(7, c70, c71)
#undef FNN_D512_ROWM
}

/* ========================================================= AVX2 kernels */
#elif defined(FNN_ISA_AVX2)
#if FNN_MR_S != 6 || FNN_NR_S != 16 || FNN_MR_D != 6 || FNN_NR_D != 8
#error "tiles.py disagrees with the AVX2 microkernels below (6x16 float, 6x8 double)"
#endif

/* 6x16 float tile in 12 ymm accumulators */
static void fnn_ukr_s(long k, const float *FNN_RESTRICT a, const float *FNN_RESTRICT b, long ldb,
                      float *FNN_RESTRICT c, long ldc, int m, int n, int acc)
{
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
    __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
    __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
    __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
    __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
    __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
#define FNN_S256_STEP(P)                                                        \
    do {                                                                        \
        __m256 b0 = _mm256_loadu_ps(b + ldb * (P)), b1 = _mm256_loadu_ps(b + ldb * (P) + 8); \
        __m256 av;                                                              \
        av = _mm256_broadcast_ss(a + 6 * (P) + 0); c00 = _mm256_fmadd_ps(av, b0, c00); c01 = _mm256_fmadd_ps(av, b1, c01); \
        av = _mm256_broadcast_ss(a + 6 * (P) + 1); c10 = _mm256_fmadd_ps(av, b0, c10); c11 = _mm256_fmadd_ps(av, b1, c11); \
        av = _mm256_broadcast_ss(a + 6 * (P) + 2); c20 = _mm256_fmadd_ps(av, b0, c20); c21 = _mm256_fmadd_ps(av, b1, c21); \
        av = _mm256_broadcast_ss(a + 6 * (P) + 3); c30 = _mm256_fmadd_ps(av, b0, c30); c31 = _mm256_fmadd_ps(av, b1, c31); \
        av = _mm256_broadcast_ss(a + 6 * (P) + 4); c40 = _mm256_fmadd_ps(av, b0, c40); c41 = _mm256_fmadd_ps(av, b1, c41); \
        av = _mm256_broadcast_ss(a + 6 * (P) + 5); c50 = _mm256_fmadd_ps(av, b0, c50); c51 = _mm256_fmadd_ps(av, b1, c51); \
    } while (0)
    long p = 0;
    for (; p + 4 <= k; p += 4) {
        _mm_prefetch((const char *)(b + ldb * 12), _MM_HINT_T0);
        _mm_prefetch((const char *)(b + ldb * 14), _MM_HINT_T0);
        FNN_S256_STEP(0); FNN_S256_STEP(1); FNN_S256_STEP(2); FNN_S256_STEP(3);
        a += 24; b += 4 * ldb;
    }
    for (; p < k; ++p) { FNN_S256_STEP(0); a += 6; b += ldb; }
#undef FNN_S256_STEP
    if (m == 6 && n == 16) {
#define FNN_S256_ROW(R, x0, x1)                                                 \
        {                                                                       \
            float *cr = c + (long)(R) * ldc;                                    \
            if (acc) { x0 = _mm256_add_ps(x0, _mm256_loadu_ps(cr)); x1 = _mm256_add_ps(x1, _mm256_loadu_ps(cr + 8)); } \
            _mm256_storeu_ps(cr, x0); _mm256_storeu_ps(cr + 8, x1);            \
        }
        FNN_S256_ROW(0, c00, c01) FNN_S256_ROW(1, c10, c11) FNN_S256_ROW(2, c20, c21)
        FNN_S256_ROW(3, c30, c31) FNN_S256_ROW(4, c40, c41) FNN_S256_ROW(5, c50, c51)
#undef FNN_S256_ROW
    } else {
        FNN_ALIGNED(float, t, 6 * 16);
        _mm256_store_ps(t + 0, c00);  _mm256_store_ps(t + 8, c01);
        _mm256_store_ps(t + 16, c10); _mm256_store_ps(t + 24, c11);
        _mm256_store_ps(t + 32, c20); _mm256_store_ps(t + 40, c21);
        _mm256_store_ps(t + 48, c30); _mm256_store_ps(t + 56, c31);
        _mm256_store_ps(t + 64, c40); _mm256_store_ps(t + 72, c41);
        _mm256_store_ps(t + 80, c50); _mm256_store_ps(t + 88, c51);
        FNN_EDGE_STORE(float, t, 16, c, ldc, m, n, acc);
    }
}

/* 6x8 double tile */
static void fnn_ukr_d(long k, const double *FNN_RESTRICT a, const double *FNN_RESTRICT b, long ldb,
                      double *FNN_RESTRICT c, long ldc, int m, int n, int acc)
{
    __m256d c00 = _mm256_setzero_pd(), c01 = _mm256_setzero_pd();
    __m256d c10 = _mm256_setzero_pd(), c11 = _mm256_setzero_pd();
    __m256d c20 = _mm256_setzero_pd(), c21 = _mm256_setzero_pd();
    __m256d c30 = _mm256_setzero_pd(), c31 = _mm256_setzero_pd();
    __m256d c40 = _mm256_setzero_pd(), c41 = _mm256_setzero_pd();
    __m256d c50 = _mm256_setzero_pd(), c51 = _mm256_setzero_pd();
#define FNN_D256_STEP(P)                                                        \
    do {                                                                        \
        __m256d b0 = _mm256_loadu_pd(b + ldb * (P)), b1 = _mm256_loadu_pd(b + ldb * (P) + 4); \
        __m256d av;                                                             \
        av = _mm256_broadcast_sd(a + 6 * (P) + 0); c00 = _mm256_fmadd_pd(av, b0, c00); c01 = _mm256_fmadd_pd(av, b1, c01); \
        av = _mm256_broadcast_sd(a + 6 * (P) + 1); c10 = _mm256_fmadd_pd(av, b0, c10); c11 = _mm256_fmadd_pd(av, b1, c11); \
        av = _mm256_broadcast_sd(a + 6 * (P) + 2); c20 = _mm256_fmadd_pd(av, b0, c20); c21 = _mm256_fmadd_pd(av, b1, c21); \
        av = _mm256_broadcast_sd(a + 6 * (P) + 3); c30 = _mm256_fmadd_pd(av, b0, c30); c31 = _mm256_fmadd_pd(av, b1, c31); \
        av = _mm256_broadcast_sd(a + 6 * (P) + 4); c40 = _mm256_fmadd_pd(av, b0, c40); c41 = _mm256_fmadd_pd(av, b1, c41); \
        av = _mm256_broadcast_sd(a + 6 * (P) + 5); c50 = _mm256_fmadd_pd(av, b0, c50); c51 = _mm256_fmadd_pd(av, b1, c51); \
    } while (0)
    long p = 0;
    for (; p + 4 <= k; p += 4) {
        _mm_prefetch((const char *)(b + ldb * 12), _MM_HINT_T0);
        _mm_prefetch((const char *)(b + ldb * 14), _MM_HINT_T0);
        FNN_D256_STEP(0); FNN_D256_STEP(1); FNN_D256_STEP(2); FNN_D256_STEP(3);
        a += 24; b += 4 * ldb;
    }
    for (; p < k; ++p) { FNN_D256_STEP(0); a += 6; b += ldb; }
#undef FNN_D256_STEP
    if (m == 6 && n == 8) {
#define FNN_D256_ROW(R, x0, x1)                                                 \
        {                                                                       \
            double *cr = c + (long)(R) * ldc;                                   \
            if (acc) { x0 = _mm256_add_pd(x0, _mm256_loadu_pd(cr)); x1 = _mm256_add_pd(x1, _mm256_loadu_pd(cr + 4)); } \
            _mm256_storeu_pd(cr, x0); _mm256_storeu_pd(cr + 4, x1);            \
        }
        FNN_D256_ROW(0, c00, c01) FNN_D256_ROW(1, c10, c11) FNN_D256_ROW(2, c20, c21)
        FNN_D256_ROW(3, c30, c31) FNN_D256_ROW(4, c40, c41) FNN_D256_ROW(5, c50, c51)
#undef FNN_D256_ROW
    } else {
        FNN_ALIGNED(double, t, 6 * 8);
        _mm256_store_pd(t + 0, c00);  _mm256_store_pd(t + 4, c01);
        _mm256_store_pd(t + 8, c10);  _mm256_store_pd(t + 12, c11);
        _mm256_store_pd(t + 16, c20); _mm256_store_pd(t + 20, c21);
        _mm256_store_pd(t + 24, c30); _mm256_store_pd(t + 28, c31);
        _mm256_store_pd(t + 32, c40); _mm256_store_pd(t + 36, c41);
        _mm256_store_pd(t + 40, c50); _mm256_store_pd(t + 44, c51);
        FNN_EDGE_STORE(double, t, 8, c, ldc, m, n, acc);
    }
}

/* ===================================================== plain C kernels */
#else

#define FNN_GENERIC_UKR(NAME, T, MR, NR)                                          \
static void NAME(long k, const T *FNN_RESTRICT a, const T *FNN_RESTRICT b, long ldb, \
                 T *FNN_RESTRICT c, long ldc, int m, int n, int acc)              \
{                                                                                 \
    T t[MR * NR];                                                                 \
    for (int i = 0; i < MR * NR; ++i) t[i] = (T)0;                                \
    for (long p = 0; p < k; ++p) {                                                \
        for (int i = 0; i < MR; ++i) {                                            \
            const T ai = a[i];                                                    \
            for (int j = 0; j < NR; ++j) t[i * NR + j] += ai * b[j];              \
        }                                                                         \
        a += MR; b += ldb;                                                        \
    }                                                                             \
    FNN_EDGE_STORE(T, t, NR, c, ldc, m, n, acc);                                  \
}
FNN_GENERIC_UKR(fnn_ukr_s, float, FNN_MR_S, FNN_NR_S)
FNN_GENERIC_UKR(fnn_ukr_d, double, FNN_MR_D, FNN_NR_D)
#undef FNN_GENERIC_UKR

#endif

/* ================================================= vectorizable math
 * Branch-free exp/log written so that gcc/clang vectorize loops calling
 * them (no libm calls, no errno). exp: Cody-Waite reduction to
 * |r| <= ln2/2, Taylor polynomial, 2^n built in the exponent bits (the
 * round-to-nearest uses the 1.5*2^p magic constant, whose low mantissa bits
 * then hold n). Accuracy: a few ulp in float32 and float64.
 */

/* The reduction and polynomial that fnn_expf / fnn_exp and fnn_rec_lanes.h's lane-wise
 * fnn_lexp_s / fnn_lexp_d share, for V a scalar or a vector of float (_F) / double (_D) and xc
 * already in range: declares t = xc / ln2 + magic (n = round(xc / ln2) in its low mantissa bits)
 * and p = e^r, r = xc - n ln2 (Cody-Waite); the caller makes 2^n from t's bits
 * ((bits(t) - MAGIC_BITS + bias) << mantissa width) and returns p * 2^n. */
#define FNN_EXPF_MAGIC 12582912.0f              /* 1.5 * 2^23 */
#define FNN_EXPF_MAGIC_BITS 0x4B400000
#define FNN_EXPF_POLY(V, xc, t, p)                                                           \
    V t = (xc) * 1.44269504088896341f + FNN_EXPF_MAGIC;                                      \
    V t##_fn = t - FNN_EXPF_MAGIC;                                                           \
    V t##_r = (xc) - t##_fn * 0.693359375f;                                                  \
    t##_r = t##_r - t##_fn * -2.12194440e-4f;                                                \
    V p = 1.0f / 5040.0f * t##_r + 1.0f / 720.0f;                                            \
    p = p * t##_r + 1.0f / 120.0f;                                                           \
    p = p * t##_r + 1.0f / 24.0f;                                                            \
    p = p * t##_r + 1.0f / 6.0f;                                                             \
    p = p * t##_r + 0.5f;                                                                    \
    p = p * t##_r + 1.0f;                                                                    \
    p = p * t##_r + 1.0f
#define FNN_EXP_MAGIC 6755399441055744.0        /* 1.5 * 2^52 */
#define FNN_EXP_MAGIC_BITS 0x4338000000000000LL
#define FNN_EXP_POLY(V, xc, t, p)                                                            \
    V t = (xc) * 1.4426950408889634074 + FNN_EXP_MAGIC;                                      \
    V t##_fn = t - FNN_EXP_MAGIC;                                                            \
    V t##_r = (xc) - t##_fn * 6.93147180369123816490e-01;                                    \
    t##_r = t##_r - t##_fn * 1.90821492927058770002e-10;                                     \
    V p = 1.0 / 6227020800.0 * t##_r + 1.0 / 479001600.0;   /* 1/13!, 1/12! */               \
    p = p * t##_r + 1.0 / 39916800.0;                                                        \
    p = p * t##_r + 1.0 / 3628800.0;                                                         \
    p = p * t##_r + 1.0 / 362880.0;                                                          \
    p = p * t##_r + 1.0 / 40320.0;                                                           \
    p = p * t##_r + 1.0 / 5040.0;                                                            \
    p = p * t##_r + 1.0 / 720.0;                                                             \
    p = p * t##_r + 1.0 / 120.0;                                                             \
    p = p * t##_r + 1.0 / 24.0;                                                              \
    p = p * t##_r + 1.0 / 6.0;                                                               \
    p = p * t##_r + 0.5;                                                                     \
    p = p * t##_r + 1.0;                                                                     \
    p = p * t##_r + 1.0

/* tanh's two approximations, written once for the scalar functions below and the lane-wise
 * ones of fnn_rec_lanes.h (V: float/double or a vector type). Float: Eigen's odd rational
 * minimax, p = xc P(z), q = Q(z) with z = xc^2, tanh = p / q on [-7.9053, 7.9053]. Double:
 * the Taylor series of (tanh(x)/x - 1)/x^2 in powers of z = x^2 (for |x| < 0.25). */
#define FNN_TANHF_RATIONAL(V, xc, z, p, q)                                                   \
    V p = (V){0} + -2.76076847742355e-16f;                                                   \
    p = p * (z) + 2.00018790482477e-13f;                                                     \
    p = p * (z) + -8.60467152213735e-11f;                                                    \
    p = p * (z) + 5.12229709037114e-08f;                                                     \
    p = p * (z) + 1.48572235717979e-05f;                                                     \
    p = p * (z) + 6.37261928875436e-04f;                                                     \
    p = p * (z) + 4.89352455891786e-03f;                                                     \
    p = p * (xc);                                                                            \
    V q = (V){0} + 1.19825839466702e-06f;                                                    \
    q = q * (z) + 1.18534705686654e-04f;                                                     \
    q = q * (z) + 2.26843463243900e-03f;                                                     \
    q = q * (z) + 4.89352518554385e-03f
#define FNN_TANH_SERIES(V, z, pp)                                                            \
    V pp = (V){0} + -3.927832388331683e-05;                                                  \
    pp = pp * (z) + 9.691537956929451e-05;                                                   \
    pp = pp * (z) + -0.00023912911424355248;                                                 \
    pp = pp * (z) + 0.000590027440945586;                                                    \
    pp = pp * (z) + -0.0014558343870513183;                                                  \
    pp = pp * (z) + 0.003592128036572481;                                                    \
    pp = pp * (z) + -0.008863235529902197;                                                   \
    pp = pp * (z) + 0.021869488536155203;                                                    \
    pp = pp * (z) + -0.05396825396825397;                                                    \
    pp = pp * (z) + 0.13333333333333333;                                                     \
    pp = pp * (z) + -0.3333333333333333

FNN_INLINE float fnn_expf(float x)
{
    const float hi = 88.7f, lo = -87.3f;
    float xc = x > hi ? hi : x;
    xc = xc < lo ? lo : xc;
    FNN_EXPF_POLY(float, xc, t, pp);
    int32_t ti;
    memcpy(&ti, &t, 4);
    int32_t bits = (ti - FNN_EXPF_MAGIC_BITS + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    float res = pp * scale;
    res = x > hi ? INFINITY : res;
    res = x < lo ? 0.0f : res;
    return res;
}

FNN_INLINE double fnn_exp(double x)
{
    const double hi = 709.7, lo = -708.3;
    double xc = x > hi ? hi : x;
    xc = xc < lo ? lo : xc;
    FNN_EXP_POLY(double, xc, t, pp);
    int64_t ti;
    memcpy(&ti, &t, 8);
    int64_t bits = (ti - FNN_EXP_MAGIC_BITS + 1023) << 52;
    double scale;
    memcpy(&scale, &bits, 8);
    double res = pp * scale;
    res = x > hi ? INFINITY : res;
    res = x < lo ? 0.0 : res;
    return res;
}

/* log(u) for u in [1, 2] (what log1p(e), e in [0, 1], needs):
 * u > sqrt2 -> u/2 and +ln2; f = u - 1, s = f / (2 + f), log = 2 atanh(s). */
FNN_INLINE float fnn_log12f(float u)
{
    int big = u > 1.41421356f;
    float uu = big ? u * 0.5f : u;
    float f = uu - 1.0f;
    float s = f / (2.0f + f);
    float z = s * s;
    float pp = 1.0f / 11.0f;
    pp = pp * z + 1.0f / 9.0f;
    pp = pp * z + 1.0f / 7.0f;
    pp = pp * z + 1.0f / 5.0f;
    pp = pp * z + 1.0f / 3.0f;
    pp = pp * z + 1.0f;
    float res = 2.0f * s * pp;
    return big ? res + 0.693147180559945309f : res;
}

FNN_INLINE double fnn_log12(double u)
{
    int big = u > 1.4142135623730951;
    double uu = big ? u * 0.5 : u;
    double f = uu - 1.0;
    double s = f / (2.0 + f);
    double z = s * s;
    double pp = 1.0 / 23.0;
    pp = pp * z + 1.0 / 21.0;
    pp = pp * z + 1.0 / 19.0;
    pp = pp * z + 1.0 / 17.0;
    pp = pp * z + 1.0 / 15.0;
    pp = pp * z + 1.0 / 13.0;
    pp = pp * z + 1.0 / 11.0;
    pp = pp * z + 1.0 / 9.0;
    pp = pp * z + 1.0 / 7.0;
    pp = pp * z + 1.0 / 5.0;
    pp = pp * z + 1.0 / 3.0;
    pp = pp * z + 1.0;
    double res = 2.0 * s * pp;
    return big ? res + 0.69314718055994530942 : res;
}

/* log1p(e) for e in [0, 1], with Kahan's correction for the rounding of 1 + e. */
FNN_INLINE float fnn_log1p01f(float e)
{
    float u = 1.0f + e;
    float d = u - 1.0f;
    float l = fnn_log12f(u);
    return d == 0.0f ? e : l * (e / d);
}

FNN_INLINE double fnn_log1p01(double e)
{
    double u = 1.0 + e;
    double d = u - 1.0;
    double l = fnn_log12(u);
    return d == 0.0 ? e : l * (e / d);
}

/* tanh, float: Eigen's odd rational minimax approximation x P(x^2) / Q(x^2)
 * on [-7.9053, 7.9053] (tanh rounds to +-1 in float beyond); no exp needed. */
FNN_INLINE float fnn_tanhf(float x)
{
    const float clamp = 7.90531110763549805f;
    float xc = x > clamp ? clamp : x;
    xc = xc < -clamp ? -clamp : xc;
    float z = xc * xc;
    FNN_TANHF_RATIONAL(float, xc, z, p, q);
    float r = p / q;
    float ax = x < 0.0f ? -x : x;
    return ax < 0.0004f ? x : r;
}

FNN_INLINE double fnn_tanh(double x)
{
    double ax = x < 0.0 ? -x : x;
    double e = fnn_exp(-2.0 * ax);
    double big = (1.0 - e) / (1.0 + e);
    double z = x * x;
    FNN_TANH_SERIES(double, z, pp);
    double small = ax + ax * z * pp;
    double r = ax < 0.25 ? small : big;
    return x < 0.0 ? -r : r;
}

#endif /* FNN_SIMD_H */
