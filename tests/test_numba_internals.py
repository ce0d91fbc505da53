"""Internals of the Numba backend: GEMM blocking edges, thread splits, the
vectorizable exp, and the FASTNN_NUMBA_TUNE opt-out. Parity of the public
kernels with the reference lives in the backend-wide tests."""
import os
import subprocess
import sys

import numpy as np
import pytest

nb = pytest.importorskip("fastnn._kernels.numba_cpu")
from fastnn._kernels import tiles  # noqa: E402
from conftest import assert_close  # noqa: E402
from fastnn._kernels.numba_cpu import _math, gemm  # noqa: E402

DTYPES = [np.float32, np.float64]


def _close(got, want, dtype):
    rtol, atol = (1e-4, 1e-4) if dtype == np.float32 else (1e-10, 1e-10)
    assert_close(got, want, dtype, rtol=rtol, atol=atol * np.sqrt(want.size))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (7, 31, 33), (33, 95, 257), (257, 7, 31),
                                   (95, 385, 7), (9, 300, 65)])
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_gemm_edges_and_transposes(dtype, m, k, n, ta, tb):
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    want = (a.T if ta else a) @ (b.T if tb else b)
    got = nb.matmul(a, b, ta, tb)
    assert got.dtype == dtype and got.shape == (m, n)
    _close(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_small_blocks_cross_every_loop(dtype, monkeypatch):
    """Blocks smaller than the problem: several jc, pc and ic iterations."""
    monkeypatch.setitem(gemm.BLOCKS, np.dtype(dtype), (16, 24, 64))
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((70, 100)).astype(dtype), rng.standard_normal((100, 150)).astype(dtype)
    _close(nb.matmul(a, b), a @ b, dtype)
    _close(nb.matmul(a.T.copy(), b.T.copy(), True, True), a @ b, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(9, 50, 300), (300, 50, 9), (64, 64, 64)])
def test_gemm_thread_splits(dtype, shape, monkeypatch):
    """Both split directions of _gemm_parallel, forced on small products."""
    monkeypatch.setattr(gemm, "PARALLEL_MIN_WORK", 1)
    m, k, n = shape
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    old = nb.get_num_threads()
    try:
        for threads in range(1, old + 1):
            nb.set_num_threads(threads)
            _close(nb.matmul(a, b), a @ b, dtype)
    finally:
        nb.set_num_threads(old)


@pytest.mark.parametrize("dtype", DTYPES)
def test_thread_split_uses_the_dtypes_tile(dtype):
    """_gemm_into shares C among threads in units of the dtype's MR x NR tile
    (it once used 8 x 32 for every dtype: float64 products 2 tiles wide ran on
    one thread, and wider ones in half as many column strips as they have)."""
    t = tiles.tile("numba", dtype)
    big_k = gemm.PARALLEL_MIN_WORK
    assert gemm._split(t.mr, 3 * t.nr, big_k, dtype, 3) == (False, 3)
    assert gemm._split(t.mr, 2 * t.nr - 1, big_k, dtype, 3) == (True, 1)
    assert gemm._split(3 * t.mr, t.nr, big_k, dtype, 4) == (True, 3)
    assert gemm._split(64, 64, 64, dtype, 1) == (True, 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (8, 257, 48), (7, 33, 80), (33, 7, 257),
                                   (257, 33, 7), (9, 300, 47)])
def test_threaded_gemm_matches_numpy_on_odd_shapes(dtype, m, k, n, monkeypatch):
    """Every split of every odd shape, against numpy.matmul: |got - ref| <= atol + rtol*|ref|."""
    monkeypatch.setattr(gemm, "PARALLEL_MIN_WORK", 1)
    rng = np.random.default_rng(m + 7 * k + 11 * n)
    a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    ref = np.matmul(a.astype(np.float64), b.astype(np.float64))
    rtol, atol = (2e-5, 2e-5 * np.sqrt(k)) if dtype == np.float32 else (1e-12, 1e-12 * np.sqrt(k))
    old = nb.get_num_threads()
    try:
        for threads in sorted({1, min(2, old), old}):
            nb.set_num_threads(threads)
            for ta, tb in [(False, False), (True, True)]:
                got = nb.matmul(a.T.copy() if ta else a, b.T.copy() if tb else b, ta, tb)
                assert got.dtype == dtype
                err = np.abs(got - ref)
                assert np.all(err <= atol + rtol * np.abs(ref)), (threads, ta, tb, err.max())
    finally:
        nb.set_num_threads(old)


def test_linear_accumulates_onto_bias():
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((33, 70)), rng.standard_normal((20, 70))
    b = rng.standard_normal(20)
    _close(nb.linear(x, w, b), x @ w.T + b, np.float64)


def test_exp_accuracy_and_saturation():
    x = np.linspace(-700, 700, 10001)
    got = np.array([_math.exp(v) for v in x[::97]])
    np.testing.assert_allclose(got, np.exp(x[::97]), rtol=4e-16 * 8)
    x32 = np.linspace(-87, 88, 2001).astype(np.float32)
    got32 = np.array([_math.exp32(v) for v in x32], dtype=np.float32)
    np.testing.assert_allclose(got32, np.exp(x32), rtol=3e-7)
    assert np.isnan(_math.exp(np.nan)) and np.isnan(_math.exp32(np.float32("nan")))
    assert _math.exp(-1e4) < 1e-300 and np.isfinite(_math.exp(1e4))


