"""Bad input gets a ValueError or TypeError naming the problem, on every backend."""
import warnings

import numpy as np
import pytest

import fastnn as fnn
from fastnn.layers import Dense, ReLU


@pytest.fixture
def trainer(backend):
    model = fnn.Sequential(Dense(4, 8), ReLU(), Dense(8, 3), backend=backend.name)
    return fnn.Trainer(model, "cross_entropy", fnn.optim.SGD(lr=0.1))


X = np.random.default_rng(0).standard_normal((6, 4))
Y = np.array([0, 1, 2, 0, 1, 2])


@pytest.mark.parametrize("bad_x,y,error,words", [
    (X[:, :3], Y, ValueError, "expects inputs of shape"),
    (X[0], Y[:1], ValueError, "batch axis"),
    (X.astype(str), Y, TypeError, "real numbers"),
    (X.astype(object), Y, TypeError, "real numbers"),
    (np.where(X > 1, np.nan, X), Y, ValueError, "NaN or inf"),
    (np.where(X > 1, np.inf, X), Y, ValueError, "NaN or inf"),
    (np.zeros((0, 4)), Y[:0], ValueError, "empty"),
    (X, Y + 1, ValueError, "must lie in [0, 3)"),
    (X, Y - 1, ValueError, "must lie in [0, 3)"),
    (X, Y[:5], ValueError, "6 samples but y has 5"),
    (X, Y.astype(str), TypeError, "real numbers"),
    (X, Y + 0.5, TypeError, "integer class indices"),
])
def test_fit_rejects(trainer, bad_x, y, error, words):
    with pytest.raises(error, match=_re(words)):
        trainer.fit(bad_x, y, epochs=1, progress=False)
    with pytest.raises(error, match=_re(words)):
        trainer.evaluate(bad_x, y)


def _re(words):
    import re
    return re.escape(words)


def test_predict_rejects(backend):
    model = fnn.Sequential(Dense(4, 2), backend=backend.name)
    with pytest.raises(ValueError, match="expects inputs of shape"):
        model.predict(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="NaN"):
        model.predict(np.full((3, 4), np.nan))
    with pytest.raises(TypeError, match="real numbers"):
        model.predict([["a", "b", "c", "d"]])


def test_bad_validation_data(trainer):
    with pytest.raises(ValueError, match="X_val"):
        trainer.fit(X, Y, validation_data=(X[:, :2], Y), progress=False)
    with pytest.raises(ValueError, match="pair"):
        trainer.fit(X, Y, validation_data=(X,), progress=False)


@pytest.mark.parametrize("kwargs,words", [({"epochs": -1}, "epochs"), ({"batch_size": 0}, "batch_size"),
                                          ({"batch_size": 2.5}, "batch_size")])
def test_bad_fit_arguments(trainer, kwargs, words):
    with pytest.raises(ValueError, match=words):
        trainer.fit(X, Y, progress=False, **kwargs)


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown backend 'fortran'"):
        fnn.get_backend("fortran")
    with pytest.raises(ValueError, match="unknown backend"):
        fnn.Sequential(Dense(2, 2), backend="tpu")
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        fnn.Trainer(fnn.Sequential(Dense(2, 2)), loss="hinge")
    with pytest.raises(ValueError, match="unknown optimizer"):
        fnn.Trainer(fnn.Sequential(Dense(2, 2)), optimizer="lbfgs")
    with pytest.raises(ValueError, match="dtype"):
        fnn.Sequential(Dense(2, 2), dtype="int8")


def test_bad_layer_arguments():
    for args in [(0, 3), (3, -1), (2.5, 3), ("4", 3)]:
        with pytest.raises(ValueError, match="positive integer"):
            Dense(*args)
    with pytest.raises(TypeError, match="fastnn layers"):
        fnn.Sequential(Dense(2, 2), "relu")
    with pytest.raises(ValueError, match="learning rate"):
        fnn.optim.SGD(lr=-1)


