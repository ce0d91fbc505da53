"""ONNX export: onnx.checker accepts the graph and onnxruntime reproduces model.predict."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn import layers as L

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def _check(model, x, tmp_path, rtol=1e-4, atol=1e-5, **kwargs):
    path = tmp_path / "m.onnx"
    proto = model.export_onnx(path, **kwargs)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    assert proto.graph.input[0].name == "input" and proto.graph.output[0].name == "output"
    x = np.ascontiguousarray(x, dtype=model.dtype)
    got, want = _run(path, x), model.predict(x)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    return got


ACTIVATIONS = [L.Sigmoid, L.Tanh, L.ReLU, lambda: L.LeakyReLU(0.2), L.Softmax]


@pytest.mark.parametrize("act", ACTIVATIONS, ids=["sigmoid", "tanh", "relu", "leaky_relu", "softmax"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dense_activations(act, dtype, tmp_path, backend):
    model = fnn.Sequential(L.Dense(7, 33), act(), L.Dense(33, 5), backend=backend, dtype=dtype, seed=1)
    x = np.random.default_rng(0).normal(size=(17, 7))
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == "float32" else dict(rtol=1e-10, atol=1e-12)
    _check(model, x, tmp_path, **tol)


def test_step_and_no_bias(tmp_path):
    model = fnn.Sequential(L.Dense(4, 6, bias=False), L.Step(), L.Dense(6, 1), seed=3)
    x = np.random.default_rng(1).normal(size=(50, 4))
    _check(model, x, tmp_path)
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert [n.op_type for n in proto.graph.node] == ["Gemm", "Greater", "Cast", "Gemm"]


def test_conv2d_pooling_flatten(tmp_path, backend):
    model = fnn.Sequential(
        L.Conv2D(1, 4, 3, padding=1), L.ReLU(), L.MaxPool2D(2),
        L.Conv2D(4, 6, (3, 2), stride=(1, 2)), L.Tanh(), L.AvgPool2D(2, stride=1),
        L.Flatten(), L.Dense(6 * 1 * 1, 10), backend=backend, seed=0)
    x = np.random.default_rng(2).normal(size=(9, 1, 8, 8))
    _check(model, x, tmp_path, input_shape=(1, 8, 8))
    # without input_shape the spatial axes stay symbolic and any size runs
    _check(model, x, tmp_path)


def test_conv1d_pooling_reshape(tmp_path):
    model = fnn.Sequential(
        L.Reshape((2, 12)), L.Conv1D(2, 3, 3, stride=2, padding=1), L.Sigmoid(),
        L.MaxPool1D(2), L.AvgPool1D(3), L.Reshape(-1), L.Dense(3, 2), seed=0)
    x = np.random.default_rng(3).normal(size=(5, 24))
    _check(model, x, tmp_path, input_shape=(24,))


def test_digits_classifier_agrees(tmp_path):
    X, y, Xt, yt = fnn.data.load_digits()
    model = fnn.Sequential(L.Dense(64, 64), L.ReLU(), L.Dense(64, 10), seed=0)
    fnn.Trainer(model, optimizer=fnn.optim.SGD(lr=0.1, momentum=0.9)).fit(X, y, epochs=3, batch_size=64, progress=False)
    logits = _check(model, Xt, tmp_path)
    assert (logits.argmax(1) == model.predict(Xt).argmax(1)).all()


class _Custom(L.Layer):
    """A user's layer the exporter knows nothing about."""

    def output_shape(self, shape):
        return shape

    def forward(self, ctx, x):
        return x


def test_unsupported_and_bad_input(tmp_path):
    model = fnn.Sequential(L.Tanh(), L.Dense(4, 2))
    with pytest.raises(ValueError, match="input_shape"):
        model.export_onnx(tmp_path / "m.onnx")
    with pytest.raises(NotImplementedError, match="_Custom"):
        fnn.Sequential(L.Dense(3, 4), _Custom()).export_onnx(tmp_path / "m.onnx")
    dense = fnn.Sequential(L.Dense(3, 2))
    with pytest.raises(ValueError, match="Dense"):
        dense.export_onnx(tmp_path / "m.onnx", input_shape=(4,))
    with pytest.raises(ValueError, match="opset"):
        dense.export_onnx(tmp_path / "m.onnx", opset=11)


def test_graph_model_with_merges_residual_and_two_outputs(tmp_path, backend):
    """A two-input, two-output graph (shared layer, Add, Concatenate, Residual) runs in
    onnxruntime as it predicts."""
    a, b = fnn.Input((4,)), fnn.Input((3,))
    shared = L.Dense(6, 6)
    ha, hb = L.ReLU()(L.Dense(4, 6)(a)), L.Tanh()(L.Dense(3, 6)(b))
    merged = L.Add()([shared(ha), shared(hb), ha])
    out1 = L.Dense(12, 3)(L.Concatenate()([merged, hb]))
    out2 = L.Residual(L.Dense(6, 6), L.Tanh())(merged)
    model = fnn.Model(inputs=[a, b], outputs=[out1, out2], backend=backend, seed=2)
    rng = np.random.default_rng(5)
    xa, xb = rng.normal(size=(9, 4)).astype(np.float32), rng.normal(size=(9, 3)).astype(np.float32)
    path = tmp_path / "g.onnx"
    proto = model.export_onnx(path)
    assert [i.name for i in proto.graph.input] == ["input_0", "input_1"]
    assert [o.name for o in proto.graph.output] == ["output_0", "output_1"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input_0": xa, "input_1": xb})
    for g, w in zip(got, model.predict([xa, xb])):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_sequential_with_residual(tmp_path):
    model = fnn.Sequential(L.Dense(5, 8), L.Residual(L.Dense(8, 8), L.ReLU(), L.Dense(8, 8)), L.Dense(8, 2), seed=1)
    _check(model, np.random.default_rng(3).normal(size=(11, 5)), tmp_path)
