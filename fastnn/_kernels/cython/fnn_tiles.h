/* GEMM tile and block sizes of the Cython kernels, per ISA (_S float32, _D float64).
 * GENERATED from fastnn/_kernels/tiles.py by `python -m fastnn._kernels.generate`;
 * do not edit by hand. */
#ifndef FNN_TILES_H
#define FNN_TILES_H

#if defined(FNN_ISA_AVX512)  /* cython-avx512 */
#define FNN_MR_S 8
#define FNN_NR_S 32
#define FNN_KC_S 384
#define FNN_MC_S 128
#define FNN_NC_S 3072
#define FNN_MR_D 8
#define FNN_NR_D 16
#define FNN_KC_D 256
#define FNN_MC_D 96
#define FNN_NC_D 2048
#define FNN_DIRECT_B_TILES 32
#elif defined(FNN_ISA_AVX2)  /* cython-avx2 */
#define FNN_MR_S 6
#define FNN_NR_S 16
#define FNN_KC_S 384
#define FNN_MC_S 132
#define FNN_NC_S 3072
#define FNN_MR_D 6
#define FNN_NR_D 8
#define FNN_KC_D 256
#define FNN_MC_D 96
#define FNN_NC_D 2048
#define FNN_DIRECT_B_TILES 8
#else  /* cython-generic */
#define FNN_MR_S 4
#define FNN_NR_S 8
#define FNN_KC_S 384
#define FNN_MC_S 128
#define FNN_NC_S 3072
#define FNN_MR_D 4
#define FNN_NR_D 4
#define FNN_KC_D 256
#define FNN_MC_D 96
#define FNN_NC_D 2048
#define FNN_DIRECT_B_TILES 0
#endif

#endif
