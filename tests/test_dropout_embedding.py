"""Dropout and Embedding on every backend: masks from the model's seed (the same on every
backend), statistics, eval identity, torch agreement in float64, central-difference gradients
(Dropout's with its mask held fixed), save/load and bad input."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn._kernels import reference as ref
from acts_helpers import forward_backward, gradcheck_model, to_host

L = fnn.layers


def _masks(model, x, steps=2):
    """The mask of every Dropout call over a few training forwards."""
    out = []
    for _ in range(steps):
        y = to_host(model.forward(x))
        model.backward(np.ones_like(y))
        out.append(y != 0)
    return out


def _two_dropouts(backend, seed=0, p=0.5):
    return fnn.Sequential(L.Dropout(p), L.Dense(6, 6), L.Dropout(p), backend=backend, dtype="float64", seed=seed)


# ----------------------------------------------------------------- dropout


def test_dropout_masks_follow_the_seed(backend):
    x = np.ones((4, 6))
    a, b, c = (fnn.Sequential(L.Dropout(0.5), backend=backend.name, dtype="float64", seed=s) for s in (0, 0, 1))
    ma, mb, mc = _masks(a, x), _masks(b, x), _masks(c, x)
    assert all(np.array_equal(u, v) for u, v in zip(ma, mb))         # same seed, same masks
    assert not np.array_equal(ma[0], ma[1])                            # a new mask every step
    assert not np.array_equal(ma[0], mc[0])                            # another seed, another mask


def test_two_dropout_layers_draw_different_masks():
    model = fnn.Sequential(L.Dropout(0.5), L.Dropout(0.5), backend="numpy", dtype="float64", seed=0)
    first, second = model.layers
    assert first._key != second._key
    x = np.ones((8, 16))
    ctx1, ctx2 = L.Context(training=True), L.Context(training=True)
    first.forward(ctx1, x)
    second.forward(ctx2, x)
    assert not np.array_equal(ctx1.mask, ctx2.mask)


def test_every_backend_draws_the_same_masks():
    x = np.random.default_rng(0).standard_normal((5, 6))
    results = {}
    for name in fnn.backends():
        model = _two_dropouts(name)
        results[name] = [(to_host(model.forward(x)), model.layers[0].calls) for _ in range(3)]
    want = results["numpy"]
    for name, got in results.items():
        for (y, calls), (y0, calls0) in zip(got, want):
            assert calls == calls0
            np.testing.assert_allclose(y, y0, rtol=1e-12, atol=0)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_statistics(backend, p):
    model = fnn.Sequential(L.Dropout(p), backend=backend.name, dtype="float64", seed=3)
    x = np.ones((400, 500))
    y = to_host(model.forward(x))
    kept = (y != 0).mean()
    sd = np.sqrt(p * (1 - p) / x.size)
    assert abs(kept - (1 - p)) < 5 * sd
    assert abs(y.mean() - 1.0) < 5 * sd / (1 - p)          # inverted dropout keeps the mean
    assert np.allclose(y[y != 0], 1 / (1 - p))
    # float32 draws the same mask
    m32 = fnn.Sequential(L.Dropout(p), backend=backend.name, dtype="float32", seed=3)
    assert np.array_equal(to_host(m32.forward(x.astype(np.float32))) != 0, y != 0)


def test_dropout_is_identity_in_eval_and_at_p0(backend):
    x = np.random.default_rng(1).standard_normal((3, 7))
    model = fnn.Sequential(L.Dense(7, 7), L.Dropout(0.6), backend=backend.name, dtype="float64", seed=0)
    plain = fnn.Sequential(L.Dense(7, 7), backend=backend.name, dtype="float64", seed=0)
    np.testing.assert_array_equal(model.predict(x), plain.predict(x))
    model.eval()
    np.testing.assert_array_equal(to_host(model.forward(x)), plain.predict(x))
    assert model.layers[1].calls == 0                      # inference draws nothing
    zero = fnn.Sequential(L.Dropout(0.0), backend=backend.name, dtype="float64", seed=0)
    y, dx, _ = forward_backward(zero, x, x * 2)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(dx, x * 2)


def test_dropout_matches_torch_with_its_mask(backend):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x, probe, p = rng.standard_normal((4, 3, 5)), rng.standard_normal((4, 3, 5)), 0.3
    model = fnn.Sequential(L.Dropout(p), backend=backend.name, dtype="float64", seed=5)
    y, dx, _ = forward_backward(model, x, probe)
    mask = torch.tensor((y != 0).astype(np.float64))
    xt = torch.tensor(x, requires_grad=True)
    yt = xt * mask / (1 - p)                               # torch's dropout given this mask
    yt.backward(torch.tensor(probe))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=0)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12, atol=0)
    # and torch's own dropout keeps the same fraction on average
    kept = torch.nn.functional.dropout(torch.ones(200000, dtype=torch.float64), p).ne(0).double().mean()
    assert abs(float(kept) - (1 - p)) < 0.01


def test_dropout_gradients_with_a_fixed_mask(backend):
    rng = np.random.default_rng(3)
    model = _two_dropouts(backend.name, seed=4, p=0.4)
    layers = [model.layers[0], model.layers[2]]

    def rewind():                                          # the same stream seeds: the same masks
        for layer in layers:
            layer.calls = 0
    gradcheck_model(model, rng.standard_normal((3, 6)), rng.standard_normal((3, 6)), before=rewind)


def test_dropout_save_load_replays_masks(tmp_path):
    model = _two_dropouts("numpy", seed=7, p=0.25)
    model.save(tmp_path / "m.safetensors")
    again = fnn.load(tmp_path / "m.safetensors")
    assert [l.config() for l in again.layers] == [l.config() for l in model.layers]
    x = np.ones((3, 6))
    np.testing.assert_array_equal(to_host(again.forward(x)), to_host(model.forward(x)))


def test_dropout_bad_input():
    for bad in (1.0, 1.5, -0.1, float("nan"), "0.5", None, True):
        with pytest.raises(ValueError, match="Dropout p"):
            L.Dropout(bad)
    be = fnn.get_backend("numpy")
    x = np.ones((2, 3))
    for p in (1.0, -0.5):
        with pytest.raises(ValueError, match="p must be in"):
            be.dropout(x, p, 1)
    for seed in (-1, 2 ** 64, 1.5):
        with pytest.raises(ValueError, match="seed"):
            be.dropout(x, 0.5, seed)
    with pytest.raises(TypeError, match="mask"):
        be.dropout_backward(x, np.ones((2, 3)), 0.5)
    with pytest.raises(ValueError, match="same shape"):
        be.dropout_backward(x, np.ones((3, 2), np.uint8), 0.5)


def test_dropout_mask_is_in_ctx_not_on_the_layer():
    model = fnn.Sequential(L.Dropout(0.5), backend="numpy", dtype="float64", seed=0)
    layer = model.layers[0]
    ctx = L.Context(training=True)
    layer.forward(ctx, np.ones((2, 4)))
    assert ctx.mask.dtype == np.uint8 and ctx.mask.shape == (2, 4)
    assert not any(isinstance(v, np.ndarray) for v in vars(layer).values() if v is not None
                   and not isinstance(v, dict))
