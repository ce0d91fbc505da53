"""Conv1D/Conv2D, pooling, Flatten and Reshape: gradient checks, kernel parity,
PyTorch agreement, bad input, save/load, and a CNN that learns the digits."""
import numpy as np
import pytest

import fastnn as fnn
from conftest import compiled_backends
from conftest import assert_close
from seq_helpers import LRDecay, digits, gradcheck, one_blas_thread  # noqa: F401 (fixtures)
from fastnn.layers import (AvgPool1D, AvgPool2D, Conv1D, Conv2D, Dense, Flatten, MaxPool1D,
                           MaxPool2D, ReLU, Reshape, Tanh)

# ------------------------------------------------------------ gradients
GRAD_CASES = {
    "conv1d": ([Conv1D(2, 3, 3)], (2, 2, 7)),
    "conv1d_stride_pad": ([Conv1D(2, 3, 4, stride=2, padding=2)], (2, 2, 7)),
    "conv2d": ([Conv2D(2, 3, 3)], (2, 2, 5, 5)),
    "conv2d_stride_pad": ([Conv2D(2, 3, (3, 2), stride=(2, 1), padding=(1, 0))], (2, 2, 5, 4)),
    "maxpool1d": ([Conv1D(2, 2, 1), MaxPool1D(2)], (2, 2, 7)),
    "maxpool1d_overlap": ([Conv1D(2, 2, 1), MaxPool1D(3, stride=2)], (2, 2, 8)),
    "maxpool2d": ([Conv2D(1, 2, 1), MaxPool2D(2)], (2, 1, 5, 4)),
    "maxpool2d_overlap": ([Conv2D(1, 2, 1), MaxPool2D((3, 2), stride=(2, 1))], (2, 1, 6, 5)),
    "avgpool1d": ([Conv1D(2, 2, 1), AvgPool1D(3, stride=2)], (2, 2, 8)),
    "avgpool2d": ([Conv2D(1, 2, 1), AvgPool2D(2)], (2, 1, 5, 4)),
    "avgpool2d_overlap": ([Conv2D(1, 2, 1), AvgPool2D(3, stride=1)], (2, 1, 5, 4)),
    "flatten_dense": ([Conv2D(1, 2, 2), Tanh(), Flatten(), Dense(18, 3)], (2, 1, 4, 4)),
    "reshape_conv": ([Dense(6, 12), Reshape((2, 2, 3)), Conv2D(2, 1, 2), Flatten()], (2, 6)),
}


@pytest.mark.parametrize("case", sorted(GRAD_CASES))
def test_gradients(backend, case):
    layers, x_shape = GRAD_CASES[case]
    layers = [type(l)(**l.config()) for l in layers]      # fresh layers per backend
    gradcheck(backend, layers, x_shape)


# ------------------------------------------------- kernels vs reference
def _conv_args(rng, dims, dtype):
    shape = (3, 2) + (9, 7)[:dims]
    k = (3, 2)[:dims]
    return [rng.standard_normal(shape), rng.standard_normal((5, 2) + k), rng.standard_normal(5)]


