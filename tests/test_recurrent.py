"""RNN, LSTM and GRU: gradient checks (BPTT), kernel parity, PyTorch agreement,
bidirectional and return_sequences variants, bad input, save/load, and the
digits read row by row as 8 steps of 8 features."""
import numpy as np
import pytest

import fastnn as fnn
from conftest import compiled_backends
from conftest import assert_close
from fastnn.layers import GRU, LSTM, RNN, Dense, Tanh
from seq_helpers import LRDecay, digits, gradcheck, one_blas_thread  # noqa: F401 (fixtures)

CELLS = {"RNN": RNN, "LSTM": LSTM, "GRU": GRU}
VARIANTS = [(False, False), (True, False), (False, True), (True, True)]   # (sequences, bidirectional)


def _ids(v):
    return f"{'seq' if v[0] else 'last'}-{'bi' if v[1] else 'uni'}"


# ------------------------------------------------------------ gradients
@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_gradients(backend, cell, variant):
    seqs, bi = variant
    gradcheck(backend, [CELLS[cell](3, 4, return_sequences=seqs, bidirectional=bi)], (2, 4, 3))


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_gradients_through_stacked_layers(backend, cell):
    """A sequence layer feeding a second one feeding a Dense: dx passes between them."""
    cls = CELLS[cell]
    gradcheck(backend, [cls(2, 3, return_sequences=True, bidirectional=True), Tanh(),
                        cls(6, 3), Dense(3, 2)], (2, 3, 2), seed=1)


@compiled_backends   # the reference against itself proves nothing
# ------------------------------------------------- kernels vs reference
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kernel", ["rnn", "lstm", "gru"])
def test_kernels_match_reference(backend, kernel, dtype):
    ref = fnn.get_backend("numpy")
    g = {"rnn": 1, "lstm": 4, "gru": 3}[kernel]
    rng = np.random.default_rng(0)
    n, t, f, h = 3, 7, 5, 6
    x = np.asfortranarray(rng.standard_normal((n, t, f)).astype(dtype))
    w = [rng.standard_normal(s).astype(dtype) * 0.5 for s in ((g * h, f), (g * h, h), (g * h,), (g * h,))]
    out, want = getattr(backend, kernel)(x, *w), getattr(ref, kernel)(x, *w)
    out, want = (out if isinstance(out, tuple) else (out,)), (want if isinstance(want, tuple) else (want,))
    for o, r in zip(out, want):
        assert o.dtype == np.dtype(dtype) and o.flags.c_contiguous
        assert_close(o, r, dtype)
    dh = rng.standard_normal((n, t, h)).astype(dtype)
    got = getattr(backend, kernel + "_backward")(dh, x, *out, w[0], w[1])
    for o, r in zip(got, getattr(ref, kernel + "_backward")(dh, x, *want, w[0], w[1])):
        assert o.dtype == np.dtype(dtype)
        assert_close(o, r, dtype, rtol=1e-3 if dtype == "float32" else None)
    assert getattr(backend, kernel + "_backward")(dh, x, *out, w[0], w[1], need_dx=False)[0] is None


# --------------------------------------------------------------- torch
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_matches_torch(backend, cell, variant, dtype):
    """Same weights as torch.nn.{RNN,LSTM,GRU}(batch_first=True): the same outputs
    (torch's output, or its h_n per direction) and the same gradients."""
    torch = pytest.importorskip("torch")
    seqs, bi = variant
    torch.manual_seed(0)
    tnet = getattr(torch.nn, cell)(5, 4, batch_first=True, bidirectional=bi).double()
    layer = CELLS[cell](5, 4, return_sequences=seqs, bidirectional=bi)
    model = fnn.Sequential(layer, backend=backend.name, dtype=dtype)
    for name in layer.params:
        tname = name.replace("_reverse", "") + "_l0" + ("_reverse" if name.endswith("_reverse") else "")
        layer.params[name][...] = getattr(tnet, tname).detach().numpy()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 6, 5))
    tx = torch.tensor(x, requires_grad=True)
    out, h_n = tnet(tx)
    h_n = h_n[0] if cell == "LSTM" else h_n
    ty = out if seqs else torch.cat(list(h_n), dim=1)     # (N, H * dirs), forward first
    y = model.forward(x)
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == "float64" else dict(rtol=1e-4, atol=1e-5)
    assert_close(y, ty.detach().numpy(), dtype, **tol)
    dy = rng.standard_normal(y.shape)
    ty.backward(torch.tensor(dy))
    model.zero_grad()
    dx = model.backward(dy.astype(dtype), return_input_grad=True)
    assert_close(dx, tx.grad.numpy(), dtype, **tol)
    for name in layer.params:
        tname = name.replace("_reverse", "") + "_l0" + ("_reverse" if name.endswith("_reverse") else "")
        assert_close(layer.grads[name], getattr(tnet, tname).grad.numpy(), dtype, **tol)


def test_parameter_names_shapes_and_init():
    layer = LSTM(5, 4, bidirectional=True)
    fnn.Sequential(layer, backend="numpy", seed=0)
    assert {k: v.shape for k, v in layer.params.items()} == {
        "weight_ih": (16, 5), "weight_hh": (16, 4), "bias_ih": (16,), "bias_hh": (16,),
        "weight_ih_reverse": (16, 5), "weight_hh_reverse": (16, 4),
        "bias_ih_reverse": (16,), "bias_hh_reverse": (16,)}
    for values in layer.params.values():   # torch's default: U(-1/sqrt(H), 1/sqrt(H))
        assert 0.4 < np.abs(values).max() <= 0.5


