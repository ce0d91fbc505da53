"""Synchronized BatchNorm on the cuda backend (device arrays: the statistics go through the
host, the normalisation and dx stay in the backend's kernels): two threaded "ranks" against
one model on the whole batch, float64 to 1e-9 and float32. Runs under Numba's CUDA
simulator where there is no GPU (switched on as test_cuda.py does it), at tiny sizes."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn.layers import BatchNorm1D, BatchNorm2D
from test_cuda import BE, dev
from test_sync_batchnorm import _buffers, _check_sync, _no_backend_lock, _randomized  # noqa: F401


def _bn2d(dtype):
    def make(backend):
        return fnn.Sequential(BatchNorm2D(2, momentum=0.2), backend=backend, dtype=dtype, seed=0)
    return make


def test_cuda_sync_batchnorm2d_float64():
    rng = np.random.default_rng(21)
    x = rng.standard_normal((3, 2, 2, 2)) * 2 + 1
    dys = [rng.standard_normal(x.shape)]
    whole, ranks, _ = _check_sync(_randomized(_bn2d("float64"), 22), x, dys, (1, 2), BE, steps=1)
    assert dev.is_device(ranks[0].layers[0].buffers["running_mean"])


def test_cuda_sync_batchnorm1d_float32_close_to_numpy():
    rng = np.random.default_rng(23)
    x = (rng.standard_normal((5, 3)) * 3).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)

    def make(backend):
        return fnn.Sequential(BatchNorm1D(3), backend=backend, dtype="float32", seed=0)
    import test_sync_batchnorm as t
    comm = t.FakeComm(2)
    ranks = [make(BE) for _ in range(2)]
    for m in ranks:
        m.layers[0].sync = comm
        m.train()
    whole = make("numpy")
    whole.train()
    y, dx = whole.forward(x), whole.backward(dy, return_input_grad=True)

    def step(r, model, xs, dys):
        out = model.forward(xs)
        return dev.to_host(out), dev.to_host(model.backward(dys, return_input_grad=True))
    got = comm.run(step, [(ranks[0], x[:2], dy[:2]), (ranks[1], x[2:], dy[2:])])
    np.testing.assert_allclose(np.concatenate([g[0] for g in got]), y, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.concatenate([g[1] for g in got]), dx, rtol=1e-4, atol=1e-5)
    for k, v in _buffers(whole).items():
        np.testing.assert_allclose(_buffers(ranks[1])[k], v, rtol=1e-5, atol=1e-6)
