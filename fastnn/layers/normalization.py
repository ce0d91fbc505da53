"""Normalization layers: LayerNorm and BatchNorm1D / BatchNorm2D, PyTorch's semantics,
parameters (weight, bias) and buffers (running_mean, running_var, num_batches_tracked).

LayerNorm normalises the trailing ``normalized_shape`` axes of each sample: the
kernels see x as (rows, features). BatchNorm normalises per channel over the batch
and the spatial axes: the kernels see x as (N, C, S), S = 1 for (N, C) inputs,
L for (N, C, L), H * W for (N, C, H, W). In training it uses the batch's
statistics (biased variance) and moves the running ones (unbiased variance) by
``momentum``; in eval (``ctx.training`` False) it uses the running ones.

Synchronized BatchNorm (torch.nn.SyncBatchNorm): with ``layer.sync`` set to a
communicator (the distributed Trainer's ``sync_batchnorm=True`` sets it), a
training step computes what one process computes on the concatenation of every
rank's batch: one allgather of each rank's (count, mean, variance) per channel in
forward, one allreduce of (dweight, dbias) in backward for dx.
"""
import math
import numbers

import numpy as np

from .base import Layer, finite_float, positive_int


def _eps(value, who):
    eps = finite_float(value, f"{who} eps")
    if eps <= 0:
        raise ValueError(f"{who} eps must be positive, got {value!r}")
    return eps


