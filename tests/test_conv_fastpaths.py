"""The Cython conv/pool fast paths (issue 13, small CNNs) against the NumPy reference:
the 16-lane 2x2 max pool (fnn_pool.h: every Wo it takes, plane tails, odd sizes that fall
back, ties, NaNs, infinities) and the tiled transposes of the batch-inner convolution
layout (fnn_transpose.h: batch sizes and plane sizes around the 8x8 tile), float32 and
float64, need_dx False/True, one and two threads."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn._kernels import reference as ref
from conftest import COMPILED, assert_close

pytestmark = pytest.mark.skipif("cython" not in COMPILED, reason="Cython backend not built")

DTYPES = [np.float32, np.float64]


@pytest.fixture
def cy():
    from fastnn._kernels.cython import _mod
    return _mod


@pytest.fixture
def backend():
    return fnn.get_backend("cython")


# ---------------------------------------------------------------- max pool 2x2, stride 2

POOL_SHAPES = [
    (100, 16, 8, 8),    # bncnn: Wo 4, one 16-output block a plane
    (3, 2, 2, 32),      # Wo 16, one row pair a block
    (2, 3, 4, 16),      # Wo 8
    (2, 3, 16, 4),      # Wo 2
    (2, 3, 32, 2),      # Wo 1
    (2, 3, 9, 8),       # odd H: the last row is not read
    (2, 3, 10, 8),      # Ho*Wo = 20: one block and a 4-output scalar tail a plane
    (2, 3, 8, 9),       # odd W: the fallback loop
    (2, 3, 4, 4),       # Ho*Wo = 4 < 16: the fallback loop
    (2, 2, 12, 12),     # Wo 6: the fallback loop
]


def _pool_input(shape, dtype, kind, rng):
    if kind == "random":
        return rng.standard_normal(shape).astype(dtype)
    x = rng.integers(0, 3, size=shape).astype(dtype)      # many ties
    if kind == "nan":
        x[rng.random(shape) < 0.15] = np.nan             # windows with one, two, ... NaNs
    elif kind == "inf":
        x[rng.random(shape) < 0.2] = np.inf
        x[rng.random(shape) < 0.2] = -np.inf
    return x


def _same(got, want):
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.nan_to_num(got), np.nan_to_num(want))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["random", "ties", "nan", "inf"])
@pytest.mark.parametrize("shape", POOL_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_maxpool2x2_matches_reference(cy, shape, kind, dtype):
    rng = np.random.default_rng(sum(shape) + len(kind))
    x = _pool_input(shape, dtype, kind, rng)
    y, idx = cy.maxpool2d(x, (2, 2), (2, 2))
    want_y, want_idx = ref.maxpool2d(x, (2, 2), (2, 2))
    assert y.dtype == dtype and idx.dtype == np.int64
    np.testing.assert_array_equal(idx, want_idx)
    _same(y, want_y)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = cy.maxpool2d_backward(dy, x, idx, (2, 2), (2, 2))
    assert_close(dx, ref.maxpool2d_backward(dy, x, want_idx, (2, 2), (2, 2)), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_maxpool2x2_vector_path_equals_loop(cy, dtype):
    """The 16-lane kernel and the scalar loop it replaces give identical values and positions."""
    rng = np.random.default_rng(7)
    x = _pool_input((5, 16, 8, 8), dtype, "nan", rng)
    x[0, 0, :2, :2] = np.nan                        # a window all NaN: the first one wins
    x[0, 1, :2, :2] = [[1, np.nan], [np.nan, 2]]
    try:
        cy._set_maxpool_vec(False)
        y0, i0 = cy.maxpool2d(x, (2, 2), (2, 2))
    finally:
        cy._set_maxpool_vec(True)
    y1, i1 = cy.maxpool2d(x, (2, 2), (2, 2))
    np.testing.assert_array_equal(i1, i0)
    _same(y1, y0)
    assert i1[0, 0, 0, 0] == 0 and i1[0, 1, 0, 0] == 1


def test_maxpool2x2_public_kernel(backend):
    """Through the backend's checked kernel (what MaxPool2D calls), with a NaN in the batch."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    x[1, 2, 5, 6] = np.nan
    y, idx = backend.maxpool2d(x, (2, 2), (2, 2))
    want_y, want_idx = ref.maxpool2d(x, (2, 2), (2, 2))
    np.testing.assert_array_equal(idx, want_idx)
    _same(y, want_y)
    assert np.isnan(y[1, 2, 2, 3])


