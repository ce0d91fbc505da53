"""The model core (issue: Core v2): each defect found on the old core is a test here,
on every CPU backend, plus graph models, modes, buffers and custom layers."""
import threading

import numpy as np
import pytest

import fastnn as fnn
from fastnn.layers import Dense, LeakyReLU, ReLU, Reshape, Tanh
from seq_helpers import numeric_grad

L = fnn.layers


def mlp(backend, dtype="float32", seed=0):
    return fnn.Sequential(Dense(4, 8), ReLU(), Dense(8, 3), backend=backend.name, dtype=dtype, seed=seed)


def data(n=20, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)).astype(dtype), rng.integers(0, 3, n)


def grads_of(model, x, g):
    model.forward(x)
    model.zero_grad()
    model.backward(g)
    return model.parameters().flat_grad.copy()


# ------------------------------------------------ 1. predict between forward and backward
def test_predict_between_forward_and_backward_leaves_the_step_alone(backend):
    x, _ = data()
    x2, _ = data(n=7, seed=1)
    g = np.random.default_rng(2).standard_normal((20, 3)).astype(np.float32)
    model = mlp(backend)
    expected = grads_of(model, x, g)
    model.forward(x)
    model.predict(x2)
    model.zero_grad()
    model.backward(g)
    np.testing.assert_array_equal(model.parameters().flat_grad, expected)


# ------------------------------------------------ 2. one layer used twice = tied weights
def test_shared_layer_has_one_set_of_parameters_and_sums_gradients(backend):
    d = Dense(4, 4)
    model = fnn.Sequential(d, Tanh(), d, backend=backend.name, dtype="float64", seed=3)
    assert model.count_params() == 20 and [p.name for p in model.parameters()] == ["0.weight", "0.bias"]
    rng = np.random.default_rng(4)
    x, probe = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    model.forward(x)
    model.zero_grad()
    model.backward(probe)
    for p in model.parameters():
        numeric = numeric_grad(lambda: float((model.forward(x) * probe).sum()), p.data)
        np.testing.assert_allclose(p.grad, numeric, rtol=1e-6, atol=1e-8)


def test_shared_layer_trains_both_uses_and_round_trips(backend, tmp_path):
    d = Dense(4, 4)
    model = fnn.Sequential(d, Tanh(), d, Dense(4, 3), backend=backend.name, seed=1)
    before = d.params["weight"].copy()
    x, y = data(60)
    fnn.Trainer(model, optimizer=fnn.optim.SGD(lr=0.1)).fit(x, y, epochs=2, progress=False)
    assert not np.allclose(before, d.params["weight"])
    model.save(tmp_path / "tied.safetensors")
    back = fnn.load(tmp_path / "tied.safetensors")
    assert back.layers[0] is back.layers[2] and back.count_params() == model.count_params()
    np.testing.assert_array_equal(back.predict(x), model.predict(x))


# ------------------------------------------------ 3. predict from a thread while fit runs
def test_predict_from_another_thread_while_fit_runs(backend):
    x, y = data(400)
    results, errors, stop = [], [], threading.Event()

    def fit(model):
        fnn.Trainer(model, optimizer=fnn.optim.SGD(lr=0.05), seed=5).fit(
            x, y, epochs=3, batch_size=10, progress=False)

    quiet = mlp(backend, seed=7)
    fit(quiet)
    busy = mlp(backend, seed=7)

    def predict_loop():
        try:
            while not stop.is_set():
                results.append(busy.predict(x[:37]))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=predict_loop)
    t.start()
    try:
        fit(busy)
    finally:
        stop.set()
        t.join(60)
    assert not errors and results
    assert all(r.shape == (37, 3) and np.isfinite(r).all() for r in results)
    # predict never touched the training step: the weights are those of a quiet fit.
    np.testing.assert_array_equal(busy.parameters().flat_data, quiet.parameters().flat_data)


