"""Shape layers: Flatten and Reshape move no data, only change the view of each sample."""
import numbers

import numpy as np

from .base import Layer


class Flatten(Layer):
    """(N, d1, d2, ...) -> (N, d1 * d2 * ...)."""

    def output_shape(self, shape):
        return (int(np.prod(shape)),)

    def forward(self, ctx, x):
        ctx.shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, ctx, dy):
        return dy.reshape(ctx.shape)


class Reshape(Layer):
    """(N, ...) -> (N, *shape); shape is without the batch axis and may hold one -1."""

    def __init__(self, shape):
        super().__init__()
        if isinstance(shape, (int, np.integer)):
            shape = (shape,)
        try:
            ok = all(isinstance(s, numbers.Integral) and not isinstance(s, (bool, np.bool_)) for s in shape)
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(f"Reshape shape must be a sequence of integers, got {shape!r}")
        shape = tuple(int(s) for s in shape)
        if any(s < 1 and s != -1 for s in shape) or shape.count(-1) > 1:
            raise ValueError(f"Reshape shape must hold positive sizes and at most one -1, got {shape}")
        self.shape = shape

    def output_shape(self, shape):
        size = int(np.prod(shape))
        known = int(np.prod([s for s in self.shape if s != -1]))
        if (-1 in self.shape and size % known) or (-1 not in self.shape and size != known):
            raise ValueError(f"Reshape{self.shape} cannot take inputs of shape "
                             f"(batch, {', '.join(map(str, shape))}): {size} values per sample")
        return tuple(size // known if s == -1 else s for s in self.shape)

    def config(self):
        return {"shape": list(self.shape)}

    def forward(self, ctx, x):
        ctx.shape = x.shape
        return x.reshape((x.shape[0],) + self.shape)

    def backward(self, ctx, dy):
        return dy.reshape(ctx.shape)
