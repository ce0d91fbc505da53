"""Trainer: fit / evaluate a model with a loss and an optimizer, in shuffled batches.

The loop of fit: callbacks (fastnn.callbacks), learning-rate schedules (fastnn.optim.lr_scheduler),
batches from arrays, memmaps or loaders (fastnn.batches), the NaN guard (fastnn.nan_guard),
metrics (fastnn.metrics), sample and class weights, and checkpoints (fastnn.checkpoint).
"""
import math
import sys
import time

import numpy as np

from . import batches as _batches, losses, optim
from .callbacks import Callback  # noqa: F401  (fastnn.Callback, the base)
from ._kernels import checks
from .layers.base import positive_int
from .nan_guard import NanGuard
from .threads import backend_threads



class History:
    """What fit returns: ``history`` maps each metric to its per-epoch list."""

    def __init__(self):
        self.history = {}
        self.epoch = []

    def append(self, epoch, logs):
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def plot(self, path=None, title=None):
        """Loss and accuracy curves (train and validation) to a PNG at path; returns the
        matplotlib Figure. Needs matplotlib (pip install 'fastnn[plot]')."""
        from .plot import plot_history
        return plot_history(self, path, title=title)

    def __repr__(self):
        return f"History(epochs={len(self.epoch)}, metrics={list(self.history)})"


class _OutputLoss:
    """One output's loss: its name (decides how targets are read), kernel and weight.
    loss is a name, a name with options (a dict), a losses.Loss object or a callable."""

    def __init__(self, model, loss, weight, options=None):
        if options:
            if not isinstance(loss, str):
                raise ValueError("loss_options go with a loss name; a Loss object carries its own options")
            if not isinstance(options, dict):
                raise TypeError(f"loss_options must be a dict of keyword arguments, got {options!r}")
            loss = losses.get(loss, **options)
        else:
            losses.get(loss)  # unknown names fail here, with the list of known ones
        self.ignore_index = None
        self.spec = loss       # what sample-weighted losses and checkpoints read
        if isinstance(loss, losses.Loss):
            self.name = loss.name
            self.ignore_index = getattr(loss, "ignore_index", None)
            self.kernel = loss.bind(model.backend)   # raw kernels: data is validated once in fit
            self.custom = False
        else:
            self.name = loss if isinstance(loss, str) else getattr(loss, "__name__", "loss")
            # Data is validated once in fit/evaluate, so batches go to the raw kernel.
            self.kernel = getattr(model.backend.raw, loss) if isinstance(loss, str) else loss
            self.custom = not isinstance(loss, str)
        self.labels = losses.target_kind(loss) == "labels"      # targets are class labels
        self.classifier = losses.is_classifier(loss)            # accuracy is reported
        self.weight = float(weight)
        if not np.isfinite(self.weight) or self.weight < 0:
            raise ValueError(f"loss weight must be a finite number >= 0, got {weight!r}")

    def __call__(self, out, y):
        loss, grad = self.kernel(out, y)
        if self.custom:   # a user's loss: its gradient must fit the output it is for
            shape, gshape = tuple(out.shape), tuple(getattr(grad, "shape", ()))
            if gshape != shape:
                raise ValueError(f"loss {self.name!r} returned a gradient of shape {gshape} "
                                 f"for outputs of shape {shape}")
            if np.dtype(getattr(grad, "dtype", None)) != np.dtype(out.dtype):
                grad = np.asarray(grad, dtype=out.dtype)
            loss = float(loss)
        if self.weight != 1.0:   # the gradient of weight * loss; the loss is logged unweighted
            grad = grad * self.weight
        return loss, grad


