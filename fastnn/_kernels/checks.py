"""Input validation in front of every backend's kernels.

Compiled kernels run without bounds checks, so each public kernel call passes
through the check of the same name here first. A check returns the arguments
normalised to the raw-kernel contract of reference.py (C-contiguous, one float
dtype, int64 labels) or raises a ValueError/TypeError naming the problem.
The registry (registry.py) pairs each kernel with its check; CHECKS is derived from it.
"""
import inspect
import numbers

import numpy as np

from .reference import FUSABLE_ACTIVATIONS
from .shapes import window_output_sizes

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _array(x, name, allow_empty=False):
    """x as a numeric ndarray, or a TypeError naming what it is."""
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except (ValueError, TypeError) as exc:
            raise TypeError(f"{name} must be a numeric array: {exc}") from None
    if x.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if x.size == 0 and not allow_empty:
        raise ValueError(f"{name} is empty (shape {x.shape})")
    return x


def common_dtype(*arrays):
    """float32 if every float array is float32 of either byte order (ints follow the floats),
    else float64."""
    kinds = [a.dtype for a in arrays if a.dtype.kind == "f"]
    if kinds and all(k.type is np.float32 for k in kinds):
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


_GEMM_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def matmul(a, b, trans_a=False, trans_b=False):
    # The usual call (two C-contiguous 2-D arrays of one float dtype) in a few attribute reads:
    # the general path below cost about 6 us a call, as much as a 64^3 product.
    if (type(a) is np.ndarray and type(b) is np.ndarray and a.ndim == 2 and b.ndim == 2
            and a.dtype == b.dtype and a.dtype in _GEMM_FLOATS and a.size and b.size
            and a.flags.c_contiguous and b.flags.c_contiguous
            and (a.shape[0] if trans_a else a.shape[1]) == (b.shape[1] if trans_b else b.shape[0])):
        return (a, b, bool(trans_a), bool(trans_b)), {}
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


def linear_act(x, w, b, activation, alpha=0.01):
    if activation not in FUSABLE_ACTIVATIONS:
        raise ValueError(f"linear_act: activation must be one of {FUSABLE_ACTIVATIONS}, got {activation!r}")
    args, _ = linear(x, w, b)
    return args + (activation,), {"alpha": _scalar(alpha, "alpha")}


def linear_backward_into(dy, x, w, dw, db, need_dx=True, accumulate=True):
    (dy, x, w, need_dx), _ = linear_backward(dy, x, w, need_dx)
    for name, buf, shape in (("dw", dw, w.shape), ("db", db, (w.shape[0],))):
        if buf is None and name == "db":
            continue
        if not isinstance(buf, np.ndarray) or buf.dtype != dy.dtype:
            raise TypeError(f"linear_backward_into: {name} must be a {dy.dtype} ndarray")
        if buf.shape != shape or not buf.flags.c_contiguous or not buf.flags.writeable:
            raise ValueError(f"linear_backward_into: {name} must be a writeable C-contiguous "
                             f"array of shape {shape}, got {buf.shape}")
    return (dy, x, w, dw, db, need_dx, bool(accumulate)), {}


# ----------------------------------------------------------- activations


def activation(name, fn):
    """The check of any activation kernel, read from its reference fn's signature: a forward
    takes x, a backward (dy, x, y), 2-D float arrays of one shape; every further argument
    (leaky_relu's alpha) is a real number, given by position or keyword."""
    params = list(inspect.signature(fn).parameters)
    n_arrays = 3 if name.endswith("_backward") else 1
    options = params[n_arrays:]

    def scalars(args, kwargs):
        if len(args) > len(params):
            raise TypeError(f"{name} takes {', '.join(params)}, got {len(args)} positional arguments")
        given = dict(zip(options, args[n_arrays:]))
        for key, value in kwargs.items():
            if key not in options or key in given:
                raise TypeError(f"{name} got an unexpected or repeated argument {key!r}")
            given[key] = value
        return {key: _scalar(value, key) for key, value in given.items()}

    def forward(x, *extra, **kwargs):
        if extra or kwargs:                 # the common call, x alone, skips this
            kwargs = scalars((x,) + extra, kwargs)
        x = _array(x, f"{name} x")
        if x.ndim != 2:
            raise ValueError(f"{name} x must be 2-D (batch, features), got shape {x.shape}")
        return (_cast(x, common_dtype(x)),), kwargs

    def backward(dy, x, y, *extra, **kwargs):
        if extra or kwargs:
            kwargs = scalars((dy, x, y) + extra, kwargs)
        arrays = floats(name, 2, dy, x, y)
        _same_shape(name, *arrays)
        return tuple(arrays), kwargs
    check = backward if n_arrays == 3 else forward
    check.__name__ = check.__qualname__ = name   # "relu_backward() missing 2 required ..."
    return check


