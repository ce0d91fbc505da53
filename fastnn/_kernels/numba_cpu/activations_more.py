"""GELU (exact and tanh), SiLU, ELU, Softplus and their backwards, one vectorized pass each:
reference.gelu, gelu_tanh, silu, elu, softplus and *_backward.

erf is the reference's (fdlibm's four rational approximations), evaluated branch-free
(every piece, then a select) so LLVM vectorizes it; float32 inputs are computed in
float64 and rounded.
"""
import numpy as np
from numba import njit

from .. import reference as _r
from ._math import exp, exp32, log1p_unit

# Only 'contract' (fused multiply-add): no reassociation inside erf's rational functions.
_FM = {"contract"}
_PP, _QQ, _PA, _QA = _r.ERF_PP, _r.ERF_QQ, _r.ERF_PA, _r.ERF_QA
_RA, _SA, _RB, _SB = _r.ERF_RA, _r.ERF_SA, _r.ERF_RB, _r.ERF_SB
_ERX, _S12, _ISQ2PI, _K, _C = _r.ERF_ERX, _r.SQRT1_2, _r.INV_SQRT_2PI, _r.GELU_K, _r.GELU_C


@njit(cache=True, fastmath=_FM, error_model="numpy", inline="always")
def _erf(x):
    """erf(x) for a float64, as reference.erf (NaN stays NaN)."""
    a = abs(x)
    z = a * a
    small = a + a * ((_PP[0] + z * (_PP[1] + z * (_PP[2] + z * (_PP[3] + z * _PP[4]))))
                     / (1.0 + z * (_QQ[1] + z * (_QQ[2] + z * (_QQ[3] + z * (_QQ[4] + z * _QQ[5]))))))
    s = a - 1.0
    mid = _ERX + ((_PA[0] + s * (_PA[1] + s * (_PA[2] + s * (_PA[3] + s * (_PA[4] + s * (_PA[5] + s * _PA[6]))))))
                  / (1.0 + s * (_QA[1] + s * (_QA[2] + s * (_QA[3] + s * (_QA[4] + s * (_QA[5] + s * _QA[6])))))))
    r = 1.0 / max(z, 1.0)                       # only used where |x| >= 1.25
    near = ((_RA[0] + r * (_RA[1] + r * (_RA[2] + r * (_RA[3] + r * (_RA[4] + r * (_RA[5] + r * (_RA[6] + r * _RA[7])))))))
            / (1.0 + r * (_SA[1] + r * (_SA[2] + r * (_SA[3] + r * (_SA[4] + r * (_SA[5] + r * (_SA[6] + r * (_SA[7] + r * _SA[8])))))))))
    far = ((_RB[0] + r * (_RB[1] + r * (_RB[2] + r * (_RB[3] + r * (_RB[4] + r * (_RB[5] + r * _RB[6]))))))
           / (1.0 + r * (_SB[1] + r * (_SB[2] + r * (_SB[3] + r * (_SB[4] + r * (_SB[5] + r * (_SB[6] + r * _SB[7]))))))))
    ratio = near if a < 1.0 / 0.35 else far
    tail = 1.0 - exp(-z - 0.5625 + ratio) / max(a, 1.0)
    y = 1.0 if a >= 6.0 else tail               # NaN falls through every test to tail
    y = mid if a < 1.25 else y
    y = small if a < 0.84375 else y
    return -y if x < 0 else y


@njit(cache=True, fastmath=_FM, error_model="numpy")
def _gelu(x):
    out = np.empty_like(x)
    xf, of = x.reshape(-1), out.reshape(-1)
    for i in range(xf.size):
        v = np.float64(xf[i])
        of[i] = 0.5 * v * (1.0 + _erf(v * _S12))
    return out


@njit(cache=True, fastmath=_FM, error_model="numpy")
def _gelu_backward(dy, x):
    out = np.empty_like(dy)
    df, xf, of = dy.reshape(-1), x.reshape(-1), out.reshape(-1)
    for i in range(df.size):
        v = np.float64(xf[i])
        of[i] = df[i] * (0.5 * (1.0 + _erf(v * _S12)) + v * exp(-0.5 * v * v) * _ISQ2PI)
    return out


# The tanh form as x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3): 0.5 (1 + tanh(u)) = sigmoid(2u)
# needs one exp and no 1 + tanh cancellation; float32 runs in float32 arithmetic (exp32).


@njit(cache=True, fastmath=_FM, error_model="numpy")
def _gelu_tanh(x, expf):
    out = np.empty_like(x)
    xf, of = x.reshape(-1), out.reshape(-1)
    one, k2, c = x.dtype.type(1), x.dtype.type(2 * _K), x.dtype.type(_C)
    for i in range(xf.size):
        v = xf[i]
        of[i] = v * (one / (one + expf(-k2 * (v + c * v * v * v))))
    return out