def test_maxpool_rejects_bad_input(backend):
    with pytest.raises((TypeError, ValueError)):
        backend.maxpool2d(np.zeros((2, 3, 8), np.float32), (2, 2), (2, 2))     # not 4-D
    with pytest.raises((TypeError, ValueError)):
        backend.maxpool2d(np.zeros((2, 3, 1, 8), np.float32), (2, 2), (2, 2))  # window > H
    with pytest.raises((TypeError, ValueError)):
        backend.maxpool2d(np.zeros((2, 3, 8, 8), np.float32), (2, 2), (0, 2))  # stride 0
    y, idx = backend.maxpool2d(np.zeros((2, 3, 8, 8), np.float32), (2, 2), (2, 2))
    with pytest.raises((TypeError, ValueError)):
        backend.maxpool2d_backward(np.zeros((2, 3, 3, 4), np.float32), np.zeros((2, 3, 8, 8), np.float32),
                                   idx, (2, 2), (2, 2))                          # dy's shape


# ---------------------------------------------------------------- convolutions (batch-inner)

CONV2D = [   # (n, c_in, h, w, c_out, k, pad): bncnn's layers, then sizes around the 8x8 tile
    (100, 1, 8, 8, 16, 3, 1),
    (100, 16, 4, 4, 32, 3, 1),
    (9, 3, 5, 5, 7, 3, 1),
    (13, 2, 3, 7, 5, 3, 0),
    (17, 4, 6, 6, 9, 2, 1),
]
CONV1D = [   # (n, c_in, length, c_out, k, stride): the cnn rows, then odd sizes
    (100, 1, 40, 25, 5, 2),
    (100, 25, 18, 25, 3, 2),
    (100, 25, 8, 25, 3, 2),
    (11, 3, 13, 6, 3, 1),
    (23, 5, 9, 3, 4, 3),
]


def _conv_tol(dtype, depth):
    return (1e-3, 1e-4 * np.sqrt(depth)) if dtype == np.float32 else (1e-9, 1e-11 * depth)


@pytest.fixture(params=[(1, False), (1, True), (2, True)], ids=["1thread", "1thread-pieces", "2threads"])
def threads(request, cy):
    """One or two threads; with pieces, every batch-inner convolution runs in pieces of samples
    (threshold 0) and the GEMMs' threading threshold is 0 too."""
    from fastnn._kernels import cython as pkg
    n, pieces = request.param
    before = pkg.get_num_threads()
    pkg.set_num_threads(n)
    if pieces:
        cy._set_conv_par_min_work(0)
        cy._set_conv_bi_par(0, 1, 4)
    yield n
    cy._set_conv_par_min_work(1 << 24)
    cy._set_conv_bi_par(1 << 17, 1, 16)
    pkg.set_num_threads(before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV2D, ids=lambda c: "-".join(map(str, c)))
def test_conv2d_batch_inner_matches_reference(cy, threads, case, dtype):
    n, c, h, w, co, k, pad = case
    rng = np.random.default_rng(n * 31 + c)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((co, c, k, k)).astype(dtype)
    b = rng.standard_normal(co).astype(dtype)
    rtol, atol = _conv_tol(dtype, c * k * k)
    y = cy.conv2d(x, wt, b, (1, 1), (pad, pad))
    up = [a.astype(np.float64) for a in (x, wt, b)]
    assert y.dtype == dtype
    assert_close(y, ref.conv2d(*up, (1, 1), (pad, pad)), dtype, rtol, atol)
    dy = rng.standard_normal(y.shape).astype(dtype)
    rtol, atol = _conv_tol(dtype, max(co * k * k, n * y.shape[2] * y.shape[3]))
    want = ref.conv2d_backward(dy.astype(np.float64), up[0], up[1], (1, 1), (pad, pad), need_dx=True)
    for need_dx in (False, True):
        dx, dw, db = cy.conv2d_backward(dy, x, wt, (1, 1), (pad, pad), need_dx=need_dx)
        assert (dx is None) == (not need_dx)
        if need_dx:
            assert_close(dx, want[0], dtype, rtol, atol)
        assert_close(dw, want[1], dtype, rtol, atol)
        assert_close(db, want[2], dtype, rtol, atol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV1D, ids=lambda c: "-".join(map(str, c)))
