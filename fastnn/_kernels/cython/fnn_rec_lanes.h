/* Samples-in-lanes RNN/LSTM/GRU time loops (the small-hidden path of recurrent.pxi): vector types,
 * lane-wise exp/sigmoid/tanh (fnn_expf/fnn_exp/fnn_tanhf/fnn_tanh of fnn_simd.h on whole vectors),
 * and the per-block kernels of fnn_rec_lanes_impl.h for float (_s) and double (_d). They match
 * reference.rnn/lstm/gru and the time loops of their *_backward.
 *
 * A block is LB samples (one vector of the ISA: 16 floats / 8 doubles with AVX-512); every
 * per-step quantity of a block is an array of vectors, one vector a gate row or hidden unit, one
 * lane a sample. So the gate math always runs on full vectors whatever H is, and W h is a chain of
 * broadcast-FMAs. GCC/clang vector extensions only: elsewhere FNN_LANES is 0 and recurrent.pxi
 * keeps its samples-in-rows path. */
#ifndef FNN_REC_LANES_H
#define FNN_REC_LANES_H

#include "fnn_simd.h"
#include "fnn_vec.h"

#if defined(__GNUC__) || defined(__clang__)
#define FNN_LANES 1
#if !defined(FNN_ISA_AVX512) && !defined(FNN_ISA_AVX2) && defined(__SSE2__)
#include <emmintrin.h>
#endif

#if defined(FNN_ISA_AVX512)
#define FNN_LV 64
#elif defined(FNN_ISA_AVX2)
#define FNN_LV 32
#else
#define FNN_LV 16
#endif

typedef float fnn_lvs __attribute__((vector_size(FNN_LV)));
typedef int32_t fnn_lvsi __attribute__((vector_size(FNN_LV)));
typedef double fnn_lvd __attribute__((vector_size(FNN_LV)));
typedef int64_t fnn_lvdi __attribute__((vector_size(FNN_LV)));
#define FNN_LB_S (FNN_LV / 4)
#define FNN_LB_D (FNN_LV / 8)

static long fnn_lanes_width_s(void) { return FNN_LB_S; }
static long fnn_lanes_width_d(void) { return FNN_LB_D; }

/* m ? a : b lane by lane: fnn_vec.h's FNN_VSEL at the ISA's width */
FNN_INLINE fnn_lvs fnn_lsel_s(fnn_lvsi m, fnn_lvs a, fnn_lvs b) {
    return FNN_VSEL(fnn_lvs, fnn_lvsi, m, a, b);
}
FNN_INLINE fnn_lvd fnn_lsel_d(fnn_lvdi m, fnn_lvd a, fnn_lvd b) {
    return FNN_VSEL(fnn_lvd, fnn_lvdi, m, a, b);
}

/* min(max(x, lo), hi): one min and one max instruction (a select costs three). x goes
 * second: x86 min/max return their second operand when either is NaN, so NaN stays NaN
 * (a diverging run must not come out finite). FNN_LCLAMP_DEF(S, T, P, C) defines fnn_lclamp_S
 * for scalar T with the intrinsics' suffix P (ps/pd) and register type suffix C (none/d). */
#if defined(FNN_ISA_AVX512)
#define FNN_LMINMAX(P, C, vlo, vhi, x) \
    _mm512_min_##P((__m512##C)vhi, _mm512_max_##P((__m512##C)vlo, (__m512##C)x))
#elif defined(FNN_ISA_AVX2)
#define FNN_LMINMAX(P, C, vlo, vhi, x) \
    _mm256_min_##P((__m256##C)vhi, _mm256_max_##P((__m256##C)vlo, (__m256##C)x))
#elif defined(__SSE2__)
#define FNN_LMINMAX(P, C, vlo, vhi, x) \
    _mm_min_##P((__m128##C)vhi, _mm_max_##P((__m128##C)vlo, (__m128##C)x))
#endif
#if defined(FNN_LMINMAX)
#define FNN_LCLAMP_BODY(S, P, C) return (fnn_lv##S)FNN_LMINMAX(P, C, vlo, vhi, x)
#else   /* no SSE2: two selects */
#define FNN_LCLAMP_BODY(S, P, C)                                                             \
    x = fnn_lsel_##S((fnn_lv##S##i)(x > vhi), vhi, x);                                       \
    return fnn_lsel_##S((fnn_lv##S##i)(x < vlo), vlo, x)
#endif
#define FNN_LCLAMP_DEF(S, T, P, C)                                                           \
FNN_INLINE fnn_lv##S fnn_lclamp_##S(fnn_lv##S x, T lo, T hi) {                               \
    fnn_lv##S vlo = (fnn_lv##S){0} + lo, vhi = (fnn_lv##S){0} + hi;                          \
    FNN_LCLAMP_BODY(S, P, C);                                                                \
}
FNN_LCLAMP_DEF(s, float, ps, )
FNN_LCLAMP_DEF(d, double, pd, d)
#undef FNN_LCLAMP_DEF
#undef FNN_LCLAMP_BODY
#undef FNN_LMINMAX

/* 1 / d. (The reciprocal estimate plus a Newton step measured slower than the divider here.) */
FNN_INLINE fnn_lvs fnn_lrcp_s(fnn_lvs d) {
    return 1.0f / d;
}

