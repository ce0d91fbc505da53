"""ONNX export of the recurrent layers (and, as the other layers land, the rest of issue 10's):
onnxruntime (float32) and onnx's reference evaluator (float64, which onnxruntime's CPU RNN/LSTM/GRU
kernels do not take) reproduce model.predict."""
import math

import numpy as np
import pytest

import fastnn as fnn
from fastnn import layers as L

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx.reference import ReferenceEvaluator  # noqa: E402
from onnx.reference.ops._op import OpRunUnaryNum  # noqa: E402

TOL = {"float32": dict(rtol=1e-4, atol=1e-5), "float64": dict(rtol=1e-10, atol=1e-12)}


class Erf(OpRunUnaryNum):
    """Erf in the input's precision: onnx.reference's own computes in float32."""

    def _run(self, x):
        return (np.vectorize(math.erf, otypes=[x.dtype])(x),)


def _run(proto, path, x, engine):
    feed = {"input": x} if not isinstance(x, list) else {f"input_{i}": a for i, a in enumerate(x)}
    if engine == "reference":
        return ReferenceEvaluator(proto, new_ops=[Erf]).run(None, feed)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


def _check(model, x, tmp_path, engines=None, **kwargs):
    """Export model, reload and check the file, run it on x in each engine ("ort": onnxruntime,
    "reference": onnx.reference; default: onnxruntime) and compare with predict."""
    path = tmp_path / "m.onnx"
    proto = model.export_onnx(path, **kwargs)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    x = [np.ascontiguousarray(a, dtype=model.dtype) for a in x] if isinstance(x, list) \
        else np.ascontiguousarray(x, dtype=model.dtype)
    want = model.predict(x)
    for engine in engines or ("ort",):
        got = _run(proto, path, x, engine)
        for g, w in zip(got, want if isinstance(want, list) else [want]):
            assert g.dtype == w.dtype and g.shape == w.shape
            np.testing.assert_allclose(g, w, **TOL[str(model.dtype)], err_msg=engine)
    return proto


# onnxruntime's CPU RNN/LSTM/GRU and Erf (GELU) kernels take float32 only: float64 goes to onnx.reference
F32_ONLY = {"float32": ("ort",), "float64": ("reference",)}
BOTH = {"float32": ("ort",), "float64": ("ort", "reference")}


RECURRENT = [L.RNN, L.LSTM, L.GRU]
MODES = [(False, False), (False, True), (True, False), (True, True)]


