"""Convolution layers: cross-correlation with PyTorch's weight layout (C_out, C_in, *kernel)."""
import numpy as np

from .._kernels.checks import spatial
from .._kernels.shapes import window_output_sizes
from .base import Layer
from .base import positive_int


def _config_value(values):
    """A tuple of equal sizes saves as one int, as it was most likely given."""
    return values[0] if len(set(values)) == 1 else list(values)


class _Conv(Layer):
    dims = None

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        super().__init__()
        name = type(self).__name__
        self.in_channels = positive_int(in_channels, f"{name} in_channels")
        self.out_channels = positive_int(out_channels, f"{name} out_channels")
        self.padding_mode = None       # 'same' / 'valid' when given as a string (issue 10: acts)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"{name} padding must be 'same', 'valid' or sizes, got {padding!r}")
            self.padding_mode, padding = padding, 0
        try:
            self.kernel_size = spatial(kernel_size, f"{name} kernel_size", self.dims)
            self.stride = spatial(stride, f"{name} stride", self.dims)
            self.padding = spatial(padding, f"{name} padding", self.dims, minimum=0)
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        # 'same' (stride 1, as torch): k // 2 zeros on both sides, then an even kernel's output
        # drops its first position, so the extra zero of (k - 1) is on the right/bottom, as torch.
        self._crop = (0,) * self.dims
        if self.padding_mode == "same":
            if any(s != 1 for s in self.stride):
                raise ValueError(f"{name} padding='same' needs stride 1 (as torch), got stride {stride!r}")
            self.padding = tuple(k // 2 for k in self.kernel_size)
            self._crop = tuple(1 - k % 2 for k in self.kernel_size)
        self._kernel = f"conv{self.dims}d"
        # 1-D kernels take ints, 2-D kernels (h, w) pairs.
        unpack = (lambda v: v[0]) if self.dims == 1 else (lambda v: v)
        self._geometry = (unpack(self.stride), unpack(self.padding))

    def param_shapes(self):
        return {"weight": (self.out_channels, self.in_channels) + self.kernel_size,
                "bias": (self.out_channels,)}

    def init_params(self, rng):
        # PyTorch's default (kaiming_uniform with a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        bound = 1.0 / np.sqrt(self.in_channels * np.prod(self.kernel_size))
        return {name: rng.uniform(-bound, bound, size=shape)
                for name, shape in self.param_shapes().items()}

    def output_shape(self, shape):
        name = f"{type(self).__name__}({self.in_channels}, {self.out_channels}, ...)"
        axes = "L" if self.dims == 1 else "H, W"
        if len(shape) != self.dims + 1 or shape[0] != self.in_channels:
            raise ValueError(f"{name} expects inputs of shape (batch, {self.in_channels}, {axes}), "
                             f"got (batch, {', '.join(map(str, shape))})")
        sizes = window_output_sizes(name, shape[1:], self.kernel_size, self.stride, self.padding)
        return (self.out_channels,) + tuple(n - c for n, c in zip(sizes, self._crop))

    def config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": _config_value(self.kernel_size), "stride": _config_value(self.stride),
                "padding": self.padding_mode or _config_value(self.padding)}

    def build(self, backend, dtype, params, grads, buffers=None):
        super().build(backend, dtype, params, grads, buffers)
        self._zeros = backend.zeros      # where the backend keeps arrays ('same' backward pads dy)

    def _cropped(self):
        return (slice(None), slice(None)) + tuple(slice(c, None) for c in self._crop)

    def forward(self, ctx, x):
        ctx.x = x
        y = getattr(self.kernels, self._kernel)(x, self.params["weight"], self.params["bias"],
                                                *self._geometry)
        if not any(self._crop):
            return y
        y = y[self._cropped()]
        return np.ascontiguousarray(y) if isinstance(y, np.ndarray) else y.contiguous()

    def backward(self, ctx, dy):
        backward = getattr(self.kernels, self._kernel + "_backward")
        if any(self._crop):              # dy of the kernel's uncropped output: zero where cropped
            full = self._zeros(tuple(dy.shape[:2]) + tuple(n + c for n, c in zip(dy.shape[2:], self._crop)),
                               dy.dtype)
            full[self._cropped()] = dy
            dy = full
        dx, dw, db = backward(dy, ctx.x, self.params["weight"], *self._geometry, ctx.need_dx)
        self.grads["weight"] += dw
        self.grads["bias"] += db
        return dx


class Conv1D(_Conv):
    """(N, C_in, L) -> (N, C_out, L_out), L_out = (L + 2 * padding - kernel_size) // stride + 1;
    padding='same' keeps L (stride 1), 'valid' is padding 0."""
    dims = 1


class Conv2D(_Conv):
    """(N, C_in, H, W) -> (N, C_out, H_out, W_out); kernel_size, stride and padding
    are ints or (h, w) pairs; padding may be 'same' (stride 1) or 'valid'."""
    dims = 2