/* exp(x) for x already clamped to [-87, 87] (float) / [-708, 708] (double): fnn_expf /
 * fnn_exp's reduction and polynomial (fnn_simd.h's FNN_EXPF_POLY / FNN_EXP_POLY), so results
 * stay finite and normal. */
FNN_INLINE fnn_lvs fnn_lexp_s(fnn_lvs xc) {
    FNN_EXPF_POLY(fnn_lvs, xc, t, pp);
    fnn_lvsi bits = ((fnn_lvsi)t - FNN_EXPF_MAGIC_BITS + 127) << 23;
    return pp * (fnn_lvs)bits;
}
FNN_INLINE fnn_lvd fnn_lexp_d(fnn_lvd xc) {
    FNN_EXP_POLY(fnn_lvd, xc, t, pp);
    fnn_lvdi bits = ((fnn_lvdi)t - FNN_EXP_MAGIC_BITS + 1023) << 52;
    return pp * (fnn_lvd)bits;
}

FNN_INLINE fnn_lvs fnn_lsig_s(fnn_lvs v) {
    return fnn_lrcp_s(1.0f + fnn_lexp_s(fnn_lclamp_s(-v, -87.0f, 87.0f)));
}
FNN_INLINE fnn_lvd fnn_lsig_d(fnn_lvd v) {
    return 1.0 / (1.0 + fnn_lexp_d(fnn_lclamp_d(-v, -708.0, 708.0)));
}

/* fnn_tanhf on lanes: Eigen's rational x P(x^2) / Q(x^2) (FNN_TANHF_RATIONAL) */
FNN_INLINE fnn_lvs fnn_ltanh_s(fnn_lvs x) {
    const float clamp = 7.90531110763549805f;
    fnn_lvs xc = fnn_lclamp_s(x, -clamp, clamp);
    fnn_lvs z = xc * xc;
    FNN_TANHF_RATIONAL(fnn_lvs, xc, z, p, q);
    fnn_lvs r = p * fnn_lrcp_s(q);
    fnn_lvsi small = (fnn_lvsi)(z < 0.0004f * 0.0004f);
    return fnn_lsel_s(small, x, r);
}

/* fnn_tanh on lanes: (1 - e) / (1 + e), e = exp(-2|x|), and a series below 0.25 */
FNN_INLINE fnn_lvd fnn_ltanh_d(fnn_lvd x) {
    fnn_lvdi neg = (fnn_lvdi)(x < 0.0);
    fnn_lvd ax = fnn_lsel_d(neg, -x, x);
    fnn_lvd e = fnn_lexp_d(fnn_lclamp_d(-2.0 * ax, -708.0, 0.0));
    fnn_lvd big = (1.0 - e) / (1.0 + e);
    fnn_lvd z = x * x;
    FNN_TANH_SERIES(fnn_lvd, z, pp);
    fnn_lvd small = ax + ax * z * pp;
    fnn_lvd r = fnn_lsel_d((fnn_lvdi)(ax < 0.25), small, big);
    return fnn_lsel_d(neg, -r, r);
}

#define FT float
#define FV fnn_lvs
#define LB FNN_LB_S
#define FN(name) name##_s
#define VSIG fnn_lsig_s
#define VTANH fnn_ltanh_s
#include "fnn_rec_lanes_impl.h"
#undef FT
#undef FV
#undef LB
#undef FN
#undef VSIG
#undef VTANH

#define FT double
#define FV fnn_lvd
#define LB FNN_LB_D
#define FN(name) name##_d
#define VSIG fnn_lsig_d
#define VTANH fnn_ltanh_d
#include "fnn_rec_lanes_impl.h"
#undef FT
#undef FV
#undef LB
#undef FN
#undef VSIG
#undef VTANH

#else  /* no vector extensions: the row path only */
#define FNN_LANES 0
#define FNN_LB_S 1
#define FNN_LB_D 1
static long fnn_lanes_width_s(void) { return 1; }
static long fnn_lanes_width_d(void) { return 1; }
static long fnn_lanes_bufsize_s(int kind, long T, long F, long H) { return 0; }
static long fnn_lanes_bufsize_d(int kind, long T, long F, long H) { return 0; }
static long fnn_lanes_accbytes_s(int kind, long F, long H) { return 0; }
static long fnn_lanes_accbytes_d(int kind, long F, long H) { return 0; }
static void fnn_lanes_fwd_s(int kind, long n0, long nl, long T, long F, long H, const float *x,
    const float *wih, const float *whh, const float *bias, float *h, float *c, float *gates,
    float *hn, void *buf) {}
static void fnn_lanes_fwd_d(int kind, long n0, long nl, long T, long F, long H, const double *x,
    const double *wih, const double *whh, const double *bias, double *h, double *c, double *gates,
    double *hn, void *buf) {}
static void fnn_lanes_bwd_s(int kind, long n0, long nl, long T, long F, long H, const float *dh,
    const float *x, const float *h, const float *c, const float *gates, const float *hn,
    const float *whht, const float *wiht, float *da, float *dhid, float *dx, float *part,
    void *buf) {}
static void fnn_lanes_bwd_d(int kind, long n0, long nl, long T, long F, long H, const double *dh,
    const double *x, const double *h, const double *c, const double *gates, const double *hn,
    const double *whht, const double *wiht, double *da, double *dhid, double *dx, double *part,
    void *buf) {}
#endif

#endif /* FNN_REC_LANES_H */
