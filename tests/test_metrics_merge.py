"""Metric.merge: metrics streamed over uneven shards (one per rank), pickled and merged, equal one
metric streamed over all rows, and scikit-learn."""
import pickle

import numpy as np
import pytest

import fastnn as fnn
from fastnn import metrics

skm = pytest.importorskip("sklearn.metrics")

N = 150
SHARDS = ((0, 13), (13, 13), (13, 90), (90, N))   # uneven ranks, one that saw no batch
BATCHES = 17                                      # rows per batch inside a shard (last one shorter)


def stream(metric, out, y, w, lo, hi):
    metric.reset()
    for a in range(lo, hi, BATCHES):
        b = min(a + BATCHES, hi)
        metric.update(out[a:b], y[a:b], None if w is None else w[a:b])
    return metric


def sharded(make, out, y, w=None):
    """(merged over the shards after a pickle round trip, the same metric on all rows)."""
    gathered = [pickle.loads(pickle.dumps(stream(make(), out, y, w, lo, hi))) for lo, hi in SHARDS]
    return metrics.merge_all(gathered), stream(make(), out, y, w, 0, N)


def classes(task, seed=0):
    """(out, y, sklearn's true, sklearn's pred, loss) for a task; labels sorted so the ranks see
    different classes."""
    rng = np.random.default_rng(seed)
    if task == "multiclass":
        y = np.sort(rng.integers(0, 5, N))
        out = rng.normal(size=(N, 5))
        out[:, 4] -= 100            # a class nobody predicts, and only the last rank has
        return out, y, y, out.argmax(1), "cross_entropy"
    d = 1 if task == "binary" else 3
    out = rng.normal(size=(N, d)) * 2
    y = (rng.uniform(size=(N, d)) < 0.35).astype(np.float64)
    t, p = y.astype(int), (out > 0).astype(int)
    if d == 1:
        t, p = t[:, 0], p[:, 0]
    return out, y, t, p, "binary_cross_entropy"


SK = {"accuracy": lambda t, p, w: skm.accuracy_score(t, p, sample_weight=w),
      "precision": lambda t, p, w: skm.precision_score(t, p, average="macro", zero_division=0, sample_weight=w),
      "recall": lambda t, p, w: skm.recall_score(t, p, average="macro", zero_division=0, sample_weight=w),
      "f1": lambda t, p, w: skm.f1_score(t, p, average="macro", zero_division=0, sample_weight=w)}


@pytest.mark.parametrize("task", ["multiclass", "binary", "multilabel"])
@pytest.mark.parametrize("weighted", [False, True])
def test_class_metrics_merge_as_whole_and_sklearn(task, weighted):
    out, y, t, p, loss = classes(task)
    w = np.random.default_rng(1).uniform(0, 2, N) if weighted else None
    if weighted:
        w[::7] = 0.0
    for name, fn in SK.items():
        merged, whole = sharded(lambda: metrics.get(name, loss=loss), out, y, w)
        assert merged.result() == pytest.approx(whole.result(), abs=1e-12)
        assert merged.result() == pytest.approx(fn(t, p, w), abs=1e-12)
    if task != "multilabel":
        k = 2 if task == "multiclass" else 1
        merged, whole = sharded(lambda: metrics.get(f"top_{k}_accuracy", loss=loss), out, y, w)
        score = out if task == "multiclass" else out[:, 0]
        want = skm.top_k_accuracy_score(t, score, k=k, labels=np.arange(5) if k == 2 else None,
                                        sample_weight=w)
        assert merged.result() == pytest.approx(whole.result(), abs=1e-12)
        assert merged.result() == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("d", [1, 3])
