"""Losses: each takes the model's outputs and targets, returns (loss, d loss / d outputs).

All reduce by the mean, as PyTorch's defaults do.

mse: mean squared error over every element (torch.nn.MSELoss).
huber(out, t, delta=1.0): torch.nn.HuberLoss: 0.5 d^2 where |d| < delta, else delta (|d| - delta/2).
l1: mean absolute error (torch.nn.L1Loss); its gradient is sign(d) / size, 0 where d == 0.
cross_entropy: softmax cross-entropy from logits, with integer class labels (N,)
    or target rows (N, C) (one-hot or soft); torch.nn.CrossEntropyLoss's options:
    weight (C,) per-class weights (the mean divides by the sum of the weights of the
    targets kept), label_smoothing in [0, 1], ignore_index (rows with that label count
    for nothing). With probability targets label_smoothing mixes them with the uniform
    distribution as torch does, ignore_index does not apply, and weight is refused.
    Where every target is ignored (or every kept target has weight 0) torch returns
    nan; fastnn returns loss 0.0 and a zero gradient, so one all-padding batch does
    not end a fit.
binary_cross_entropy: sigmoid + binary cross-entropy from logits; mean over elements.

For the Trainer, a loss is a name ('huber'), a name with options
(``Trainer(model, loss="huber", loss_options={"delta": 0.5})``) or a Loss object
(``Trainer(model, loss=fnn.losses.CrossEntropy(label_smoothing=0.1))``), as
torch's ``nn.CrossEntropyLoss(label_smoothing=0.1)`` or Keras's
``keras.losses.Huber(delta=...)``. A Loss object is also callable: loss(out, y).
"""
import numpy as np

from ._kernels import checks, registry
from .backend import get_backend


def mse(pred, target, backend=None):
    return get_backend(backend).mse(pred, target)


def huber(pred, target, delta=1.0, backend=None):
    return get_backend(backend).huber(pred, target, delta)


def l1(pred, target, backend=None):
    return get_backend(backend).l1(pred, target)


def cross_entropy(logits, labels, weight=None, label_smoothing=0.0, ignore_index=None, backend=None):
    be = get_backend(backend)
    if weight is None and label_smoothing == 0 and ignore_index is None:
        return be.cross_entropy(logits, labels)   # the fast path: no option given
    return CrossEntropy(weight, label_smoothing, ignore_index)(logits, labels, backend=be)


def binary_cross_entropy(logits, target, backend=None):
    return get_backend(backend).binary_cross_entropy(logits, target)


# Loss kernels that are another loss with options, reached through it (not by name).
OPTION_KERNELS = ("cross_entropy_weighted",)
# The loss kernels a name selects.
NAMES = tuple(n for n in registry.names("loss") if n not in OPTION_KERNELS)


class Loss:
    """A loss with its options fixed: ``Loss(...)(out, y)`` -> (loss, grad). ``name`` is the
    kernel family it belongs to; ``bind(backend)`` gives the (out, y) -> (loss, grad)
    function on that backend's raw kernels, for inputs the caller validated already.
    ``targets`` ("labels" or "values") and ``classifier`` declare how the Trainer reads
    targets and whether it reports accuracy (None: as the built-in family ``name``; see
    target_kind). A custom loss subclasses Loss and defines ``kernel(out, y)`` (see custom)."""
    name = None
    targets = None
    classifier = None
    kernel = None

    def options(self):
        return {}

    def bind(self, backend):
        if self.kernel is not None:   # a custom loss: its own (out, y) -> (loss, grad)
            return self._checked
        kernel = getattr(get_backend(backend).raw, self.name)
        opts = self.options()
        return (lambda out, y: kernel(out, y, **opts)) if opts else kernel

    def __call__(self, out, y, backend=None):
        if self.kernel is not None:
            return self._checked(out, y)
        return getattr(get_backend(backend), self.name)(out, y, **self.options())

    def _checked(self, out, y):
        """A custom kernel's (loss, grad), with the gradient checked against the outputs."""
        loss, grad = self.kernel(out, y)
        shape, gshape = tuple(out.shape), tuple(getattr(grad, "shape", ()))
        if gshape != shape:
            raise ValueError(f"loss {self.name!r} returned a gradient of shape {gshape} "
                             f"for outputs of shape {shape}")
        if isinstance(grad, np.ndarray) and grad.dtype != np.dtype(out.dtype):
            grad = grad.astype(out.dtype)
        return float(loss), grad

    def __repr__(self):
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


class MSE(Loss):
    name = "mse"


class L1(Loss):
    name = "l1"


