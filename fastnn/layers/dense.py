"""Dense (fully connected) layer: y = x @ W.T + b, PyTorch's weight layout (out, in)."""
import numpy as np

from .base import Layer


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class Dense(Layer):
    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features = _positive_int(in_features, "in_features")
        self.out_features = _positive_int(out_features, "out_features")
        self.use_bias = bool(bias)

    def param_shapes(self):
        shapes = {"weight": (self.out_features, self.in_features)}
        if self.use_bias:
            shapes["bias"] = (self.out_features,)
        return shapes

    def init_params(self, rng):
        # PyTorch's default: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias.
        bound = 1.0 / np.sqrt(self.in_features)
        return {name: rng.uniform(-bound, bound, size=shape)
                for name, shape in self.param_shapes().items()}

    def output_shape(self, shape):
        if len(shape) != 1 or shape[0] != self.in_features:
            raise ValueError(
                f"Dense({self.in_features}, {self.out_features}) expects inputs of shape "
                f"(batch, {self.in_features}), got (batch, {', '.join(map(str, shape))})")
        return (self.out_features,)

    def config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.use_bias}

    # (activation name, alpha) when Sequential fused the next layer into this one
    fused_activation = None

    def forward(self, x):
        self._x = x
        w, b = self.params["weight"], self.params.get("bias")
        if self.fused_activation is not None:
            name, alpha = self.fused_activation
            return self.kernels.linear_act(x, w, b, name, alpha)
        return self.kernels.linear(x, w, b)

    def backward(self, dy, need_dx=True):
        # The kernel adds into the gradient buffers itself: no temporaries.
        return self.kernels.linear_backward_into(dy, self._x, self.params["weight"], self.grads["weight"],
                                                 self.grads.get("bias"), need_dx)
