/* The machine's float32 multiply-add limit, for the GEMM benchmarks: FNN_PEAK_CHAINS independent
 * chains acc = acc * m + c in the ISA's widest vector (AVX-512 16 lanes, AVX2 8, else 4), enough
 * chains to cover the FMA latency on both FMA ports, so the loop runs at the core's peak rate.
 * No reference: it computes nothing a model uses; fnn_fma_loop returns a sum to keep it live. */
#ifndef FNN_PEAK_H
#define FNN_PEAK_H
#define FNN_PEAK_CHAINS 12   /* with m and c, 14 vector registers: fits every ISA's 16 or 32 */
#if defined(__AVX512F__)
#define FNN_PEAK_BYTES 64
#elif defined(__AVX__)
#define FNN_PEAK_BYTES 32
#else
#define FNN_PEAK_BYTES 16
#endif
#define FNN_PEAK_LANES (FNN_PEAK_BYTES / 4)

#if defined(__GNUC__)
typedef float fnn_peak_v __attribute__((vector_size(FNN_PEAK_BYTES)));

/* iters rounds of FNN_PEAK_CHAINS vector multiply-adds: 2 * iters * CHAINS * LANES flops. The
 * chains are named variables (an array of them lived in memory) and an empty asm keeps each
 * in a register and stops gcc from folding the loop. */
#define FNN_PEAK_STEP(a) do { a = a * m + c; __asm__("" : "+v"(a)); } while (0)
static float fnn_fma_loop(long iters) {
    fnn_peak_v m, c, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11;
    for (int l = 0; l < FNN_PEAK_LANES; ++l) {
        m[l] = 0.9999999f; c[l] = 1e-7f;
        a0[l] = 1.00f; a1[l] = 1.01f; a2[l] = 1.02f; a3[l] = 1.03f; a4[l] = 1.04f; a5[l] = 1.05f;
        a6[l] = 1.06f; a7[l] = 1.07f; a8[l] = 1.08f; a9[l] = 1.09f; a10[l] = 1.10f; a11[l] = 1.11f;
    }
    for (long i = 0; i < iters; ++i) {
        FNN_PEAK_STEP(a0); FNN_PEAK_STEP(a1); FNN_PEAK_STEP(a2); FNN_PEAK_STEP(a3);
        FNN_PEAK_STEP(a4); FNN_PEAK_STEP(a5); FNN_PEAK_STEP(a6); FNN_PEAK_STEP(a7);
        FNN_PEAK_STEP(a8); FNN_PEAK_STEP(a9); FNN_PEAK_STEP(a10); FNN_PEAK_STEP(a11);
    }
    fnn_peak_v t = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11;
    float s = 0;
    for (int l = 0; l < FNN_PEAK_LANES; ++l) s += t[l];
    return s;
}
#undef FNN_PEAK_STEP
#else
static float fnn_fma_loop(long iters) {
    float acc[FNN_PEAK_CHAINS * FNN_PEAK_LANES], s = 0;
    for (int k = 0; k < FNN_PEAK_CHAINS * FNN_PEAK_LANES; ++k) acc[k] = 1.0f + 1e-3f * (float)k;
    for (long i = 0; i < iters; ++i)
        for (int k = 0; k < FNN_PEAK_CHAINS * FNN_PEAK_LANES; ++k) acc[k] = acc[k] * 0.9999999f + 1e-7f;
    for (int k = 0; k < FNN_PEAK_CHAINS * FNN_PEAK_LANES; ++k) s += acc[k];
    return s;
}
#endif
#endif
