"""Streaming metrics: accumulated batch by batch, equal to scikit-learn's on the whole data set.

    m = fnn.metrics.get("f1", loss="cross_entropy")
    for xb, yb in batches:
        m.update(model.predict(xb), yb)          # raw outputs and targets, host numpy arrays
    m.result()                                   # == sklearn.metrics.f1_score(y, pred, average="macro")

A metric keeps sums (weighted counts, a confusion table, running moments), never a mean of
batch values, so evaluating in batches of 1024 gives scikit-learn's value on all the rows.
``update(out, y, sample_weight=None)`` takes the model's raw outputs ``out``: logits (N, C)
for a softmax classifier (class = argmax), one logit (N, 1) for binary cross-entropy
(class = logit > 0; targets 0/1 or probabilities, class = target > 0.5), values (N, D)
for regression; ``y``: int labels (N,) or one-hot/probability rows (N, C) (their argmax)
for classifiers, targets for regression. ``sample_weight`` (N,) weighs rows as in
scikit-learn.

Names (``get(name)``):
  accuracy        accuracy_score (subset accuracy for several sigmoid outputs)
  top_k_accuracy  top_k_accuracy_score, k=5 (TopKAccuracy(k=3); "top_3_accuracy" also works)
  precision, recall, f1
                  precision_score / recall_score / f1_score(average="macro", zero_division=0):
                  the mean over the classes seen in y_true or y_pred (every column for
                  several sigmoid outputs)
  mae             mean_absolute_error (multioutput="uniform_average")
  r2              r2_score (multioutput="uniform_average"); nan with fewer than 2 rows
A Metric object is used as given (get returns a fresh copy, so a training and a validation
stream never share sums). A callable fn(out, y) -> float is a metric named fn.__name__ whose
result is the mean of its batch values weighted by batch size (it is NOT exact for
non-additive quantities); if fn takes a ``sample_weight`` argument the weights are passed to
it and a batch weighs the sum of its weights, else sample weights are not seen by it.

With ``loss=`` (a loss name, losses.Loss object or callable, what the Trainer was given)
a metric checks it makes sense for that loss (class metrics need a classifier loss, mae and
r2 a regression loss) and takes the loss's ignore_index: rows with that label are left out,
as the loss leaves them out. Where no row counted, result() is nan.

The Trainer's entry point: ``build(specs, loss)`` -> a list of fresh metrics; per epoch (and
per evaluate) ``reset()`` each, ``update(to_host(out), y_batch, w_batch)`` each batch, then
``{m.name: m.result()}`` into the logs.

Across ranks (distributed training): each rank streams its own batches, the metric objects
are gathered (they pickle) and folded in rank order, ``merge_all(gathered)`` (a new metric;
the same as ``gathered[0].clone().merge(gathered[0]).merge(gathered[1])...``).
``a.merge(b)`` adds b's sums into a and returns a, so the result equals one metric updated
on all the rows of all the ranks (to float rounding); an empty metric (reset, never updated)
merges as a no-op either way. ``check_mergeable(metrics)`` raises the NotImplementedError a
user Metric without its own merge() would raise, before training starts.
"""
import copy
import inspect
import pickle
import re

import numpy as np

from . import losses
from ._kernels import checks

__all__ = ["Metric", "Accuracy", "TopKAccuracy", "Precision", "Recall", "F1", "MAE", "R2",
           "FunctionMetric", "get", "build", "merge_all", "check_mergeable", "NAMES"]


