"""The cython recurrent kernels' samples-in-lanes path (fnn_rec_lanes.h) and its samples-in-rows
path, forced both ways on every built ISA module (16/8/4 float lanes), against the NumPy reference:
ragged batches around the lane block (1, 15, 16, 17, 33), hidden sizes 1..8, 31, 33, one and
three features, the fused backward (weight gradients summed in the time loop) and the one that
writes da rows for GEMMs, float32 and float64, and bidirectional layers against the numpy backend."""
import contextlib

import numpy as np
import pytest

import fastnn as fnn
from conftest import assert_close
from fastnn import layers as L
from fastnn._kernels import reference as ref

cyk = pytest.importorskip("fastnn._kernels.cython")
MODULES = {isa: cyk.kernels_for(isa) for isa in cyk.built_isas()}
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
# (N, H, F): every ragged N around the block sizes, every H in 1..8 and 31, 33, F 1 and 3 (and >= 16)
CASES = [(1, 1, 1), (15, 2, 3), (16, 3, 1), (17, 4, 3), (33, 5, 1), (1, 6, 3), (15, 7, 1),
         (17, 8, 3), (16, 31, 1), (33, 33, 3), (17, 6, 1), (33, 2, 3),
         (5, 3, 20), (9, 17, 18)]   # wide inputs: dW_ih and dx from GEMMs on the row path
# (lanes max H, fused max bytes): lanes + fused, lanes + da rows, rows
PATHS = {"lanes-fused": (10 ** 6, 10 ** 9), "lanes-rows-gemm": (10 ** 6, 0), "rows": (-1, 0)}


@contextlib.contextmanager
def path(mod, name):
    max_h, fused = PATHS[name]
    old_h, old_b = mod._set_rnn_lanes_max_h(max_h, max_h), mod._set_rnn_fused_max_bytes(fused)
    try:
        yield
    finally:
        mod._set_rnn_lanes_max_h(*old_h)
        mod._set_rnn_fused_max_bytes(old_b)


def test_default_paths():
    """Lanes below one full vector of hidden units (float32 16, float64 8), rows from there."""
    mod = cyk._mod
    assert mod._set_rnn_lanes_max_h(15, 7) == (15, 7)
    assert mod._set_rnn_fused_max_bytes(73728) == 73728


def _inputs(cell, n, t, f, h, dtype, seed):
    rng = np.random.default_rng(seed)
    g = GATES[cell] * h
    x = rng.standard_normal((n, t, f)).astype(dtype)
    w = [(rng.standard_normal(s) * 0.6).astype(dtype) for s in ((g, f), (g, h), (g,), (g,))]
    return x, w, rng.standard_normal((n, t, h)).astype(dtype)


def _tuple(v):
    return v if isinstance(v, tuple) else (v,)


def test_lanes_widths():
    widths = {isa: (mod._rnn_lanes_width("float32"), mod._rnn_lanes_width("float64")) for isa, mod in MODULES.items()}
    want = {"avx512": (16, 8), "avx2": (8, 4), "generic": (4, 2)}
    for isa, w in widths.items():
        assert w == want[isa], (isa, w)


