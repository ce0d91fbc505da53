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

Which kernels exist, with their checks and fallbacks, is declared once in
registry.py; KERNELS, LOSSES, CONV and RECURRENT here are derived from it. A new
activation is its pair of functions below and its name in ACTIVATIONS.

Weights use PyTorch's layout: a Dense weight is (out_features, in_features).
Losses reduce by the mean, as PyTorch's defaults do.
"""
import sys

import numpy as np

from .shapes import window_output_sizes

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


# The activation family: each name has name(x, ...) and name_backward(dy, x, y, ...) above.
ACTIVATIONS = ("step", "sigmoid", "tanh", "relu", "leaky_relu", "softmax")

# ------------------------------------------- more activations (issue 10: acts)
# GELU (exact and tanh-approximated), SiLU, ELU and Softplus, as torch.nn's; alpha, beta and
# threshold are Python floats (the layers validate them: beta > 0).
# erf is fdlibm's s_erf.c (Sun Microsystems, 1993; also glibc's and musl's): four
# rational approximations on |x| < 0.84375, < 1.25, < 1/0.35, < 6, and 1 beyond.
# Every backend evaluates this same erf (all branches, then a select), to ~1e-16.

ERF_ERX = 8.45062911510467529297e-01
ERF_PP = (1.28379167095512558561e-01, -3.25042107247001499370e-01, -2.84817495755985104766e-02,
          -5.77027029648944159157e-03, -2.37630166566501626084e-05)
ERF_QQ = (1.0, 3.97917223959155352819e-01, 6.50222499887672944485e-02, 5.08130628187576562776e-03,
          1.32494738004321644526e-04, -3.96022827877536812320e-06)
ERF_PA = (-2.36211856075265944077e-03, 4.14856118683748331666e-01, -3.72207876035701323847e-01,
          3.18346619901161753674e-01, -1.10894694282396677476e-01, 3.54783043256182359371e-02,
          -2.16637559486879084300e-03)
ERF_QA = (1.0, 1.06420880400844228286e-01, 5.40397917702171048937e-01, 7.18286544141962662868e-02,
          1.26171219808761642112e-01, 1.36370839120290507362e-02, 1.19844998467991074170e-02)
ERF_RA = (-9.86494403484714822705e-03, -6.93858572707181764372e-01, -1.05586262253232909814e+01,
          -6.23753324503260060396e+01, -1.62396669462573470355e+02, -1.84605092906711035994e+02,
          -8.12874355063065934246e+01, -9.81432934416914548592e+00)
ERF_SA = (1.0, 1.96512716674392571292e+01, 1.37657754143519042600e+02, 4.34565877475229228821e+02,
          6.45387271733267880336e+02, 4.29008140027567833386e+02, 1.08635005541779435134e+02,
          6.57024977031928170135e+00, -6.04244152148580987438e-02)
ERF_RB = (-9.86494292470009928597e-03, -7.99283237680523006574e-01, -1.77579549177547519889e+01,
          -1.60636384855821916062e+02, -6.37566443368389627722e+02, -1.02509513161107724954e+03,
          -4.83519191608651397019e+02)
ERF_SB = (1.0, 3.03380607434824582924e+01, 3.25792512996573918826e+02, 1.53672958608443695994e+03,
          3.19985821950859553908e+03, 2.55305040643316442583e+03, 4.74528541206955367215e+02,
          -2.24409524465858183362e+01)
SQRT1_2 = 0.7071067811865476            # 1 / sqrt(2)
INV_SQRT_2PI = 0.3989422804014327       # 1 / sqrt(2 pi)
GELU_K = 0.7978845608028654             # sqrt(2 / pi), the tanh approximation's scale
GELU_C = 0.044715


def _horner(z, coefs):
    p = coefs[-1]
    for c in coefs[-2::-1]:
        p = p * z + c
    return p


def erf(x):
    """The error function, elementwise (fdlibm's approximations, above)."""
    a = np.abs(x)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        z = a * a
        small = a + a * (_horner(z, ERF_PP) / _horner(z, ERF_QQ))
        s = a - 1
        mid = ERF_ERX + _horner(s, ERF_PA) / _horner(s, ERF_QA)
        r = 1 / z
        ratio = np.where(a < 1 / 0.35, _horner(r, ERF_RA) / _horner(r, ERF_SA),
                         _horner(r, ERF_RB) / _horner(r, ERF_SB))
        tail = 1 - np.exp(-z - 0.5625 + ratio) / a
        # NaN fails every comparison and falls through to tail, which stays NaN.
        y = np.where(a < 0.84375, small, np.where(a < 1.25, mid, np.where(a >= 6, 1.0, tail)))
    return np.copysign(y, x).astype(x.dtype, copy=False)


def gelu(x):
    """x * Phi(x) = x / 2 * (1 + erf(x / sqrt(2))): torch.nn.GELU()."""
    return 0.5 * x * (1 + erf(x * SQRT1_2))


def gelu_backward(dy, x, y):
    return dy * (0.5 * (1 + erf(x * SQRT1_2)) + x * np.exp(-0.5 * x * x) * INV_SQRT_2PI)


def gelu_tanh(x):
    """x / 2 * (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): torch.nn.GELU(approximate='tanh')."""
    return 0.5 * x * (1 + np.tanh(GELU_K * (x + GELU_C * x * x * x)))


def gelu_tanh_backward(dy, x, y):
    t = np.tanh(GELU_K * (x + GELU_C * x * x * x))
    return dy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * GELU_K * (1 + 3 * GELU_C * x * x))


