"""AdamW, RMSprop, Adagrad steps in place over flat buffers, and the two passes of a gradient clip.

PyTorch's rules, as reference.adamw_step / rmsprop_step / adagrad_step /
grad_norm / grad_scale. Scalars are cast to the buffers' dtype first, so float32
buffers update in float32 arithmetic; grad_norm sums in float64.
"""
import math

import numpy as np
from numba import njit

from ._math import sqrt

FM = {"contract"}


@njit(cache=True, fastmath=FM, error_model="numpy")
def _adamw(param, grad, m, v, decay, beta1, beta1c, beta2, beta2c, eps, step_size, inv_bc2_sqrt):
    for i in range(param.size):
        g = grad[i]
        mi = beta1 * m[i] + beta1c * g
        vi = beta2 * v[i] + beta2c * g * g
        m[i] = mi
        v[i] = vi
        param[i] = param[i] * decay - step_size * mi / (sqrt(vi) * inv_bc2_sqrt + eps)


@njit(cache=True, fastmath=FM, error_model="numpy")
def _rmsprop(param, grad, sq, ga, mb, lr, alpha, alphac, eps, wd, momentum, centered):
    for i in range(param.size):
        g = grad[i] + wd * param[i]
        s = alpha * sq[i] + alphac * g * g
        sq[i] = s
        if centered:
            a = alpha * ga[i] + alphac * g
            ga[i] = a
            s = s - a * a
        avg = sqrt(s) + eps
        if momentum != 0:
            b = momentum * mb[i] + g / avg
            mb[i] = b
            param[i] -= lr * b
        else:
            param[i] -= lr * g / avg


@njit(cache=True, fastmath=FM, error_model="numpy")
def _adagrad(param, grad, state_sum, clr, wd, eps):
    for i in range(param.size):
        g = grad[i] + wd * param[i]
        s = state_sum[i] + g * g
        state_sum[i] = s
        param[i] -= clr * g / (sqrt(s) + eps)


@njit(cache=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def _sum_pow(grad, p):
    s = 0.0
    if p == 2.0:
        for i in range(grad.size):
            x = np.float64(grad[i])
            s += x * x
    elif p == 1.0:
        for i in range(grad.size):
            s += abs(np.float64(grad[i]))
    else:
        for i in range(grad.size):
            s += abs(np.float64(grad[i])) ** p
    return s


@njit(cache=True, error_model="numpy")
def _max_abs(grad):
    s = 0.0
    for i in range(grad.size):
        x = abs(np.float64(grad[i]))
        if x > s or x != x:
            s = x
    return s


@njit(cache=True, fastmath=FM, error_model="numpy")
def _scale(grad, factor):
    for i in range(grad.size):
        grad[i] *= factor


def adamw_step(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, t):
    """One AdamW update (decoupled weight decay); t is the 1-based step count."""
    d = param.dtype.type
    _adamw(param, grad, m, v, d(1 - lr * weight_decay), d(beta1), d(1 - beta1), d(beta2),
           d(1 - beta2), d(eps), d(lr / (1 - beta1 ** t)), d(1 / math.sqrt(1 - beta2 ** t)))


def rmsprop_step(param, grad, square_avg, grad_avg, momentum_buf, lr, alpha, eps,
                 weight_decay=0.0, momentum=0.0, centered=False):
    """One RMSprop update (torch.optim.RMSprop)."""
    d = param.dtype.type
    _rmsprop(param, grad, square_avg, grad_avg, momentum_buf, d(lr), d(alpha), d(1 - alpha),
             d(eps), d(weight_decay), d(momentum), bool(centered))


def adagrad_step(param, grad, state_sum, lr, lr_decay=0.0, weight_decay=0.0, eps=1e-10, t=1):
    """One Adagrad update (torch.optim.Adagrad), step t (1-based)."""
    d = param.dtype.type
    _adagrad(param, grad, state_sum, d(lr / (1 + (t - 1) * lr_decay)), d(weight_decay), d(eps))


def grad_norm(grad, norm_type=2.0):
    """The norm_type-norm of a flat buffer (inf: max |g|), as a Python float."""
    if math.isinf(norm_type):
        return float(_max_abs(grad))
    return float(_sum_pow(grad, float(norm_type)) ** (1.0 / norm_type))


def grad_scale(grad, factor):
    """grad *= factor, in place."""
    _scale(grad, grad.dtype.type(factor))
