"""Trainer: fit / evaluate a model with a loss and an optimizer, in shuffled batches."""
import time

import numpy as np

from . import losses, optim
from ._kernels import checks
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


class Callback:
    """Base for callbacks; fit calls on_epoch_end(epoch, logs) after each epoch.
    Setting ``trainer.stop_training = True`` ends fit after the current epoch."""

    def on_train_begin(self, trainer):
        pass

    def on_epoch_end(self, epoch, logs):
        pass

    def on_train_end(self, trainer):
        pass


class Trainer:
    def __init__(self, model, loss="cross_entropy", optimizer=None, seed=0):
        self.model = model
        self.loss_name = loss if isinstance(loss, str) else getattr(loss, "__name__", "loss")
        losses.get(loss)  # unknown names fail here, with the list of known ones
        # Data is validated once in fit/evaluate, so batches go to the raw kernel.
        self._loss_kernel = getattr(model.backend.raw, loss) if isinstance(loss, str) else loss
        self.optimizer = optim.get(optimizer if optimizer is not None else optim.SGD(lr=0.01))
        self.seed = seed
        self.stop_training = False

    # ------------------------------------------------------------ checks
    def _check_data(self, X, y, what="X"):
        X = self.model.check_input(X, what)
        y = checks._array(y, f"{what}'s targets y")
        if len(y) != len(X):
            raise ValueError(f"{what} has {len(X)} samples but y has {len(y)}")
        out_shape = self.model.output_shape(X.shape[1:])
        if self.loss_name == "cross_entropy":
            y = checks.labels_for(y, len(X), out_shape[-1], name="y")
            if y.ndim == 2:
                y = np.ascontiguousarray(y, dtype=self.model.dtype)
        else:
            y = np.ascontiguousarray(y, dtype=self.model.dtype)
            if y.ndim == 1 and out_shape == (1,):
                y = y.reshape(-1, 1)  # one output per sample, given as a vector
            if y.shape[1:] != out_shape:
                raise ValueError(f"y has shape {y.shape}, the model outputs (N, {', '.join(map(str, out_shape))})")
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            raise ValueError("y contains NaN or inf")
        return X, y

    def _correct(self, out, y):
        if self.loss_name == "cross_entropy":
            labels = y if y.ndim == 1 else y.argmax(axis=1)
            return int((out.argmax(axis=1) == labels).sum())
        if self.loss_name == "binary_cross_entropy":
            return int(((out > 0) == (y > 0.5)).all(axis=1).sum())
        return None

    # --------------------------------------------------------------- fit
    def fit(self, X, y, epochs=1, batch_size=32, validation_data=None, shuffle=True,
            progress=True, callbacks=()):
        with backend_threads(self.model.backend):
            return self._fit(X, y, epochs, batch_size, validation_data, shuffle, progress, callbacks)

    def _fit(self, X, y, epochs, batch_size, validation_data, shuffle, progress, callbacks):
        X, y = self._check_data(X, y)
        if validation_data is not None:
            if len(validation_data) != 2:
                raise ValueError("validation_data must be a pair (X_val, y_val)")
            Xv, yv = self._check_data(*validation_data, what="X_val")
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        rng = np.random.default_rng(self.seed)
        history = History()
        self.stop_training = False
        for cb in callbacks:
            getattr(cb, "on_train_begin", lambda t: None)(self)
        bar = _progress(epochs) if progress else None
        model, n = self.model, len(X)
        to_device, to_host = model.backend.to_device, model.backend.to_host
        params = model.parameters()   # views of the flat buffers: the same every step
        for epoch in range(epochs):
            start = time.perf_counter()
            order = rng.permutation(n) if shuffle else None
            total_loss, total_correct = 0.0, 0
            for lo in range(0, n, batch_size):
                idx = order[lo:lo + batch_size] if shuffle else slice(lo, lo + batch_size)
                xb, yb = X[idx], y[idx]
                # On a device backend the batch is copied in once; only the loss
                # and (for classifiers) the outputs come back.
                out = model._forward(to_device(xb))
                loss, grad = self._loss_kernel(out, to_device(yb))
                model.zero_grad()
                model.backward(grad)
                self.optimizer.step(params)
                total_loss += loss * len(xb)
                correct = self._correct(to_host(out), yb)
                if correct is not None:
                    total_correct += correct
            logs = {"loss": total_loss / n}
            if self.loss_name in CLASSIFICATION:
                logs["accuracy"] = total_correct / n
            if validation_data is not None:
                logs.update({"val_" + k: v for k, v in self._evaluate(Xv, yv).items()})
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
            getattr(cb, "on_train_end", lambda t: None)(self)
        return history

    # ---------------------------------------------------------- evaluate
    def evaluate(self, X, y, batch_size=1024):
        """{'loss': mean loss, 'accuracy': fraction correct (classification losses)}."""
        X, y = self._check_data(X, y)
        with backend_threads(self.model.backend):
            return self._evaluate(X, y, batch_size)

    def _evaluate(self, X, y, batch_size=1024):
        total_loss, total_correct = 0.0, 0
        to_device, to_host = self.model.backend.to_device, self.model.backend.to_host
        for lo in range(0, len(X), batch_size):
            xb, yb = X[lo:lo + batch_size], y[lo:lo + batch_size]
            out = self.model._forward(to_device(xb))
            loss, _ = self._loss_kernel(out, to_device(yb))
            total_loss += loss * len(xb)
            correct = self._correct(to_host(out), yb)
            total_correct += correct or 0
        result = {"loss": total_loss / len(X)}
        if self.loss_name in CLASSIFICATION:
            result["accuracy"] = total_correct / len(X)
        return result


def _progress(epochs):
    from tqdm.auto import tqdm
    return tqdm(total=epochs, desc="fit", unit="epoch", leave=True)