@pytest.mark.parametrize("weighted", [False, True])
def test_regression_metrics_merge_as_whole_and_sklearn(d, weighted):
    rng = np.random.default_rng(2 + d)
    y = rng.normal(size=(N, d)) * 4 + 1000.0       # a large offset: merged moments must not cancel
    y[SHARDS[-1][0]:] += 5.0                        # and the ranks' means differ
    out = y + rng.normal(size=(N, d))
    w = rng.uniform(0, 2, N) if weighted else None
    if weighted:
        w[:13] = 0.0                                # a rank whose rows all weigh 0
    for name, fn in [("mae", skm.mean_absolute_error), ("r2", skm.r2_score)]:
        merged, whole = sharded(lambda: metrics.get(name, loss="mse"), out, y, w)
        assert merged.result() == pytest.approx(whole.result(), abs=1e-10)
        assert merged.result() == pytest.approx(fn(y, out, sample_weight=w, multioutput="uniform_average"),
                                                abs=1e-10)


def test_ignore_index_and_function_metrics_merge():
    out, labels, _, _, _ = classes("multiclass", seed=4)
    y = labels.copy()
    y[::5] = -100
    kept = y != -100
    loss = fnn.losses.CrossEntropy(ignore_index=-100)
    merged, _ = sharded(lambda: metrics.get("f1", loss=loss), out, y)
    assert merged.result() == pytest.approx(SK["f1"](y[kept], out[kept].argmax(1), None), abs=1e-12)
    w = np.random.default_rng(5).uniform(0, 1, N)
    # a weighted hit rate weighted by each batch's weight sum adds up whatever the batches
    merged, whole = sharded(lambda: metrics.get(weighted_hits), out, labels, w)
    assert merged.result() == pytest.approx(whole.result(), abs=1e-12)
    assert merged.result() == pytest.approx(skm.accuracy_score(labels, out.argmax(1), sample_weight=w), abs=1e-12)
    assert merged.name == "weighted_hits" and merged.fn is weighted_hits


def weighted_hits(o, t, sample_weight=None):   # module level: pickles by reference
    return float(np.dot(sample_weight, o.argmax(1) == t) / sample_weight.sum()) if sample_weight.sum() else 0.0


ALL = [lambda: metrics.Accuracy(), lambda: metrics.TopKAccuracy(k=2), lambda: metrics.Precision(),
       lambda: metrics.Recall(), lambda: metrics.F1(), lambda: metrics.MAE(), lambda: metrics.R2(),
       lambda: metrics.FunctionMetric(weighted_hits)]


@pytest.mark.parametrize("make", ALL, ids=["accuracy", "top2", "precision", "recall", "f1", "mae", "r2", "fn"])
def test_empty_merges_as_noop_both_ways_and_pickles(make):
    rng = np.random.default_rng(6)
    out = rng.normal(size=(20, 3))
    y = rng.normal(size=(20, 3)) if make().kind == "values" else rng.integers(0, 3, 20)
    w = rng.uniform(0, 1, 20)
    full = make()
    full.update(out, y, w)
    want = full.result()
    assert full.merge(make()) is full and full.result() == want               # full <- empty
    assert make().merge(full).result() == pytest.approx(want, abs=1e-15)     # empty <- full
    assert full.result() == want                                               # other left unchanged
    assert np.isnan(make().merge(make()).result())
    copy = pickle.loads(pickle.dumps(full))
    assert type(copy) is type(full) and copy.result() == want
    copy.update(out, y, w)                                                     # still a working metric
    assert copy.result() == pytest.approx(full.merge(full.clone().merge(full)).result(), abs=1e-12)


def test_bound_metric_pickles_with_its_binding():
    loss = fnn.losses.CrossEntropy(ignore_index=-1)
    m = metrics.get("top_3_accuracy", loss=loss)
    m.update(np.eye(4), np.array([0, 3, -1, 0]))   # row 3: class 0 is not in its top 3
    back = pickle.loads(pickle.dumps(m))
    assert (back.task, back.ignore_index, back.k, back.name) == ("multiclass", -1, 3, "top_3_accuracy")
    assert back.result() == m.result() == pytest.approx(2 / 3)
    assert metrics.merge_all([m, back]).result() == pytest.approx(2 / 3)
    assert m.result() == pytest.approx(2 / 3)                                  # merge_all copies