# ------------------------------------------- dropout and embedding (issue 10: acts)


def _probability(p, who):
    p = _scalar(p, f"{who} p")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{who} p must be in [0, 1), got {p}")
    return p


def _seed64(seed, who):
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2 ** 64:
        raise ValueError(f"{who} seed must be an integer in [0, 2**64), got {seed!r}")
    return int(seed)


def dropout(x, p, seed):
    x = _array(x, "dropout x")
    if x.ndim < 1:
        raise ValueError("dropout x must have at least one axis")
    return (_cast(x, common_dtype(x)), _probability(p, "dropout"), _seed64(seed, "dropout")), {}


def dropout_backward(dy, mask, p):
    dy = _array(dy, "dropout_backward dy")
    if not isinstance(mask, np.ndarray) or mask.dtype != np.uint8:
        raise TypeError("dropout_backward mask must be the uint8 array dropout returned")
    _same_shape("dropout_backward", dy, mask)
    return (_cast(dy, common_dtype(dy)), np.ascontiguousarray(mask), _probability(p, "dropout_backward")), {}


class IndexOutOfRange(IndexError, ValueError):
    """Indices outside [0, n): an IndexError, and a ValueError like every other bad argument."""


def indices(idx, n, who):
    """idx as C-contiguous int64 in [0, n), or TypeError (not integers) / IndexOutOfRange."""
    if not isinstance(idx, np.ndarray):
        idx = np.asarray(idx)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"{who} indices must be integers, got dtype {idx.dtype}")
    if idx.size == 0:
        raise ValueError(f"{who} indices are empty (shape {idx.shape})")
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= n:
        raise IndexOutOfRange(f"{who} indices must be in [0, {n}), got values in [{lo}, {hi}]")
    return np.ascontiguousarray(idx, dtype=np.int64)


def embedding(weight, idx):
    (weight,) = floats("embedding weight", 2, weight)
    return (weight, indices(idx, weight.shape[0], "embedding")), {}


def embedding_backward_into(dy, idx, dw, padding_idx=-1):
    if not isinstance(dw, np.ndarray) or dw.dtype not in FLOAT_DTYPES or dw.ndim != 2:
        raise TypeError("embedding_backward_into dw must be a 2-D float32 or float64 ndarray")
    if not dw.flags.c_contiguous or not dw.flags.writeable:
        raise ValueError("embedding_backward_into dw must be writeable and C-contiguous")
    idx = indices(idx, dw.shape[0], "embedding_backward_into")
    dy = _array(dy, "embedding_backward_into dy")
    if dy.shape != idx.shape + (dw.shape[1],):
        raise ValueError(f"embedding_backward_into: dy has shape {dy.shape}, expected {idx.shape + (dw.shape[1],)}")
    if isinstance(padding_idx, (bool, np.bool_)) or not isinstance(padding_idx, numbers.Integral) \
            or not -1 <= padding_idx < dw.shape[0]:
        raise ValueError(f"embedding_backward_into padding_idx must be -1 (none) or in [0, {dw.shape[0]}), "
                         f"got {padding_idx!r}")
    return (_cast(dy, dw.dtype), idx, dw, int(padding_idx)), {}


# ---------------------------------------------------------------- losses


def mse(pred, target):
    pred, target = floats("mse", 2, pred, target)
    _same_shape("mse", pred, target)
    return (pred, target), {}


def labels_for(labels, n_rows, n_classes, name="labels", ignore_index=None):
    """Class indices (N,) as int64 in [0, n_classes), or float rows (N, C). Indices equal
    to ignore_index (an int, if given) are allowed anywhere (cross_entropy's padding)."""
    labels = _array(labels, name)
    if labels.shape[0] != n_rows:
        raise ValueError(f"{name} has {labels.shape[0]} rows but the outputs have {n_rows}")
    if labels.ndim == 1:
        if labels.dtype.kind == "f":
            if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
                raise TypeError(f"{name} must be integer class indices, got non-integer floats")
        elif labels.dtype.kind == "b":
            raise TypeError(f"{name} must be integer class indices, got booleans")
        kept = labels if ignore_index is None else labels[labels != ignore_index]
        lo, hi = (kept.min(), kept.max()) if kept.size else (0, 0)
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


