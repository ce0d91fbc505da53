"""One benchmark group per kernel: numpy (the reference) beside every backend."""
import numpy as np
import pytest

DT = np.float32
rng = np.random.default_rng(0)


def arr(*shape):
    return rng.standard_normal(shape).astype(DT)


def _warm(fn, *args):
    fn(*args)   # JIT compile (numba) outside the timing
    return fn


@pytest.mark.parametrize("shape", [(128, 784, 256), (256, 256, 256), (512, 512, 512)],
                         ids=lambda s: "x".join(map(str, s)))
def test_matmul(benchmark, backend, shape):
    m, k, n = shape
    a, b = arr(m, k), arr(k, n)
    benchmark.group = f"matmul {m}x{k}x{n}"
    benchmark.extra_info["gflop"] = 2 * m * k * n / 1e9
    benchmark(_warm(backend.raw.matmul, a, b), a, b)


def test_matmul_backward_dw(benchmark, backend):
    # dW = dy.T @ x for the 784->256 layer at batch 128: a transposed operand
    dy, x = arr(128, 256), arr(128, 784)
    benchmark.group = "matmul dy.T@x 256x128x784"
    benchmark(_warm(backend.raw.matmul, dy, x, True, False), dy, x, True, False)


ACTIVATIONS = ["sigmoid", "tanh", "relu", "leaky_relu", "softmax"]


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_forward(benchmark, backend, name):
    x = arr(128, 256)
    benchmark.group = f"{name} forward 128x256"
    benchmark(_warm(getattr(backend.raw, name), x), x)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_backward(benchmark, backend, name):
    x, dy = arr(128, 256), arr(128, 256)
    y = getattr(backend.raw, name)(x)
    fn = getattr(backend.raw, name + "_backward")
    benchmark.group = f"{name} backward 128x256"
    benchmark(_warm(fn, dy, x, y), dy, x, y)


def test_bias_grad(benchmark, backend):
    dy = arr(128, 256)
    benchmark.group = "bias_grad 128x256"
    benchmark(_warm(backend.raw.bias_grad, dy), dy)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse", "binary_cross_entropy"])
def test_loss(benchmark, backend, loss):
    logits = arr(128, 10)
    target = rng.integers(0, 10, 128) if loss == "cross_entropy" else rng.random((128, 10)).astype(DT)
    fn = getattr(backend.raw, loss)
    benchmark.group = f"{loss} 128x10"
    benchmark(_warm(fn, logits, target), logits, target)


def test_sgd_step(benchmark, backend):
    n = 269_322   # the 784-256-128-10 MLP's parameters
    p, g, v = arr(n), arr(n) * 1e-6, np.zeros(n, DT)
    benchmark.group = "sgd_step momentum 269k"
    benchmark(_warm(backend.raw.sgd_step, p, g, v, 1e-9, 0.9, False, 0.0), p, g, v, 1e-9, 0.9, False, 0.0)


def test_adam_step(benchmark, backend):
    n = 269_322
    p, g, m, v = arr(n), arr(n) * 1e-6, np.zeros(n, DT), np.zeros(n, DT)
    args = (p, g, m, v, 1e-9, 0.9, 0.999, 1e-8, 0.0, 1)
    benchmark.group = "adam_step 269k"
    benchmark(_warm(backend.raw.adam_step, *args), *args)