# ------------------------------------------------ 4. gradients of the wrong shape
@pytest.mark.parametrize("n_fwd,grad_shape", [(20, (20, 50000)), (2, (400000, 3)), (20, (20,)), (20, (3, 20))])
def test_backward_rejects_a_gradient_that_does_not_fit_the_output(backend, n_fwd, grad_shape):
    x, _ = data()
    model = mlp(backend)
    model.forward(x[:n_fwd])
    with pytest.raises(ValueError, match="shape"):
        model.backward(np.ones(grad_shape, np.float32))


def test_backward_without_forward_or_twice_is_a_clear_error(backend):
    model = mlp(backend)
    with pytest.raises(fnn.TapeError, match="pending forward"):
        model.backward(np.ones((20, 3), np.float32))
    x, _ = data()
    model.forward(x)
    model.backward(np.ones((20, 3), np.float32))
    with pytest.raises(ValueError, match="pending forward"):   # TapeError is a ValueError too
        model.backward(np.ones((20, 3), np.float32))


def test_backward_rejects_wrong_dtype_and_nan(backend):
    model = mlp(backend)
    x, _ = data()
    model.forward(x)
    with pytest.raises(TypeError, match="numbers"):
        model.backward(np.full((20, 3), "a"))
    with pytest.raises(ValueError, match="NaN"):
        model.backward(np.full((20, 3), np.nan))


def test_custom_loss_with_a_wrong_gradient_fails_in_fit(backend):
    x, y = data()

    def bad_loss(out, target):
        return 1.0, np.ones((out.shape[0], 50000), out.dtype)

    trainer = fnn.Trainer(mlp(backend), loss=bad_loss)
    with pytest.raises(ValueError, match="gradient of shape"):
        trainer.fit(x, y.astype(np.float32)[:, None].repeat(3, 1), epochs=1, progress=False)


# ------------------------------------------------ 5. optimizers validate their parameters
@pytest.mark.parametrize("opt", [lambda: fnn.optim.SGD(lr=0.1), lambda: fnn.optim.Adam()])
def test_optimizer_rejects_bad_parameters(opt):
    with pytest.raises(ValueError, match="shape"):
        opt().step([fnn.Parameter("w", np.ones(4_000_000, np.float32), np.ones(10, np.float32))])
    with pytest.raises(TypeError, match="float16"):
        opt().step([fnn.Parameter("w", np.ones(10, np.float16), np.ones(10, np.float16))])
    with pytest.raises(TypeError, match="float32"):
        opt().step([fnn.Parameter("w", np.ones(10, np.float32), np.ones(10, np.float64))])
    with pytest.raises(ValueError, match="contiguous"):
        opt().step([fnn.Parameter("w", np.ones((10, 10), np.float32)[:, 0], np.ones(10, np.float32))])
    with pytest.raises(TypeError, match="Parameters"):
        opt().step([np.ones(10, np.float32)])
    with pytest.raises(TypeError):
        opt().step(3)


def test_optimizer_keeps_state_for_a_parameter_list():
    """Momentum on a plain list of Parameters accumulates across steps (as on the flat buffers)."""
    data_, grad = np.zeros(3, np.float32), np.ones(3, np.float32)
    sgd = fnn.optim.SGD(lr=1.0, momentum=0.5)
    for _ in range(2):
        sgd.step([fnn.Parameter("w", data_, grad)])
    np.testing.assert_allclose(data_, -(1 + 1.5))


# ------------------------------------------------ 6. a layer on its own
def test_layer_called_alone_checks_dtype_and_computes_only_itself(backend):
    model = mlp(backend)
    dense = model.layers[0]
    x, _ = data()
    with pytest.raises(TypeError, match="float64"):
        dense(x.astype(np.float64))
    with pytest.raises(TypeError, match=r"forward takes \(ctx, x\)"):
        dense.forward(x)
    w, b = dense.params["weight"], dense.params["bias"]
    np.testing.assert_allclose(dense(x), x @ w.T + b, rtol=1e-5, atol=1e-5)
    assert (dense(x) < 0).any()   # the ReLU after it in the model is not applied
    ctx = L.Context(training=True)
    with pytest.raises(ValueError, match="expects inputs"):
        dense.forward(ctx, np.ones((3, 5), np.float32))
    out = dense.forward(ctx, x)
    with pytest.raises(ValueError, match="forward output"):
        dense.backward(ctx, np.ones((3, 3), np.float32))
    assert dense.backward(ctx, np.ones_like(out)).shape == x.shape