# ------------------------------- more losses and optimizers (issue 10: optim)


def huber(pred, target, delta=1.0):
    pred, target = floats("huber", 2, pred, target)
    _same_shape("huber", pred, target)
    delta = _scalar(delta, "huber delta")
    if delta <= 0:
        raise ValueError(f"huber delta must be > 0, got {delta}")
    return (pred, target, delta), {}


def l1(pred, target):
    pred, target = floats("l1", 2, pred, target)
    _same_shape("l1", pred, target)
    return (pred, target), {}


def class_weight(weight, n_classes, dtype, name="weight"):
    """A cross-entropy class weight: (C,) finite and >= 0, as a C-contiguous dtype array."""
    w = _array(weight, name)
    if w.shape != (n_classes,):
        raise ValueError(f"{name} must have shape ({n_classes},) (one per class), got {w.shape}")
    w = _cast(w, dtype)
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"{name} must be finite and >= 0")
    return w


def smoothing(value):
    value = _scalar(value, "label_smoothing")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1], got {value}")
    return value


def ignored_label(value):
    """None (ignore nothing, as the sentinel -1 no valid label takes) or an integer."""
    if value is None:
        return -1
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"ignore_index must be an integer or None, got {value!r}")
    return int(value)


def cross_entropy_weighted(logits, labels, weight=None, label_smoothing=0.0, ignore_index=-1):
    logits = _array(logits, "cross_entropy logits")
    _rank(logits, "cross_entropy logits", 2)
    ignore = ignored_label(ignore_index)
    labels = labels_for(labels, logits.shape[0], logits.shape[1], ignore_index=ignore)
    if labels.ndim != 1:
        raise ValueError("cross_entropy_weighted takes class indices (N,); "
                         "probability targets go to cross_entropy")
    dtype = common_dtype(logits)
    c = logits.shape[1]
    w = np.ones(c, dtype) if weight is None else class_weight(weight, c, dtype)
    return (_cast(logits, dtype), labels, w, smoothing(label_smoothing), ignore), {}


def _step_count(name, t):
    if isinstance(t, (bool, np.bool_)) or not isinstance(t, numbers.Integral) or t < 1:
        raise ValueError(f"{name}: t must be a step count >= 1, got {t!r}")
    return int(t)


def rmsprop_step(param, grad, square_avg, grad_avg, momentum_buf, lr, alpha, eps,
                 weight_decay=0.0, momentum=0.0, centered=False):
    _in_place_buffers("rmsprop_step", param, square_avg, grad_avg, momentum_buf)
    grad = _grad("rmsprop_step", grad, param)
    return (param, grad, square_avg, grad_avg, momentum_buf, _scalar(lr, "lr"),
            _scalar(alpha, "alpha"), _scalar(eps, "eps"), _scalar(weight_decay, "weight_decay"),
            _scalar(momentum, "momentum"), bool(centered)), {}


def adagrad_step(param, grad, state_sum, lr, lr_decay=0.0, weight_decay=0.0, eps=1e-10, t=1):
    _in_place_buffers("adagrad_step", param, state_sum)
    grad = _grad("adagrad_step", grad, param)
    return (param, grad, state_sum, _scalar(lr, "lr"), _scalar(lr_decay, "lr_decay"),
            _scalar(weight_decay, "weight_decay"), _scalar(eps, "eps"),
            _step_count("adagrad_step", t)), {}


