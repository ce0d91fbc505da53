"""Graph models on the cuda backend (under Numba's CUDA simulator where there is no GPU):
two inputs, two outputs, a shared layer, Add, Concatenate and Residual train step for
step like the numpy backend, and a buffer lives on the device."""
import numpy as np

import fastnn as fnn
from test_cuda import BE, dev

L = fnn.layers


def graph(backend):
    a, b = fnn.Input((4,)), fnn.Input((3,))
    shared = L.Dense(5, 5)
    ha, hb = L.ReLU()(L.Dense(4, 5)(a)), L.Tanh()(L.Dense(3, 5)(b))
    merged = L.Add()([shared(ha), shared(hb)])
    out1 = L.Dense(10, 3)(L.Concatenate()([merged, hb]))
    out2 = L.Dense(5, 1)(L.Residual(L.Dense(5, 5), L.Sigmoid())(merged))
    return fnn.Model(inputs=[a, b], outputs=[out1, out2], backend=backend, dtype="float64", seed=3)


def test_graph_trains_on_the_device_like_numpy():
    rng = np.random.default_rng(0)   # tiny: the simulator runs every GPU thread in Python
    xa, xb = rng.standard_normal((4, 4)), rng.standard_normal((4, 3))
    labels, target = rng.integers(0, 3, 4), rng.standard_normal((4, 1))
    models = [graph(BE), graph("numpy")]
    for model in models:
        fnn.Trainer(model, loss=["cross_entropy", "mse"], loss_weights=[1.0, 0.3],
                    optimizer=fnn.optim.Adam(lr=0.01), seed=1).fit(
            [xa, xb], [labels, target], epochs=1, batch_size=4, progress=False)
    gpu, cpu = models
    assert dev.is_device(gpu.parameters().flat_data)
    np.testing.assert_allclose(dev.to_host(gpu.parameters().flat_data), cpu.parameters().flat_data,
                               rtol=1e-9, atol=1e-11)
    for got, want in zip(gpu.predict([xa, xb]), cpu.predict([xa, xb])):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11)


class RunningSum(L.Layer):
    """Identity that adds each training batch's column sums into a buffer."""

    def __init__(self, features):
        super().__init__()
        self.features = features

    def buffer_shapes(self):
        return {"total": (self.features,)}

    def config(self):
        return {"features": self.features}

    def forward(self, ctx, x):
        if ctx.training:
            self.buffers["total"] += self.kernels.bias_grad(x)
        return x

    def backward(self, ctx, dy):
        return dy


def test_buffers_live_on_the_device_and_update_in_training_only():
    x = np.random.default_rng(1).standard_normal((6, 4))
    model = fnn.Sequential(RunningSum(4), L.Dense(4, 2), backend=BE, dtype="float64")
    buf = model.layers[0].buffers["total"]
    assert dev.is_device(buf)
    model.predict(x)
    assert not dev.to_host(buf).any()
    model.forward(x)
    np.testing.assert_allclose(model.state_dict()["0.total"], x.sum(axis=0), rtol=1e-12)
