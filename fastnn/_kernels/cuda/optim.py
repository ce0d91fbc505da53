"""numba.cuda optimizer updates: sgd_step and adam_step (reference.py's), in place over one flat buffer.

One elementwise pass updates every parameter (and its optimizer state) of a
model; hyper-parameters arrive as scalars of the buffers' dtype and Adam's
bias corrections are computed once on the host.
"""
import functools
import math

import numpy as np
from numba import cuda

from ._device import as_device, launch


@functools.lru_cache(maxsize=None)
def _kernels(dtype):
    t = np.dtype(dtype).type
    one = t(1)

    @cuda.jit
    def sgd(param, grad, velocity, lr, momentum, nesterov, weight_decay):
        s, d = cuda.grid(1), cuda.gridsize(1)
        for i in range(s, param.shape[0], d):
            g = grad[i] + weight_decay * param[i]
            if momentum != 0:
                v = momentum * velocity[i] + g
                velocity[i] = v
                g = g + momentum * v if nesterov else v
            param[i] -= lr * g

    @cuda.jit
    def adam(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, bc1, bc2):
        s, d = cuda.grid(1), cuda.gridsize(1)
        for i in range(s, param.shape[0], d):
            g = grad[i] + weight_decay * param[i]
            mi = beta1 * m[i] + (one - beta1) * g
            vi = beta2 * v[i] + (one - beta2) * g * g
            m[i] = mi
            v[i] = vi
            param[i] -= lr * (mi / bc1) / (math.sqrt(vi / bc2) + eps)

    return sgd, adam


def _buffers(*arrays):
    """Device views of the in-place buffers; host buffers are copied in, and
    copied back by the caller (``back``)."""
    dev = [as_device(a) for a in arrays]
    back = [(a, d) for a, d in zip(arrays, dev) if isinstance(a, np.ndarray)]
    return dev, back


def _copy_back(back):
    for host, dev in back:
        host[...] = dev.copy_to_host()


def sgd_step(param, grad, velocity, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    (p, v), back = _buffers(param, velocity)
    g = as_device(grad, p.dtype)
    t = p.dtype.type
    if p.size:
        _kernels(p.dtype)[0][launch(p.size)](
            p.arr, g.arr, v.arr, t(lr), t(momentum), bool(nesterov), t(weight_decay))
    _copy_back(back)


def adam_step(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, t):
    """One Adam update; t is the 1-based step count (for bias correction)."""
    (p, m_d, v_d), back = _buffers(param, m, v)
    g = as_device(grad, p.dtype)
    ty = p.dtype.type
    if p.size:
        _kernels(p.dtype)[1][launch(p.size)](
            p.arr, g.arr, m_d.arr, v_d.arr, ty(lr), ty(beta1), ty(beta2), ty(eps),
            ty(weight_decay), ty(1 - beta1 ** t), ty(1 - beta2 ** t))
    _copy_back(back)