def test_missing_and_corrupt_model_files(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        fnn.load(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError):
        fnn.load(tmp_path / "nope.npz")
    for name, content in [("junk.safetensors", b"\x00garbage" * 10), ("junk.npz", b"PK\x03\x04junk"),
                          ("empty.safetensors", b"")]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match="cannot read model file"):
            fnn.load(tmp_path / name)
    from safetensors.numpy import save_file
    save_file({"w": np.zeros(3, np.float32)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="no fastnn architecture"):
        fnn.load(tmp_path / "plain.safetensors")
    (tmp_path / "model.pkl").write_bytes(b"x")
    with pytest.raises(ValueError, match="extension"):
        fnn.load(tmp_path / "model.pkl")


def test_truncated_model_file(tmp_path):
    model = fnn.Sequential(Dense(4, 3))
    model.save(tmp_path / "m.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot read model file"):
        fnn.load(tmp_path / "cut.safetensors")


@pytest.mark.parametrize("call,error,words", [
    (lambda be: be.matmul(np.ones((2, 3)), np.ones((4, 2))), ValueError, "do not align"),
    (lambda be: be.matmul(np.ones(3), np.ones((3, 2))), ValueError, "2-D"),
    (lambda be: be.matmul(np.ones((2, 2)), np.array([["a", "b"], ["c", "d"]])), TypeError, "real numbers"),
    (lambda be: be.matmul(np.ones((0, 2)), np.ones((2, 2))), ValueError, "empty"),
    (lambda be: be.relu(np.ones((2, 2, 2))), ValueError, "2-D"),
    (lambda be: be.bias_add(np.ones((2, 3)), np.ones(2)), ValueError, "bias has 2 entries"),
    (lambda be: be.cross_entropy(np.ones((2, 3)), np.array([0, 3])), ValueError, "must lie in"),
    (lambda be: be.cross_entropy(np.ones((2, 3)), np.array([0, -1])), ValueError, "must lie in"),
    (lambda be: be.cross_entropy(np.ones((2, 3)), np.array([0, 1, 2])), ValueError, "rows"),
    (lambda be: be.mse(np.ones((2, 3)), np.ones((3, 2))), ValueError, "same shape"),
    (lambda be: be.sgd_step(np.ones(3), np.ones(4), np.zeros(3), 0.1), ValueError, "grad shape"),
    (lambda be: be.sgd_step(np.ones(3, np.float32), np.ones(3), np.zeros(3), 0.1), ValueError, "dtype"),
    (lambda be: be.sgd_step(np.ones(3), np.ones(3), np.zeros(3), "big"), TypeError, "lr"),
    (lambda be: be.adam_step(*[np.ones(3)] * 4, 0.1, 0.9, 0.99, 1e-8, 0.0, 0), ValueError, "t must"),
])
def test_kernel_entry_points_reject(backend, call, error, words):
    with pytest.raises(error, match=words):
        call(backend)


@pytest.mark.parametrize("where", [0, 70_000, -1])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, "both infs"])
def test_a_large_input_with_one_bad_value_is_refused(where, bad):
    """Large inputs are checked by one sum (model._finite): one NaN or inf anywhere is found."""
    model = fnn.Sequential(Dense(8, 2), backend="numpy", seed=0)
    x = np.random.default_rng(0).standard_normal((10_000, 8)).astype(np.float32)
    flat = x.reshape(-1)
    if bad == "both infs":   # inf - inf: the sum is NaN, not inf
        flat[where], flat[where - 1] = np.inf, -np.inf
    else:
        flat[where] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        model.predict(x)


def test_a_large_finite_input_whose_sum_overflows_is_accepted_without_a_warning():
    model = fnn.Sequential(Dense(8, 2), backend="numpy", seed=0)
    x = np.full((10_000, 8), 3e38, np.float32)   # each value finite, their float32 sum is not
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = model.predict(x)
    assert out.shape == (10_000, 2)
