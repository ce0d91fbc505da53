"""ONNX export of the recurrent layers (and, as the other layers land, the rest of issue 10's):
onnxruntime (float32) and onnx's reference evaluator (float64, which onnxruntime's CPU RNN/LSTM/GRU
kernels do not take) reproduce model.predict."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn import layers as L

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx.reference import ReferenceEvaluator  # noqa: E402

TOL = {"float32": dict(rtol=1e-4, atol=1e-5), "float64": dict(rtol=1e-10, atol=1e-12)}


def _run(proto, path, x, engine):
    feed = {"input": x} if not isinstance(x, list) else {f"input_{i}": a for i, a in enumerate(x)}
    if engine == "reference":
        return ReferenceEvaluator(proto).run(None, feed)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


def _check(model, x, tmp_path, engine=None, **kwargs):
    """Export model, reload and check the file, run it on x and compare with predict."""
    path = tmp_path / "m.onnx"
    proto = model.export_onnx(path, **kwargs)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    engine = engine or ("ort" if model.dtype == np.float32 else "reference")
    x = [np.ascontiguousarray(a, dtype=model.dtype) for a in x] if isinstance(x, list) \
        else np.ascontiguousarray(x, dtype=model.dtype)
    want = model.predict(x)
    got = _run(proto, path, x, engine)
    for g, w in zip(got, want if isinstance(want, list) else [want]):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, **TOL[str(model.dtype)])
    return proto


RECURRENT = [L.RNN, L.LSTM, L.GRU]
MODES = [(False, False), (False, True), (True, False), (True, True)]


@pytest.mark.parametrize("cls", RECURRENT, ids=["rnn", "lstm", "gru"])
@pytest.mark.parametrize("seq,bi", MODES, ids=["last", "last-bi", "seq", "seq-bi"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_recurrent(cls, seq, bi, dtype, tmp_path):
    model = fnn.Sequential(cls(3, 5, return_sequences=seq, bidirectional=bi), dtype=dtype, seed=1)
    x = np.random.default_rng(0).normal(size=(4, 6, 3))
    proto = _check(model, x, tmp_path)
    op = cls.__name__
    node = next(n for n in proto.graph.node if n.op_type == op)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["direction"] == (b"bidirectional" if bi else b"forward")
    assert attrs.get("linear_before_reset", 0) == (1 if cls is L.GRU else 0)


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
    proto = _check(model, np.random.default_rng(2).normal(size=(5, 7, 4)), tmp_path)
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
