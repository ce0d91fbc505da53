"""What every layer is: parameters and buffers, forward(ctx, x), backward(ctx, dy) beside it.

A layer holds parameters (trained) and buffers (saved, not trained), never
per-call state. ``forward(ctx, x)`` keeps what ``backward`` will need in
``ctx``, the record of this one call that the model's tape owns, and
``backward(ctx, dy)`` reads it back, adds into ``self.grads`` (+=, so a layer
used twice sums its gradients) and returns dx (None when ``ctx.need_dx`` is
False). ``ctx.training`` says whether this is a training step (Dropout,
BatchNorm) or inference.

Layers never import a backend: ``build`` hands them ``self.kernels`` (the
backend's raw kernels, which trust their inputs; the model validates first).
"""
import numbers
import types
import weakref

import numpy as np

_registry = {}   # class name -> Layer subclass, for fnn.load
# Frozen layers (trainable = False), and a counter bumped by every change of the flag:
# the optimizers' cached parameter runs depend on it.
_FROZEN = weakref.WeakSet()
_TRAINABLE_VERSION = [0]


def any_frozen():
    """Whether any layer (of any model) is frozen now: the optimizers' fast-path test."""
    return len(_FROZEN) > 0


def trainable_version():
    return _TRAINABLE_VERSION[0]


class Context(types.SimpleNamespace):
    """One layer call's record on the tape: Context(training=..., need_dx=...);
    forward sets whatever else backward needs (a C-level init: one per layer call)."""
    training = False
    need_dx = True
    overwrite_grads = False   # set by Model._backprop_fresh: write the gradient, do not add to it

    def child(self):
        """A context for a sublayer's call inside this one (Residual)."""
        return Context(training=self.training, need_dx=True)


class Layer:
    """Base of every layer. Subclasses define (all optional but forward/backward):

    - ``param_shapes()``: name -> shape of trainable parameters; ``init_params(rng)``
      their initial values;
    - ``buffer_shapes()``: name -> shape of non-trainable state kept with the model
      (saved, loaded, on the backend's device); ``init_buffers()`` their values;
    - ``output_shape(shape)``: the output shape (no batch axis) for an input shape,
      raising ValueError naming the problem;
    - ``config()``: the constructor arguments that rebuild the layer (JSON);
    - ``forward(ctx, x)`` and ``backward(ctx, dy)``.
    Layers that take several inputs set ``n_inputs = None`` (any number) or an int
    > 1 and get lists: forward(ctx, [x1, x2]), backward returns [dx1, dx2].
    """
    n_inputs = 1

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):
            # The newest definition of a name wins (a notebook re-running a cell).
            _registry[cls.__name__] = cls
        # The model's executor calls the unchecked implementations (it validated the
        # batch once); a user calling forward/backward directly gets them checked.
        for name in ("forward", "backward"):
            impl = cls.__dict__.get(name)
            if impl is not None and not getattr(impl, "_checked", False):
                setattr(cls, f"_{name}_impl", impl)
                setattr(cls, name, _CHECKED[name])

    def __init__(self):
        self.params, self.grads, self.buffers = {}, {}, {}
        self.kernels = None
        self.dtype = None

    # ------------------------------------------------------------ building
    def param_shapes(self):
        return {}

    def init_params(self, rng):
        """Initial values, name -> array, for the shapes of param_shapes()."""
        return {}

    def buffer_shapes(self):
        return {}

    def init_buffers(self):
        """Initial buffer values, name -> array (zeros unless a layer says otherwise)."""
        return {name: np.zeros(shape) for name, shape in self.buffer_shapes().items()}

    def sublayers(self):
        """(name, layer) pairs of the layers inside this one (Residual); their
        parameters are keyed '<this>.<name>.<param>' as in PyTorch."""
        return []

    def build(self, backend, dtype, params, grads, buffers=None):
        self.kernels = backend.raw
        self.dtype = np.dtype(dtype)
        self.params, self.grads, self.buffers = params, grads, buffers or {}

    _trainable = True

    @property
    def trainable(self):
        """False when frozen: optimizers leave this layer's parameters (and their state)
        untouched and clip_grad_norm leaves its gradients out; dx still flows through it.
        Setting it sets every sublayer too (Keras's rule)."""
        return self._trainable

    @trainable.setter
    def trainable(self, value):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"trainable must be True or False, got {value!r}")
        stack = [self]
        while stack:
            layer = stack.pop()
            layer._trainable = bool(value)
            if value:
                _FROZEN.discard(layer)
            else:
                _FROZEN.add(layer)
            stack.extend(sub for _, sub in layer.sublayers())
        _TRAINABLE_VERSION[0] += 1

    @property
    def built(self):
        return self.kernels is not None

    def output_shape(self, shape):
        """The output shape (without the batch axis) for an input of ``shape``;
        raises ValueError naming the problem when the layer cannot take it."""
        return shape

    def config(self):
        """Constructor arguments that rebuild this layer (saved as JSON)."""
        return {}

    @classmethod
    def from_config(cls, config, build_layer):
        """The layer rebuilt from config(); build_layer(spec) rebuilds a sublayer's spec."""
        return cls(**config)

    # ------------------------------------------------------------- compute
    def _forward_impl(self, ctx, x):
        raise NotImplementedError(f"{type(self).__name__} does not define forward(ctx, x)")

    def _backward_impl(self, ctx, dy):
        raise NotImplementedError(f"{type(self).__name__} does not define backward(ctx, dy)")

    # forward / backward: set below to the checked entry points (see __init_subclass__)

    def __call__(self, x, training=False):
        """On a symbolic tensor (fnn.Input or a layer's output): a graph node.
        On an array: this layer alone, validated, in inference mode (or training)."""
        from ..graph import SymbolicTensor, call_layer
        if isinstance(x, SymbolicTensor) or (isinstance(x, (list, tuple)) and x
                                             and all(isinstance(t, SymbolicTensor) for t in x)):
            return call_layer(self, x)
        return self.apply(x, training=training)

    def apply(self, x, training=False):
        """Run this layer on its own: x checked against its dtype and input shape."""
        if not self.built:
            raise RuntimeError(f"{type(self).__name__} is not built: put it in a model first")
        xs = list(x) if self.n_inputs != 1 else [x]
        checked = [_check_array(a, self.dtype, type(self).__name__) for a in xs]
        shapes = [a.shape[1:] for a in checked]
        self.output_shape(shapes if self.n_inputs != 1 else shapes[0])
        ctx = Context(training=bool(training), need_dx=False)
        return self._forward_impl(ctx, checked if self.n_inputs != 1 else checked[0])

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def _checked_forward(self, ctx, x=None):
    """forward(ctx, x) with ctx, built state, dtype and input shape checked."""
    who = type(self).__name__
    if not isinstance(ctx, Context) or x is None:
        raise TypeError(f"{who}.forward takes (ctx, x) with ctx a fnn.layers.Context; "
                        f"to run a layer on its own, call it: layer(x)")
    if not self.built:
        raise RuntimeError(f"{who} is not built: put it in a model first")
    xs = list(x) if self.n_inputs != 1 else [x]
    for a in xs:
        if not hasattr(a, "dtype") or np.dtype(a.dtype) != self.dtype:
            raise TypeError(f"{who}.forward: input dtype {getattr(a, 'dtype', type(a).__name__)} "
                            f"does not match the layer's {self.dtype}")
        if a.ndim < 2 or (isinstance(a, np.ndarray) and not a.flags.c_contiguous):
            raise ValueError(f"{who}.forward needs a C-contiguous batch (batch axis first), got shape {a.shape}")
    shapes = [tuple(a.shape[1:]) for a in xs]
    self.output_shape(shapes if self.n_inputs != 1 else shapes[0])
    y = self._forward_impl(ctx, x)
    ctx._output = (tuple(y.shape), np.dtype(y.dtype))
    return y


