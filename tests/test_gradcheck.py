"""Central-difference gradient checks in float64 for every layer and loss, on every backend."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn.layers import Dense, LeakyReLU, ReLU, Sigmoid, Softmax, Step, Tanh
from seq_helpers import numeric_grad

def check(analytic, numeric, tol=1e-6):
    scale = np.maximum(1.0, np.abs(numeric))
    assert np.all(np.abs(analytic - numeric) <= tol * scale), np.max(np.abs(analytic - numeric))


def model_loss_and_grads(model, x, probe):
    """loss = sum(forward(x) * probe): its gradient w.r.t. the output is probe."""
    out = model.forward(x)
    model.zero_grad()
    dx = model.backward(probe, return_input_grad=True)
    return float((out * probe).sum()), dx


LAYERS = {
    "dense": lambda: [Dense(5, 4)],
    "dense_nobias": lambda: [Dense(5, 4, bias=False)],
    "sigmoid": lambda: [Dense(5, 4), Sigmoid()],
    "tanh": lambda: [Dense(5, 4), Tanh()],
    "relu": lambda: [Dense(5, 4), ReLU()],
    "leaky_relu": lambda: [Dense(5, 4), LeakyReLU(0.1)],
    "softmax": lambda: [Dense(5, 4), Softmax()],
    "mlp": lambda: [Dense(5, 6), Tanh(), Dense(6, 3)],
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_gradients(backend, name):
    rng = np.random.default_rng(3)
    model = fnn.Sequential(*LAYERS[name](), backend=backend.name, dtype="float64", seed=1)
    x = rng.standard_normal((3, 5))
    probe = rng.standard_normal((3, model.output_shape((5,))[0]))
    model_loss_and_grads(model, x, probe)
    analytic = {p.name: p.grad.copy() for p in model.parameters()}
    for p in model.parameters():
        numeric = numeric_grad(lambda: float((model.forward(x) * probe).sum()), p.data)
        check(analytic[p.name], numeric)


@pytest.mark.parametrize("layer", [Sigmoid, Tanh, ReLU, LeakyReLU, Softmax, Step])
def test_activation_input_gradients(backend, layer):
    """dx through the activation alone."""
    rng = np.random.default_rng(4)
    model = fnn.Sequential(layer(), backend=backend.name, dtype="float64", seed=2)
    h = rng.standard_normal((3, 4)) * 2
    probe = rng.standard_normal((3, 4))
    model.forward(h.copy())
    dh = model.backward(probe, return_input_grad=True)
    numeric = numeric_grad(lambda: float((model.layers[0](h) * probe).sum()), h)
    check(dh, numeric)
    if layer is Step:
        assert np.all(dh == 0)  # zero almost everywhere: no gradient passes


@pytest.mark.parametrize("layer", [Sigmoid, Tanh, ReLU, lambda: LeakyReLU(0.2), lambda: LeakyReLU(-0.5)])
def test_fused_dense_activation_matches_unfused(backend, layer):
    """Sequential fuses Dense + activation into linear_act; outputs and every
    gradient equal the two layers run one after the other."""
    rng = np.random.default_rng(8)
    x, probe = rng.standard_normal((6, 5)), rng.standard_normal((6, 4))
    fused = fnn.Sequential(Dense(5, 4), layer(), backend=backend.name, dtype="float64", seed=4)
    plain = fnn.Sequential(Dense(5, 4), layer(), backend=backend.name, dtype="float64", seed=4)
    plain.fuse = False
    expect_fused = getattr(fused.layers[1], "alpha", 0.0) >= 0
    assert (len(fused._graph.fused) == 1) == expect_fused
    outs, grads = [], []
    for model in (fused, plain):
        outs.append(model.forward(x))
        model.zero_grad()
        grads.append(model.backward(probe, return_input_grad=True))
        grads.append(model.parameters().flat_grad.copy())
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grads[0], grads[2], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grads[1], grads[3], rtol=1e-12, atol=1e-12)


BN_RELU_CASES = {   # name: (layers, input shape)
    "1d-rows": (lambda: [fnn.layers.BatchNorm1D(4), ReLU(), Dense(4, 3)], (6, 4)),
    "1d-seq": (lambda: [fnn.layers.BatchNorm1D(4), ReLU(), fnn.layers.Flatten(), Dense(20, 3)], (6, 4, 5)),
    "2d": (lambda: [fnn.layers.Conv2D(2, 3, 3, padding=1), fnn.layers.BatchNorm2D(3), ReLU(),
                    fnn.layers.GlobalAvgPool2D(), Dense(3, 3)], (5, 2, 4, 4)),
}


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("case", list(BN_RELU_CASES))
def test_fused_batchnorm_relu_matches_unfused(backend, case, training):
    """The plan runs BatchNorm -> ReLU as batch_norm_relu and its backward (the ReLU layer is not
    called): outputs, every gradient, the input gradient and the running statistics equal the
    two layers run one after the other, in training and in eval mode."""
    layers, shape = BN_RELU_CASES[case]
    rng = np.random.default_rng(9)
    x = rng.standard_normal(shape) + 0.3
    fused = fnn.Sequential(*layers(), backend=backend.name, dtype="float64", seed=4)
    plain = fnn.Sequential(*layers(), backend=backend.name, dtype="float64", seed=4)
    plain.fuse = False
    bn = next(i for i, layer in enumerate(fused.layers) if "BatchNorm" in type(layer).__name__)
    assert id(fused._graph.nodes[bn + 1]) in fused._graph.fused, "BatchNorm + ReLU not fused"
    probe = rng.standard_normal(plain.forward(x).shape)
    fused.forward(x)   # the same calls on both: a training-mode forward moves the running statistics
    outs, grads = [], []
    for model in (fused, plain):
        model.train() if training else model.eval()
        out, tape = model._train_forward([x]) if training else (model.forward(x), None)
        outs.append(out[0] if training else out)
        model.zero_grad()
        if training:
            grads.append(model._backprop(tape, [probe], input_grads=True)[0])
            grads.append(model.parameters().flat_grad.copy())
        grads.append(np.concatenate([b.ravel() for b in model.state_dict().values()]))
    if training:   # the fused tape has one record fewer: the ReLU's
        assert len(fused._train_forward([x])[1].records) == len(plain._train_forward([x])[1].records) - 1
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-12, atol=1e-12)
    half = len(grads) // 2
    for a, b in zip(grads[:half], grads[half:]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_a_subclass_with_its_own_forward_or_backward_runs_its_own_code(backend):
    """The plan fuses only a layer whose forward (and, for BatchNorm, backward) is the class's
    own that has forward_fused: a user's Dense that doubles its output was bypassed before."""
    class Doubled(Dense):
        def forward(self, ctx, x):   # (forward is the checked entry point: call the implementation)
            return Dense._forward_impl(self, ctx, x) * 2.0

    class CountingBN(fnn.layers.BatchNorm1D):
        calls = 0

        def backward(self, ctx, dy):
            CountingBN.calls += 1
            return fnn.layers.BatchNorm1D._backward_impl(self, ctx, dy)

    rng = np.random.default_rng(11)
    x = rng.standard_normal((5, 3))
    model = fnn.Sequential(Doubled(3, 4), ReLU(), CountingBN(4), ReLU(), Dense(4, 2),
                           backend=backend.name, dtype="float64", seed=5)
    assert not model._graph.fused
    plain = fnn.Sequential(Dense(3, 4), ReLU(), backend=backend.name, dtype="float64", seed=5)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k.startswith("0.")})
    h = model.layers[0](x)
    np.testing.assert_allclose(h, 2 * (x @ plain.layers[0].params["weight"].T + plain.layers[0].params["bias"]))
    out, tape = model._train_forward([x])
    model._backprop(tape, [np.ones_like(out[0])])
    assert CountingBN.calls == 1


