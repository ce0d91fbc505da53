"""The cuda backend's conv, pooling and recurrent kernels against the reference, the
DeviceArray operations the recurrent layers use, and a Conv1D CNN and LSTM / GRU
models trained on the device step for step like the numpy backend, with no copy
to the host inside forward and backward.

Runs under Numba's CUDA simulator where there is no GPU, switched on the way
test_cuda.py does it (imported from there), so shapes stay tiny.
"""
import numpy as np
import pytest

import fastnn as fnn
from fastnn._kernels import reference as ref
from fastnn.layers import LSTM, GRU, AvgPool1D, Conv1D, Conv2D, Dense, Flatten, MaxPool1D, MaxPool2D, ReLU
from conftest import assert_close
from test_cuda import BE, DTYPES, K, close, dev, rand


def _host(a):
    return None if a is None else dev.to_host(a)


def _same(got, want, dtype):
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want)
    for g, e in zip(got, want):
        if e is None:
            assert g is None
        elif e.dtype == np.int64:
            assert isinstance(g, np.ndarray) and g.dtype == np.int64
            np.testing.assert_array_equal(g, e)
        else:
            close(g, e, dtype)


def test_conv_and_recurrent_are_native():
    for name in ref.CONV + ref.RECURRENT:
        assert name in BE.overridden and name + "_backward" in BE.overridden


