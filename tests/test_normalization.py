"""LayerNorm, BatchNorm1D/2D and GlobalAvgPool1D/2D: PyTorch agreement in float64 (forward,
dx, dweight, dbias, running buffers over several training steps, train and eval mode),
torch state_dict loading, central-difference gradient checks, save/load with buffers and
bad input, on every backend (the cuda simulator: tests/test_cuda_normalization.py)."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn.layers import (BatchNorm1D, BatchNorm2D, Conv2D, Dense, Flatten, GlobalAvgPool1D,
                           GlobalAvgPool2D, LayerNorm, ReLU)
from conftest import assert_close
from seq_helpers import gradcheck

TOL = dict(rtol=1e-9, atol=1e-9)


def _close(got, want):
    assert_close(np.asarray(got), np.asarray(want), np.float64, **TOL)


def _torch():
    return pytest.importorskip("torch")


def _randomize(module, rng):
    """Random affine parameters for a torch module (the defaults are ones and zeros)."""
    torch = _torch()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.from_numpy(rng.standard_normal(tuple(p.shape))))


def _from_torch(module):
    return {f"0.{k}": v.detach().numpy() for k, v in module.state_dict().items()}


def _step(model, tmod, x, dy, training=True):
    """One forward + backward in both; compares y, dx and every parameter gradient."""
    torch = _torch()
    tmod.train(training)
    model.train(training)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = tmod(xt)
    yt.backward(torch.from_numpy(dy))
    y = model.forward(x)
    model.zero_grad()
    dx = model.backward(dy, return_input_grad=True)
    _close(y, yt.detach().numpy())
    _close(dx, xt.grad.numpy())
    for p in model.parameters():
        tp = dict(tmod.named_parameters())[p.name.split(".", 1)[1]]
        _close(p.grad, tp.grad.numpy())
        tp.grad = None


# ---------------------------------------------------------------- LayerNorm

LN_CASES = {"last-axis": ((4, 5, 8), 8, {}), "two-axes": ((3, 2, 3, 4), (3, 4), {}),
            "2-D": ((6, 16), 16, {}), "no-affine": ((4, 7), 7, {"elementwise_affine": False}),
            "no-bias": ((4, 3, 5), 5, {"bias": False}), "eps": ((5, 6), 6, {"eps": 1e-2})}


@pytest.mark.parametrize("case", sorted(LN_CASES))
def test_layer_norm_matches_torch(backend, case):
    torch = _torch()
    shape, ns, kw = LN_CASES[case]
    rng = np.random.default_rng(1)
    tmod = torch.nn.LayerNorm(ns, dtype=torch.float64, **kw)
    _randomize(tmod, rng)
    model = fnn.Sequential(LayerNorm(ns, **kw), backend=backend.name, dtype="float64")
    model.load_state_dict(_from_torch(tmod))
    for training in (True, False):
        x = rng.standard_normal(shape) * 3 + 2
        _step(model, tmod, x, rng.standard_normal(shape), training)


def test_layer_norm_large_offset_is_stable(backend):
    """The one-sweep statistics do not cancel when the mean dwarfs the spread."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 64)) * 1e-3 + 1e4
    model = fnn.Sequential(LayerNorm(64), backend=backend.name, dtype="float64")
    y = model.predict(x)
    xc = x - x.mean(axis=1, keepdims=True)
    want = xc / np.sqrt((xc * xc).mean(axis=1, keepdims=True) + 1e-5)
    assert_close(y, want, np.float64, rtol=1e-6, atol=1e-6)