def test_fused_batchnorm_relu_gradients_are_numeric(backend):
    """Central differences through the fused pair (training statistics included)."""
    rng = np.random.default_rng(10)
    model = fnn.Sequential(fnn.layers.BatchNorm1D(3), ReLU(), Dense(3, 2), backend=backend.name,
                           dtype="float64", seed=3)
    assert model._graph.fused
    x, probe = rng.standard_normal((7, 3)) + 0.2, rng.standard_normal((7, 2))

    def loss():
        out, _ = model._train_forward([x])
        return float((out[0] * probe).sum())
    out, tape = model._train_forward([x])
    model.zero_grad()
    dx = model._backprop(tape, [probe], input_grads=True)[0]
    analytic = {p.name: p.grad.copy() for p in model.parameters()}
    for p in model.parameters():
        check(analytic[p.name], numeric_grad(loss, p.data))
    check(dx, numeric_grad(loss, x))


def test_first_layer_input_gradient(backend):
    """model.backward returns d loss / d x when the first layer is asked for it."""
    rng = np.random.default_rng(5)
    model = fnn.Sequential(Dense(5, 4), Tanh(), Dense(4, 2), backend=backend.name, dtype="float64")
    x, probe = rng.standard_normal((3, 5)), rng.standard_normal((3, 2))
    model.forward(x)
    g = model.backward(probe, return_input_grad=True)   # through every layer, the first one included
    numeric = numeric_grad(lambda: float((model.forward(x) * probe).sum()), x)
    check(g, numeric)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "cross_entropy_soft", "binary_cross_entropy"])
def test_loss_gradients(backend, loss):
    rng = np.random.default_rng(6)
    logits = rng.standard_normal((4, 3)) * 2
    if loss == "cross_entropy":
        target = rng.integers(0, 3, 4)
    elif loss == "cross_entropy_soft":
        target = rng.random((4, 3))
        target /= target.sum(axis=1, keepdims=True)
    elif loss == "binary_cross_entropy":
        target = rng.random((4, 3))
    else:
        target = rng.standard_normal((4, 3))
    fn = getattr(backend, "cross_entropy" if loss.startswith("cross") else loss)
    _, grad = fn(logits, target)
    numeric = numeric_grad(lambda: fn(logits, target)[0], logits)
    check(grad, numeric)


def test_whole_model_gradient_through_loss(backend):
    """Parameters' grads of cross_entropy(model(x)) match finite differences."""
    rng = np.random.default_rng(7)
    model = fnn.Sequential(Dense(6, 5), ReLU(), Dense(5, 5), Sigmoid(), Dense(5, 3),
                           backend=backend.name, dtype="float64", seed=3)
    x, y = rng.standard_normal((8, 6)), rng.integers(0, 3, 8)
    loss, grad = backend.cross_entropy(model.forward(x), y)
    model.zero_grad()
    model.backward(grad)
    for p in model.parameters():
        analytic = p.grad.copy()
        numeric = numeric_grad(lambda: backend.cross_entropy(model.forward(x), y)[0], p.data)
        check(analytic, numeric)
