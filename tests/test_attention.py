"""MultiHeadAttention and TransformerEncoderLayer: torch agreement in float64 (forward, dx and every
parameter gradient) for self-attention, causal, cross-attention and a key padding mask, central
differences, save/load, torch state_dict loading and bad input, on every backend (the cuda
simulator: tests/test_cuda_attention.py, which reuses the checks here at tiny sizes)."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn.layers import Dense, MultiHeadAttention
from acts_helpers import forward_backward, gradcheck_model, to_host
from conftest import assert_close

TOL = dict(rtol=1e-9, atol=1e-9)


def close(got, want):
    assert_close(to_host(got), np.asarray(want), np.float64, **TOL)


def _torch():
    return pytest.importorskip("torch")


def _randomize(module, rng):
    """Random torch parameters (torch's zero biases would hide a bias-gradient bug)."""
    torch = _torch()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.from_numpy(rng.standard_normal(tuple(p.shape)) * 0.5))


def _load(model, module, prefix="0"):
    model.load_state_dict({f"{prefix}.{k}": v.detach().numpy() for k, v in module.state_dict().items()})


def _check_grads(model, module, prefix="0"):
    tp = dict(module.named_parameters())
    names = {p.name for p in model.parameters()}
    assert names == {f"{prefix}.{k}" for k in tp}, names
    for p in model.parameters():
        close(p.grad, tp[p.name.split(".", 1)[1]].grad.numpy())


def _torch_mha(e, h, bias, rng):
    torch = _torch()
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(e, h, bias=bias, batch_first=True, dtype=torch.float64)
    _randomize(mha, rng)
    return mha


# ------------------------------------------------------------ self-attention

def check_self_attention(backend, n=3, l=5, e=8, h=2, causal=False, bias=True, seed=0):
    torch = _torch()
    rng = np.random.default_rng(seed)
    mha = _torch_mha(e, h, bias, rng)
    model = fnn.Sequential(MultiHeadAttention(e, h, causal=causal, bias=bias), backend=backend,
                           dtype="float64", seed=0)
    _load(model, mha)
    x, probe = rng.standard_normal((n, l, e)), rng.standard_normal((n, l, e))
    y, dx, _ = forward_backward(model, x, probe)
    xt = torch.tensor(x, requires_grad=True)
    mask = torch.triu(torch.ones(l, l, dtype=torch.bool), 1) if causal else None
    yt = mha(xt, xt, xt, need_weights=False, attn_mask=mask, is_causal=causal)[0]
    yt.backward(torch.tensor(probe))
    close(y, yt.detach().numpy())
    close(dx, xt.grad.numpy())
    _check_grads(model, mha)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_self_attention_matches_torch(backend, causal):
    check_self_attention(backend, causal=causal)


def test_self_attention_without_bias_and_one_head(backend):
    check_self_attention(backend, n=2, l=4, e=6, h=1, bias=False, seed=1)


# ----------------------------------------------------- cross-attention, mask

def _cross_model(backend, e, h, l, s, masked, causal=False):
    q, kv = fnn.Input((l, e)), fnn.Input((s, e))
    inputs = [q, kv] + ([fnn.Input((s,))] if masked else [])
    out = MultiHeadAttention(e, h, causal=causal)(inputs)
    return fnn.Model(inputs=inputs, outputs=out, backend=backend, dtype="float64", seed=0)


def check_cross_attention(backend, n=3, l=4, s=6, e=8, h=4, masked=False, causal=False, seed=2):
    torch = _torch()
    rng = np.random.default_rng(seed)
    mha = _torch_mha(e, h, True, rng)
    model = _cross_model(backend, e, h, l, s, masked, causal)
    _load(model, mha)
    q, kv, probe = rng.standard_normal((n, l, e)), rng.standard_normal((n, s, e)), rng.standard_normal((n, l, e))
    mask = rng.random((n, s)) < 0.4
    mask[:, 0] = False            # every query keeps a key: torch gives NaN for none
    xs = [q, kv] + ([mask.astype(np.float64)] if masked else [])
    y = model.forward(xs)
    model.zero_grad()
    grads = model.backward(probe, return_input_grad=True)
    qt, kvt = torch.tensor(q, requires_grad=True), torch.tensor(kv, requires_grad=True)
    attn_mask = torch.triu(torch.ones(l, s, dtype=torch.bool), 1) if causal else None
    yt = mha(qt, kvt, kvt, need_weights=False, key_padding_mask=torch.tensor(mask) if masked else None,
             attn_mask=attn_mask)[0]
    yt.backward(torch.tensor(probe))
    close(y, yt.detach().numpy())
    close(grads[0], qt.grad.numpy())
    close(grads[1], kvt.grad.numpy())
    if masked:
        assert grads[2] is None or not np.any(to_host(grads[2]))
    _check_grads(model, mha)


