/* dst (cols, rows) = src (rows, cols) transposed, in 8x8 register tiles (GCC vector extensions);
 * the batch-inner convolution layout's transposes (conv.pxi), which reference.conv* do not
 * see: they only move values. The element-wise loops they replace ran ~3 cycles a value
 * (strided scalar loads or stores) and were up to 70% of a small conv layer's time; a tile
 * is 8 row loads, 24 two-source shuffles and 8 row stores. Edges are copied by the plain
 * loop; other compilers get the plain loop everywhere. */
#ifndef FNN_TRANSPOSE_H
#define FNN_TRANSPOSE_H
#include <stdlib.h>
#include <string.h>

#define FNN_TRANSPOSE_EDGE(T, S)                                                             \
/* rb: NULL, or the value to add on each src row */                                         \
static inline void fnn_transpose_edge_##S(const T *src, long rows, long cols, T *dst,        \
                                          const T *rb, long r0, long r1, long c0, long c1) { \
    for (long c = c0; c < c1; ++c)                                                           \
        for (long r = r0; r < r1; ++r)                                                       \
            dst[c * rows + r] = src[r * cols + c] + (rb ? rb[r] : (T)0);                     \
}                                                                                            \
/* bias[r / group] for each row r, without a division per row (NULL: no memory) */           \
static inline T *fnn_row_bias_##S(const T *bias, long rows, long group) {                    \
    T *rb = (T *)malloc((rows > 0 ? rows : 1) * sizeof(T));                                  \
    if (rb == NULL) return NULL;                                                             \
    for (long r = 0, g = 0, left = group; r < rows; ++r) {                                   \
        rb[r] = bias[g];                                                                     \
        if (--left == 0) { ++g; left = group; }                                              \
    }                                                                                        \
    return rb;                                                                               \
}
FNN_TRANSPOSE_EDGE(float, s)
FNN_TRANSPOSE_EDGE(double, d)
#undef FNN_TRANSPOSE_EDGE

#if defined(__GNUC__) && !defined(__clang__)
typedef float fnn_tv8s __attribute__((vector_size(32)));
typedef double fnn_tv8d __attribute__((vector_size(64)));
typedef int fnn_tm8s __attribute__((vector_size(32)));
typedef long long fnn_tm8d __attribute__((vector_size(64)));

/* One 8x8 tile: dst[c * ld + r] = src[r * ls + c] for r, c < 8 (AVX's 8x8 transpose: unpack
 * pairs of rows, shuffle pairs of pairs, swap 4-value halves); rb: NULL, or a value to add on
 * each of the 8 src rows. Also the GEMM's packing (gemm.pxi: transposed B panels, 8-row A panels). */
#define FNN_TR8(T, S, V, M)                                                                  \
static inline void fnn_tr8_##S(const T *src, long ls, T *dst, long ld, const T *rb) {        \
    const M lo = {0, 8, 1, 9, 4, 12, 5, 13}, hi = {2, 10, 3, 11, 6, 14, 7, 15};               \
    const M s44 = {0, 1, 8, 9, 4, 5, 12, 13}, see = {2, 3, 10, 11, 6, 7, 14, 15};             \
    const M p20 = {0, 1, 2, 3, 8, 9, 10, 11}, p31 = {4, 5, 6, 7, 12, 13, 14, 15};             \
    V r[8], t[8], u[8];                                                                      \
    int q;                                                                                   \
    for (q = 0; q < 8; ++q) memcpy(&r[q], src + q * ls, sizeof(V));                          \
    if (rb)                                                                                  \
        for (q = 0; q < 8; ++q) r[q] += rb[q];                                               \
    for (q = 0; q < 8; q += 2) {                                                             \
        t[q] = __builtin_shuffle(r[q], r[q + 1], lo);                                        \
        t[q + 1] = __builtin_shuffle(r[q], r[q + 1], hi);                                    \
    }                                                                                        \
    for (q = 0; q < 8; q += 4) {                                                             \
        u[q] = __builtin_shuffle(t[q], t[q + 2], s44);                                       \
        u[q + 1] = __builtin_shuffle(t[q], t[q + 2], see);                                   \
        u[q + 2] = __builtin_shuffle(t[q + 1], t[q + 3], s44);                               \
        u[q + 3] = __builtin_shuffle(t[q + 1], t[q + 3], see);                               \
    }                                                                                        \
    for (q = 0; q < 4; ++q) {                                                                \
        r[q] = __builtin_shuffle(u[q], u[q + 4], p20);                                       \
        r[q + 4] = __builtin_shuffle(u[q], u[q + 4], p31);                                   \
    }                                                                                        \
    for (q = 0; q < 8; ++q) memcpy(dst + q * ld, &r[q], sizeof(V));                          \
}
FNN_TR8(float, s, fnn_tv8s, fnn_tm8s)
FNN_TR8(double, d, fnn_tv8d, fnn_tm8d)
#undef FNN_TR8

