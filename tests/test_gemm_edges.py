"""The cython GEMM's edge tiles (fnn_ukr_edge512.h on AVX-512: a tile at most half as wide or
half as tall as the 8x32 float / 8x16 double register tile runs only that half) on every built
ISA module: each ragged M, N around the tile against NumPy, every transpose, accumulating into
an existing C, and each element the same bits as in a full-width product (the same sum in the
same order, so a column's result does not depend on how many columns come with it)."""
import numpy as np
import pytest

cyk = pytest.importorskip("fastnn._kernels.cython")
MODULES = {isa: cyk.kernels_for(isa) for isa in cyk.built_isas()}
# around half and whole tiles: float32 8x32 / 16 lanes, float64 8x16 / 8 lanes (AVX2 6x16, 6x8)
SIZES_M = (1, 3, 4, 5, 8, 10, 13)
SIZES_N = (1, 4, 8, 9, 16, 17, 31, 33, 40, 100)


def _operands(rng, m, k, n, dtype, ta, tb):
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    return a, b


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("isa", sorted(MODULES))
def test_every_ragged_tile_matches_numpy(isa, dtype):
    mod, rng = MODULES[isa], np.random.default_rng(0)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for m in SIZES_M:
        for n in SIZES_N:
            for k, ta, tb in ((1, False, False), (7, True, False), (37, False, True), (300, True, True)):
                a, b = _operands(rng, m, k, n, dtype, ta, tb)
                a64, b64 = a.astype(np.float64), b.astype(np.float64)
                want = (a64.T if ta else a64) @ (b64.T if tb else b64)
                scale = np.abs(a64.T if ta else a64) @ np.abs(b64.T if tb else b64) + 1
                got = mod.matmul(a, b, ta, tb)
                assert got.dtype == dtype and got.shape == (m, n)
                assert np.all(np.abs(got - want) <= tol * scale), (isa, m, k, n, ta, tb)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("isa", sorted(MODULES))
def test_edge_tiles_accumulate_into_the_gradient(isa, dtype):
    """linear_backward_into adds dy.T @ x into dw: the edge tiles' masked load-add-store."""
    mod, rng = MODULES[isa], np.random.default_rng(1)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for n_out, n_in in ((10, 100), (3, 40), (100, 40), (100, 9), (5, 17)):
        dy = rng.standard_normal((64, n_out)).astype(dtype)
        x = rng.standard_normal((64, n_in)).astype(dtype)
        w = rng.standard_normal((n_out, n_in)).astype(dtype)
        dw0 = rng.standard_normal((n_out, n_in)).astype(dtype)
        dw, db = dw0.copy(), np.zeros(n_out, dtype)
        dx = mod.linear_backward_into(dy, x, w, dw, db, True, True)
        want = dw0 + dy.astype(np.float64).T @ x
        scale = np.abs(dy).T.astype(np.float64) @ np.abs(x) + np.abs(dw0) + 1
        assert np.all(np.abs(dw - want) <= tol * scale), (isa, n_out, n_in)
        want_dx = dy.astype(np.float64) @ w
        assert np.all(np.abs(dx - want_dx) <= tol * (np.abs(dy).astype(np.float64) @ np.abs(w) + 1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("isa", sorted(MODULES))
def test_a_narrow_product_has_the_bits_of_the_wide_one(isa, dtype):
    """Columns 0..n-1 of A @ B are bit-identical whether B has n columns (an edge tile) or 64
    (full tiles), and rows 0..m-1 whether A has m rows or 16."""
    mod, rng = MODULES[isa], np.random.default_rng(2)
    a = rng.standard_normal((16, 200)).astype(dtype)
    b = rng.standard_normal((200, 64)).astype(dtype)
    wide = mod.matmul(a, b, False, False)
    for n in (1, 5, 8, 16, 20, 33):
        np.testing.assert_array_equal(mod.matmul(a, np.ascontiguousarray(b[:, :n]), False, False), wide[:, :n])
    for m in (1, 3, 4, 6):
        np.testing.assert_array_equal(mod.matmul(np.ascontiguousarray(a[:m]), b, False, False), wide[:m])