@compiled_backends   # the reference against itself proves nothing
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("dims", [1, 2])
def test_conv_kernels_match_reference(backend, dims, dtype):
    """Each backend's conv kernels against the NumPy reference, with non-contiguous
    inputs (the checks make them contiguous)."""
    ref = fnn.get_backend("numpy")
    rng = np.random.default_rng(dims)
    x, w, b = (a.astype(dtype) for a in _conv_args(rng, dims, dtype))
    x = np.asfortranarray(x)
    stride, padding = (2, 1) if dims == 1 else ((2, 1), (1, 0))
    name = f"conv{dims}d"
    y = getattr(backend, name)(x, w, b, stride, padding)
    assert y.dtype == np.dtype(dtype) and y.flags.c_contiguous
    assert_close(y, getattr(ref, name)(x, w, b, stride, padding), dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    got = getattr(backend, name + "_backward")(dy, x, w, stride, padding)
    for g, r in zip(got, getattr(ref, name + "_backward")(dy, x, w, stride, padding)):
        assert g.dtype == np.dtype(dtype)
        assert_close(g, r, dtype)
    assert getattr(backend, name + "_backward")(dy, x, w, stride, padding, need_dx=False)[0] is None


@compiled_backends   # the reference against itself proves nothing
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("dims", [1, 2])
def test_pool_kernels_match_reference(backend, kind, dims):
    ref = fnn.get_backend("numpy")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3) + (9, 7)[:dims]).astype(np.float32)
    name = f"{kind}pool{dims}d"
    out = getattr(backend, name)(x, 3, 2)
    want = getattr(ref, name)(x, 3, 2)
    y = out[0] if kind == "max" else out
    assert_close(y, want[0] if kind == "max" else want, "float32")
    dy = rng.standard_normal(y.shape).astype(np.float32)
    saved = (out[1],) if kind == "max" else ()
    got = getattr(backend, name + "_backward")(dy, x, *saved, 3, 2)
    assert_close(got, getattr(ref, name + "_backward")(dy, x, *saved, 3, 2), "float32")


# --------------------------------------------------------------- torch
def _torch_pair(dims, seed=0, **kw):
    torch = pytest.importorskip("torch")
    torch.manual_seed(seed)
    cls = torch.nn.Conv1d if dims == 1 else torch.nn.Conv2d
    return torch, cls(3, 4, **kw).double()