def test_log1p_unit():
    e = np.linspace(0, 1, 1001)
    got = np.array([_math.log1p_unit(v) for v in e])
    np.testing.assert_allclose(got, np.log1p(e), rtol=1e-15, atol=1e-300)


def test_tuning_opt_out():
    code = ("import numba.core.config as c; from fastnn._kernels import numba_cpu as m; "
            "print(m.TUNING['applied'], c.SLP_VECTORIZE, c.CPU_FEATURES)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, FASTNN_NUMBA_TUNE="0",
               PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["False", "0", "None"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (7, 31, 33), (9, 300, 65), (17, 5, 40), (8, 32, 32),
                                   (33, 600, 17), (100, 128, 10)])
def test_unpacked_gemm_has_the_bits_of_the_packed_one(dtype, m, k, n):
    """_gemm_direct (small products: op(a) and op(b) read in place, ragged strips padded) sums
    in _gemm_block's order, so the two agree to the bit, for every transpose and with
    accumulation; K = 600 crosses a KC slice."""
    rng = np.random.default_rng(m * 7 + k * 3 + n)
    mc, kc, nc = gemm.BLOCKS[np.dtype(dtype)]
    for ta in (False, True):
        for tb in (False, True):
            for acc in (False, True):
                a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
                b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
                packed = rng.standard_normal((m, n)).astype(dtype)
                direct = packed.copy()
                gemm._gemm_block(a, b, packed, ta, tb, 0, m, 0, n, acc, mc, kc, nc)
                gemm._gemm_direct(a, b, direct, ta, tb, acc, kc)
                assert np.array_equal(direct, packed), (ta, tb, acc)
                if not acc:
                    _close(direct, (a.T if ta else a) @ (b.T if tb else b), dtype)


def test_small_products_of_strided_views_take_the_packed_path():
    """The unpacked path needs C-contiguous arrays; views (a column slice) still multiply right."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((20, 40)).astype(np.float32)[:, ::2]
    b = rng.standard_normal((20, 30)).astype(np.float32)
    assert not a.flags.c_contiguous
    _close(nb.matmul(a, b), a @ b, np.float32)
    _close(nb.matmul(b, a, trans_a=True), b.T @ a, np.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n", [(10, 37, 128), (2, 20, 40), (1, 5, 10), (13, 9, 50),
                                   (128, 10, 10), (6, 300, 23), (3, 17, 72)])
def test_edge_kernels_have_the_bits_of_the_full_tile(dtype, m, k, n):
    """The sliver, short, narrow and corner kernels and the in-place windows of a ragged strip
    give every element the bits the full MR x NR tile gives it: the same product padded with
    zeros to whole tiles (no edge at all), sliced, for every transpose, packed and unpacked."""
    t = tiles.tile("numba", dtype)
    mp, np_ = -(-m // t.mr) * t.mr, -(-n // t.nr) * t.nr
    mc, kc, nc = gemm.BLOCKS[np.dtype(dtype)]
    rng = np.random.default_rng(m * 31 + k * 7 + n)
    for ta in (False, True):
        for tb in (False, True):
            a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
            b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
            ap = np.zeros((k, mp) if ta else (mp, k), dtype)
            ap[(slice(None), slice(0, m)) if ta else (slice(0, m),)] = a
            bp = np.zeros((np_, k) if tb else (k, np_), dtype)
            bp[(slice(0, n),) if tb else (slice(None), slice(0, n))] = b
            for acc in (False, True):
                start = rng.standard_normal((m, n)).astype(dtype)
                whole = np.zeros((mp, np_), dtype)
                whole[:m, :n] = start
                gemm._gemm_block(ap, bp, whole, ta, tb, 0, mp, 0, np_, acc, mc, kc, nc)
                want = whole[:m, :n]
                packed, direct = start.copy(), start.copy()
                gemm._gemm_block(a, b, packed, ta, tb, 0, m, 0, n, acc, mc, kc, nc)
                gemm._gemm_direct(a, b, direct, ta, tb, acc, kc)
                assert np.array_equal(packed, want), ("packed", ta, tb, acc)
                assert np.array_equal(direct, want), ("direct", ta, tb, acc)


@pytest.mark.parametrize("dtype", DTYPES)
def test_small_products_are_line_aligned(dtype):
    """matmul's output starts on a 64-byte line (vector stores of a tile row then do not
    straddle two lines), for the one-call small path and the threaded one."""
    rng = np.random.default_rng(5)
    for m, k, n in [(10, 128, 128), (3, 3, 3), (256, 256, 256)]:
        a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
        for _ in range(4):
            c = nb.matmul(a, b)
            assert c.ctypes.data % 64 == 0 and c.flags.c_contiguous and c.shape == (m, n)
            _close(c, a @ b, dtype)