class Trainer:
    """fit / evaluate a model. ``loss`` is a name ('cross_entropy', 'mse', 'huber', 'l1',
    'binary_cross_entropy'), a losses.Loss object with its options
    (``fnn.losses.CrossEntropy(label_smoothing=0.1)``, ``fnn.losses.Huber(delta=0.5)``),
    a callable (out, y) -> (loss, grad), or for a model with several outputs a list (one
    per output) or a dict keyed by output index; ``loss_options`` are keyword arguments
    for a loss given by name (``loss="huber", loss_options={"delta": 0.5}``; for several
    outputs one dict for all or a list of dicts/None); ``loss_weights`` (list or dict)
    weighs the outputs' losses (default 1 each). ``metrics`` lists what evaluate and the
    epoch logs report besides the loss ("accuracy", "top_k_accuracy", "precision", "recall",
    "f1", "mae", "r2", fastnn.metrics objects or callables); None reports accuracy for
    classification losses.

    State kept across fits: ``epoch`` (epochs completed), ``history`` (every epoch's logs),
    ``scheduler`` (the last one given to fit). ``save_checkpoint`` / ``load_checkpoint``
    store and restore all of it with the model and the optimizer's state.

    ``distributed=True`` trains data-parallel on the ranks of ``mpiexec -n N`` (fastnn.distributed):
    ``batch_size`` is per rank, and N ranks equal one process at batch N * batch_size, step for
    step. Rank 0's weights are broadcast at each fit; logs, validation and metrics are reduced
    over the ranks; only rank 0 (``trainer.is_main``) shows progress and writes files. BatchNorm
    uses each rank's batch statistics unless ``sync_batchnorm=True``. The gradients are summed in
    buckets of about ``bucket_mb`` MB, each started during backward once its layers are done
    (torch DDP's bucket_cap_mb). An exception on one rank ends every rank (MPI abort)."""

    def __init__(self, model, loss="cross_entropy", optimizer=None, seed=0, loss_weights=None,
                 loss_options=None, metrics=None, distributed=False, sync_batchnorm=False,
                 bucket_mb=1.0):
        if sync_batchnorm and not distributed:
            raise ValueError("sync_batchnorm=True goes with distributed=True")
        self.model = model
        n_out = len(model._graph.outputs)
        per_output = _per_output(loss, n_out, "loss")
        weights = [1.0] * n_out if loss_weights is None else _per_output(loss_weights, n_out, "loss_weights")
        if isinstance(loss_options, (list, tuple)):
            if len(loss_options) != n_out:
                raise ValueError(f"loss_options: {len(loss_options)} given for a model with {n_out} outputs")
            options = list(loss_options)
        else:
            options = [loss_options] * n_out
        self._losses = [_OutputLoss(model, l, w, o) for l, w, o in zip(per_output, weights, options)]
        self.loss_name = self._losses[0].name
        self.loss_spec = {"loss": loss, "loss_options": loss_options, "loss_weights": loss_weights}
        self.optimizer = optim.get(optimizer if optimizer is not None else optim.SGD(lr=0.01))
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        self.metrics = None if metrics is None else (list(metrics) if isinstance(metrics, (list, tuple))
                                                     else [metrics])
        self._metrics = None if metrics is None else self._make_metrics(self.metrics)
        self.stop_training = False
        self.epoch = 0
        self.history = History()
        self.scheduler = None
        self._params = None
        self.distributed = bool(distributed)
        self._dp = None
        if self.distributed:
            from .distributed import DataParallel
            self._dp = DataParallel(model, sync_batchnorm=sync_batchnorm, bucket_mb=bucket_mb)
            if self._metrics is not None:   # merged over the ranks: fail now, not after an epoch
                from .metrics import check_mergeable
                check_mergeable(self._metrics)
        self.is_main = self._dp is None or self._dp.rank == 0   # the process that prints and writes
        self.comm_stats = None   # distributed: {"steps", "wait_s", "bytes"} of the last fit

    def _make_metrics(self, specs):
        """Per output, the metric objects (one set each output; keys get 'output_k_' with several)."""
        from . import metrics as _metrics
        return [_metrics.build(specs, loss.spec) for loss in self._losses]

    # ------------------------------------------------------------ checks
    def _check_data(self, X, y, what="X"):
        xs = self.model._inputs_list(self.model.check_input(X, what))
        n = len(xs[0])
        n_out = len(self._losses)
        if n_out > 1:
            if not isinstance(y, (list, tuple)) or len(y) != n_out:
                raise ValueError(f"the model has {n_out} outputs: y must be a list of {n_out} target arrays")
            ys = list(y)
        else:
            ys = [y]
        shapes = self.model._output_shapes(xs)
        checked = [self._check_targets(t, n, shape, loss, what, "y" + (f"[{i}]" if n_out > 1 else ""))
                   for i, (t, shape, loss) in enumerate(zip(ys, shapes, self._losses))]
        return xs, checked

    def _check_targets(self, y, n, out_shape, loss, what, name):
        y = checks._array(y, f"{what}'s targets {name}")
        if len(y) != n:
            raise ValueError(f"{what} has {n} samples but {name} has {len(y)}")
        out_shape = tuple(out_shape)
        if loss.labels:
            y = checks.labels_for(y, n, out_shape[-1], name="y", ignore_index=loss.ignore_index)
            if y.ndim == 2:
                y = np.ascontiguousarray(y, dtype=self.model.dtype)
        else:
            if y.dtype.kind not in "fiub":
                raise TypeError(f"{name} must hold numbers, got dtype {y.dtype}")
            y = np.ascontiguousarray(y, dtype=self.model.dtype)
            if y.ndim == 1 and out_shape == (1,):
                y = y.reshape(-1, 1)  # one output per sample, given as a vector
            if y.shape[1:] != out_shape:
                raise ValueError(f"{name} has shape {y.shape}, the model outputs (N, {', '.join(map(str, out_shape))})")
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            raise ValueError(f"{name} contains NaN or inf")
        return y

    @staticmethod
    def _correct(loss, out, y):
        if loss.labels:
            labels = y if y.ndim == 1 else y.argmax(axis=1)
            right = out.argmax(axis=1) == labels
            if loss.ignore_index is not None and y.ndim == 1:
                right &= labels != loss.ignore_index   # ignored rows are neither right nor wrong
            return int(right.sum())
        if loss.classifier:
            return int(((out > 0) == (y > 0.5)).all(axis=1).sum())
        return None

    # ---------------------------------------------------------- one batch
    def _batch_losses(self, outs, ys, w):
        """(weighted total, per-output losses, gradients) of one batch on device arrays;
        with sample weights w each output's loss is sum(w * l) / sum(w)."""
        if w is None and len(outs) == 1:   # the usual case, without the lists
            loss = self._losses[0]
            value, grad = loss(outs[0], ys[0])
            return loss.weight * value, [value], [grad]
        if w is None:
            results = [loss(o, t) for loss, o, t in zip(self._losses, outs, ys)]
        else:
            backend = self.model.backend
            results = []
            for loss, o, t in zip(self._losses, outs, ys):
                value, grad = losses.sample_weighted(loss.spec, backend.to_host(o), backend.to_host(t), w)
                grad = backend.to_device(np.asarray(grad, dtype=self.model.dtype))
                results.append((float(value), grad * loss.weight if loss.weight != 1.0 else grad))
        total = sum(loss.weight * r[0] for loss, r in zip(self._losses, results))
        return total, [r[0] for r in results], [r[1] for r in results]

    def _train_batch(self, xs, ys, w, guard=None, where=None):
        """One optimizer step on a checked batch: (weighted loss, per-output losses, outputs).
        With a guard, a non-finite loss or gradient raises before the step (guard.fail)."""
        if self._dp is not None:
            return self._train_batch_dp(xs, ys, w, guard, where)
        model, to_device = self.model, self.model.backend.to_device
        if guard is not None and guard.batch_state:
            guard.begin_batch()
        outs, tape = model._train_forward([to_device(x) for x in xs])
        total, parts, grads = self._batch_losses(outs, [to_device(t) for t in ys], w)
        if guard is not None and not math.isfinite(total):
            guard.fail("the loss", total, *where)
        model._backprop_fresh(tape, grads)   # zero_grad() and _backprop() in one
        self._step(guard, where)
        return total, parts, outs

    def _step(self, guard, where):
        """The guard's check of the gradient (host backends), then the optimizer's step."""
        model = self.model
        if guard is not None and guard.host:   # one pass over the flat gradient (nan_guard.py)
            norm2 = guard.grad_norm2(model._flat_grad)
            if not math.isfinite(norm2):
                guard.fail("the gradient's squared norm", norm2, *where)
        params = self._params
        if params is None or params.flat_data is not model._flat_data:
            params = self._params = model.parameters()   # kept: the optimizer caches its checks on it
        self.optimizer.step(params)

    def _train_batch_dp(self, xs, ys, w, guard, where):
        """_train_batch on this rank's part of a global batch (xs None: no rows here). The loss
        gradient is scaled by this rank's share of the global weight, so the gradients summed
        over the ranks are the global batch's; the guard checks the global loss and gradient,
        so every rank stops alike. Returns the global batch's loss first."""
        dp, model = self._dp, self.model
        rows = 0 if xs is None else len(ys[0])
        bw = rows if w is None or not rows else float(w.sum())
        global_w, _ = dp.agree(bw, rows)
        outs = parts = None
        if rows:
            to_device = model.backend.to_device
            if guard is not None and guard.batch_state:
                guard.begin_batch()
            outs, tape = model._train_forward([to_device(x) for x in xs])
            total, parts, grads = self._batch_losses(outs, [to_device(t) for t in ys], w)
            share = bw / global_w if global_w else 0.0
            if share != 1.0:
                grads = [g * share for g in grads]
            dp.start_loss(total * bw if bw else 0.0)
            model.zero_grad()
            dp.backprop(tape, grads)
        else:
            dp.start_loss(0.0)
            dp.skip_backprop()
        loss = dp.finish_step() / global_w if global_w else 0.0
        if guard is not None and not math.isfinite(loss):
            guard.fail("the loss", loss, *where)
        self._step(guard, where)
        return loss, parts, outs

    def _dp_end_of_epoch(self):
        """After a rank's batches ran out: agree that every rank's did (else RanksDisagree)."""
        self._dp.agree(0.0, 0, in_step=False)

    # --------------------------------------------------------------- fit
    def fit(self, X, y=None, epochs=1, batch_size=32, validation_data=None, validation_split=0.0,
            sample_weight=None, class_weight=None, initial_epoch=0, shuffle=True, callbacks=(),
            scheduler=None, progress=True, verbose=None, steps_per_epoch=None, nan_guard=True):
        """Train; returns ``trainer.history``. X, y: arrays (np.memmaps are read batch by batch),
        or X a fastnn.data.DataLoader / any iterable of (xb, yb[, wb]) batches with y=None.
        Epochs run from ``initial_epoch`` to ``epochs - 1`` (Keras' meaning: ``epochs`` is the
        last epoch's number + 1), so ``fit(X, y, epochs=4, initial_epoch=trainer.epoch)``
        continues a run. ``validation_split`` holds out the last fraction of the arrays (before
        shuffling, as Keras). ``sample_weight`` (N,) and ``class_weight`` ({class: weight} or
        "balanced") weigh each sample's loss: sum(w * l) / sum(w). ``scheduler`` steps after
        every batch if it says ``per_batch`` (OneCycleLR), else after every epoch. verbose: 0
        silent, 1 a progress bar per epoch (``progress=True``), 2 one line per epoch.
        ``nan_guard`` stops fit in the batch where the loss or a gradient stops being finite
        (FloatingPointError naming it) with the weights of the last finite step."""
        with backend_threads(self.model.backend), _abort_others_on_error(self):
            return self._fit(X, y, epochs, batch_size, validation_data, validation_split,
                             sample_weight, class_weight, initial_epoch, shuffle, callbacks,
                             scheduler, progress, verbose, steps_per_epoch, nan_guard)

    def _prepare(self, X, y, batch_size, validation_data, validation_split, sample_weight,
                 class_weight, shuffle, steps_per_epoch):
        """(training batch source, validation source or None)."""
        if not isinstance(validation_split, (int, float)) or isinstance(validation_split, bool) \
                or not 0.0 <= validation_split < 1.0:
            raise ValueError(f"validation_split must be a number in [0, 1), got {validation_split!r}")
        if validation_split and validation_data is not None:
            raise ValueError("give validation_data or validation_split, not both")
        val = None
        if validation_split:
            if not _batches.is_array_data(X):
                raise ValueError("validation_split needs arrays; with a loader pass validation_data")
            n = _batches._length(X)
            cut = int(n * (1.0 - validation_split))
            if cut < 1 or cut >= n:
                raise ValueError(f"validation_split={validation_split} leaves no training or no "
                                 f"validation rows of {n}")
            part = lambda d, s: [a[s] for a in d] if isinstance(d, (list, tuple)) else d[s]
            val = _batches.source(self._check_data, part(X, slice(cut, None)), part(y, slice(cut, None)),
                                  None, 1024, False, self.seed, what="validation rows", shard=self._shard())
            X, y = part(X, slice(0, cut)), part(y, slice(0, cut))
            if sample_weight is not None:
                sample_weight = np.asarray(sample_weight)[:cut]
        elif validation_data is not None:
            pair = isinstance(validation_data, (tuple, list)) and len(validation_data) in (2, 3) \
                and _batches.is_array_data(validation_data[0])
            if not pair and (_batches.is_array_data(validation_data) or not hasattr(validation_data, "__iter__")):
                raise ValueError("validation_data must be a pair (X_val, y_val), a triple with "
                                 "sample weights, or a loader of batches")
            if pair:
                wv = validation_data[2] if len(validation_data) == 3 else None
                val = _batches.source(self._check_data, validation_data[0], validation_data[1], wv,
                                      1024, False, self.seed, what="X_val", shard=self._shard())
            else:
                val = _batches.source(self._check_data, validation_data, None, None, 1024, False,
                                      self.seed, what="X_val", shard=self._shard())
        train = _batches.source(self._check_data, X, y, sample_weight, batch_size, shuffle, self.seed,
                                steps_per_epoch, shard=self._shard(), take=self._row_gather())
        if class_weight is not None:
            loss0 = self._losses[0]
            if len(self._losses) != 1 or not loss0.classifier:
                raise ValueError("class_weight needs one output with a classification loss")
            if isinstance(train, _batches.ArrayBatches):   # per sample once ("balanced" counts all y)
                labels = _batches._take(train.y, slice(None)) if train.lazy else train.ys[0]
                n_classes = self.model._output_shapes(train.first_xs if train.lazy else train.xs)[0][-1]
                rows = losses.class_weight_to_sample_weight(class_weight, labels, n_classes,
                                                            ignore_index=loss0.ignore_index)
                train.w = rows if train.w is None else train.w * rows
            elif isinstance(class_weight, str):
                raise ValueError(f"class_weight={class_weight!r} needs all the labels: give arrays, "
                                 "or a dict {class: weight} with a loader")
            else:
                train.class_weight = class_weight
        return train, val

    def _row_gather(self):
        """take(x, idx) = x[idx] by the backend's threaded embedding gather, where it has one
        (cython's; shuffled batches of a large set come from memory, and two cores copy them at
        about twice the rate of one), else None (numpy's indexing)."""
        backend = self.model.backend
        if not getattr(backend.module, "THREADED_GATHER", False):
            return None
        gather, dtype = backend.raw.embedding, self.model.dtype

        def take(x, idx):
            if x.dtype != dtype or x.ndim < 2 or not x.flags.c_contiguous or idx.dtype != np.int64:
                return x[idx]
            return gather(x.reshape(len(x), -1), idx).reshape((len(idx),) + x.shape[1:])
        return take

    def _shard(self):
        return None if self._dp is None else self._dp.shard

    def _weights(self, source, xs, ys, w):
        """The batch's sample weights: given ones times the class weights (or None)."""
        cw = getattr(source, "class_weight", None)
        if cw is None or xs is None:
            return w
        n_classes = self.model._output_shapes(xs)[0][-1]
        cw_rows = losses.class_weight_to_sample_weight(cw, ys[0], n_classes,
                                                       ignore_index=self._losses[0].ignore_index)
        return cw_rows if w is None else w * cw_rows

    def _fit(self, X, y, epochs, batch_size, validation_data, validation_split, sample_weight,
             class_weight, initial_epoch, shuffle, callbacks, scheduler, progress, verbose,
             steps_per_epoch, nan_guard):
        for value, name in ((epochs, "epochs"), (initial_epoch, "initial_epoch")):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        batch_size = positive_int(batch_size, "batch_size")
        if steps_per_epoch is not None:
            steps_per_epoch = positive_int(steps_per_epoch, "steps_per_epoch")
        if verbose is None:
            verbose = 1 if progress else 0
        if verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
        if not self.is_main:
            verbose = 0   # distributed: rank 0 shows progress
        callbacks = list(callbacks or ())
        for cb in callbacks:
            if not hasattr(cb, "on_epoch_end"):
                raise TypeError(f"callbacks must be fastnn.callbacks.Callback objects, got {cb!r}")
        train, val = self._prepare(X, y, batch_size, validation_data, validation_split,
                                   sample_weight, class_weight, shuffle, steps_per_epoch)
        if scheduler is not None:
            if not hasattr(scheduler, "step"):
                raise TypeError(f"scheduler must have a step() method, got {scheduler!r}")
            self.scheduler = scheduler
        scheduler = self.scheduler
        per_batch_sched = scheduler is not None and getattr(scheduler, "per_batch", False)
        self.stop_training = False
        hooks = _Hooks(callbacks, self)
        before = self.epoch
        hooks.call("on_train_begin", {})
        # A callback that restored a backup (BackupAndRestore) moved trainer.epoch: go on from there.
        start = self.epoch if self.epoch != before else initial_epoch
        if self._dp is not None:
            self._dp.begin_fit(len(train))
        guard = NanGuard(self) if nan_guard else None
        ended = {}
        try:
            for epoch in range(start, epochs):
                logs = self._fit_epoch(epoch, epochs, train, val, hooks, guard, scheduler,
                                       per_batch_sched, verbose)
                self.epoch = epoch + 1
                if scheduler is not None and not per_batch_sched:
                    scheduler.step()
                hooks.call("on_epoch_end", epoch, logs)
                if verbose == 2:
                    print(f"epoch {epoch + 1}/{epochs} - " + _format_logs(logs), file=sys.stderr, flush=True)
                if self.stop_training:
                    break
        except KeyboardInterrupt:
            ended = {"interrupted": True}
            raise
        except BaseException as exc:
            ended = {"exception": exc}
            raise
        finally:
            if self._dp is not None:
                self.comm_stats = self._dp.stats()
                self._dp.end_fit()
            hooks.call("on_train_end", ended)
        return self.history

    def _fit_epoch(self, epoch, epochs, train, val, hooks, guard, scheduler, per_batch_sched, verbose):
        start = time.perf_counter()
        n_out = len(self._losses)
        loss0 = self._losses[0]
        simple = n_out == 1 and self._metrics is None
        count_right = [loss.labels or loss.classifier for loss in self._losses]
        total_loss, per_output, correct, rows, wsum = 0.0, [0.0] * n_out, [0] * n_out, 0, 0.0
        counted = [0] * n_out   # rows accuracy counts: those whose label is not ignore_index
        ignoring = [loss.ignore_index is not None for loss in self._losses]
        metrics = self._metrics
        if metrics is not None:
            for ms in metrics:
                for m in ms:
                    m.reset()
        if guard is not None:
            guard.begin_epoch(scheduler)
        replay = None
        if train.replayable:
            def replay(k):
                for j in range(k):
                    xs, ys, w = train.batch(epoch, j) or (None, None, None)
                    self._train_batch(xs, ys, self._weights(train, xs, ys, w))
                    if per_batch_sched:
                        scheduler.step()
        hooks.call("on_epoch_begin", epoch, {})
        bar = _progress(epoch, epochs, len(train)) if verbose == 1 else None
        shown = time.perf_counter()
        to_host = self.model.backend.to_host
        batch_hooks = hooks.batch
        k = -1
        dp = self._dp
        try:
            for k, item in enumerate(train.epoch(epoch)):
                # distributed: None when this rank has no rows of the global batch
                xs, ys, w = item if item is not None else (None, None, None)
                if batch_hooks:
                    hooks.call("on_train_batch_begin", k, {})
                w = self._weights(train, xs, ys, w)
                total, parts, outs = self._train_batch(xs, ys, w, guard, (epoch, k, replay))
                if per_batch_sched:
                    scheduler.step()
                if xs is None:
                    if batch_hooks:
                        hooks.call("on_train_batch_end", k, {"loss": total, "size": 0})
                    continue
                size = len(ys[0])
                bw = size if w is None else float(w.sum())
                rows += size
                wsum += bw
                total_loss += total * bw
                if simple:
                    per_output[0] += parts[0] * bw
                    if count_right[0]:
                        correct[0] += self._correct(loss0, to_host(outs[0]), ys[0])
                        counted[0] += size - (_ignored(loss0, ys[0]) if ignoring[0] else 0)
                else:
                    for j, lossj in enumerate(self._losses):
                        per_output[j] += parts[j] * bw
                        host = to_host(outs[j])
                        if metrics is not None:
                            for m in metrics[j]:
                                m.update(host, ys[j], w)
                        elif count_right[j]:
                            correct[j] += self._correct(lossj, host, ys[j])
                            counted[j] += size - (_ignored(lossj, ys[j]) if ignoring[j] else 0)
                if batch_hooks:
                    hooks.call("on_train_batch_end", k, {"loss": total, "size": size})
                if bar is not None:
                    bar.update(1)
                    now = time.perf_counter()
                    if now - shown > 0.2:
                        shown = now
                        bar.set_postfix_str(f"loss={total_loss / wsum:.4f}" if wsum else "", refresh=False)
                if self.stop_training:
                    break
            if dp is not None:   # every rank's batches ended too; then the sums over the ranks
                self._dp_end_of_epoch()
                total_loss, per_output, correct, rows, wsum, counted, metrics = self._reduce(
                    total_loss, per_output, correct, rows, wsum, counted, metrics)
                dp.sync_buffers()
            if guard is not None and rows and not guard.weights_ok():
                guard.fail("the weights", "non-finite", epoch, k + 1, replay)
            if not guard and rows and not self.stop_training and not math.isfinite(total_loss):
                raise FloatingPointError(f"loss became {total_loss / wsum} in epoch {epoch}: lower the learning rate")
            logs = self._logs(total_loss, per_output, correct, rows, wsum, metrics, counted=counted)
            if val is not None:
                logs.update({"val_" + key: v for key, v in self._evaluate(val).items()})
            logs["time"] = time.perf_counter() - start
            if bar is not None:
                _finish_bar(bar, epoch, epochs, logs)
        finally:
            if bar is not None:
                bar.close()
        self.history.append(epoch, logs)
        return logs

    def _reduce(self, total_loss, per_output, correct, rows, wsum, counted, metrics):
        """The epoch's (or evaluation's) sums over every rank; metrics merged in rank order."""
        n = len(per_output)
        got = self._dp.sum([total_loss, rows, wsum] + list(per_output) + list(correct) + list(counted))
        total_loss, rows, wsum = float(got[0]), int(got[1]), float(got[2])
        per_output = [float(v) for v in got[3:3 + n]]
        correct = [int(v) for v in got[3 + n:3 + 2 * n]]
        counted = [int(v) for v in got[3 + 2 * n:]]
        if metrics is not None:
            metrics = self._dp.merge_metrics(metrics)
        return total_loss, per_output, correct, rows, wsum, counted, metrics

    def _logs(self, total, per_output, correct, n, wsum, metrics, counted=None):
        """{'loss', metrics...} (one output) or also 'output_<k>_loss', 'output_<k>_<metric>' per
        output k. Accuracy (the default metric) counts only the rows whose label is not the
        loss's ignore_index (nan if none is): ``counted`` gives those row counts per output."""
        logs = {"loss": total / wsum if wsum else float("nan")}
        many = len(self._losses) > 1
        for k, (loss, value, right) in enumerate(zip(self._losses, per_output, correct)):
            prefix = f"output_{k}_" if many else ""
            if many:
                logs[prefix + "loss"] = value / wsum if wsum else float("nan")
            if metrics is not None:
                for m in metrics[k]:
                    logs[prefix + m.name] = float(m.result())
            elif loss.labels or loss.classifier:
                rows = n if counted is None else counted[k]
                logs[prefix + "accuracy"] = right / rows if rows else float("nan")
        return logs

    # ---------------------------------------------------------- evaluate
    def evaluate(self, X, y=None, batch_size=1024, sample_weight=None):
        """{'loss': mean loss, and the metrics (default: 'accuracy' for classification losses)}.
        X, y as for fit (arrays, memmaps, or a loader with y=None)."""
        batch_size = positive_int(batch_size, "batch_size")
        source = _batches.source(self._check_data, X, y, sample_weight, batch_size, False, self.seed,
                                 shard=self._shard())
        with backend_threads(self.model.backend), _abort_others_on_error(self):
            return self._evaluate(source)

    def _evaluate(self, source):
        n_out = len(self._losses)
        total_loss, per_output, correct = 0.0, [0.0] * n_out, [0] * n_out
        counted, rows, wsum = [0] * n_out, 0, 0.0
        metrics = self._metrics
        if metrics is not None:
            for ms in metrics:
                for m in ms:
                    m.reset()
        model, to_device = self.model, self.model.backend.to_device
        for item in source.epoch(0):
            if item is None:   # distributed: no rows of this batch on this rank
                continue
            xs, ys, w = item
            outs = model._infer(xs)
            w = self._weights(source, xs, ys, w)
            loss, parts, _ = self._batch_losses([to_device(o) for o in outs], [to_device(t) for t in ys], w)
            size = len(ys[0])
            bw = size if w is None else float(w.sum())
            rows += size
            wsum += bw
            total_loss += loss * bw
            for k, (lossk, out, t) in enumerate(zip(self._losses, outs, ys)):
                per_output[k] += parts[k] * bw
                if metrics is not None:
                    for m in metrics[k]:
                        m.update(out, t, w)
                elif lossk.labels or lossk.classifier:
                    correct[k] += self._correct(lossk, out, t)
                    counted[k] += size - _ignored(lossk, t)
        if self._dp is not None:
            total_loss, per_output, correct, rows, wsum, counted, metrics = self._reduce(
                total_loss, per_output, correct, rows, wsum, counted, metrics)
        return self._logs(total_loss, per_output, correct, rows, wsum, metrics, counted=counted)

    # -------------------------------------------------------- checkpoints
    def save_checkpoint(self, path):
        """Write the model, optimizer state, scheduler, RNG positions, epoch and history to one
        safetensors file, atomically (fastnn.checkpoint)."""
        from . import checkpoint
        return checkpoint.save_trainer(self, path)

    @classmethod
    def load_checkpoint(cls, path, backend=None, **kwargs):
        """The Trainer a checkpoint holds (never unpickles anything); fit(..., initial_epoch=
        trainer.epoch) continues the run bit for bit."""
        from . import checkpoint
        return checkpoint.load_trainer(path, backend=backend, **kwargs)


