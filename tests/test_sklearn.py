"""scikit-learn's own estimator checks over fastnn.sklearn's MLPClassifier and
MLPRegressor, and accuracy against sklearn.neural_network at the same settings."""
import pickle
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn", minversion="1.6")

from sklearn.datasets import load_digits, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn import neural_network  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from fastnn.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

# scikit-learn runs its own MLPs through these checks with max_iter=100.
CHECK_PARAMS = dict(max_iter=100)


@parametrize_with_checks([MLPClassifier(**CHECK_PARAMS), MLPRegressor(**CHECK_PARAMS)])
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


# ----------------------------------------------------------- against sklearn
@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16.0, y, test_size=0.25, random_state=0, stratify=y)


@pytest.mark.parametrize("settings", [
    dict(solver="adam", max_iter=40),
    dict(solver="sgd", learning_rate_init=0.05, momentum=0.9, max_iter=40, alpha=1e-3),
    dict(solver="adam", activation="tanh", hidden_layer_sizes=(64, 32), max_iter=30, batch_size=64),
], ids=["adam", "sgd-nesterov", "tanh-2layers"])
def test_digits_accuracy_matches_sklearn(digits, settings):
    Xtr, Xte, ytr, yte = digits
    settings = dict(settings, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = MLPClassifier(**settings).fit(Xtr, ytr)
        theirs = neural_network.MLPClassifier(**settings).fit(Xtr, ytr)
    acc, ref = ours.score(Xte, yte), theirs.score(Xte, yte)
    assert acc > 0.93
    assert abs(acc - ref) <= 0.01, (acc, ref)
    # same initialisation and the same loop: the loss curves agree closely
    assert ours.n_iter_ == theirs.n_iter_
    assert abs(ours.loss_curve_[-1] - theirs.loss_curve_[-1]) < 0.05 * theirs.loss_curve_[-1] + 0.01


def test_regressor_matches_sklearn():
    X, y = make_regression(400, 8, n_targets=2, noise=1.0, random_state=0)
    y = y / y.std()
    settings = dict(hidden_layer_sizes=(32,), max_iter=40, tol=0.0, learning_rate_init=0.01, random_state=0, alpha=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = MLPRegressor(dtype="float64", **settings).fit(X, y)
        theirs = neural_network.MLPRegressor(**settings).fit(X, y)
    assert ours.score(X, y) > 0.9
    assert abs(ours.score(X, y) - theirs.score(X, y)) < 0.01
    # batches are shuffled by different generators, so the curves agree only closely
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=0.15)


def test_fitted_attributes_layout(digits):
    Xtr, Xte, ytr, _ = digits
    labels = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    clf = MLPClassifier(hidden_layer_sizes=(20, 15), max_iter=5, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(Xtr, labels[ytr])
    assert [c.shape for c in clf.coefs_] == [(64, 20), (20, 15), (15, 10)]
    assert [b.shape for b in clf.intercepts_] == [(20,), (15,), (10,)]
    assert clf.n_features_in_ == 64 and clf.n_layers_ == 4 and clf.n_outputs_ == 10
    assert clf.out_activation_ == "softmax" and len(clf.loss_curve_) == clf.n_iter_ == 5
    assert clf.best_loss_ == min(clf.loss_curve_) and clf.t_ == 5 * len(Xtr)
    assert set(clf.classes_) == set(labels) and set(clf.predict(Xte)) <= set(labels)
    # sklearn's forward pass over coefs_/intercepts_ gives predict_proba
    h = Xte
    for W, b in zip(clf.coefs_[:-1], clf.intercepts_[:-1]):
        h = np.maximum(h @ W.astype(np.float64) + b, 0)
    z = h @ clf.coefs_[-1].astype(np.float64) + clf.intercepts_[-1]
    p = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(clf.predict_proba(Xte), p / p.sum(1, keepdims=True), atol=1e-5)


def test_pickle_partial_fit_and_backends(digits):
    Xtr, Xte, ytr, yte = digits
    import fastnn
    for backend in [b for b in fastnn.backends() if b != "cuda"]:  # the estimators train on the CPU
        clf = MLPClassifier(hidden_layer_sizes=(32,), learning_rate_init=0.01, backend=backend, random_state=0)
        for _ in range(3):
            clf.partial_fit(Xtr, ytr, classes=np.arange(10))
        assert clf.n_iter_ == 1 and len(clf.loss_curve_) == 3
        clone = pickle.loads(pickle.dumps(clf))
        np.testing.assert_array_equal(clone.predict_proba(Xte), clf.predict_proba(Xte))
        # the optimizer state travels too: one more epoch gives the same weights
        clone.partial_fit(Xtr, ytr)
        clf.partial_fit(Xtr, ytr)
        np.testing.assert_allclose(clone.coefs_[0], clf.coefs_[0], rtol=1e-6, atol=1e-7)
        assert clf.model_.backend.name == backend and clf.score(Xte, yte) > 0.85


def test_early_stopping_and_warm_start(digits):
    Xtr, _, ytr, _ = digits
    clf = MLPClassifier(early_stopping=True, max_iter=200, n_iter_no_change=3, random_state=0).fit(Xtr, ytr)
    assert clf.n_iter_ < 200 and clf.best_loss_ is None
    assert len(clf.validation_scores_) == clf.n_iter_
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    warm = MLPClassifier(max_iter=2, warm_start=True, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warm.fit(Xtr, ytr)
        first = warm.loss_curve_[-1]
        warm.fit(Xtr, ytr)
    assert len(warm.loss_curve_) == 4 and warm.loss_curve_[-1] < first


def test_unsupported_settings(digits):
    Xtr, _, ytr, _ = digits
    with pytest.raises(ValueError, match="solver"):
        MLPClassifier(solver="lbfgs").fit(Xtr, ytr)
    with pytest.raises(ValueError, match="loss"):
        MLPRegressor(loss="poisson").fit(Xtr, ytr)
    with pytest.raises(ValueError, match="dtype"):
        MLPClassifier(dtype="float16", max_iter=1).fit(Xtr, ytr)
    with pytest.raises(ValueError, match="backend"):
        MLPClassifier(backend="nope", max_iter=1).fit(Xtr, ytr)
