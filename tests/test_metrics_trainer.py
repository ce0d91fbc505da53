"""Metrics, sample_weight and class_weight through the Trainer (the issue-11 contract)."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn import losses

skm = pytest.importorskip("sklearn.metrics")
L = fnn.layers


def classifier(seed=0, n=2600, c=4):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    y = (X[:, :c] + 0.5 * rng.normal(size=(n, c))).argmax(axis=1)
    model = fnn.Sequential(L.Dense(6, 16), L.ReLU(), L.Dense(16, c), backend="numpy",
                           dtype="float64", seed=seed)
    return model, X, y


def test_evaluate_metrics_equal_sklearn_over_batches():
    model, X, y = classifier()
    trainer = fnn.Trainer(model, loss="cross_entropy", optimizer=fnn.optim.SGD(lr=0.1),
                          metrics=["accuracy", "precision", "recall", "f1", fnn.metrics.TopKAccuracy(k=2)])
    trainer.fit(X[:600], y[:600], epochs=2, batch_size=50, progress=False)
    logs = trainer.evaluate(X, y)    # 2600 rows: three batches of 1024
    out = model.predict(X)
    pred = out.argmax(axis=1)
    assert logs["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    for name, fn in [("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)]:
        assert logs[name] == pytest.approx(fn(y, pred, average="macro", zero_division=0), abs=1e-12)
    assert logs["top_2_accuracy"] == pytest.approx(
        skm.top_k_accuracy_score(y, out, k=2, labels=np.arange(4)), abs=1e-12)


def test_validation_metrics_in_history():
    model, X, y = classifier(1)
    trainer = fnn.Trainer(model, loss="cross_entropy", optimizer=fnn.optim.SGD(lr=0.1), metrics=["f1"])
    history = trainer.fit(X[:2000], y[:2000], epochs=2, batch_size=100, validation_data=(X[2000:], y[2000:]),
                          progress=False)
    assert len(history.history["f1"]) == 2 and len(history.history["val_f1"]) == 2
    want = skm.f1_score(y[2000:], model.predict(X[2000:]).argmax(1), average="macro", zero_division=0)
    assert history.history["val_f1"][-1] == pytest.approx(want, abs=1e-12)


def test_regression_metrics():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(1500, 3))
    t = X @ rng.normal(size=(3, 2)) + 0.1 * rng.normal(size=(1500, 2))
    model = fnn.Sequential(L.Dense(3, 2), backend="numpy", dtype="float64", seed=0)
    trainer = fnn.Trainer(model, loss="mse", optimizer=fnn.optim.SGD(lr=0.05), metrics=["mae", "r2"])
    trainer.fit(X, t, epochs=2, batch_size=64, progress=False)
    logs = trainer.evaluate(X, t)
    out = model.predict(X)
    assert logs["mae"] == pytest.approx(skm.mean_absolute_error(t, out), abs=1e-12)
    assert logs["r2"] == pytest.approx(skm.r2_score(t, out), abs=1e-12)


def _fit_params(sample_weight=None, class_weight=None, seed=3):
    model, X, y = classifier(seed, n=300)
    trainer = fnn.Trainer(model, loss="cross_entropy", optimizer=fnn.optim.SGD(lr=0.2))
    trainer.fit(X, y, epochs=2, batch_size=32, sample_weight=sample_weight, class_weight=class_weight,
                progress=False)
    return model.parameters().flat_data.copy(), y


def test_sample_and_class_weights_train_as_declared():
    plain, y = _fit_params()
    ones, _ = _fit_params(sample_weight=np.ones(len(y)))
    np.testing.assert_allclose(ones, plain, rtol=0, atol=1e-12)            # ones: the unweighted fit
    zeroed, _ = _fit_params(sample_weight=(y != 1).astype(float))
    by_class, _ = _fit_params(class_weight={1: 0.0})
    np.testing.assert_allclose(by_class, zeroed, rtol=0, atol=1e-12)       # class_weight = its sample_weight
    assert not np.allclose(zeroed, plain)
    utils = pytest.importorskip("sklearn.utils.class_weight")
    balanced, _ = _fit_params(class_weight="balanced")
    explicit, _ = _fit_params(sample_weight=utils.compute_sample_weight("balanced", y))
    np.testing.assert_allclose(balanced, explicit, rtol=0, atol=1e-12)


def test_trainer_rejects_bad_metrics_and_weights():
    model, X, y = classifier(4, n=100)
    with pytest.raises(ValueError, match="unknown metric"):
        fnn.Trainer(model, loss="cross_entropy", metrics=["acc_score"])
    with pytest.raises(ValueError, match="classification loss"):
        fnn.Trainer(model, loss="mse", metrics=["accuracy"])
    trainer = fnn.Trainer(model, loss="cross_entropy")
    with pytest.raises(ValueError, match="sample_weight"):
        trainer.fit(X, y, sample_weight=-np.ones(len(y)), progress=False)
    with pytest.raises(ValueError, match="all zero"):
        trainer.fit(X, y, sample_weight=np.zeros(len(y)), progress=False)
    with pytest.raises(ValueError, match="class 7"):
        trainer.fit(X, y, class_weight={7: 2.0}, progress=False)
    custom = fnn.Trainer(model, loss=losses.custom(lambda o, t: (0.0, o * 0), targets="labels"))
    with pytest.raises(TypeError, match="built-in loss"):
        custom.fit(X, y, sample_weight=np.ones(len(y)), progress=False)