class Metric:
    """Base of streaming metrics: ``name`` (the log key), ``reset()``, ``update(out, y,
    sample_weight=None)``, ``result() -> float``. ``kind`` is "class", "values" or None (any)."""
    name = None
    kind = None

    def __init__(self):
        self.task = None          # "multiclass" | "sigmoid" (binary / multilabel) | "regression" | None
        self.ignore_index = None
        self.reset()

    def reset(self):
        raise NotImplementedError

    def update(self, out, y, sample_weight=None):
        raise NotImplementedError

    def result(self):
        raise NotImplementedError

    def merge(self, other):
        """Add other's sums into self and return self (other is left as it was): distributed
        training folds every rank's metric this way. A subclass with state defines it."""
        raise NotImplementedError(
            f"metric {self.name!r} ({type(self).__name__}) has no merge(other): distributed training "
            "gathers every rank's metric and folds them with merge(); define merge(self, other) that "
            "adds other's sums into self and returns self (as fastnn.metrics.Accuracy does)")

    def _check_merge(self, other):
        """Raise unless other is the same metric (class, name, loss binding) as self."""
        if not isinstance(other, Metric):
            raise TypeError(f"{self.name}: can only merge another Metric, got {type(other).__name__}")
        if type(other) is not type(self) or other.name != self.name:
            raise ValueError(f"cannot merge metric {other.name!r} ({type(other).__name__}) into "
                             f"{self.name!r} ({type(self).__name__}): not the same metric")
        if other.task != self.task or other.ignore_index != self.ignore_index:
            raise ValueError(f"cannot merge metric {self.name!r}: bound to different losses "
                             f"(task {other.task!r} vs {self.task!r}, ignore_index "
                             f"{other.ignore_index!r} vs {self.ignore_index!r})")

    def bind(self, loss):
        """Check this metric fits loss and take what it needs from it (task, ignore_index)."""
        kind, classifier = losses.target_kind(loss), losses.is_classifier(loss)
        label = loss if isinstance(loss, str) else getattr(loss, "name", None) or getattr(
            loss, "__name__", repr(loss))
        if self.kind == "class" and not classifier:
            raise ValueError(
                f"metric {self.name!r} needs a classification loss (cross_entropy, "
                f"binary_cross_entropy or a custom loss with targets='labels'); "
                f"loss {label!r} is a regression loss (try 'mae' or 'r2')")
        if self.kind == "values" and classifier:
            raise ValueError(
                f"metric {self.name!r} compares outputs with float targets; loss {label!r} "
                f"is a classification loss whose outputs are logits (try 'accuracy' or 'f1')")
        if classifier:
            self.task = "multiclass" if kind == "labels" else "sigmoid"
        else:
            self.task = "regression"
        self.ignore_index = getattr(loss, "ignore_index", None) if kind == "labels" else None
        return self

    def clone(self):
        """A copy of this metric with its sums cleared."""
        other = copy.copy(self)
        other.reset()
        return other

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r})"


def _weights(sample_weight, n, who):
    if sample_weight is None:
        return np.ones(n)
    return losses.check_sample_weight(sample_weight, n, name=f"{who}: sample_weight",
                                      allow_all_zero=True)


def _outputs(out, who):
    out = checks._array(out, f"{who}: outputs")
    if out.ndim == 1:
        out = out.reshape(-1, 1)
    if out.ndim != 2:
        raise ValueError(f"{who}: outputs must be (N, C) or (N,), got shape {out.shape}")
    return out


