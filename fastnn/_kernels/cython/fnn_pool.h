/* 2x2 stride-2 max pooling in 16 lanes (GCC vector extensions); matches reference.maxpool2d:
 * the max of each window and the first flat position (in H*W) of it in window order
 * (0,0),(0,1),(1,0),(1,1), a NaN winning (the first NaN). That rule is a pairwise tree,
 * top = pick(a, b), bottom = pick(c, d), out = pick(top, bottom), where pick(p, q) takes q
 * iff q > p or (q is NaN and p is not), so it runs as compares and blends with no
 * dependent chain through the position (the scalar loop it replaces spent ~60 cycles an
 * output reloading `best` from `where`).
 * Vector path (AVX-512 builds): W even, Wo = W/2 one of 1, 2, 4, 8, 16 and Ho*Wo >= 16 (8x8
 * planes: one 16-output block a plane); other shapes return 0 and take conv.pxi's loop.
 * A block of 16 outputs of a plane reads 64 consecutive inputs (16/Wo row pairs): the
 * horizontal picks come from even/odd lanes, then top/bottom rows by a shuffle; a plane's
 * last Ho*Wo % 16 outputs take the branch-free scalar loop. */
#ifndef FNN_POOL_H
#define FNN_POOL_H
#include <stdint.h>
#include <string.h>

#define FNN_POOL_SCALAR(T, S)                                                                \
/* outputs p0..p1 of one plane (plane_x: its H*W inputs), branch-free (selects by arithmetic: \
 * gcc turns `t ? b : a` into branches, which random data mispredicts) */                    \
static inline void fnn_maxpool2x2_scalar_##S(const T *plane_x, T *py, int64_t *pidx,         \
                                            long wid, long wo, long p0, long p1) {           \
    long oh = p0 / wo, ow = p0 - oh * wo;                                                    \
    for (long p = p0; p < p1; ++p) {                                                         \
        long w0 = 2 * oh * wid + 2 * ow, it, ib, w;                                          \
        T a = plane_x[w0], b = plane_x[w0 + 1], c = plane_x[w0 + wid], d = plane_x[w0 + wid + 1]; \
        long t1 = (b > a) | ((b != b) & (a == a));                                           \
        long t2 = (d > c) | ((d != d) & (c == c));                                           \
        it = w0 + t1; ib = w0 + wid + t2;                                                    \
        T top = plane_x[it], bot = plane_x[ib];                                              \
        long t3 = (bot > top) | ((bot != bot) & (top == top));                               \
        w = it + t3 * (ib - it);                                                             \
        py[p] = plane_x[w]; pidx[p] = w;                                                     \
        if (++ow == wo) { ow = 0; ++oh; }                                                    \
    }                                                                                        \
}

FNN_POOL_SCALAR(float, s)
FNN_POOL_SCALAR(double, d)
#undef FNN_POOL_SCALAR

#if defined(__GNUC__) && !defined(__clang__) && defined(__AVX512F__)
#define FNN_POOL_VEC2X2 1
typedef float fnn_pv16s __attribute__((vector_size(64)));
typedef double fnn_pv16d __attribute__((vector_size(128)));
typedef int32_t fnn_pm16s __attribute__((vector_size(64)));
typedef int64_t fnn_pm16d __attribute__((vector_size(128)));
typedef int64_t fnn_pi16 __attribute__((vector_size(128)));

/* take q where pick(p, q) says so: the mask (-1 lanes) and the blended values */
#define FNN_PICK(V, M, p, q, t, out)                                                         \
    do {                                                                                     \
        t = (q > p) | ((q != q) & (p == p));                                                 \
        out = (V)(((M)q & t) | ((M)p & ~t));                                                 \
    } while (0)

/* the planes' 16-output blocks with Wo dividing 16; mtop/mbot (lane l: h's value in row pair
 * l/Wo, column l%Wo, top or bottom row) are literal constants at each call, so the shuffles
 * compile to fixed permutes (a variable mask made AVX2 builds 10x slower) */
