"""Dense (fully connected) layer: y = x @ W.T + b on the last axis, PyTorch's weight layout (out, in)."""
import numpy as np

from .base import Layer, positive_int


class Dense(Layer):
    overwrites_grads = True   # backward can write its gradient outright (Model._backprop_fresh)

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features = positive_int(in_features, "in_features")
        self.out_features = positive_int(out_features, "out_features")
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
        if len(shape) < 1 or shape[-1] != self.in_features:
            raise ValueError(
                f"Dense({self.in_features}, {self.out_features}) expects inputs of shape "
                f"(batch, ..., {self.in_features}), got (batch, {', '.join(map(str, shape))})")
        return tuple(shape[:-1]) + (self.out_features,)

    def config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.use_bias}

    def forward(self, ctx, x):
        x2 = x if x.ndim == 2 else x.reshape(-1, self.in_features)
        ctx.x = x2
        y = self.kernels.linear(x2, self.params["weight"], self.params.get("bias"))
        return y if x.ndim == 2 else y.reshape(x.shape[:-1] + (self.out_features,))

    fused_backward = False   # the activation's backward stays its own step

    def fuses(self, activation, alpha):
        """Whether forward_fused applies this activation (every fusable one: linear_act)."""
        return True

    def can_fuse(self, x):
        return x.ndim == 2   # linear_act takes (rows, features); other ranks run unfused

    def forward_fused(self, ctx, x, activation, alpha):
        """activation(forward(x)) in one kernel: the model's execution plan calls
        this when the next node is that activation (see graph.Plan). Any rank, as forward."""
        x2 = x if x.ndim == 2 else x.reshape(-1, self.in_features)
        ctx.x = x2
        y = self.kernels.linear_act(x2, self.params["weight"], self.params.get("bias"), activation, alpha)
        return y if x.ndim == 2 else y.reshape(x.shape[:-1] + (self.out_features,))

    def backward(self, ctx, dy):
        dy2 = dy if dy.ndim == 2 else dy.reshape(-1, self.out_features)
        if not self._trainable:   # frozen: no weight gradient to compute, only dx = dy @ W
            if not ctx.need_dx:
                return None
            dx = self.kernels.matmul(dy2, self.params["weight"])
            return dx if dy.ndim == 2 else dx.reshape(dy.shape[:-1] + (self.in_features,))
        # The kernel adds into the gradient buffers itself (or writes them): no temporaries.
        dx = self.kernels.linear_backward_into(dy2, ctx.x, self.params["weight"], self.grads["weight"],
                                               self.grads.get("bias"), ctx.need_dx, not ctx.overwrite_grads)
        return dx if dx is None or dy.ndim == 2 else dx.reshape(dy.shape[:-1] + (self.in_features,))