@pytest.mark.parametrize("name", sorted(PATHS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell", sorted(GATES))
def test_paths_match_reference(cell, dtype, name):
    t = 5
    for isa, mod in MODULES.items():
        for i, (n, h, f) in enumerate(CASES):
            x, w, dh = _inputs(cell, n, t, f, h, dtype, seed=i)
            want = _tuple(getattr(ref, cell)(x, *w))
            want_b = getattr(ref, cell + "_backward")(dh, x, *want, w[0], w[1])
            with path(mod, name):
                got = _tuple(getattr(mod, cell)(x, *w))
                got_b = getattr(mod, cell + "_backward")(dh, x, *want, w[0], w[1])
                no_dx = getattr(mod, cell + "_backward")(dh, x, *want, w[0], w[1], need_dx=False)
            where = f"{isa} {name} N={n} H={h} F={f}"
            for o, r in zip(got, want):
                assert o.dtype == np.dtype(dtype) and o.shape == r.shape, where
                assert_close(o, r, dtype, atol=2e-5 if dtype == "float32" else None), where
            for k, (o, r) in enumerate(zip(got_b, want_b)):
                assert o.dtype == np.dtype(dtype) and o.shape == r.shape, (where, k)
                tol = dict(rtol=1e-3, atol=1e-4 * np.sqrt(n * t)) if dtype == "float32" else dict(rtol=1e-9)
                assert_close(o, r, dtype, **tol), (where, k)
            assert no_dx[0] is None, where
            for o, r in zip(no_dx[1:], got_b[1:]):
                assert_close(o, r, dtype, rtol=1e-6 if dtype == "float32" else 1e-12), where


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_bidirectional_layer_matches_numpy_backend(cell):
    """A bidirectional layer (the reverse direction's flipped sequence through the same kernels)
    on the lanes path: outputs and every gradient as the numpy backend's, float64."""
    mod = cyk._mod
    rng = np.random.default_rng(3)
    x = rng.standard_normal((17, 6, 3))
    grads, outs = {}, {}
    for backend in ("numpy", "cython"):
        model = fnn.Sequential(getattr(L, cell)(3, 5, return_sequences=True, bidirectional=True),
                               backend=backend, dtype="float64", seed=0)
        with path(mod, "lanes-fused"):
            out = model.forward(x)
            dy = np.random.default_rng(4).standard_normal(out.shape)
            model.zero_grad()
            model.backward(dy)
        outs[backend] = (out,)
        grads[backend] = {p.name: p.grad.copy() for p in model.parameters()}
    for a, b in zip(outs["cython"], outs["numpy"]):
        assert_close(a, b, "float64", rtol=1e-9, atol=1e-11)
    assert grads["cython"].keys() == grads["numpy"].keys()
    for k in grads["numpy"]:
        assert_close(grads["cython"][k], grads["numpy"][k], "float64", rtol=1e-9, atol=1e-11), k


@pytest.mark.parametrize("isa", sorted(MODULES))
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_rows_weight_gradients_per_tile_or_in_one_gemm(isa, cell):
    """The rows backward's dW_hh (and the GRU's db_hh) summed per tile and added in tile order,
    or from one GEMM over every row: both the reference's gradients, on 1 and 2 threads."""
    mod = MODULES[isa]
    x, w, dh = _inputs(cell, 21, 7, 3, 17, "float64", seed=8)
    fwd, bwd = getattr(mod, cell), getattr(mod, cell + "_backward")
    saved = _tuple(getattr(ref, cell)(x, *w))
    want = getattr(ref, cell + "_backward")(dh, x, *saved, w[0], w[1])
    old_threads = cyk.get_num_threads()
    try:
        for threads in (1, 2):
            cyk.set_num_threads(threads)
            for tile_max in (0, 10 ** 9):
                old_max, old_work = mod._set_rnn_tile_dw_max(tile_max), mod._set_rnn_parallel_min_work(0)
                try:
                    with path(mod, "rows"):
                        saved = _tuple(fwd(x, *w))
                        got = bwd(dh, x, *saved, w[0], w[1])
                finally:
                    mod._set_rnn_tile_dw_max(old_max)
                    mod._set_rnn_parallel_min_work(old_work)
                for name, a, b in zip(("dx", "dw_ih", "dw_hh", "db_ih", "db_hh"), got, want):
                    assert_close(a, b, "float64", rtol=1e-9, atol=1e-11), (name, threads, tile_max)
    finally:
        cyk.set_num_threads(old_threads)


@pytest.mark.parametrize("cell,h,route", [("lstm", 6, "lanes-fused"), ("lstm", 20, "rows"),
                                          ("gru", 20, "rows"), ("rnn", 33, "rows")])
def test_threads_give_the_same_result(cell, h, route):
    """Blocks (lanes) or tiles (rows: their dx, dW_ih and bias sums) on two threads, the
    parallel threshold forced down, add their weight gradients in block order:
    bit-identical to one thread."""
    mod = cyk._mod
    x, w, dh = _inputs(cell, 70, 9, 2, h, "float32", seed=5)
    fwd, bwd = getattr(mod, cell), getattr(mod, cell + "_backward")
    with path(mod, route):
        saved = _tuple(fwd(x, *w))
    old_threads = cyk.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            cyk.set_num_threads(threads)
            old = mod._set_rnn_parallel_min_work(0)
            try:
                with path(mod, route):
                    results.append((_tuple(fwd(x, *w)), bwd(dh, x, *saved, w[0], w[1])))
            finally:
                mod._set_rnn_parallel_min_work(old)
    finally:
        cyk.set_num_threads(old_threads)
    for a, b in zip(results[0][0] + results[0][1], results[1][0] + results[1][1]):
        np.testing.assert_array_equal(a, b)


def test_saturated_gates_stay_finite():
    """Pre-activations far beyond exp's range: sigmoid and tanh saturate, nothing overflows."""
    mod = cyk._mod
    for dtype in ("float32", "float64"):
        x, w, dh = _inputs("lstm", 17, 4, 1, 3, dtype, seed=6)
        w = [a * 400 for a in w]
        with path(mod, "lanes-fused"):
            out = mod.lstm(x, *w)
            grads = mod.lstm_backward(dh, x, *out, w[0], w[1])
        want = ref.lstm(x, *w)
        for o, r in zip(out, want):
            assert np.isfinite(o).all()
            assert_close(o, r, dtype, atol=1e-5)
        assert all(np.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell", sorted(GATES))
def test_nan_propagates(cell, dtype):
    """A NaN input makes NaN states and gradients on every path (the lanes' clamps keep NaN):
    a diverging run never comes out finite."""
    for isa, mod in MODULES.items():
        for name in PATHS:
            x, w, dh = _inputs(cell, 17, 4, 2, 3, dtype, seed=7)
            x[3, 1, 0] = np.nan
            with path(mod, name):
                out = _tuple(getattr(mod, cell)(x, *w))
                assert np.isnan(out[0][3, 1:]).all() and np.isfinite(out[0][:3]).all(), (isa, name)
                clean = _tuple(getattr(mod, cell)(np.nan_to_num(x), *w))
                dh[5, 2, 1] = np.nan
                grads = getattr(mod, cell + "_backward")(dh, np.nan_to_num(x), *clean, w[0], w[1])
            assert all(np.isnan(g).any() for g in grads[1:]), (isa, name)
            assert np.isnan(grads[0][5, :3]).any() and np.isfinite(grads[0][:5]).all(), (isa, name)
