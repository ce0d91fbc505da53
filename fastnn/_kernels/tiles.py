"""The GEMM tile and block sizes: one table, per engine (Numba, or Cython per ISA) and dtype.

Every GEMM reads its sizes from here, directly or through generated code:

  * numba_cpu/_gen_micro.py makes numba_cpu/_micro.py, the MR x NR register
    microkernels, from TILES["numba"]; numba_cpu/gemm.py reads the same entry
    (MR, NR for its thread split, KC, MC, NC for its cache blocking);
  * c_header() renders the Cython entries as cython/fnn_tiles.h (#defines that
    fnn_simd.h and gemm.pxi use); the intrinsics microkernels in fnn_simd.h are
    written for one tile each and fail to compile if the table disagrees.

Regenerate both after a change here:  python -m fastnn._kernels.generate
(tests/test_generated.py fails while a generated file differs from its generator).

Fields (elements, not bytes):
  MR x NR  the tile of C a microkernel keeps in registers;
  KC       depth of one packed K slice (a KC x NR strip of B stays in L1);
  MC       rows of the packed MC x KC block of A (L2); a multiple of MR;
  NC       columns of the packed KC x NC panel of B (L3); a multiple of NR.
Measured on Zen 4 (32 KiB L1d, 1 MiB L2 per core) for float32 AVX-512.
"""
from collections import namedtuple

Tile = namedtuple("Tile", "mr nr kc mc nc")

TILES = {
    # scalar-accumulator microkernels that LLVM's SLP vectorizer packs into zmm registers
    "numba": {
        "float32": Tile(mr=8, nr=32, kc=256, mc=192, nc=4096),
        "float64": Tile(mr=8, nr=16, kc=256, mc=96, nc=2048),
    },
    # intrinsics (fnn_simd.h): 16 zmm accumulators
    "cython-avx512": {
        "float32": Tile(mr=8, nr=32, kc=384, mc=128, nc=3072),
        "float64": Tile(mr=8, nr=16, kc=256, mc=96, nc=2048),
    },
    # intrinsics: 12 ymm accumulators
    "cython-avx2": {
        "float32": Tile(mr=6, nr=16, kc=384, mc=132, nc=3072),
        "float64": Tile(mr=6, nr=8, kc=256, mc=96, nc=2048),
    },
    # plain C loops the compiler vectorizes as it can
    "cython-generic": {
        "float32": Tile(mr=4, nr=8, kc=384, mc=128, nc=3072),
        "float64": Tile(mr=4, nr=4, kc=256, mc=96, nc=2048),
    },
}

# Cython only: with M <= DIRECT_B_TILES * MR a non-transposed B is read in place,
# not packed (its panel would be reused too few times to pay for the copy).
DIRECT_B_TILES = {"cython-avx512": 32, "cython-avx2": 8, "cython-generic": 0}

# the preprocessor macro fnn_simd.h defines for each Cython ISA
_ISA_MACRO = {"cython-avx512": "FNN_ISA_AVX512", "cython-avx2": "FNN_ISA_AVX2",
              "cython-generic": None}


def tile(engine, dtype):
    """The Tile of an engine ('numba', 'cython-avx512', ...) for a dtype."""
    import numpy as np
    return TILES[engine][np.dtype(dtype).name]


def c_header(command):
    """fnn_tiles.h: the Cython entries of TILES as #defines (_S float32, _D float64)."""
    out = [
        "/* GEMM tile and block sizes of the Cython kernels, per ISA (_S float32, _D float64).",
        f" * GENERATED from fastnn/_kernels/tiles.py by `{command}`;",
        " * do not edit by hand. */",
        "#ifndef FNN_TILES_H",
        "#define FNN_TILES_H",
        "",
    ]
    engines = [e for e in TILES if e.startswith("cython-")]
    for n, engine in enumerate(engines):
        macro = _ISA_MACRO[engine]
        out.append((f"#if defined({macro})" if n == 0 else
                    f"#elif defined({macro})" if macro else "#else") + f"  /* {engine} */")
        for suffix, dtype in (("S", "float32"), ("D", "float64")):
            t = TILES[engine][dtype]
            for field in Tile._fields:
                out.append(f"#define FNN_{field.upper()}_{suffix} {getattr(t, field)}")
        out.append(f"#define FNN_DIRECT_B_TILES {DIRECT_B_TILES[engine]}")
    out += ["#endif", "", "#endif", ""]
    return "\n".join(out)
