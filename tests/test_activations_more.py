"""GELU (exact and tanh), SiLU, ELU, Softplus: torch agreement in float64 (forward and backward),
central-difference gradients on every backend, the shared erf's accuracy, save/load, bad arguments."""
import math

import numpy as np
import pytest

import fastnn as fnn
from fastnn._kernels import reference as ref
from acts_helpers import forward_backward, gradcheck_model

L = fnn.layers

# (layer factory, torch module factory, id)
CASES = [
    (lambda: L.GELU(), lambda nn: nn.GELU(), "gelu"),
    (lambda: L.GELU(approximate="tanh"), lambda nn: nn.GELU(approximate="tanh"), "gelu_tanh"),
    (lambda: L.SiLU(), lambda nn: nn.SiLU(), "silu"),
    (lambda: L.ELU(), lambda nn: nn.ELU(), "elu"),
    (lambda: L.ELU(alpha=0.3), lambda nn: nn.ELU(alpha=0.3), "elu_0.3"),
    (lambda: L.Softplus(), lambda nn: nn.Softplus(), "softplus"),
    (lambda: L.Softplus(beta=2.0, threshold=5.0), lambda nn: nn.Softplus(beta=2.0, threshold=5.0), "softplus_2_5"),
]
KERNELS = ("gelu", "gelu_tanh", "silu", "elu", "softplus")


def _x(rng, shape=(6, 9)):
    x = rng.standard_normal(shape) * 3
    x.flat[:6] = [0.0, 0.84375, -1.25, 1 / 0.35, -6.0, 30.0]   # erf's piece boundaries, saturation
    return x


def test_erf_matches_libm():
    x = np.concatenate([np.linspace(-8, 8, 40001), [0.0, -0.0, 1e-300, 0.84375, 1.25, 1 / 0.35, 6.0,
                                                     np.inf, -np.inf]])
    want = np.array([math.erf(v) for v in x])
    assert np.max(np.abs(ref.erf(x) - want)) <= 4e-16
    assert np.isnan(ref.erf(np.array([np.nan]))[0])


@pytest.mark.parametrize("make,make_torch,name", CASES, ids=[c[2] for c in CASES])
def test_matches_torch_forward_backward(backend, make, make_torch, name):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x, probe = _x(rng), rng.standard_normal((6, 9))
    model = fnn.Sequential(make(), backend=backend.name, dtype="float64", seed=0)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        y, dx, _ = forward_backward(model, x, probe)
        xt = torch.tensor(x, requires_grad=True)
        yt = make_torch(torch.nn)(xt)
        yt.backward(torch.tensor(probe))
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("make,make_torch,name", CASES, ids=[c[2] for c in CASES])
def test_dense_then_activation_3d_matches_torch(backend, make, make_torch, name):
    """Dense + the activation on (N, T, F) input, parameters loaded from torch's state_dict."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x, probe = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 4, 6))
    tm = torch.nn.Sequential(torch.nn.Linear(5, 6), make_torch(torch.nn)).double()
    model = fnn.Sequential(L.Dense(5, 6), make(), backend=backend.name, dtype="float64", seed=0)
    model.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    y, dx, grads = forward_backward(model, x, probe)
    xt = torch.tensor(x, requires_grad=True)
    yt = tm(xt)
    yt.backward(torch.tensor(probe))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-12)
    for k, p in tm.named_parameters():
        np.testing.assert_allclose(grads[k], p.grad.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("make,make_torch,name", CASES, ids=[c[2] for c in CASES])
def test_gradients_central_differences(backend, make, make_torch, name):
    rng = np.random.default_rng(2)
    model = fnn.Sequential(L.Dense(5, 4), make(), backend=backend.name, dtype="float64", seed=1)
    gradcheck_model(model, rng.standard_normal((3, 5)) * 2, rng.standard_normal((3, 4)))


@pytest.mark.parametrize("make,make_torch,name", CASES, ids=[c[2] for c in CASES])
def test_save_load_roundtrip(tmp_path, make, make_torch, name):
    model = fnn.Sequential(L.Dense(4, 3), make(), backend="numpy", dtype="float64", seed=0)
    x = np.random.default_rng(3).standard_normal((2, 4))
    model.save(tmp_path / "m.npz")
    again = fnn.load(tmp_path / "m.npz")
    assert repr(again.layers[1]) == repr(model.layers[1])
    np.testing.assert_array_equal(again.predict(x), model.predict(x))


@pytest.mark.parametrize("backend_name", fnn.backends())
def test_float32_close_to_float64(backend_name):
    x = _x(np.random.default_rng(4)).astype(np.float32)
    be = fnn.get_backend(backend_name)
    for name in KERNELS:
        got = getattr(be, name)(x)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, getattr(ref, name)(x.astype(np.float64)), rtol=1e-5, atol=1e-6)


def test_bad_arguments():
    for bad in ("exact", None, "Tanh", 1):
        with pytest.raises(ValueError, match="approximate"):
            L.GELU(approximate=bad)
    for bad in (0.0, -1.0, float("nan"), "1", None):
        with pytest.raises(ValueError, match="beta"):
            L.Softplus(beta=bad)
    for bad in (float("inf"), "x", None):
        with pytest.raises(ValueError, match="threshold"):
            L.Softplus(threshold=bad)
        with pytest.raises(ValueError, match="alpha"):
            L.ELU(alpha=bad)
    model = fnn.Sequential(L.GELU(), backend="numpy", dtype="float64")
    with pytest.raises(ValueError, match="NaN"):
        model.predict(np.array([[np.nan, 1.0]]))


def test_small_inputs_keep_relative_accuracy(backend):
    """ELU's exp(x) - 1 and Softplus's log1p near 0 keep full relative precision."""
    x = np.array([[-1e-9, -3e-5, -0.2, -0.3, 1e-9]])
    got = backend.elu(x)
    np.testing.assert_allclose(got, np.where(x > 0, x, np.expm1(x)), rtol=1e-14, atol=0)
    np.testing.assert_allclose(backend.softplus(x, 1.0, 20.0), np.log1p(np.exp(x)), rtol=1e-14)