def test_cross_attention_matches_torch(backend):
    check_cross_attention(backend)


def test_key_padding_mask_matches_torch(backend):
    check_cross_attention(backend, masked=True, seed=3)


def test_mask_and_causal_cross_attention_match_torch(backend):
    check_cross_attention(backend, l=6, s=5, masked=True, causal=True, seed=4)


def test_same_tensor_as_query_and_key_value_is_self_attention(backend):
    rng = np.random.default_rng(5)
    x = fnn.Input((5, 8))
    graph = fnn.Model(inputs=x, outputs=MultiHeadAttention(8, 2)([x, x]), backend=backend, dtype="float64", seed=0)
    seq = fnn.Sequential(MultiHeadAttention(8, 2), backend=backend, dtype="float64", seed=0)
    seq.load_state_dict(graph.state_dict())
    xv, probe = rng.standard_normal((2, 5, 8)), rng.standard_normal((2, 5, 8))
    a, b = forward_backward(graph, xv, probe), forward_backward(seq, xv, probe)
    close(a[0], b[0])
    close(a[1], b[1])
    for k in a[2]:
        close(a[2][k], b[2][k])


def test_fully_masked_query_gets_zero_attention(backend):
    """A sample whose keys are all ignored: attention output zero, so y = out_proj.bias, grads finite."""
    rng = np.random.default_rng(6)
    model = _cross_model(backend, 4, 2, 3, 5, True)
    state = model.state_dict()
    state["0.out_proj.bias"] = rng.standard_normal(4)
    model.load_state_dict(state)
    mask = np.zeros((2, 5))
    mask[1] = 1
    xs = [rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 5, 4)), mask]
    y = to_host(model.forward(xs))
    close(y[1], np.broadcast_to(state["0.out_proj.bias"], (3, 4)))
    model.zero_grad()
    grads = model.backward(rng.standard_normal((2, 3, 4)), return_input_grad=True)
    assert np.all(to_host(grads[0])[1] == 0) and np.all(to_host(grads[1])[1] == 0)
    assert all(np.isfinite(to_host(p.grad)).all() for p in model.parameters())


# ------------------------------------------------------------ central differences

def check_gradients(backend, n=2, l=3, s=4, e=4, h=2):
    rng = np.random.default_rng(7)
    model = fnn.Sequential(MultiHeadAttention(e, h, causal=True), backend=backend, dtype="float64", seed=0)
    gradcheck_model(model, rng.standard_normal((n, l, e)), rng.standard_normal((n, l, e)))
    graph = _cross_model(backend, e, h, l, s, True)
    mask = np.zeros((n, s))
    mask[0, 1] = mask[-1, -1] = 1
    q, kv, probe = rng.standard_normal((n, l, e)), rng.standard_normal((n, s, e)), rng.standard_normal((n, l, e))
    graph.forward([q, kv, mask])
    graph.zero_grad()
    graph.backward(probe)
    grads = {p.name: to_host(p.grad).copy() for p in graph.parameters()}
    state = graph.state_dict()

    def f():
        return float((to_host(graph.forward([q, kv, mask])) * probe).sum())
    for name, value in state.items():
        numeric = np.zeros_like(value)
        for i in range(value.size):
            old = value.flat[i]
            for sign in (1, -1):
                value.flat[i] = old + sign * 1e-6
                graph.load_state_dict(state)
                numeric.flat[i] += sign * f() / 2e-6
            value.flat[i] = old
        graph.load_state_dict(state)
        err = np.abs(grads[name] - numeric) / np.maximum(1.0, np.abs(numeric))
        assert err.max() <= 1e-6, f"{name}: {err.max():.3g}"


def test_central_differences(backend):
    check_gradients(backend)


# ------------------------------------------------------------ init, save, load

def test_torch_init_and_parameter_names():
    model = fnn.Sequential(MultiHeadAttention(64, 4), Dense(64, 3), backend="numpy", seed=0)
    sd = model.state_dict()
    assert list(sd) == ["0.in_proj_weight", "0.in_proj_bias", "0.out_proj.weight", "0.out_proj.bias",
                        "1.weight", "1.bias"]
    assert sd["0.in_proj_weight"].shape == (192, 64)
    bound = np.sqrt(6 / (64 + 192))
    assert np.abs(sd["0.in_proj_weight"]).max() <= bound and np.abs(sd["0.in_proj_weight"]).max() > 0.9 * bound
    assert not sd["0.in_proj_bias"].any() and not sd["0.out_proj.bias"].any()
    assert 0.9 / 8 < np.abs(sd["0.out_proj.weight"]).max() <= 1 / 8
    assert model.count_params() == 4 * 64 * 64 + 4 * 64 + 64 * 3 + 3


