"""Every kernel of every backend against the NumPy reference."""
import numpy as np
import pytest

from fastnn._kernels import reference as ref
from conftest import assert_close

DTYPES = [np.float32, np.float64]
SIZES = [1, 7, 33, 257]
rng = np.random.default_rng(1234)


def rand(*shape, dtype=np.float64, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def gemm_tol(dtype, k):
    # float32 sums of k products: error grows with k.
    return dict(rtol=1e-3, atol=1e-4 * np.sqrt(k)) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-11 * k)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (7, 33, 1), (33, 7, 257), (257, 33, 7),
                                   (1, 257, 33), (64, 64, 64), (100, 130, 70)])
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)])
def test_matmul(backend, dtype, m, k, n, trans_a, trans_b):
    a = rand(*((k, m) if trans_a else (m, k)), dtype=dtype)
    b = rand(*((n, k) if trans_b else (k, n)), dtype=dtype)
    expected = ref.matmul(a.astype(np.float64), b.astype(np.float64), trans_a, trans_b)
    got = backend.matmul(a, b, trans_a, trans_b)
    assert got.dtype == dtype
    assert_close(got, expected, dtype, **gemm_tol(dtype, k))


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_transposed_and_strided_views(backend, dtype):
    a = rand(40, 30, dtype=dtype)
    b = rand(50, 40, dtype=dtype)
    # a.T and b.T are F-contiguous views; a[::2] is strided.
    assert_close(backend.matmul(a.T, b.T), a.T.astype(np.float64) @ b.T, dtype, **gemm_tol(dtype, 40))
    assert_close(backend.matmul(a[::2], b[:, ::2][:30]), a[::2].astype(np.float64) @ b[:, ::2][:30],
                 dtype, **gemm_tol(dtype, 30))


def test_matmul_accepts_integers_and_mixed(backend):
    a = np.arange(12).reshape(3, 4)
    b = np.arange(8, dtype=np.float32).reshape(4, 2)
    got = backend.matmul(a, b)   # integers follow the float operand's dtype
    assert got.dtype == np.float32
    assert_close(got, a @ b, np.float32)
    got = backend.matmul(a, a.T)  # integers alone compute in float64
    assert got.dtype == np.float64
    assert_close(got, a @ a.T, np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("f", [1, 7, 33])
def test_bias_and_linear(backend, dtype, n, f):
    x, w, b = rand(n, 33, dtype=dtype), rand(f, 33, dtype=dtype), rand(f, dtype=dtype)
    dy = rand(n, f, dtype=dtype)
    assert_close(backend.bias_add(rand(n, f, dtype=dtype) * 0 + dy, b), ref.bias_add(dy, b), dtype)
    assert_close(backend.bias_grad(dy), ref.bias_grad(dy.astype(np.float64)), dtype, atol=1e-4)
    tol = gemm_tol(dtype, 33)
    assert_close(backend.linear(x, w, b), ref.linear(x, w, b), dtype, **tol)
    assert_close(backend.linear(x, w, None), ref.linear(x, w, None), dtype, **tol)
    got, want = backend.linear_backward(dy, x, w), ref.linear_backward(dy, x, w)
    for g, e in zip(got, want):
        assert g.dtype == dtype
        assert_close(g, e, dtype, **gemm_tol(dtype, n))
    assert backend.linear_backward(dy, x, w, need_dx=False)[0] is None


ACTS = ["step", "sigmoid", "tanh", "relu", "leaky_relu", "softmax"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ACTS)
@pytest.mark.parametrize("shape", [(1, 1), (7, 33), (257, 10), (33, 257)])
def test_activations(backend, dtype, name, shape):
    x = rand(*shape, dtype=dtype, scale=3.0)
    x.flat[0] = 0.0  # the kink of relu/step
    dy = rand(*shape, dtype=dtype)
    y = getattr(backend, name)(x)
    y_ref = getattr(ref, name)(x)
    assert y.dtype == dtype and y.shape == shape
    assert_close(y, y_ref, dtype)
    dx = getattr(backend, name + "_backward")(dy, x, y_ref)
    assert dx.dtype == dtype
    assert_close(dx, getattr(ref, name + "_backward")(dy, x, y_ref), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_activations_extreme_values(backend, dtype):
    x = np.array([[-1e4, -50.0, 0.0, 50.0, 1e4]], dtype=dtype)
    for name in ACTS:
        y = getattr(backend, name)(x)
        assert np.all(np.isfinite(y)), name
        assert_close(y, getattr(ref, name)(x), dtype)


def test_leaky_relu_alpha(backend):
    x = rand(5, 6)
    assert_close(backend.leaky_relu(x, alpha=0.2), ref.leaky_relu(x, 0.2), np.float64)
    dy = rand(5, 6)
    assert_close(backend.leaky_relu_backward(dy, x, x, alpha=0.2),
                 ref.leaky_relu_backward(dy, x, x, 0.2), np.float64)


def _loss_close(got, want, dtype):
    loss, grad = got
    assert isinstance(loss, float)
    assert grad.dtype == dtype
    assert abs(loss - want[0]) <= (1e-4 if dtype == np.float32 else 1e-10) * (1 + abs(want[0]))
    assert_close(grad, want[1], dtype, atol=1e-6 if dtype == np.float32 else 1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,c", [(1, 1), (7, 3), (33, 10), (257, 7)])
def test_losses(backend, dtype, n, c):
    logits = rand(n, c, dtype=dtype, scale=3.0)
    labels = rng.integers(0, c, n)
    _loss_close(backend.cross_entropy(logits, labels), ref.cross_entropy(logits, labels), dtype)
    soft = rng.random((n, c)).astype(dtype)
    soft /= soft.sum(axis=1, keepdims=True)
    _loss_close(backend.cross_entropy(logits, soft), ref.cross_entropy(logits, soft), dtype)
    target = rand(n, c, dtype=dtype)
    _loss_close(backend.mse(logits, target), ref.mse(logits, target), dtype)
    probs = rng.random((n, c)).astype(dtype)
    _loss_close(backend.binary_cross_entropy(logits, probs), ref.binary_cross_entropy(logits, probs), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_losses_stable_for_huge_logits(backend, dtype):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0]], dtype=dtype)
    labels = np.array([1, 0])
    loss, grad = backend.cross_entropy(logits, labels)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    assert abs(loss - 2e4 / 2 * 2) / 2e4 < 1e-3   # each row loses 2e4
    loss, grad = backend.binary_cross_entropy(logits, np.array([[1, 0, 1], [1, 0, 0.5]], dtype=dtype))
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    # only row 2's two confident mistakes cost 1e4 each; the rest is small and exact
    expected = (2e4 + np.log(2) + 2.5 + np.log1p(np.exp(-5.0))) / 6
    assert abs(loss - expected) / expected < 1e-6


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [1, 7, 33, 1000, 270_000])
@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.9, False, 0.0),
                                                  (0.9, True, 1e-3), (0.5, False, 0.1)])
