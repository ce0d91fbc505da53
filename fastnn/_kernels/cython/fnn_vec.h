/* Row reductions in 16 lanes (sum, max, four dot products at once) with GCC vector extensions;
 * the helpers behind the softmax, cross-entropy and convolution-gradient kernels, which match
 * reference.softmax, cross_entropy and conv*_backward. Written as plain C loops over a local
 * `T acc[16]`, gcc 12 splits the lanes into 16 scalars (scalar adds, spills) instead of one
 * vector; a vector type makes each 16-value step one vector op (two on AVX2, four on SSE2).
 * The 16 lanes are summed by fnn_lanes (a tree), then the tail. normalization.pxi's BatchNorm
 * and LayerNorm row helpers use these types and this sum too.
 * Other compilers get the plain loops. */
#ifndef FNN_VEC_H
#define FNN_VEC_H
#include <string.h>
#include <stdint.h>

/* fnn_hsum16_S as a loop (the tree described at FNN_LANES_DEF) */
#define FNN_HSUM16_LOOP(T, S)                                                                \
static inline T fnn_hsum16_##S(const T *v) {                                                 \
    T a[16]; memcpy(a, v, sizeof a);                                                         \
    for (int h = 8; h; h >>= 1) for (int j = 0; j < h; ++j) a[j] += a[j + h];                \
    return a[0];                                                                             \
}

#if defined(__GNUC__)
typedef float fnn_v16s __attribute__((vector_size(64)));
typedef double fnn_v16d __attribute__((vector_size(128)));
typedef int32_t fnn_m16s __attribute__((vector_size(64)));
typedef int64_t fnn_m16d __attribute__((vector_size(128)));
typedef float fnn_v8s __attribute__((vector_size(32)));
typedef float fnn_v4s __attribute__((vector_size(16)));
typedef double fnn_v8d __attribute__((vector_size(64)));
typedef double fnn_v4d __attribute__((vector_size(32)));
#define FNN_VEC_LOAD(v, p) memcpy(&(v), (p), sizeof(v))
#define FNN_VEC_STORE(p, v) memcpy((p), &(v), sizeof(v))
#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define FNN_VEC_SHUFFLE 1
#endif
#endif

/* The one lane select, m ? a : b lane by lane (m: all-ones or zero lanes, as a comparison
 * gives), for value vectors of type V and same-width integer vectors of type M: the 16-lane
 * types here, the ISA-width ones in fnn_rec_lanes.h. A macro, not a function: a 16-lane vector
 * passed by value is wider than an AVX2 register (gcc warns of the ABI). */
#define FNN_VSEL(V, M, m, a, b) ((V)(((M)(a) & (m)) | ((M)(b) & ~(m))))

/* The one horizontal sum of 16 lanes: v[0] + ... + v[15] as the tree ((v0 + v8) + (v4 + v12))
 * + ...: lanes j and j + 8, then j and j + 4, then (q0 + q2) + (q1 + q3). A tree, not 0..15 in
 * order: 4 dependent adds instead of 15 (an in-order chain cost LayerNorm more than a 64-feature
 * row's own work) and a smaller rounding error. fnn_lanes_S sums a vector, fnn_hsum16_S 16
 * values in memory (BatchNorm's lanes). Halving with shuffles keeps it in registers (the same
 * tree as a loop over a T[16] made fnn_vsum of a 10-value row 1.2x (AVX-512) to 3x (AVX2) slower
 * than the in-order sum); the loop is the fallback where __builtin_shufflevector is missing. */
#if defined(FNN_VEC_SHUFFLE)
#define FNN_LANES_DEF(T, S)                                                                  \
static inline T fnn_lanes_##S(const fnn_v16##S *p) {                                         \
    fnn_v16##S v = *p;                                                                       \
    fnn_v8##S h = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7)                      \
                + __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);               \
    fnn_v4##S q = __builtin_shufflevector(h, h, 0, 1, 2, 3)                                  \
                + __builtin_shufflevector(h, h, 4, 5, 6, 7);                                 \
    return (q[0] + q[2]) + (q[1] + q[3]);                                                    \
}                                                                                            \
static inline T fnn_hsum16_##S(const T *a) {                                                 \
    fnn_v16##S v; FNN_VEC_LOAD(v, a); return fnn_lanes_##S(&v);                              \
}
#else
#define FNN_LANES_DEF(T, S) FNN_HSUM16_LOOP(T, S)                                            \
static inline T fnn_lanes_##S(const fnn_v16##S *v) {                                         \
    T a[16]; memcpy(a, v, sizeof a); return fnn_hsum16_##S(a);                               \
}
#endif