def test_torch_state_dict_loads_unchanged():
    torch = _torch()
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True, dtype=torch.float64)
    model = fnn.Sequential(MultiHeadAttention(8, 2), backend="numpy", dtype="float64")
    _load(model, mha)
    x = np.random.default_rng(8).standard_normal((2, 3, 8))
    xt = torch.tensor(x)
    close(model.predict(x), mha(xt, xt, xt, need_weights=False)[0].detach().numpy())


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_save_and_load(tmp_path, suffix):
    if suffix == ".safetensors":
        pytest.importorskip("safetensors")
    rng = np.random.default_rng(9)
    q, kv, m = fnn.Input((3, 8)), fnn.Input((4, 8)), fnn.Input((4,))
    h = MultiHeadAttention(8, 2, causal=True)([q, kv, m])
    out = MultiHeadAttention(8, 4)(h)
    model = fnn.Model(inputs=[q, kv, m], outputs=out, backend="numpy", seed=3)
    xs = [rng.standard_normal((2, 3, 8)).astype(np.float32), rng.standard_normal((2, 4, 8)).astype(np.float32),
          np.array([[0, 1, 0, 0], [0, 0, 0, 1]], np.float32)]
    path = tmp_path / f"m{suffix}"
    model.save(path)
    again = fnn.load(path)
    np.testing.assert_array_equal(again.predict(xs), model.predict(xs))
    seq = fnn.Sequential(MultiHeadAttention(8, 2), Dense(8, 2), backend="numpy", seed=4)
    seq.save(tmp_path / f"s{suffix}")
    x = xs[0]
    np.testing.assert_array_equal(fnn.load(tmp_path / f"s{suffix}").predict(x), seq.predict(x))
    assert "inputs" not in repr(again.layers[-1]) if hasattr(again, "layers") else True


# ------------------------------------------------------------------ bad input

def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match="embed_dim"):
        MultiHeadAttention(0, 1)
    with pytest.raises(ValueError, match="num_heads"):
        MultiHeadAttention(8, 2.0)
    with pytest.raises(TypeError, match="causal"):
        MultiHeadAttention(8, 2, causal="yes")


def test_bad_shapes_and_masks():
    with pytest.raises(ValueError, match="query of shape"):
        fnn.Sequential(MultiHeadAttention(8, 2), input_shape=(5, 6)) if False else \
            MultiHeadAttention(8, 2)(fnn.Input((5, 6)))
    with pytest.raises(ValueError, match="query of shape"):
        MultiHeadAttention(8, 2)(fnn.Input((8,)))
    q, kv = fnn.Input((3, 8)), fnn.Input((4, 8))
    with pytest.raises(ValueError, match="key_value"):
        MultiHeadAttention(8, 2)([q, fnn.Input((4, 6))])
    with pytest.raises(ValueError, match="key_padding_mask"):
        MultiHeadAttention(8, 2)([q, kv, fnn.Input((3,))])
    with pytest.raises(ValueError, match="2 to 3 inputs"):
        MultiHeadAttention(8, 2)([q])
    layer = MultiHeadAttention(8, 2)
    layer(q)
    with pytest.raises(TypeError, match="one way"):
        layer([q, kv])
    model = fnn.Sequential(MultiHeadAttention(8, 2), backend="numpy")
    with pytest.raises(ValueError):
        model.forward(np.zeros((2, 3, 6), np.float32))


def test_kernel_checks():
    k = fnn.get_backend("numpy")
    q = np.zeros((2, 3, 8))
    with pytest.raises(ValueError, match="divisible"):
        k.attention(q, q, q, None, 3)
    with pytest.raises(ValueError, match="key mask"):
        k.attention(q, q, q, np.zeros((2, 4)), 2)
    with pytest.raises(ValueError, match="NaN"):
        k.attention(q, q, q, np.full((2, 3), np.nan), 2)
    with pytest.raises(ValueError, match=r"k, v \(N, S, E\)"):
        k.attention(q, np.zeros((2, 3, 4)), q, None, 2)
    with pytest.raises(ValueError, match="p has shape"):
        k.attention_backward(q, q, q, q, np.zeros((2, 2, 3, 4)), 2)


# ------------------------------------------------------ TransformerEncoderLayer

def _has_dropout():
    return hasattr(fnn.layers, "Dropout")