def _checked_backward(self, ctx, dy=None):
    """backward(ctx, dy) with dy checked against what this ctx's forward returned."""
    who = type(self).__name__
    out = getattr(ctx, "_output", None) if isinstance(ctx, Context) else None
    if out is None or dy is None:
        raise TypeError(f"{who}.backward takes (ctx, dy) with the ctx its forward(ctx, x) filled")
    if tuple(getattr(dy, "shape", ())) != out[0] or np.dtype(getattr(dy, "dtype", None)) != out[1]:
        raise ValueError(f"{who}.backward: dy has shape {getattr(dy, 'shape', None)} and dtype "
                         f"{getattr(dy, 'dtype', None)}; the forward output was {out[0]} {out[1]}")
    if isinstance(dy, np.ndarray) and not dy.flags.c_contiguous:
        dy = np.ascontiguousarray(dy)
    return self._backward_impl(ctx, dy)


_checked_forward._checked = _checked_backward._checked = True
_CHECKED = {"forward": _checked_forward, "backward": _checked_backward}


def _check_array(x, dtype, who):
    """A C-contiguous array of exactly dtype, or a TypeError/ValueError naming the problem."""
    if not isinstance(x, np.ndarray) and hasattr(x, "copy_to_host"):   # a device array
        if np.dtype(x.dtype) != dtype:
            raise TypeError(f"{who}: input dtype {x.dtype} does not match the layer's {dtype}")
        return x
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{who}: input must hold numbers, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and arr.dtype != dtype:
        raise TypeError(f"{who}: input dtype {arr.dtype} does not match the layer's {dtype} "
                        f"(cast it, e.g. x.astype('{dtype}'))")
    if arr.ndim < 2 or arr.size == 0:
        raise ValueError(f"{who}: input must be a non-empty batch (batch axis first), got shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if not np.isfinite(arr).all():
        raise ValueError(f"{who}: input contains NaN or inf")
    return arr


def layer_class(name):
    """The Layer subclass called name (built-in or user-defined), for loading models."""
    cls = _registry.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown layer type {name!r}: define (import) the class before loading")
    return cls


def positive_int(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def nonneg_int(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def finite_float(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


Layer.forward, Layer.backward = _checked_forward, _checked_backward