#define FNN_VEC_FUNCS(T, S)                                                                  \
FNN_LANES_DEF(T, S)                                                                          \
static inline T fnn_vsum_##S(const T *x, long n) {                                           \
    fnn_v16##S acc = {0}, v; long i = 0;                                                     \
    for (; i + 16 <= n; i += 16) { FNN_VEC_LOAD(v, x + i); acc += v; }                       \
    T s = fnn_lanes_##S(&acc);                                                               \
    for (; i < n; ++i) s += x[i];                                                            \
    return s;                                                                                \
}                                                                                            \
/* the largest of x[0:n] (n >= 1); a NaN is never taken over a number (x > m is false) */    \
static inline T fnn_vmax_##S(const T *x, long n) {                                           \
    T m = x[0]; long i = 16;                                                                 \
    if (n >= 16) {                                                                           \
        fnn_v16##S acc, v; fnn_m16##S t; T a[16];                                            \
        FNN_VEC_LOAD(acc, x);                                                                \
        for (; i + 16 <= n; i += 16) {                                                       \
            FNN_VEC_LOAD(v, x + i);                                                          \
            t = v > acc;                                                                     \
            acc = FNN_VSEL(fnn_v16##S, fnn_m16##S, t, v, acc);                              \
        }                                                                                    \
        memcpy(a, &acc, sizeof a);                                                           \
        for (int j = 0; j < 16; ++j) m = a[j] > m ? a[j] : m;                                \
    } else i = 0;                                                                            \
    for (; i < n; ++i) m = x[i] > m ? x[i] : m;                                              \
    return m;                                                                                \
}                                                                                            \
/* out[q] = d . c_q over n values, q = 0..3 */                                               \
static inline void fnn_vdot4_##S(const T *d, const T *c0, const T *c1, const T *c2,          \
                                 const T *c3, long n, T *out) {                              \
    fnn_v16##S a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, v, w; long r = 0;                     \
    for (; r + 16 <= n; r += 16) {                                                           \
        FNN_VEC_LOAD(v, d + r);                                                              \
        FNN_VEC_LOAD(w, c0 + r); a0 += v * w;                                                \
        FNN_VEC_LOAD(w, c1 + r); a1 += v * w;                                                \
        FNN_VEC_LOAD(w, c2 + r); a2 += v * w;                                                \
        FNN_VEC_LOAD(w, c3 + r); a3 += v * w;                                                \
    }                                                                                        \
    T s0 = fnn_lanes_##S(&a0), s1 = fnn_lanes_##S(&a1), s2 = fnn_lanes_##S(&a2), s3 = fnn_lanes_##S(&a3); \
    for (; r < n; ++r) {                                                                     \
        s0 += d[r] * c0[r]; s1 += d[r] * c1[r]; s2 += d[r] * c2[r]; s3 += d[r] * c3[r];      \
    }                                                                                        \
    out[0] = s0; out[1] = s1; out[2] = s2; out[3] = s3;                                      \
}
#else
#define FNN_VEC_FUNCS(T, S) FNN_HSUM16_LOOP(T, S)                                            \
static inline T fnn_vsum_##S(const T *x, long n) {                                           \
    T s = 0; for (long i = 0; i < n; ++i) s += x[i]; return s;                               \
}                                                                                            \
static inline T fnn_vmax_##S(const T *x, long n) {                                           \
    T m = x[0]; for (long i = 1; i < n; ++i) m = x[i] > m ? x[i] : m; return m;              \
}                                                                                            \
static inline void fnn_vdot4_##S(const T *d, const T *c0, const T *c1, const T *c2,          \
                                 const T *c3, long n, T *out) {                              \
    T s0 = 0, s1 = 0, s2 = 0, s3 = 0;                                                        \
    for (long r = 0; r < n; ++r) {                                                           \
        s0 += d[r] * c0[r]; s1 += d[r] * c1[r]; s2 += d[r] * c2[r]; s3 += d[r] * c3[r];      \
    }                                                                                        \
    out[0] = s0; out[1] = s1; out[2] = s2; out[3] = s3;                                      \
}
#endif

FNN_VEC_FUNCS(float, s)
FNN_VEC_FUNCS(double, d)
#undef FNN_VEC_FUNCS
#undef FNN_LANES_DEF
#undef FNN_HSUM16_LOOP
#endif
