"""Embedding: a lookup table of rows, torch.nn.Embedding (weight (num_embeddings, embedding_dim),
N(0, 1) init, the padding row zero and without gradient).

It takes integer indices of any shape and returns (*shape, embedding_dim). A model whose
input feeds Embedding layers keeps that input as int64 (model.check_input) and checks its
range here, with an IndexError naming it; float indices are a TypeError (also a ValueError).
"""
import numbers

import numpy as np

from .base import Context, Layer, positive_int


class IndexDtypeError(TypeError, ValueError):
    """Embedding indices of a non-integer dtype."""


class Embedding(Layer):
    integer_input = True    # the model keeps this layer's input as int64 indices

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None):
        super().__init__()
        self.num_embeddings = positive_int(num_embeddings, "Embedding num_embeddings")
        self.embedding_dim = positive_int(embedding_dim, "Embedding embedding_dim")
        if padding_idx is not None:
            n = self.num_embeddings
            if isinstance(padding_idx, (bool, np.bool_)) or not isinstance(padding_idx, numbers.Integral) \
                    or not -n <= padding_idx < n:
                raise ValueError(f"Embedding padding_idx must be None or an integer in [{-n}, {n}), "
                                 f"got {padding_idx!r}")
            padding_idx = int(padding_idx) % n       # torch counts a negative one from the end
        self.padding_idx = padding_idx

    def param_shapes(self):
        return {"weight": (self.num_embeddings, self.embedding_dim)}

    def init_params(self, rng):
        w = rng.standard_normal((self.num_embeddings, self.embedding_dim))
        if self.padding_idx is not None:
            w[self.padding_idx] = 0.0
        return {"weight": w}

    def output_shape(self, shape):
        return tuple(shape) + (self.embedding_dim,)

    def config(self):
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim,
                "padding_idx": self.padding_idx}

    def check_indices(self, idx, name="Embedding input"):
        """idx as C-contiguous int64 in [0, num_embeddings), or IndexDtypeError / IndexError."""
        if not isinstance(idx, np.ndarray) and hasattr(idx, "copy_to_host"):
            return idx                                   # a device array: the caller checked it
        idx = np.asarray(idx)
        if idx.dtype.kind not in "iu":
            raise IndexDtypeError(f"{name}: Embedding indices must be integers, got dtype {idx.dtype}")
        if idx.size == 0:
            raise ValueError(f"{name}: Embedding indices are empty (shape {idx.shape})")
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= self.num_embeddings:
            raise IndexError(f"{name}: Embedding indices must be in [0, {self.num_embeddings}), "
                             f"got values in [{lo}, {hi}]")
        return np.ascontiguousarray(idx, dtype=np.int64)

    # forward is checked here (integer input), not by Layer's float check
    def _forward_impl(self, ctx, idx):
        ctx.idx = idx
        return self.kernels.embedding(self.params["weight"], idx)

    def forward(self, ctx, x=None):
        if not isinstance(ctx, Context) or x is None:
            raise TypeError("Embedding.forward takes (ctx, x) with ctx a fnn.layers.Context")
        if not self.built:
            raise RuntimeError("Embedding is not built: put it in a model first")
        y = self._forward_impl(ctx, self.check_indices(x, "Embedding.forward"))
        ctx._output = (tuple(y.shape), np.dtype(y.dtype))
        return y
    forward._checked = True

    def apply(self, x, training=False):
        if not self.built:
            raise RuntimeError("Embedding is not built: put it in a model first")
        return self._forward_impl(Context(training=bool(training), need_dx=False), self.check_indices(x))

    def backward(self, ctx, dy):
        pad = -1 if self.padding_idx is None else self.padding_idx
        self.kernels.embedding_backward_into(dy, ctx.idx, self.grads["weight"], pad)
        return None                                      # indices have no gradient