# ------------------------------------------------ 8. small things that were accepted
def test_bad_arguments_are_rejected(backend, tmp_path):
    x, y = data()
    trainer = fnn.Trainer(mlp(backend))
    for bad in (-1, 0, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            trainer.evaluate(x, y, batch_size=bad)
        with pytest.raises(ValueError, match="batch_size"):
            trainer.model.predict(x, batch_size=bad)
    with pytest.raises(ValueError, match="alpha"):
        LeakyReLU(float("nan"))
    with pytest.raises(ValueError, match="integers"):
        Reshape((2.5, 2))
    path = tmp_path / "m.NPZ"
    trainer.model.save(path)
    assert path.exists() and not (tmp_path / "m.NPZ.npz").exists()
    np.testing.assert_array_equal(fnn.load(path).predict(x), trainer.model.predict(x))


def test_load_checks_tensors_before_allocating(tmp_path):
    """A tiny file whose architecture declares Dense(20000, 20000) is refused
    from its header: the 1.6 GB model is never built."""
    import json
    from safetensors.numpy import save_file
    import tracemalloc
    config = {"format": "fastnn-model-v2", "class": "Sequential", "dtype": "float32", "backend": "numpy",
              "seed": 0, "layers": [{"type": "Dense", "config": {"in_features": 20000, "out_features": 20000}}]}
    path = tmp_path / "evil.safetensors"
    save_file({"0.weight": np.zeros((2, 2), np.float32), "0.bias": np.zeros(2, np.float32)}, str(path),
              metadata={"fastnn": json.dumps(config)})
    assert path.stat().st_size < 1000
    tracemalloc.start()
    with pytest.raises(fnn.ModelFileError, match="0.weight has shape"):
        fnn.load(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50_000_000


@pytest.mark.parametrize("mutate", [
    lambda c: c.update(layers=[{"type": "NoSuchLayer", "config": {}}]),
    lambda c: c.update(layers=[{"type": "Dense", "config": {"in_features": -4, "out_features": 3}}]),
    lambda c: c.update(layers=[{"type": "Dense", "config": {"bogus": 1}}]),
    lambda c: c.update(layers="Dense"),
    lambda c: c.update(layers=[{"ref": 5}]),
    lambda c: c.update({"class": "Pipeline"}),
    lambda c: c.update(dtype="int8"),
    lambda c: c.pop("layers"),
    lambda c: c.update({"class": "Model", "nodes": [{"layer": 9, "inputs": [0]}], "inputs": [0], "outputs": [0]}),
])
def test_every_malformed_architecture_is_a_model_file_error(tmp_path, mutate):
    import json
    from safetensors.numpy import save_file
    config = {"format": "fastnn-model-v2", "class": "Sequential", "dtype": "float32", "backend": "numpy",
              "layers": [{"type": "Dense", "config": {"in_features": 2, "out_features": 2}}]}
    mutate(config)
    path = tmp_path / "bad.safetensors"
    save_file({"0.weight": np.zeros((2, 2), np.float32), "0.bias": np.zeros(2, np.float32)}, str(path),
              metadata={"fastnn": json.dumps(config)})
    with pytest.raises(fnn.ModelFileError):
        fnn.load(path)


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, b"PK\x03\x04" + b"\0" * 40])
def test_corrupt_files_are_model_file_errors(tmp_path, content):
    for ext in (".safetensors", ".npz"):
        path = tmp_path / ("f" + ext)
        path.write_bytes(content)
        with pytest.raises(fnn.ModelFileError):
            fnn.load(path)