# --------------------------------------------------------------------- classification
class _ClassMetric(Metric):
    kind = "class"

    def _classes(self, out, y, sample_weight):
        """(true, pred, w, n_classes, multilabel) for one batch, ignored rows dropped.
        true/pred: (M,) class indices, or (M, D) booleans for several sigmoid outputs."""
        who = self.name
        out = _outputs(out, who)
        n, d = out.shape
        y = checks._array(y, f"{who}: targets")
        if len(y) != n:
            raise ValueError(f"{who}: {n} outputs but {len(y)} targets")
        w = None if sample_weight is None else _weights(sample_weight, n, who)   # None: all ones
        if np.isnan(out).any():
            self._nan = True
        task = self.task or ("sigmoid" if d == 1 else "multiclass")
        if task == "sigmoid":
            if y.ndim == 1 and d == 1:
                y = y.reshape(-1, 1)
            if y.shape != out.shape:
                raise ValueError(f"{who}: sigmoid outputs {out.shape} need 0/1 targets of the same "
                                 f"shape, got {y.shape}")
            if not np.all(np.isfinite(y)) or y.min() < 0 or y.max() > 1:
                raise ValueError(
                    f"{who}: targets of a sigmoid (binary_cross_entropy) output must be 0/1 or "
                    f"probabilities in [0, 1]; got values from {np.nanmin(y)} to {np.nanmax(y)} "
                    "(regression targets? use 'mae' or 'r2')")
            true, pred = y > 0.5, out > 0
            if d == 1:
                return true[:, 0].astype(np.int64), pred[:, 0].astype(np.int64), w, 2, False
            return true, pred, w, d, True
        if d < 2:
            raise ValueError(f"{who}: a softmax classifier's outputs have one column per class "
                             f"(N, C >= 2), got {out.shape}")
        if y.ndim == 2:
            if y.shape[1] != d:
                raise ValueError(f"{who}: target rows {y.shape} do not match the outputs {out.shape}")
            if not np.all(np.isfinite(y)):
                raise ValueError(f"{who}: targets contain NaN or inf")
            true = y.argmax(axis=1)
        else:
            true = checks.labels_for(y, n, d, name=f"{who}: labels", ignore_index=self.ignore_index)
        pred = out.argmax(axis=1)
        if self.ignore_index is not None and y.ndim == 1:
            kept = true != self.ignore_index
            true, pred = true[kept], pred[kept]
            w = None if w is None else w[kept]
        return true, pred, w, d, False


def _count(w, hits):
    """(weighted hits, total weight); w None means all ones."""
    if w is None:
        return float(np.count_nonzero(hits)), float(len(hits))
    return float(np.dot(w, hits)), float(w.sum())


class _HitRate(_ClassMetric):
    """The weighted fraction of rows that hit: update adds (hits, total) with _count."""

    def reset(self):
        self._right = self._total = 0.0
        self._nan = False

    def result(self):
        if self._nan or self._total == 0:
            return float("nan")
        return self._right / self._total

    def merge(self, other):
        self._check_merge(other)
        self._right += other._right
        self._total += other._total
        self._nan = self._nan or other._nan
        return self


class Accuracy(_HitRate):
    """accuracy_score: the weighted fraction of rows classified right."""
    name = "accuracy"

    def update(self, out, y, sample_weight=None):
        true, pred, w, _, multilabel = self._classes(out, y, sample_weight)
        right, total = _count(w, (true == pred).all(axis=1) if multilabel else true == pred)
        self._right += right
        self._total += total


class TopKAccuracy(_HitRate):
    """top_k_accuracy_score: the true class is among the k highest outputs (ties broken as
    scikit-learn: the higher class index first). For one logit (binary) k=1 is accuracy
    and k >= 2 always hits, as in scikit-learn."""

    def __init__(self, k=5, name=None):
        self.k = checks._positive(k, "top_k_accuracy k")
        self.name = name or ("top_k_accuracy" if self.k == 5 else f"top_{self.k}_accuracy")
        super().__init__()

    def _check_merge(self, other):
        super()._check_merge(other)
        if other.k != self.k:
            raise ValueError(f"cannot merge {self.name!r}: k={other.k} into k={self.k}")

    def update(self, out, y, sample_weight=None):
        true, pred, w, c, multilabel = self._classes(out, y, sample_weight)
        if multilabel:
            raise ValueError(f"{self.name}: not defined for several sigmoid outputs (multilabel)")
        scores = _outputs(out, self.name)
        if scores.shape[1] == 1:   # binary: one logit
            hits = true == pred if self.k == 1 else np.ones(len(true), bool)
        else:
            if self.ignore_index is not None and np.ndim(y) == 1:
                scores = scores[np.asarray(y) != self.ignore_index]
            top = np.argsort(scores, axis=1, kind="mergesort")[:, ::-1][:, :self.k]
            hits = (top == true[:, None]).any(axis=1)
        right, total = _count(w, hits)
        self._right += right
        self._total += total


