"""The kernel registry: every fastnn kernel declared once.

A declaration gives a kernel's NumPy reference (reference.py, the living definition), its
input check (checks.py), where it has one its composed fallback (the kernel built from a
backend's own other kernels), the example inputs the parity tests and benchmarks run
(examples.py) and the tolerance of a comparison with the reference. Everything that lists
kernels derives from KERNELS: checks.CHECKS, reference.KERNELS, backend.Backend, the
backends' override tables, losses.NAMES, the parity tests, the kernel benchmarks and
``fastnn backends --kernels``. A new activation is its reference pair in reference.py (and
its name in reference.ACTIVATIONS) plus its layer: its check and examples are generic.

Backends override by name: each backend module builds its NATIVE table with ``overrides``,
which raises UnknownKernelError on a public function the registry does not declare, so a
misspelled override (``rleu``) fails at import instead of silently running NumPy.
"""
import difflib
import math
import types
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from . import checks, examples as ex, reference

# ------------------------------------------------------------- tolerances
# |backend - reference| <= atol + rtol * |reference|, the reference computed in float64.

ELEMENTWISE = {np.dtype(np.float32): (2e-4, 1e-5), np.dtype(np.float64): (1e-10, 1e-12)}


def elementwise(dtype, example=None):
    """(rtol, atol) for kernels whose outputs are a few operations on their inputs."""
    return ELEMENTWISE[np.dtype(dtype)]


def summed(dtype, example):
    """(rtol, atol) for sums of example.depth products (GEMMs, convolutions, BPTT): float32's
    rounding error grows with the length of the sum."""
    k = example.depth
    return (1e-3, 1e-4 * math.sqrt(k)) if np.dtype(dtype) == np.float32 else (1e-9, 1e-11 * k)


def loss_and_grad(dtype, example=None):
    """(rtol, atol) for a loss and its gradient, whose entries are small (1 / N)."""
    return (2e-4, 1e-7) if np.dtype(dtype) == np.float32 else (1e-10, 1e-14)


# ----------------------------------------------------------- declarations


@dataclass(frozen=True)
class Kernel:
    name: str
    family: str   # linear, activation, loss, optim, conv, recurrent, normalization, dropout, embedding, attention
    reference: Callable
    check: Callable                    # check(*args, **kwargs) -> (args, kwargs) for the raw kernel
    examples: ex.Cases
    compose: Optional[Callable] = None  # compose(kernels) -> this kernel from a backend's others
    tol: Callable = elementwise        # tol(dtype, example) -> (rtol, atol)


KERNELS = {}   # name -> Kernel, in declaration order


def declare(name, family, check, examples, compose=None, tol=elementwise):
    if name in KERNELS:
        raise ValueError(f"kernel {name!r} is declared twice")
    KERNELS[name] = Kernel(name, family, getattr(reference, name), check, examples, compose, tol)


def names(family=None, backward=True):
    """Kernel names in declaration order, of one family; backward=False drops the *_backward."""
    return tuple(k for k, v in KERNELS.items() if (family is None or v.family == family)
                 and (backward or not k.endswith("_backward")))