def test_npz_with_pickled_objects_or_truncated_data_is_refused(tmp_path):
    import json
    meta = np.array(json.dumps({"format": "fastnn-model-v2", "class": "Sequential", "dtype": "float32",
                                "layers": [{"type": "Dense", "config": {"in_features": 2, "out_features": 2}}]}))
    path = tmp_path / "obj.npz"
    np.savez(path, **{"0.weight": np.array([object()] * 4, dtype=object).reshape(2, 2),
                      "0.bias": np.zeros(2, np.float32), "__fastnn_config__": meta})
    with pytest.raises(fnn.ModelFileError, match="pickle"):
        fnn.load(path)


# ------------------------------------------------ 9. modes, buffers, custom layers
class Counter(fnn.layers.Layer):
    """y = x * scale; counts training calls in a buffer (a stand-in for running statistics)."""

    def __init__(self, features, scale=2.0):
        super().__init__()
        self.features, self.scale = features, scale

    def buffer_shapes(self):
        return {"calls": (1,)}

    def config(self):
        return {"features": self.features, "scale": self.scale}

    def forward(self, ctx, x):
        if ctx.training:
            self.buffers["calls"] += 1
        return x * self.scale

    def backward(self, ctx, dy):
        return dy * self.scale


def test_modes_reach_every_layer_and_buffers_round_trip(backend, tmp_path):
    model = fnn.Sequential(Dense(4, 4), Counter(4), Dense(4, 3), backend=backend.name)
    x, y = data(40)
    calls = lambda m: float(m.layers[1].buffers["calls"][0])
    model.predict(x)                       # inference: no training call
    assert calls(model) == 0
    model.eval()
    model.forward(x)
    assert calls(model) == 0
    model.train()
    model.forward(x)
    assert calls(model) == 1
    fnn.Trainer(model).fit(x, y, epochs=1, batch_size=10, progress=False)   # fit trains: 4 batches
    assert calls(model) == 5
    fnn.Trainer(model).evaluate(x, y)
    assert calls(model) == 5
    sd = model.state_dict()
    assert "1.calls" in sd and "1.calls" not in [p.name for p in model.parameters()]
    model.save(tmp_path / "c.safetensors")
    back = fnn.load(tmp_path / "c.safetensors")
    assert calls(back) == 5 and isinstance(back.layers[1], Counter)
    np.testing.assert_array_equal(back.predict(x), model.predict(x))


class Scale(fnn.layers.Layer):
    """A custom layer with a parameter: y = x * w (per feature)."""

    def __init__(self, features):
        super().__init__()
        self.features = features

    def param_shapes(self):
        return {"w": (self.features,)}

    def init_params(self, rng):
        return {"w": rng.uniform(0.5, 1.5, self.features)}

    def config(self):
        return {"features": self.features}

    def forward(self, ctx, x):
        ctx.x = x
        return x * self.params["w"]

    def backward(self, ctx, dy):
        self.grads["w"] += (dy * ctx.x).sum(axis=0)
        return dy * self.params["w"]


def test_custom_layer_trains_gradchecks_and_reloads(backend, tmp_path):
    model = fnn.Sequential(Dense(4, 5), Scale(5), Tanh(), Dense(5, 3), backend=backend.name, dtype="float64")
    graph_gradcheck(model, [np.random.default_rng(0).standard_normal((6, 4))])
    x, y = data(60)
    fnn.Trainer(model, optimizer=fnn.optim.Adam(lr=0.01)).fit(x, y, epochs=2, progress=False)
    model.save(tmp_path / "s.npz")
    back = fnn.load(tmp_path / "s.npz")
    assert isinstance(back.layers[1], Scale)
    np.testing.assert_array_equal(back.predict(x), model.predict(x))