@pytest.mark.parametrize("cls", RECURRENT, ids=["rnn", "lstm", "gru"])
@pytest.mark.parametrize("seq,bi", MODES, ids=["last", "last-bi", "seq", "seq-bi"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_recurrent(cls, seq, bi, dtype, tmp_path):
    model = fnn.Sequential(cls(3, 5, return_sequences=seq, bidirectional=bi), dtype=dtype, seed=1)
    x = np.random.default_rng(0).normal(size=(4, 6, 3))
    proto = _check(model, x, tmp_path, F32_ONLY[dtype])
    op = cls.__name__
    node = next(n for n in proto.graph.node if n.op_type == op)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["direction"] == (b"bidirectional" if bi else b"forward")
    assert attrs.get("linear_before_reset", 0) == (1 if cls is L.GRU else 0)


@pytest.mark.parametrize("cls", RECURRENT, ids=["rnn", "lstm", "gru"])
@pytest.mark.parametrize("seq,bi", [(False, True), (True, False)], ids=["last-bi", "seq"])
def test_stacked_layers_export_one_op_per_layer(cls, seq, bi, tmp_path):
    model = fnn.Sequential(cls(3, 4, return_sequences=seq, bidirectional=bi, num_layers=3), seed=2)
    x = np.random.default_rng(1).normal(size=(2, 5, 3))
    proto = _check(model, x, tmp_path, F32_ONLY["float32"])
    assert sum(n.op_type == cls.__name__ for n in proto.graph.node) == 3


def test_recurrent_time_axis_is_symbolic(tmp_path):
    """Without input_shape the time axis is "T": any sequence length runs; with it, T is fixed."""
    model = fnn.Sequential(L.GRU(3, 4, bidirectional=True, return_sequences=True), L.Dense(8, 2), seed=0)
    proto = model.export_onnx(tmp_path / "m.onnx")
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", "T", 3]
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for steps in (1, 6, 11):
        x = rng.normal(size=(3, steps, 3)).astype(np.float32)
        np.testing.assert_allclose(sess.run(None, {"input": x})[0], model.predict(x), **TOL["float32"])
    proto = _check(model, rng.normal(size=(2, 5, 3)), tmp_path, input_shape=(5, 3))
    dims = [d.dim_param or d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim]
    assert dims == ["N", 5, 2]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_stacked_recurrent_and_dense_on_sequences(dtype, tmp_path, backend):
    """Stacked layers (a sequence into the next), Dense on (N, T, F) as MatMul + Add."""
    model = fnn.Sequential(
        L.LSTM(4, 6, return_sequences=True, bidirectional=True), L.Dense(12, 7), L.Tanh(),
        L.GRU(7, 5, return_sequences=True), L.RNN(5, 3, bidirectional=True), L.Dense(6, 2),
        backend=backend, dtype=dtype, seed=2)
    proto = _check(model, np.random.default_rng(2).normal(size=(5, 7, 4)), tmp_path, F32_ONLY[dtype])
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("MatMul") == 1 and ops.count("Gemm") == 1


def test_graph_model_with_recurrent_branches(tmp_path):
    """A two-input graph: an LSTM over a sequence, a Dense over a vector, merged."""
    seq, vec = fnn.Input((6, 3)), fnn.Input((4,))
    h = L.LSTM(3, 5, bidirectional=True)(seq)
    out = L.Dense(14, 2)(L.Concatenate()([h, L.ReLU()(L.Dense(4, 4)(vec))]))
    model = fnn.Model(inputs=[seq, vec], outputs=out, seed=3)
    rng = np.random.default_rng(3)
    _check(model, [rng.normal(size=(5, 6, 3)), rng.normal(size=(5, 4))], tmp_path)


def test_trained_lstm_on_digit_rows_agrees(tmp_path):
    """An LSTM reading the 8 rows of each digit as a sequence, trained briefly: same classes."""
    X, y, Xt, yt = fnn.data.load_digits()
    model = fnn.Sequential(L.Reshape((8, 8)), L.LSTM(8, 16), L.Dense(16, 10), seed=0)
    fnn.Trainer(model, optimizer=fnn.optim.Adam(lr=0.01)).fit(X, y, epochs=2, batch_size=64, progress=False)
    _check(model, Xt, tmp_path, input_shape=(64,))
    got = _run(onnx.load(str(tmp_path / "m.onnx")), tmp_path / "m.onnx", Xt.astype(np.float32), "ort")[0]
    assert (got.argmax(1) == model.predict(Xt).argmax(1)).mean() > 0.99


def test_recurrent_input_shape_is_checked(tmp_path):
    model = fnn.Sequential(L.LSTM(3, 4))
    with pytest.raises(ValueError, match="LSTM"):
        model.export_onnx(tmp_path / "m.onnx", input_shape=(5, 2))
    with pytest.raises(ValueError, match="LSTM"):
        model.export_onnx(tmp_path / "m.onnx", input_shape=(3,))


# ---------------------------------------------------------------- issue 10's new layers
def _trained_stats(model, x):
    """A few training forwards so BatchNorm's running statistics are not their initial 0 and 1."""
    for _ in range(3):
        model.forward(np.ascontiguousarray(x, dtype=model.dtype))
        model.zero_grad()
    model.eval()
    stats = [v for k, v in model.state_dict().items() if k.endswith("running_mean")]
    assert stats and all(np.abs(v).min() > 1e-3 for v in stats)
    return model


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_layernorm(dtype, tmp_path, backend):
    rng = np.random.default_rng(4)
    model = fnn.Sequential(L.Dense(6, 8), L.LayerNorm(8), L.GELU(), L.LayerNorm(8, eps=1e-3, bias=False),
                           L.Dense(8, 3), backend=backend, dtype=dtype, seed=4)
    sd = model.state_dict()
    sd = {k: rng.normal(size=v.shape) if "1." in k or "3." in k else v for k, v in sd.items()}
    model.load_state_dict(sd)   # affine parameters away from 1 and 0
    _check(model, rng.normal(size=(7, 6)) * 3, tmp_path, F32_ONLY[dtype])
    seq = fnn.Sequential(L.LayerNorm((4, 3), elementwise_affine=False), L.Reshape((12,)),
                         dtype=dtype, seed=0)   # two normalised axes, no parameters
    proto = _check(seq, rng.normal(size=(5, 4, 3)), tmp_path, BOTH[dtype], input_shape=(4, 3))
    # float32: LayerNormalization; float64: composed (ONNX's epsilon attribute is a float32)
    assert ("LayerNormalization" in [n.op_type for n in proto.graph.node]) == (dtype == "float32")
    # before opset 17 (no LayerNormalization) composed too
    proto = _check(seq, rng.normal(size=(5, 4, 3)), tmp_path, BOTH[dtype], input_shape=(4, 3), opset=16)
    assert "LayerNormalization" not in [n.op_type for n in proto.graph.node]


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gelu(approximate, dtype, tmp_path):
    model = fnn.Sequential(L.Dense(5, 9), L.GELU(approximate=approximate), L.Dense(9, 2), dtype=dtype, seed=5)
    x = np.random.default_rng(5).normal(size=(11, 5)) * 3
    _check(model, x, tmp_path, F32_ONLY[dtype])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batchnorm_in_inference_mode(dtype, tmp_path, backend):
    rng = np.random.default_rng(6)
    model = fnn.Sequential(L.Dense(4, 6), L.BatchNorm1D(6), L.ReLU(), L.Reshape((2, 3)), L.BatchNorm1D(2),
                           L.Flatten(), L.Dense(6, 2), backend=backend, dtype=dtype, seed=6)
    x = rng.normal(size=(16, 4)) * 2 + 1
    _check(_trained_stats(model, x), x, tmp_path, BOTH[dtype])


def test_conv_batchnorm2d_global_pools(tmp_path, backend):
    rng = np.random.default_rng(7)
    model = fnn.Sequential(L.Conv2D(2, 5, 3, padding=1), L.BatchNorm2D(5), L.ReLU(), L.GlobalAvgPool2D(),
                           L.Dense(5, 3), backend=backend, seed=7)
    x = rng.normal(size=(6, 2, 7, 5))
    _check(_trained_stats(model, x), x, tmp_path)
    model1 = fnn.Sequential(L.Conv1D(3, 4, 3), L.BatchNorm1D(4), L.Tanh(), L.GlobalAvgPool1D(),
                            L.Dense(4, 2), backend=backend, seed=8)
    x1 = rng.normal(size=(6, 3, 9))
    proto = _check(_trained_stats(model1, x1), x1, tmp_path)
    assert [n.op_type for n in proto.graph.node][1:5] == ["BatchNormalization", "Tanh", "ReduceMean", "Gemm"]


@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_global_pools_as_reduce_mean(opset, dtype, tmp_path):
    """ReduceMean over the spatial axes (its axes an attribute before opset 18, an input since)."""
    x = np.random.default_rng(9).normal(size=(4, 24))
    for pool, shape in ((L.GlobalAvgPool2D(), (2, 3, 4)), (L.GlobalAvgPool1D(), (3, 8))):
        model = fnn.Sequential(L.Reshape(shape), pool, L.Dense(shape[0], 2), dtype=dtype, seed=9)
        _check(model, x, tmp_path, BOTH[dtype], input_shape=(24,), opset=opset)


def _randomise(model, rng, scale=0.5):
    """Every parameter random (biases and LayerNorm affines away from their 0 and 1 starts)."""
    model.load_state_dict({k: rng.normal(size=v.shape) * scale for k, v in model.state_dict().items()})
    return model


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_self_attention(causal, dtype, tmp_path, backend):
    rng = np.random.default_rng(10)
    model = _randomise(fnn.Sequential(L.MultiHeadAttention(8, 2, causal=causal), L.Dense(8, 3),
                                      backend=backend, dtype=dtype, seed=10), rng)
    _check(model, rng.normal(size=(3, 5, 8)), tmp_path, BOTH[dtype])
    # the sequence axis stays symbolic: other lengths run (the causal mask follows them)
    proto = model.export_onnx(tmp_path / "m.onnx")
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", "L", 8]
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for length in (1, 9):
        x = rng.normal(size=(2, length, 8)).astype(dtype)
        np.testing.assert_allclose(sess.run(None, {"input": x})[0], model.predict(x), **TOL[dtype])


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")   # onnx.reference's
@pytest.mark.parametrize("dtype", ["float32", "float64"])                          # softmax of -inf
def test_cross_attention_with_key_padding_mask(dtype, tmp_path):
    """[query, key_value, key_padding_mask] in a graph; a query batch row with every key masked
    gets fastnn's zero attention (its output is out_proj's bias)."""
    rng = np.random.default_rng(11)
    q, kv, mask = fnn.Input((4, 6)), fnn.Input((7, 6)), fnn.Input((7,))
    out = L.MultiHeadAttention(6, 3, bias=True)([q, kv, mask])
    model = _randomise(fnn.Model(inputs=[q, kv, mask], outputs=out, dtype=dtype, seed=11), rng)
    m = (rng.random((5, 7)) < 0.4).astype(float)
    m[2] = 1.0   # every key of sample 2 ignored
    _check(model, [rng.normal(size=(5, 4, 6)), rng.normal(size=(5, 7, 6)), m], tmp_path, BOTH[dtype])


@pytest.mark.parametrize("activation,norm_first,causal", [("relu", False, False), ("gelu", True, True)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_transformer_encoder_layer(activation, norm_first, causal, dtype, tmp_path, backend):
    rng = np.random.default_rng(12)
    model = _randomise(fnn.Sequential(
        L.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation=activation, norm_first=norm_first,
                                  causal=causal), L.Flatten(),
        L.Dense(5 * 8, 3), backend=backend, dtype=dtype, seed=12), rng)
    engines = F32_ONLY[dtype] if activation == "gelu" else BOTH[dtype]
    _check(model, rng.normal(size=(4, 5, 8)), tmp_path, engines, input_shape=(5, 8))


def test_transformer_encoder_layer_with_padding_mask(tmp_path):
    rng = np.random.default_rng(13)
    x, mask = fnn.Input((6, 8)), fnn.Input((6,))
    h = L.TransformerEncoderLayer(8, 4, 12, dropout=0.0)([x, mask])
    model = _randomise(fnn.Model(inputs=[x, mask], outputs=L.Dense(8, 2)(h), seed=13), rng)
    m = np.zeros((3, 6))
    m[0, 4:] = 1   # the last two positions of sample 0 are padding
    _check(model, [rng.normal(size=(3, 6, 8)), m], tmp_path)


@pytest.mark.parametrize("family", ["mlp", "cnn", "lstm", "transformer"])
def test_digits_families_export(family, tmp_path):
    """Each `fastnn digits --model` family, trained for one epoch, runs in onnxruntime as it predicts."""
    from fastnn import cli
    X, y, Xt, yt = fnn.data.load_digits()
    model = cli._digits_model("numpy", "float32", 0, family)
    fnn.Trainer(model, optimizer=fnn.optim.SGD(lr=cli.FAMILIES[family][3], momentum=0.9)).fit(
        X[:320], y[:320], epochs=1, batch_size=32, progress=False)
    _check(model, Xt[:100], tmp_path, input_shape=(64,))


@pytest.mark.parametrize("act,op", [(lambda: L.SiLU(), "Sigmoid"), (lambda: L.ELU(), "Elu"),
                                    (lambda: L.ELU(alpha=0.3), "Elu"),
                                    (lambda: L.Softplus(), "Log"), (lambda: L.Softplus(beta=2.5, threshold=3.0), "Log")],
                         ids=["silu", "elu", "elu-0.3", "softplus", "softplus-beta-threshold"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_more_activations(act, op, dtype, tmp_path):
    """Wide inputs reach both branches (ELU's x > 0, Softplus' linear part past its threshold)."""
    model = fnn.Sequential(L.Dense(5, 9), act(), L.Dense(9, 2), dtype=dtype, seed=14)
    x = np.random.default_rng(14).normal(size=(13, 5)) * 6
    proto = _check(model, x, tmp_path, BOTH[dtype])
    ops = [n.op_type for n in proto.graph.node]
    assert (op in ops) if (op != "Elu" or dtype == "float32") else ("Where" in ops)


def test_dropout_is_the_identity(tmp_path):
    """Dropout exports as Identity; a model trained with it (and a TransformerEncoderLayer with
    dropout) runs in onnxruntime as predict does."""
    X, y, Xt, _ = fnn.data.load_digits()
    model = fnn.Sequential(L.Dense(64, 32), L.ReLU(), L.Dropout(0.3), L.Dense(32, 10), L.Dropout(0.1), seed=15)
    fnn.Trainer(model, optimizer=fnn.optim.SGD(lr=0.1)).fit(X[:256], y[:256], epochs=1, batch_size=32, progress=False)
    proto = _check(model, Xt[:50], tmp_path)
    assert [n.op_type for n in proto.graph.node].count("Identity") == 2
    tf = _randomise(fnn.Sequential(L.TransformerEncoderLayer(8, 2, 16, dropout=0.2), L.Dense(8, 2), seed=16),
                    np.random.default_rng(16))
    _check(tf, np.random.default_rng(16).normal(size=(3, 4, 8)), tmp_path)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_embedding(dtype, tmp_path):
    """Token indices (an int64 ONNX input) through Embedding into an LSTM; any sequence length."""
    rng = np.random.default_rng(17)
    model = fnn.Sequential(L.Embedding(20, 6, padding_idx=0), L.LSTM(6, 5), L.Dense(5, 3), dtype=dtype, seed=17)
    tokens = rng.integers(0, 20, size=(4, 7))
    path = tmp_path / "m.onnx"
    proto = model.export_onnx(path)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", "L"]
    for length in (1, 7):
        x = tokens[:, :length]
        got = _run(proto, path, x, F32_ONLY[dtype][0])[0]
        np.testing.assert_allclose(got, model.predict(x), **TOL[dtype])


def test_embedding_in_a_graph_with_a_float_input(tmp_path):
    rng = np.random.default_rng(18)
    tok, vec = fnn.Input((5,)), fnn.Input((3,))
    h = L.Flatten()(L.Embedding(11, 4)(tok))
    out = L.Dense(23, 2)(L.Concatenate()([h, vec]))
    model = fnn.Model(inputs=[tok, vec], outputs=out, dtype="float64", seed=18)
    x = [rng.integers(0, 11, size=(6, 5)), rng.normal(size=(6, 3))]
    proto = model.export_onnx(tmp_path / "m.onnx")
    assert [i.type.tensor_type.elem_type for i in proto.graph.input] == [onnx.TensorProto.INT64, onnx.TensorProto.DOUBLE]
    for engine in ("ort", "reference"):
        got = _run(proto, tmp_path / "m.onnx", x, engine)[0]
        np.testing.assert_allclose(got, model.predict(x), **TOL["float64"])


def test_conv_same_padding(tmp_path, backend):
    """padding='same' (odd and even kernels) in Conv1D and Conv2D, the spatial axes symbolic."""
    rng = np.random.default_rng(19)
    model = fnn.Sequential(L.Conv2D(2, 3, (3, 4), padding="same"), L.ReLU(), L.Conv2D(3, 2, 2, padding="same"),
                           backend=backend, seed=19)
    _check(model, rng.normal(size=(3, 2, 6, 5)), tmp_path)
    model1 = fnn.Sequential(L.Conv1D(2, 4, 4, padding="same"), L.Tanh(), L.Conv1D(4, 1, 5, padding="same"),
                            backend=backend, seed=20)
    _check(model1, rng.normal(size=(3, 2, 9)), tmp_path)