class LayerNorm(Layer):
    """torch.nn.LayerNorm: y = (x - mean) / sqrt(var + eps) * weight + bias, the
    statistics over the trailing ``normalized_shape`` axes (an int or a tuple)."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True):
        super().__init__()
        if isinstance(normalized_shape, numbers.Integral) and not isinstance(normalized_shape, bool):
            normalized_shape = (normalized_shape,)
        if not isinstance(normalized_shape, (tuple, list)) or not normalized_shape:
            raise ValueError(f"LayerNorm normalized_shape must be a positive int or a non-empty "
                             f"tuple of them, got {normalized_shape!r}")
        self.normalized_shape = tuple(positive_int(d, "LayerNorm normalized_shape") for d in normalized_shape)
        self.eps = _eps(eps, "LayerNorm")
        self.elementwise_affine = bool(elementwise_affine)
        self.use_bias = bool(bias) and self.elementwise_affine
        self._features = int(np.prod(self.normalized_shape))

    def param_shapes(self):
        if not self.elementwise_affine:
            return {}
        shapes = {"weight": self.normalized_shape}
        if self.use_bias:
            shapes["bias"] = self.normalized_shape
        return shapes

    def init_params(self, rng):
        return {name: (np.ones if name == "weight" else np.zeros)(shape)
                for name, shape in self.param_shapes().items()}

    def output_shape(self, shape):
        k = len(self.normalized_shape)
        if len(shape) < k or tuple(shape[len(shape) - k:]) != self.normalized_shape:
            raise ValueError(f"LayerNorm({self.normalized_shape}) expects inputs of shape "
                             f"(batch, ..., {', '.join(map(str, self.normalized_shape))}), "
                             f"got (batch, {', '.join(map(str, shape))})")
        return tuple(shape)

    def config(self):
        ns = self.normalized_shape
        return {"normalized_shape": ns[0] if len(ns) == 1 else list(ns), "eps": self.eps,
                "elementwise_affine": self.elementwise_affine, "bias": self.use_bias}

    def _flat(self, name):
        p = self.params.get(name)
        return None if p is None else p.reshape(self._features)

    def forward(self, ctx, x):
        x2 = x.reshape(-1, self._features)
        y, ctx.mean, ctx.rstd = self.kernels.layer_norm(x2, self._flat("weight"), self._flat("bias"),
                                                        self.eps)
        ctx.x = x2
        return y.reshape(x.shape)

    def backward(self, ctx, dy):
        dx, dw, db = self.kernels.layer_norm_backward(
            dy.reshape(-1, self._features), ctx.x, ctx.mean, ctx.rstd, self._flat("weight"), ctx.need_dx)
        if "weight" in self.grads:
            self.grads["weight"] += dw.reshape(self.normalized_shape)
        if "bias" in self.grads:
            self.grads["bias"] += db.reshape(self.normalized_shape)
        return None if dx is None else dx.reshape(dy.shape)


class _BatchNorm(Layer):
    dims = None   # spatial axes: BatchNorm1D takes 0 or 1, BatchNorm2D 2

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        who = type(self).__name__
        self.num_features = positive_int(num_features, f"{who} num_features")
        self.eps = _eps(eps, who)
        if momentum is not None:
            momentum = finite_float(momentum, f"{who} momentum")
            if not 0 <= momentum <= 1:
                raise ValueError(f"{who} momentum must lie in [0, 1] (or be None for a "
                                 f"cumulative average), got {momentum!r}")
        self.momentum = momentum
        self.sync = None

    @property
    def sync(self):
        """None (per-process statistics), or the communicator a synchronized BatchNorm
        trains through: an object with allgather_array(a) -> list of arrays (one per
        rank, rank order) and allreduce_sum(a) -> array, both blocking collectives.
        Not part of config() or the state: a run's setting, not the model's."""
        return self._sync

    @sync.setter
    def sync(self, comm):
        if comm is not None and not all(callable(getattr(comm, name, None))
                                        for name in ("allgather_array", "allreduce_sum")):
            raise TypeError(f"{type(self).__name__}.sync must be None or a communicator with "
                            f"allgather_array and allreduce_sum methods, got {type(comm).__name__}")
        self._sync = comm

    def build(self, backend, dtype, params, grads, buffers=None):
        super().build(backend, dtype, params, grads, buffers)
        # where the arrays live: identities on CPU backends, device <-> host on cuda
        self._to_host, self._to_device = backend.to_host, backend.to_device

    def param_shapes(self):
        return {"weight": (self.num_features,), "bias": (self.num_features,)}

    def init_params(self, rng):
        return {"weight": np.ones(self.num_features), "bias": np.zeros(self.num_features)}

    def buffer_shapes(self):
        # num_batches_tracked is torch's counter, kept so that torch's state_dict loads
        # unchanged (and ours loads into torch); stored in the model's float buffer, it
        # counts exactly up to 2**24 steps in float32.
        c = (self.num_features,)
        return {"running_mean": c, "running_var": c, "num_batches_tracked": ()}

    def init_buffers(self):
        return {"running_mean": np.zeros(self.num_features), "running_var": np.ones(self.num_features),
                "num_batches_tracked": np.zeros(())}

    def output_shape(self, shape):
        who = f"{type(self).__name__}({self.num_features})"
        c = self.num_features
        ranks, want = ((1, 2), f"(batch, {c}) or (batch, {c}, L)") if self.dims == 1 else ((3,), f"(batch, {c}, H, W)")
        if len(shape) not in ranks or shape[0] != c:
            raise ValueError(f"{who} expects inputs of shape {want}, got (batch, {', '.join(map(str, shape))})")
        return tuple(shape)

    def config(self):
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum}

    def _as3d(self, x):
        # (the spatial size spelt out: -1 cannot be inferred for an empty batch)
        return x.reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:])) if x.ndim != 3 else x

    def _too_few(self, x, where=""):
        return ValueError(f"{type(self).__name__}: training needs more than 1 value per channel{where}, "
                          f"got input shape {tuple(x.shape)} (use a larger batch, or eval mode)")

    def _count_batch(self):
        """num_batches_tracked += 1; the running statistics' update factor for this step."""
        count = self.buffers["num_batches_tracked"]
        one = count.reshape(1)   # a view: in place on a NumPy 0-d array and on a device array
        one += np.ones(1, self.dtype)
        # momentum None: torch's cumulative average, factor 1 / batches seen
        return self.momentum if self.momentum is not None else 1.0 / float(np.asarray(count))

    def forward(self, ctx, x):
        return self._forward(ctx, x, False)

    # The model's plan runs BatchNorm -> ReLU as one kernel each way (batch_norm_relu and its
    # backward): the ReLU layer is then not called, and this layer's backward takes the
    # gradient of the ReLU's output.
    fused_backward = True

    def fuses(self, activation, alpha):
        return activation == "relu"

    def can_fuse(self, x):
        return True

    def forward_fused(self, ctx, x, activation, alpha):
        return self._forward(ctx, x, True)

    def _forward(self, ctx, x, relu):
        x3 = self._as3d(x)
        training = bool(ctx.training)
        ctx.sync = self._sync if training else None
        ctx.relu_y = None
        if ctx.sync is not None:
            y = self._sync_forward(ctx, x, x3)
            if relu:   # the activation kernels take (rows, features), as the ReLU layer passes them
                ctx.relu_y = self.kernels.relu(y.reshape(-1, y.shape[-1]))
                y = ctx.relu_y.reshape(x.shape)
            return y
        factor = 0.0
        if training:
            if x3.shape[0] * x3.shape[2] < 2:
                raise self._too_few(x)
            factor = self._count_batch()
        kernel = self.kernels.batch_norm_relu if relu else self.kernels.batch_norm
        y, ctx.mean, ctx.rstd = kernel(
            x3, self.params["weight"], self.params["bias"], self.buffers["running_mean"],
            self.buffers["running_var"], factor, self.eps, training)
        ctx.x, ctx.batch_stats = x3, training
        if relu:
            ctx.relu_y = y
        return y.reshape(x.shape)

    def backward(self, ctx, dy):
        y = ctx.relu_y   # set by forward_fused: dy is then the ReLU output's gradient
        if ctx.sync is not None:
            if y is not None:
                dy = self.kernels.relu_backward(dy.reshape(y.shape), y, y).reshape(dy.shape)
            return self._sync_backward(ctx, dy)
        kernel, mask = ((self.kernels.batch_norm_backward, ()) if y is None
                        else (self.kernels.batch_norm_relu_backward, (y,)))
        dx, dw, db = kernel(self._as3d(dy), ctx.x, *mask, ctx.mean, ctx.rstd, self.params["weight"],
                            ctx.batch_stats, ctx.need_dx)
        self.grads["weight"] += dw
        self.grads["bias"] += db
        return None if dx is None else dx.reshape(dy.shape)

    # ------------------------------------------------------ synchronized
    def _local_stats(self, x3):
        """This rank's per-channel (mean, biased variance), float64 (C,) each."""
        n, c, s_len = x3.shape
        m = n * s_len
        if m < 2:   # 0 or 1 value a channel: the kernel's unbiased variance would divide by 0
            host = np.asarray(self._to_host(x3), np.float64).reshape(m, c)
            return host.sum(axis=0), np.zeros(c)
        # The training kernel with momentum 1 on zeroed scratch buffers leaves in them
        # the batch mean and the unbiased variance, from the backend's own one-sweep
        # reduction (its y is discarded).
        rm, rv = np.zeros(c, self.dtype), np.zeros(c, self.dtype)
        self.kernels.batch_norm(x3, self.params["weight"], self.params["bias"], rm, rv, 1.0, self.eps, True)
        return rm.astype(np.float64), rv.astype(np.float64) * ((m - 1) / m)

    def _sync_forward(self, ctx, x, x3):
        comm, c = ctx.sync, self.num_features
        m = x3.shape[0] * x3.shape[2]
        mean, var = self._local_stats(x3)
        stats = np.stack(comm.allgather_array(np.concatenate(([float(m)], mean, var))))
        counts, means, variances = stats[:, 0], stats[:, 1:c + 1], stats[:, c + 1:]
        total = float(counts.sum())
        if total < 2:
            raise self._too_few(x, f" over all {len(counts)} ranks")
        # Chan et al.: the exact mean and biased variance of the concatenated batches
        g_mean = counts @ means / total
        g_var = (counts @ variances + counts @ (means - g_mean) ** 2) / total
        factor = self._count_batch()
        for name, batch in (("running_mean", g_mean), ("running_var", g_var * (total / (total - 1)))):
            buf = self.buffers[name]
            buf[...] = ((1 - factor) * np.asarray(self._to_host(buf), np.float64)
                        + factor * batch).astype(self.dtype)
        # normalise with the global statistics: the eval-mode kernel, them as its running ones
        ctx.var = g_var.astype(self.dtype)
        y, ctx.mean, ctx.rstd = self.kernels.batch_norm(
            x3, self.params["weight"], self.params["bias"], g_mean.astype(self.dtype), ctx.var,
            0.0, self.eps, False)
        ctx.x, ctx.count = x3, total
        return y.reshape(x.shape)

    def _sync_backward(self, ctx, dy):
        # training=False: dx = dy * weight * rstd, dweight and dbias this rank's sums
        dx, dw, db = self.kernels.batch_norm_backward(
            self._as3d(dy), ctx.x, ctx.mean, ctx.rstd, self.params["weight"], False, ctx.need_dx)
        self.grads["weight"] += dw
        self.grads["bias"] += db
        if dx is None:
            return None
        c = self.num_features
        host = lambda a: np.asarray(self._to_host(a), np.float64)
        sums = ctx.sync.allreduce_sum(np.concatenate((host(dw), host(db))))
        # dx = weight * rstd * (dy - dbias_g / m_g - xhat * dweight_g / m_g): the last two
        # terms are xhat * a + b per channel, the eval-mode kernel with weight a, bias b.
        scale = host(self.params["weight"]) * host(ctx.rstd) / -ctx.count
        a = self._to_device((scale * sums[:c]).astype(self.dtype))
        b = self._to_device((scale * sums[c:]).astype(self.dtype))
        corr, _, _ = self.kernels.batch_norm(ctx.x, a, b, ctx.mean, ctx.var, 0.0, self.eps, False)
        dx += corr
        return dx.reshape(dy.shape)


class BatchNorm1D(_BatchNorm):
    """torch.nn.BatchNorm1d on (N, C) or (N, C, L): statistics per channel over N (and L)."""
    dims = 1


class BatchNorm2D(_BatchNorm):
    """torch.nn.BatchNorm2d on (N, C, H, W): statistics per channel over N, H and W."""
    dims = 2


def set_batchnorm_sync(layers, comm):
    """Set ``sync = comm`` (a communicator, or None to turn it off) on every BatchNorm1D /
    BatchNorm2D among ``layers`` (e.g. model.layers) and the layers inside them
    (Residual's), each once; returns how many. The distributed Trainer's
    sync_batchnorm option."""
    seen, stack, found = set(), list(layers), []
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, _BatchNorm):
            found.append(layer)
        stack.extend(sub for _, sub in layer.sublayers())
    for layer in found:   # a bad comm fails at the first, before any layer changed
        layer.sync = comm
    return len(found)