@njit(cache=True, fastmath=_FM, error_model="numpy")
def _gelu_tanh_backward(dy, x, expf):
    out = np.empty_like(dy)
    df, xf, of = dy.reshape(-1), x.reshape(-1), out.reshape(-1)
    one, k2, c, c3 = x.dtype.type(1), x.dtype.type(2 * _K), x.dtype.type(_C), x.dtype.type(3 * _C)
    for i in range(df.size):
        v = xf[i]
        s = one / (one + expf(-k2 * (v + c * v * v * v)))
        of[i] = df[i] * (s + v * s * (one - s) * k2 * (one + c3 * v * v))
    return out


@njit(cache=True, fastmath=_FM, error_model="numpy", inline="always")
def _sigmoid(v):
    e = exp(-abs(v))                    # never overflows
    r = 1.0 / (1.0 + e)
    return r if v >= 0 else e * r


_FACT = tuple(float(np.prod(np.arange(1, k + 1))) for k in range(13))   # k!


@njit(cache=True, fastmath=_FM, error_model="numpy", inline="always")
def _expm1(v):
    """exp(v) - 1 without the cancellation near 0: Taylor to v**12 where |v| < 1/4."""
    p = 1.0 / 479001600.0
    for k in range(11, 0, -1):
        p = p * v + 1.0 / _FACT[k]
    small = p * v
    return small if abs(v) < 0.25 else exp(v) - 1.0


@njit(cache=True, fastmath=_FM, error_model="numpy")
def _silu(x):
    out = np.empty_like(x)
    xf, of = x.reshape(-1), out.reshape(-1)
    for i in range(xf.size):
        v = np.float64(xf[i])
        of[i] = v * _sigmoid(v)
    return out


@njit(cache=True, fastmath=_FM, error_model="numpy")
def _silu_backward(dy, x):
    out = np.empty_like(dy)
    df, xf, of = dy.reshape(-1), x.reshape(-1), out.reshape(-1)
    for i in range(df.size):
        v = np.float64(xf[i])
        s = _sigmoid(v)
        of[i] = df[i] * (s * (1.0 + v * (1.0 - s)))
    return out


@njit(cache=True, fastmath=_FM, error_model="numpy")
def _elu(x, alpha):
    out = np.empty_like(x)
    xf, of = x.reshape(-1), out.reshape(-1)
    for i in range(xf.size):
        v = np.float64(xf[i])
        neg = alpha * _expm1(min(v, 0.0))
        of[i] = v if v > 0 else neg
    return out


@njit(cache=True, fastmath=_FM, error_model="numpy")
def _elu_backward(dy, x, alpha):
    out = np.empty_like(dy)
    df, xf, of = dy.reshape(-1), x.reshape(-1), out.reshape(-1)
    for i in range(df.size):
        v = np.float64(xf[i])
        g = np.float64(df[i])
        neg = g * alpha * exp(min(v, 0.0))
        of[i] = g if v > 0 else neg
    return out


@njit(cache=True, fastmath=_FM, error_model="numpy")
def _softplus(x, beta, threshold):
    out = np.empty_like(x)
    xf, of = x.reshape(-1), out.reshape(-1)
    for i in range(xf.size):
        v = np.float64(xf[i])
        z = v * beta
        soft = (max(z, 0.0) + log1p_unit(exp(-abs(z)))) / beta
        of[i] = v if z > threshold else soft
    return out


@njit(cache=True, fastmath=_FM, error_model="numpy")
def _softplus_backward(dy, x, beta, threshold):
    out = np.empty_like(dy)
    df, xf, of = dy.reshape(-1), x.reshape(-1), out.reshape(-1)
    for i in range(df.size):
        z = np.float64(xf[i]) * beta
        g = np.float64(df[i])
        soft = g * _sigmoid(z)
        of[i] = g if z > threshold else soft
    return out


def gelu(x):
    return _gelu(x)


def gelu_backward(dy, x, y):
    return _gelu_backward(dy, x)


def gelu_tanh(x):
    return _gelu_tanh(x, exp32 if x.dtype == np.float32 else exp)


def gelu_tanh_backward(dy, x, y):
    return _gelu_tanh_backward(dy, x, exp32 if x.dtype == np.float32 else exp)


def silu(x):
    return _silu(x)


def silu_backward(dy, x, y):
    return _silu_backward(dy, x)


def elu(x, alpha=1.0):
    return _elu(x, float(alpha))


def elu_backward(dy, x, y, alpha=1.0):
    return _elu_backward(dy, x, float(alpha))


def softplus(x, beta=1.0, threshold=20.0):
    return _softplus(x, float(beta), float(threshold))


def softplus_backward(dy, x, y, beta=1.0, threshold=20.0):
    return _softplus_backward(dy, x, float(beta), float(threshold))