def test_layer_norm_float32_close_to_float64(backend):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((32, 64)).astype(np.float32)
    m32 = fnn.Sequential(LayerNorm(64), backend=backend.name, dtype="float32")
    m64 = fnn.Sequential(LayerNorm(64), backend=backend.name, dtype="float64")
    assert_close(m32.predict(x), m64.predict(x.astype(np.float64)), np.float32, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- BatchNorm

BN_CASES = {"1d-NC": (BatchNorm1D, "BatchNorm1d", (8, 5), {}),
            "1d-NCL": (BatchNorm1D, "BatchNorm1d", (4, 3, 7), {}),
            "2d": (BatchNorm2D, "BatchNorm2d", (3, 4, 5, 6), {}),
            "2d-momentum": (BatchNorm2D, "BatchNorm2d", (2, 3, 4, 4), {"momentum": 0.3, "eps": 1e-3}),
            "1d-cumulative": (BatchNorm1D, "BatchNorm1d", (6, 4), {"momentum": None})}


@pytest.mark.parametrize("case", sorted(BN_CASES))
def test_batch_norm_matches_torch(backend, case):
    """Several training steps (batch statistics, running buffers), then eval mode
    (running statistics), forward and backward; torch's state_dict loads unchanged."""
    torch = _torch()
    cls, tname, shape, kw = BN_CASES[case]
    rng = np.random.default_rng(4)
    tmod = getattr(torch.nn, tname)(shape[1], dtype=torch.float64, **kw)
    _randomize(tmod, rng)
    with torch.no_grad():
        tmod.running_mean.copy_(torch.from_numpy(rng.standard_normal(shape[1])))
        tmod.running_var.copy_(torch.from_numpy(rng.random(shape[1]) + 0.5))
        tmod.num_batches_tracked.fill_(3)
    model = fnn.Sequential(cls(shape[1], **kw), backend=backend.name, dtype="float64")
    sd = {f"0.{k}": v for k, v in tmod.state_dict().items()}   # torch tensors, int64 counter included
    assert set(sd) == set(model.state_dict())
    model.load_state_dict(sd)
    for _ in range(3):
        x = rng.standard_normal(shape) * 2 + 1.5
        _step(model, tmod, x, rng.standard_normal(shape), training=True)
        for name, want in tmod.state_dict().items():
            _close(model.state_dict()[f"0.{name}"], want.numpy())
    assert float(model.state_dict()["0.num_batches_tracked"]) == 6
    for _ in range(2):
        _step(model, tmod, rng.standard_normal(shape), rng.standard_normal(shape), training=False)
    for name, want in tmod.state_dict().items():   # eval leaves the buffers alone
        _close(model.state_dict()[f"0.{name}"], want.numpy())
    _close(model.predict(x), tmod.eval()(torch.from_numpy(x)).detach().numpy())


def test_batch_norm_state_dict_loads_into_torch(backend):
    torch = _torch()
    rng = np.random.default_rng(5)
    model = fnn.Sequential(Conv2D(2, 3, 3), BatchNorm2D(3), backend=backend.name, dtype="float64", seed=1)
    for _ in range(2):
        model.forward(rng.standard_normal((4, 2, 6, 6)))
    tmod = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3)).double()
    tmod.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in model.state_dict().items()})
    assert int(tmod[1].num_batches_tracked) == 2
    x = rng.standard_normal((3, 2, 6, 6))
    _close(model.eval().predict(x), tmod.eval()(torch.from_numpy(x)).detach().numpy())


def test_batch_norm_cnn_trains_like_torch(backend):
    """Conv2D -> BatchNorm2D -> ReLU -> GlobalAvgPool2D -> Dense, SGD, several steps:
    the same weights, buffers and losses as torch."""
    torch = _torch()
    rng = np.random.default_rng(6)
    model = fnn.Sequential(Conv2D(1, 4, 3, padding=1), BatchNorm2D(4), ReLU(), GlobalAvgPool2D(),
                           Dense(4, 3), backend=backend.name, dtype="float64", seed=2)
    tmod = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3)).double()
    sd = model.state_dict()
    tmod.load_state_dict({k.replace("4.", "5."): torch.from_numpy(v) for k, v in sd.items()})
    opt = torch.optim.SGD(tmod.parameters(), lr=0.1, momentum=0.9)
    fopt = fnn.optim.SGD(lr=0.1, momentum=0.9)
    for _ in range(4):
        x, y = rng.standard_normal((8, 1, 6, 6)), rng.integers(0, 3, 8)
        loss, grad = fnn.losses.cross_entropy(model.forward(x), y)
        model.zero_grad()
        model.backward(grad)
        fopt.step(model.parameters())
        opt.zero_grad()
        tloss = torch.nn.functional.cross_entropy(tmod(torch.from_numpy(x)), torch.from_numpy(y))
        tloss.backward()
        opt.step()
        assert abs(loss - tloss.item()) < 1e-9
    for k, v in model.state_dict().items():
        _close(v, tmod.state_dict()[k.replace("4.", "5.")].numpy())


