"""Example inputs for every kernel: the parity tests run ``Cases.tests``, the benchmarks ``Cases.bench``.

An Example's make(rng, dtype) returns (args, kwargs) for one call, drawn from rng, so
one seed gives the same values twice: the tests draw them for the backend in dtype and
again, upcast to float64, for the reference. The shapes reach the edges: sizes 1, 7,
33, 257, transposed and strided operands, stride and padding, a single time step, and
need_dx=False. Backward examples hold what the reference's forward saved.
"""
import inspect
import itertools
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import reference as ref
from .shapes import window_output_sizes

SIZES = (1, 7, 33, 257)


@dataclass(frozen=True)
class Example:
    id: str
    make: Callable     # make(rng, dtype) -> (args, kwargs)
    depth: int = 1     # the longest sum behind one output element (a GEMM's k): scales the tolerance


@dataclass(frozen=True)
class Cases:
    tests: tuple
    bench: tuple = ()


def example(id, fn, *params, depth=1, **kwargs):
    """An Example calling fn(rng, dtype, *params, **kwargs)."""
    return Example(id, lambda rng, dtype: fn(rng, dtype, *params, **kwargs), depth)


def rand(rng, dtype, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


# ------------------------------------------------------------------ linear

MATMUL_SHAPES = ((1, 1, 1), (7, 33, 1), (33, 7, 257), (257, 33, 7), (1, 257, 33), (64, 64, 64), (100, 130, 70))
TRANS = ((False, False), (True, False), (False, True), (True, True))


def _matmul(rng, dtype, m, k, n, ta=False, tb=False):
    a = rand(rng, dtype, *((k, m) if ta else (m, k)))
    b = rand(rng, dtype, *((n, k) if tb else (k, n)))
    return (a, b, ta, tb), {}


def _matmul_view(rng, dtype, kind):
    a, b = rand(rng, dtype, 40, 30), rand(rng, dtype, 50, 40)
    if kind == "F-order":                  # a.T, b.T: F-contiguous, absorbed as trans flags
        return (a.T, b.T), {}
    return (a[::2], b[:, ::2][:30]), {}    # strided: copied by the check


def matmul():
    tests = [example(f"{m}x{k}x{n}-{'TN'[ta]}{'TN'[tb]}", _matmul, m, k, n, ta, tb, depth=k)
             for (m, k, n), (ta, tb) in itertools.product(MATMUL_SHAPES, TRANS)]
    tests += [example("F-order", _matmul_view, "F-order", depth=40),
              example("strided", _matmul_view, "strided", depth=30)]
    bench = [example(f"{m}x{k}x{n}", _matmul, m, k, n, depth=k)
             for m, k, n in ((128, 784, 256), (256, 256, 256), (512, 512, 512))]
    bench.append(example("dy.T@x 256x128x784", _matmul, 256, 128, 784, True, depth=128))
    return Cases(tuple(tests), tuple(bench))


def _rows_and_features():
    return itertools.product(SIZES, (1, 7, 33))


def _bias_add(rng, dtype, n, f):
    return (rand(rng, dtype, n, f), rand(rng, dtype, f)), {}


def bias_add():
    return Cases(tuple(example(f"{n}x{f}", _bias_add, n, f) for n, f in _rows_and_features()),
                 (example("128x256", _bias_add, 128, 256),))


def _bias_grad(rng, dtype, n, f):
    return (rand(rng, dtype, n, f),), {}


def bias_grad():
    return Cases(tuple(example(f"{n}x{f}", _bias_grad, n, f, depth=n) for n, f in _rows_and_features()),
                 (example("128x256", _bias_grad, 128, 256, depth=128),))


def _linear(rng, dtype, n, f, k=33, bias=True, order="C"):
    x, w, b = rand(rng, dtype, n, k), rand(rng, dtype, f, k), rand(rng, dtype, f)
    return (np.asarray(x, order=order), w, b if bias else None), {}


def linear():
    tests = [example(f"{n}x33->{f}", _linear, n, f, depth=33) for n, f in _rows_and_features()]
    tests += [example(f"{n}x33->7-no-bias", _linear, n, 7, bias=False, depth=33) for n in SIZES]
    tests.append(example("F-order-x", _linear, 7, 33, order="F", depth=33))
    return Cases(tuple(tests), (example("128x784->256", _linear, 128, 256, 784, depth=784),))


def _linear_backward(rng, dtype, n, f, k=33, need_dx=True):
    dy, x, w = rand(rng, dtype, n, f), rand(rng, dtype, n, k), rand(rng, dtype, f, k)
    return (dy, x, w, need_dx), {}


def linear_backward():
    tests = [example(f"{n}x33->{f}", _linear_backward, n, f, depth=max(n, f)) for n, f in _rows_and_features()]
    tests.append(example("no-dx", _linear_backward, 33, 7, need_dx=False, depth=33))
    return Cases(tuple(tests), (example("128x784->256", _linear_backward, 128, 256, 784, depth=256),))


def _linear_act(rng, dtype, n, f, activation, bias=True, k=33):
    (x, w, b), _ = _linear(rng, dtype, n, f, k, bias)
    return (x, w, b, activation), {"alpha": 0.1}


def linear_act():
    tests = [example(f"{a}-{n}x33->{f}{'' if bias else '-no-bias'}", _linear_act, n, f, a, bias, depth=33)
             for a in ref.FUSABLE_ACTIVATIONS for n, f in ((1, 1), (7, 33), (257, 7)) for bias in (True, False)]
    return Cases(tuple(tests), (example("relu-128x784->256", _linear_act, 128, 256, "relu", k=784, depth=784),))


def _linear_backward_into(rng, dtype, n, f, accumulate, k=33, bias=True, need_dx=True):
    (dy, x, w, _), _ = _linear_backward(rng, dtype, n, f, k)
    dw, db = rand(rng, dtype, f, k), rand(rng, dtype, f)
    return (dy, x, w, dw, db if bias else None, need_dx, accumulate), {}


def linear_backward_into():
    tests = [example(f"{n}x33->{f}-{'add' if acc else 'set'}", _linear_backward_into, n, f, acc, depth=max(n, f))
             for n, f in ((1, 1), (7, 33), (257, 7)) for acc in (True, False)]
    tests.append(example("no-bias-no-dx", _linear_backward_into, 7, 33, True, bias=False, need_dx=False, depth=33))
    return Cases(tuple(tests), (example("128x784->256", _linear_backward_into, 128, 256, True, 784, depth=256),))


# ------------------------------------------------------------- activations

ACTIVATION_SHAPES = ((1, 1), (7, 33), (257, 10), (33, 257))


def _activation_input(rng, dtype, shape):
    if shape == "extreme":
        return np.array([[-1e4, -50.0, 0.0, 50.0, 1e4]], dtype=dtype)
    x = rand(rng, dtype, *shape, scale=3.0)
    x.flat[0] = 0.0   # the kink of relu and step
    return x


def _activation(rng, dtype, name, shape, params):
    x = _activation_input(rng, dtype, shape)
    if not name.endswith("_backward"):
        return (x,), dict(params)
    y = getattr(ref, name[:-len("_backward")])(x, **params)
    return (rand(rng, dtype, *x.shape), x, y), dict(params)


def activation(name, fn):
    """Every activation alike; a keyword of the reference (leaky_relu's alpha) gets one case at 0.2."""
    shapes = ACTIVATION_SHAPES + ("extreme",)
    tests = [example("x".join(map(str, s)) if s != "extreme" else s, _activation, name, s, {}) for s in shapes]
    for p in inspect.signature(fn).parameters.values():
        if isinstance(p.default, (int, float)) and not isinstance(p.default, bool):
            tests.append(example(f"{p.name}=0.2", _activation, name, (7, 33), {p.name: 0.2}))
    return Cases(tuple(tests), (example("128x256", _activation, name, (128, 256), {}),))


# ------------------------------------------- dropout and embedding (issue 10: acts)

DROPOUT_SEED = 0x0123456789ABCDEF


def _dropout(rng, dtype, shape, p, backward):
    x = rand(rng, dtype, *shape)
    if not backward:
        return (x, p, DROPOUT_SEED), {}
    return (rand(rng, dtype, *shape), ref.dropout_mask(shape, p, DROPOUT_SEED), p), {}


def dropout(backward=False):
    tests = [example(f"{'x'.join(map(str, s))}-p{p}", _dropout, s, p, backward)
             for s, p in (((1,), 0.5), ((7, 33), 0.0), ((257, 10), 0.5), ((3, 5, 17), 0.9), ((33, 257), 0.1))]
    return Cases(tuple(tests), (example("1024x256-p0.1", _dropout, (1024, 256), 0.1, backward),))


def _embedding(rng, dtype, v, d, idx_shape, backward, padding_idx=-1):
    w = rand(rng, dtype, v, d)
    idx = rng.integers(0, v, idx_shape)
    if not backward:
        return (w, idx), {}
    return (rand(rng, dtype, *idx_shape, d), idx, w, padding_idx), {}


def embedding(backward=False):
    cases = (("1x1-(1,)", 1, 1, (1,)), ("7x33-(5,)", 7, 33, (5,)), ("10x8-(4,9)", 10, 8, (4, 9)),
             ("3x257-(2,3,4)", 3, 257, (2, 3, 4)))
    tests = [example(i, _embedding, v, d, s, backward, depth=int(np.prod(s))) for i, v, d, s in cases]
    if backward:
        tests.append(example("padding-5x7-(6,6)", _embedding, 5, 7, (6, 6), True, 2, depth=36))
    return Cases(tuple(tests), (example("1000x256-(64,32)", _embedding, 1000, 256, (64, 32), backward,
                                        depth=64 * 32),))


# ------------------------------------------------------------------ losses

LOSS_SHAPES = ((1, 1), (7, 3), (33, 10), (257, 7))
HUGE_LOGITS = ((1e4, -1e4, 0.0), (-1e4, 1e4, 5.0))


def _loss(rng, dtype, shape, target):
    logits = np.array(HUGE_LOGITS, dtype=dtype) if shape == "huge" else rand(rng, dtype, *shape, scale=3.0)
    n, c = logits.shape
    if target == "labels":
        t = rng.integers(0, c, n)
    elif target == "soft":
        t = rng.random((n, c)).astype(dtype)
        t /= t.sum(axis=1, keepdims=True)
    elif target == "probs":
        t = rng.random((n, c)).astype(dtype)
    else:
        t = rand(rng, dtype, n, c)
    return (logits, t), {}


def loss(name):
    targets = {"mse": ("values",), "cross_entropy": ("labels", "soft"), "binary_cross_entropy": ("probs",)}
    kinds = targets.get(name, ("values",))
    tests = [example(f"{n}x{c}-{t}", _loss, (n, c), t, depth=n) for (n, c) in LOSS_SHAPES for t in kinds]
    if name != "mse":
        tests += [example(f"huge-logits-{t}", _loss, "huge", t) for t in kinds]
    return Cases(tuple(tests), (example("128x10", _loss, (128, 10), kinds[0], depth=128),))


# -------------------------------------------------------------- optimizers

BENCH_PARAMS = 269_322   # the 784-256-128-10 MLP's parameters


def _sgd(rng, dtype, size, momentum, nesterov, wd, lr=0.1):
    p, g, v = (rand(rng, dtype, size) for _ in range(3))
    return (p, g, v, lr, momentum, nesterov, wd), {}


def sgd_step():
    tests = [example(f"{size}-m{m}{'-nesterov' if nest else ''}-wd{wd}", _sgd, size, m, nest, wd)
             for size in (1, 7, 33, 1000, 270_000)
             for m, nest, wd in ((0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 1e-3), (0.5, False, 0.1))]
    return Cases(tuple(tests), (example("momentum-269k", _sgd, BENCH_PARAMS, 0.9, False, 0.0, lr=1e-9),))


def _adam(rng, dtype, size, wd, t, lr=1e-3):
    p, g = rand(rng, dtype, size), rand(rng, dtype, size)
    m, v = rand(rng, dtype, size) * 0.1, np.abs(rand(rng, dtype, size)) * 0.1
    return (p, g, m, v, lr, 0.9, 0.999, 1e-8, wd, t), {}


def adam_step():
    tests = [example(f"{size}-wd{wd}-t{t}", _adam, size, wd, t)
             for size in (1, 7, 33, 270_000) for wd, t in ((0.0, 1), (0.01, 5))]
    return Cases(tuple(tests), (example("269k", _adam, BENCH_PARAMS, 0.0, 1, lr=1e-9),))


# ------------------------------- more losses and optimizers (issue 10: optim)


def _regression(rng, dtype, shape, ties=False, **kwargs):
    pred, target = rand(rng, dtype, *shape, scale=2.0), rand(rng, dtype, *shape)
    if ties:   # exact zeros of pred - target: l1's gradient is 0 there, as torch's
        target.reshape(-1)[::3] = pred.reshape(-1)[::3]
    return (pred, target), kwargs


def huber():
    tests = [example(f"{n}x{c}", _regression, (n, c), depth=n) for n, c in LOSS_SHAPES]
    tests += [example(f"33x10-delta{d}", _regression, (33, 10), delta=d, depth=33) for d in (0.1, 3.0)]
    return Cases(tuple(tests), (example("128x10", _regression, (128, 10), depth=128),))


def l1():
    tests = [example(f"{n}x{c}", _regression, (n, c), depth=n) for n, c in LOSS_SHAPES]
    tests.append(example("33x10-ties", _regression, (33, 10), ties=True, depth=33))
    return Cases(tuple(tests), (example("128x10", _regression, (128, 10), depth=128),))


def _ce_weighted(rng, dtype, shape, weighted, smoothing, ignore):
    n, c = shape
    logits = rand(rng, dtype, n, c, scale=3.0)
    labels = rng.integers(0, c, n)
    if ignore is not None:
        labels[::3] = ignore
    weight = (rng.random(c) + 0.1).astype(dtype) if weighted else None
    return (logits, labels, weight, smoothing, ignore), {}


def cross_entropy_weighted():
    opts = ((True, 0.0, None), (False, 0.1, None), (True, 0.2, -100), (False, 0.0, 1), (True, 1.0, None))
    tests = [example(f"{n}x{c}-w{int(w)}-ls{ls}-ig{ig}", _ce_weighted, (n, c), w, ls, ig, depth=n)
             for (n, c) in LOSS_SHAPES[1:] for w, ls, ig in opts]
    tests.append(example("1x1-all-ignored", _ce_weighted, (1, 1), True, 0.1, 0, depth=1))
    return Cases(tuple(tests), (example("128x10", _ce_weighted, (128, 10), True, 0.1, -100, depth=128),))


OPTIM_SIZES = (1, 7, 33, 1000, 270_000)
MILLION = 1_000_000


def _adamw(rng, dtype, size, wd, t, lr=1e-3):
    (p, g, m, v, lr, b1, b2, eps, _, t), _ = _adam(rng, dtype, size, 0.0, t, lr)
    return (p, g, m, v, lr, b1, b2, eps, wd, t), {}


def adamw_step():
    tests = [example(f"{size}-wd{wd}-t{t}", _adamw, size, wd, t)
             for size in OPTIM_SIZES for wd, t in ((0.0, 1), (0.01, 5))]
    return Cases(tuple(tests), (example("1M", _adamw, MILLION, 0.01, 3, lr=1e-9),))


def _rmsprop(rng, dtype, size, wd, momentum, centered, lr=1e-2):
    p, g, mb = (rand(rng, dtype, size) for _ in range(3))
    ga = rand(rng, dtype, size) * 0.1
    sq = np.abs(rand(rng, dtype, size)) * 0.1 + ga * ga   # centered: sq >= ga^2, as in a real run
    return (p, g, sq, ga, mb, lr, 0.99, 1e-8, wd, momentum, centered), {}


def rmsprop_step():
    tests = [example(f"{size}-wd{wd}-m{m}{'-centered' if c else ''}", _rmsprop, size, wd, m, c)
             for size in OPTIM_SIZES
             for wd, m, c in ((0.0, 0.0, False), (0.01, 0.9, False), (0.0, 0.0, True), (0.1, 0.5, True))]
    return Cases(tuple(tests), (example("1M-momentum-centered", _rmsprop, MILLION, 0.0, 0.9, True, lr=1e-9),))


def _adagrad(rng, dtype, size, lr_decay, wd, t, lr=1e-2):
    p, g = rand(rng, dtype, size), rand(rng, dtype, size)
    s = np.abs(rand(rng, dtype, size))
    return (p, g, s, lr, lr_decay, wd, 1e-10, t), {}


def adagrad_step():
    tests = [example(f"{size}-decay{d}-wd{wd}-t{t}", _adagrad, size, d, wd, t)
             for size in OPTIM_SIZES for d, wd, t in ((0.0, 0.0, 1), (0.1, 0.01, 4))]
    return Cases(tuple(tests), (example("1M", _adagrad, MILLION, 0.0, 0.0, 2, lr=1e-9),))


def _grad_norm(rng, dtype, size, order):
    return (rand(rng, dtype, size), order), {}


def grad_norm():
    tests = [example(f"{size}-p{p}", _grad_norm, size, p, depth=size)
             for size in OPTIM_SIZES for p in (2.0, 1.0, float("inf"), 3.0)]
    return Cases(tuple(tests), (example("1M-p2", _grad_norm, MILLION, 2.0, depth=MILLION),))


def _grad_scale(rng, dtype, size):
    return (rand(rng, dtype, size), 0.37), {}


def grad_scale():
    return (Cases(tuple(example(str(size), _grad_scale, size) for size in OPTIM_SIZES),
                  (example("1M", _grad_scale, MILLION),)))


# ------------------------------------------------ convolution and pooling
# (batch, channels in, spatial size, channels out, kernel, stride, padding, bias, layout)

CONV_CASES = {
    1: (("3x2x9-k3", 3, 2, (9,), 5, (3,), 1, 0, True, "C"),
        ("s2-p1-F-order", 3, 2, (9,), 5, (3,), 2, 1, True, "F"),
        ("1x1x1-k1", 1, 1, (1,), 1, (1,), 1, 0, True, "C"),
        ("k4-s3-p2-no-bias", 2, 3, (7,), 4, (4,), 3, 2, False, "C"),
        ("33-channels", 2, 33, (7,), 7, (3,), 1, 1, True, "C")),
    2: (("3x2x9x7-k3x2", 3, 2, (9, 7), 5, (3, 2), (1, 1), (0, 0), True, "C"),
        ("s2x1-p1x0-F-order", 3, 2, (9, 7), 5, (3, 2), (2, 1), (1, 0), True, "F"),
        ("1x1x1x1-k1", 1, 1, (1, 1), 1, (1, 1), (1, 1), (0, 0), True, "C"),
        ("s2-p2-no-bias", 2, 3, (7, 8), 4, (3, 3), (2, 2), (2, 2), False, "C"),
        ("7-channels-to-33", 2, 7, (7, 7), 33, (3, 3), (1, 1), (1, 1), True, "C")),
}
CONV_BENCH = {1: ("32x16x128-k5", 32, 16, (128,), 32, (5,), 1, 2, True, "C"),
              2: ("32x8x28x28-k3", 32, 8, (28, 28), 16, (3, 3), (1, 1), (1, 1), True, "C")}


def _tuple(v, dims):
    return tuple(v) if isinstance(v, tuple) else (v,) * dims


def _conv(rng, dtype, backward, dims, spec, need_dx=True):
    _, n, c, size, c_out, k, stride, padding, bias, layout = spec
    x = np.asarray(rand(rng, dtype, n, c, *size), order=layout)
    w, b = rand(rng, dtype, c_out, c, *k), rand(rng, dtype, c_out)
    if not backward:
        return (x, w, b if bias else None, stride, padding), {}
    out = window_output_sizes(f"conv{dims}d", size, k, _tuple(stride, dims), _tuple(padding, dims))
    return (rand(rng, dtype, n, c_out, *out), x, w, stride, padding, need_dx), {}


def _conv_depth(spec):
    _, n, c, size, _, k, _, _, _, _ = spec
    return max(c * int(np.prod(k)), n * int(np.prod(size)))


def conv(dims, backward=False):
    tests = [example(s[0], _conv, backward, dims, s, depth=_conv_depth(s)) for s in CONV_CASES[dims]]
    if backward:
        s = CONV_CASES[dims][1]
        tests.append(example(s[0] + "-no-dx", _conv, True, dims, s, need_dx=False, depth=_conv_depth(s)))
    s = CONV_BENCH[dims]
    return Cases(tuple(tests), (example(s[0], _conv, backward, dims, s, depth=_conv_depth(s)),))


# (batch, channels, spatial size, kernel, stride (None: the kernel), layout)
POOL_CASES = {
    1: (("2x3x9-k3-s2", 2, 3, (9,), 3, 2, "C"),
        ("k2-default-stride", 2, 3, (8,), 2, None, "C"),
        ("1x1x1-k1", 1, 1, (1,), 1, 1, "C"),
        ("F-order-k3-s1", 3, 2, (7,), 3, 1, "F")),
    2: (("2x3x9x7-k3-s2", 2, 3, (9, 7), 3, 2, "C"),
        ("k2-default-stride", 2, 3, (8, 6), 2, None, "C"),
        ("k3x2-s1x2-overlap", 2, 3, (9, 8), (3, 2), (1, 2), "C"),
        ("1x1x1x1-k1", 1, 1, (1, 1), 1, 1, "C"),
        ("F-order-k2-s1", 3, 2, (5, 7), 2, 1, "F")),
}
POOL_BENCH = {1: ("32x16x128-k2", 32, 16, (128,), 2, None, "C"),
              2: ("32x16x28x28-k2", 32, 16, (28, 28), 2, None, "C")}


def _pool(rng, dtype, name, spec):
    _, n, c, size, k, stride, layout = spec
    x = np.asarray(rand(rng, dtype, n, c, *size), order=layout)
    if not name.endswith("_backward"):
        return (x, k, stride), {}
    dims = len(size)
    ks = _tuple(k, dims)
    st = ks if stride is None else _tuple(stride, dims)
    dy = rand(rng, dtype, n, c, *window_output_sizes(name, size, ks, st))
    if name.startswith("max"):
        one = (lambda v: v[0]) if dims == 1 else (lambda v: v)   # 1-D kernels take ints
        _, idx = getattr(ref, name[:-len("_backward")])(np.ascontiguousarray(x), one(ks), one(st))
        return (dy, x, idx, k, stride), {}
    return (dy, x, k, stride), {}


def pool(name):
    dims = int(name[len("maxpool")])
    tests = tuple(example(s[0], _pool, name, s, depth=int(np.prod(_tuple(s[4], dims)))) for s in POOL_CASES[dims])
    return Cases(tests, (example(POOL_BENCH[dims][0], _pool, name, POOL_BENCH[dims]),))


# --------------------------------------------------------------- recurrent
# (batch, time, features, hidden, layout of x)

RECURRENT_CASES = (("3x7x5-h6-F-order", 3, 7, 5, 6, "F"), ("1x1x1-h1", 1, 1, 1, 1, "C"),
                   ("2x3x33-h7", 2, 3, 33, 7, "C"), ("7x4x3-h33", 7, 4, 3, 33, "C"))
RECURRENT_BENCH = ("32x16x32-h64", 32, 16, 32, 64, "C")
GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def _recurrent(rng, dtype, name, spec, need_dx=True):
    _, n, t, f, h, layout = spec
    cell = name.replace("_backward", "")
    g = GATES[cell]
    x = np.asarray(rand(rng, dtype, n, t, f), order=layout)
    w_ih, w_hh = rand(rng, dtype, g * h, f, scale=0.5), rand(rng, dtype, g * h, h, scale=0.5)
    if cell == name:
        return (x, w_ih, w_hh, rand(rng, dtype, g * h, scale=0.5), rand(rng, dtype, g * h, scale=0.5)), {}
    saved = getattr(ref, cell)(np.ascontiguousarray(x), w_ih, w_hh,
                               rand(rng, dtype, g * h, scale=0.5), rand(rng, dtype, g * h, scale=0.5))
    saved = saved if isinstance(saved, tuple) else (saved,)
    return (rand(rng, dtype, n, t, h), x, *saved, w_ih, w_hh), {"need_dx": need_dx}


def _recurrent_depth(spec):
    _, n, t, f, h, _ = spec
    return max(n * t, t * h + f)


def recurrent(name):
    tests = [example(s[0], _recurrent, name, s, depth=_recurrent_depth(s)) for s in RECURRENT_CASES]
    if name.endswith("_backward"):
        s = RECURRENT_CASES[2]
        tests.append(example(s[0] + "-no-dx", _recurrent, name, s, need_dx=False, depth=_recurrent_depth(s)))
    s = RECURRENT_BENCH
    return Cases(tuple(tests), (example(s[0], _recurrent, name, s, depth=_recurrent_depth(s)),))


# --------------------------------------------------------------- attention
# (id, batch, query length, key length, features, heads, causal, mask)

ATTENTION_CASES = (("1x1x1-e1-h1", 1, 1, 1, 1, 1, False, False), ("2x7x7-e6-h3-causal", 2, 7, 7, 6, 3, True, False),
                   ("3x5x9-e8-h2-mask", 3, 5, 9, 8, 2, False, True),
                   ("2x9x4-e4-h4-causal-mask", 2, 9, 4, 4, 4, True, True),
                   ("2x33x33-e16-h2", 2, 33, 33, 16, 2, False, False))
ATTENTION_BENCH = ("32x32x32-e64-h4", 32, 32, 32, 64, 4, False, False)


def _attention(rng, dtype, name, spec):
    _, n, l, s, e, h, causal, masked = spec
    q, k, v = rand(rng, dtype, n, l, e), rand(rng, dtype, n, s, e), rand(rng, dtype, n, s, e)
    mask = None
    if masked:
        mask = (rng.random((n, s)) < 0.3).astype(dtype)
        mask[0] = 1          # a sample whose keys are all ignored: zero output
    if name == "attention":
        return (q, k, v, mask, h, causal), {}
    _, p = ref.attention(q, k, v, mask, h, causal)
    return (rand(rng, dtype, n, l, e), q, k, v, p, h), {}


def attention(name):
    tests = tuple(example(s[0], _attention, name, s, depth=max(s[2], s[3], s[4])) for s in ATTENTION_CASES)
    s = ATTENTION_BENCH
    return Cases(tests, (example(s[0], _attention, name, s, depth=max(s[2], s[3], s[4])),))


# ----------------------------------------------------------- normalization
# (rows, features, weight, bias, mean offset of x): the offset checks the one-pass statistics.

LAYER_NORM_CASES = ((1, 1, True, True, 0.0), (7, 33, True, True, 3.0), (257, 7, False, False, 0.0),
                    (33, 257, True, False, -5.0), (4, 64, False, True, 0.0))


def _layer_norm(rng, dtype, r, f, weight, bias, offset, backward=False, need_dx=True):
    x = rand(rng, dtype, r, f)
    x += offset
    w = rand(rng, dtype, f) if weight else None
    b = rand(rng, dtype, f) if bias else None
    if not backward:
        return (x, w, b, 1e-5), {}
    _, mean, rstd = ref.layer_norm(x, w, b)
    return (rand(rng, dtype, r, f), x, mean, rstd, w, need_dx), {}


def layer_norm(backward=False):
    tests = [example(f"{r}x{f}{'' if w else '-no-weight'}{'' if b else '-no-bias'}", _layer_norm,
                     r, f, w, b, off, backward, depth=max(r, f) if backward else f)
             for r, f, w, b, off in LAYER_NORM_CASES]
    if backward:
        tests.append(example("7x33-no-dx", _layer_norm, 7, 33, True, True, 0.0, True, False, depth=33))
    return Cases(tuple(tests), (example("1024x64", _layer_norm, 1024, 64, True, True, 0.0, backward,
                                        depth=1024 if backward else 64),))


# (batch, channels, spatial positions, affine, training, mean offset)
BATCH_NORM_CASES = (("2x3x1-train", 2, 3, 1, True, True, 0.0), ("7x33x1-train", 7, 33, 1, True, True, 2.0),
                    ("3x4x9-train", 3, 4, 9, True, True, -1.0), ("1x2x257-no-affine", 1, 2, 257, False, True, 0.0),
                    ("5x7x33-eval", 5, 7, 33, True, False, 0.0), ("33x2x1-eval", 33, 2, 1, True, False, 1.0))


def _batch_norm(rng, dtype, spec, backward=False, need_dx=True):
    _, n, c, s, affine, training, offset = spec
    x = rand(rng, dtype, n, c, s)
    x += offset
    w = rand(rng, dtype, c) if affine else None
    b = rand(rng, dtype, c) if affine else None
    rm, rv = rand(rng, dtype, c), np.abs(rand(rng, dtype, c))
    rv += 0.5
    if not backward:
        return (x, w, b, rm, rv, 0.1, 1e-5, training), {}
    _, mean, rstd = ref.batch_norm(x, w, b, rm, rv, 0.1, 1e-5, training)
    return (rand(rng, dtype, n, c, s), x, mean, rstd, w, training, need_dx), {}


def batch_norm(backward=False):
    tests = [example(s[0], _batch_norm, s, backward, depth=s[1] * s[3]) for s in BATCH_NORM_CASES]
    if backward:
        s = BATCH_NORM_CASES[2]
        tests.append(example(s[0] + "-no-dx", _batch_norm, s, True, False, depth=s[1] * s[3]))
    bench = (("32x16x64-train", 32, 16, 64, True, True, 0.0), ("100x64x1-train", 100, 64, 1, True, True, 0.0))
    return Cases(tuple(tests), tuple(example(s[0], _batch_norm, s, backward, depth=s[1] * s[3]) for s in bench))


def _batch_norm_relu(rng, dtype, spec, backward=False, need_dx=True):
    args, kw = _batch_norm(rng, dtype, spec, backward, need_dx)
    if not backward:
        return args, kw
    dy, x, mean, rstd, w, training, need_dx = args
    y = np.maximum(rand(rng, dtype, *x.shape), 0)   # only y > 0 matters: a mask cutting half
    return (dy, x, y, mean, rstd, w, training, need_dx), kw


def batch_norm_relu(backward=False):
    """batch_norm's cases, fused with relu (for backward, y has zeros where the mask cuts)."""
    tests = [example(s[0], _batch_norm_relu, s, backward, depth=s[1] * s[3]) for s in BATCH_NORM_CASES]
    if backward:
        s = BATCH_NORM_CASES[2]
        tests.append(example(s[0] + "-no-dx", _batch_norm_relu, s, True, False, depth=s[1] * s[3]))
    bench = (("100x16x64-train", 100, 16, 64, True, True, 0.0),)
    return Cases(tuple(tests), tuple(example(s[0], _batch_norm_relu, s, backward, depth=s[1] * s[3]) for s in bench))


def _global_avgpool(rng, dtype, n, c, s, backward=False):
    x = rand(rng, dtype, n, c, s)
    return ((rand(rng, dtype, n, c), x) if backward else (x,)), {}


def global_avgpool(backward=False):
    shapes = ((1, 1, 1), (2, 3, 7), (3, 33, 16), (2, 2, 257))
    tests = [example("x".join(map(str, sh)), _global_avgpool, *sh, backward, depth=sh[2]) for sh in shapes]
    return Cases(tuple(tests), (example("32x64x64", _global_avgpool, 32, 64, 64, backward, depth=64),))