def test_sgd_step(backend, dtype, size, momentum, nesterov, wd):
    p, g, v = rand(size, dtype=dtype), rand(size, dtype=dtype), rand(size, dtype=dtype)
    p2, v2 = p.copy(), v.copy()
    backend.sgd_step(p, g, v, 0.1, momentum, nesterov, wd)
    ref.sgd_step(p2, g, v2, 0.1, momentum, nesterov, wd)
    assert_close(p, p2, dtype)
    assert_close(v, v2, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [1, 7, 33, 270_000])
@pytest.mark.parametrize("wd,t", [(0.0, 1), (0.01, 5)])
def test_adam_step(backend, dtype, size, wd, t):
    p, g = rand(size, dtype=dtype), rand(size, dtype=dtype)
    m, v = rand(size, dtype=dtype) * 0.1, np.abs(rand(size, dtype=dtype)) * 0.1
    p2, m2, v2 = p.copy(), m.copy(), v.copy()
    backend.adam_step(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, wd, t)
    ref.adam_step(p2, g, m2, v2, 1e-3, 0.9, 0.999, 1e-8, wd, t)
    for got, want in ((p, p2), (m, m2), (v, v2)):
        assert_close(got, want, dtype)


def test_sgd_reference_by_hand():
    # One hand-computed step pins the reference itself: PyTorch's rule
    # v = m*v + (g + wd*p); p -= lr * (g + wd*p + m*v) for Nesterov.
    p, g, v = np.array([1.0]), np.array([0.5]), np.array([0.2])
    ref.sgd_step(p, g, v, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)
    g_wd = 0.5 + 0.1 * 1.0
    v_new = 0.9 * 0.2 + g_wd
    assert v[0] == pytest.approx(v_new)
    assert p[0] == pytest.approx(1.0 - 0.1 * (g_wd + 0.9 * v_new))


def test_adam_reference_by_hand():
    p, g, m, v = np.array([1.0]), np.array([0.5]), np.array([0.0]), np.array([0.0])
    ref.adam_step(p, g, m, v, 0.1, 0.9, 0.999, 1e-8, 0.0, 1)
    # first step: m_hat = g, v_hat = g^2, so p moves by lr * sign(g)
    assert p[0] == pytest.approx(1.0 - 0.1, rel=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "leaky_relu"])
@pytest.mark.parametrize("n,f", [(1, 1), (7, 33), (257, 7)])
def test_linear_act_fused(backend, dtype, activation, n, f):
    x, w, b = rand(n, 33, dtype=dtype), rand(f, 33, dtype=dtype), rand(f, dtype=dtype)
    tol = gemm_tol(dtype, 33)
    for bias in (b, None):
        got = backend.linear_act(x, w, bias, activation, alpha=0.1)
        assert got.dtype == dtype
        assert_close(got, ref.linear_act(x, w, bias, activation, alpha=0.1), dtype, **tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("accumulate", [True, False])
@pytest.mark.parametrize("n,f", [(1, 1), (7, 33), (257, 7)])
def test_linear_backward_into(backend, dtype, accumulate, n, f):
    dy, x, w = rand(n, f, dtype=dtype), rand(n, 33, dtype=dtype), rand(f, 33, dtype=dtype)
    dw0, db0 = rand(f, 33, dtype=dtype), rand(f, dtype=dtype)
    dw, db, dw_ref, db_ref = dw0.copy(), db0.copy(), dw0.copy(), db0.copy()
    dx = backend.linear_backward_into(dy, x, w, dw, db, True, accumulate)
    dx_ref = ref.linear_backward_into(dy, x, w, dw_ref, db_ref, True, accumulate)
    tol = gemm_tol(dtype, n)
    assert_close(dx, dx_ref, dtype, **tol)
    assert_close(dw, dw_ref, dtype, **tol)
    assert_close(db, db_ref, dtype, **tol)
    dw2 = dw0.copy()
    assert backend.linear_backward_into(dy, x, w, dw2, None, need_dx=False) is None
    assert_close(dw2, dw0 + dy.astype(np.float64).T @ x, dtype, **tol)
