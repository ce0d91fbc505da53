"""The cuda backend's LayerNorm, BatchNorm and global average pooling kernels against the
reference, and models with those layers trained on the device step for step like the
numpy backend (running buffers included), plus a central-difference gradient check.

Runs under Numba's CUDA simulator where there is no GPU, switched on the way
test_cuda.py does it (imported from there), so shapes stay tiny.
"""
import numpy as np
import pytest

import fastnn as fnn
from fastnn._kernels import reference as ref
from fastnn.layers import (BatchNorm1D, BatchNorm2D, Conv1D, Dense, GlobalAvgPool1D, GlobalAvgPool2D,
                           LayerNorm, ReLU)
from conftest import assert_close
from seq_helpers import numeric_grad
from test_cuda import BE, DTYPES, K, dev, rand

NAMES = ("layer_norm", "batch_norm", "global_avgpool")


def _same(got, want, dtype):
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want)
    for g, e in zip(got, want):
        if e is None:
            assert g is None
        else:
            g = dev.to_host(g)
            assert isinstance(g, np.ndarray) and g.dtype == np.dtype(dtype)
            tol = (1e-4, 1e-5) if np.dtype(dtype) == np.float32 else (1e-10, 1e-12)
            assert_close(g, e, dtype, *tol)


def test_normalization_kernels_are_native():
    for name in NAMES:
        assert name in BE.overridden and name + "_backward" in BE.overridden


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm(dtype, affine):
    rng = np.random.default_rng(30)
    x = rand(rng, (3, 37), dtype) + dtype(2)        # more features than the simulator's 32 threads
    w = rand(rng, 37, dtype) if affine else None
    b = rand(rng, 37, dtype) if affine else None
    want = ref.layer_norm(x, w, b, 1e-5)
    _same(K.layer_norm(x, w, b, 1e-5), want, dtype)
    dy = rand(rng, x.shape, dtype)
    for need_dx in (True, False):
        _same(K.layer_norm_backward(dy, x, want[1], want[2], w, need_dx),
              ref.layer_norm_backward(dy, x, want[1], want[2], w, need_dx), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,training", [((5, 2, 1), True), ((3, 2, 13), True), ((2, 3, 5), False)])
def test_batch_norm(dtype, shape, training):
    rng = np.random.default_rng(31)
    c = shape[1]
    x = rand(rng, shape, dtype) + dtype(1)
    w, b = rand(rng, c, dtype), rand(rng, c, dtype)
    rm, rv = rand(rng, c, dtype), np.abs(rand(rng, c, dtype)) + dtype(0.5)
    rm_d, rv_d = dev.to_device(rm), dev.to_device(rv)        # buffers on the device, as a model keeps them
    got = K.batch_norm(dev.to_device(x), dev.to_device(w), dev.to_device(b), rm_d, rv_d, 0.2, 1e-5, training)
    want = ref.batch_norm(x, w, b, rm, rv, 0.2, 1e-5, training)   # updates rm, rv
    _same(got, want, dtype)
    _same((rm_d, rv_d), (rm, rv), dtype)
    dy = rand(rng, shape, dtype)
    for need_dx in (True, False):
        _same(K.batch_norm_backward(dy, x, want[1], want[2], w, training, need_dx),
              ref.batch_norm_backward(dy, x, want[1], want[2], w, training, need_dx), dtype)
    rm2, rv2 = rm.copy(), rv.copy()                          # host buffers: updated in place too
    K.batch_norm(x, None, None, rm2, rv2, 0.5, 1e-3, training)
    ref.batch_norm(x, None, None, rm, rv, 0.5, 1e-3, training)
    _same((rm2, rv2), (rm, rv), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_global_avgpool(dtype):
    rng = np.random.default_rng(32)
    x = rand(rng, (2, 3, 5), dtype)
    _same(K.global_avgpool(x), ref.global_avgpool(x), dtype)
    dy = rand(rng, (2, 3), dtype)
    _same(K.global_avgpool_backward(dy, x), ref.global_avgpool_backward(dy, x), dtype)


def _models(layers, seed):
    return [fnn.Sequential(*layers(), backend=b, dtype="float64", seed=seed) for b in (BE, "numpy")]


def test_batch_norm_models_train_like_numpy():
    """Training steps on the device: outputs, gradients, the optimizer's update and the
    running buffers (num_batches_tracked too) equal the numpy backend's; then eval."""
    rng = np.random.default_rng(33)

    def layers():
        return [Conv1D(2, 3, 3, padding=1), BatchNorm1D(3), ReLU(), GlobalAvgPool1D(), Dense(3, 4),
                LayerNorm(4), BatchNorm1D(4, momentum=None), Dense(4, 2)]
    gpu, cpu = _models(layers, 7)
    opts = [fnn.optim.SGD(lr=0.1, momentum=0.9) for _ in range(2)]
    for _ in range(3):
        x, y = rng.standard_normal((4, 2, 5)), rng.integers(0, 2, 4)
        losses = []
        for model, opt in zip((gpu, cpu), opts):
            loss, grad = fnn.losses.cross_entropy(model.forward(x), y)
            model.zero_grad()
            model.backward(grad)
            opt.step(model.parameters())
            losses.append(loss)
        assert abs(losses[0] - losses[1]) < 1e-12
        for name, want in cpu.state_dict().items():
            assert_close(gpu.state_dict()[name], want, np.float64)
    x = rng.standard_normal((3, 2, 5))
    assert_close(gpu.eval().predict(x), cpu.eval().predict(x), np.float64)


def test_batch_norm2d_gradients_on_the_device():
    rng = np.random.default_rng(34)
    model = fnn.Sequential(BatchNorm2D(2), GlobalAvgPool2D(), backend=BE, dtype="float64", seed=1)
    model.load_state_dict({**model.state_dict(), "0.weight": rng.standard_normal(2),
                           "0.bias": rng.standard_normal(2)})
    x, probe = rng.standard_normal((2, 2, 2, 3)), rng.standard_normal((2, 2))
    loss = lambda: float((dev.to_host(model.forward(x)) * probe).sum())
    model.forward(x)
    model.zero_grad()
    dx = dev.to_host(model.backward(probe, return_input_grad=True))
    assert_close(dx, numeric_grad(loss, x), np.float64, 1e-6, 1e-7)
