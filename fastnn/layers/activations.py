"""Activation layers: each calls its backend's forward kernel and the backward beside it."""
from .base import Layer, finite_float


class _Activation(Layer):
    kernel = None  # the reference kernel's name

    _kwargs = {}   # the kernel's extra arguments (LeakyReLU's alpha)

    def forward(self, ctx, x):
        # Kernels take (rows, features); any rank folds into that, last axis kept.
        ctx.x = x if x.ndim == 2 else x.reshape(-1, x.shape[-1])
        ctx.y = getattr(self.kernels, self.kernel)(ctx.x, **self._kwargs)
        return ctx.y if x.ndim == 2 else ctx.y.reshape(x.shape)

    def record_fused(self, ctx, y):
        """The Dense before this layer computed y = act(Dense(x)) in one kernel (the
        model's plan). Backward needs only y, or x > 0, the same as y > 0 for the
        fusable activations (leaky_relu with alpha >= 0): keep y as both, as (rows, features)
        like forward."""
        ctx.x = ctx.y = y if y.ndim == 2 else y.reshape(-1, y.shape[-1])

    def fusable(self):
        """(kernel, alpha) if a Dense before this layer may apply it in its own kernel."""
        from .._kernels.reference import FUSABLE_ACTIVATIONS
        alpha = self._kwargs.get("alpha", 0.0)
        return (self.kernel, alpha) if self.kernel in FUSABLE_ACTIVATIONS and alpha >= 0 else None

    def backward(self, ctx, dy):
        backward = getattr(self.kernels, self.kernel + "_backward")
        if dy.ndim == 2:
            return backward(dy, ctx.x, ctx.y, **self._kwargs)
        return backward(dy.reshape(-1, dy.shape[-1]), ctx.x, ctx.y, **self._kwargs).reshape(dy.shape)


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
        self.alpha = finite_float(alpha, "LeakyReLU alpha")
        self._kwargs = {"alpha": self.alpha}

    def config(self):
        return {"alpha": self.alpha}


class Softmax(_Activation):
    """Softmax over the last axis. For classification, train on logits with the
    cross_entropy loss instead (it applies softmax itself, stably)."""
    kernel = "softmax"


# ------------------------------------------- more activations (issue 10: acts)


class GELU(_Activation):
    """x * Phi(x), Phi the standard normal CDF: torch.nn.GELU. approximate='tanh'
    uses x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) instead of erf."""
    kernel = "gelu"

    def __init__(self, approximate="none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate
        self.kernel = "gelu" if approximate == "none" else "gelu_tanh"

    def config(self):
        return {"approximate": self.approximate}


class SiLU(_Activation):
    """x * sigmoid(x) (swish): torch.nn.SiLU."""
    kernel = "silu"


class ELU(_Activation):
    """x where x > 0, else alpha * (exp(x) - 1): torch.nn.ELU."""
    kernel = "elu"

    def __init__(self, alpha=1.0):
        super().__init__()
        self.alpha = finite_float(alpha, "ELU alpha")
        self._kwargs = {"alpha": self.alpha}

    def config(self):
        return {"alpha": self.alpha}


class Softplus(_Activation):
    """log(1 + exp(beta x)) / beta, linear (x) where beta x > threshold: torch.nn.Softplus."""
    kernel = "softplus"

    def __init__(self, beta=1.0, threshold=20.0):
        super().__init__()
        self.beta = finite_float(beta, "Softplus beta")
        if self.beta <= 0:
            raise ValueError(f"Softplus beta must be > 0, got {beta!r}")
        self.threshold = finite_float(threshold, "Softplus threshold")
        self._kwargs = {"beta": self.beta, "threshold": self.threshold}

    def config(self):
        return {"beta": self.beta, "threshold": self.threshold}