#define FNN_TRANSPOSE(T, S, V, M)                                                            \
static void fnn_transpose_bias_##S(const T *src, long rows, long cols, T *dst,               \
                                   const T *bias, long group) {                              \
    long r8 = rows - rows % 8, c8 = cols - cols % 8, r0, c0;                                 \
    T *rb = bias ? fnn_row_bias_##S(bias, rows, group) : NULL;                               \
    if (bias && rb == NULL) {       /* out of memory: the plain loop, a division a value */  \
        for (c0 = 0; c0 < cols; ++c0)                                                        \
            for (r0 = 0; r0 < rows; ++r0)                                                    \
                dst[c0 * rows + r0] = src[r0 * cols + c0] + bias[r0 / group];                \
        return;                                                                              \
    }                                                                                        \
    for (c0 = 0; c0 < c8; c0 += 8)         /* dst rows written in order: 8 streams */        \
        for (r0 = 0; r0 < r8; r0 += 8)                                                       \
            fnn_tr8_##S(src + r0 * cols + c0, cols, dst + c0 * rows + r0, rows,              \
                        rb ? rb + r0 : NULL);                                                \
    fnn_transpose_edge_##S(src, rows, cols, dst, rb, 0, r8, c8, cols);                       \
    fnn_transpose_edge_##S(src, rows, cols, dst, rb, r8, rows, 0, cols);                     \
    free(rb);                                                                                \
}
FNN_TRANSPOSE(float, s, fnn_tv8s, fnn_tm8s)
FNN_TRANSPOSE(double, d, fnn_tv8d, fnn_tm8d)
#undef FNN_TRANSPOSE
#else
#define FNN_TR8_PLAIN(T, S)                                                                  \
static inline void fnn_tr8_##S(const T *src, long ls, T *dst, long ld, const T *rb) {        \
    for (int c = 0; c < 8; ++c)                                                              \
        for (int r = 0; r < 8; ++r)                                                          \
            dst[c * ld + r] = src[r * ls + c] + (rb ? rb[r] : (T)0);                         \
}
FNN_TR8_PLAIN(float, s)
FNN_TR8_PLAIN(double, d)
#undef FNN_TR8_PLAIN
#define FNN_TRANSPOSE_BIAS_PLAIN(T, S)                                                       \
static void fnn_transpose_bias_##S(const T *src, long rows, long cols, T *dst,               \
                                   const T *bias, long group) {                              \
    T *rb = bias ? fnn_row_bias_##S(bias, rows, group) : NULL;                               \
    if (bias && rb == NULL) {                                                                \
        for (long c = 0; c < cols; ++c)                                                      \
            for (long r = 0; r < rows; ++r)                                                  \
                dst[c * rows + r] = src[r * cols + c] + bias[r / group];                     \
        return;                                                                              \
    }                                                                                        \
    fnn_transpose_edge_##S(src, rows, cols, dst, rb, 0, rows, 0, cols);                      \
    free(rb);                                                                                \
}
FNN_TRANSPOSE_BIAS_PLAIN(float, s)
FNN_TRANSPOSE_BIAS_PLAIN(double, d)
#undef FNN_TRANSPOSE_BIAS_PLAIN
#endif
/* dst = src transposed, plus bias[r / group] on src's row r when bias is not NULL (the
 * convolution's bias, added on the way out of the batch-inner layout) */
static inline void fnn_transpose_s(const float *src, long rows, long cols, float *dst) {
    fnn_transpose_bias_s(src, rows, cols, dst, 0, 1);
}
static inline void fnn_transpose_d(const double *src, long rows, long cols, double *dst) {
    fnn_transpose_bias_d(src, rows, cols, dst, 0, 1);
}
#endif
