"""Pooling layers: max or mean over windows, PyTorch's semantics (no padding, floor mode)."""
from .._kernels.checks import spatial
from .._kernels.shapes import window_output_sizes
from .base import Layer
from .conv import _config_value


class _Pool(Layer):
    dims = None
    kind = None

    def __init__(self, kernel_size, stride=None):
        super().__init__()
        name = type(self).__name__
        try:
            self.kernel_size = spatial(kernel_size, f"{name} kernel_size", self.dims)
            self.stride = self.kernel_size if stride is None else spatial(stride, f"{name} stride", self.dims)
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        self._kernel = f"{self.kind}pool{self.dims}d"
        unpack = (lambda v: v[0]) if self.dims == 1 else (lambda v: v)
        self._geometry = (unpack(self.kernel_size), unpack(self.stride))

    def output_shape(self, shape):
        name = type(self).__name__
        if len(shape) != self.dims + 1:
            axes = "L" if self.dims == 1 else "H, W"
            raise ValueError(f"{name} expects inputs of shape (batch, C, {axes}), "
                             f"got (batch, {', '.join(map(str, shape))})")
        return (shape[0],) + window_output_sizes(name, shape[1:], self.kernel_size, self.stride)

    def config(self):
        return {"kernel_size": _config_value(self.kernel_size), "stride": _config_value(self.stride)}

    def forward(self, ctx, x):
        ctx.x = x
        out = getattr(self.kernels, self._kernel)(x, *self._geometry)
        if self.kind == "max":
            out, ctx.idx = out
        return out

    def backward(self, ctx, dy):
        backward = getattr(self.kernels, self._kernel + "_backward")
        if self.kind == "max":
            return backward(dy, ctx.x, ctx.idx, *self._geometry)
        return backward(dy, ctx.x, *self._geometry)


class MaxPool1D(_Pool):
    """(N, C, L) -> (N, C, (L - kernel_size) // stride + 1); stride defaults to kernel_size."""
    dims, kind = 1, "max"


class MaxPool2D(_Pool):
    """(N, C, H, W) -> (N, C, H_out, W_out); kernel_size and stride are ints or (h, w) pairs."""
    dims, kind = 2, "max"


class AvgPool1D(_Pool):
    dims, kind = 1, "avg"


class AvgPool2D(_Pool):
    dims, kind = 2, "avg"


# ------------------------------------------------------------ global pools


class _GlobalAvgPool(Layer):
    dims = None

    def output_shape(self, shape):
        if len(shape) != self.dims + 1:
            axes = "L" if self.dims == 1 else "H, W"
            raise ValueError(f"{type(self).__name__} expects inputs of shape (batch, C, {axes}), "
                             f"got (batch, {', '.join(map(str, shape))})")
        return (shape[0],)

    def forward(self, ctx, x):
        ctx.x = x if x.ndim == 3 else x.reshape(x.shape[0], x.shape[1], -1)
        ctx.shape = x.shape
        return self.kernels.global_avgpool(ctx.x)

    def backward(self, ctx, dy):
        if not ctx.need_dx:
            return None
        return self.kernels.global_avgpool_backward(dy, ctx.x).reshape(ctx.shape)


class GlobalAvgPool1D(_GlobalAvgPool):
    """(N, C, L) -> (N, C): the mean over L (Keras' GlobalAveragePooling1D, channels first)."""
    dims = 1


class GlobalAvgPool2D(_GlobalAvgPool):
    """(N, C, H, W) -> (N, C): the mean over H and W (Keras' GlobalAveragePooling2D, channels first)."""
    dims = 2
