"""Dropout: inverted dropout in training, the identity in inference (torch.nn.Dropout).

Randomness: a counter-based hash (reference.dropout_mask), not a generator object. When the
model is built it calls ``seed_rng(model seed, layer name)``, which derives this layer's
64-bit key from the model's seed and the layer's state_dict prefix ('3', '2.1'); every
training call then uses the stream seed splitmix64(key + calls * golden) and counts itself
in ``calls``. So a model built twice with seed=0 draws the same masks, two Dropout layers
draw different ones, each step draws new ones, and every backend draws the same mask for a
seed. The mask lives in the call's ctx. ``calls`` is the layer's RNG position: restore it
(with the model's seed) to replay the same masks.
"""
import numbers
import zlib

import numpy as np

from .._kernels import reference as _ref
from .base import Layer


class Dropout(Layer):
    """Zeroes each element with probability p in training and scales the rest by 1 / (1 - p)."""

    def __init__(self, p=0.5):
        super().__init__()
        if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real) or not 0.0 <= float(p) < 1.0:
            raise ValueError(f"Dropout p must be a number in [0, 1), got {p!r}")
        self.p = float(p)
        self._key = None
        self.calls = 0
        # Distributed: the rows of the global batch before this rank's part. The mask is
        # counter-based, so starting it that many rows on makes it the global batch's slice.
        self.row_offset = 0

    def config(self):
        return {"p": self.p}

    def seed_rng(self, seed, name):
        """The model's build hook: this layer's key from the model's seed and its name."""
        if isinstance(seed, numbers.Integral) and not isinstance(seed, (bool, np.bool_)) and seed >= 0:
            seq = np.random.SeedSequence(int(seed), spawn_key=(zlib.crc32(name.encode()),))
        else:                                   # seed=None: a fresh key, as the weights are
            seq = np.random.SeedSequence()
        self._key = int(seq.generate_state(1, np.uint64)[0])
        self.calls = 0

    def _stream_seed(self):
        self.calls += 1
        return _ref.splitmix64((self._key + self.calls * _ref.SPLITMIX_GOLDEN) & ((1 << 64) - 1))

    def forward(self, ctx, x):
        if not ctx.training or self.p == 0.0:
            ctx.mask = None
            return x
        seed = self._stream_seed()
        if self.row_offset:
            skip = self.row_offset * (x.size // x.shape[0])   # elements of the earlier ranks' rows
            seed = (seed + skip * _ref.SPLITMIX_GOLDEN) & ((1 << 64) - 1)
        y, ctx.mask = self.kernels.dropout(x, self.p, seed)
        return y

    def backward(self, ctx, dy):
        if not ctx.need_dx:
            return None
        if ctx.mask is None:
            return dy
        return self.kernels.dropout_backward(dy, ctx.mask, self.p)
