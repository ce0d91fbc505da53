"""A bidirectional recurrent layer's two directions at once (cython's _recurrent_pair, one
direction a thread) against one after the other: bit for bit, forward and backward, float32
and float64, RNN/LSTM/GRU, both code paths (lanes at small H, rows above), layers with
return_sequences and num_layers 2; the gradient check through the pair; bad input."""
import numpy as np
import pytest

import fastnn as fnn
from conftest import COMPILED
from fastnn.layers import GRU, LSTM, RNN, Dense
from seq_helpers import gradcheck

pytestmark = pytest.mark.skipif("cython" not in COMPILED, reason="the pair is the cython backend's")

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
CELLS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}


@pytest.fixture
def cy():
    """The compiled cython module with 2 threads and the pair on; settings restored after."""
    from fastnn._kernels import cython as pkg
    threads = pkg.get_num_threads()
    pkg.set_num_threads(2)
    old = pkg._mod._set_rnn_pair_concurrent(True)
    yield pkg._mod
    pkg._mod._set_rnn_pair_concurrent(old)
    pkg.set_num_threads(threads)


def _call(cell, n, t, f, hid, dtype, rng):
    g = GATES[cell] * hid
    return (rng.standard_normal((n, t, f)).astype(dtype),
            *(rng.uniform(-0.5, 0.5, s).astype(dtype) for s in ((g, f), (g, hid), (g,), (g,))))


def _tup(o):
    return o if isinstance(o, tuple) else (o,)


def _same(xs, ys):
    xs, ys = list(xs), list(ys)
    assert len(xs) == len(ys)
    for i, (x, y) in enumerate(zip(xs, ys)):
        if x is None or y is None:
            assert x is None and y is None, i
        else:
            assert x.dtype == y.dtype and np.array_equal(x, y), f"array {i} differs"


