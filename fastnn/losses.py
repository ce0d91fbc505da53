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
    kernel family it belongs to (how the Trainer reads targets and counts accuracy);
    ``bind(backend)`` gives the (out, y) -> (loss, grad) function on that backend's raw
    kernels, for inputs the caller validated already."""
    name = None

    def options(self):
        return {}

    def bind(self, backend):
        kernel = getattr(get_backend(backend).raw, self.name)
        opts = self.options()
        return (lambda out, y: kernel(out, y, **opts)) if opts else kernel

    def __call__(self, out, y, backend=None):
        return getattr(get_backend(backend), self.name)(out, y, **self.options())

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
