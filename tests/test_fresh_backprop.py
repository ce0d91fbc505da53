"""Model._backprop_fresh, the Trainer's zero_grad() + backward in one: Dense layers write their
gradient outright instead of adding into a zeroed buffer. It must leave exactly the gradients
that zero_grad() then backprop leaves, whatever the buffer held before."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn import layers as L
from fastnn.layers.base import Layer


class StopGradient(Layer):
    """Passes x forward and no gradient back: the chain's backward ends at it."""

    def forward(self, ctx, x):
        return x

    def backward(self, ctx, dy):
        return None


def models():
    frozen = L.Dense(8, 8)
    shared = L.Dense(8, 8)
    yield "mlp", [L.Dense(6, 8), L.ReLU(), L.Dense(8, 8), L.Tanh(), L.Dense(8, 3)], None
    yield "frozen", [frozen, L.ReLU(), L.Dense(8, 3)], frozen
    yield "shared", [L.Dense(6, 8), shared, L.Tanh(), shared, L.Dense(8, 3)], None
    yield "stopped", [L.Dense(6, 8), StopGradient(), L.Dense(8, 3)], None
    yield "norm", [L.Dense(6, 8), L.BatchNorm1D(8), L.ReLU(), L.Dense(8, 3)], None


def gradients(model, x, g, fresh):
    (out,), tape = model._train_forward([x])
    model._flat_grad[...] = 7.0   # what a previous step left
    if fresh:
        model._backprop_fresh(tape, [g])
    else:
        model.zero_grad()
        model._backprop(tape, [g])
    return model.backend.to_host(model._flat_grad).copy()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", [c[0] for c in models()])
def test_fresh_backprop_leaves_the_gradients_of_zero_grad_then_backprop(backend, case, dtype):
    name, layers, frozen = next(c for c in models() if c[0] == case)
    model = fnn.Sequential(*layers, backend=backend.name, dtype=dtype, seed=2)
    if frozen is not None:
        frozen.trainable = False
    try:
        rng = np.random.default_rng(5)
        x = rng.standard_normal((9, 6 if name != "frozen" else 8)).astype(dtype)
        g = rng.standard_normal((9, 3)).astype(dtype)
        expected = gradients(model, x, g, fresh=False)
        got = gradients(model, x, g, fresh=True)
        np.testing.assert_array_equal(got, expected)
        assert np.any(expected != 0)
        if name in ("frozen", "stopped"):   # parameters the gradient never reaches: zeros, not 7
            first = model.parameters()[0]
            assert np.all(model.backend.to_host(first.grad) == 0)
    finally:
        if frozen is not None:
            frozen.trainable = True


def test_fresh_backprop_follows_a_trainable_flag_changed_between_steps():
    d = L.Dense(6, 8)
    model = fnn.Sequential(d, L.ReLU(), L.Dense(8, 3), backend="numpy", seed=0)
    rng = np.random.default_rng(1)
    x, g = rng.standard_normal((4, 6)).astype(np.float32), rng.standard_normal((4, 3)).astype(np.float32)
    gradients(model, x, g, fresh=True)
    d.trainable = False
    try:
        got = gradients(model, x, g, fresh=True)
        assert np.all(got[:d.params["weight"].size + 8] == 0)   # the frozen layer's stale 7s are gone
        np.testing.assert_array_equal(got, gradients(model, x, g, fresh=False))
    finally:
        d.trainable = True


def test_a_graph_model_falls_back_to_zero_grad():
    inp = fnn.Input((6,))
    a, b = L.Dense(6, 3)(inp), L.Dense(6, 3)(inp)
    model = fnn.Model(inp, L.Add()([a, b]), backend="numpy", seed=0)
    rng = np.random.default_rng(2)
    x, g = rng.standard_normal((4, 6)).astype(np.float32), rng.standard_normal((4, 3)).astype(np.float32)
    np.testing.assert_array_equal(gradients(model, x, g, True), gradients(model, x, g, False))


class AddingDense(L.Dense):
    """A user's Dense with a backward of its own that adds into the gradients."""

    def backward(self, ctx, dy):
        self.grads["weight"] += dy.T @ ctx.x
        self.grads["bias"] += dy.sum(axis=0)
        return dy @ self.params["weight"] if ctx.need_dx else None


def test_a_dense_subclass_with_its_own_backward_gets_zeroed_gradients():
    model = fnn.Sequential(L.Dense(6, 8), L.ReLU(), AddingDense(8, 3), backend="numpy", seed=0)
    rng = np.random.default_rng(3)
    x, g = rng.standard_normal((4, 6)).astype(np.float32), rng.standard_normal((4, 3)).astype(np.float32)
    np.testing.assert_array_equal(gradients(model, x, g, True), gradients(model, x, g, False))