def test_conv1d_batch_inner_matches_reference(cy, threads, case, dtype):
    n, c, length, co, k, s = case
    rng = np.random.default_rng(n * 17 + length)
    x = rng.standard_normal((n, c, length)).astype(dtype)
    wt = rng.standard_normal((co, c, k)).astype(dtype)
    b = rng.standard_normal(co).astype(dtype)
    rtol, atol = _conv_tol(dtype, c * k)
    y = cy.conv1d(x, wt, b, s, 0)
    up = [a.astype(np.float64) for a in (x, wt, b)]
    assert_close(y, ref.conv1d(*up, s, 0), dtype, rtol, atol)
    dy = rng.standard_normal(y.shape).astype(dtype)
    rtol, atol = _conv_tol(dtype, max(co * k, n * y.shape[2]))
    want = ref.conv1d_backward(dy.astype(np.float64), up[0], up[1], s, 0, need_dx=True)
    for need_dx in (False, True):
        dx, dw, db = cy.conv1d_backward(dy, x, wt, s, 0, need_dx=need_dx)
        if need_dx:
            assert_close(dx, want[0], dtype, rtol, atol)
        else:
            assert dx is None
        assert_close(dw, want[1], dtype, rtol, atol)
        assert_close(db, want[2], dtype, rtol, atol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_inner_equals_flat_layout(cy, dtype):
    """The batch-inner layout (tiled transposes) and the flat layout agree to rounding."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((37, 6, 5, 5)).astype(dtype)
    wt = rng.standard_normal((11, 6, 3, 3)).astype(dtype)
    dy = rng.standard_normal((37, 11, 5, 5)).astype(dtype)
    got = [cy.conv2d(x, wt, None, (1, 1), (1, 1)), *cy.conv2d_backward(dy, x, wt, (1, 1), (1, 1))]
    try:
        cy._set_conv_bi_min_n(10 ** 9)
        flat = [cy.conv2d(x, wt, None, (1, 1), (1, 1)), *cy.conv2d_backward(dy, x, wt, (1, 1), (1, 1))]
    finally:
        cy._set_conv_bi_min_n(8)
    for g, f in zip(got, flat):
        assert_close(g, f, dtype, *_conv_tol(dtype, 6 * 9 * 37 * 25))


BIT_CASES = [(100, 16, 4, 4, 32), (100, 1, 8, 8, 16), (37, 6, 5, 5, 11), (16, 3, 3, 7, 5)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", BIT_CASES, ids=lambda c: "-".join(map(str, c)))
def test_batch_inner_pieces_give_the_same_bits_on_any_team(cy, dtype, case):
    """The batch-inner convolution's pieces of samples: one thread and two give the same bits
    (the backward's dw and db are summed over pieces fixed by the sizes, in piece order), and
    in two pieces (the threshold at 0) they match the reference."""
    from fastnn._kernels import cython as pkg
    n, c, h, w, co = case
    rng = np.random.default_rng(n + c)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((co, c, 3, 3)).astype(dtype)
    b = rng.standard_normal(co).astype(dtype)
    dy = rng.standard_normal((n, co, h, w)).astype(dtype)
    before = pkg.get_num_threads()
    runs = []
    try:
        cy._set_conv_bi_par(0, 1, 4)
        for t in (1, 2, 1, 2):
            pkg.set_num_threads(t)
            runs.append([cy.conv2d(x, wt, b, (1, 1), (1, 1)), *cy.conv2d_backward(dy, x, wt, (1, 1), (1, 1))])
    finally:
        cy._set_conv_bi_par(1 << 17, 1, 16)
        pkg.set_num_threads(before)
    for other in runs[1:]:
        for a, o in zip(runs[0], other):
            np.testing.assert_array_equal(a, o)
    up = [a.astype(np.float64) for a in (x, wt, b, dy)]
    want = [ref.conv2d(*up[:3], (1, 1), (1, 1)), *ref.conv2d_backward(up[3], up[0], up[1], (1, 1), (1, 1))]
    tol = _conv_tol(dtype, n * h * w * c * 9)
    for g, r in zip(runs[0], want):
        assert_close(g, r, dtype, *tol)


def test_batch_inner_pieces_from_two_python_threads_at_once(cy):
    """Two Python threads running the team-split convolution at once (each its own OpenMP team)
    get what one call alone returns, bit for bit."""
    import threading
    rng = np.random.default_rng(3)
    x = rng.standard_normal((100, 16, 4, 4)).astype(np.float32)
    wt = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    dy = rng.standard_normal((100, 32, 4, 4)).astype(np.float32)

    def run():
        return [cy.conv2d(x, wt, b, (1, 1), (1, 1)), *cy.conv2d_backward(dy, x, wt, (1, 1), (1, 1))]

    want, bad = run(), []

    def worker():
        for _ in range(30):
            got = run()
            if not all(np.array_equal(g, w) for g, w in zip(got, want)):
                bad.append(got)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad


def test_a_big_batch_inner_backward_in_sixteen_pieces(cy):
    """At 75M multiply-adds the backward runs in 16 pieces of 16 samples (the default limits):
    one thread and two give the same bits, and both match the reference."""
    from fastnn._kernels import cython as pkg
    rng = np.random.default_rng(11)
    x = rng.standard_normal((256, 16, 8, 8)).astype(np.float32)
    wt = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((256, 32, 8, 8)).astype(np.float32)
    before, runs = pkg.get_num_threads(), []
    try:
        for t in (1, 2):
            pkg.set_num_threads(t)
            runs.append(cy.conv2d_backward(dy, x, wt, (1, 1), (1, 1)))
    finally:
        pkg.set_num_threads(before)
    for a, o in zip(*runs):
        np.testing.assert_array_equal(a, o)
    want = ref.conv2d_backward(dy.astype(np.float64), x.astype(np.float64), wt.astype(np.float64),
                               (1, 1), (1, 1))
    for g, r in zip(runs[0], want):
        assert_close(g, r, np.float32, *_conv_tol(np.float32, 256 * 64 * 16 * 9))
