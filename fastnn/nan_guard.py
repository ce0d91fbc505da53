"""fit's NaN guard: a non-finite loss or gradient stops fit in the batch where it appears, with
the weights of the last finite step.

Per batch it costs a finite-check of the loss (a float), one dot product over the flat gradient
(on host backends: a float32 gradient beyond 1.8e19 counts, its square overflowing) and a copy
of the model's buffers (BatchNorm's running statistics, usually
small), taken before the forward that updates them. The weights are never copied per batch: a
bad loss or gradient is caught before the optimizer steps, so the weights are still the last
step's. Only if a step itself overflows (finite gradient, non-finite weights after it) are they
rebuilt: from a snapshot taken at the start of the epoch, by replaying the epoch's batches up to
the last finite step (the batches, Dropout masks and schedules are deterministic). A source
that cannot be replayed (a generator) falls back to the weights at the start of the epoch, and
the error says so.
"""
import math

import numpy as np


def _finite_sum(a):
    """Whether the flat buffer a is all finite: one BLAS dot (NaN and inf propagate; no
    np.errstate, which alone costs half the dot: a diverging fit may warn before it raises).
    A float32 buffer with values beyond 1.8e19 counts as overflowing too (its square is inf)."""
    if a.size == 0:
        return True
    return math.isfinite(a.dot(a))


class NanGuard:
    def __init__(self, trainer):
        model = trainer.model
        self.trainer, self.model, self.optimizer = trainer, model, trainer.optimizer
        self.host = isinstance(model._flat_grad, np.ndarray)
        nbuf = model._flat_buffers.size
        self.buffers = model._flat_buffers if nbuf else None
        self.buffers_copy = model.backend.zeros(nbuf, model.dtype) if nbuf else None
        self.dropouts = [layer for _, layer in model._named_layers() if hasattr(layer, "calls")]
        self.calls = None
        self.batch_state = self.buffers is not None or bool(self.dropouts)   # begin_batch has work
        # The gradient's squared norm: the backend's own grad_norm where it has one (cython's runs
        # on a team), else one BLAS dot. Either way a float32 gradient whose square overflows
        # float32 (norm beyond 1.8e19) counts as non-finite.
        source = getattr(model.backend, "sources", {}).get("grad_norm", "")
        native = source == "native" or source.endswith(":native")   # auto: "cython:native"
        self._norm = model.backend.raw.grad_norm if native and self.host else None
        self._limit = float(np.finfo(np.float32).max) if model.dtype == np.float32 else math.inf

    def grad_norm2(self, g):
        """sum(g * g) of the flat gradient g (a host array); inf where float32 overflows."""
        if self._norm is None:
            return g.dot(g)
        norm2 = self._norm(g, 2.0) ** 2
        return math.inf if norm2 > self._limit else norm2   # NaN stays NaN

    # ---------------------------------------------------------------- snapshots
    def begin_epoch(self, scheduler):
        to_host = self.model.backend.to_host
        opt = self.optimizer
        self.epoch_state = {
            "params": to_host(self.model._flat_data).copy(),
            "buffers": None if self.buffers is None else to_host(self.buffers).copy(),
            "opt": [(arr, to_host(arr).copy()) for _, states in opt._state.values() for arr in states],
            "opt_keys": set(opt._state),
            "iterations": opt.iterations,
            "lr": (opt.lr, [g.get("lr") for g in opt.param_groups]) if hasattr(opt, "lr") else None,
            "scheduler": None if scheduler is None or not hasattr(scheduler, "state_dict")
            else scheduler.state_dict(),
            "calls": [layer.calls for layer in self.dropouts],
        }

    def begin_batch(self):
        if self.buffers is not None:
            self.buffers_copy[...] = self.buffers
        if self.dropouts:
            self.calls = [layer.calls for layer in self.dropouts]

    def _restore_batch(self):
        if self.buffers is not None:
            self.buffers[...] = self.buffers_copy
        if self.calls is not None:
            for layer, calls in zip(self.dropouts, self.calls):
                layer.calls = calls

    def restore_epoch(self, scheduler):
        s, model, to_device = self.epoch_state, self.model, self.model.backend.to_device
        model._flat_data[...] = to_device(s["params"])
        if s["buffers"] is not None:
            model._flat_buffers[...] = to_device(s["buffers"])
        for arr, saved in s["opt"]:
            arr[...] = to_device(saved)
        for key in set(self.optimizer._state) - s["opt_keys"]:   # made during the epoch: start afresh
            del self.optimizer._state[key]
        self.optimizer.iterations = s["iterations"]
        if s["lr"] is not None:
            self.optimizer.lr = s["lr"][0]
            for g, lr in zip(self.optimizer.param_groups, s["lr"][1]):
                if lr is not None:
                    g["lr"] = lr
        if s["scheduler"] is not None:
            scheduler.load_state_dict(s["scheduler"])
        for layer, calls in zip(self.dropouts, s["calls"]):
            layer.calls = calls

    # ------------------------------------------------------------------- checks
    # (the per-batch loss and gradient checks are inlined in Trainer._train_batch)
    def weights_ok(self):
        return _finite_sum(self.model.backend.to_host(self.model._flat_data))

    def fail(self, what, value, epoch, batch, replay):
        """Roll back to the last finite step and raise. replay(k) re-runs batches [0, k) of
        the epoch from the epoch's snapshot (None: the source cannot be replayed)."""
        self._restore_batch()
        where = f"epoch {epoch}, batch {batch}"
        if self.weights_ok():
            kept = f"the weights after batch {batch - 1}" if batch else "the weights at the start of the epoch"
        else:   # the previous step overflowed: rebuild the step before it
            scheduler = self.trainer.scheduler
            self.restore_epoch(scheduler)
            if replay is None or batch < 2:
                kept = "the weights at the start of the epoch"
            else:
                replay(batch - 1)
                kept = f"the weights after batch {batch - 2}"
        raise FloatingPointError(
            f"{what} became {value} in {where}: fit stopped with {kept} (the last finite step). "
            f"Lower the learning rate, or clip gradients (clip_norm=)")