def check_encoder(backend, norm_first, activation, dropout=0.0, training=True, masked=False, causal=False,
                  n=2, l=5, d=8, h=2, ff=12, seed=10):
    torch = _torch()
    from fastnn.layers import TransformerEncoderLayer
    rng = np.random.default_rng(seed)
    torch.manual_seed(0)
    tl = torch.nn.TransformerEncoderLayer(d, h, dim_feedforward=ff, dropout=dropout, activation=activation,
                                          batch_first=True, norm_first=norm_first, dtype=torch.float64)
    _randomize(tl, rng)
    layer = TransformerEncoderLayer(d, h, dim_feedforward=ff, dropout=dropout, activation=activation,
                                    norm_first=norm_first, causal=causal)
    if masked:
        x_in, m_in = fnn.Input((l, d)), fnn.Input((l,))
        model = fnn.Model(inputs=[x_in, m_in], outputs=layer([x_in, m_in]), backend=backend,
                          dtype="float64", seed=0)
    else:
        model = fnn.Sequential(layer, backend=backend, dtype="float64", seed=0)
    _load(model, tl)
    model.train(training)
    tl.train(training)
    x, probe = rng.standard_normal((n, l, d)), rng.standard_normal((n, l, d))
    mask = np.zeros((n, l), bool)
    mask[0, -2:] = True
    y = model.forward([x, mask.astype(np.float64)] if masked else x)
    model.zero_grad()
    dx = model.backward(probe, return_input_grad=True)
    dx = dx[0] if masked else dx
    xt = torch.tensor(x, requires_grad=True)
    kw = {}
    if causal:
        kw = dict(src_mask=torch.triu(torch.ones(l, l, dtype=torch.bool), 1), is_causal=True)
    yt = tl(xt, src_key_padding_mask=torch.tensor(mask) if masked else None, **kw)
    yt.backward(torch.tensor(probe))
    close(y, yt.detach().numpy())
    close(dx, xt.grad.numpy())
    _check_grads(model, tl)


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_layer_matches_torch_in_training(backend, norm_first, activation):
    check_encoder(backend, norm_first, activation)


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
def test_encoder_layer_mask_and_causal_match_torch(backend, norm_first):
    check_encoder(backend, norm_first, "relu", masked=True, causal=True, seed=11)


@pytest.mark.skipif(not _has_dropout(), reason="fnn.layers.Dropout (branch acts) is not merged yet")
@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
def test_encoder_layer_matches_torch_in_eval_with_dropout(backend, norm_first):
    check_encoder(backend, norm_first, "gelu", dropout=0.1, training=False, seed=12)


def test_encoder_layer_central_differences(backend):
    from fastnn.layers import TransformerEncoderLayer
    rng = np.random.default_rng(13)
    for norm_first, act in ((False, "gelu"), (True, "relu")):
        model = fnn.Sequential(TransformerEncoderLayer(4, 2, dim_feedforward=6, dropout=0.0, activation=act,
                                                       norm_first=norm_first),
                               backend=backend, dtype="float64", seed=1)
        gradcheck_model(model, rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4)))


def test_encoder_state_dict_keys_and_save_load(tmp_path):
    torch = _torch()
    from fastnn.layers import TransformerEncoderLayer
    tl = torch.nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, batch_first=True)
    model = fnn.Sequential(TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0),
                           TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, norm_first=True,
                                                   activation="gelu"), backend="numpy", seed=0)
    assert sorted(k.split(".", 1)[1] for k in model.state_dict() if k.startswith("0.")) == sorted(tl.state_dict())
    for k, v in model.state_dict().items():
        assert v.shape == tuple(tl.state_dict()[k.split(".", 1)[1]].shape)
    x = np.random.default_rng(14).standard_normal((2, 5, 16)).astype(np.float32)
    model.save(tmp_path / "enc.npz")
    again = fnn.load(tmp_path / "enc.npz")
    np.testing.assert_array_equal(again.predict(x), model.predict(x))


def test_encoder_bad_arguments():
    from fastnn.layers import TransformerEncoderLayer
    with pytest.raises(ValueError, match="divisible"):
        TransformerEncoderLayer(10, 3, dropout=0.0)
    with pytest.raises(ValueError, match="activation"):
        TransformerEncoderLayer(8, 2, dropout=0.0, activation="tanh")
    with pytest.raises(ValueError, match="dropout"):
        TransformerEncoderLayer(8, 2, dropout=1.5)
    with pytest.raises(ValueError, match="dim_feedforward"):
        TransformerEncoderLayer(8, 2, dropout=0.0, dim_feedforward=0)
    with pytest.raises(ValueError, match="expects inputs"):
        TransformerEncoderLayer(8, 2, dropout=0.0)(fnn.Input((5, 6)))
    with pytest.raises(ValueError, match="src_key_padding_mask"):
        TransformerEncoderLayer(8, 2, dropout=0.0)([fnn.Input((5, 8)), fnn.Input((4,))])
