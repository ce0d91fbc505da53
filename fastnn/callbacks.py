"""Callbacks: code the Trainer runs at fixed points of fit, as in Keras.

Before fit calls any hook it sets ``callback.trainer`` (and so ``callback.model``). The hooks,
in the order fit calls them:

    on_train_begin(logs)                   once, before the first epoch
    on_epoch_begin(epoch, logs)            epoch counts from 0 across fits (trainer.epoch)
    on_train_batch_begin(batch, logs)
    on_train_batch_end(batch, logs)        logs: {'loss': this batch's loss, 'size': its rows}
    on_epoch_end(epoch, logs)              logs: loss, metrics, val_* and time of the epoch
    on_train_end(logs)                     always, also when fit ends by an exception

Setting ``trainer.stop_training = True`` ends fit after the current epoch.
"""
import csv
import math
import numbers
import os
import string
import warnings

import numpy as np

from .layers.base import nonneg_int as _nonneg_int


class Callback:
    """Base class: override the hooks you need; each gets (epoch or batch, logs dict)."""

    trainer = None

    def set_trainer(self, trainer):
        self.trainer = trainer

    @property
    def model(self):
        return None if self.trainer is None else self.trainer.model

    def on_train_begin(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_train_batch_begin(self, batch, logs=None):
        pass

    def on_train_batch_end(self, batch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass


# ------------------------------------------------------------------ Keras' callbacks
# EarlyStopping, ModelCheckpoint, CSVLogger, ReduceLROnPlateau and TerminateOnNaN, with the
# semantics of the Keras callbacks of the same names (Keras 2.13+ / 3).
# Each reads trainer.model / trainer.optimizer / trainer.stop_training through callback.trainer.

# Metric names that get better as they grow (mode="auto"); any name holding "acc" too.
_MAXIMIZED = ("f1", "fmeasure", "precision", "recall", "auc", "r2")


def _auto_mode(monitor):
    """'max' for accuracy-like metrics ('acc', 'accuracy', 'f1', 'precision', 'recall', 'auc',
    'r2', with or without 'val_' / 'output_k_' in front), 'min' for everything else (losses,
    errors), as Keras' auto mode."""
    name = monitor[4:] if monitor.startswith("val_") else monitor
    if "acc" in name or name.startswith("fmeasure") or name.endswith(_MAXIMIZED):
        return "max"
    return "min"


def _check_mode(mode, monitor):
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    return _auto_mode(monitor) if mode == "auto" else mode


def _check_monitor(monitor):
    if not isinstance(monitor, str) or not monitor:
        raise TypeError(f"monitor must be the name of a logged value like 'val_loss', got {monitor!r}")
    return monitor




def _number(value, name, low=None, low_open=False, high=None, high_open=False):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")
    return value


def _bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


class _Monitoring(Callback):
    """A callback that reads one logged value: warns once when the logs lack it."""

    _warned = False

    def _trainer(self):
        if self.trainer is None:
            raise RuntimeError(f"{type(self).__name__} is not attached to a trainer: the Trainer sets "
                               "callback.trainer (set_trainer) before calling any hook")
        return self.trainer

    def _monitored(self, logs, what):
        """logs[monitor] as a float, or None (with one warning naming the keys there are)."""
        value = (logs or {}).get(self.monitor)
        if value is None:
            if not self._warned:
                self._warned = True
                warnings.warn(f"{type(self).__name__}: {what} conditioned on {self.monitor!r}, which is "
                              f"not in the logs; available: {', '.join(sorted(logs or {})) or 'none'}",
                              RuntimeWarning, stacklevel=3)
            return None
        return float(value)

    def _better(self, current, reference, delta=0.0):
        """current beats reference by more than delta in the callback's direction."""
        if math.isnan(current):
            return False
        if reference is None:
            return True
        if self.mode == "max":
            return current - delta > reference
        return current + delta < reference


class EarlyStopping(_Monitoring):
    """Stop fit when ``monitor`` has stopped improving (keras.callbacks.EarlyStopping).

    An epoch improves when it beats the best so far by more than ``min_delta`` (in the
    direction of ``mode``: 'min', 'max', or 'auto' = 'max' for accuracy-like names, else
    'min'). After ``patience`` epochs in a row without improvement fit stops
    (``trainer.stop_training = True``). With ``baseline``, the patience counter is reset only
    by epochs that also beat the baseline. Epochs before ``start_from_epoch`` are ignored.
    ``restore_best_weights=True`` copies the model's state_dict (parameters and buffers) at
    the best epoch and loads it back when fit ends, whether or not patience ran out (Keras
    2.13+). ``stopped_epoch`` (0 if it never stopped), ``best``, ``best_epoch`` are kept;
    on_train_begin resets them (Keras 2.13; Keras 3 keeps ``best`` across fits). A NaN value
    never counts as an improvement.
    """

    def __init__(self, monitor="val_loss", patience=0, min_delta=0, mode="auto",
                 restore_best_weights=False, baseline=None, start_from_epoch=0, verbose=0):
        self.monitor = _check_monitor(monitor)
        self.patience = _nonneg_int(patience, "patience")
        self.min_delta = abs(_number(min_delta, "min_delta"))
        self.mode = _check_mode(mode, monitor)
        self.restore_best_weights = _bool(restore_best_weights, "restore_best_weights")
        self.baseline = None if baseline is None else _number(baseline, "baseline")
        self.start_from_epoch = _nonneg_int(start_from_epoch, "start_from_epoch")
        self.verbose = _nonneg_int(verbose, "verbose")
        self.on_train_begin()

    def on_train_begin(self, logs=None):
        self.wait = 0
        self.stopped_epoch = 0
        self.best = None
        self.best_weights = None
        self.best_epoch = 0

    def on_epoch_end(self, epoch, logs=None):
        current = self._monitored(logs, "early stopping")
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            # Until an epoch improves, the weights at hand are the best there are.
            self.best_weights = self._trainer().model.state_dict()
            self.best_epoch = epoch
        self.wait += 1
        if self._better(current, self.best, self.min_delta):
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = self._trainer().model.state_dict()
            if self.baseline is None or self._better(current, self.baseline, self.min_delta):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self._trainer().stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            self._trainer().model.load_state_dict(self.best_weights)


class _Zeros(dict):
    """format_map mapping that answers 0 for every name: checks a path template's syntax."""

    def __missing__(self, key):
        return 0


class ModelCheckpoint(_Monitoring):
    """Save the model with model.save (atomic; .safetensors or .npz by the extension) during
    fit (keras.callbacks.ModelCheckpoint).

    ``path`` may hold ``{epoch}`` (1-based, as Keras: ``"ckpt-{epoch:03d}.safetensors"``),
    ``{batch}`` (1-based, with an integer save_freq) and any key of the logs
    (``"best-{val_loss:.3f}.npz"``); folders are created. ``save_freq="epoch"`` saves at
    every epoch end; an integer n saves every n batches (on_train_batch_end, with the batch's
    logs). ``save_best_only`` saves only when ``monitor`` beats the best value so far (mode as
    EarlyStopping's); the best value is kept across fits.
    """

    def __init__(self, path, monitor="val_loss", save_best_only=False, mode="auto",
                 save_freq="epoch", verbose=0):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a file path (str or os.PathLike), got {type(path).__name__}")
        self.path = os.fspath(path)
        try:
            probe = string.Formatter().vformat(self.path, (), _Zeros())
        except (ValueError, IndexError) as exc:
            raise ValueError(f"path {self.path!r} is not a valid format template: {exc}") from None
        from . import io
        io.format_of(probe)   # an unknown extension fails now, not after the first epoch
        self.monitor = _check_monitor(monitor)
        self.save_best_only = _bool(save_best_only, "save_best_only")
        self.mode = _check_mode(mode, monitor)
        if save_freq != "epoch" and (isinstance(save_freq, (bool, np.bool_))
                                     or not isinstance(save_freq, numbers.Integral) or save_freq < 1):
            raise ValueError(f"save_freq must be 'epoch' or a positive number of batches, got {save_freq!r}")
        self.save_freq = save_freq if save_freq == "epoch" else int(save_freq)
        self.verbose = _nonneg_int(verbose, "verbose")
        self.best = None
        self.saved = []          # the paths written, in order
        self._epoch = 0
        self._batches = 0

    def on_train_begin(self, logs=None):
        self._batches = 0
        self._epoch = getattr(self.trainer, "epoch", 0) or 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        self._batches += 1
        if self._batches >= self.save_freq:
            self._batches = 0
            self._save(self._epoch, batch, logs or {})

    def on_epoch_end(self, epoch, logs=None):
        self._epoch = epoch
        if self.save_freq == "epoch":
            self._save(epoch, None, logs or {})

    def _path(self, epoch, batch, logs):
        fields = dict(logs)
        fields["epoch"] = epoch + 1
        if batch is not None:
            fields["batch"] = batch + 1
        try:
            return self.path.format(**fields)
        except KeyError as exc:
            raise KeyError(f"ModelCheckpoint cannot fill the path {self.path!r}: the logs have no {exc}; "
                           f"they hold {sorted(fields)}") from None

    def _save(self, epoch, batch, logs):
        model = self._trainer().model
        if self.save_best_only:
            current = self._monitored(logs, "saving the best model only")
            if current is None:
                return
            if not self._better(current, self.best):
                if self.verbose > 0:
                    print(f"Epoch {epoch + 1}: {self.monitor} did not improve from {self.best}")
                return
            path = self._path(epoch, batch, logs)
            if self.verbose > 0:
                was = "None" if self.best is None else f"{self.best:.5f}"
                print(f"Epoch {epoch + 1}: {self.monitor} improved from {was} to {current:.5f}, "
                      f"saving model to {path}")
            self.best = current
        else:
            path = self._path(epoch, batch, logs)
            if self.verbose > 0:
                print(f"Epoch {epoch + 1}: saving model to {path}")
        if not _writes(self._trainer()):   # distributed: rank 0 writes, the others decide alike
            return
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        model.save(path)
        self.saved.append(path)


class CSVLogger(Callback):
    """One CSV row per epoch (keras.callbacks.CSVLogger): an 'epoch' column (0-based, as
    Keras) and the epoch logs' keys, sorted, taken from the first epoch's logs (a key missing
    later is written 'NA'); the file is flushed after every row. ``append=True`` adds to an
    existing file (the header only when it is empty)."""

    def __init__(self, path, separator=",", append=False):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a file path (str or os.PathLike), got {type(path).__name__}")
        if not isinstance(separator, str) or len(separator) != 1:
            raise ValueError(f"separator must be one character, got {separator!r}")
        self.path = os.fspath(path)
        self.sep = separator
        self.append = _bool(append, "append")
        self.keys = None
        self._file = None
        self._writer = None

    def on_train_begin(self, logs=None):
        self._open()

    def _open(self):
        self._close()
        if not _writes(getattr(self, "trainer", None)):
            return
        header = True
        if self.append and os.path.exists(self.path):
            with open(self.path, newline="") as f:
                header = not f.readline()
        self._file = open(self.path, "a" if self.append else "w", newline="")
        self._header = header
        self.keys = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if not _writes(getattr(self, "trainer", None)):
            return
        if self._file is None:   # hooks called without on_train_begin: open then
            self._open()
        if self.keys is None:
            self.keys = sorted(logs)
        if self._writer is None:
            self._writer = csv.writer(self._file, delimiter=self.sep)
            if self._header:
                self._writer.writerow(["epoch"] + self.keys)
        self._writer.writerow([epoch] + [_csv_value(logs.get(k, "NA")) for k in self.keys])
        self._file.flush()

    def on_train_end(self, logs=None):
        self._close()

    def _close(self):
        if self._file is not None:
            self._file.close()
        self._file = self._writer = None


def _writes(trainer):
    """Whether this process writes files: rank 0 of a distributed trainer, or any other."""
    return getattr(trainer, "is_main", True)


def _csv_value(value):
    if isinstance(value, str):
        return value
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value.item()
    if hasattr(value, "__iter__"):
        return f"[{', '.join(map(str, value))}]"
    return value


class ReduceLROnPlateau(_Monitoring):
    """Multiply the learning rate by ``factor`` when ``monitor`` has not improved (by more than
    ``min_delta``) for ``patience`` epochs (keras.callbacks.ReduceLROnPlateau). Acts on
    ``optimizer.lr`` and on every param group's lr, each ``max(lr * factor, min_lr)`` and only
    while above min_lr; then waits ``cooldown`` epochs before counting again."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, mode="auto", min_delta=1e-4,
                 cooldown=0, min_lr=0.0, verbose=0):
        self.monitor = _check_monitor(monitor)
        self.factor = _number(factor, "factor", low=0.0, low_open=True, high=1.0, high_open=True)
        self.patience = _nonneg_int(patience, "patience")
        self.mode = _check_mode(mode, monitor)
        self.min_delta = abs(_number(min_delta, "min_delta"))
        self.cooldown = _nonneg_int(cooldown, "cooldown")
        self.min_lr = _number(min_lr, "min_lr", low=0.0)
        self.verbose = _nonneg_int(verbose, "verbose")
        self.on_train_begin()

    def on_train_begin(self, logs=None):
        self.best = None
        self.wait = 0
        self.cooldown_counter = 0

    def in_cooldown(self):
        return self.cooldown_counter > 0

    def on_epoch_end(self, epoch, logs=None):
        current = self._monitored(logs, "learning-rate reduction")
        if current is None:
            return
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if self._better(current, self.best, self.min_delta):
            self.best = current
            self.wait = 0
        elif not self.in_cooldown():
            self.wait += 1
            if self.wait >= self.patience:
                from .optim.lr_scheduler import group_lrs, set_group_lrs
                optimizer = self._trainer().optimizer
                old = group_lrs(optimizer)
                new = [max(lr * self.factor, self.min_lr) if lr > self.min_lr else lr for lr in old]
                if new != old:
                    set_group_lrs(optimizer, new, "ReduceLROnPlateau")
                    if self.verbose > 0:
                        print(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to "
                              f"{new[0] if len(new) == 1 else new}.")
                    self.cooldown_counter = self.cooldown
                    self.wait = 0


class TerminateOnNaN(Callback):
    """Stop fit at the batch whose loss is NaN or infinite (keras.callbacks.TerminateOnNaN):
    sets ``trainer.stop_training`` in on_train_batch_end; ``stopped_batch`` records where.
    fit's own ``nan_guard`` (on by default) stops first, with a FloatingPointError and the last
    finite weights; this callback is for ``nan_guard=False``, to stop quietly as Keras does."""

    def __init__(self):
        self.stopped_batch = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            print(f"Batch {batch}: Invalid loss, terminating training")
            self.stopped_batch = batch
            if self.trainer is None:
                raise RuntimeError("TerminateOnNaN is not attached to a trainer")
            self.trainer.stop_training = True


from .checkpoint import BackupAndRestore  # noqa: E402,F401  (Keras' name, kept beside the others)