def silu(x):
    """x * sigmoid(x): torch.nn.SiLU."""
    return x * sigmoid(x)


def silu_backward(dy, x, y):
    s = sigmoid(x)
    return dy * s * (1 + x * (1 - s))


def elu(x, alpha=1.0):
    """x where x > 0, else alpha * (exp(x) - 1): torch.nn.ELU."""
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


def elu_backward(dy, x, y, alpha=1.0):
    return np.where(x > 0, dy, dy * alpha * np.exp(np.minimum(x, 0)))


def softplus(x, beta=1.0, threshold=20.0):
    """log(1 + exp(beta x)) / beta, and x itself where beta x > threshold: torch.nn.Softplus."""
    xb = x * beta
    # log1p(exp(z)) = max(z, 0) + log1p(exp(-|z|)) never overflows
    soft = (np.maximum(xb, 0) + np.log1p(np.exp(-np.abs(xb)))) / beta
    return np.where(xb > threshold, x, soft).astype(x.dtype, copy=False)


def softplus_backward(dy, x, y, beta=1.0, threshold=20.0):
    xb = x * beta
    return np.where(xb > threshold, dy, dy * sigmoid(xb)).astype(dy.dtype, copy=False)


ACTIVATIONS = ACTIVATIONS + ("gelu", "gelu_tanh", "silu", "elu", "softplus")
# ----------------------------------------- end of more activations (acts)

# ------------------------------------------- dropout and embedding (issue 10: acts)
# Dropout's mask comes from a counter-based hash, so every backend draws the same mask
# for the same seed: element i (flat, from 0) of a call with stream seed s is kept when
# the high 32 bits of splitmix64(s + (i + 1) * golden) are >= dropout_threshold(p).
# The layer makes s from its key (from the model's seed) and its call count.

SPLITMIX_GOLDEN, SPLITMIX_M1, SPLITMIX_M2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def dropout_threshold(p):
    """The integer that (hash >> 32) must reach to keep an element: keeps with probability 1 - p."""
    return min(int(p * 4294967296.0 + 0.5), 4294967296)


def splitmix64(z):
    """SplitMix64's output function of a Python int (mod 2**64): how the layer mixes a stream seed."""
    m = (1 << 64) - 1
    z = (z + SPLITMIX_GOLDEN) & m
    z = ((z ^ (z >> 30)) * SPLITMIX_M1) & m
    z = ((z ^ (z >> 27)) * SPLITMIX_M2) & m
    return z ^ (z >> 31)


def dropout_mask(shape, p, seed):
    """The uint8 keep-mask (1 kept, 0 dropped) of a dropout call with stream seed (0 <= seed < 2**64)."""
    u = np.uint64
    z = u(seed) + np.arange(1, int(np.prod(shape)) + 1, dtype=u) * u(SPLITMIX_GOLDEN)
    z = (z ^ (z >> u(30))) * u(SPLITMIX_M1)
    z = (z ^ (z >> u(27))) * u(SPLITMIX_M2)
    z ^= z >> u(31)
    return ((z >> u(32)) >= u(dropout_threshold(p))).astype(np.uint8).reshape(shape)


def dropout(x, p, seed):
    """Inverted dropout of x (any shape), 0 <= p < 1: (y, mask), y = x / (1 - p) where kept, else 0."""
    mask = dropout_mask(x.shape, p, seed)
    return np.where(mask != 0, x * (1.0 / (1.0 - p)), 0).astype(x.dtype, copy=False), mask


def dropout_backward(dy, mask, p):
    """dx = dy / (1 - p) where the mask kept, else 0."""
    return np.where(mask != 0, dy * (1.0 / (1.0 - p)), 0).astype(dy.dtype, copy=False)


def embedding(weight, idx):
    """Rows of weight (V, D) at the int64 indices idx (any shape, 0 <= idx < V): (*idx.shape, D)."""
    return np.ascontiguousarray(weight[idx])


def embedding_backward_into(dy, idx, dw, padding_idx=-1):
    """Adds each row of dy (*idx.shape, D) into dw (V, D) at its index (repeated indices add
    up), skipping padding_idx (-1: none), as torch's embedding backward. Returns None."""
    d = dw.shape[1]
    flat, rows = idx.reshape(-1), dy.reshape(-1, d)
    keep = flat != padding_idx
    np.add.at(dw, flat[keep], rows[keep])


# --------------------------------------- end of dropout and embedding (acts)

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