class _MacroMetric(_ClassMetric):
    """Weighted per-class counts (true positives, predicted, actual) and the classes seen."""

    def reset(self):
        self._tp = self._pred = self._true = None
        self._seen = None
        self._nan = False

    def update(self, out, y, sample_weight=None):
        true, pred, w, c, multilabel = self._classes(out, y, sample_weight)
        if self._tp is None or len(self._tp) != c:
            if self._tp is not None:
                raise ValueError(f"{self.name}: {c} classes in this batch, {len(self._tp)} before")
            self._tp, self._pred, self._true = np.zeros(c), np.zeros(c), np.zeros(c)
            self._seen = np.zeros(c, bool)
        if multilabel:   # every column is a binary problem; scikit-learn averages all of them
            w = np.ones(len(true)) if w is None else w
            self._tp += w @ (true & pred)
            self._pred += w @ pred
            self._true += w @ true
            self._seen[:] = True
            return
        right = true == pred
        self._tp += np.bincount(true[right], weights=None if w is None else w[right], minlength=c)
        self._pred += np.bincount(pred, weights=w, minlength=c)
        self._true += np.bincount(true, weights=w, minlength=c)
        self._seen[true] = True   # seen in y_true or y_pred, whatever their weight
        self._seen[pred] = True

    def merge(self, other):
        self._check_merge(other)
        if other._tp is not None and self._tp is not None and len(other._tp) != len(self._tp):
            raise ValueError(f"cannot merge {self.name!r}: {len(other._tp)} classes into {len(self._tp)}")
        self._nan = self._nan or other._nan
        if other._tp is None:       # other never updated
            return self
        if self._tp is None:
            self._tp, self._pred, self._true = other._tp.copy(), other._pred.copy(), other._true.copy()
            self._seen = other._seen.copy()
            return self
        self._tp += other._tp
        self._pred += other._pred
        self._true += other._true
        self._seen |= other._seen
        return self

    def result(self):
        if self._nan or self._seen is None or not self._seen.any():
            return float("nan")
        s = self._seen
        return float(np.mean(self._score(self._tp[s], self._pred[s], self._true[s])))

    @staticmethod
    def _divide(num, den):
        return np.divide(num, den, out=np.zeros_like(num), where=den > 0)   # zero_division=0


class Precision(_MacroMetric):
    """precision_score(average="macro", zero_division=0)."""
    name = "precision"

    def _score(self, tp, pred, true):
        return self._divide(tp, pred)


class Recall(_MacroMetric):
    """recall_score(average="macro", zero_division=0)."""
    name = "recall"

    def _score(self, tp, pred, true):
        return self._divide(tp, true)


class F1(_MacroMetric):
    """f1_score(average="macro", zero_division=0): per class 2 tp / (predicted + actual)."""
    name = "f1"

    def _score(self, tp, pred, true):
        return self._divide(2 * tp, pred + true)


# ------------------------------------------------------------------------- regression
class _ValueMetric(Metric):
    kind = "values"

    def _pairs(self, out, y, sample_weight):
        who = self.name
        out = _outputs(out, who)
        n, d = out.shape
        y = checks._array(y, f"{who}: targets")
        if len(y) != n:
            raise ValueError(f"{who}: {n} outputs but {len(y)} targets")
        if y.ndim == 1 and d == 1:
            y = y.reshape(-1, 1)
        if y.shape != out.shape:
            hint = (" (class labels for a classifier's logits? use 'accuracy' or 'f1')"
                    if y.ndim == 1 and y.dtype.kind in "iub" else "")
            raise ValueError(f"{who}: targets have shape {y.shape}, the outputs {out.shape}{hint}")
        if not np.all(np.isfinite(y)):
            raise ValueError(f"{who}: targets contain NaN or inf")
        w = _weights(sample_weight, n, who)
        if self._d is None:
            self._start(d)
        elif self._d != d:
            raise ValueError(f"{who}: outputs have {d} columns in this batch, {self._d} before")
        return out.astype(np.float64), y.astype(np.float64), w

    def _merge_start(self, other):
        """Check other; False if it holds nothing (never updated), else self is started."""
        self._check_merge(other)
        if other._d is None:
            return False
        if self._d is None:
            self._start(other._d)
        elif self._d != other._d:
            raise ValueError(f"cannot merge {self.name!r}: {other._d} output columns into {self._d}")
        return True


