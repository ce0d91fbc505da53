"""padding='same' / 'valid' for Conv1D and Conv2D (torch's, even kernels included) and Dense on
inputs of any rank, fused with its activation or not: torch forward + backward in float64 and
central differences on every backend."""
import numpy as np
import pytest

import fastnn as fnn
from acts_helpers import forward_backward, gradcheck_model

L = fnn.layers

CONVS = [  # (dims, kernel_size, padding)
    (1, 3, "same"), (1, 4, "same"), (1, 2, "valid"), (2, 3, "same"), (2, (2, 3), "same"),
    (2, (4, 4), "same"), (2, 3, "valid")]


def _conv_pair(torch, dims, k, padding):
    layer = (L.Conv1D if dims == 1 else L.Conv2D)(2, 3, k, padding=padding)
    tl = (torch.nn.Conv1d if dims == 1 else torch.nn.Conv2d)(2, 3, k, padding=padding).double()
    return layer, tl


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("dims,k,padding", CONVS)
def test_conv_padding_matches_torch(backend, dims, k, padding):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    shape = (2, 2, 7) if dims == 1 else (2, 2, 6, 5)
    x = rng.standard_normal(shape)
    layer, tl = _conv_pair(torch, dims, k, padding)
    model = fnn.Sequential(layer, backend=backend.name, dtype="float64", seed=0)
    model.load_state_dict({"0." + n: v.detach().numpy() for n, v in tl.state_dict().items()})
    xt = torch.tensor(x, requires_grad=True)
    yt = tl(xt)
    if padding == "same":
        assert yt.shape[2:] == x.shape[2:]
    probe = rng.standard_normal(tuple(yt.shape))
    yt.backward(torch.tensor(probe))
    assert model.output_shape(x.shape[1:]) == tuple(yt.shape[1:])
    y, dx, grads = forward_backward(model, x, probe)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-12)
    for n, p in tl.named_parameters():
        np.testing.assert_allclose(grads["0." + n], p.grad.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dims,k", [(1, 4), (2, (2, 3))])
def test_conv_same_gradients_central_differences(backend, dims, k):
    rng = np.random.default_rng(1)
    layer = (L.Conv1D if dims == 1 else L.Conv2D)(2, 2, k, padding="same")
    model = fnn.Sequential(layer, backend=backend.name, dtype="float64", seed=0)
    shape = (2, 2, 5) if dims == 1 else (1, 2, 4, 3)
    gradcheck_model(model, rng.standard_normal(shape), rng.standard_normal(shape))


def test_conv_padding_config_and_bad_input(tmp_path):
    model = fnn.Sequential(L.Conv2D(1, 2, 4, padding="same"), L.Conv2D(2, 2, 3, padding="valid"),
                           backend="numpy", dtype="float64")
    assert model.layers[0].config()["padding"] == "same"
    model.save(tmp_path / "m.npz")
    again = fnn.load(tmp_path / "m.npz")
    x = np.random.default_rng(2).standard_normal((1, 1, 6, 6))
    np.testing.assert_array_equal(again.predict(x), model.predict(x))
    with pytest.raises(ValueError, match="stride 1"):
        L.Conv2D(1, 1, 3, stride=2, padding="same")
    for bad in ("full", "SAME", ""):
        with pytest.raises(ValueError, match="padding"):
            L.Conv1D(1, 1, 3, padding=bad)


ACTS = [L.ReLU, L.Sigmoid, L.Tanh, lambda: L.LeakyReLU(0.2), L.GELU]


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("act", ACTS, ids=["relu", "sigmoid", "tanh", "leaky_relu", "gelu"])
def test_dense_any_rank_matches_torch(backend, act, fuse):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4, 5))
    model = fnn.Sequential(L.Dense(5, 6), act(), L.Dense(6, 2), backend=backend.name, dtype="float64", seed=0)
    model.fuse = fuse
    tact = {"ReLU": torch.nn.ReLU(), "Sigmoid": torch.nn.Sigmoid(), "Tanh": torch.nn.Tanh(),
            "LeakyReLU": torch.nn.LeakyReLU(0.2), "GELU": torch.nn.GELU()}[type(model.layers[1]).__name__]
    tm = torch.nn.Sequential(torch.nn.Linear(5, 6), tact, torch.nn.Linear(6, 2)).double()
    model.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    probe = rng.standard_normal((2, 3, 4, 2))
    y, dx, grads = forward_backward(model, x, probe)
    xt = torch.tensor(x, requires_grad=True)
    yt = tm(xt)
    yt.backward(torch.tensor(probe))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-12)
    for k, p in tm.named_parameters():
        np.testing.assert_allclose(grads[k], p.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_dense_fused_path_takes_3d_input_directly(backend):
    """forward_fused (the plan's Dense + activation kernel) on a 3-D batch, called directly."""
    model = fnn.Sequential(L.Dense(4, 3), L.ReLU(), backend=backend.name, dtype="float64", seed=0)
    dense, relu = model.layers
    x = np.random.default_rng(4).standard_normal((2, 5, 4))
    ctx, act_ctx = L.Context(training=True), L.Context(training=True)
    y = dense.forward_fused(ctx, x, "relu", 0.0)
    relu.record_fused(act_ctx, y)
    assert y.shape == (2, 5, 3)
    np.testing.assert_allclose(y, model.predict(x), rtol=1e-12, atol=0)
    dy = np.ones_like(y)
    g = relu._backward_impl(act_ctx, dy)
    dx = dense._backward_impl(ctx, g)
    assert dx.shape == x.shape


def test_dense_any_rank_gradients_central_differences(backend):
    rng = np.random.default_rng(5)
    model = fnn.Sequential(L.Dense(3, 4), L.Tanh(), L.Dense(4, 2), backend=backend.name, dtype="float64", seed=0)
    gradcheck_model(model, rng.standard_normal((2, 3, 3)), rng.standard_normal((2, 3, 2)))


def test_conv_same_exports_to_onnx(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = fnn.Sequential(L.Conv2D(1, 2, (2, 3), padding="same"), L.ReLU(), backend="numpy",
                           dtype="float32", seed=0)
    x = np.random.default_rng(6).standard_normal((2, 1, 5, 4)).astype(np.float32)
    model.export_onnx(tmp_path / "m.onnx", input_shape=(1, 5, 4))
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, model.predict(x), rtol=1e-5, atol=1e-6)