class BinaryCrossEntropy(Loss):
    name = "binary_cross_entropy"


class Huber(Loss):
    """torch.nn.HuberLoss(delta=1.0) (mean)."""
    name = "huber"

    def __init__(self, delta=1.0):
        self.delta = checks._scalar(delta, "huber delta")
        if self.delta <= 0:
            raise ValueError(f"huber delta must be > 0, got {self.delta}")

    def options(self):
        return {"delta": self.delta}


class CrossEntropy(Loss):
    """torch.nn.CrossEntropyLoss(weight=None, ignore_index=None, label_smoothing=0.0) (mean);
    see the module docstring. weight is checked against the number of classes at the first call."""
    name = "cross_entropy"

    def __init__(self, weight=None, label_smoothing=0.0, ignore_index=None):
        if weight is not None:
            w = checks._array(weight, "cross_entropy weight")
            if w.ndim != 1:
                raise ValueError(f"cross_entropy weight must be 1-D (one per class), got shape {w.shape}")
            if not np.all(np.isfinite(w)) or np.any(w < 0):
                raise ValueError("cross_entropy weight must be finite and >= 0")
            weight = np.array(w, dtype=np.float64)
        self.weight = weight
        self.label_smoothing = checks.smoothing(label_smoothing)
        checks.ignored_label(ignore_index)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self._weights = {}   # (backend, dtype) -> the weight as that backend's array

    def options(self):
        return {"weight": self.weight, "label_smoothing": self.label_smoothing,
                "ignore_index": self.ignore_index}

    @property
    def plain(self):
        return self.weight is None and self.label_smoothing == 0 and self.ignore_index is None

    def _smoothed(self, rows):
        c = rows.shape[1]
        return rows * (1 - self.label_smoothing) + self.label_smoothing / c

    def __call__(self, logits, labels, backend=None):
        be = get_backend(backend)
        if self.plain:
            return be.cross_entropy(logits, labels)
        logits = checks._array(logits, "cross_entropy logits")
        if logits.ndim == 2 and np.ndim(labels) == 2:   # probability targets
            if self.weight is not None:
                raise ValueError("cross_entropy: weight= with probability targets (N, C) is not "
                                 "supported; give class indices (N,)")
            (logits, rows), _ = checks.cross_entropy(logits, labels)
            return be.cross_entropy(logits, self._smoothed(rows))
        return be.cross_entropy_weighted(logits, labels, self.weight, self.label_smoothing,
                                         self.ignore_index)

    def bind(self, backend):
        be = get_backend(backend)
        if self.plain:
            return be.raw.cross_entropy
        kernel, ignore = be.raw.cross_entropy_weighted, checks.ignored_label(self.ignore_index)

        def run(out, y):
            if len(y.shape) == 2:
                if self.weight is not None:
                    raise ValueError("cross_entropy: weight= with probability targets (N, C) is "
                                     "not supported; give class indices (N,)")
                if not isinstance(y, np.ndarray):   # device targets: smoothed on the host (rare)
                    return be.raw.cross_entropy(out, be.to_device(self._smoothed(be.to_host(y))))
                return be.raw.cross_entropy(out, self._smoothed(y))
            return kernel(out, y, self._weight_for(be, out), self.label_smoothing, ignore)
        return run

    def _weight_for(self, be, out):
        c, dtype = out.shape[1], np.dtype(out.dtype)
        key = (be.name, dtype.name, c)
        w = self._weights.get(key)
        if w is None:
            host = np.ones(c, dtype) if self.weight is None else checks.class_weight(
                self.weight, c, dtype, "cross_entropy weight")
            w = self._weights[key] = be.to_device(host)
        return w


LOSSES = {"mse": MSE, "huber": Huber, "l1": L1, "cross_entropy": CrossEntropy,
          "binary_cross_entropy": BinaryCrossEntropy}


def get(name, **options):
    """The loss called name (a Loss object when options are given), or a callable / Loss passed through."""
    if isinstance(name, Loss) or (callable(name) and not isinstance(name, str)):
        if options:
            raise ValueError("loss options go with a loss name, not with a Loss object or a callable")
        return name
    if name not in NAMES:
        raise ValueError(f"unknown loss {name!r}; known losses: {list(NAMES)}")
    if options:
        try:
            return LOSSES[name](**options)
        except TypeError as exc:
            raise TypeError(f"loss {name!r}: bad options {sorted(options)}: {exc}") from None
    return globals()[name]