# -------------------------------------------------------------- global pools


@pytest.mark.parametrize("layer,shape", [(GlobalAvgPool1D, (3, 4, 7)), (GlobalAvgPool2D, (2, 5, 3, 4))])
def test_global_avgpool_matches_torch(backend, layer, shape):
    torch = _torch()
    rng = np.random.default_rng(7)
    x, dy = rng.standard_normal(shape), rng.standard_normal(shape[:2])
    model = fnn.Sequential(layer(), backend=backend.name, dtype="float64")
    y = model.forward(x)
    dx = model.backward(dy, return_input_grad=True)
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = xt.mean(dim=tuple(range(2, len(shape))))
    yt.backward(torch.from_numpy(dy))
    _close(y, yt.detach().numpy())
    _close(dx, xt.grad.numpy())
    assert model.output_shape(shape[1:]) == shape[1:2]


# ------------------------------------------------------------ gradient checks

GRAD_CASES = {
    "layer_norm": (lambda: [Dense(5, 6), LayerNorm(6)], (4, 5)),
    "layer_norm_3d": (lambda: [LayerNorm((2, 3))], (3, 2, 3)),
    "layer_norm_no_affine": (lambda: [LayerNorm(4, elementwise_affine=False), Dense(4, 2)], (3, 4)),
    "batch_norm1d": (lambda: [Dense(3, 4), BatchNorm1D(4)], (5, 3)),
    "batch_norm1d_ncl": (lambda: [BatchNorm1D(3)], (2, 3, 4)),
    "batch_norm2d": (lambda: [Conv2D(2, 3, 2), BatchNorm2D(3), ReLU(), Flatten(), Dense(12, 2)], (3, 2, 3, 3)),
    "global_avgpool1d": (lambda: [GlobalAvgPool1D(), Dense(3, 2)], (2, 3, 5)),
    "global_avgpool2d": (lambda: [Conv2D(1, 2, 2), GlobalAvgPool2D()], (2, 1, 4, 3)),
}


@pytest.mark.parametrize("name", sorted(GRAD_CASES))
def test_gradients_by_central_differences(backend, name):
    """In training mode (BatchNorm: the batch statistics), parameters and input."""
    layers, shape = GRAD_CASES[name]
    gradcheck(backend, layers(), shape, seed=3)


def test_batch_norm_eval_gradients(backend):
    """In eval mode the statistics are constants: dx = dy * weight / sqrt(running_var + eps)."""
    rng = np.random.default_rng(8)
    model = fnn.Sequential(BatchNorm2D(2), backend=backend.name, dtype="float64")
    model.load_state_dict({"0.weight": rng.standard_normal(2), "0.bias": rng.standard_normal(2),
                           "0.running_mean": rng.standard_normal(2), "0.running_var": rng.random(2) + 0.5,
                           "0.num_batches_tracked": np.array(0)})
    model.eval()
    x, probe = rng.standard_normal((2, 2, 3, 3)), rng.standard_normal((2, 2, 3, 3))
    model.forward(x)
    model.zero_grad()
    dx = model.backward(probe, return_input_grad=True)
    sd = model.state_dict()
    _close(dx, probe * (sd["0.weight"] / np.sqrt(sd["0.running_var"] + 1e-5))[None, :, None, None])
    xhat = (x - sd["0.running_mean"][None, :, None, None]) / np.sqrt(sd["0.running_var"] + 1e-5)[None, :, None, None]
    grads = {p.name: p.grad for p in model.parameters()}
    _close(grads["0.weight"], (probe * xhat).sum(axis=(0, 2, 3)))
    _close(grads["0.bias"], probe.sum(axis=(0, 2, 3)))


