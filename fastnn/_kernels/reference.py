"""The NumPy reference: the living definition of every fastnn kernel.

Every backend implements these functions with the same names and signatures,
and starts from this module: a kernel a backend does not override falls back
to the one here.

The raw-kernel contract (what a kernel may assume; fastnn/_kernels/checks.py
enforces it in front of every backend):
  * every float array argument is C-contiguous and all of them share one dtype,
    float32 or float64; integer labels are C-contiguous int64 and in range;
  * shapes agree as documented on each function;
  * forward kernels return new arrays; ``*_step`` optimizer kernels update their
    first arguments in place and return None.

Weights use PyTorch's layout: a Dense weight is (out_features, in_features).
Losses reduce by the mean, as PyTorch's defaults do.
"""
import numpy as np

# ---------------------------------------------------------------- matmul


def matmul(a, b, trans_a=False, trans_b=False):
    """op(a) @ op(b), where op transposes when the flag is set."""
    a = a.T if trans_a else a
    b = b.T if trans_b else b
    return np.ascontiguousarray(a @ b)


def bias_add(x, b):
    """x (N, F) + b (F,) broadcast over rows."""
    return x + b


def bias_grad(dy):
    """Gradient of bias_add for b: the column sums of dy (N, F)."""
    return dy.sum(axis=0)


def linear(x, w, b):
    """Dense forward: x (N, in) @ w.T, w (out, in), plus b (out,) or None."""
    y = matmul(x, w, trans_b=True)
    return y if b is None else bias_add(y, b)


def linear_backward(dy, x, w, need_dx=True):
    """Dense backward from dy (N, out) and the saved x: (dx or None, dw, db)."""
    dw = matmul(dy, x, trans_a=True)          # (out, in)
    db = bias_grad(dy)
    dx = matmul(dy, w) if need_dx else None   # (N, in)
    return dx, dw, db


# ----------------------------------------------------------- activations
# Each forward takes x and returns y; each backward takes the incoming
# gradient dy and what the forward saw and made (x, y) and returns dx.


def step(x):
    """Heaviside step: 1 where x > 0, else 0."""
    return (x > 0).astype(x.dtype)


def step_backward(dy, x, y):
    """The step's derivative is zero almost everywhere (a perceptron unit,
    not one to train by gradient descent)."""
    return np.zeros_like(dy)


def sigmoid(x):
    # exp of -|x| never overflows; the two branches give the same function.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype)


def sigmoid_backward(dy, x, y):
    return dy * y * (1 - y)


def tanh(x):
    return np.tanh(x)


def tanh_backward(dy, x, y):
    return dy * (1 - y * y)


def relu(x):
    return np.maximum(x, 0)


def relu_backward(dy, x, y):
    return dy * (x > 0)


def leaky_relu(x, alpha=0.01):
    return np.where(x > 0, x, x * x.dtype.type(alpha))


def leaky_relu_backward(dy, x, y, alpha=0.01):
    return np.where(x > 0, dy, dy * dy.dtype.type(alpha))


def softmax(x):
    """Softmax along the last axis of a 2-D x."""
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def softmax_backward(dy, x, y):
    return y * (dy - (dy * y).sum(axis=-1, keepdims=True))


ACTIVATIONS = ("step", "sigmoid", "tanh", "relu", "leaky_relu", "softmax")

# ---------------------------------------------------------------- losses
# Each returns (loss as a Python float, d loss / d first argument).


def mse(pred, target):
    """Mean over every element of (pred - target)**2."""
    diff = pred - target
    loss = float(np.mean(diff * diff))
    return loss, (2.0 / diff.size) * diff


def cross_entropy(logits, labels):
    """Softmax cross-entropy from logits (N, C), averaged over the batch.

    labels are int64 class indices (N,) or float target rows (N, C) that
    each sum to one (one-hot or soft labels).
    """
    n = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    log_p = shifted - log_z
    p = np.exp(log_p)
    if labels.ndim == 1:
        loss = -float(log_p[np.arange(n), labels].sum()) / n
        grad = p
        grad[np.arange(n), labels] -= 1
    else:
        loss = -float((labels * log_p).sum()) / n
        grad = p - labels
    return loss, grad / n


def binary_cross_entropy(logits, target):
    """Sigmoid + binary cross-entropy from logits, averaged over elements."""
    # log(1 + exp(-|z|)) keeps large |logits| finite.
    loss = np.maximum(logits, 0) - logits * target + np.log1p(np.exp(-np.abs(logits)))
    return float(loss.mean()), (sigmoid(logits) - target) / logits.size


LOSSES = ("mse", "cross_entropy", "binary_cross_entropy")

# ------------------------------------------------------------ optimizers
# Updates act in place on flat 1-D buffers that hold every parameter, every
# gradient and every piece of optimizer state. PyTorch's update rules.


def sgd_step(param, grad, velocity, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    g = grad + weight_decay * param if weight_decay else grad.copy()
    if momentum:
        velocity *= momentum
        velocity += g
        g = g + momentum * velocity if nesterov else velocity
    param -= (lr * g).astype(param.dtype)


def adam_step(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, t):
    """One Adam update; t is the 1-based step count (for bias correction)."""
    g = grad + weight_decay * param if weight_decay else grad
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * g * g
    m_hat = m / (1 - beta1 ** t)
    v_hat = v / (1 - beta2 ** t)
    param -= (lr * m_hat / (np.sqrt(v_hat) + eps)).astype(param.dtype)


KERNELS = (
    ("matmul", "bias_add", "bias_grad", "linear", "linear_backward")
    + tuple(n for a in ACTIVATIONS for n in (a, a + "_backward"))
    + LOSSES
    + ("sgd_step", "adam_step")
)
