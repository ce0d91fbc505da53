"""Property test for the conv, pooling and recurrent kernels: random shapes,
dtypes, layouts and geometry at every backend's public entry point give the
reference's result or the same clean ValueError/TypeError."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastnn as fnn
from fastnn._kernels import reference

FORWARDS = reference.CONV + reference.RECURRENT
DTYPES = ["float32", "float64", "float32", "float64", "int64", "complex128", "float16"]


def _forward_args(kernel, d, rng):
    """Arguments for the forward kernel from the drawn sizes d (often valid)."""
    n, c, f = d["n"], d["c"], d["f"]
    if kernel in reference.RECURRENT:
        g = {"rnn": 1, "lstm": 4, "gru": 3}[kernel]
        shapes = [(n, d["t"], c), (g * f, d["w_in"]), (g * f, f), (g * f,), (g * f,)]
        return [rng.standard_normal(s) for s in shapes], {}
    dims = int(kernel[-2])
    size = (d["h"], d["w"])[:dims]
    k = (d["kh"], d["kw"])[:dims]
    x = rng.standard_normal((n, c) + size)
    if kernel.startswith("conv"):
        w = rng.standard_normal((f, d["w_in"]) + k)
        b = rng.standard_normal(f) if d["bias"] else None
        return [x, w, b], {"stride": d["stride"], "padding": d["padding"]}
    return [x, k if dims == 2 else k[0]], {"stride": d["stride"]}


@st.composite
def kernel_calls(draw):
    kernel = draw(st.sampled_from(FORWARDS))
    ints = lambda lo, hi: draw(st.integers(lo, hi))   # noqa: E731
    d = {"n": ints(1, 3), "c": ints(1, 3), "f": ints(1, 4), "t": ints(0, 4) if ints(0, 9) == 0 else ints(1, 4),
         "h": ints(1, 6), "w": ints(1, 6), "kh": ints(1, 3), "kw": ints(1, 3), "stride": ints(0, 3) or 1,
         "padding": ints(0, 1), "bias": draw(st.booleans())}
    d["w_in"] = d["c"] if ints(0, 5) else d["c"] + 1            # now and then, a mismatch
    if ints(0, 9) == 0:
        d["stride"] = 0
    backward = draw(st.booleans())
    dtype = draw(st.sampled_from(DTYPES))
    fortran = draw(st.booleans())
    return kernel, backward, d, dtype, fortran, draw(st.integers(0, 2**32 - 1))


def _call(backend, kernel, backward, d, dtype, fortran, seed):
    rng = np.random.default_rng(seed)
    args, kw = _forward_args(kernel, d, rng)
    args = [a.astype(dtype) if isinstance(a, np.ndarray) else a for a in args]
    if fortran:
        args[0] = np.asfortranarray(args[0])
    try:
        if not backward:
            return "ok", getattr(backend, kernel)(*args, **kw)
        ref = fnn.get_backend("numpy")
        out = getattr(ref, kernel)(*args, **kw)           # what the forward saves
        out = out if isinstance(out, tuple) else (out,)
        dy = rng.standard_normal(out[0].shape).astype(dtype)
        if kernel in reference.RECURRENT:
            result = getattr(backend, kernel + "_backward")(dy, args[0], *out, args[1], args[2])
        elif kernel.startswith("conv"):
            result = getattr(backend, kernel + "_backward")(dy, args[0], args[1], **kw)
        else:
            saved = out[1:]
            result = getattr(backend, kernel + "_backward")(dy, args[0], *saved, args[1], **kw)
        return "ok", result
    except (ValueError, TypeError) as exc:
        assert str(exc), "exceptions must say what is wrong"
        return "error", type(exc)


def _as_list(result):
    return [r for r in result if r is not None] if isinstance(result, tuple) else [result]


@pytest.mark.parametrize("name", fnn.backends())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(call=kernel_calls())
def test_seq_kernel_entry_points(name, call):
    got = _call(fnn.get_backend(name), *call)
    want = _call(fnn.get_backend("numpy"), *call)
    assert got[0] == want[0], f"{name} {call[0]}: {got} but the reference gave {want}"
    if got[0] == "error":
        assert got[1] is want[1]
        return
    for out, exp in zip(_as_list(got[1]), _as_list(want[1])):
        assert out.shape == exp.shape and out.flags.c_contiguous
        np.testing.assert_allclose(np.asarray(out, np.float64), np.asarray(exp, np.float64),
                                   rtol=2e-3, atol=2e-3, err_msg=f"{name} {call[0]}")