def test_lambda_metric_pickles_its_sums_only():
    m = metrics.get(lambda o, t: float(np.mean(o.argmax(1) == t)))
    m.update(np.eye(3), np.array([0, 1, 0]))
    assert m.clone().fn is m.fn                       # clone keeps a lambda
    back = pickle.loads(pickle.dumps(m))
    assert back.fn is None and back.result() == pytest.approx(2 / 3)
    assert metrics.merge_all([m, back]).result() == pytest.approx(2 / 3)
    with pytest.raises(RuntimeError, match="unpickled without its function"):
        back.update(np.eye(3), np.array([0, 1, 2]))


class Counted(metrics.Metric):
    name = "counted"

    def reset(self):
        self.n = 0

    def update(self, out, y, sample_weight=None):
        self.n += len(y)

    def result(self):
        return float(self.n)


def test_merge_misuse():
    out, y = np.eye(3), np.array([0, 1, 2])
    acc = metrics.get("accuracy", loss="cross_entropy")
    with pytest.raises(ValueError, match="not the same metric"):
        acc.merge(metrics.get("f1", loss="cross_entropy"))
    with pytest.raises(ValueError, match="not the same metric"):
        metrics.Accuracy().merge(metrics.TopKAccuracy(k=1, name="accuracy"))
    with pytest.raises(ValueError, match="k=3 into k=2"):
        metrics.TopKAccuracy(k=2, name="top").merge(metrics.TopKAccuracy(k=3, name="top"))
    with pytest.raises(ValueError, match="bound to different losses"):
        acc.merge(metrics.get("accuracy", loss="binary_cross_entropy"))
    with pytest.raises(ValueError, match="bound to different losses"):
        acc.merge(metrics.get("accuracy", loss=fnn.losses.CrossEntropy(ignore_index=0)))
    with pytest.raises(TypeError, match="only merge another Metric"):
        acc.merge({"accuracy": 1.0})
    a, b = metrics.F1(), metrics.F1()
    a.update(out, y)
    b.update(np.eye(4), np.arange(4))
    with pytest.raises(ValueError, match="4 classes into 3"):
        a.merge(b)
    r, s = metrics.R2(), metrics.R2()
    r.update(np.zeros((3, 2)), np.ones((3, 2)))
    s.update(np.zeros((3, 1)), np.ones((3, 1)))
    with pytest.raises(ValueError, match="1 output columns into 2"):
        r.merge(s)
    with pytest.raises(NotImplementedError, match=r"'counted' \(Counted\) has no merge.*distributed"):
        Counted().merge(Counted())
    with pytest.raises(NotImplementedError, match="'counted'"):
        metrics.check_mergeable([[acc, metrics.R2()], [Counted()]])
    metrics.check_mergeable([[acc, metrics.F1()], [metrics.get(weighted_hits)]])
    with pytest.raises(ValueError, match="at least one"):
        metrics.merge_all([])


def test_nan_outputs_on_one_rank_make_the_merge_nan():
    rng = np.random.default_rng(7)
    out = rng.normal(size=(10, 3))
    y = rng.integers(0, 3, 10)
    bad = out.copy()
    bad[2, 1] = np.nan
    for name in ("accuracy", "top_2_accuracy", "f1", "mae", "r2"):
        yy = y if name not in ("mae", "r2") else np.zeros_like(out)
        clean, nan = metrics.get(name), metrics.get(name)
        clean.update(out, yy)
        nan.update(bad, yy)
        assert np.isnan(metrics.merge_all([clean, nan]).result()), name
        assert np.isnan(metrics.merge_all([nan, clean]).result()), name
        assert not np.isnan(clean.result())