# ---------------------------------------------------------------------------------------------
# metrics area (issue 11): what a loss's targets are, custom losses, sample and class weights.
#
# target_kind(loss) -> "labels" (integer class labels (N,) or one-hot/probability rows (N, C),
#   checked against the number of output columns) or "values" (float targets shaped like the
#   output); is_classifier(loss) -> whether accuracy-like metrics make sense (cross_entropy,
#   binary_cross_entropy, a custom loss declared so). Plain callables: "values", not a classifier.
#
# sample_weighted(loss, out, y, sample_weight) -> (loss, grad): with l_i torch's reduction="none"
#   per-sample loss (for an output of D columns the mean of its D elements, what reduction="mean"
#   gives for that row alone) and c_i the row's own weight in torch's mean (the class weight
#   weight[y_i] for cross_entropy with weight=, 0 for a row whose label is ignore_index, else 1):
#       loss = sum_i s_i l_i / sum_i s_i c_i,   grad = its exact gradient wrt out.
#   So sample and class weights multiply, ignored rows weigh 0, and s = ones gives exactly the
#   unweighted loss (torch's mean). A batch whose weights sum to 0 gives loss 0.0 and a zero
#   gradient (as fastnn's all-ignored batch), so the per-batch call never raises on that;
#   check_sample_weight(w, n) is the whole-data check (shape (n,), finite, >= 0, not all zero)
#   the trainer runs once before fit. Computed in float64 on host numpy arrays; grad has
#   out's dtype.
# ---------------------------------------------------------------------------------------------
TARGET_KINDS = ("labels", "values")
# (targets, classifier) of each built-in loss family.
# A loss kernel added to the registry belongs here too (tests/test_custom_losses.py checks).
_FAMILY = {"cross_entropy": ("labels", True), "cross_entropy_weighted": ("labels", True),
           "binary_cross_entropy": ("values", True), "mse": ("values", False),
           "huber": ("values", False), "l1": ("values", False)}


class Custom(Loss):
    """A loss from fn(out, y) -> (loss, grad) that declares its targets; made by custom()."""

    def __init__(self, fn, targets, name=None, classifier=None):
        if not callable(fn):
            raise TypeError(f"custom loss: fn must be callable (out, y) -> (loss, grad), got {fn!r}")
        if targets not in TARGET_KINDS:
            raise ValueError(f"custom loss: targets must be one of {TARGET_KINDS}, got {targets!r}")
        if name is None:
            name = getattr(fn, "__name__", "loss")
        if not isinstance(name, str) or not name:
            raise TypeError(f"custom loss: name must be a non-empty string, got {name!r}")
        if classifier is not None and not isinstance(classifier, (bool, np.bool_)):
            raise TypeError(f"custom loss: classifier must be True, False or None, got {classifier!r}")
        self.kernel, self.targets, self.name = fn, targets, name
        self.classifier = (targets == "labels") if classifier is None else bool(classifier)

    def __repr__(self):
        return f"custom({self.kernel!r}, targets={self.targets!r}, name={self.name!r})"


def custom(fn, targets="labels", name=None, classifier=None):
    """A Loss object whose kernel is fn(out, y) -> (loss, grad), declaring what its targets are:
    targets="labels" (class indices or one-hot rows; a classifier: accuracy is reported) or
    "values" (float targets shaped like the output; classifier=True for e.g. a sigmoid loss).
    name (default fn.__name__) is the loss's label. The gradient must have out's shape."""
    return Custom(fn, targets, name, classifier)


def _family(loss):
    if isinstance(loss, str):
        if loss not in NAMES:
            raise ValueError(f"unknown loss {loss!r}; known losses: {list(NAMES)}")
        return _FAMILY.get(loss, ("values", False))   # undeclared: read as the Trainer always did
    if isinstance(loss, Loss):
        targets, classifier = loss.targets, loss.classifier
        base = _FAMILY.get(loss.name, ("values", False))
        targets = base[0] if targets is None else targets
        if targets not in TARGET_KINDS:
            raise ValueError(f"loss {loss!r} declares targets={targets!r}; use one of {TARGET_KINDS}")
        if classifier is None:
            classifier = base[1] if loss.targets is None else targets == "labels"
        return targets, bool(classifier)
    if callable(loss):
        if _builtin_function(loss):   # fastnn.losses.cross_entropy itself is its name
            return _family(loss.__name__)
        return "values", False
    raise TypeError(f"a loss is a name, a losses.Loss object or a callable, got {loss!r}")


def _builtin_function(fn):
    name = getattr(fn, "__name__", None)
    return name in NAMES and globals().get(name) is fn