#define FNN_POOL_VEC(T, S, V, M, CONV)                                                       \
static inline __attribute__((always_inline)) void                                           \
fnn_maxpool2x2_blocks_##S(const T *x, T *y, int64_t *idx, long planes, long hgt, long wid,   \
                          long ho, long wo, const M mtop, const M mbot) {                    \
    const M even = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};               \
    const M odd = even + 1;                                                                  \
    long hw = ho * wo, pl, p, l;                                                             \
    M one, wv;                                                                               \
    fnn_pi16 basev, iv;                                                                      \
    for (l = 0; l < 16; ++l) {                                                               \
        one[l] = 1;                                                                          \
        wv[l] = wid;                                                                         \
        basev[l] = 2 * (l / wo) * wid + 2 * (l % wo);   /* its position in the block */      \
    }                                                                                        \
    for (pl = 0; pl < planes; ++pl) {                                                        \
        const T *px = x + pl * hgt * wid;                                                    \
        T *py = y + pl * hw;                                                                 \
        int64_t *pi = idx + pl * hw;                                                         \
        for (p = 0; p + 16 <= hw; p += 16) {                                                 \
            V x0, x1, x2, x3, e, o, h0, h1, top, bot, out;                                   \
            M t, s0, s1, st, sb, code;                                                       \
            const T *src = px + (p / wo) * 2 * wid;                                          \
            memcpy(&x0, src, sizeof x0); memcpy(&x1, src + 16, sizeof x1);                   \
            memcpy(&x2, src + 32, sizeof x2); memcpy(&x3, src + 48, sizeof x3);              \
            e = __builtin_shuffle(x0, x1, even); o = __builtin_shuffle(x0, x1, odd);         \
            FNN_PICK(V, M, e, o, t, h0); s0 = t & one;                                       \
            e = __builtin_shuffle(x2, x3, even); o = __builtin_shuffle(x2, x3, odd);         \
            FNN_PICK(V, M, e, o, t, h1); s1 = t & one;                                       \
            top = __builtin_shuffle(h0, h1, mtop); bot = __builtin_shuffle(h0, h1, mbot);    \
            st = __builtin_shuffle(s0, s1, mtop); sb = __builtin_shuffle(s0, s1, mbot) + wv; \
            FNN_PICK(V, M, top, bot, t, out);                                                \
            code = (sb & t) | (st & ~t);                                                     \
            memcpy(py + p, &out, sizeof out);                                                \
            iv = basev + (int64_t)(src - px) + CONV(code);                                   \
            memcpy(pi + p, &iv, sizeof iv);                                                  \
        }                                                                                    \
        fnn_maxpool2x2_scalar_##S(px, py, pi, wid, wo, p, hw);                               \
    }                                                                                        \
}                                                                                            \
/* 1 when done, 0 when the shape is not for the vector path (the caller's own loop then) */    \
static int fnn_maxpool2x2_##S(const T *x, T *y, int64_t *idx, long planes, long hgt,         \
                              long wid, long ho, long wo) {                                  \
    if (wid != 2 * wo || ho * wo < 16)                                                       \
        return 0;                                                                            \
    switch (wo) {                                                                            \
    case 1: fnn_maxpool2x2_blocks_##S(x, y, idx, planes, hgt, wid, ho, wo,                   \
                (M){0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30},               \
                (M){1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31}); return 1;    \
    case 2: fnn_maxpool2x2_blocks_##S(x, y, idx, planes, hgt, wid, ho, wo,                   \
                (M){0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29},                \
                (M){2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31}); return 1;   \
    case 4: fnn_maxpool2x2_blocks_##S(x, y, idx, planes, hgt, wid, ho, wo,                   \
                (M){0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27},                \
                (M){4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31}); return 1;   \
    case 8: fnn_maxpool2x2_blocks_##S(x, y, idx, planes, hgt, wid, ho, wo,                   \
                (M){0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23},                  \
                (M){8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31}); return 1; \
    case 16: fnn_maxpool2x2_blocks_##S(x, y, idx, planes, hgt, wid, ho, wo,                  \
                (M){0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},                    \
                (M){16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31}); return 1; \
    default: return 0;                                                                       \
    }                                                                                        \
}

#define FNN_CONV_S(c) __builtin_convertvector(c, fnn_pi16)
#define FNN_CONV_D(c) (c)
FNN_POOL_VEC(float, s, fnn_pv16s, fnn_pm16s, FNN_CONV_S)
FNN_POOL_VEC(double, d, fnn_pv16d, fnn_pm16d, FNN_CONV_D)
#undef FNN_CONV_S
#undef FNN_CONV_D
#undef FNN_POOL_VEC
#undef FNN_PICK
#else
/* AVX2/SSE builds: 16-lane int64 positions and cross-lane shuffles lowered badly there (slower
 * than the scalar loop), so those builds keep conv.pxi's own loop */
#define FNN_POOL_VEC2X2 0
static int fnn_maxpool2x2_s(const float *x, float *y, int64_t *idx, long planes, long hgt,
                            long wid, long ho, long wo) { return 0; }
static int fnn_maxpool2x2_d(const double *x, double *y, int64_t *idx, long planes, long hgt,
                            long wid, long ho, long wo) { return 0; }
#endif
#endif
