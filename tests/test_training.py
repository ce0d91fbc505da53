"""Training on real data, the Trainer's API, determinism, saving and loading."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn.layers import Dense, ReLU, Sigmoid, Tanh


@pytest.fixture(scope="module")
def digits():
    return fnn.data.load_digits(seed=0)


def digits_model(backend, seed=0, dtype="float32"):
    return fnn.Sequential(Dense(64, 128), ReLU(), Dense(128, 10), backend=backend, dtype=dtype, seed=seed)


def test_digits_reach_95_percent(backend, digits):
    X, y, Xt, yt = digits
    model = digits_model(backend.name)
    trainer = fnn.Trainer(model, loss="cross_entropy", optimizer=fnn.optim.SGD(lr=0.05, momentum=0.9))
    history = trainer.fit(X, y, epochs=25, batch_size=32, validation_data=(Xt, yt), progress=False)
    result = trainer.evaluate(Xt, yt)
    assert result["accuracy"] >= 0.95, result
    assert history.history["val_accuracy"][-1] == pytest.approx(result["accuracy"])
    assert history.history["loss"][-1] < history.history["loss"][0] / 5


def test_adam_and_float64_train_too(backend, digits):
    X, y, Xt, yt = digits
    model = fnn.Sequential(Dense(64, 64), Tanh(), Dense(64, 10), backend=backend.name, dtype="float64")
    trainer = fnn.Trainer(model, "cross_entropy", fnn.optim.Adam(lr=3e-3))
    trainer.fit(X, y, epochs=15, batch_size=64, progress=False)
    assert trainer.evaluate(Xt, yt)["accuracy"] >= 0.95


def test_same_seed_same_weights(backend, digits):
    X, y, _, _ = digits
    weights = []
    for _ in range(2):
        model = digits_model(backend.name, seed=5)
        fnn.Trainer(model, "cross_entropy", fnn.optim.SGD(lr=0.05, momentum=0.9), seed=9).fit(
            X, y, epochs=2, batch_size=50, progress=False)
        weights.append(model.parameters().flat_data.copy())
    np.testing.assert_array_equal(weights[0], weights[1])
    other = digits_model(backend.name, seed=6)
    assert not np.array_equal(other.parameters().flat_data, digits_model(backend.name, seed=5).parameters().flat_data)


def test_backends_agree_step_for_step(digits):
    """One SGD epoch from the same start gives the same weights on every backend (float64)."""
    X, y, _, _ = digits
    results = {}
    for name in fnn.backends():
        model = digits_model(name, seed=1, dtype="float64")
        fnn.Trainer(model, "cross_entropy", fnn.optim.SGD(lr=0.05, momentum=0.9), seed=2).fit(
            X[:400], y[:400], epochs=1, batch_size=40, progress=False)
        results[name] = model.parameters().flat_data
    for name, flat in results.items():
        np.testing.assert_allclose(flat, results["numpy"], rtol=1e-8, atol=1e-10, err_msg=name)


def test_history_callbacks_and_early_stop(digits):
    X, y, Xt, yt = digits
    seen = []

    class StopAtTwo(fnn.Callback):
        def on_epoch_end(self, epoch, logs):
            seen.append((epoch, sorted(logs)))
            if epoch == 1:
                trainer.stop_training = True

    trainer = fnn.Trainer(digits_model("numpy"), optimizer=fnn.optim.SGD(lr=0.05))
    history = trainer.fit(X, y, epochs=10, batch_size=64, validation_data=(Xt, yt),
                          progress=False, callbacks=[StopAtTwo()])
    assert history.epoch == [0, 1]
    assert [e for e, _ in seen] == [0, 1]
    assert seen[0][1] == ["accuracy", "loss", "time", "val_accuracy", "val_loss"]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert len(history.history[key]) == 2


def test_progress_bar_shows_metrics(digits, capsys):
    X, y, _, _ = digits
    trainer = fnn.Trainer(digits_model("numpy"), optimizer=fnn.optim.SGD(lr=0.05))
    trainer.fit(X[:200], y[:200], epochs=2, batch_size=50, progress=True)
    err = capsys.readouterr().err
    assert "2/2" in err and "loss=" in err and "accuracy=" in err


def test_regression_with_mse(backend):
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (512, 3))
    y = np.sin(X @ np.array([1.0, -2.0, 0.5]))
    model = fnn.Sequential(Dense(3, 32), Tanh(), Dense(32, 1), backend=backend.name)
    trainer = fnn.Trainer(model, loss="mse", optimizer=fnn.optim.Adam(lr=1e-2))
    history = trainer.fit(X, y, epochs=60, batch_size=32, progress=False)
    assert "accuracy" not in history.history
    assert trainer.evaluate(X, y)["loss"] < 0.05 * np.var(y)   # explains > 95% of the variance


def test_binary_classification(backend):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((400, 2))
    y = ((X[:, 0] * X[:, 1]) > 0).astype(float)   # XOR-like quadrants
    model = fnn.Sequential(Dense(2, 16), Tanh(), Dense(16, 1), backend=backend.name, seed=0)
    trainer = fnn.Trainer(model, "binary_cross_entropy", fnn.optim.Adam(lr=0.02))
    trainer.fit(X, y, epochs=80, batch_size=32, progress=False)
    assert trainer.evaluate(X, y)["accuracy"] > 0.9


def test_explicit_loop_matches_trainer(digits):
    X, y, _, _ = digits
    a, b = digits_model("numpy", seed=3), digits_model("numpy", seed=3)
    opt = fnn.optim.SGD(lr=0.1)
    for lo in range(0, 200, 50):
        out = a.forward(X[lo:lo + 50])
        loss, grad = fnn.losses.cross_entropy(out, y[lo:lo + 50], backend="numpy")
        a.zero_grad()
        a.backward(grad)
        opt.step(a.parameters())
    fnn.Trainer(b, optimizer=fnn.optim.SGD(lr=0.1)).fit(X[:200], y[:200], epochs=1, batch_size=50,
                                                        shuffle=False, progress=False)
    np.testing.assert_allclose(a.parameters().flat_data, b.parameters().flat_data, rtol=1e-6)


@pytest.mark.parametrize("ext", [".safetensors", ".npz"])
def test_save_and_load_predict_exactly(backend, digits, tmp_path, ext):
    X, y, Xt, _ = digits
    model = fnn.Sequential(Dense(64, 32), Sigmoid(), Dense(32, 10), backend=backend.name)
    fnn.Trainer(model, optimizer=fnn.optim.SGD(lr=0.1)).fit(X, y, epochs=1, progress=False)
    path = tmp_path / ("model" + ext)
    model.save(path)
    loaded = fnn.load(path)
    assert loaded.backend.name == backend.name
    assert [type(l) for l in loaded.layers] == [type(l) for l in model.layers]
    np.testing.assert_array_equal(loaded.predict(Xt), model.predict(Xt))
    assert set(loaded.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_safetensors_file_is_a_state_dict(tmp_path):
    from safetensors.numpy import load_file
    model = digits_model("numpy")
    model.save(tmp_path / "m.safetensors")
    tensors = load_file(tmp_path / "m.safetensors")
    assert tensors["0.weight"].shape == (128, 64)   # PyTorch's (out, in) layout
    np.testing.assert_array_equal(tensors["2.bias"], model.layers[2].params["bias"])


def test_predict_accepts_ints_float64_and_noncontiguous(digits):
    X = digits[0]
    model = digits_model("numpy")
    base = model.predict(X[:10])
    np.testing.assert_allclose(model.predict(X[:10].astype(np.float64)), base, rtol=1e-6)
    strided = np.asfortranarray(X[:10])
    np.testing.assert_allclose(model.predict(strided), base, rtol=1e-6)
    ints = (X[:10] * 16).astype(np.int32)
    np.testing.assert_allclose(model.predict(ints), model.predict(ints.astype(np.float32)))


def test_main_job_prints_the_table_and_saves_curves(tmp_path, capsys):
    from fastnn import cli
    pytest.importorskip("matplotlib")
    path = tmp_path / "curves.png"
    assert cli.main(["digits", "--epochs", "3", "--no-progress", "--backends", *fnn.backends(),
                     "--plot", str(path)]) == 0
    out = capsys.readouterr().out
    for name in fnn.backends():
        assert f"| {name} |" in out
    assert "speed vs numpy" in out and "training curves (" in out
    assert path.stat().st_size > 10_000