@pytest.mark.parametrize("dims,kw", [
    (1, dict(kernel_size=3)), (1, dict(kernel_size=4, stride=2, padding=1)),
    (2, dict(kernel_size=3)), (2, dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 2))),
])
def test_conv_matches_torch(backend, dims, kw):
    torch, tconv = _torch_pair(dims, **kw)
    layer = (Conv1D if dims == 1 else Conv2D)(3, 4, **kw)
    model = fnn.Sequential(layer, backend=backend.name, dtype="float64")
    layer.params["weight"][...] = tconv.weight.detach().numpy()
    layer.params["bias"][...] = tconv.bias.detach().numpy()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3) + (10, 9)[:dims])
    tx = torch.tensor(x, requires_grad=True)
    ty = tconv(tx)
    y = model.forward(x)
    assert_close(y, ty.detach().numpy(), "float64", rtol=1e-9, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    ty.backward(torch.tensor(dy))
    model.zero_grad()
    dx = model.backward(dy, return_input_grad=True)
    assert_close(dx, tx.grad.numpy(), "float64", rtol=1e-9, atol=1e-12)
    assert_close(layer.grads["weight"], tconv.weight.grad.numpy(), "float64", rtol=1e-9, atol=1e-12)
    assert_close(layer.grads["bias"], tconv.bias.grad.numpy(), "float64", rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("layer,fn,args", [
    (MaxPool1D(3, 2), "max_pool1d", (3, 2)), (MaxPool2D((3, 2), (1, 2)), "max_pool2d", ((3, 2), (1, 2))),
    (AvgPool1D(2), "avg_pool1d", (2,)), (AvgPool2D(3, 2), "avg_pool2d", (3, 2)),
])
def test_pool_matches_torch(backend, layer, fn, args):
    torch = pytest.importorskip("torch")
    dims = 1 if fn.endswith("1d") else 2
    x = np.random.default_rng(2).standard_normal((2, 3) + (9, 8)[:dims])
    model = fnn.Sequential(type(layer)(**layer.config()), backend=backend.name, dtype="float64")
    tx = torch.tensor(x, requires_grad=True)
    ty = getattr(torch.nn.functional, fn)(tx, *args)
    y = model.forward(x)
    assert_close(y, ty.detach().numpy(), "float64")
    dy = np.random.default_rng(3).standard_normal(y.shape)
    ty.backward(torch.tensor(dy))
    assert_close(model.backward(dy, return_input_grad=True), tx.grad.numpy(), "float64")


def test_maxpool_indices_match_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(4).standard_normal((2, 3, 7, 6))
    x[0, 0, :2, :2] = 1.0                       # a tie: the first maximum wins
    _, idx = fnn.get_backend("numpy").maxpool2d(x, (2, 2), (2, 2))
    _, tidx = torch.nn.functional.max_pool2d(torch.tensor(x), 2, return_indices=True)
    np.testing.assert_array_equal(idx, tidx.numpy())


def test_conv_default_init_like_torch():
    layer = Conv2D(3, 8, 3)
    fnn.Sequential(layer, Flatten(), backend="numpy", seed=0)
    bound = 1 / np.sqrt(3 * 3 * 3)
    for name in ("weight", "bias"):
        values = layer.params[name]
        assert np.abs(values).max() <= bound and np.abs(values).max() > 0.8 * bound


# ------------------------------------------------------------ bad input
@pytest.mark.parametrize("make,words", [
    (lambda: Conv2D(1, 4, 0), "kernel_size must be positive"),
    (lambda: Conv1D(1, 4, 3, stride=0), "stride must be positive"),
    (lambda: Conv2D(1, 4, 3, padding=-1), "padding must be non-negative"),
    (lambda: Conv2D(0, 4, 3), "in_channels must be a positive integer"),
    (lambda: Conv2D(1, 4, (3, 3, 3)), "kernel_size must be an integer or 2 integers"),
    (lambda: Conv1D(1, 4, 2.5), "kernel_size must be an integer"),
    (lambda: MaxPool2D(0), "kernel_size must be positive"),
    (lambda: AvgPool1D(2, stride=-1), "stride must be positive"),
    (lambda: Reshape((0, 4)), "positive sizes"),
    (lambda: Reshape((-1, -1)), "at most one -1"),
])
def test_bad_constructor_arguments(make, words):
    with pytest.raises(ValueError, match=words):
        make()


@pytest.mark.parametrize("layers,x_shape,words", [
    ([Conv2D(1, 4, 3)], (2, 8, 8), r"expects inputs of shape \(batch, 1, H, W\)"),
    ([Conv2D(1, 4, 3)], (2, 3, 8, 8), r"expects inputs of shape \(batch, 1, H, W\)"),
    ([Conv1D(2, 4, 3)], (2, 2, 4, 4), r"expects inputs of shape \(batch, 2, L\)"),
    ([Conv2D(1, 4, 5, padding=0)], (2, 1, 3, 8), "kernel size 5 is larger than the padded input"),
    ([Conv1D(1, 4, 6, padding=1)], (2, 1, 3), r"larger than the padded input \(3 \+ 2 \* 1 = 5\)"),
    ([MaxPool2D(3)], (2, 1, 2, 8), "kernel size 3 is larger than the input"),
    ([AvgPool1D(2)], (2, 1, 4, 4), r"expects inputs of shape \(batch, C, L\)"),
    ([Reshape((5, 5))], (2, 24), "cannot take inputs"),
])
def test_model_rejects_bad_shapes(backend, layers, x_shape, words):
    model = fnn.Sequential(*layers, backend=backend.name)
    with pytest.raises(ValueError, match=words):
        model.predict(np.zeros(x_shape))


@pytest.mark.parametrize("call,error,words", [
    (lambda be: be.conv2d(np.zeros((2, 3, 5, 5)), np.zeros((4, 2, 3, 3)), None), ValueError, "3 channels"),
    (lambda be: be.conv2d(np.zeros((3, 5, 5)), np.zeros((4, 3, 3, 3)), None), ValueError, "must be 4-D"),
    (lambda be: be.conv1d(np.zeros((2, 3, 5)), np.zeros((4, 3, 3)), np.zeros(3)), ValueError, "bias has 3"),
    (lambda be: be.conv1d(np.zeros((2, 3, 2)), np.zeros((4, 3, 3)), None), ValueError, "larger than the padded"),
    (lambda be: be.conv1d(np.zeros((2, 3, 5)), np.zeros((4, 3, 3)), None, stride=0), ValueError, "stride"),
    (lambda be: be.conv1d(np.zeros((2, 3, 5)), np.zeros((4, 3, 3)), None, padding=1.5), TypeError, "padding"),
    (lambda be: be.conv2d(np.zeros((2, 3, 5, 5), dtype=complex), np.zeros((4, 3, 3, 3)), None),
     TypeError, "real numbers"),
    (lambda be: be.conv2d_backward(np.zeros((2, 4, 2, 2)), np.zeros((2, 3, 5, 5)), np.zeros((4, 3, 3, 3))),
     ValueError, "dy has shape"),
    (lambda be: be.maxpool2d(np.zeros((2, 3, 5)), 2), ValueError, "must be 4-D"),
    (lambda be: be.avgpool1d(np.zeros((2, 3, 5)), 6), ValueError, "larger than the padded input"),
    (lambda be: be.maxpool1d_backward(np.zeros((1, 1, 2)), np.zeros((1, 1, 4)), np.array([[[0, 9]]]), 2),
     ValueError, r"idx must lie in \[0, 4\)"),
    (lambda be: be.maxpool1d_backward(np.zeros((1, 1, 2)), np.zeros((1, 1, 4)), np.zeros((1, 1, 2)), 2),
     TypeError, "idx must hold integers"),
])
def test_kernels_reject_bad_input(backend, call, error, words):
    with pytest.raises(error, match=words):
        call(backend)


def test_kernel_checks_normalise_dtype_and_layout(backend):
    x = np.asfortranarray(np.random.default_rng(0).standard_normal((2, 3, 6, 5)).astype(np.float32))
    w = np.ones((4, 3, 3, 3), dtype=np.int64)
    y = backend.conv2d(x, w, None)
    assert y.dtype == np.float32 and y.shape == (2, 4, 4, 3)


# ------------------------------------------------------ save and training
def cnn(backend, dtype="float32"):
    return fnn.Sequential(
        Reshape((1, 8, 8)), Conv2D(1, 8, 3, padding=1), ReLU(), Conv2D(8, 16, 3, padding=1), ReLU(),
        MaxPool2D(2), Flatten(), Dense(256, 10), backend=backend, dtype=dtype, seed=0)


@pytest.mark.parametrize("ext", [".safetensors", ".npz"])
def test_save_and_load_cnn(tmp_path, ext):
    X = np.random.default_rng(0).random((5, 64))
    model = fnn.Sequential(Reshape((1, 8, 8)), Conv2D(1, 3, (3, 2), stride=(1, 2), padding=1), Tanh(),
                           AvgPool2D(2, stride=1), MaxPool2D((2, 1)), Reshape((3, -1)),
                           Conv1D(3, 2, 2), MaxPool1D(2), AvgPool1D(1), Flatten(), backend="numpy")
    model.save(tmp_path / ("m" + ext))
    loaded = fnn.load(tmp_path / ("m" + ext))
    assert [type(l) for l in loaded.layers] == [type(l) for l in model.layers]
    assert [l.config() for l in loaded.layers] == [l.config() for l in model.layers]
    assert set(loaded.state_dict()) == {"1.weight", "1.bias", "6.weight", "6.bias"}
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


def test_cnn_learns_digits(backend, digits, one_blas_thread):
    """A two-conv CNN on the digits as 1x8x8 images reaches >= 97% test accuracy."""
    X, y, Xt, yt = digits
    trainer = fnn.Trainer(cnn(backend.name), "cross_entropy", fnn.optim.Adam(lr=1e-2))
    trainer.fit(X, y, epochs=15, batch_size=32, progress=False, callbacks=[LRDecay(0.85)])
    assert trainer.evaluate(Xt, yt)["accuracy"] >= 0.97
