"""Shared by the gradient-check, conv and recurrent tests: a float64 gradient check over a
whole model (parameters and input), a learning-rate decay callback, and fixtures."""
import numpy as np
import pytest

import fastnn as fnn

EPS = 1e-6


def numeric_grad(f, x):
    """d f / d x by central differences; f returns a float and reads x."""
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + EPS
        up = f()
        flat[i] = old - EPS
        down = f()
        flat[i] = old
        gflat[i] = (up - down) / (2 * EPS)
    return grad


def gradcheck(backend, layers, x_shape, seed=0, tol=1e-6):
    """Every parameter's gradient and the input gradient of sum(model(x) * probe)
    match central differences in float64."""
    rng = np.random.default_rng(seed)
    model = fnn.Sequential(*layers, backend=backend.name, dtype="float64", seed=seed)
    x = rng.standard_normal(x_shape)
    probe = rng.standard_normal((x_shape[0],) + model.output_shape(x_shape[1:]))
    model.forward(x)
    model.zero_grad()
    g = model.backward(probe, return_input_grad=True)   # the first layer's dx included
    assert g.shape == x.shape
    cases = [(p.name, p.grad.copy(), p.data) for p in model.parameters()] + [("x", g, x)]
    for name, analytic, data in cases:
        numeric = numeric_grad(lambda: float((model.forward(x) * probe).sum()), data)
        err = np.abs(analytic - numeric) / np.maximum(1.0, np.abs(numeric))
        assert err.max() <= tol, f"{name}: max relative error {err.max():.3g}"


class LRDecay(fnn.Callback):
    """Multiply the optimizer's learning rate by rate after every epoch."""

    def __init__(self, rate):
        self.rate = rate

    def on_epoch_end(self, epoch, logs):
        self.trainer.optimizer.lr *= self.rate


@pytest.fixture(scope="module")
def digits():
    return fnn.data.load_digits(seed=0)


@pytest.fixture
def one_blas_thread():
    """The reference conv/recurrent kernels make many small GEMMs: a second
    OpenBLAS thread only adds overhead there (and contention on a busy machine)."""
    import threadpoolctl
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        yield
