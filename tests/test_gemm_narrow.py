"""The cython GEMM's narrow path (x @ w.T into at most 16 columns, no packing): every ragged
shape against NumPy, with and without the bias it accumulates onto, and a row's result the same
whatever rows come with it (one thread or two)."""
import numpy as np
import pytest

from conftest import COMPILED

pytestmark = pytest.mark.skipif("cython" not in COMPILED, reason="the cython backend is not built")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_narrow_linear_and_matmul_match_numpy(dtype):
    import fastnn as fnn
    raw = fnn.get_backend("cython").raw
    rng = np.random.default_rng(0)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for m in (1, 7, 8, 9, 33):
        for k in (1, 5, 64, 300):
            for n in (1, 3, 10, 16, 17):   # 17: just past the narrow path, the packed GEMM
                x = rng.standard_normal((m, k)).astype(dtype)
                w = rng.standard_normal((n, k)).astype(dtype)
                b = rng.standard_normal(n).astype(dtype)
                want = x.astype(np.float64) @ w.T.astype(np.float64)
                scale = np.abs(x).astype(np.float64) @ np.abs(w).T + np.abs(b) + 1   # each entry's size
                for got, ref in ((raw.matmul(x, w, False, True), want), (raw.linear(x, w, b), want + b),
                                 (raw.linear_act(x, w, b, "relu"), np.maximum(want + b, 0))):
                    assert got.dtype == dtype and got.shape == (m, n)
                    assert np.all(np.abs(got - ref) <= tol * scale), (m, k, n)


def test_a_rows_result_does_not_depend_on_the_batch():
    import fastnn as fnn
    from fastnn._kernels import cython as cy
    raw = fnn.get_backend("cython").raw
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3000, 200)).astype(np.float32)   # above one chunk and the thread threshold
    w = rng.standard_normal((10, 200)).astype(np.float32)
    b = rng.standard_normal(10).astype(np.float32)
    cy.set_num_threads(2)
    try:
        whole = raw.linear(x, w, b)
    finally:
        cy.set_num_threads(1)
    for rows in (slice(0, 1), slice(5, 13), slice(2000, 2999), np.array([2999, 7, 1500])):
        np.testing.assert_array_equal(raw.linear(x[rows], w, b), whole[rows])
