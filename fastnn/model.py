"""Sequential: layers in order, their parameters in one flat buffer, forward and backward."""
import numpy as np

from . import io
from ._kernels import checks
from .backend import get_backend
from ._kernels.reference import FUSABLE_ACTIVATIONS
from .layers.activations import _Activation
from .layers.base import Layer
from .layers.dense import Dense
from .threads import backend_threads

DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}


class Parameter:
    """One named tensor of a layer: ``data`` and ``grad`` are views into the
    model's flat buffers, so an optimizer can update every parameter at once."""

    def __init__(self, name, data, grad):
        self.name, self.data, self.grad = name, data, grad

    @property
    def shape(self):
        return self.data.shape

    def __repr__(self):
        return f"Parameter({self.name!r}, shape={self.data.shape}, dtype={self.data.dtype})"


class Parameters(list):
    """The list model.parameters() returns; ``flat_data``/``flat_grad`` are the
    1-D buffers every parameter lives in, ``backend`` the model's backend."""

    def __init__(self, items, flat_data, flat_grad, backend):
        super().__init__(items)
        self.flat_data, self.flat_grad, self.backend = flat_data, flat_grad, backend


def _dtype(dtype):
    key = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if key not in DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return DTYPES[key]


class Sequential:
    def __init__(self, *layers, backend=None, dtype="float32", seed=0):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        for layer in layers:
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential takes fastnn layers, got {type(layer).__name__}")
        self.layers = list(layers)
        self.backend = get_backend(backend)
        self.dtype = _dtype(dtype)
        self.seed = seed
        self._build(np.random.default_rng(seed))

    # ------------------------------------------------------------ building
    def _build(self, rng):
        shapes = [layer.param_shapes() for layer in self.layers]
        total = sum(int(np.prod(s)) for layer_shapes in shapes for s in layer_shapes.values())
        # Initial values are filled on the host, then the buffers go where the
        # backend computes (on CPU backends to_device leaves them in place).
        host = np.zeros(total, dtype=self.dtype)
        offset = 0
        for layer, layer_shapes in zip(self.layers, shapes):
            initial = layer.init_params(rng)
            for name, shape in layer_shapes.items():
                size = int(np.prod(shape))
                host[offset:offset + size].reshape(shape)[...] = initial[name]
                offset += size
        self._flat_data = self.backend.to_device(host)
        self._flat_grad = self.backend.zeros(total, self.dtype)
        self._params = []
        offset = 0
        for index, (layer, layer_shapes) in enumerate(zip(self.layers, shapes)):
            params, grads = {}, {}
            for name, shape in layer_shapes.items():
                size = int(np.prod(shape))
                params[name] = self._flat_data[offset:offset + size].reshape(shape)
                grads[name] = self._flat_grad[offset:offset + size].reshape(shape)
                self._params.append(Parameter(f"{index}.{name}", params[name], grads[name]))
                offset += size
            layer.build(self.backend, self.dtype, params, grads)
        self._fuse()

    def _fuse(self):
        """Let each Dense layer apply the activation that follows it in its own kernel."""
        for dense, act in zip(self.layers, self.layers[1:]):
            alpha = getattr(act, "alpha", 0.0)
            # leaky_relu's backward reads x > 0 from y: true only for alpha >= 0
            if (isinstance(dense, Dense) and isinstance(act, _Activation)
                    and act.kernel in FUSABLE_ACTIVATIONS and alpha >= 0):
                dense.fused_activation = (act.kernel, alpha)
                act.fused_into_previous = True

    def parameters(self):
        return Parameters(self._params, self._flat_data, self._flat_grad, self.backend)

    def state_dict(self):
        """name -> array copy, keyed like PyTorch's ('0.weight', '0.bias', ...)."""
        return {p.name: self.backend.to_host(p.data).copy() for p in self._params}

    def load_state_dict(self, state):
        names = {p.name for p in self._params}
        if set(state) != names:
            raise ValueError(f"state_dict keys {sorted(state)} do not match the model's {sorted(names)}")
        for p in self._params:
            value = np.asarray(state[p.name])
            if value.shape != p.data.shape:
                raise ValueError(f"{p.name}: shape {value.shape} does not match {p.data.shape}")
            p.data[...] = value

    def zero_grad(self):
        self._flat_grad.fill(0)

    # ------------------------------------------------------------- shapes
    def output_shape(self, input_shape):
        """Output shape (no batch axis) for inputs of input_shape; ValueError if a layer can't take it."""
        shape = tuple(input_shape)
        for layer in self.layers:
            shape = layer.output_shape(shape)
        return shape

    def check_input(self, x, name="X"):
        """x as a C-contiguous array of the model's dtype, or a clear exception."""
        x = checks._array(x, name, allow_empty=True)
        if x.dtype.kind == "b":
            raise TypeError(f"{name} must hold numbers, got booleans")
        if x.ndim < 2:
            raise ValueError(f"{name} must have a batch axis first, got shape {x.shape}")
        try:
            self.output_shape(x.shape[1:])
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        if x.size == 0:
            raise ValueError(f"{name} is empty (shape {x.shape})")
        x = np.ascontiguousarray(x, dtype=self.dtype)
        if not np.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or inf")
        return x

    # ------------------------------------------------------------ compute
    def forward(self, x):
        """Outputs for a batch; saves what backward needs."""
        return self._forward(self.backend.to_device(self.check_input(x)))

    def _forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, grad):
        """Backpropagate d loss / d output; adds into every parameter's .grad."""
        grad = self.backend.to_device(grad, self.dtype)
        last = len(self.layers) - 1
        for i in range(last, -1, -1):
            # The first layer's input gradient is never used: skip computing it.
            grad = self.layers[i].backward(grad, need_dx=i > 0)
        return grad

    def predict(self, X, batch_size=1024):
        """Outputs (logits for a classifier) as a numpy array, computed in batches."""
        X = self.check_input(X)
        with backend_threads(self.backend):
            outs = [self.backend.to_host(self._forward(self.backend.to_device(X[i:i + batch_size])))
                    for i in range(0, len(X), batch_size)]
        return np.concatenate(outs) if len(outs) > 1 else outs[0].copy()

    __call__ = predict

    # --------------------------------------------------------- save / load
    def config(self):
        return {"layers": [{"type": type(l).__name__, "config": l.config()} for l in self.layers],
                "dtype": self.dtype.name, "backend": self.backend.name, "seed": self.seed}

    def save(self, path):
        """Write weights and architecture to .safetensors (default) or .npz; never pickle."""
        io.save(self, path)

    def export_onnx(self, path, input_shape=None, opset=17):
        """Write the network as ONNX (needs onnx; see fastnn.onnx_export); returns the ModelProto."""
        from .onnx_export import export_onnx
        return export_onnx(self, path, input_shape=input_shape, opset=opset)

    def __repr__(self):
        inner = ",\n  ".join(repr(l) for l in self.layers)
        return f"Sequential(\n  {inner},\n  backend={self.backend.name!r}, dtype={self.dtype.name!r})"
