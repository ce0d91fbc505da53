"""Optimizers with PyTorch's update rules, applied by one backend kernel call
over the flat buffer that holds every parameter of a model."""
import numpy as np

from .backend import get_backend


def _buffers(params):
    """(data, grad) 1-D buffer pairs, validated: the model's flat buffers when
    given model.parameters(), else one pair per parameter. The kernels trust
    these buffers, so every shape, dtype and layout is checked here."""
    flat = getattr(params, "flat_data", None)
    if flat is not None:
        # A model's own flat buffers: checked once per parameters() list, not every step.
        checked = getattr(params, "_checked", None)
        if checked is None or checked[0] is not params.flat_data or checked[1] is not params.flat_grad:
            pairs = [(params.flat_data,) + _pair("model.parameters()", params.flat_data, params.flat_grad)]
            checked = params._checked = (params.flat_data, params.flat_grad, pairs)
        return checked[2]
    if isinstance(params, (str, bytes)) or not hasattr(params, "__iter__"):
        raise TypeError(f"step() takes model.parameters() or an iterable of Parameters, got {type(params).__name__}")
    pairs = []
    for p in params:
        if not (hasattr(p, "data") and hasattr(p, "grad")):
            raise TypeError(f"step() takes Parameters (with .data and .grad), got {type(p).__name__}")
        name = repr(getattr(p, "name", p))
        # The state is keyed by p.data itself: its 1-D view is a new object each step.
        pairs.append((p.data,) + _pair(name, p.data, p.grad))
    return pairs


def _pair(name, data, grad):
    for what, a in (("data", data), ("grad", grad)):
        if not hasattr(a, "dtype") or not hasattr(a, "shape"):
            raise TypeError(f"{name}: .{what} must be an array, got {type(a).__name__}")
        if np.dtype(a.dtype) not in (np.float32, np.float64):
            raise TypeError(f"{name}: .{what} has dtype {a.dtype}; optimizers update float32 or float64")
    if tuple(data.shape) != tuple(grad.shape):
        raise ValueError(f"{name}: .grad has shape {tuple(grad.shape)} but .data has {tuple(data.shape)}")
    if np.dtype(data.dtype) != np.dtype(grad.dtype):
        raise TypeError(f"{name}: .grad is {grad.dtype} but .data is {data.dtype}")
    if isinstance(data, np.ndarray) != isinstance(grad, np.ndarray):
        raise TypeError(f"{name}: .data and .grad must live on the same device")
    if isinstance(data, np.ndarray):
        if not (data.flags.c_contiguous and grad.flags.c_contiguous):
            raise ValueError(f"{name} is not contiguous: the optimizer cannot update it in place")
        if not data.flags.writeable:
            raise ValueError(f"{name}: .data is read-only")
        if np.shares_memory(data, grad):
            raise ValueError(f"{name}: .data and .grad share memory")
    return data.reshape(-1), grad.reshape(-1)


def _check(value, name, low=0.0, high=None, low_open=False):
    value = float(value)
    bad = value <= low if low_open else value < low
    if bad or (high is not None and value >= high) or not np.isfinite(value):
        raise ValueError(f"invalid {name}: {value}")
    return value


class Optimizer:
    def __init__(self):
        self._state = {}   # id(data buffer) -> (data buffer, state arrays)
        self.iterations = 0

    def _state_for(self, backend, key, data, count):
        """The state buffers for the parameter ``key`` (1-D like data), allocated
        where data lives (backend.zeros)."""
        entry = self._state.get(id(key))
        if entry is None or entry[0] is not key:
            entry = (key, [backend.zeros(data.shape, data.dtype) for _ in range(count)])
            self._state[id(key)] = entry
        return entry[1]

    def step(self, params):
        backend = getattr(params, "backend", None) or get_backend()
        pairs = _buffers(params)
        self.iterations += 1
        for key, data, grad in pairs:
            self._update(backend, key, data, grad)

    def zero_grad(self, params):
        for p in params:
            p.grad[...] = 0


class SGD(Optimizer):
    """SGD with optional momentum, Nesterov momentum and L2 weight decay."""

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__()
        self.lr = _check(lr, "learning rate lr", low_open=True)
        self.momentum = _check(momentum, "momentum")
        self.weight_decay = _check(weight_decay, "weight_decay")
        if nesterov and self.momentum == 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.nesterov = bool(nesterov)

    def _update(self, backend, key, data, grad):
        (velocity,) = self._state_for(backend, key, data, 1)
        backend.raw.sgd_step(data, grad, velocity, self.lr, self.momentum, self.nesterov, self.weight_decay)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction and optional L2 weight decay."""

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__()
        self.lr = _check(lr, "learning rate lr", low_open=True)
        self.beta1 = _check(betas[0], "beta1", high=1.0)
        self.beta2 = _check(betas[1], "beta2", high=1.0)
        self.eps = _check(eps, "eps")
        self.weight_decay = _check(weight_decay, "weight_decay")

    def _update(self, backend, key, data, grad):
        m, v = self._state_for(backend, key, data, 2)
        backend.raw.adam_step(data, grad, m, v, self.lr, self.beta1, self.beta2, self.eps,
                          self.weight_decay, self.iterations)


def get(optimizer):
    """An Optimizer, or one built from a name ('sgd', 'adam') with defaults."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    names = {"sgd": SGD, "adam": Adam}
    if isinstance(optimizer, str) and optimizer.lower() in names:
        return names[optimizer.lower()]()
    raise ValueError(f"unknown optimizer {optimizer!r}; use an Optimizer or one of {list(names)}")