# ------------------------------------------------------------ save and load


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_save_load_round_trip_keeps_buffers(backend, tmp_path, suffix):
    pytest.importorskip("safetensors") if suffix == ".safetensors" else None
    rng = np.random.default_rng(9)
    model = fnn.Sequential(Conv2D(1, 3, 3), BatchNorm2D(3, momentum=0.2), ReLU(), GlobalAvgPool2D(),
                           LayerNorm(3), Dense(3, 2), BatchNorm1D(2, momentum=None),
                           backend=backend.name, dtype="float64", seed=4)
    for _ in range(3):
        model.forward(rng.standard_normal((4, 1, 5, 5)))
    path = tmp_path / f"m{suffix}"
    model.save(str(path))
    loaded = fnn.load(str(path))
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[k], v)
    assert float(loaded.state_dict()["6.num_batches_tracked"]) == 3
    x = rng.standard_normal((3, 1, 5, 5))
    np.testing.assert_array_equal(loaded.eval().predict(x), model.eval().predict(x))
    assert loaded.layers[1].momentum == 0.2 and loaded.layers[6].momentum is None


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("make", [
    lambda: LayerNorm(0), lambda: LayerNorm(()), lambda: LayerNorm((3, "a")), lambda: LayerNorm(2.5),
    lambda: LayerNorm(4, eps=0), lambda: LayerNorm(4, eps=float("nan")),
    lambda: BatchNorm1D(0), lambda: BatchNorm2D(-2), lambda: BatchNorm2D(3, momentum=1.5),
    lambda: BatchNorm1D(3, eps=-1e-5), lambda: BatchNorm2D(3, momentum="0.1")])
def test_bad_arguments(make):
    with pytest.raises(ValueError):
        make()


def test_bad_input_shapes(backend):
    b = backend.name
    with pytest.raises(ValueError, match="BatchNorm2D"):
        fnn.Sequential(BatchNorm2D(3), backend=b).forward(np.zeros((2, 4, 3, 3), np.float32))
    with pytest.raises(ValueError, match="BatchNorm1D"):
        fnn.Sequential(BatchNorm1D(3), backend=b).forward(np.zeros((2, 3, 3, 3), np.float32))
    with pytest.raises(ValueError, match="LayerNorm"):
        fnn.Sequential(LayerNorm((2, 3)), backend=b).forward(np.zeros((2, 3, 2), np.float32))
    with pytest.raises(ValueError, match="GlobalAvgPool2D"):
        fnn.Sequential(GlobalAvgPool2D(), backend=b).forward(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        fnn.Sequential(BatchNorm1D(3), backend=b).forward(np.ones((1, 3), np.float32))
    model = fnn.Sequential(BatchNorm1D(3), backend=b).eval()   # eval takes a single sample
    assert model.predict(np.ones((1, 3), np.float32)).shape == (1, 3)
    with pytest.raises(ValueError, match="NaN"):
        fnn.Sequential(LayerNorm(3), backend=b).forward(np.array([[1.0, np.nan, 2.0]], np.float32))


def test_kernel_checks(backend):
    x = np.zeros((4, 3, 2))
    rm, rv = np.zeros(3), np.ones(3)
    with pytest.raises(ValueError, match="weight"):
        backend.batch_norm(x, np.ones(2), None, rm, rv)
    with pytest.raises(ValueError, match="running_mean"):
        backend.batch_norm(x, None, None, np.zeros(2), rv)
    with pytest.raises(TypeError, match="running_var"):
        backend.batch_norm(x, None, None, rm, np.ones(3, np.float32))
    with pytest.raises(ValueError, match="momentum"):
        backend.batch_norm(x, None, None, rm, rv, momentum=2.0)
    with pytest.raises(ValueError, match="more than 1 value"):
        backend.batch_norm(np.zeros((1, 3, 1)), None, None, rm, rv)
    with pytest.raises(ValueError, match="3-D"):
        backend.batch_norm(np.zeros((4, 3)), None, None, rm, rv)
    with pytest.raises(ValueError, match="eps"):
        backend.layer_norm(np.zeros((2, 3)), None, None, eps=0.0)
    with pytest.raises(ValueError, match="bias"):
        backend.layer_norm(np.zeros((2, 3)), None, np.zeros(4))
    with pytest.raises(ValueError, match="mean"):
        backend.layer_norm_backward(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros(3), np.ones(2), None)
    with pytest.raises(ValueError, match="dy"):
        backend.batch_norm_backward(np.zeros((4, 3, 1)), x, np.zeros(3), np.ones(3), None)
    with pytest.raises(ValueError, match="dy"):
        backend.global_avgpool_backward(np.zeros((4, 2)), x)
    with pytest.raises(TypeError):
        backend.global_avgpool(np.array([["a"]], dtype=object))