class MAE(_ValueMetric):
    """mean_absolute_error(multioutput="uniform_average")."""
    name = "mae"

    def reset(self):
        self._d = None
        self._abs = None
        self._w = 0.0

    def _start(self, d):
        self._d, self._abs = d, np.zeros(d)

    def update(self, out, y, sample_weight=None):
        out, y, w = self._pairs(out, y, sample_weight)
        self._abs += w @ np.abs(out - y)
        self._w += float(w.sum())

    def merge(self, other):
        if self._merge_start(other):
            self._abs += other._abs
            self._w += other._w
        return self

    def result(self):
        if self._d is None or self._w == 0:
            return float("nan")
        return float(np.mean(self._abs / self._w))


class R2(_ValueMetric):
    """r2_score(multioutput="uniform_average"): per column 1 - SSE / (weighted sum of squares
    about the weighted mean); the sums of squares are merged batch by batch (Chan et al.),
    so no cancellation. A column with constant targets scores 1 if predicted exactly, else 0."""
    name = "r2"

    def reset(self):
        self._d = None
        self._n = 0
        self._w = 0.0

    def _start(self, d):
        self._d = d
        self._mean, self._m2, self._sse = np.zeros(d), np.zeros(d), np.zeros(d)

    def update(self, out, y, sample_weight=None):
        out, y, w = self._pairs(out, y, sample_weight)
        self._n += len(y)
        wb = float(w.sum())
        self._sse += w @ (y - out) ** 2
        if wb:
            mean_b = (w @ y) / wb
            self._fold(wb, mean_b, w @ (y - mean_b) ** 2)

    def _fold(self, wb, mean_b, m2_b):
        """Chan et al.: add a group of weight wb, weighted mean mean_b and sum of squares m2_b."""
        total = self._w + wb
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (wb / total)
        self._m2 = self._m2 + m2_b + delta ** 2 * (self._w * wb / total)
        self._w = total

    def merge(self, other):
        if self._merge_start(other):
            self._n += other._n
            self._sse += other._sse
            if other._w:
                self._fold(other._w, other._mean, other._m2)
        return self

    def result(self):
        if self._d is None or self._n < 2 or self._w == 0 or np.isnan(self._sse).any():
            return float("nan")   # NaN outputs (checked first: a constant column would score 0)
        num, den = self._sse, self._m2
        scores = np.ones(self._d)
        valid = (den != 0) & (num != 0)
        scores[valid] = 1 - num[valid] / den[valid]
        scores[(num != 0) & (den == 0)] = 0.0
        return float(np.mean(scores))