class _abort_others_on_error:
    """Distributed: an exception on this rank ends every rank (MPI abort), unless every rank
    raises it at once (the NaN guard's stop, RanksDisagree: decided on reduced values)."""

    def __init__(self, trainer):
        self.dp = trainer._dp

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if self.dp is not None and exc is not None and not isinstance(exc, FloatingPointError) \
                and not getattr(exc, "all_ranks", False):
            from .distributed import abort_on_error
            abort_on_error(exc)
        return False


class _Hooks:
    """The callbacks' hooks; the per-batch ones run only if some callback defines them."""

    def __init__(self, callbacks, trainer):
        self.callbacks = callbacks
        for cb in callbacks:
            if hasattr(cb, "set_trainer"):
                cb.set_trainer(trainer)
            else:
                cb.trainer = trainer
        self.batch = any(_defines(cb, "on_train_batch_begin") or _defines(cb, "on_train_batch_end")
                         for cb in callbacks)

    def call(self, hook, *args):
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(*args)


def _defines(cb, hook):
    fn = getattr(type(cb), hook, None)
    return fn is not None and fn is not getattr(Callback, hook, None)


def _ignored(loss, y):
    """How many rows of labels y the loss ignores (ignore_index)."""
    if loss.ignore_index is None or y.ndim != 1:
        return 0
    return int((y == loss.ignore_index).sum())


