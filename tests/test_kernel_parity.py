"""Every kernel of every non-reference backend against the NumPy reference, generated
from the registry: backend x dtype x each kernel's examples (fastnn/_kernels/examples.py).

The reference runs on the same inputs upcast to float64, so a float32 backend is
compared with the exact-ish result, within the kernel's tolerance atol + rtol * |ref|.
Array arguments are compared after the call as well: that covers the in-place kernels
(optimizer steps, linear_backward_into) and catches a kernel that writes into its inputs.
"""
import zlib

import numpy as np
import pytest

import fastnn as fnn
from fastnn._kernels import reference as ref, registry
from conftest import BACKENDS, assert_close

DTYPES = [np.float32, np.float64]
OTHERS = [b for b in BACKENDS if b != "numpy"]
CASES = [pytest.param(kernel, example, id=f"{kernel.name}-{example.id}")
         for kernel in registry.KERNELS.values() for example in kernel.examples.tests]


def _inputs(kernel, example, dtype):
    rng = np.random.default_rng(zlib.crc32(f"{kernel.name}/{example.id}".encode()))
    return example.make(rng, dtype)


def _upcast(value):
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return value.astype(np.float64)
    return value


def _compare(got, want, dtype, tol, where):
    if want is None:
        assert got is None, f"{where}: expected None, got {type(got).__name__}"
    elif isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want), f"{where}: expected a {len(want)}-tuple"
        for i, (g, w) in enumerate(zip(got, want)):
            _compare(g, w, dtype, tol, f"{where}[{i}]")
    elif isinstance(want, float):
        assert isinstance(got, float), f"{where}: expected a Python float, got {type(got).__name__}"
        assert_close(got, want, dtype, *tol)
    else:
        assert isinstance(got, np.ndarray), f"{where}: expected an ndarray, got {type(got).__name__}"
        assert got.dtype == (np.dtype(dtype) if want.dtype.kind == "f" else want.dtype), (where, got.dtype)
        assert got.flags.c_contiguous, f"{where}: not C-contiguous"
        assert_close(got, want, dtype, *tol)


@pytest.mark.parametrize("kernel,example", CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("backend_name", OTHERS)
def test_kernel_matches_reference(backend_name, dtype, kernel, example):
    args, kwargs = _inputs(kernel, example, dtype)
    got = getattr(fnn.get_backend(backend_name), kernel.name)(*args, **kwargs)
    ref_args, ref_kwargs = _inputs(kernel, example, dtype)
    ref_args = [_upcast(a) for a in ref_args]
    want = getattr(fnn.get_backend("numpy"), kernel.name)(*ref_args, **ref_kwargs)
    tol = kernel.tol(dtype, example)
    _compare(got, want, dtype, tol, "result")
    for a, r in zip(args, ref_args):
        if isinstance(r, np.ndarray):
            assert_close(a, r, dtype, *tol)


# ----------------------------------------------- beyond the examples' shapes


@pytest.mark.parametrize("backend_name", OTHERS)
def test_matmul_accepts_integers_and_mixed(backend_name):
    backend = fnn.get_backend(backend_name)
    a = np.arange(12).reshape(3, 4)
    b = np.arange(8, dtype=np.float32).reshape(4, 2)
    got = backend.matmul(a, b)   # integers follow the float operand's dtype
    assert got.dtype == np.float32
    assert_close(got, a @ b, np.float32)
    got = backend.matmul(a, a.T)  # integers alone compute in float64
    assert got.dtype == np.float64
    assert_close(got, a @ a.T, np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_losses_stable_for_huge_logits(backend, dtype):
    # Hand-computed values: these pin the reference too.
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0]], dtype=dtype)
    labels = np.array([1, 0])
    loss, grad = backend.cross_entropy(logits, labels)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    assert abs(loss - 2e4 / 2 * 2) / 2e4 < 1e-3   # each row loses 2e4
    loss, grad = backend.binary_cross_entropy(logits, np.array([[1, 0, 1], [1, 0, 0.5]], dtype=dtype))
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    # only row 2's two confident mistakes cost 1e4 each; the rest is small and exact
    expected = (2e4 + np.log(2) + 2.5 + np.log1p(np.exp(-5.0))) / 6
    assert abs(loss - expected) / expected < 1e-6


def test_sgd_reference_by_hand():
    # One hand-computed step pins the reference itself: PyTorch's rule
    # v = m*v + (g + wd*p); p -= lr * (g + wd*p + m*v) for Nesterov.
    p, g, v = np.array([1.0]), np.array([0.5]), np.array([0.2])
    ref.sgd_step(p, g, v, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)
    g_wd = 0.5 + 0.1 * 1.0
    v_new = 0.9 * 0.2 + g_wd
    assert v[0] == pytest.approx(v_new)
    assert p[0] == pytest.approx(1.0 - 0.1 * (g_wd + 0.9 * v_new))


def test_adam_reference_by_hand():
    p, g, m, v = np.array([1.0]), np.array([0.5]), np.array([0.0]), np.array([0.0])
    ref.adam_step(p, g, m, v, 0.1, 0.9, 0.999, 1e-8, 0.0, 1)
    # first step: m_hat = g, v_hat = g^2, so p moves by lr * sign(g)
    assert p[0] == pytest.approx(1.0 - 0.1, rel=1e-6)