def _declare_all():
    declare("matmul", "linear", checks.matmul, ex.matmul(), tol=summed)
    declare("bias_add", "linear", checks.bias_add, ex.bias_add())
    declare("bias_grad", "linear", checks.bias_grad, ex.bias_grad(), tol=summed)
    declare("linear", "linear", checks.linear, ex.linear(), tol=summed)
    declare("linear_backward", "linear", checks.linear_backward, ex.linear_backward(), tol=summed)
    declare("linear_act", "linear", checks.linear_act, ex.linear_act(),
            compose=reference.compose_linear_act, tol=summed)
    declare("linear_backward_into", "linear", checks.linear_backward_into, ex.linear_backward_into(),
            compose=reference.compose_linear_backward_into, tol=summed)
    for act in reference.ACTIVATIONS:
        for name in (act, act + "_backward"):
            fn = getattr(reference, name)
            declare(name, "activation", checks.activation(name, fn), ex.activation(name, fn))
    # dropout and embedding (issue 10: acts)
    declare("dropout", "dropout", checks.dropout, ex.dropout())
    declare("dropout_backward", "dropout", checks.dropout_backward, ex.dropout(backward=True))
    declare("embedding", "embedding", checks.embedding, ex.embedding())
    declare("embedding_backward_into", "embedding", checks.embedding_backward_into,
            ex.embedding(backward=True), tol=summed)
    for name in ("mse", "cross_entropy", "binary_cross_entropy"):
        declare(name, "loss", getattr(checks, name), ex.loss(name), tol=loss_and_grad)
    declare("sgd_step", "optim", checks.sgd_step, ex.sgd_step())
    declare("adam_step", "optim", checks.adam_step, ex.adam_step())
    # -------- more losses and optimizers (issue 10: optim)
    for name in ("huber", "l1", "cross_entropy_weighted"):
        declare(name, "loss", getattr(checks, name), getattr(ex, name)(), tol=loss_and_grad)
    declare("adamw_step", "optim", checks.adam_step, ex.adamw_step())
    for name in ("rmsprop_step", "adagrad_step", "grad_scale"):
        declare(name, "optim", getattr(checks, name), getattr(ex, name)())
    declare("grad_norm", "optim", checks.grad_norm, ex.grad_norm(), tol=summed)
    # -------- end of issue 10: optim
    for dims in (1, 2):
        forward, backward = checks.conv(dims)
        declare(f"conv{dims}d", "conv", forward, ex.conv(dims), tol=summed)
        declare(f"conv{dims}d_backward", "conv", backward, ex.conv(dims, backward=True), tol=summed)
    for kind in ("max", "avg"):
        for dims in (1, 2):
            name = f"{kind}pool{dims}d"
            forward, backward = checks.pool(kind, dims)
            declare(name, "conv", forward, ex.pool(name), tol=summed)
            declare(name + "_backward", "conv", backward, ex.pool(name + "_backward"), tol=summed)
    for cell in ("rnn", "lstm", "gru"):
        forward, backward = checks.recurrent(cell)
        declare(cell, "recurrent", forward, ex.recurrent(cell), tol=summed)
        declare(cell + "_backward", "recurrent", backward, ex.recurrent(cell + "_backward"), tol=summed)
    # attention: fused scaled-dot-product attention (layers/attention.py)
    declare("attention", "attention", checks.attention, ex.attention("attention"), tol=summed)
    declare("attention_backward", "attention", checks.attention_backward, ex.attention("attention_backward"),
            tol=summed)

    # normalization (layers/normalization.py, the global pools of layers/pooling.py)
    for name in ("layer_norm", "batch_norm", "global_avgpool"):
        declare(name, "normalization", getattr(checks, name), getattr(ex, name)(), tol=summed)
        declare(name + "_backward", "normalization", getattr(checks, name + "_backward"),
                getattr(ex, name)(backward=True), tol=summed)
    # BatchNorm -> ReLU in one kernel each way (the model's plan fuses them, graph.py)
    declare("batch_norm_relu", "normalization", checks.batch_norm_relu, ex.batch_norm_relu(),
            compose=reference.compose_batch_norm_relu, tol=summed)
    declare("batch_norm_relu_backward", "normalization", checks.batch_norm_relu_backward,
            ex.batch_norm_relu(backward=True), compose=reference.compose_batch_norm_relu_backward, tol=summed)

_declare_all()

# -------------------------------------------------------------- overrides


class UnknownKernelError(LookupError):
    """A backend defines a kernel-like function the registry does not declare."""


def public_functions(module):
    """{name: function} for the public functions defined in module itself (not imported into it)."""
    return {k: v for k, v in vars(module).items()
            if not k.startswith("_") and callable(v) and not isinstance(v, type)
            and getattr(v, "__module__", None) == module.__name__}


def overrides(backend, sources, helpers=()):
    """The kernels a backend implements, {name: function}, from its kernel modules' public
    functions (or from dicts). A public name that is neither a registry kernel nor one of
    the backend's declared helpers raises UnknownKernelError naming it."""
    found, where = {}, {}
    for source in sources:
        table = public_functions(source) if isinstance(source, types.ModuleType) else dict(source)
        label = getattr(source, "__name__", "a table")
        for name, fn in table.items():
            if name in found and name in KERNELS:
                raise UnknownKernelError(f"backend {backend!r} defines kernel {name!r} twice "
                                         f"(in {where[name]} and {label})")
            found[name], where[name] = fn, label
    unknown = [n for n in found if n not in KERNELS and n not in helpers]
    if unknown:
        lines = []
        for name in unknown:
            close = difflib.get_close_matches(name, KERNELS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            lines.append(f"{name!r} in {where[name]}{hint}")
        raise UnknownKernelError(
            f"backend {backend!r} defines {', '.join(lines)}, which fastnn/_kernels/registry.py "
            f"does not declare as a kernel: fix the name, make it private (a leading _) or list it "
            f"among the backend's helpers")
    return {n: fn for n, fn in found.items() if n in KERNELS}
