"""numba.cuda GELU (exact and tanh), SiLU, ELU, Softplus and their backwards (reference.py's): grid-stride elementwise loops.

erf is CUDA's own (libdevice erf / erff, within 2 ulp); kernels are built per dtype so
that float32 math stays float32 on the GPU.
"""
import functools
import math

import numpy as np
from numba import cuda

from .. import reference as _r
from ._device import Call, as_device, empty, launch


@functools.lru_cache(maxsize=None)
def _kernels(dtype):
    t = np.dtype(dtype).type
    half, one, three = t(0.5), t(1), t(3)
    s12, isq2pi, k, c = t(_r.SQRT1_2), t(_r.INV_SQRT_2PI), t(_r.GELU_K), t(_r.GELU_C)

    @cuda.jit
    def gelu(x, y):
        s, d = cuda.grid(1), cuda.gridsize(1)
        for i in range(s, x.shape[0], d):
            v = x[i]
            y[i] = half * v * (one + math.erf(v * s12))

    @cuda.jit
    def gelu_backward(dy, x, dx):
        s, d = cuda.grid(1), cuda.gridsize(1)
        for i in range(s, dy.shape[0], d):
            v = x[i]
            dx[i] = dy[i] * (half * (one + math.erf(v * s12)) + v * math.exp(-half * v * v) * isq2pi)

    @cuda.jit
    def gelu_tanh(x, y):
        s, d = cuda.grid(1), cuda.gridsize(1)
        for i in range(s, x.shape[0], d):
            v = x[i]
            y[i] = half * v * (one + math.tanh(k * (v + c * v * v * v)))

    @cuda.jit
    def gelu_tanh_backward(dy, x, dx):
        s, d = cuda.grid(1), cuda.gridsize(1)
        for i in range(s, dy.shape[0], d):
            v = x[i]
            th = math.tanh(k * (v + c * v * v * v))
            dx[i] = dy[i] * (half * (one + th) + half * v * (one - th * th) * k * (one + three * c * v * v))

    zero = t(0)

    @cuda.jit(device=True)
    def sig(v):
        e = math.exp(-abs(v))           # never overflows
        r = one / (one + e)
        return r if v >= zero else e * r

    @cuda.jit
    def silu(x, y):
        s, d = cuda.grid(1), cuda.gridsize(1)
        for i in range(s, x.shape[0], d):
            y[i] = x[i] * sig(x[i])

    @cuda.jit
    def silu_backward(dy, x, dx):
        s, d = cuda.grid(1), cuda.gridsize(1)
        for i in range(s, dy.shape[0], d):
            v = x[i]
            g = sig(v)
            dx[i] = dy[i] * (g * (one + v * (one - g)))

    @cuda.jit
    def elu(x, alpha, y):
        s, d = cuda.grid(1), cuda.gridsize(1)
        for i in range(s, x.shape[0], d):
            v = x[i]
            y[i] = v if v > zero else alpha * math.expm1(v)

    @cuda.jit
    def elu_backward(dy, x, alpha, dx):
        s, d = cuda.grid(1), cuda.gridsize(1)
        for i in range(s, dy.shape[0], d):
            v = x[i]
            dx[i] = dy[i] if v > zero else dy[i] * alpha * math.exp(v)

    @cuda.jit
    def softplus(x, beta, threshold, y):
        s, d = cuda.grid(1), cuda.gridsize(1)
        for i in range(s, x.shape[0], d):
            v = x[i]
            z = v * beta
            y[i] = v if z > threshold else (max(z, zero) + math.log1p(math.exp(-abs(z)))) / beta

    @cuda.jit
    def softplus_backward(dy, x, beta, threshold, dx):
        s, d = cuda.grid(1), cuda.gridsize(1)
        for i in range(s, dy.shape[0], d):
            z = x[i] * beta
            dx[i] = dy[i] if z > threshold else dy[i] * sig(z)

    return dict(gelu=gelu, gelu_backward=gelu_backward, gelu_tanh=gelu_tanh,
                gelu_tanh_backward=gelu_tanh_backward, silu=silu, silu_backward=silu_backward,
                elu=elu, elu_backward=elu_backward, softplus=softplus, softplus_backward=softplus_backward)


def _flat(a):
    return a.arr.reshape(a.size)


def _map(name, call, *arrays, scalars=()):
    """Run the elementwise kernel name over the flat arrays; returns a new array like arrays[0]."""
    arrays = [as_device(a) for a in arrays]
    out = empty(arrays[0].shape, arrays[0].dtype)
    if out.size:
        t = out.dtype.type
        _kernels(out.dtype)[name][launch(out.size)](*(_flat(a) for a in arrays),
                                                    *(t(s) for s in scalars), _flat(out))
    return call.out(out)


def gelu(x):
    return _map("gelu", Call(x), x)


def gelu_backward(dy, x, y):
    return _map("gelu_backward", Call(dy, x, y), dy, x)


def gelu_tanh(x):
    return _map("gelu_tanh", Call(x), x)


def gelu_tanh_backward(dy, x, y):
    return _map("gelu_tanh_backward", Call(dy, x, y), dy, x)


def silu(x):
    return _map("silu", Call(x), x)


def silu_backward(dy, x, y):
    return _map("silu_backward", Call(dy, x, y), dy, x)


def elu(x, alpha=1.0):
    return _map("elu", Call(x), x, scalars=(alpha,))


def elu_backward(dy, x, y, alpha=1.0):
    return _map("elu_backward", Call(dy, x, y), dy, x, scalars=(alpha,))


def softplus(x, beta=1.0, threshold=20.0):
    return _map("softplus", Call(x), x, scalars=(beta, threshold))


def softplus_backward(dy, x, y, beta=1.0, threshold=20.0):
    return _map("softplus_backward", Call(dy, x, y), dy, x, scalars=(beta, threshold))
