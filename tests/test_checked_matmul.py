"""backend.matmul of cython and numba checks its usual case itself (in C, or inline) before the
registry's check: every input the fast test lets through or sends on must behave exactly as
through the registry's check (the reference backend's matmul), misuse included."""
import numpy as np
import pytest

import fastnn as fnn
from conftest import compiled_backends

rng = np.random.default_rng(0)


def _unaligned(shape, dtype):
    raw = np.zeros(int(np.prod(shape)) * np.dtype(dtype).itemsize + 1, np.uint8)
    out = np.frombuffer(raw[1:].data, dtype=dtype).reshape(shape)
    out[...] = rng.standard_normal(shape)
    assert not out.flags.aligned
    return out


def cases():
    a32 = rng.standard_normal((5, 7)).astype(np.float32)
    b32 = rng.standard_normal((7, 3)).astype(np.float32)
    a64, b64 = a32.astype(np.float64), b32.astype(np.float64)
    yield "usual", (a32, b32), {}
    yield "float64", (a64, b64), {}
    yield "trans_a", (a32.T.copy(), b32, True, False), {}
    yield "trans_b", (a32, b32.T.copy(), False, True), {}
    yield "trans flags as ints", (a32.T.copy(), b32.T.copy(), 1, 1), {}
    yield "mixed dtypes", (a32, b64), {}
    yield "int operands", (np.arange(35).reshape(5, 7), np.arange(21).reshape(7, 3)), {}
    yield "big-endian", (a32.astype(">f4"), b32.astype(">f4")), {}
    yield "unaligned", (_unaligned((5, 7), np.float32), _unaligned((7, 3), np.float32)), {}
    yield "strided view", (rng.standard_normal((5, 14)).astype(np.float32)[:, ::2], b32), {}
    yield "fortran order", (np.asfortranarray(a32), b32), {}
    yield "matrix subclass", (np.asmatrix(a32), b32), {}
    yield "lists", (a32.tolist(), b32.tolist()), {}
    yield "shapes do not align", (a32, a32), {}
    yield "one-dimensional", (a32[0], b32), {}
    yield "three-dimensional", (a32[None], b32), {}
    yield "empty", (np.zeros((0, 7), np.float32), b32), {}
    yield "NaN passes through", (np.full((5, 7), np.nan, np.float32), b32), {}
    yield "keyword flags", (a32.T.copy(), b32), {"trans_a": True}


def outcome(fn, args, kwargs):
    try:
        return "ok", np.asarray(fn(*args, **kwargs))
    except Exception as exc:   # the exact type and message are what is compared
        return type(exc), str(exc)


@compiled_backends
@pytest.mark.parametrize("case", [c[0] for c in cases()])
def test_matmul_checks_like_the_registry(backend, case):
    _, args, kwargs = next(c for c in cases() if c[0] == case)
    expected = outcome(fnn.get_backend("numpy").matmul, args, kwargs)
    got = outcome(backend.matmul, args, kwargs)
    assert got[0] == expected[0], (got, expected)
    if got[0] == "ok":
        assert got[1].dtype == expected[1].dtype and got[1].shape == expected[1].shape
        np.testing.assert_allclose(got[1], expected[1], rtol=1e-5, atol=1e-5)
    else:
        assert got[1] == expected[1]


@compiled_backends
def test_the_self_checked_matmul_is_the_one_in_use(backend):
    """The fast check is wired in (a misspelled CHECKED entry would leave the slow path)."""
    assert backend.matmul is backend.module.CHECKED["matmul"]


@pytest.mark.parametrize("name", ["numpy", "cython", "numba"])
def test_float32_of_either_byte_order_stays_float32(name):
    """A big-endian float32 operand (a file written on another machine) is float32, as in NumPy:
    it was promoted to float64 while the check compared dtypes with their byte order."""
    if name not in fnn.backends():
        pytest.skip(f"{name} backend not available")
    a = rng.standard_normal((5, 7)).astype(">f4")
    b = rng.standard_normal((7, 3)).astype(np.float32)
    got = fnn.get_backend(name).matmul(a, b)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)