# ------------------------------------------------ graphs: residual MLP, two inputs, two outputs
def graph_gradcheck(model, xs, tol=1e-6):
    """d sum(out_k * probe_k) for every parameter and input matches central differences."""
    rng = np.random.default_rng(11)
    outs = model.forward(xs if model._multi_in else xs[0])
    outs = outs if isinstance(outs, list) else [outs]
    probes = [rng.standard_normal(o.shape) for o in outs]

    def objective():
        got = model.forward(xs if model._multi_in else xs[0])
        got = got if isinstance(got, list) else [got]
        return float(sum((o * p).sum() for o, p in zip(got, probes)))

    objective()
    model.zero_grad()
    dxs = model.backward(probes if len(probes) > 1 else probes[0], return_input_grad=True)
    dxs = dxs if isinstance(dxs, list) else [dxs]
    cases = [(p.name, p.grad.copy(), p.data) for p in model.parameters()]
    cases += [(f"x{i}", d, x) for i, (d, x) in enumerate(zip(dxs, xs))]
    for name, analytic, value in cases:
        numeric = numeric_grad(objective, value)
        err = np.abs(analytic - numeric) / np.maximum(1.0, np.abs(numeric))
        assert err.max() <= tol, f"{name}: max relative error {err.max():.3g}"


def residual_mlp(backend, dtype="float32"):
    return fnn.Sequential(Dense(4, 8), L.Residual(Dense(8, 8), ReLU(), Dense(8, 8)), Tanh(),
                          L.Residual(Dense(8, 8), Tanh()), Dense(8, 3),
                          backend=backend.name, dtype=dtype, seed=2)


def two_in_two_out(backend, dtype="float32"):
    a, b = fnn.Input((4,)), fnn.Input((3,))
    shared = Dense(6, 6)
    ha = ReLU()(Dense(4, 6)(a))
    hb = Tanh()(Dense(3, 6)(b))
    merged = L.Add()([shared(ha), shared(hb), ha])
    cat = L.Concatenate()([merged, hb])
    out_class = Dense(12, 3)(cat)
    out_value = Dense(6, 1)(L.Residual(Dense(6, 6), Tanh())(merged))
    return fnn.Model(inputs=[a, b], outputs=[out_class, out_value], backend=backend.name, dtype=dtype, seed=4)


def test_graph_parameter_names_summary_and_shapes(backend):
    model = two_in_two_out(backend)
    names = [p.name for p in model.parameters()]
    assert len(names) == len(set(names))
    assert sum(p.data.size for p in model.parameters()) == model.count_params() == \
        (4 * 6 + 6) + (3 * 6 + 6) + (6 * 6 + 6) + (12 * 3 + 3) + (6 * 6 + 6) + (6 + 1)
    assert "total parameters" in model.summary(print_fn=None)
    assert model.output_shape([(4,), (3,)]) == [(3,), (1,)]
    with pytest.raises(ValueError, match="Add needs inputs of one shape"):
        L.Add()([fnn.Input((3,)), fnn.Input((4,))])
    with pytest.raises(ValueError, match="Residual"):
        fnn.Sequential(L.Residual(Dense(4, 5)), backend=backend.name).predict(np.ones((2, 4)))
    with pytest.raises(ValueError, match="list of 2 arrays"):
        model.predict(np.ones((2, 4)))


@pytest.mark.parametrize("build", [residual_mlp, two_in_two_out])
def test_graph_gradients_match_central_differences(backend, build):
    model = build(backend, "float64")
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((5, 4))] + ([rng.standard_normal((5, 3))] if model._multi_in else [])
    graph_gradcheck(model, xs)


def test_residual_mlp_trains_and_round_trips(backend, tmp_path):
    X, y, Xt, yt = fnn.data.load_digits(seed=0)
    model = fnn.Sequential(Dense(64, 64), ReLU(), L.Residual(Dense(64, 64), ReLU(), Dense(64, 64)), ReLU(),
                           Dense(64, 10), backend=backend.name, seed=0)
    trainer = fnn.Trainer(model, optimizer=fnn.optim.Adam(lr=3e-3), seed=0)
    trainer.fit(X, y, epochs=15, batch_size=32, progress=False)
    acc = trainer.evaluate(Xt, yt)["accuracy"]   # 96.4% when written, on every backend
    assert acc >= 0.95, acc
    model.save(tmp_path / "res.safetensors")
    back = fnn.load(tmp_path / "res.safetensors")
    np.testing.assert_array_equal(back.predict(Xt), model.predict(Xt))
    assert list(back.state_dict()) == list(model.state_dict())


