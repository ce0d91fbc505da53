"""fastnn.metrics: streamed over uneven batches, each metric equals scikit-learn's on all rows."""
import warnings

import numpy as np
import pytest

import fastnn as fnn
from fastnn import metrics

skm = pytest.importorskip("sklearn.metrics")

SPLITS = (0, 7, 8, 40, 41, 97, 150)   # uneven batches, one of a single row


def stream(metric, out, y, w=None):
    metric.reset()
    for lo, hi in zip(SPLITS[:-1], SPLITS[1:]):
        metric.update(out[lo:hi], y[lo:hi], None if w is None else w[lo:hi])
    return metric.result()


def data(c, seed=0, missing=None):
    rng = np.random.default_rng(seed)
    n = SPLITS[-1]
    out = rng.normal(size=(n, c))
    y = rng.integers(0, c, n)
    if missing is not None:   # a class nobody has and nobody predicts
        y[y == missing] = (missing + 1) % c
        out[:, missing] -= 100
    w = rng.uniform(0, 2, n)
    w[::9] = 0.0
    return out, y, w


SK = {"accuracy": lambda t, p, w: skm.accuracy_score(t, p, sample_weight=w),
      "precision": lambda t, p, w: skm.precision_score(t, p, average="macro", zero_division=0, sample_weight=w),
      "recall": lambda t, p, w: skm.recall_score(t, p, average="macro", zero_division=0, sample_weight=w),
      "f1": lambda t, p, w: skm.f1_score(t, p, average="macro", zero_division=0, sample_weight=w)}


@pytest.mark.parametrize("name", sorted(SK))
@pytest.mark.parametrize("weighted", [False, True])
def test_multiclass_against_sklearn(name, weighted):
    out, y, w = data(5, missing=3)
    w = w if weighted else None
    want = SK[name](y, out.argmax(1), w)
    got = stream(metrics.get(name, loss="cross_entropy"), out, y, w)
    assert got == pytest.approx(want, abs=1e-12)
    # labels absent from the early batches, and one-hot targets, give the same
    order = np.argsort(y, kind="stable")
    assert stream(metrics.get(name), out[order], y[order], None if w is None else w[order]) == \
        pytest.approx(want, abs=1e-12)
    assert stream(metrics.get(name), out, np.eye(5)[y], w) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("name", sorted(SK))
@pytest.mark.parametrize("weighted", [False, True])
def test_binary_logit_against_sklearn(name, weighted):
    rng = np.random.default_rng(1)
    n = SPLITS[-1]
    out = rng.normal(size=(n, 1)) * 3
    y = (rng.uniform(size=(n, 1)) < 0.3).astype(np.float64)
    w = rng.uniform(0, 2, n) if weighted else None
    want = SK[name](y[:, 0].astype(int), (out[:, 0] > 0).astype(int), w)
    assert stream(metrics.get(name, loss="binary_cross_entropy"), out, y, w) == pytest.approx(want, abs=1e-12)
    assert stream(metrics.get(name), out, y[:, 0], w) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("name", sorted(SK))
def test_multilabel_sigmoid_against_sklearn(name):
    rng = np.random.default_rng(2)
    n = SPLITS[-1]
    out = rng.normal(size=(n, 3))
    y = (rng.uniform(size=(n, 3)) < 0.4).astype(np.float64)
    w = rng.uniform(0, 2, n)
    want = SK[name](y.astype(int), (out > 0).astype(int), w)
    assert stream(metrics.get(name, loss="binary_cross_entropy"), out, y, w) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("weighted", [False, True])
def test_top_k_against_sklearn(k, weighted):
    out, y, w = data(7, seed=3)
    w = w if weighted else None
    want = skm.top_k_accuracy_score(y, out, k=k, labels=np.arange(7), sample_weight=w)
    m = metrics.TopKAccuracy(k=k) if k != 5 else metrics.get("top_k_accuracy")
    assert m.name == ("top_k_accuracy" if k == 5 else f"top_{k}_accuracy")
    assert stream(metrics.get(m, loss="cross_entropy"), out, y, w) == pytest.approx(want, abs=1e-12)
    assert metrics.get(f"top_{k}_accuracy").k == k