# ------------------------------- more losses and optimizers (issue 10: optim)
# huber, l1 and cross_entropy_weighted return (loss, grad) like the losses above;
# the *_step kernels update in place like sgd_step; grad_norm / grad_scale are the
# two passes of fastnn.optim.clip_grad_norm. PyTorch's definitions throughout.


def huber(pred, target, delta=1.0):
    """torch.nn.HuberLoss (mean): 0.5 d^2 where |d| < delta, else delta (|d| - delta / 2)."""
    d = pred - target
    a = np.abs(d)
    small = a < delta
    loss = float(np.mean(np.where(small, 0.5 * d * d, delta * (a - 0.5 * delta))))
    return loss, np.where(small, d, delta * np.sign(d)) / d.size


def l1(pred, target):
    """torch.nn.L1Loss (mean): mean |d|; gradient sign(d) / size (0 where d == 0)."""
    d = pred - target
    return float(np.mean(np.abs(d))), np.sign(d) / d.size


def cross_entropy_weighted(logits, labels, weight, label_smoothing=0.0, ignore_index=-1):
    """torch.nn.CrossEntropyLoss(weight, label_smoothing, ignore_index) with class indices.

    weight (C,) (ones for none); rows whose label is ignore_index count for nothing;
    the mean divides by W = the sum of weight[label] over the rows kept, and the
    smoothing term -sum_c weight_c log p_c by W too, as torch does. When W == 0
    (every row ignored) torch returns nan; this returns loss 0 and a zero gradient.
    """
    n, c = logits.shape
    keep = labels != ignore_index
    safe = np.where(keep, labels, 0)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    w_row = np.where(keep, weight[safe], 0.0)
    total_w = float(w_row.sum())
    if total_w == 0:
        return 0.0, np.zeros_like(logits)
    nll = -float((w_row * log_p[np.arange(n), safe]).sum())
    smooth = -float(((log_p * weight).sum(axis=1) * keep).sum())
    ls = label_smoothing
    loss = ((1 - ls) * nll + ls / c * smooth) / total_w
    a = (1 - ls) * w_row / total_w                      # per row
    b = ls / (c * total_w)
    grad = p * (a + b * weight.sum() * keep)[:, None] - b * weight[None, :] * keep[:, None]
    grad[np.arange(n), safe] -= a
    return loss, grad


def adamw_step(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, t):
    """torch.optim.AdamW: decoupled decay p *= 1 - lr wd, then the Adam update (t 1-based)."""
    param *= param.dtype.type(1 - lr * weight_decay)
    m *= beta1
    m += (1 - beta1) * grad
    v *= beta2
    v += (1 - beta2) * grad * grad
    denom = np.sqrt(v) / np.sqrt(1 - beta2 ** t) + eps
    param -= ((lr / (1 - beta1 ** t)) * m / denom).astype(param.dtype)


def rmsprop_step(param, grad, square_avg, grad_avg, momentum_buf, lr, alpha, eps,
                 weight_decay=0.0, momentum=0.0, centered=False):
    """torch.optim.RMSprop; grad_avg is used when centered, momentum_buf when momentum > 0."""
    g = grad + weight_decay * param if weight_decay else grad
    square_avg *= alpha
    square_avg += (1 - alpha) * g * g
    if centered:
        grad_avg *= alpha
        grad_avg += (1 - alpha) * g
        avg = np.sqrt(square_avg - grad_avg * grad_avg) + eps
    else:
        avg = np.sqrt(square_avg) + eps
    if momentum:
        momentum_buf *= momentum
        momentum_buf += g / avg
        param -= (lr * momentum_buf).astype(param.dtype)
    else:
        param -= (lr * g / avg).astype(param.dtype)


def adagrad_step(param, grad, state_sum, lr, lr_decay=0.0, weight_decay=0.0, eps=1e-10, t=1):
    """torch.optim.Adagrad step t (1-based): clr = lr / (1 + (t - 1) lr_decay)."""
    g = grad + weight_decay * param if weight_decay else grad
    clr = lr / (1 + (t - 1) * lr_decay)
    state_sum += g * g
    param -= (clr * g / (np.sqrt(state_sum) + eps)).astype(param.dtype)


def grad_norm(grad, norm_type=2.0):
    """The norm_type-norm of a flat buffer as a Python float (inf: max |g|)."""
    a = np.abs(grad.astype(np.float64))
    if norm_type == np.inf:
        return float(a.max()) if a.size else 0.0
    return float((a ** norm_type).sum() ** (1.0 / norm_type))


def grad_scale(grad, factor):
    """grad *= factor, in place."""
    grad *= grad.dtype.type(factor)


# ---------------------------------------------- convolution and pooling
# Whole-batch kernels, weights in PyTorch's layout: conv weight (C_out, C_in, k)
# or (C_out, C_in, kh, kw). 1-D kernels take ints, 2-D kernels (h, w) pairs of
# ints for kernel_size, stride and padding. Output sizes use floor mode:
# L_out = (L + 2 * padding - k) // stride + 1 (shapes.window_output_sizes).


