"""The issue-10 activations on the cuda backend (Numba's CUDA simulator where there is no GPU):
kernels against the reference, torch agreement and central-difference gradients at tiny sizes."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn._kernels import reference as ref
from acts_helpers import forward_backward, gradcheck_model, to_host
from conftest import assert_close
from test_cuda import BE, K
from test_activations_more import CASES, _x

from test_activations_more import KERNELS  # noqa: E402


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("name", KERNELS)
def test_kernel_and_backward_match_reference(dtype, name):
    rng = np.random.default_rng(5)
    x = _x(rng, (3, 7)).astype(dtype)
    dy = rng.standard_normal((3, 7)).astype(dtype)
    y = ref.__dict__[name](x.astype(np.float64))
    tol = (2e-4, 1e-5) if dtype == np.float32 else (1e-10, 1e-12)
    assert_close(getattr(K, name)(x), y, dtype, *tol)
    assert_close(getattr(K, name + "_backward")(dy, x, y.astype(dtype)),
                 getattr(ref, name + "_backward")(dy.astype(np.float64), x.astype(np.float64), y), dtype, *tol)


@pytest.mark.parametrize("make,make_torch,name", CASES, ids=[c[2] for c in CASES])
def test_matches_torch_and_central_differences(make, make_torch, name):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    x, probe = _x(rng, (2, 6)), rng.standard_normal((2, 6))
    model = fnn.Sequential(make(), backend=BE, dtype="float64", seed=0)
    y, dx, _ = forward_backward(model, x, probe)
    xt = torch.tensor(x, requires_grad=True)
    yt = make_torch(torch.nn)(xt)
    yt.backward(torch.tensor(probe))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-12)
    dense = fnn.Sequential(fnn.layers.Dense(3, 2), make(), backend=BE, dtype="float64", seed=1)
    gradcheck_model(dense, rng.standard_normal((2, 3)), rng.standard_normal((2, 2)))


# ----------------------------------------------------------------- dropout

def test_dropout_same_masks_as_numpy_and_gradients():
    from test_dropout_embedding import _two_dropouts
    rng = np.random.default_rng(7)
    x, probe = rng.standard_normal((3, 6)), rng.standard_normal((3, 6))
    gpu, cpu = _two_dropouts(BE, seed=2, p=0.4), _two_dropouts("numpy", seed=2, p=0.4)
    for _ in range(2):                                     # two steps: new masks, the same on both
        got, want = forward_backward(gpu, x, probe), forward_backward(cpu, x, probe)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-12, atol=1e-14)
    layers = [gpu.layers[0], gpu.layers[2]]

    def rewind():
        for layer in layers:
            layer.calls = 0
    gradcheck_model(gpu, x, probe, before=rewind)
    gpu.eval()
    np.testing.assert_allclose(to_host(gpu.forward(x)), cpu.predict(x), rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------- embedding

def test_embedding_matches_torch_and_central_differences():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    idx = np.array([[3, 3, 0], [6, 3, 1]])                  # repeats and the padding row (3)
    probe = rng.standard_normal((2, 3, 2))
    tm = torch.nn.Sequential(torch.nn.Embedding(7, 4, padding_idx=3), torch.nn.Linear(4, 2)).double()
    model = fnn.Sequential(fnn.layers.Embedding(7, 4, padding_idx=3), fnn.layers.Dense(4, 2),
                           backend=BE, dtype="float64", seed=0)
    model.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    y, dx, grads = forward_backward(model, idx, probe)
    yt = tm(torch.tensor(idx))
    yt.backward(torch.tensor(probe))
    assert dx is None
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-9, atol=1e-12)
    for k, p in tm.named_parameters():
        np.testing.assert_allclose(grads[k], p.grad.numpy(), rtol=1e-9, atol=1e-12)
    plain = fnn.Sequential(fnn.layers.Embedding(5, 2), fnn.layers.Dense(2, 2), backend=BE, dtype="float64", seed=1)
    gradcheck_model(plain, np.array([[0, 4, 4], [2, 0, 1]]), rng.standard_normal((2, 3, 2)), input_grad=False)


# ------------------------------------------- conv padding='same', Dense on any rank

def test_conv_same_even_kernel_and_dense_3d_like_numpy():
    rng = np.random.default_rng(9)
    x, probe = rng.standard_normal((1, 2, 4, 3)), rng.standard_normal((1, 2, 4, 3))
    make = lambda be: fnn.Sequential(fnn.layers.Conv2D(2, 2, (2, 3), padding="same"), backend=be,
                                     dtype="float64", seed=0)
    gpu, cpu = make(BE), make("numpy")
    for got, want in zip(forward_backward(gpu, x, probe), forward_backward(cpu, x, probe)):
        if isinstance(want, dict):
            for k in want:
                np.testing.assert_allclose(got[k], want[k], rtol=1e-9, atol=1e-12)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    x3, p3 = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 2))
    dense = lambda be: fnn.Sequential(fnn.layers.Dense(4, 2), fnn.layers.ReLU(), backend=be, dtype="float64", seed=0)
    for got, want in zip(forward_backward(dense(BE), x3, p3), forward_backward(dense("numpy"), x3, p3)):
        if isinstance(want, dict):
            for k in want:
                np.testing.assert_allclose(got[k], want[k], rtol=1e-9, atol=1e-12)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
