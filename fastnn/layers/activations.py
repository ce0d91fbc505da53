"""Activation layers: each calls its backend's forward kernel and the backward beside it."""
from .base import Layer


class _Activation(Layer):
    kernel = None  # the reference kernel's name
    # Set by Sequential when the Dense layer before this one applies the
    # activation inside its own kernel (linear_act): forward then passes its
    # input through, and backward, which needs only y (or x > 0, the same as
    # y > 0 for these activations), runs as before.
    fused_into_previous = False

    def _flat(self, x):
        # Kernels take (rows, features); any rank folds into that, last axis kept.
        return x.reshape(-1, x.shape[-1]) if x.ndim != 2 else x

    def _extra(self):
        return {}

    def forward(self, x):
        self._x = self._flat(x)
        if self.fused_into_previous:
            self._y = self._x
            return x
        self._y = getattr(self.kernels, self.kernel)(self._x, **self._extra())
        return self._y.reshape(x.shape)

    def backward(self, dy, need_dx=True):
        backward = getattr(self.kernels, self.kernel + "_backward")
        return backward(self._flat(dy), self._x, self._y, **self._extra()).reshape(dy.shape)


class Step(_Activation):
    """Heaviside step, 1 where x > 0. Its derivative is zero almost everywhere, so
    gradients do not pass through it: use it for a perceptron's output (trained by
    the perceptron rule, or frozen), not inside a network trained by gradient descent."""
    kernel = "step"


class Sigmoid(_Activation):
    kernel = "sigmoid"


class Tanh(_Activation):
    kernel = "tanh"


class ReLU(_Activation):
    kernel = "relu"


class LeakyReLU(_Activation):
    kernel = "leaky_relu"

    def __init__(self, alpha=0.01):
        super().__init__()
        self.alpha = float(alpha)

    def _extra(self):
        return {"alpha": self.alpha}

    def config(self):
        return {"alpha": self.alpha}


class Softmax(_Activation):
    """Softmax over the last axis. For classification, train on logits with the
    cross_entropy loss instead (it applies softmax itself, stably)."""
    kernel = "softmax"