def test_top_k_binary_matches_sklearn():
    rng = np.random.default_rng(4)
    out = rng.normal(size=(SPLITS[-1], 1)) * 3
    y = rng.integers(0, 2, SPLITS[-1])
    for k in (1, 2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = skm.top_k_accuracy_score(y, out[:, 0], k=k)
        assert stream(metrics.TopKAccuracy(k=k), out, y) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("name", ["mae", "r2"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("d", [1, 3])
def test_regression_against_sklearn(name, weighted, d):
    rng = np.random.default_rng(5 + d)
    n = SPLITS[-1]
    y = rng.normal(size=(n, d)) * 4 + 1000.0    # a large offset: streamed moments must not cancel
    out = y + rng.normal(size=(n, d))
    w = rng.uniform(0, 2, n) if weighted else None
    fn = skm.mean_absolute_error if name == "mae" else skm.r2_score
    want = fn(y, out, sample_weight=w, multioutput="uniform_average")
    assert stream(metrics.get(name, loss="mse"), out, y, w) == pytest.approx(want, abs=1e-10)
    if d == 1:
        assert stream(metrics.get(name), out, y[:, 0], w) == pytest.approx(want, abs=1e-10)


def test_r2_edge_cases_as_sklearn():
    y = np.full((10, 2), 3.0)
    out = y.copy()
    out[:, 1] += 1
    m = metrics.R2()
    m.update(out[:4], y[:4])
    m.update(out[4:], y[4:])
    assert m.result() == skm.r2_score(y, out) == 0.5   # constant column: 1 if exact, else 0
    one = metrics.R2()
    one.update(out[:1], y[:1])
    assert np.isnan(one.result())                      # fewer than two rows


def test_ignore_index_rows_are_left_out():
    out, y, w = data(4, seed=6)
    y = y.copy()
    y[::5] = -100
    kept = y != -100
    loss = fnn.losses.CrossEntropy(ignore_index=-100)
    for name, fn in SK.items():
        got = stream(metrics.get(name, loss=loss), out, y, w)
        assert got == pytest.approx(fn(y[kept], out[kept].argmax(1), w[kept]), abs=1e-12)
    top = stream(metrics.get("top_2_accuracy", loss=loss), out, y, w)
    assert top == pytest.approx(skm.top_k_accuracy_score(y[kept], out[kept], k=2, labels=range(4),
                                                          sample_weight=w[kept]), abs=1e-12)


def test_callable_metric_is_batch_size_weighted():
    out, y, _ = data(3, seed=7)

    def hits(o, t):
        return float(np.mean(o.argmax(1) == t))
    m = metrics.get(hits)
    assert m.name == "hits"
    assert stream(m, out, y) == pytest.approx(np.mean(out.argmax(1) == y), abs=1e-12)
    w = np.random.default_rng(0).uniform(0, 1, len(y))

    def weighted_hits(o, t, sample_weight=None):
        return skm.accuracy_score(t, o.argmax(1), sample_weight=sample_weight) if sample_weight.sum() else 0.0
    assert stream(metrics.get(weighted_hits), out, y, w) == pytest.approx(
        skm.accuracy_score(y, out.argmax(1), sample_weight=w), abs=1e-12)


def test_reset_clone_and_build():
    out, y, _ = data(3, seed=8)
    m = metrics.get("accuracy")
    m.update(out, y)
    first = m.result()
    copy = metrics.get(m)
    assert copy is not m and np.isnan(copy.result())   # a copy starts empty
    m.update(out[:10], 1 - np.clip(y[:10], 0, 1))
    m.reset()
    m.update(out, y)
    assert m.result() == first
    built = metrics.build(["accuracy", "f1", metrics.TopKAccuracy(k=2)], loss="cross_entropy")
    assert [b.name for b in built] == ["accuracy", "f1", "top_2_accuracy"]
    assert metrics.build(None) == [] and len(metrics.build("mae")) == 1
    assert np.isnan(metrics.MAE().result()) and np.isnan(metrics.F1().result())


def test_nan_outputs_give_nan():
    out, y, _ = data(3, seed=9)
    out[5, 1] = np.nan
    for name in ("accuracy", "f1", "mae"):
        m = metrics.get(name)
        yy = y if name != "mae" else np.zeros_like(out)
        m.update(out, yy)
        assert np.isnan(m.result())


def test_bad_input():
    with pytest.raises(ValueError, match="unknown metric 'acuracy'.*accuracy"):
        metrics.get("acuracy")
    with pytest.raises(TypeError, match="a metric is"):
        metrics.get(3)
    with pytest.raises(ValueError, match="needs a classification loss"):
        metrics.get("accuracy", loss="mse")
    with pytest.raises(ValueError, match="needs a classification loss"):
        metrics.get("f1", loss=lambda o, t: (0.0, o * 0))
    with pytest.raises(ValueError, match="classification loss"):
        metrics.get("r2", loss="cross_entropy")
    with pytest.raises(ValueError, match="more than once"):
        metrics.build(["accuracy", "accuracy"])
    with pytest.raises(ValueError, match="positive"):
        metrics.TopKAccuracy(k=0)
    out = np.zeros((4, 3))
    acc = metrics.get("accuracy", loss="cross_entropy")
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        acc.update(out, np.array([0, 1, 3, 0]))
    with pytest.raises(TypeError, match="integer class indices"):
        acc.update(out, np.array([0.5, 1, 2, 0]))
    with pytest.raises(ValueError, match="4 outputs but 3 targets"):
        acc.update(out, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(4,\)"):
        acc.update(out, np.array([0, 1, 2, 0]), np.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        acc.update(out, np.array([0, 1, 2, 0]), np.array([1, np.nan, 1, 1]))
    with pytest.raises(ValueError, match=">= 0"):
        acc.update(out, np.array([0, 1, 2, 0]), np.array([1, -1, 1, 1]))
    with pytest.raises(ValueError, match="regression targets"):   # one output, real-valued targets
        metrics.get("accuracy").update(np.zeros((3, 1)), np.array([0.2, 3.7, -1.0]))
    with pytest.raises(ValueError, match="one column per class"):
        metrics.get("accuracy", loss="cross_entropy").update(np.zeros((3, 1)), np.array([0, 0, 0]))
    with pytest.raises(ValueError, match="class labels for a classifier"):
        metrics.get("mae").update(np.zeros((3, 4)), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="columns in this batch"):
        m = metrics.get("r2")
        m.update(np.zeros((3, 2)), np.zeros((3, 2)))
        m.update(np.zeros((3, 1)), np.zeros((3, 1)))
    with pytest.raises(TypeError, match="must return a number"):
        metrics.get(lambda o, t: "x").update(out, np.zeros(4))