@pytest.mark.parametrize("min_work", [None, 0], ids=["own-policy", "threaded-alone"])
@pytest.mark.parametrize("hid", [3, 17], ids=["lanes", "rows"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_pair_kernel_equals_the_calls_in_turn(cy, cell, dtype, hid, min_work):
    """Both directions at once give exactly the two calls' results, also where a call alone
    would thread over tiles (min_work 0: the sequential reference then runs on 2 threads)."""
    rng = np.random.default_rng(hid)
    a, b = _call(cell, 37, 5, 2, hid, dtype, rng), _call(cell, 37, 5, 2, hid, dtype, rng)
    old = cy._set_rnn_parallel_min_work(min_work if min_work is not None else 1 << 25)
    try:
        fwd, bwd = getattr(cy, cell), getattr(cy, cell + "_backward")
        sa, sb = fwd(*a), fwd(*b)
        pa, pb = cy._recurrent_pair(cell, a, b)
        _same(_tup(sa) + _tup(sb), _tup(pa) + _tup(pb))
        for need_dx in (True, False):
            ba = (rng.standard_normal(sa[0].shape if isinstance(sa, tuple) else sa.shape).astype(dtype),
                  a[0], *_tup(sa), a[1], a[2], need_dx)
            bb = (rng.standard_normal(ba[0].shape).astype(dtype), b[0], *_tup(sb), b[1], b[2], need_dx)
            want = bwd(*ba) + bwd(*bb)
            _same(want, sum(cy._recurrent_pair(cell + "_backward", ba, bb), ()))
            cy._set_rnn_pair_concurrent(False)
            _same(want, sum(cy._recurrent_pair(cell + "_backward", ba, bb), ()))
            cy._set_rnn_pair_concurrent(True)
    finally:
        cy._set_rnn_parallel_min_work(old)


def _run(model, x, probe):
    out = model.forward(x)
    model.zero_grad()
    dx = model.backward(probe, return_input_grad=True)
    return [out, dx] + [p.grad.copy() for p in model.parameters()]


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("seqs", [False, True], ids=["last", "sequences"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_layer_pair_equals_sequential(cy, cell, dtype, seqs, layers):
    """A bidirectional layer (and a 2-layer stack) through the pair equals the layer with the
    pair off bit for bit: output, input gradient and every parameter gradient."""
    rng = np.random.default_rng(7)
    layer = CELLS[cell](3, 20, return_sequences=seqs, bidirectional=True, num_layers=layers)
    model = fnn.Sequential(layer, backend="cython", dtype=dtype, seed=0)
    x = rng.standard_normal((11, 6, 3)).astype(dtype)
    probe = rng.standard_normal((11,) + model.output_shape((6, 3))).astype(dtype)
    assert layer._pair(cell, x, *layer._weights(0, "")[:2]) is cy._recurrent_pair
    got = _run(model, x, probe)
    cy._set_rnn_pair_concurrent(False)
    want = _run(model, x, probe)
    _same(want, got)


def test_pair_used_only_where_the_kernels_are_cythons(cy):
    """auto takes the pair once it runs cython's kernels at the size (here by override);
    numba, the reference and auto's other choices keep the sequential calls."""
    x = np.zeros((4, 3, 2), np.float32)
    w_ih, w_hh = np.zeros((16, 2), np.float32), np.zeros((16, 4), np.float32)
    for backend, want in (("numpy", None), ("cython", cy._recurrent_pair)):
        layer = fnn.Sequential(LSTM(2, 4, bidirectional=True), backend=backend).layers[0]
        assert layer._pair("lstm", x, w_ih, w_hh) is want
    auto = fnn.get_backend("auto")
    layer = fnn.Sequential(LSTM(2, 4, bidirectional=True), backend="auto").layers[0]
    try:
        auto.choose("lstm", "cython")
        assert layer._pair("lstm", x, w_ih, w_hh) is cy._recurrent_pair
        if "numba" in COMPILED:
            auto.choose("lstm_backward", "numba")        # forward cython, backward numba: no pair
            assert layer._pair("lstm", x, w_ih, w_hh) is None
    finally:
        auto.choose("lstm_backward", None)
        auto.choose("lstm", None)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gradcheck_through_the_pair(cy, cell):
    """Central differences in float64 through the bidirectional layer on the pair path."""
    layer = CELLS[cell](3, 4, return_sequences=True, bidirectional=True, num_layers=2)
    gradcheck(fnn.get_backend("cython"), [layer, Dense(8, 2)], (2, 4, 3))
    x = np.zeros((2, 4, 3))
    assert layer._pair(cell, x, *layer._weights(0, "")[:2]) is cy._recurrent_pair


def test_pair_rejects_bad_input(cy):
    rng = np.random.default_rng(0)
    a = _call("lstm", 4, 3, 2, 5, "float32", rng)
    with pytest.raises(ValueError, match="unknown recurrent kernel"):
        cy._recurrent_pair("lstmx", a, a)
    with pytest.raises(TypeError, match="tuple"):
        cy._recurrent_pair("lstm", list(a), a)
    with pytest.raises(ValueError, match="one dtype"):
        cy._recurrent_pair("lstm", a, tuple(v.astype(np.float64) for v in a))
    bad = (a[0][:, :, :1],) + a[1:]
    with pytest.raises(ValueError, match="features"):
        cy._recurrent_pair("lstm", a, bad)
    with pytest.raises(ValueError, match="zero-length"):
        cy._recurrent_pair("lstm", a, (a[0][:, :0],) + a[1:])
    h, c, g = cy.lstm(*a)
    ok = (np.ones_like(h), a[0], h, c, g, a[1], a[2])
    with pytest.raises(ValueError, match="shape"):
        cy._recurrent_pair("lstm_backward", ok, (h[:, :2],) + ok[1:])
    with pytest.raises(TypeError, match="saved arrays"):
        cy._recurrent_pair("lstm_backward", ok, ok[:4])