def test_two_input_two_output_graph_trains_and_round_trips(backend, tmp_path):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((600, 4)).astype(np.float32), rng.standard_normal((600, 3)).astype(np.float32)
    label = (a[:, 0] + b[:, 0] > 0).astype(int) + (a[:, 1] > 0.5)
    value = (a[:, 2] * b[:, 1])[:, None].astype(np.float32)
    model = two_in_two_out(backend)
    trainer = fnn.Trainer(model, loss=["cross_entropy", "mse"], loss_weights=[1.0, 0.5],
                          optimizer=fnn.optim.Adam(lr=0.01), seed=1)
    before = trainer.evaluate([a, b], [label, value])
    history = trainer.fit([a, b], [label, value], epochs=40, batch_size=32, progress=False)
    after = trainer.evaluate([a, b], [label, value])
    assert set(history.history) >= {"loss", "output_0_loss", "output_1_loss", "output_0_accuracy"}
    assert after["loss"] < 0.5 * before["loss"]
    assert after["output_0_accuracy"] >= 0.85, after    # 0.88 when written (chance: 0.42)
    assert after["output_1_loss"] < 0.5 * before["output_1_loss"], (before, after)
    np.testing.assert_allclose(after["loss"], after["output_0_loss"] + 0.5 * after["output_1_loss"], rtol=1e-6)
    model.save(tmp_path / "g.npz")
    back = fnn.load(tmp_path / "g.npz")
    for got, want in zip(back.predict([a, b]), model.predict([a, b])):
        np.testing.assert_array_equal(got, want)


def test_graph_output_without_a_gradient_and_unused_branches(backend):
    model = two_in_two_out(backend, "float64")
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((4, 4)), rng.standard_normal((4, 3))]
    out = model.forward(xs)
    model.zero_grad()
    model.backward([np.ones_like(out[0]), None])     # only the first output has a loss
    grads = {p.name: p.grad.copy() for p in model.parameters()}
    last = [n for n in grads if n.startswith(model._prefix[id(model._graph.outputs[1].layer)] + ".")]
    assert last and all(not grads[n].any() for n in last)
    assert any(grads[n].any() for n in grads if n not in last)


def test_losses_and_weights_by_dict_equal_the_list_form(backend):
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((40, 4)).astype(np.float32), rng.standard_normal((40, 3)).astype(np.float32)
    ys = [rng.integers(0, 3, 40), rng.standard_normal((40, 1)).astype(np.float32)]
    results = []
    for loss, weights in ((["cross_entropy", "mse"], [1.0, 0.25]),
                          ({1: "mse", 0: "cross_entropy"}, {0: 1.0, 1: 0.25})):
        model = two_in_two_out(backend)
        trainer = fnn.Trainer(model, loss=loss, loss_weights=weights, optimizer=fnn.optim.SGD(lr=0.05), seed=0)
        trainer.fit([a, b], ys, epochs=2, batch_size=8, progress=False)
        results.append(model.parameters().flat_data.copy())
    np.testing.assert_array_equal(results[0], results[1])
    with pytest.raises(ValueError, match="keys"):
        fnn.Trainer(two_in_two_out(backend), loss={0: "mse"})
    with pytest.raises(ValueError, match="2 outputs"):
        fnn.Trainer(two_in_two_out(backend)).fit([a, b], ys[0], progress=False)


def test_a_layer_belongs_to_one_live_model(backend):
    dense = Dense(4, 3)
    first = fnn.Sequential(dense, backend=backend.name)
    with pytest.raises(ValueError, match="already belongs to another model"):
        fnn.Sequential(dense, ReLU(), backend=backend.name)
    x, _ = data()
    np.testing.assert_allclose(first.predict(x), x @ dense.params["weight"].T + dense.params["bias"], rtol=1e-5,
                               atol=1e-6)
    del first                       # once that model is gone the layer can be built again
    import gc
    gc.collect()
    fnn.Sequential(dense, backend=backend.name)
