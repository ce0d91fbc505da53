"""numba.cuda adamw_step, rmsprop_step, adagrad_step, grad_norm and grad_scale (reference.py's), in place over one flat buffer.

Elementwise grid-stride passes as optim.py; the step-dependent scalars (bias
corrections, Adagrad's decayed lr) are computed once on the host. grad_norm is
one reduction pass (float64 per-block partials) whose single result comes back.
"""
import functools
import math

import numpy as np
from numba import cuda, float64

from ._device import as_device, launch
from .losses import _T, _block_sum, _blocks
from .optim import _buffers, _copy_back


@functools.lru_cache(maxsize=None)
def _kernels(dtype):
    t = np.dtype(dtype).type
    one = t(1)

    @cuda.jit
    def adamw(param, grad, m, v, decay, beta1, beta2, eps, step, ibc2s):
        s, d = cuda.grid(1), cuda.gridsize(1)
        for i in range(s, param.shape[0], d):
            g = grad[i]
            mi = beta1 * m[i] + (one - beta1) * g
            vi = beta2 * v[i] + (one - beta2) * g * g
            m[i] = mi
            v[i] = vi
            param[i] = param[i] * decay - step * mi / (math.sqrt(vi) * ibc2s + eps)

    @cuda.jit
    def rmsprop(param, grad, sq, ga, mb, lr, alpha, eps, wd, momentum, centered):
        s, d = cuda.grid(1), cuda.gridsize(1)
        for i in range(s, param.shape[0], d):
            g = grad[i] + wd * param[i]
            q = alpha * sq[i] + (one - alpha) * g * g
            sq[i] = q
            if centered:
                a = alpha * ga[i] + (one - alpha) * g
                ga[i] = a
                q = q - a * a
            avg = math.sqrt(q) + eps
            if momentum != 0:
                b = momentum * mb[i] + g / avg
                mb[i] = b
                param[i] -= lr * b
            else:
                param[i] -= lr * g / avg

    @cuda.jit
    def adagrad(param, grad, state_sum, clr, wd, eps):
        s, d = cuda.grid(1), cuda.gridsize(1)
        for i in range(s, param.shape[0], d):
            g = grad[i] + wd * param[i]
            q = state_sum[i] + g * g
            state_sum[i] = q
            param[i] -= clr * g / (math.sqrt(q) + eps)

    @cuda.jit
    def sum_pow(grad, order, partials):
        s, d = cuda.grid(1), cuda.gridsize(1)
        acc = 0.0
        for i in range(s, grad.shape[0], d):
            x = abs(float64(grad[i]))
            acc += x * x if order == 2.0 else x ** order
        _block_sum(acc, partials)

    @cuda.jit
    def scale(grad, factor):
        s, d = cuda.grid(1), cuda.gridsize(1)
        for i in range(s, grad.shape[0], d):
            grad[i] *= factor

    return dict(adamw=adamw, rmsprop=rmsprop, adagrad=adagrad, sum_pow=sum_pow, scale=scale)


def adamw_step(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, t):
    """One AdamW update (decoupled weight decay); t is the 1-based step count."""
    (p, m_d, v_d), back = _buffers(param, m, v)
    g = as_device(grad, p.dtype)
    ty = p.dtype.type
    if p.size:
        _kernels(p.dtype)["adamw"][launch(p.size)](
            p.arr, g.arr, m_d.arr, v_d.arr, ty(1 - lr * weight_decay), ty(beta1), ty(beta2),
            ty(eps), ty(lr / (1 - beta1 ** t)), ty(1 / math.sqrt(1 - beta2 ** t)))
    _copy_back(back)


def rmsprop_step(param, grad, square_avg, grad_avg, momentum_buf, lr, alpha, eps,
                 weight_decay=0.0, momentum=0.0, centered=False):
    """One RMSprop update (torch.optim.RMSprop)."""
    (p, sq, ga, mb), back = _buffers(param, square_avg, grad_avg, momentum_buf)
    g = as_device(grad, p.dtype)
    ty = p.dtype.type
    if p.size:
        _kernels(p.dtype)["rmsprop"][launch(p.size)](
            p.arr, g.arr, sq.arr, ga.arr, mb.arr, ty(lr), ty(alpha), ty(eps), ty(weight_decay),
            ty(momentum), bool(centered))
    _copy_back(back)


def adagrad_step(param, grad, state_sum, lr, lr_decay=0.0, weight_decay=0.0, eps=1e-10, t=1):
    """One Adagrad update (torch.optim.Adagrad), step t (1-based)."""
    (p, ss), back = _buffers(param, state_sum)
    g = as_device(grad, p.dtype)
    ty = p.dtype.type
    if p.size:
        _kernels(p.dtype)["adagrad"][launch(p.size)](
            p.arr, g.arr, ss.arr, ty(lr / (1 + (t - 1) * lr_decay)), ty(weight_decay), ty(eps))
    _copy_back(back)


def grad_norm(grad, norm_type=2.0):
    """The norm_type-norm of a flat buffer (inf: max |g|, taken on the host), as a Python float."""
    g = as_device(grad)
    if g.size == 0:
        return 0.0
    if math.isinf(norm_type):   # a max reduction: rare (clip_grad_norm's norm_type=inf)
        return float(np.abs(g.copy_to_host().astype(np.float64)).max())
    blocks = _blocks(g.size)
    partials = cuda.device_array(blocks, np.float64)
    _kernels(g.dtype)["sum_pow"][blocks, _T](g.arr, float(norm_type), partials)
    total = float(partials.copy_to_host().sum())
    return total ** (1.0 / norm_type)


def grad_scale(grad, factor):
    """grad *= factor, in place."""
    (g,), back = _buffers(grad)
    if g.size:
        _kernels(g.dtype)["scale"][launch(g.size)](g.arr, g.dtype.type(factor))
    _copy_back(back)