def _format_logs(logs):
    return " - ".join(f"{k}: {v:.4f}" if k != "time" else f"{v:.2f}s" for k, v in logs.items())


def _per_output(value, n_out, what):
    """value as a list with one entry per output (a list, a dict by index, or one value)."""
    if isinstance(value, dict):
        if set(value) != set(range(n_out)):
            raise ValueError(f"{what} as a dict needs the keys {list(range(n_out))}, got {sorted(value)}")
        return [value[k] for k in range(n_out)]
    if isinstance(value, (list, tuple)):
        if len(value) != n_out:
            raise ValueError(f"{what}: {len(value)} given for a model with {n_out} outputs")
        return list(value)
    return [value] * n_out


def _progress(epoch, epochs, batches):
    """The epoch's tqdm bar. It appears only once the epoch has run for half a second (tqdm's
    delay): drawing a bar costs more than a whole short epoch, so a short one gets one line."""
    from tqdm.auto import tqdm
    return tqdm(total=batches, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=True, delay=0.5)


def _finish_bar(bar, epoch, epochs, logs):
    shown = {k: f"{v:.4f}" for k, v in logs.items() if k != "time"}
    if bar.last_print_t >= bar.start_t + bar.delay:     # the bar was drawn: leave it with the logs
        bar.set_postfix(shown, refresh=True)
        return
    text = ", ".join(f"{k}={v}" for k, v in shown.items())
    n = bar.n
    bar.close()   # first: tqdm.write would redraw the open (never shown) bar after the line
    bar.write(f"epoch {epoch + 1}/{epochs}: {n} batches, {text}, {logs['time']:.2f}s", file=sys.stderr)