def norm_order(value):
    """A gradient norm's order: a real number > 0, or inf."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"norm_type must be a real number or inf, got {value!r}")
    value = float(value)
    if np.isnan(value) or value <= 0:
        raise ValueError(f"norm_type must be > 0 (or inf), got {value}")
    return value


def grad_norm(grad, norm_type=2.0):
    grad = _array(grad, "grad_norm grad", allow_empty=True)
    _rank(grad, "grad_norm grad", 1)
    return (_cast(grad, common_dtype(grad)), norm_order(norm_type)), {}


def grad_scale(grad, factor):
    _in_place_buffers("grad_scale", grad)
    return (grad, _scalar(factor, "factor")), {}


# ---------------------------------------------- convolution and pooling
# Conv and pooling checks: ranks, channel counts, positive kernel sizes and
# strides, non-negative padding, a kernel no larger than the padded input.


def _positive(value, name, minimum=1):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        what = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{name} must be {what}, got {value}")
    return int(value)


def spatial(value, name, dims, minimum=1):
    """An int, or a sequence of dims ints, as a tuple of dims ints >= minimum."""
    if isinstance(value, (tuple, list, np.ndarray)):
        if len(value) != dims:
            raise ValueError(f"{name} must be an integer or {dims} integers, got {value!r}")
        return tuple(_positive(v, name, minimum) for v in value)
    return (_positive(value, name, minimum),) * dims


def _geometry(kernel, dims, kernel_size, stride, padding, input_size):
    """Validate the window geometry; output sizes per spatial axis."""
    ks = spatial(kernel_size, f"{kernel} kernel_size", dims)
    st = spatial(stride, f"{kernel} stride", dims)
    pd = spatial(padding, f"{kernel} padding", dims, minimum=0)
    return ks, st, pd, window_output_sizes(kernel, tuple(input_size), ks, st, pd)


def _unpack(dims, values):
    """1-D kernels take plain ints, 2-D kernels (h, w) pairs."""
    return values[0] if dims == 1 else values


def conv(dims):
    """(forward check, backward check) of the dims-D convolution."""
    kernel = f"conv{dims}d"
    rank = dims + 2

    def parts(x, w, b, stride, padding, dy=None):
        x, w = _array(x, f"{kernel} x"), _array(w, f"{kernel} weight")
        _rank(x, f"{kernel} x (N, C_in, {'L' if dims == 1 else 'H, W'})", rank)
        _rank(w, f"{kernel} weight (C_out, C_in, {'k' if dims == 1 else 'kh, kw'})", rank)
        if x.shape[1] != w.shape[1]:
            raise ValueError(f"{kernel}: x has {x.shape[1]} channels, the weight expects {w.shape[1]}")
        arrays = [x, w]
        if b is not None:
            b = _array(b, f"{kernel} bias")
            _rank(b, f"{kernel} bias", 1)
            if b.shape[0] != w.shape[0]:
                raise ValueError(f"{kernel}: bias has {b.shape[0]} entries, "
                                 f"weight has {w.shape[0]} output channels")
            arrays.append(b)
        _, st, pd, out = _geometry(kernel, dims, w.shape[2:], stride, padding, x.shape[2:])
        if dy is not None:
            dy = _array(dy, f"{kernel}_backward dy")
            want = (x.shape[0], w.shape[0]) + out
            if dy.shape != want:
                raise ValueError(f"{kernel}_backward: dy has shape {dy.shape}, the output's is {want}")
            arrays.append(dy)
        dtype = common_dtype(*arrays)
        cast = [_cast(a, dtype) for a in arrays]
        return cast, _unpack(dims, st), _unpack(dims, pd)

    def forward(x, w, b, stride=1, padding=0):
        cast, st, pd = parts(x, w, b, stride, padding)
        return (cast[0], cast[1], cast[2] if b is not None else None, st, pd), {}

    def backward(dy, x, w, stride=1, padding=0, need_dx=True):
        cast, st, pd = parts(x, w, None, stride, padding, dy)
        x, w, dy = cast
        return (dy, x, w, st, pd, bool(need_dx)), {}
    return forward, backward


def pool(kind, dims):
    """(forward check, backward check) of dims-D max or avg pooling."""
    kernel = f"{kind}pool{dims}d"
    rank = dims + 2

    def parts(x, kernel_size, stride, dy=None):
        x = _array(x, f"{kernel} x")
        _rank(x, f"{kernel} x (N, C, {'L' if dims == 1 else 'H, W'})", rank)
        stride = kernel_size if stride is None else stride
        ks, st, _, out = _geometry(kernel, dims, kernel_size, stride, 0, x.shape[2:])
        arrays = [x]
        if dy is not None:
            dy = _array(dy, f"{kernel}_backward dy")
            if dy.shape != x.shape[:2] + out:
                raise ValueError(f"{kernel}_backward: dy has shape {dy.shape}, "
                                 f"the output's is {x.shape[:2] + out}")
            arrays.append(dy)
        dtype = common_dtype(*arrays)
        return [_cast(a, dtype) for a in arrays], _unpack(dims, ks), _unpack(dims, st)

    def forward(x, kernel_size, stride=None):
        (x,), ks, st = parts(x, kernel_size, stride)
        return (x, ks, st), {}

    def backward_avg(dy, x, kernel_size, stride=None):
        (x, dy), ks, st = parts(x, kernel_size, stride, dy)
        return (dy, x, ks, st), {}

    def backward_max(dy, x, idx, kernel_size, stride=None):
        (x, dy), ks, st = parts(x, kernel_size, stride, dy)
        idx = _array(idx, f"{kernel}_backward idx")
        if idx.dtype.kind not in "iu":
            raise TypeError(f"{kernel}_backward: idx must hold integers, got dtype {idx.dtype}")
        if idx.shape != dy.shape:
            raise ValueError(f"{kernel}_backward: idx has shape {idx.shape}, dy has {dy.shape}")
        plane = int(np.prod(x.shape[2:]))
        if idx.min() < 0 or idx.max() >= plane:
            raise ValueError(f"{kernel}_backward: idx must lie in [0, {plane}), the flat input positions")
        return (dy, x, np.ascontiguousarray(idx, dtype=np.int64), ks, st), {}
    return forward, backward_max if kind == "max" else backward_avg


# ------------------------------------------------------------ recurrent
# Recurrent checks: x (N, T, F) with T >= 1, weights (G*H, F) and (G*H, H),
# biases (G*H,), and the saved states of the forward's shapes.

GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def _sequence(x, name):
    """x as an (N, T, F) array with at least one step, before the general checks."""
    if not isinstance(x, np.ndarray):
        x = _array(x, name)
    if x.ndim != 3:
        raise ValueError(f"{name} must be 3-D (batch, time, features), got shape {x.shape}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} is a zero-length sequence (shape {x.shape}): "
                         "it needs at least one time step")
    return _array(x, name)


def _recurrent_weights(kernel, x, w_ih, w_hh, biases):
    g = GATES[kernel]
    w_ih, w_hh = _array(w_ih, f"{kernel} w_ih"), _array(w_hh, f"{kernel} w_hh")
    _rank(w_ih, f"{kernel} w_ih", 2)
    _rank(w_hh, f"{kernel} w_hh", 2)
    hid = w_hh.shape[1]
    if w_hh.shape[0] != g * hid or w_ih.shape[0] != g * hid:
        raise ValueError(f"{kernel}: w_ih {w_ih.shape} and w_hh {w_hh.shape} must both have "
                         f"{g} * hidden_size rows, hidden_size = w_hh's {hid} columns")
    if w_ih.shape[1] != x.shape[2]:
        raise ValueError(f"{kernel}: x has {x.shape[2]} features, w_ih expects {w_ih.shape[1]}")
    out = [w_ih, w_hh]
    for name, b in biases:
        b = _array(b, f"{kernel} {name}")
        if b.shape != (g * hid,):
            raise ValueError(f"{kernel}: {name} has shape {b.shape}, expected ({g * hid},)")
        out.append(b)
    return out, hid


def recurrent(kernel):
    """(forward check, backward check) of kernel: rnn, lstm or gru."""
    def forward(x, w_ih, w_hh, b_ih, b_hh):
        x = _sequence(x, f"{kernel} x")
        arrays, _ = _recurrent_weights(kernel, x, w_ih, w_hh, [("b_ih", b_ih), ("b_hh", b_hh)])
        dtype = common_dtype(x, *arrays)
        return tuple(_cast(a, dtype) for a in [x] + arrays), {}

    def backward(dh, x, *saved_and_weights, need_dx=True):
        n_saved = {"rnn": 1, "lstm": 3, "gru": 3}[kernel]
        if len(saved_and_weights) != n_saved + 2:
            raise TypeError(f"{kernel}_backward takes dh, x, {n_saved} saved arrays, w_ih, w_hh")
        saved, (w_ih, w_hh) = saved_and_weights[:n_saved], saved_and_weights[n_saved:]
        x = _sequence(x, f"{kernel}_backward x")
        arrays, hid = _recurrent_weights(kernel, x, w_ih, w_hh, [])
        n, t = x.shape[:2]
        widths = {"rnn": [hid], "lstm": [hid, hid, 4 * hid], "gru": [hid, 3 * hid, hid]}[kernel]
        checked = []
        for i, (a, width) in enumerate(zip((dh,) + saved, [hid] + widths)):
            a = _array(a, f"{kernel}_backward argument {i}")
            if a.shape != (n, t, width):
                raise ValueError(f"{kernel}_backward: argument {i} has shape {a.shape}, "
                                 f"expected {(n, t, width)}")
            checked.append(a)
        dtype = common_dtype(x, *arrays, *checked)
        dh, *saved = [_cast(a, dtype) for a in checked]
        x, w_ih, w_hh = (_cast(a, dtype) for a in [x] + arrays)
        return (dh, x, *saved, w_ih, w_hh, bool(need_dx)), {}
    return forward, backward


# ------------------------------------------------------------ attention
# Attention checks: q (N, L, E), k and v (N, S, E) with E divisible by num_heads,
# the key mask (N, S) (bool, 0/1 or float; nonzero = ignored) or None, and the
# saved probabilities (N, H, L, S).


def _heads_count(num_heads, e, name):
    if isinstance(num_heads, (bool, np.bool_)) or not isinstance(num_heads, numbers.Integral) or num_heads < 1:
        raise ValueError(f"{name}: num_heads must be a positive integer, got {num_heads!r}")
    if e % num_heads:
        raise ValueError(f"{name}: the feature size {e} is not divisible by num_heads={num_heads}")
    return int(num_heads)


def _qkv(name, q, k, v):
    q, k, v = (_array(a, f"{name} {w}") for a, w in ((q, "q"), (k, "k"), (v, "v")))
    for a, w in ((q, "q"), (k, "k"), (v, "v")):
        _rank(a, f"{name} {w}", 3)
    if k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[2] != q.shape[2]:
        raise ValueError(f"{name}: q {q.shape} must be (N, L, E) and k, v (N, S, E), got k {k.shape}, v {v.shape}")
    return q, k, v


def attention(q, k, v, mask, num_heads, causal=False):
    q, k, v = _qkv("attention", q, k, v)
    heads = _heads_count(num_heads, q.shape[2], "attention")
    dtype = common_dtype(q, k, v)
    if mask is not None:
        mask = _array(mask, "attention mask")
        if mask.shape != (q.shape[0], k.shape[1]):
            raise ValueError(f"attention: the key mask must have shape (N, S) = {(q.shape[0], k.shape[1])}, "
                             f"got {mask.shape}")
        if not np.isfinite(mask).all():
            raise ValueError("attention: the key mask contains NaN or inf")
        mask = _cast(mask != 0, dtype)
    return tuple(_cast(a, dtype) for a in (q, k, v)) + (mask, heads, bool(causal)), {}


def attention_backward(dout, q, k, v, p, num_heads):
    q, k, v = _qkv("attention_backward", q, k, v)
    heads = _heads_count(num_heads, q.shape[2], "attention_backward")
    dout, p = _array(dout, "attention_backward dout"), _array(p, "attention_backward p")
    if dout.shape != q.shape:
        raise ValueError(f"attention_backward: dout has shape {dout.shape}, expected q's {q.shape}")
    want = (q.shape[0], heads, q.shape[1], k.shape[1])
    if p.shape != want:
        raise ValueError(f"attention_backward: p has shape {p.shape}, expected (N, H, L, S) = {want}")
    dtype = common_dtype(dout, q, k, v, p)
    return tuple(_cast(a, dtype) for a in (dout, q, k, v, p)) + (heads,), {}


# -------------------------------------------------------- normalization
# LayerNorm (x (R, F)), BatchNorm (x (N, C, S)) and global average pooling (x (N, C, S)):
# per-feature or per-channel vectors of the right length, the saved statistics of the
# forward's shapes, running buffers updated in place that already conform.


def _vector(v, name, length, optional=True):
    if v is None and optional:
        return None
    v = _array(v, name)
    if v.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {v.shape}")
    return v


def _eps(eps):
    eps = _scalar(eps, "eps")
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    return eps


def layer_norm(x, weight, bias, eps=1e-5):
    x = _array(x, "layer_norm x")
    _rank(x, "layer_norm x (rows, features)", 2)
    f = x.shape[1]
    weight, bias = _vector(weight, "layer_norm weight", f), _vector(bias, "layer_norm bias", f)
    dtype = common_dtype(*(a for a in (x, weight, bias) if a is not None))
    cast = lambda a: None if a is None else _cast(a, dtype)
    return (cast(x), cast(weight), cast(bias), _eps(eps)), {}


def _saved_stats(kernel, dy, x, mean, rstd, weight, rank, axis):
    dy, x = _array(dy, f"{kernel} dy"), _array(x, f"{kernel} x")
    _rank(x, f"{kernel} x", rank)
    if dy.shape != x.shape:
        raise ValueError(f"{kernel}: dy has shape {dy.shape}, x has {x.shape}")
    n = x.shape[axis]
    mean, rstd = _vector(mean, f"{kernel} mean", n, False), _vector(rstd, f"{kernel} rstd", n, False)
    weight = _vector(weight, f"{kernel} weight", x.shape[1])
    arrays = [a for a in (dy, x, mean, rstd, weight) if a is not None]
    dtype = common_dtype(*arrays)
    return [None if a is None else _cast(a, dtype) for a in (dy, x, mean, rstd, weight)]


def layer_norm_backward(dy, x, mean, rstd, weight, need_dx=True):
    dy, x, mean, rstd, weight = _saved_stats("layer_norm_backward", dy, x, mean, rstd, weight, 2, 0)
    return (dy, x, mean, rstd, weight, bool(need_dx)), {}


def batch_norm(x, weight, bias, running_mean, running_var, momentum=0.1, eps=1e-5, training=True):
    x = _array(x, "batch_norm x")
    _rank(x, "batch_norm x (N, C, S)", 3)
    c = x.shape[1]
    weight, bias = _vector(weight, "batch_norm weight", c), _vector(bias, "batch_norm bias", c)
    dtype = common_dtype(*(a for a in (x, weight, bias) if a is not None))
    for name, buf in (("running_mean", running_mean), ("running_var", running_var)):
        if not isinstance(buf, np.ndarray) or buf.dtype != dtype:
            raise TypeError(f"batch_norm: {name} must be a {dtype} ndarray (updated in place)")
        if buf.shape != (c,) or not buf.flags.c_contiguous or not buf.flags.writeable:
            raise ValueError(f"batch_norm: {name} must be a writeable C-contiguous array of "
                             f"shape ({c},) for {c} channels, got {buf.shape}")
    momentum = _scalar(momentum, "momentum")
    if not 0 <= momentum <= 1:
        raise ValueError(f"batch_norm: momentum must lie in [0, 1], got {momentum}")
    if training and x.shape[0] * x.shape[2] < 2:
        raise ValueError(f"batch_norm: training needs more than 1 value per channel, got x of "
                         f"shape {x.shape}")
    cast = lambda a: None if a is None else _cast(a, dtype)
    return (cast(x), cast(weight), cast(bias), running_mean, running_var, momentum, _eps(eps),
            bool(training)), {}


def batch_norm_backward(dy, x, mean, rstd, weight, training=True, need_dx=True):
    dy, x, mean, rstd, weight = _saved_stats("batch_norm_backward", dy, x, mean, rstd, weight, 3, 1)
    return (dy, x, mean, rstd, weight, bool(training), bool(need_dx)), {}


def batch_norm_relu_backward(dy, x, y, mean, rstd, weight, training=True, need_dx=True):
    (dy, x, mean, rstd, weight, training, need_dx), _ = batch_norm_backward(
        dy, x, mean, rstd, weight, training, need_dx)
    y = _array(y, "batch_norm_relu_backward y")
    if y.shape != x.shape:
        raise ValueError(f"batch_norm_relu_backward: y has shape {y.shape}, x has {x.shape}")
    return (dy, x, _cast(y, x.dtype), mean, rstd, weight, training, need_dx), {}


batch_norm_relu = batch_norm   # the same arguments


def global_avgpool(x):
    (x,) = floats("global_avgpool", 3, x)
    return (x,), {}


def global_avgpool_backward(dy, x):
    x = _array(x, "global_avgpool_backward x")
    _rank(x, "global_avgpool_backward x (N, C, S)", 3)
    dy = _array(dy, "global_avgpool_backward dy")
    if dy.shape != x.shape[:2]:
        raise ValueError(f"global_avgpool_backward: dy has shape {dy.shape}, the output's is {x.shape[:2]}")
    dtype = common_dtype(dy, x)
    return (_cast(dy, dtype), _cast(x, dtype)), {}


def __getattr__(name):
    if name == "CHECKS":   # kernel name -> check, from the registry (imported late: it imports us)
        from .registry import KERNELS
        return {k: v.check for k, v in KERNELS.items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