# --------------------------------------------------------------- convolution


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d(dtype):
    rng = np.random.default_rng(20)
    x, w, b = rand(rng, (2, 2, 4, 5), dtype), rand(rng, (3, 2, 3, 2), dtype), rand(rng, 3, dtype)
    for stride, padding in [((1, 1), (0, 0)), ((2, 1), (1, 2))]:
        y = ref.conv2d(x, w, b, stride, padding)
        _same(K.conv2d(x, w, b, stride, padding), y, dtype)
        dy = rand(rng, y.shape, dtype)
        _same(K.conv2d_backward(dy, x, w, stride, padding, True),
              ref.conv2d_backward(dy, x, w, stride, padding, True), dtype)
    _same(K.conv2d(x, w, None, stride, padding), ref.conv2d(x, w, None, stride, padding), dtype)
    _same(K.conv2d_backward(dy, x, w, stride, padding, False),
          ref.conv2d_backward(dy, x, w, stride, padding, False), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv1d(dtype):
    rng = np.random.default_rng(21)
    x, w, b = rand(rng, (2, 3, 7), dtype), rand(rng, (4, 3, 3), dtype), rand(rng, 4, dtype)
    for stride, padding in [(1, 0), (2, 1)]:
        y = ref.conv1d(x, w, b, stride, padding)
        _same(K.conv1d(x, w, b, stride, padding), y, dtype)
        dy = rand(rng, y.shape, dtype)
        _same(K.conv1d_backward(dy, x, w, stride, padding, True),
              ref.conv1d_backward(dy, x, w, stride, padding, True), dtype)
    _same(K.conv1d_backward(dy, x, w, stride, padding, False),
          ref.conv1d_backward(dy, x, w, stride, padding, False), dtype)


# ------------------------------------------------------------------- pooling


@pytest.mark.parametrize("dtype", DTYPES)
def test_pool2d(dtype):
    rng = np.random.default_rng(22)
    x = rand(rng, (2, 2, 5, 6), dtype)
    x[0, 0, 0, :2] = 1.0                              # a tie: the first maximum wins
    for kernel_size, stride in [((2, 2), (2, 2)), ((3, 2), (1, 2))]:   # the second overlaps
        y, idx = ref.maxpool2d(x, kernel_size, stride)
        _same(K.maxpool2d(x, kernel_size, stride), (y, idx), dtype)
        dy = rand(rng, y.shape, dtype)
        _same(K.maxpool2d_backward(dy, x, idx, kernel_size, stride),
              ref.maxpool2d_backward(dy, x, idx, kernel_size, stride), dtype)
        _same(K.avgpool2d(x, kernel_size, stride), ref.avgpool2d(x, kernel_size, stride), dtype)
        _same(K.avgpool2d_backward(dy, x, kernel_size, stride),
              ref.avgpool2d_backward(dy, x, kernel_size, stride), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pool1d(dtype):
    rng = np.random.default_rng(23)
    x = rand(rng, (2, 2, 7), dtype)
    x[1, 1, 2:4] = -0.5
    for kernel_size, stride in [(2, 2), (3, 1)]:
        y, idx = ref.maxpool1d(x, kernel_size, stride)
        _same(K.maxpool1d(x, kernel_size, stride), (y, idx), dtype)
        dy = rand(rng, y.shape, dtype)
        _same(K.maxpool1d_backward(dy, x, idx, kernel_size, stride),
              ref.maxpool1d_backward(dy, x, idx, kernel_size, stride), dtype)
        _same(K.avgpool1d(x, kernel_size, stride), ref.avgpool1d(x, kernel_size, stride), dtype)
        _same(K.avgpool1d_backward(dy, x, kernel_size, stride),
              ref.avgpool1d_backward(dy, x, kernel_size, stride), dtype)


def test_maxpool_nan_is_the_maximum_like_argmax():
    x = np.array([[[1.0, np.nan, 3.0, np.nan, 2.0, 0.0]]])
    y, idx = ref.maxpool1d(x, 3, 3)
    got_y, got_idx = K.maxpool1d(x, 3, 3)
    np.testing.assert_array_equal(got_idx, idx)
    np.testing.assert_array_equal(got_y, y)


# ----------------------------------------------------------------- recurrent

RECURRENT = [("rnn", 1), ("lstm", 4), ("gru", 3)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,gates", RECURRENT)
def test_recurrent(dtype, kind, gates):
    rng = np.random.default_rng(24)
    n, t, f, h = 2, 3, 4, 3
    x = rand(rng, (n, t, f), dtype)
    w_ih, w_hh = rand(rng, (gates * h, f), dtype, 0.5), rand(rng, (gates * h, h), dtype, 0.5)
    b_ih, b_hh = rand(rng, gates * h, dtype), rand(rng, gates * h, dtype)
    out = getattr(ref, kind)(x, w_ih, w_hh, b_ih, b_hh)
    _same(getattr(K, kind)(x, w_ih, w_hh, b_ih, b_hh), out, dtype)
    saved = out if isinstance(out, tuple) else (out,)
    dh = rand(rng, (n, t, h), dtype)
    for need_dx in (True, False):
        _same(getattr(K, kind + "_backward")(dh, x, *saved, w_ih, w_hh, need_dx),
              getattr(ref, kind + "_backward")(dh, x, *saved, w_ih, w_hh, need_dx), dtype)


def test_kernels_keep_device_arrays_on_the_device():
    rng = np.random.default_rng(25)
    x, w = rand(rng, (2, 2, 3, 4), np.float32), rand(rng, (3, 2, 2, 2), np.float32)
    y = K.conv2d(dev.to_device(x), dev.to_device(w), None, (1, 1), (0, 0))
    assert isinstance(y, dev.DeviceArray)
    y2, idx = K.maxpool2d(y, (2, 1), (1, 1))
    assert isinstance(y2, dev.DeviceArray) and isinstance(idx, dev.DeviceArray) and idx.dtype == np.int64
    seq = dev.to_device(rand(rng, (2, 3, 2), np.float32))
    ws = [dev.to_device(rand(rng, s, np.float32)) for s in ((8, 2), (8, 2), (8,), (8,))]
    h, c, gates = K.lstm(seq, *ws)
    assert all(isinstance(a, dev.DeviceArray) for a in (h, c, gates))
    grads = K.lstm_backward(h, seq, h, c, gates, ws[0], ws[1], False)
    assert grads[0] is None and all(isinstance(g, dev.DeviceArray) for g in grads[1:])
    # a strided view given to a kernel is copied to a contiguous one first
    host_seq = dev.to_host(seq)
    rw = [rand(rng, s, np.float32) for s in ((2, 2), (2, 2), (2,), (2,))]
    close(dev.to_host(K.rnn(seq[:, ::-1], *map(dev.to_device, rw))),
          ref.rnn(np.ascontiguousarray(host_seq[:, ::-1]), *rw), np.float32)


# ------------------------------------------------------- device array support


def test_device_array_ops_the_recurrent_layers_use():
    a = np.arange(2 * 3 * 4, dtype=np.float64).reshape(2, 3, 4)
    d = dev.to_device(a)
    for key in [(slice(None), slice(None, None, -1)), (slice(None), -1), (Ellipsis, slice(1, 3)),
                (slice(None), slice(2, 0, -1), slice(None, None, -2))]:
        view = d[key]
        assert isinstance(view, dev.DeviceArray)
        np.testing.assert_array_equal(np.asarray(view), a[key])
        assert view.contiguous().is_c_contiguous()
        np.testing.assert_array_equal(dev.to_host(view.contiguous()), a[key])
    cat = np.concatenate([d[:, -1], d[:, 0]], axis=-1)
    assert isinstance(cat, dev.DeviceArray)
    np.testing.assert_array_equal(np.asarray(cat), np.concatenate([a[:, -1], a[:, 0]], axis=-1))
    z = np.zeros_like(d)
    assert isinstance(z, dev.DeviceArray) and z.shape == a.shape
    z[:, -1] = d[:, 0]
    want = np.zeros_like(a)
    want[:, -1] = a[:, 0]
    np.testing.assert_array_equal(np.asarray(z), want)
    total = d + d[:, ::-1]
    assert isinstance(total, dev.DeviceArray)
    np.testing.assert_array_equal(np.asarray(total), a + a[:, ::-1])
    assert np.allclose(d, a)                         # other NumPy functions: on host copies
    with pytest.raises(IndexError):
        d[:, ::-1] = d


# -------------------------------------------------------------------- models


class _HostCopies:
    """Counts copies to the host (DeviceArray.copy_to_host) while active."""

    def __init__(self, monkeypatch):
        self.count = 0
        original = dev.DeviceArray.copy_to_host

        def counted(arr):
            self.count += 1
            return original(arr)
        monkeypatch.setattr(dev.DeviceArray, "copy_to_host", counted)


def _train_like_numpy(make, X, y, monkeypatch, steps=2, batch=4):
    gpu, cpu = make(BE), make("numpy")
    opt_gpu, opt_cpu = fnn.optim.Adam(lr=0.01), fnn.optim.Adam(lr=0.01)
    copies = _HostCopies(monkeypatch)
    for step in range(steps):
        xb, yb = X[batch * step:batch * (step + 1)], y[batch * step:batch * (step + 1)]
        losses = []
        for model, opt, kernels in ((gpu, opt_gpu, K), (cpu, opt_cpu, ref)):
            on_gpu = model is gpu
            xin = model.backend.to_device(xb) if on_gpu else xb
            copies.count = 0
            out = model._forward(xin) if on_gpu else model.forward(xb)
            assert copies.count == 0, "a host copy inside forward"
            loss, grad = kernels.cross_entropy(out, dev.to_device(yb) if on_gpu else yb)
            model.zero_grad()
            before = copies.count
            model.backward(grad)
            opt.step(model.parameters())
            if on_gpu:
                assert isinstance(out, dev.DeviceArray)
                assert copies.count == before, "a host copy inside backward or the optimizer step"
            losses.append(loss)
        assert abs(losses[0] - losses[1]) < 1e-12
        for name, want in cpu.state_dict().items():
            assert_close(gpu.state_dict()[name], want, np.float64)
    return gpu, cpu


def test_conv1d_model_trains_like_numpy(monkeypatch):
    rng = np.random.default_rng(26)
    X, y = rng.standard_normal((8, 2, 8)), rng.integers(0, 3, 8)

    def make(backend):
        return fnn.Sequential(Conv1D(2, 3, 3, padding=1), ReLU(), MaxPool1D(2),
                              AvgPool1D(2, stride=1), Flatten(), Dense(9, 3),
                              backend=backend, dtype="float64", seed=4)
    _train_like_numpy(make, X, y, monkeypatch)


def test_conv2d_model_forward_like_numpy():
    rng = np.random.default_rng(27)
    X = rng.standard_normal((2, 1, 5, 5))
    models = [fnn.Sequential(Conv2D(1, 2, 2, padding=1), ReLU(), MaxPool2D(2), Flatten(), Dense(18, 2),
                             backend=b, dtype="float64", seed=5) for b in (BE, "numpy")]
    assert_close(models[0].predict(X), models[1].predict(X), np.float64)


def test_bidirectional_lstm_model_trains_like_numpy(monkeypatch):
    rng = np.random.default_rng(28)
    X, y = rng.standard_normal((6, 2, 2)), rng.integers(0, 3, 6)

    def make(backend):
        return fnn.Sequential(LSTM(2, 3, bidirectional=True), Dense(6, 3),
                              backend=backend, dtype="float64", seed=6)
    _train_like_numpy(make, X, y, monkeypatch, batch=3)


def test_gru_sequence_model_trains_like_numpy(monkeypatch):
    rng = np.random.default_rng(29)
    X, y = rng.standard_normal((4, 2, 2)), rng.integers(0, 2, 4)

    def make(backend):
        return fnn.Sequential(GRU(2, 2, return_sequences=True, bidirectional=True), Flatten(),
                              Dense(8, 2), backend=backend, dtype="float64", seed=7)
    _train_like_numpy(make, X, y, monkeypatch, steps=1)
