"""Branch-free exp, log1p and sqrt that LLVM can vectorize (Numba without Intel
SVML calls libm one element at a time). exp and log1p work in float64; float32
kernels call them and round the result, exact to float32 precision.

Writing vectorizable loops here: a conditional expression whose branches hold a
division (`(1 if x >= 0 else e) / d`) stays a branch and blocks vectorization;
divide first, then choose between cheap results (`r if x >= 0 else e * r`).
"""
import math

import numpy as np

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

# Elementwise kernels may reassociate sums (so row sums vectorize) and fuse
# multiply-adds; they keep NaN and inf semantics (no 'nnan'/'ninf').
FM = {"reassoc", "contract", "nsz", "arcp"}
# Only for max reductions: 'nnan' lets LLVM use vector max. A NaN still ends up
# in the result, because the caller then computes exp(x - max) of it.
FM_MAX = {"nnan", "nsz", "reassoc"}

_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10


@intrinsic
def _int64_as_float64(typingctx, i):
    """Reinterpret the bits of an int64 as a float64."""
    if i != types.int64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], context.get_value_type(types.float64))
    return types.float64(types.int64), codegen


@intrinsic
def sqrt(typingctx, x):
    """llvm.sqrt: Numba's math.sqrt / np.sqrt call libm's sqrt, which does not vectorize."""
    if x not in (types.float32, types.float64):
        return None

    def codegen(context, builder, sig, args):
        ty = context.get_value_type(x)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty]),
                                            "llvm.sqrt.f32" if x == types.float32 else "llvm.sqrt.f64")
        return builder.call(fn, args)
    return x(x), codegen


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def exp(x):
    """e**x in float64 to ~1 ulp; saturates to exp(-708) / exp(709); NaN stays NaN."""
    x = 709.0 if x > 709.0 else x
    x = -708.0 if x < -708.0 else x
    n = math.floor(x * _LOG2E + 0.5)
    r = (x - n * _LN2_HI) - n * _LN2_LO           # |r| <= ln(2)/2
    p = 1.0 / 479001600.0                          # Taylor series of e**r to r**12
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    return p * _int64_as_float64((int(n) + 1023) << 52)


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def log1p_unit(e):
    """log(1 + e) for e in [0, 1]: 2 atanh(s), s = e / (2 + e) <= 1/3."""
    s = e / (2.0 + e)
    s2 = s * s
    p = 1.0 / 33.0
    for k in range(31, 1, -2):
        p = p * s2 + 1.0 / k
    p = p * s2 + 1.0
    return 2.0 * s * p


@intrinsic
def _int32_as_float32(typingctx, i):
    """Reinterpret the low 32 bits of an integer as a float32."""
    if not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        low = builder.trunc(args[0], ir.IntType(32)) if i.bitwidth > 32 else args[0]
        return builder.bitcast(low, context.get_value_type(types.float32))
    return types.float32(i), codegen


@intrinsic
def _round_to_int32(typingctx, x):
    """x (float32) rounded to the nearest int32 (llvm.rint + fptosi): a rounding
    the callers' 'reassoc' flag cannot fold away, unlike the (x + M) - M trick."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        f32 = ir.FloatType()
        rint = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32]),
                                              "llvm.rint.f32")
        return builder.fptosi(builder.call(rint, args), ir.IntType(32))
    return types.int32(x), codegen


_F = np.float32
_LOG2E_F, _LN2_HI_F, _LN2_LO_F = _F(1.44269504), _F(0.693359375), _F(-2.12194440e-4)
_HI_F, _LO_F = _F(88.0), _F(-87.0)
_C_F = tuple(_F(1.0 / math.factorial(k)) for k in range(8))


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def exp32(x):
    """e**x for a float32 in float32 arithmetic (16 lanes a vector), to ~2 ulp;
    saturates to exp(-87) / exp(88); NaN stays NaN."""
    x = _HI_F if x > _HI_F else x
    x = _LO_F if x < _LO_F else x
    i = _round_to_int32(x * _LOG2E_F)
    n = np.float32(i)
    r = (x - n * _LN2_HI_F) - n * _LN2_LO_F
    p = _C_F[7]
    p = p * r + _C_F[6]
    p = p * r + _C_F[5]
    p = p * r + _C_F[4]
    p = p * r + _C_F[3]
    p = p * r + _C_F[2]
    p = p * r + _C_F[1]
    p = p * r + _C_F[0]
    return p * _int32_as_float32((i + 127) << 23)