def test_output_shapes():
    for seqs, bi in VARIANTS:
        want = ((7, 6 * (1 + bi)) if seqs else (6 * (1 + bi),))
        assert GRU(3, 6, return_sequences=seqs, bidirectional=bi).output_shape((7, 3)) == want


# ------------------------------------------------------------ bad input
@pytest.mark.parametrize("make,words", [
    (lambda: RNN(8, 0), "hidden_size must be a positive integer, got 0"),
    (lambda: LSTM(0, 4), "input_size must be a positive integer"),
    (lambda: GRU(8, -2), "hidden_size must be a positive integer"),
    (lambda: GRU(8, 2.5), "hidden_size must be a positive integer"),
])
def test_bad_constructor_arguments(make, words):
    with pytest.raises(ValueError, match=words):
        make()


@pytest.mark.parametrize("x_shape,words", [
    ((4, 8), r"expects inputs of shape \(batch, time, 8\)"),
    ((4, 5, 7), r"expects inputs of shape \(batch, time, 8\), got \(batch, 5, 7\)"),
    ((4, 5, 8, 1), r"expects inputs of shape \(batch, time, 8\)"),
    ((4, 0, 8), "zero-length sequence"),
])
def test_model_rejects_bad_shapes(backend, x_shape, words):
    model = fnn.Sequential(LSTM(8, 4), backend=backend.name)
    with pytest.raises(ValueError, match=words):
        model.predict(np.zeros(x_shape))


def test_zero_length_sequence_in_output_shape():
    with pytest.raises(ValueError, match="zero-length sequence"):
        GRU(8, 4).output_shape((0, 8))


W = {"rnn": 1, "lstm": 4, "gru": 3}


def _weights(kernel, f=3, h=2):
    g = W[kernel]
    return [np.zeros((g * h, f)), np.zeros((g * h, h)), np.zeros(g * h), np.zeros(g * h)]


@pytest.mark.parametrize("kernel", sorted(W))
def test_kernels_reject_bad_input(backend, kernel):
    run = getattr(backend, kernel)
    with pytest.raises(ValueError, match="zero-length sequence"):
        run(np.zeros((2, 0, 3)), *_weights(kernel))
    with pytest.raises(ValueError, match=r"must be 3-D \(batch, time, features\)"):
        run(np.zeros((2, 3)), *_weights(kernel))
    with pytest.raises(ValueError, match="x has 4 features, w_ih expects 3"):
        run(np.zeros((2, 5, 4)), *_weights(kernel))
    w = _weights(kernel)
    w[1] = np.zeros((W[kernel] * 2 + 1, 2))
    with pytest.raises(ValueError, match="hidden_size"):
        run(np.zeros((2, 5, 3)), *w)
    w = _weights(kernel)
    w[3] = np.zeros(5)
    with pytest.raises(ValueError, match="b_hh has shape"):
        run(np.zeros((2, 5, 3)), *w)
    with pytest.raises(TypeError, match="real numbers"):
        run(np.zeros((2, 5, 3), dtype=complex), *_weights(kernel))
    x = np.zeros((2, 5, 3))
    out = run(x, *_weights(kernel))
    saved = out if isinstance(out, tuple) else (out,)
    backward = getattr(backend, kernel + "_backward")
    with pytest.raises(ValueError, match=r"argument 0 has shape \(2, 4, 2\)"):
        backward(np.zeros((2, 4, 2)), x, *saved, *_weights(kernel)[:2])
    with pytest.raises(TypeError, match="saved arrays"):
        backward(np.zeros((2, 5, 2)), x, *_weights(kernel)[:2])


# ------------------------------------------------------ save and training
@pytest.mark.parametrize("ext", [".safetensors", ".npz"])
def test_save_and_load(tmp_path, ext):
    X = np.random.default_rng(0).random((4, 5, 3))
    model = fnn.Sequential(GRU(3, 4, return_sequences=True, bidirectional=True), LSTM(8, 3),
                           Dense(3, 2), backend="numpy", seed=1)
    model.save(tmp_path / ("m" + ext))
    loaded = fnn.load(tmp_path / ("m" + ext))
    assert [l.config() for l in loaded.layers] == [l.config() for l in model.layers]
    assert "0.weight_hh_reverse" in loaded.state_dict()
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_learns_digits_row_by_row(backend, cell, digits, one_blas_thread):
    """The digits as 8 time steps of 8 pixels each: >= 95% test accuracy."""
    X, y, Xt, yt = (a.reshape(-1, 8, 8) if a.ndim == 2 else a for a in digits)
    model = fnn.Sequential(CELLS[cell](8, 64), Dense(64, 10), backend=backend.name, seed=0)
    trainer = fnn.Trainer(model, "cross_entropy", fnn.optim.Adam(lr=1e-2))
    trainer.fit(X, y, epochs=15, batch_size=32, progress=False, callbacks=[LRDecay(0.85)])
    assert trainer.evaluate(Xt, yt)["accuracy"] >= 0.95