def _im2col(x, kh, kw, stride, padding):
    """x (N, C, H, W) -> cols (N * Ho * Wo, C * kh * kw), rows ordered (n, i, j)."""
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, w = x.shape
    ho, wo = window_output_sizes("conv2d", (h, w), (kh, kw), stride, padding)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x
    cols = np.empty((n, c, kh, kw, ho, wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xp[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
    return np.ascontiguousarray(cols.transpose(0, 4, 5, 1, 2, 3).reshape(n * ho * wo, -1)), ho, wo


def _col2im(dcols, x_shape, kh, kw, stride, padding, ho, wo):
    """The adjoint of _im2col: scatter-add cols back into an (N, C, H, W) array."""
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, w = x_shape
    dcols = dcols.reshape(n, ho, wo, c, kh, kw).transpose(0, 3, 4, 5, 1, 2)
    dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=dcols.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw] += dcols[:, :, i, j]
    return np.ascontiguousarray(dxp[:, :, ph:ph + h, pw:pw + w])


def conv2d(x, w, b, stride=(1, 1), padding=(0, 0)):
    """Cross-correlation of x (N, C_in, H, W) with w (C_out, C_in, kh, kw), plus
    b (C_out,) or None: (N, C_out, Ho, Wo), as torch.nn.functional.conv2d."""
    c_out, _, kh, kw = w.shape
    cols, ho, wo = _im2col(x, kh, kw, stride, padding)
    y = matmul(cols, w.reshape(c_out, -1), trans_b=True)          # (N*Ho*Wo, C_out)
    if b is not None:
        y = bias_add(y, b)
    return np.ascontiguousarray(y.reshape(x.shape[0], ho, wo, c_out).transpose(0, 3, 1, 2))


def conv2d_backward(dy, x, w, stride=(1, 1), padding=(0, 0), need_dx=True):
    """From dy (N, C_out, Ho, Wo) and the saved x, w: (dx or None, dw, db)."""
    c_out, _, kh, kw = w.shape
    cols, ho, wo = _im2col(x, kh, kw, stride, padding)
    dy2 = np.ascontiguousarray(dy.transpose(0, 2, 3, 1).reshape(-1, c_out))
    dw = matmul(dy2, cols, trans_a=True).reshape(w.shape)
    db = bias_grad(dy2)
    dx = None
    if need_dx:
        dcols = matmul(dy2, w.reshape(c_out, -1))
        dx = _col2im(dcols, x.shape, kh, kw, stride, padding, ho, wo)
    return dx, dw, db


def conv1d(x, w, b, stride=1, padding=0):
    """x (N, C_in, L) with w (C_out, C_in, k), plus b or None: (N, C_out, L_out);
    the 2-D kernel on a height-1 image."""
    y = conv2d(x[:, :, None, :], w[:, :, None, :], b, (1, stride), (0, padding))
    return y[:, :, 0, :]


def conv1d_backward(dy, x, w, stride=1, padding=0, need_dx=True):
    """From dy (N, C_out, L_out) and the saved x, w: (dx or None, dw, db)."""
    dx, dw, db = conv2d_backward(dy[:, :, None, :], x[:, :, None, :], w[:, :, None, :],
                                 (1, stride), (0, padding), need_dx)
    return (None if dx is None else dx[:, :, 0, :]), dw[:, :, 0, :], db


def _windows(x, kernel_size, stride):
    """x (N, C, H, W) -> a view (N, C, Ho, Wo, kh, kw) of each pooling window."""
    kh, kw = kernel_size
    view = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
    return view[:, :, ::stride[0], ::stride[1]]


def maxpool2d(x, kernel_size, stride):
    """Max over each window of x (N, C, H, W): (y (N, C, Ho, Wo), idx), idx the
    int64 flat position in H * W of each maximum (the first one on ties, as
    torch's return_indices gives)."""
    kh, kw = kernel_size
    win = _windows(x, kernel_size, stride)
    n, c, ho, wo = win.shape[:4]
    k = win.reshape(n, c, ho, wo, kh * kw).argmax(axis=-1)
    rows = np.arange(ho)[:, None] * stride[0] + k // kw
    cols = np.arange(wo)[None, :] * stride[1] + k % kw
    idx = (rows * x.shape[3] + cols).astype(np.int64)
    y = np.take_along_axis(x.reshape(n, c, -1), idx.reshape(n, c, -1), axis=2)
    return y.reshape(n, c, ho, wo), idx


def maxpool2d_backward(dy, x, idx, kernel_size, stride):
    """dx: each dy routed to its window's maximum (summed where windows overlap)."""
    n, c, h, w = x.shape
    flat = idx.reshape(n * c, -1) + (np.arange(n * c) * (h * w))[:, None]
    dx = np.bincount(flat.ravel(), weights=dy.ravel(), minlength=x.size)
    return dx.astype(dy.dtype).reshape(x.shape)


def avgpool2d(x, kernel_size, stride):
    """Mean over each window of x (N, C, H, W): (N, C, Ho, Wo)."""
    return np.ascontiguousarray(_windows(x, kernel_size, stride).mean(axis=(4, 5), dtype=x.dtype))


def avgpool2d_backward(dy, x, kernel_size, stride):
    """dx: each dy spread evenly over its window (x gives only the shape)."""
    (kh, kw), (sh, sw) = kernel_size, stride
    ho, wo = dy.shape[2:]
    share = dy / dy.dtype.type(kh * kw)
    dx = np.zeros_like(x)
    for i in range(kh):
        for j in range(kw):
            dx[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw] += share
    return dx


def maxpool1d(x, kernel_size, stride):
    """Max over windows of x (N, C, L): (y (N, C, L_out), idx flat in L)."""
    y, idx = maxpool2d(x[:, :, None, :], (1, kernel_size), (1, stride))
    return y[:, :, 0, :], idx[:, :, 0, :]


def maxpool1d_backward(dy, x, idx, kernel_size, stride):
    return maxpool2d_backward(dy[:, :, None, :], x[:, :, None, :], idx[:, :, None, :],
                              (1, kernel_size), (1, stride))[:, :, 0, :]


def avgpool1d(x, kernel_size, stride):
    """Mean over windows of x (N, C, L): (N, C, L_out)."""
    return avgpool2d(x[:, :, None, :], (1, kernel_size), (1, stride))[:, :, 0, :]


def avgpool1d_backward(dy, x, kernel_size, stride):
    return avgpool2d_backward(dy[:, :, None, :], x[:, :, None, :],
                              (1, kernel_size), (1, stride))[:, :, 0, :]


# ------------------------------------------------------------ recurrent
# Forward over a whole sequence x (N, T, F) from zero initial states; PyTorch's
# equations, gate order and weights: w_ih (G*H, F), w_hh (G*H, H), b_ih and
# b_hh (G*H,), G = 1 (RNN), 4 (LSTM: i, f, g, o), 3 (GRU: r, z, n). Each
# forward returns the hidden states h (N, T, H) first, then what its backward
# needs. Each backward (BPTT) takes dh (N, T, H), the gradient with respect to
# every step's h (zeros where a step's output is unused), and returns
# (dx or None, dw_ih, dw_hh, db_ih, db_hh).


def _input_part(x, w_ih, b_ih):
    """x_t @ w_ih.T + b_ih for every step at once: (N, T, G*H)."""
    n, t, f = x.shape
    return linear(x.reshape(n * t, f), w_ih, b_ih).reshape(n, t, -1)


def _previous(h):
    """h_{t-1} for every step t, zeros before the first: (N, T, H)."""
    prev = np.zeros_like(h)
    prev[:, 1:] = h[:, :-1]
    return prev


def _rnn_weight_grads(x, h_prev, d_in, d_hid, w_ih, need_dx):
    """Weight and input gradients from the pre-activation gradients of every step."""
    n, t, f = x.shape
    d_in2, d_hid2 = d_in.reshape(n * t, -1), d_hid.reshape(n * t, -1)
    dw_ih = matmul(d_in2, x.reshape(n * t, f), trans_a=True)
    dw_hh = matmul(d_hid2, h_prev.reshape(n * t, -1), trans_a=True)
    dx = matmul(d_in2, w_ih).reshape(x.shape) if need_dx else None
    return dx, dw_ih, dw_hh, bias_grad(d_in2), bias_grad(d_hid2)


def rnn(x, w_ih, w_hh, b_ih, b_hh):
    """Elman RNN: h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh). Returns h."""
    xs = _input_part(x, w_ih, b_ih)
    h = np.empty_like(xs)
    h_t = np.zeros_like(xs[:, 0])
    for t in range(x.shape[1]):
        h_t = np.tanh(xs[:, t] + linear(h_t, w_hh, b_hh))
        h[:, t] = h_t
    return h


def rnn_backward(dh, x, h, w_ih, w_hh, need_dx=True):
    da = np.empty_like(h)
    carry = np.zeros_like(h[:, 0])                     # d loss / d h_t from step t + 1
    for t in range(x.shape[1] - 1, -1, -1):
        da[:, t] = (dh[:, t] + carry) * (1 - h[:, t] * h[:, t])
        carry = matmul(np.ascontiguousarray(da[:, t]), w_hh)
    return _rnn_weight_grads(x, _previous(h), da, da, w_ih, need_dx)


def lstm(x, w_ih, w_hh, b_ih, b_hh):
    """LSTM: i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of W_ih x_t + b_ih +
    W_hh h_{t-1} + b_hh; c_t = f c_{t-1} + i g; h_t = o tanh(c_t).
    Returns (h, c, gates): c (N, T, H), gates (N, T, 4H) after activation."""
    xs = _input_part(x, w_ih, b_ih)
    n, t_len, g4 = xs.shape
    hid = g4 // 4
    h, c = np.empty((n, t_len, hid), x.dtype), np.empty((n, t_len, hid), x.dtype)
    gates = np.empty_like(xs)
    h_t, c_t = np.zeros((n, hid), x.dtype), np.zeros((n, hid), x.dtype)
    for t in range(t_len):
        a = xs[:, t] + linear(h_t, w_hh, b_hh)
        i, f, o = (sigmoid(np.ascontiguousarray(a[:, k * hid:(k + 1) * hid])) for k in (0, 1, 3))
        g = np.tanh(a[:, 2 * hid:3 * hid])
        c_t = f * c_t + i * g
        h_t = o * np.tanh(c_t)
        gates[:, t] = np.concatenate([i, f, g, o], axis=1)
        h[:, t], c[:, t] = h_t, c_t
    return h, c, gates


def lstm_backward(dh, x, h, c, gates, w_ih, w_hh, need_dx=True):
    hid = h.shape[2]
    da = np.empty_like(gates)
    c_prev = _previous(c)
    dh_next, dc_next = np.zeros_like(h[:, 0]), np.zeros_like(h[:, 0])
    for t in range(x.shape[1] - 1, -1, -1):
        i, f, g, o = (gates[:, t, k * hid:(k + 1) * hid] for k in range(4))
        tc = np.tanh(c[:, t])
        dh_t = dh[:, t] + dh_next
        dc = dc_next + dh_t * o * (1 - tc * tc)
        da[:, t] = np.concatenate([dc * g * i * (1 - i), dc * c_prev[:, t] * f * (1 - f),
                                   dc * i * (1 - g * g), dh_t * tc * o * (1 - o)], axis=1)
        dc_next = dc * f
        dh_next = matmul(np.ascontiguousarray(da[:, t]), w_hh)
    return _rnn_weight_grads(x, _previous(h), da, da, w_ih, need_dx)


def gru(x, w_ih, w_hh, b_ih, b_hh):
    """GRU: r, z = sigmoid(W_i{r,z} x_t + b_i{r,z} + W_h{r,z} h_{t-1} + b_h{r,z});
    n = tanh(W_in x_t + b_in + r (W_hn h_{t-1} + b_hn)); h_t = (1 - z) n + z h_{t-1}.
    Returns (h, gates, hn): gates (N, T, 3H) = r, z, n; hn (N, T, H) = W_hn h_{t-1} + b_hn."""
    xs = _input_part(x, w_ih, b_ih)
    n, t_len, g3 = xs.shape
    hid = g3 // 3
    h, hn = np.empty((n, t_len, hid), x.dtype), np.empty((n, t_len, hid), x.dtype)
    gates = np.empty_like(xs)
    h_t = np.zeros((n, hid), x.dtype)
    for t in range(t_len):
        a_h = linear(h_t, w_hh, b_hh)
        rz = sigmoid(np.ascontiguousarray(xs[:, t, :2 * hid] + a_h[:, :2 * hid]))
        r, z = rz[:, :hid], rz[:, hid:]
        new = np.tanh(xs[:, t, 2 * hid:] + r * a_h[:, 2 * hid:])
        h_t = (1 - z) * new + z * h_t
        gates[:, t] = np.concatenate([rz, new], axis=1)
        h[:, t], hn[:, t] = h_t, a_h[:, 2 * hid:]
    return h, gates, hn


def gru_backward(dh, x, h, gates, hn, w_ih, w_hh, need_dx=True):
    hid = h.shape[2]
    d_in, d_hid = np.empty_like(gates), np.empty_like(gates)
    h_prev = _previous(h)
    dh_next = np.zeros_like(h[:, 0])
    for t in range(x.shape[1] - 1, -1, -1):
        r, z, new = (gates[:, t, k * hid:(k + 1) * hid] for k in range(3))
        dh_t = dh[:, t] + dh_next
        d_new = dh_t * (1 - z) * (1 - new * new)            # through n's tanh
        d_r = d_new * hn[:, t] * r * (1 - r)
        d_z = dh_t * (h_prev[:, t] - new) * z * (1 - z)
        d_in[:, t] = np.concatenate([d_r, d_z, d_new], axis=1)
        d_hid[:, t] = np.concatenate([d_r, d_z, d_new * r], axis=1)
        dh_next = dh_t * z + matmul(np.ascontiguousarray(d_hid[:, t]), w_hh)
    return _rnn_weight_grads(x, h_prev, d_in, d_hid, w_ih, need_dx)


# ------------------------------------------------------------ attention
# Scaled dot-product attention over heads (torch.nn.MultiheadAttention's core,
# after the input projections): q (N, L, E), k and v (N, S, E), the E features
# split into num_heads heads of E // num_heads (head h: columns h*D .. h*D+D-1).
# mask (N, S) of the dtype or None: nonzero = that key is ignored (torch's
# key_padding_mask); causal: query i ignores keys j > i (torch's triu attn_mask).
# A query row whose keys are all ignored gets all-zero probabilities and a zero
# output (torch gives NaN there). The forward returns (out (N, L, E), p (N, H, L, S)),
# p the probabilities its backward needs.


def _heads(x, num_heads):
    n, t, e = x.shape
    return x.reshape(n, t, num_heads, e // num_heads).transpose(0, 2, 1, 3)


def attention(q, k, v, mask, num_heads, causal=False):
    n, l, e = q.shape
    s = k.shape[1]
    scale = 1.0 / np.sqrt(e // num_heads)
    scores = (_heads(q, num_heads) * scale) @ _heads(k, num_heads).transpose(0, 1, 3, 2)
    ignored = np.zeros((n, 1, l, s), dtype=bool)
    if mask is not None:
        ignored |= (mask != 0)[:, None, None, :]
    if causal:
        ignored |= np.triu(np.ones((l, s), dtype=bool), 1)
    scores = np.where(ignored, -np.inf, scores)
    top = scores.max(axis=-1, keepdims=True)
    ex = np.exp(scores - np.where(np.isfinite(top), top, 0))
    total = ex.sum(axis=-1, keepdims=True)
    p = (ex / np.where(total > 0, total, 1)).astype(q.dtype)
    out = (p @ _heads(v, num_heads)).transpose(0, 2, 1, 3).reshape(n, l, e)
    return np.ascontiguousarray(out), np.ascontiguousarray(p)


def attention_backward(dout, q, k, v, p, num_heads):
    """(dq, dk, dv) from d loss / d out and the forward's probabilities p."""
    n, l, e = q.shape
    scale = 1.0 / np.sqrt(e // num_heads)
    do, qh, kh, vh = (_heads(a, num_heads) for a in (dout, q, k, v))
    dv = p.transpose(0, 1, 3, 2) @ do                      # (N, H, S, D)
    dp = do @ vh.transpose(0, 1, 3, 2)                     # (N, H, L, S)
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True)) * scale
    dq, dk = ds @ kh, ds.transpose(0, 1, 3, 2) @ qh

    def merge(a):
        return np.ascontiguousarray(a.transpose(0, 2, 1, 3).reshape(a.shape[0], a.shape[2], e))
    return merge(dq), merge(dk), merge(dv)


# -------------------------------------------------------- normalization
# LayerNorm, BatchNorm and global average pooling (fastnn/layers/normalization.py,
# pooling.py). LayerNorm normalises each row of x (R, F) over its F features;
# BatchNorm normalises x (N, C, S) per channel over N and the S spatial positions
# ((N, C) is S = 1, images are S = H * W). Each forward returns the statistics it
# used, mean and rstd = 1 / sqrt(var + eps) (biased variance), for its backward.


def layer_norm(x, weight, bias, eps=1e-5):
    """torch.nn.functional.layer_norm over the last axis of x (R, F), weight and
    bias (F,) or None: (y (R, F), mean (R,), rstd (R,))."""
    mean = x.mean(axis=1)
    xc = x - mean[:, None]
    rstd = 1 / np.sqrt((xc * xc).mean(axis=1) + x.dtype.type(eps))
    y = xc * rstd[:, None]
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return np.ascontiguousarray(y), mean, rstd


def layer_norm_backward(dy, x, mean, rstd, weight, need_dx=True):
    """From dy (R, F) and what layer_norm saw and saved: (dx or None, dweight, dbias),
    dweight = sum over rows of dy * xhat, dbias = sum of dy (both (F,), given even
    when the layer has no weight or bias; weight None means ones)."""
    xhat = (x - mean[:, None]) * rstd[:, None]
    dweight, dbias = (dy * xhat).sum(axis=0), dy.sum(axis=0)
    dx = None
    if need_dx:
        g = dy if weight is None else dy * weight
        dx = rstd[:, None] * (g - g.mean(axis=1, keepdims=True)
                              - xhat * (g * xhat).mean(axis=1, keepdims=True))
    return dx, dweight, dbias


def batch_norm(x, weight, bias, running_mean, running_var, momentum=0.1, eps=1e-5, training=True):
    """torch.nn.functional.batch_norm on x (N, C, S), weight and bias (C,) or None:
    (y (N, C, S), mean (C,), rstd (C,)). Training: the batch's statistics over N and
    S, and running_mean / running_var (C,) updated in place, running = (1 - momentum)
    * running + momentum * batch, with the unbiased variance (N * S > 1). Eval: the
    running statistics, buffers untouched."""
    if training:
        m = x.shape[0] * x.shape[2]
        mean = x.mean(axis=(0, 2))
        xc = x - mean[None, :, None]
        var = (xc * xc).mean(axis=(0, 2))
        running_mean *= 1 - momentum
        running_mean += momentum * mean
        running_var *= 1 - momentum
        running_var += momentum * var * (m / (m - 1))
    else:
        mean, var = running_mean.copy(), running_var
        xc = x - mean[None, :, None]
    rstd = 1 / np.sqrt(var + x.dtype.type(eps))
    y = xc * rstd[None, :, None]
    if weight is not None:
        y = y * weight[None, :, None]
    if bias is not None:
        y = y + bias[None, :, None]
    return np.ascontiguousarray(y), mean, rstd


def batch_norm_backward(dy, x, mean, rstd, weight, training=True, need_dx=True):
    """From dy (N, C, S) and what batch_norm saw and returned: (dx or None, dweight,
    dbias), each (C,) summed over N and S. training=False: the statistics were
    constants (eval mode), so dx is dy * weight * rstd."""
    xhat = (x - mean[None, :, None]) * rstd[None, :, None]
    dweight, dbias = (dy * xhat).sum(axis=(0, 2)), dy.sum(axis=(0, 2))
    dx = None
    if need_dx:
        scale = rstd if weight is None else weight * rstd
        if training:
            m = x.shape[0] * x.shape[2]
            dx = scale[None, :, None] * (dy - (dbias / m)[None, :, None]
                                         - xhat * (dweight / m)[None, :, None])
        else:
            dx = dy * scale[None, :, None]
    return dx, dweight, dbias


def global_avgpool(x):
    """Mean of x (N, C, S) over its S positions: (N, C) (Keras' GlobalAveragePooling,
    channels first)."""
    return x.mean(axis=2)


def global_avgpool_backward(dy, x):
    """dx: each dy (N, C) spread evenly over the S positions of x (which gives only the shape)."""
    return np.ascontiguousarray(np.broadcast_to((dy / dy.dtype.type(x.shape[2]))[:, :, None], x.shape))


# ------------------------------------------------------------ fused dense
# A Dense layer and the activation after it, and its backward written straight
# into the gradient buffers. Each is defined by composing the kernels above; a
# backend without its own version gets this composition of *its own* kernels
# (the registry's compose, see backend.Backend), never a silent fall back to NumPy.

FUSABLE_ACTIVATIONS = ("relu", "sigmoid", "tanh", "leaky_relu")


def compose_linear_act(k):
    def linear_act(x, w, b, activation, alpha=0.01):
        """activation(x @ w.T + b), activation one of FUSABLE_ACTIVATIONS."""
        y = k.linear(x, w, b)
        return k.leaky_relu(y, alpha) if activation == "leaky_relu" else getattr(k, activation)(y)
    return linear_act


def compose_linear_backward_into(k):
    def linear_backward_into(dy, x, w, dw, db, need_dx=True, accumulate=True):
        """linear_backward adding d w into dw and d b into db (db None: no bias),
        as autograd accumulates .grad; accumulate=False overwrites. Returns dx or None."""
        dx, gw, gb = k.linear_backward(dy, x, w, need_dx)
        for buf, g in ((dw, gw), (db, gb)):
            if buf is None:
                continue
            if accumulate:
                buf += g
            else:
                buf[...] = g
        return dx
    return linear_backward_into


def compose_batch_norm_relu(k):
    def batch_norm_relu(x, weight, bias, running_mean, running_var, momentum=0.1, eps=1e-5, training=True):
        """relu(batch_norm(...)): (y, mean, rstd), the running buffers moved as batch_norm does."""
        y, mean, rstd = k.batch_norm(x, weight, bias, running_mean, running_var, momentum, eps, training)
        return k.relu(y), mean, rstd
    return batch_norm_relu


def compose_batch_norm_relu_backward(k):
    def batch_norm_relu_backward(dy, x, y, mean, rstd, weight, training=True, need_dx=True):
        """batch_norm_backward of dy where y (batch_norm_relu's output) > 0, else 0: y > 0 exactly
        where the normalised value was."""
        return k.batch_norm_backward(k.relu_backward(dy, y, y), x, mean, rstd, weight, training, need_dx)
    return batch_norm_relu_backward


linear_act = compose_linear_act(sys.modules[__name__])
linear_backward_into = compose_linear_backward_into(sys.modules[__name__])
batch_norm_relu = compose_batch_norm_relu(sys.modules[__name__])
batch_norm_relu_backward = compose_batch_norm_relu_backward(sys.modules[__name__])

# ------------------------------------------------------ where arrays live
# Not kernels (never checked, not in KERNELS): a backend whose arrays live in
# device memory (cuda) overrides all three; on the CPU backends they leave
# NumPy arrays where they are.


def to_device(x, dtype=None):
    """x as the backend's C-contiguous array (here: NumPy's, no copy when it already is one)."""
    return np.ascontiguousarray(x, dtype=dtype)


def to_host(x):
    """x as a NumPy array (here: x itself)."""
    return x


def zeros(shape, dtype):
    """A zero-filled array of the backend's kind."""
    return np.zeros(shape, dtype=dtype)


HELPERS = ("to_device", "to_host", "zeros")

_DERIVED = {   # name -> (family, with backward kernels): lists that registry.py owns
    "KERNELS": (None, True), "LOSSES": ("loss", False), "CONV": ("conv", False),
    "RECURRENT": ("recurrent", False)}


def __getattr__(name):
    if name in _DERIVED:
        from .registry import names   # imported late: the registry imports this module
        return names(*_DERIVED[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
