"""Input validation in front of every backend's kernels.

Compiled kernels run without bounds checks, so each public kernel call passes
through the check of the same name here first. A check returns the arguments
normalised to the raw-kernel contract of reference.py (C-contiguous, one float
dtype, int64 labels) or raises a ValueError/TypeError naming the problem.
"""
import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _array(x, name):
    """x as a numeric ndarray, or a TypeError naming what it is."""
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except (ValueError, TypeError) as exc:
            raise TypeError(f"{name} must be a numeric array: {exc}") from None
    if x.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if x.size == 0:
        raise ValueError(f"{name} is empty (shape {x.shape})")
    return x


def common_dtype(*arrays):
    """float32 if every float array is float32 (ints follow the floats), else float64."""
    kinds = [a.dtype for a in arrays if a.dtype.kind == "f"]
    if kinds and all(k == np.float32 for k in kinds):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def _cast(x, dtype):
    return np.ascontiguousarray(x, dtype=dtype)


def _rank(x, name, ndim):
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {x.shape}")


def floats(name, ndim, *arrays):
    """Validate arrays of one rank and cast them to their common float dtype."""
    arrays = [_array(a, f"{name}[{i}]") for i, a in enumerate(arrays)]
    for i, a in enumerate(arrays):
        _rank(a, f"{name} argument {i}", ndim)
    dtype = common_dtype(*arrays)
    return [_cast(a, dtype) for a in arrays]


def _same_shape(name, *arrays):
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"{name}: arrays must have the same shape, got {sorted(shapes)}")


def _scalar(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


# ---------------------------------------------------------------- matmul


def _gemm_operand(x, trans):
    """Absorb a transposed (F-contiguous) operand by flipping its flag."""
    if not x.flags.c_contiguous and x.T.flags.c_contiguous:
        return x.T, not trans
    return x, trans


def matmul(a, b, trans_a=False, trans_b=False):
    a, b = _array(a, "matmul a"), _array(b, "matmul b")
    _rank(a, "matmul a", 2)
    _rank(b, "matmul b", 2)
    ka = a.shape[0] if trans_a else a.shape[1]
    kb = b.shape[1] if trans_b else b.shape[0]
    if ka != kb:
        raise ValueError(
            f"matmul shapes do not align: {a.shape}{'.T' if trans_a else ''} "
            f"@ {b.shape}{'.T' if trans_b else ''} ({ka} != {kb})")
    dtype = common_dtype(a, b)
    a, trans_a = _gemm_operand(a.astype(dtype, copy=False), bool(trans_a))
    b, trans_b = _gemm_operand(b.astype(dtype, copy=False), bool(trans_b))
    return (_cast(a, dtype), _cast(b, dtype), trans_a, trans_b), {}


def bias_add(x, b):
    x, b = _array(x, "bias_add x"), _array(b, "bias_add b")
    _rank(x, "bias_add x", 2)
    _rank(b, "bias_add b", 1)
    if b.shape[0] != x.shape[1]:
        raise ValueError(f"bias_add: bias has {b.shape[0]} entries, x has {x.shape[1]} columns")
    dtype = common_dtype(x, b)
    return (_cast(x, dtype), _cast(b, dtype)), {}


def bias_grad(dy):
    (dy,) = floats("bias_grad", 2, dy)
    return (dy,), {}


def linear(x, w, b):
    x, w = _array(x, "linear x"), _array(w, "linear w")
    _rank(x, "linear x", 2)
    _rank(w, "linear w", 2)
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"linear: x has {x.shape[1]} features, weight expects {w.shape[1]}")
    arrays = [x, w]
    if b is not None:
        b = _array(b, "linear b")
        _rank(b, "linear b", 1)
        if b.shape[0] != w.shape[0]:
            raise ValueError(f"linear: bias has {b.shape[0]} entries, weight has {w.shape[0]} rows")
        arrays.append(b)
    dtype = common_dtype(*arrays)
    return (_cast(x, dtype), _cast(w, dtype), None if b is None else _cast(b, dtype)), {}


def linear_backward(dy, x, w, need_dx=True):
    dy, x, w = floats("linear_backward", 2, dy, x, w)
    if dy.shape[0] != x.shape[0] or dy.shape[1] != w.shape[0] or x.shape[1] != w.shape[1]:
        raise ValueError(
            f"linear_backward: shapes dy {dy.shape}, x {x.shape}, w {w.shape} do not agree")
    return (dy, x, w, bool(need_dx)), {}


# ----------------------------------------------------------- activations


def _activation(name):
    def check(x, alpha=None):
        x = _array(x, f"{name} x")
        if x.ndim != 2:
            raise ValueError(f"{name} x must be 2-D (batch, features), got shape {x.shape}")
        x = _cast(x, common_dtype(x))
        if alpha is None:
            return (x,), {}
        return (x,), {"alpha": _scalar(alpha, "alpha")}
    return check


