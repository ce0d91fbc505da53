"""What every layer is: forward, backward beside it, parameters, a config to rebuild it."""
import numpy as np


class Layer:
    """A layer gets its backend, dtype and parameter buffers when the model is built.

    Subclasses set ``param_shapes(dtype)`` (name -> shape), fill initial values in
    ``init_params(rng)``, compute in ``forward(x)`` (saving what backward needs)
    and return dx from ``backward(dy)`` while adding into ``self.grads``.
    Layers never import a backend: they call only ``self.kernels`` (a backend's
    raw kernels), handed over by ``build``.
    """

    def __init__(self):
        self.params = {}
        self.grads = {}
        self.kernels = None
        self.dtype = None

    # ------------------------------------------------------------ building
    def param_shapes(self):
        return {}

    def init_params(self, rng):
        """Initial values, name -> array, for the shapes of param_shapes()."""
        return {}

    def build(self, backend, dtype, params, grads):
        self.kernels = backend.raw
        self.dtype = np.dtype(dtype)
        self.params, self.grads = params, grads

    def output_shape(self, shape):
        """The output shape (without the batch axis) for an input of ``shape``;
        raises ValueError naming the problem when the layer cannot take it."""
        return shape

    def config(self):
        """Constructor arguments that rebuild this layer (saved as JSON)."""
        return {}

    # ------------------------------------------------------------- compute
    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"
