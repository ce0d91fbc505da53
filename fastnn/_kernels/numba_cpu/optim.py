"""Optimizer updates in place on flat 1-D buffers, one pass over the elements.

PyTorch's rules, as reference.sgd_step / reference.adam_step. Scalars are cast
to the buffers' dtype first, so float32 buffers update in float32 arithmetic.
"""
from numba import njit

from ._math import sqrt

FM = {"contract"}


@njit(cache=True, fastmath=FM, error_model="numpy")
def _sgd(param, grad, velocity, lr, momentum, nesterov, weight_decay):
    for i in range(param.size):
        g = grad[i] + weight_decay * param[i]
        if momentum != 0:
            v = momentum * velocity[i] + g
            velocity[i] = v
            g = g + momentum * v if nesterov else v
        param[i] -= lr * g


@njit(cache=True, fastmath=FM, error_model="numpy")
def _adam(param, grad, m, v, lr, beta1, beta1c, beta2, beta2c, eps, weight_decay,
          inv_bc1, inv_bc2):
    """Scalars in param's dtype; beta1c = 1 - beta1, beta2c = 1 - beta2."""
    for i in range(param.size):
        g = grad[i] + weight_decay * param[i]
        mi = beta1 * m[i] + beta1c * g
        vi = beta2 * v[i] + beta2c * g * g
        m[i] = mi
        v[i] = vi
        param[i] -= lr * (mi * inv_bc1) / (sqrt(vi * inv_bc2) + eps)


def sgd_step(param, grad, velocity, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    t = param.dtype.type
    _sgd(param, grad, velocity, t(lr), t(momentum), bool(nesterov), t(weight_decay))


def adam_step(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, t):
    """One Adam update; t is the 1-based step count (for bias correction)."""
    d = param.dtype.type
    inv_bc1 = 1.0 / (1.0 - beta1 ** t)
    inv_bc2 = 1.0 / (1.0 - beta2 ** t)
    _adam(param, grad, m, v, d(lr), d(beta1), d(1 - beta1), d(beta2), d(1 - beta2),
          d(eps), d(weight_decay),
          d(inv_bc1), d(inv_bc2))