def _activation_backward(name):
    def check(dy, x, y, alpha=None):
        dy, x, y = floats(f"{name}_backward", 2, dy, x, y)
        _same_shape(f"{name}_backward", dy, x, y)
        if alpha is None:
            return (dy, x, y), {}
        return (dy, x, y), {"alpha": _scalar(alpha, "alpha")}
    return check


# ---------------------------------------------------------------- losses


def mse(pred, target):
    pred, target = floats("mse", 2, pred, target)
    _same_shape("mse", pred, target)
    return (pred, target), {}


def labels_for(labels, n_rows, n_classes, name="labels"):
    """Class indices (N,) as int64 in [0, n_classes), or float rows (N, C)."""
    labels = _array(labels, name)
    if labels.shape[0] != n_rows:
        raise ValueError(f"{name} has {labels.shape[0]} rows but the outputs have {n_rows}")
    if labels.ndim == 1:
        if labels.dtype.kind == "f":
            if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
                raise TypeError(f"{name} must be integer class indices, got non-integer floats")
        elif labels.dtype.kind == "b":
            raise TypeError(f"{name} must be integer class indices, got booleans")
        lo, hi = labels.min(), labels.max()
        if lo < 0 or hi >= n_classes:
            raise ValueError(
                f"{name} must lie in [0, {n_classes}) for {n_classes} classes, "
                f"got values from {lo} to {hi}")
        return np.ascontiguousarray(labels, dtype=np.int64)
    if labels.ndim == 2 and labels.shape[1] == n_classes:
        return labels
    raise ValueError(
        f"{name} must be class indices of shape ({n_rows},) or target rows of shape "
        f"({n_rows}, {n_classes}), got {labels.shape}")


def cross_entropy(logits, labels):
    logits = _array(logits, "cross_entropy logits")
    _rank(logits, "cross_entropy logits", 2)
    labels = labels_for(labels, logits.shape[0], logits.shape[1])
    dtype = common_dtype(logits, labels) if labels.ndim == 2 else common_dtype(logits)
    if labels.ndim == 2:
        labels = _cast(labels, dtype)
    return (_cast(logits, dtype), labels), {}


def binary_cross_entropy(logits, target):
    logits, target = floats("binary_cross_entropy", 2, logits, target)
    _same_shape("binary_cross_entropy", logits, target)
    return (logits, target), {}


# ------------------------------------------------------------ optimizers


def _in_place_buffers(name, param, *others):
    """Buffers updated in place cannot be copied: they must already conform."""
    for i, buf in enumerate((param,) + others):
        if not isinstance(buf, np.ndarray) or buf.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name}: buffer {i} must be a float32/float64 ndarray")
        if buf.ndim != 1 or not buf.flags.c_contiguous or not buf.flags.writeable:
            raise ValueError(f"{name}: buffer {i} must be 1-D, C-contiguous and writeable")
        if buf.dtype != param.dtype or buf.shape != param.shape:
            raise ValueError(f"{name}: every buffer must match the parameters' "
                             f"shape {param.shape} and dtype {param.dtype}")


def _grad(name, grad, param):
    grad = _array(grad, f"{name} grad")
    if grad.shape != param.shape:
        raise ValueError(f"{name}: grad shape {grad.shape} != param shape {param.shape}")
    return _cast(grad, param.dtype)


def sgd_step(param, grad, velocity, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    _in_place_buffers("sgd_step", param, velocity)
    grad = _grad("sgd_step", grad, param)
    return (param, grad, velocity, _scalar(lr, "lr"), _scalar(momentum, "momentum"),
            bool(nesterov), _scalar(weight_decay, "weight_decay")), {}


def adam_step(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, t):
    _in_place_buffers("adam_step", param, m, v)
    grad = _grad("adam_step", grad, param)
    if not isinstance(t, numbers.Integral) or t < 1:
        raise ValueError(f"adam_step: t must be a step count >= 1, got {t!r}")
    return (param, grad, m, v, _scalar(lr, "lr"), _scalar(beta1, "beta1"),
            _scalar(beta2, "beta2"), _scalar(eps, "eps"),
            _scalar(weight_decay, "weight_decay"), int(t)), {}


CHECKS = {
    "matmul": matmul, "bias_add": bias_add, "bias_grad": bias_grad,
    "linear": linear, "linear_backward": linear_backward,
    "mse": mse, "cross_entropy": cross_entropy,
    "binary_cross_entropy": binary_cross_entropy,
    "sgd_step": sgd_step, "adam_step": adam_step,
}
for _name in ("step", "sigmoid", "tanh", "relu", "leaky_relu", "softmax"):
    CHECKS[_name] = _activation(_name)
    CHECKS[_name + "_backward"] = _activation_backward(_name)
