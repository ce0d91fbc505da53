"""Trainer: fit / evaluate a model with a loss and an optimizer, in shuffled batches."""
import time

import numpy as np

from . import losses, optim
from .callbacks import Callback  # noqa: F401  (fastnn.Callback, the base)
from ._kernels import checks
from .layers.base import positive_int
from .threads import backend_threads

CLASSIFICATION = ("cross_entropy", "binary_cross_entropy")


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
    weighs the outputs' losses (default 1 each)."""

    def __init__(self, model, loss="cross_entropy", optimizer=None, seed=0, loss_weights=None,
                 loss_options=None):
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
        self.optimizer = optim.get(optimizer if optimizer is not None else optim.SGD(lr=0.01))
        self.seed = seed
        self.stop_training = False

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
        if loss.name == "cross_entropy":
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
        if loss.name == "cross_entropy":
            labels = y if y.ndim == 1 else y.argmax(axis=1)
            right = out.argmax(axis=1) == labels
            if loss.ignore_index is not None and y.ndim == 1:
                right &= labels != loss.ignore_index   # ignored rows are neither right nor wrong
            return int(right.sum())
        if loss.name == "binary_cross_entropy":
            return int(((out > 0) == (y > 0.5)).all(axis=1).sum())
        return None

    def _step_losses(self, outs, ys_dev):
        """(total loss, [per-output losses], [gradients]) of one batch."""
        results = [loss(o, y) for loss, o, y in zip(self._losses, outs, ys_dev)]
        total = sum(loss.weight * r[0] for loss, r in zip(self._losses, results))
        return total, [r[0] for r in results], [r[1] for r in results]

    def _logs(self, total, per_output, correct, n, ys):
        """{'loss', 'accuracy'} (one output) or also '<k>_loss', '<k>_accuracy' per output k.
        Accuracy counts only the rows whose label is not the loss's ignore_index (nan if none is)."""
        logs = {"loss": total / n}
        many = len(self._losses) > 1
        for k, (loss, value, right) in enumerate(zip(self._losses, per_output, correct)):
            if many:
                logs[f"output_{k}_loss"] = value / n
            if loss.name in CLASSIFICATION:
                counted = n
                if loss.ignore_index is not None and ys[k].ndim == 1:
                    counted -= int((ys[k] == loss.ignore_index).sum())
                logs[f"output_{k}_accuracy" if many else "accuracy"] = right / counted if counted else float("nan")
        return logs

    # --------------------------------------------------------------- fit
    def fit(self, X, y, epochs=1, batch_size=32, validation_data=None, shuffle=True,
            progress=True, callbacks=()):
        with backend_threads(self.model.backend):
            return self._fit(X, y, epochs, batch_size, validation_data, shuffle, progress, callbacks)

    def _fit(self, X, y, epochs, batch_size, validation_data, shuffle, progress, callbacks):
        xs, ys = self._check_data(X, y)
        if validation_data is not None:
            if not isinstance(validation_data, (list, tuple)) or len(validation_data) != 2:
                raise ValueError("validation_data must be a pair (X_val, y_val)")
            val = self._check_data(*validation_data, what="X_val")
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
        batch_size = positive_int(batch_size, "batch_size")
        rng = np.random.default_rng(self.seed)
        history = History()
        self.stop_training = False
        for cb in callbacks:
            cb.set_trainer(self)
            cb.on_train_begin({})
        bar = _progress(epochs) if progress else None
        model, n = self.model, len(xs[0])
        to_device, to_host = model.backend.to_device, model.backend.to_host
        params = model.parameters()   # views of the flat buffers: the same every step
        n_out = len(self._losses)
        loss0 = self._losses[0]
        classify0 = loss0.name in CLASSIFICATION
        for epoch in range(epochs):
            start = time.perf_counter()
            order = rng.permutation(n) if shuffle else None
            total_loss, per_output, correct = 0.0, [0.0] * n_out, [0] * n_out
            for lo in range(0, n, batch_size):
                idx = order[lo:lo + batch_size] if shuffle else slice(lo, lo + batch_size)
                # On a device backend the batch is copied in once; only the loss
                # and (for classifiers) the outputs come back.
                if n_out == 1:   # one output: no per-output lists in the hot loop
                    yb = ys[0][idx]
                    outs, tape = model._train_forward([to_device(x[idx]) for x in xs])
                    part, grad = loss0(outs[0], to_device(yb))
                    model.zero_grad()
                    model._backprop(tape, [grad])
                    self.optimizer.step(params)
                    size = len(yb)
                    total_loss += loss0.weight * part * size
                    per_output[0] += part * size
                    if classify0:
                        correct[0] += self._correct(loss0, to_host(outs[0]), yb)
                    continue
                yb = [y[idx] for y in ys]
                outs, tape = model._train_forward([to_device(x[idx]) for x in xs])
                loss, parts, grads = self._step_losses(outs, [to_device(t) for t in yb])
                model.zero_grad()
                model._backprop(tape, grads)
                self.optimizer.step(params)
                size = len(yb[0])
                total_loss += loss * size
                for k, (lossk, out, t) in enumerate(zip(self._losses, outs, yb)):
                    per_output[k] += parts[k] * size
                    if lossk.name in CLASSIFICATION:
                        correct[k] += self._correct(lossk, to_host(out), t)
            logs = self._logs(total_loss, per_output, correct, n, ys)
            if validation_data is not None:
                logs.update({"val_" + k: v for k, v in self._evaluate(*val).items()})
            logs["time"] = time.perf_counter() - start
            history.append(epoch, logs)
            for cb in callbacks:
                cb.on_epoch_end(epoch, logs)
            if bar is not None:
                bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items() if k != "time"}, refresh=False)
                bar.update(1)
            if not np.isfinite(logs["loss"]):
                if bar is not None:
                    bar.close()
                raise FloatingPointError(f"loss became {logs['loss']} in epoch {epoch}: lower the learning rate")
            if self.stop_training:
                break
        if bar is not None:
            bar.close()
        for cb in callbacks:
            cb.on_train_end({})
        return history

    # ---------------------------------------------------------- evaluate
    def evaluate(self, X, y, batch_size=1024):
        """{'loss': mean loss, 'accuracy': fraction correct (classification losses)}."""
        batch_size = positive_int(batch_size, "batch_size")
        xs, ys = self._check_data(X, y)
        with backend_threads(self.model.backend):
            return self._evaluate(xs, ys, batch_size)

    def _evaluate(self, xs, ys, batch_size=1024):
        n_out = len(self._losses)
        total_loss, per_output, correct = 0.0, [0.0] * n_out, [0] * n_out
        model, to_device = self.model, self.model.backend.to_device
        for lo in range(0, len(xs[0]), batch_size):
            xb = [x[lo:lo + batch_size] for x in xs]
            yb = [y[lo:lo + batch_size] for y in ys]
            outs = model._infer(xb)
            loss, parts, _ = self._step_losses([to_device(o) for o in outs], [to_device(t) for t in yb])
            total_loss += loss * len(yb[0])
            for k, (lossk, out, t) in enumerate(zip(self._losses, outs, yb)):
                per_output[k] += parts[k] * len(t)
                if lossk.name in CLASSIFICATION:
                    correct[k] += self._correct(lossk, out, t)
        return self._logs(total_loss, per_output, correct, len(xs[0]), ys)


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


def _progress(epochs):
    from tqdm.auto import tqdm
    return tqdm(total=epochs, desc="fit", unit="epoch", leave=True)
