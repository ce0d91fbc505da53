"""Layers that join paths: Add and Concatenate (graph merges), Residual (x + f(x) inside Sequential)."""
import numbers

import numpy as np

from .base import Layer


class Add(Layer):
    """The elementwise sum of two or more inputs of one shape."""
    n_inputs = None

    def output_shape(self, shapes):
        shapes = [tuple(s) for s in shapes]
        if len(shapes) < 2:
            raise ValueError(f"Add takes at least two inputs, got {len(shapes)}")
        if any(s != shapes[0] for s in shapes):
            raise ValueError(f"Add needs inputs of one shape, got {shapes}")
        return shapes[0]

    def forward(self, ctx, xs):
        ctx.count = len(xs)
        out = xs[0] + xs[1]
        for x in xs[2:]:
            out += x
        return out

    def backward(self, ctx, dy):
        return [dy] * ctx.count


class Concatenate(Layer):
    """Inputs joined along one axis (not the batch axis): axis=-1 is the last."""
    n_inputs = None

    def __init__(self, axis=-1):
        super().__init__()
        if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral) or axis == 0:
            raise ValueError(f"Concatenate axis must be a non-zero integer (0 is the batch axis), got {axis!r}")
        self.axis = int(axis)

    def _sample_axis(self, rank):
        """The axis within one sample's shape (no batch axis) of rank ``rank``."""
        axis = self.axis - 1 if self.axis > 0 else rank + self.axis
        if not 0 <= axis < rank:
            raise ValueError(f"Concatenate axis {self.axis} is out of range for inputs of rank {rank + 1}")
        return axis

    def output_shape(self, shapes):
        shapes = [tuple(s) for s in shapes]
        if len(shapes) < 2:
            raise ValueError(f"Concatenate takes at least two inputs, got {len(shapes)}")
        if len({len(s) for s in shapes}) != 1:
            raise ValueError(f"Concatenate needs inputs of one rank, got {shapes}")
        axis = self._sample_axis(len(shapes[0]))
        rest = {s[:axis] + s[axis + 1:] for s in shapes}
        if len(rest) != 1:
            raise ValueError(f"Concatenate axis {self.axis}: the other axes differ in {shapes}")
        out = list(shapes[0])
        out[axis] = sum(s[axis] for s in shapes)
        return tuple(out)

    def config(self):
        return {"axis": self.axis}

    def forward(self, ctx, xs):
        axis = self._sample_axis(xs[0].ndim - 1) + 1
        ctx.axis, ctx.sizes = axis, [x.shape[axis] for x in xs]
        return np.concatenate(xs, axis=axis)

    def backward(self, ctx, dy):
        out, lo = [], 0
        for size in ctx.sizes:
            index = (slice(None),) * ctx.axis + (slice(lo, lo + size),)
            part = dy[index]
            out.append(np.ascontiguousarray(part) if isinstance(part, np.ndarray) else part.contiguous())
            lo += size
        return out


class Residual(Layer):
    """x + f(x), f the given layers in order: a residual block for Sequential.
    Its parameters are keyed like torch's nested modules ('<index>.<layer>.weight')."""

    def __init__(self, *layers):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        if not layers or not all(isinstance(l, Layer) for l in layers):
            raise TypeError("Residual takes one or more fastnn layers")
        if any(l.n_inputs != 1 for l in layers):
            raise TypeError("Residual's layers must each take one input")
        self.layers = list(layers)

    def sublayers(self):
        return [(str(i), layer) for i, layer in enumerate(self.layers)]

    def output_shape(self, shape):
        out = tuple(shape)
        for layer in self.layers:
            out = tuple(layer.output_shape(out))
        if out != tuple(shape):
            raise ValueError(f"Residual: its layers map {tuple(shape)} to {out}; x + f(x) needs the same shape")
        return out

    def config(self):
        from ..model import layer_spec   # late: model imports the layers
        return {"layers": [layer_spec(l) for l in self.layers]}   # a frozen sublayer's flag too

    @classmethod
    def from_config(cls, config, build_layer):
        return cls(*[build_layer(spec) for spec in config["layers"]])

    def forward(self, ctx, x):
        ctx.inner, h = [], x
        for layer in self.layers:
            c = ctx.child()
            h = layer._forward_impl(c, h)
            ctx.inner.append(c)
        return x + h

    def backward(self, ctx, dy):
        g = dy
        for layer, c in zip(reversed(self.layers), reversed(ctx.inner)):
            g = layer._backward_impl(c, g)
        return dy + g if ctx.need_dx else None