# -------------------------------------------------------------------------- callables
class FunctionMetric(Metric):
    """fn(out, y) -> float per batch; the result is the mean over batches weighted by batch
    size (or, if fn takes sample_weight, by each batch's sum of sample weights)."""

    def __init__(self, fn, name=None):
        if not callable(fn):
            raise TypeError(f"a metric function must be callable (out, y) -> float, got {fn!r}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", None) or type(fn).__name__
        try:
            self._takes_weights = "sample_weight" in inspect.signature(fn).parameters
        except (TypeError, ValueError):
            self._takes_weights = False
        super().__init__()

    def reset(self):
        self._sum = self._total = 0.0

    def update(self, out, y, sample_weight=None):
        if self.fn is None:
            raise RuntimeError(f"metric {self.name!r}: this copy was unpickled without its function "
                               "(a lambda or local function does not pickle); it can merge() and "
                               "give result(), not update()")
        n = len(out)
        if self._takes_weights and sample_weight is not None:
            w = _weights(sample_weight, n, self.name)
            value, weight = self.fn(out, y, sample_weight=w), float(w.sum())
        else:
            value, weight = self.fn(out, y), float(n)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"metric {self.name!r} must return a number, got {value!r}") from None
        if weight:
            self._sum += value * weight
            self._total += weight

    def result(self):
        return self._sum / self._total if self._total else float("nan")

    def merge(self, other):
        self._check_merge(other)
        self._sum += other._sum
        self._total += other._total
        return self

    def __getstate__(self):
        # A lambda or local function cannot be pickled; its sums can, so the copy another rank
        # receives merges and gives result(), and says why if asked to update.
        state = dict(self.__dict__)
        try:
            pickle.dumps(self.fn)
        except Exception:
            state["fn"] = None
        return state

    def __copy__(self):   # clone() (copy.copy) keeps fn, picklable or not
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __deepcopy__(self, memo):
        new = self.__copy__()
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy({k: v for k, v in self.__dict__.items() if k != "fn"}, memo))
        return new


METRICS = {"accuracy": Accuracy, "top_k_accuracy": TopKAccuracy, "precision": Precision,
           "recall": Recall, "f1": F1, "mae": MAE, "r2": R2}
NAMES = tuple(METRICS)
_TOP_K = re.compile(r"top_(\d+)_accuracy$")


def get(spec, loss=None):
    """A fresh metric for spec (a name, a Metric object, or a callable (out, y) -> float),
    checked against loss (a loss name, losses.Loss or callable) when given."""
    if isinstance(spec, str):
        top = _TOP_K.match(spec)
        if top:
            metric = TopKAccuracy(k=int(top.group(1)))
        elif spec in METRICS:
            metric = METRICS[spec]()
        else:
            raise ValueError(f"unknown metric {spec!r}; known metrics: {list(NAMES)} "
                             "(and top_<k>_accuracy), a fastnn.metrics.Metric or a callable (out, y) -> float")
    elif isinstance(spec, Metric):
        metric = spec.clone()
    elif callable(spec):
        metric = FunctionMetric(spec)
    else:
        raise TypeError(f"a metric is a name, a fastnn.metrics.Metric or a callable, got {spec!r}")
    return metric.bind(loss) if loss is not None else metric


def build(specs, loss=None):
    """[get(spec, loss) for spec in specs] (a single spec is a list of one); names must differ."""
    if specs is None:
        return []
    if isinstance(specs, (str, Metric)) or callable(specs):
        specs = [specs]
    if not isinstance(specs, (list, tuple)):
        raise TypeError(f"metrics must be a list of names, Metric objects or callables, got {specs!r}")
    built = [get(s, loss) for s in specs]
    names = [m.name for m in built]
    dup = sorted({k for k in names if names.count(k) > 1})
    if dup:
        raise ValueError(f"metrics {dup} given more than once (each name is one log key)")
    return built


def merge_all(gathered):
    """One new metric holding the sums of every metric in gathered (e.g. one per rank, from
    distributed.allgather(metric)), folded left to right with merge(); gathered is unchanged."""
    gathered = list(gathered)
    if not gathered:
        raise ValueError("merge_all needs at least one metric")
    if not isinstance(gathered[0], Metric):
        raise TypeError(f"merge_all merges fastnn.metrics.Metric objects, got {type(gathered[0]).__name__}")
    merged = gathered[0].clone()
    for other in gathered:
        merged.merge(other)
    return merged


def check_mergeable(metrics):
    """Raise NotImplementedError for the first metric whose class has no merge() of its own
    (call it before distributed training starts). metrics: a Metric or (nested) lists of them."""
    if isinstance(metrics, Metric):
        if type(metrics).merge is Metric.merge:
            Metric.merge(metrics, metrics)
        return
    for m in metrics or ():
        check_mergeable(m)