def target_kind(loss):
    """"labels" or "values": how the targets of loss (a name, Loss object or callable) are read."""
    return _family(loss)[0]


def is_classifier(loss):
    """Whether loss is a classification loss (accuracy and the other class metrics apply)."""
    return _family(loss)[1]


def check_sample_weight(sample_weight, n, name="sample_weight", allow_all_zero=False):
    """sample_weight as float64 (n,), finite, >= 0 and (unless allow_all_zero) not all zero."""
    w = checks._array(sample_weight, name, allow_empty=True)
    if w.dtype.kind == "b":
        raise TypeError(f"{name} must hold numbers, got booleans")
    if w.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one weight per sample), got {w.shape}")
    w = w.astype(np.float64, copy=False)
    low = w.min() if n else 0.0   # one pass: NaN propagates into the minimum, inf into the sum
    if np.isnan(low) or (not np.isfinite(w.sum()) and not np.isfinite(w).all()):
        raise ValueError(f"{name} contains NaN or inf")
    if low < 0:
        raise ValueError(f"{name} must be >= 0, got a minimum of {low}")
    if not allow_all_zero and n and not np.any(w > 0):
        raise ValueError(f"{name} is all zero: no sample would count")
    return w


def _sigmoid(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def per_sample(loss, out, y):
    """(l, g, c): torch's reduction="none" loss of each row (float64 (N,)), its gradient wrt
    out (float64, out's shape) and the row's weight c_i in torch's mean (see the block header).
    loss: a built-in name or Loss object (not a custom one)."""
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; known losses: {list(NAMES)}")
        loss = LOSSES[loss]()
    elif not isinstance(loss, Loss) and _builtin_function(loss):
        loss = LOSSES[loss.__name__]()   # the plain function fastnn.losses.<name>
    if not isinstance(loss, Loss) or loss.kernel is not None or loss.name not in LOSSES:
        raise TypeError(f"sample weights need a built-in loss (a name or a losses.Loss object with "
                        f"its options), got {loss!r}: weigh a custom loss's samples in its kernel")
    out = checks._array(out, f"{loss.name} outputs")
    if out.ndim != 2:
        raise ValueError(f"{loss.name} outputs must be 2-D (N, D), got shape {out.shape}")
    z = out.astype(np.float64)
    n, d = z.shape
    if loss.name == "cross_entropy":
        return _per_sample_ce(loss, z, y)
    t = checks._array(y, f"{loss.name} targets")
    if t.ndim == 1 and d == 1:
        t = t.reshape(-1, 1)
    if t.shape != z.shape:
        raise ValueError(f"{loss.name} targets have shape {t.shape}, the outputs {z.shape}")
    t = t.astype(np.float64)
    if not np.all(np.isfinite(t)):
        raise ValueError(f"{loss.name} targets contain NaN or inf")
    diff = z - t
    if loss.name == "mse":
        elem, grad = diff * diff, 2.0 * diff
    elif loss.name == "l1":
        elem, grad = np.abs(diff), np.sign(diff)
    elif loss.name == "huber":
        delta, a = loss.delta, np.abs(diff)
        elem = np.where(a < delta, 0.5 * diff * diff, delta * (a - 0.5 * delta))
        grad = np.clip(diff, -delta, delta)
    else:   # binary_cross_entropy from logits
        elem = np.maximum(z, 0.0) - z * t + np.log1p(np.exp(-np.abs(z)))
        grad = _sigmoid(z) - t
    return elem.mean(axis=1), grad / d, np.ones(n)


def _per_sample_ce(loss, z, y):
    n, c = z.shape
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    total = e.sum(axis=1, keepdims=True)
    logp, p = z - np.log(total), e / total
    eps = loss.label_smoothing
    if np.ndim(y) == 2:   # probability targets: smoothed, never ignored, no class weight
        if loss.weight is not None:
            raise ValueError("cross_entropy: weight= with probability targets (N, C) is not "
                             "supported; give class indices (N,)")
        q = checks.labels_for(y, n, c, name="cross_entropy targets").astype(np.float64)
        if not np.all(np.isfinite(q)):
            raise ValueError("cross_entropy targets contain NaN or inf")
        q = q * (1 - eps) + eps / c
        return -(q * logp).sum(axis=1), p * q.sum(axis=1, keepdims=True) - q, np.ones(n)
    labels = checks.labels_for(y, n, c, name="cross_entropy labels", ignore_index=loss.ignore_index)
    rows = np.arange(n)
    if loss.plain:   # the common case, without the options' arithmetic
        p[rows, labels] -= 1.0
        return -logp[rows, labels], p, np.ones(n)
    cw = np.ones(c) if loss.weight is None else checks.class_weight(loss.weight, c, np.float64,
                                                                    "cross_entropy weight")
    kept = np.ones(n, bool) if loss.ignore_index is None else labels != loss.ignore_index
    lab = np.where(kept, labels, 0)
    wy = cw[lab] * kept                    # weight[y_i], 0 where ignored
    smooth = (eps / c) * kept              # label smoothing's share, spread with the class weights
    l = wy * (1 - eps) * -logp[rows, lab] + smooth * -(logp * cw).sum(axis=1)
    # d(-log p_k)/dz = p - e_k, summed with the same coefficients as l.
    coef = wy * (1 - eps) + smooth * cw.sum()
    g = p * coef[:, None] - smooth[:, None] * cw
    g[rows, lab] -= wy * (1 - eps)
    return l, g, wy


def sample_weighted(loss, out, y, sample_weight=None):
    """(sum_i s_i l_i / sum_i s_i c_i, its gradient wrt out) for a built-in loss (a name, e.g.
    "huber", or a Loss object with its options, e.g. CrossEntropy(weight=w, ignore_index=-100))
    on host numpy arrays; see the block header. sample_weight None means all ones."""
    l, g, c = per_sample(loss, out, y)
    n = len(l)
    s = np.ones(n) if sample_weight is None else check_sample_weight(sample_weight, n,
                                                                      allow_all_zero=True)
    total = float(np.dot(s, c))
    dtype = np.asarray(out).dtype
    if total == 0.0:   # nothing counts in this batch
        return 0.0, np.zeros(g.shape, dtype)
    scale = s / total
    return float(np.dot(scale, l)), (g * scale[:, None]).astype(dtype)


def _class_indices(y, n_classes, ignore_index):
    """(class index of each row, number of classes) for class_weight."""
    y = checks._array(y, "y")
    if n_classes == 1:   # one logit (binary_cross_entropy): targets 0/1 (or probabilities)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise ValueError(f"y must be 0/1 targets (N,) or (N, 1) for one output, got shape {y.shape}")
        if not np.all(np.isfinite(y)):
            raise ValueError("y contains NaN or inf")
        return (y > 0.5).astype(np.int64), 2
    if y.ndim == 2 and y.shape[1] == n_classes:
        return y.argmax(axis=1), n_classes   # one-hot / probability rows: Keras takes the argmax
    if y.ndim != 1:
        raise ValueError(f"y must be class labels (N,) or one-hot rows (N, {n_classes}), got shape {y.shape}")
    return checks.labels_for(y, len(y), n_classes, name="y", ignore_index=ignore_index), n_classes


def class_weight_to_sample_weight(class_weight, y, n_classes, ignore_index=None):
    """Keras' class_weight as per-sample weights (float64 (N,)). class_weight is a dict
    {class: weight} (classes not in it weigh 1) or "balanced" (scikit-learn's
    compute_sample_weight("balanced", y): n_samples / (n_classes_present * count[class])).
    y: class labels (N,), one-hot/probability rows (N, C) (their argmax), or for a single
    logit (n_classes=1) 0/1 targets. Rows labelled ignore_index weigh 1 (the loss drops them)
    and are not counted by "balanced"."""
    n_classes = checks._positive(n_classes, "n_classes")
    labels, k = _class_indices(y, n_classes, ignore_index)
    kept = np.ones(len(labels), bool) if ignore_index is None else labels != ignore_index
    out = np.ones(len(labels))
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"class_weight must be a dict {{class: weight}} or 'balanced', got {class_weight!r}")
        counts = np.bincount(labels[kept], minlength=k).astype(np.float64)
        present = np.count_nonzero(counts)
        if present:
            per_class = np.where(counts > 0, kept.sum() / (present * np.maximum(counts, 1)), 0.0)
            out[kept] = per_class[labels[kept]]
        return out
    if not isinstance(class_weight, dict):
        raise TypeError(f"class_weight must be a dict {{class: weight}} or 'balanced', got {class_weight!r}")
    table = np.ones(k)
    for key, value in class_weight.items():
        if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer)):
            raise TypeError(f"class_weight keys must be integer classes, got {key!r}")
        if not 0 <= key < k:
            raise ValueError(f"class_weight has class {key}, but there are {k} classes (0..{k - 1})")
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"class_weight[{key}] must be a number, got {value!r}") from None
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"class_weight[{key}] must be finite and >= 0, got {value}")
        table[key] = value
    out[kept] = table[labels[kept]]
    return out
