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


# --------------------------------------------------------------- embedding


def _embedding_model(backend, padding_idx=None, dtype="float64"):
    return fnn.Sequential(L.Embedding(11, 5, padding_idx=padding_idx), L.Dense(5, 3),
                          backend=backend, dtype=dtype, seed=0)


@pytest.mark.parametrize("padding_idx", [None, 3, -1])
def test_embedding_matches_torch(backend, padding_idx):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    idx = rng.integers(0, 11, (4, 6))
    idx[0, :3] = [3, 3, 10]                                # repeats and the padding row
    probe = rng.standard_normal((4, 6, 3))
    tm = torch.nn.Sequential(torch.nn.Embedding(11, 5, padding_idx=padding_idx), torch.nn.Linear(5, 3)).double()
    model = _embedding_model(backend.name, padding_idx)
    model.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    for mode in ("train", "eval"):
        getattr(model, mode)()
        tm.zero_grad()
        y, dx, grads = forward_backward(model, idx, probe)
        assert dx is None                                   # indices have no gradient
        yt = tm(torch.tensor(idx))
        yt.backward(torch.tensor(probe))
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-9, atol=1e-12)
        for k, p in tm.named_parameters():
            np.testing.assert_allclose(grads[k], p.grad.numpy(), rtol=1e-9, atol=1e-12)
    if padding_idx is not None:
        assert np.all(grads["0.weight"][padding_idx % 11] == 0)


def test_embedding_backward_adds_repeated_rows(backend):
    model = fnn.Sequential(L.Embedding(4, 2, padding_idx=0), backend=backend.name, dtype="float64", seed=0)
    idx = np.array([[1, 1, 1, 0, 2]])
    dy = np.arange(10, dtype=np.float64).reshape(1, 5, 2)
    _, _, grads = forward_backward(model, idx, dy)
    np.testing.assert_array_equal(grads["0.weight"], [[0, 0], [0 + 2 + 4, 1 + 3 + 5], [8, 9], [0, 0]])
    # a second backward adds on top (gradients accumulate until zero_grad)
    model.forward(idx)
    model.backward(dy)
    np.testing.assert_array_equal(to_host(model.parameters()[0].grad)[1], [12, 18])


def test_embedding_init_like_torch():
    layer = L.Embedding(2000, 50, padding_idx=7)
    fnn.Sequential(layer, backend="numpy", dtype="float64", seed=0)
    w = layer.params["weight"]
    assert w.shape == (2000, 50) and np.all(w[7] == 0)
    assert abs(w.mean()) < 0.01 and abs(w.std() - 1.0) < 0.01
    assert list(fnn.Sequential(L.Embedding(3, 2), backend="numpy").state_dict()) == ["0.weight"]


def test_embedding_gradients_central_differences(backend):
    rng = np.random.default_rng(9)
    # no padding_idx: its row gets no gradient by design (torch's), unlike the true derivative
    model = fnn.Sequential(L.Embedding(6, 3), L.Dense(3, 2), L.Tanh(),
                           backend=backend.name, dtype="float64", seed=2)
    idx = np.array([[0, 1, 5], [5, 5, 2]])
    gradcheck_model(model, idx, rng.standard_normal((2, 3, 2)), input_grad=False)


def test_embedding_in_a_graph_model_and_any_index_shape(backend):
    inp = fnn.Input((2, 3))
    out = L.Dense(4, 2)(L.Embedding(9, 4)(inp))
    model = fnn.Model(inputs=inp, outputs=out, backend=backend.name, dtype="float32", seed=0)
    idx = np.random.default_rng(1).integers(0, 9, (5, 2, 3)).astype(np.int32)
    y = model.predict(idx)
    assert y.shape == (5, 2, 3, 2) and y.dtype == np.float32
    flat = fnn.Sequential(L.Embedding(9, 4), backend=backend.name, dtype="float32", seed=0)
    assert flat.predict(np.array([1, 2, 8])).shape == (3, 4)   # (batch,) indices


def test_embedding_model_trains_on_integer_inputs():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 8, (64, 1))
    y = X[:, 0] % 2                                         # parity of the token
    model = fnn.Sequential(L.Embedding(8, 4), L.Flatten(), L.Dense(4, 2), backend="numpy", seed=0)
    fnn.Trainer(model, loss="cross_entropy", optimizer=fnn.optim.Adam(lr=0.05), seed=0).fit(
        X, y, epochs=30, batch_size=16, progress=False)
    assert (model.predict(X).argmax(axis=1) == y).mean() == 1.0


def test_embedding_save_load(tmp_path):
    model = _embedding_model("numpy", padding_idx=4)
    model.save(tmp_path / "m.npz")
    again = fnn.load(tmp_path / "m.npz")
    idx = np.array([[4, 0, 10]])
    np.testing.assert_array_equal(again.predict(idx), model.predict(idx))
    assert again.layers[0].config() == {"num_embeddings": 11, "embedding_dim": 5, "padding_idx": 4}


def test_embedding_bad_input():
    model = _embedding_model("numpy")
    for bad, err, match in ((np.array([[0.0, 1.0]]), TypeError, "integer"),
                            (np.array([[0.0, 1.0]]), ValueError, "integer"),
                            (np.array([[0, 11]]), IndexError, r"\[0, 11\)"),
                            (np.array([[-1, 2]]), IndexError, r"\[0, 11\)"),
                            (np.array([[True, False]]), TypeError, "integer"),
                            (np.zeros((0, 3), np.int64), ValueError, "empty")):
        with pytest.raises(err, match=match):
            model.predict(bad)
        with pytest.raises(err, match=match):
            model.forward(bad)
    for args in ((0, 3), (3, 0), (3.5, 2), (3, 2, 3), (3, 2, -4), (3, 2, 1.0)):
        with pytest.raises(ValueError):
            L.Embedding(*args)
    inp = fnn.Input((3,))
    with pytest.raises(TypeError, match="separate inputs"):
        fnn.Model(inputs=inp, outputs=[L.Embedding(5, 3)(inp), L.Dense(3, 3)(inp)], backend="numpy")
    be = fnn.get_backend("numpy")
    with pytest.raises(IndexError, match="embedding"):
        be.embedding(np.ones((3, 2)), np.array([3]))
    with pytest.raises(ValueError, match="padding_idx"):
        be.embedding_backward_into(np.ones((1, 2)), np.array([0]), np.zeros((3, 2)), 3)
    # float models still reject what they rejected
    dense = fnn.Sequential(L.Dense(2, 2), backend="numpy", dtype="float64")
    with pytest.raises(ValueError, match="NaN"):
        dense.predict(np.array([[np.nan, 1.0]]))
    with pytest.raises(TypeError):
        dense.predict(np.array([[True, False]]))
