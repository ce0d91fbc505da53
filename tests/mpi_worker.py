"""Runs under `mpiexec -n N python tests/mpi_worker.py CASE OUT` for tests/test_distributed.py
(and in one process, imported, for the single-process side of each comparison)."""
import json
import os
import sys

import numpy as np

import fastnn as fnn
from fastnn.layers import (LSTM, BatchNorm2D, Conv1D, Conv2D, Dense, Dropout, Flatten,
                           GlobalAvgPool2D, MaxPool1D, ReLU, Tanh)


def data(kind, n=90, seed=1):
    rng = np.random.default_rng(seed)
    shape = {"mlp": (n, 6), "cnn": (n, 2, 12), "lstm": (n, 5, 3), "bn": (n, 2, 6, 6)}[kind]
    X = rng.normal(size=shape)
    y = rng.integers(0, 4, n)
    return X, y


def model(kind, backend="cython"):
    layers = {
        "mlp": lambda: [Dense(6, 16), Tanh(), Dropout(0.3), Dense(16, 8), ReLU(), Dense(8, 4)],
        "cnn": lambda: [Conv1D(2, 4, 3), ReLU(), MaxPool1D(2), Flatten(), Dense(20, 4)],
        "lstm": lambda: [LSTM(3, 6), Dense(6, 4)],
        "bn": lambda: [Conv2D(2, 3, 3), BatchNorm2D(3), ReLU(), GlobalAvgPool2D(), Dense(3, 4)],
    }[kind]()
    return fnn.Sequential(*layers, backend=backend, dtype="float64", seed=3)


def train(kind, batch_size, epochs=3, distributed=False, sync_batchnorm=False, n=90, **fit):
    """(final flat weights, history dict, trainer) of a small seeded fit."""
    X, y = data(kind, n)
    m = model(kind)
    t = fnn.Trainer(m, "cross_entropy", fnn.optim.Adam(lr=0.01), metrics=["accuracy", "f1"],
                    distributed=distributed, sync_batchnorm=sync_batchnorm)
    h = t.fit(X, y, epochs=epochs, batch_size=batch_size, validation_split=0.2, verbose=0, **fit)
    return np.asarray(m._flat_data).copy(), h.history, t


def loader_fit(batch_size, distributed=False):
    """A fit on a shuffled fastnn DataLoader (each rank iterates its part of every global
    batch), then evaluate: (weights, history + the evaluate logs as 'eval_*')."""
    X, y = data("mlp", 75)
    m = model("mlp")
    t = fnn.Trainer(m, "cross_entropy", fnn.optim.Adam(lr=0.01), metrics=["accuracy", "f1"],
                    distributed=distributed)
    loader = fnn.data.DataLoader(X[:60], y[:60], batch_size=batch_size, shuffle=True, seed=4)
    hist = dict(t.fit(loader, epochs=3, verbose=0).history)
    hist.update({"eval_" + k: [v] for k, v in t.evaluate(X[60:], y[60:], batch_size=4).items()})
    return np.asarray(m._flat_data).copy(), hist


def main(case, out):
    rank, size = fnn.distributed.rank(), fnn.distributed.size()
    results = {}
    if case == "equal":   # each model at batch 8 per rank, rank 0 writes weights and history
        for kind in ("mlp", "cnn", "lstm"):
            w, hist, _ = train(kind, 8, distributed=True)
            results[kind] = (w, hist)
        # 65 training rows: the last global batch has 1 row, so rank 1 has none (Dropout catches up)
        results["mlp_tail"] = train("mlp", 8, distributed=True, n=82)[:2]
        results["mlp_loader"] = loader_fit(8, distributed=True)
        w, hist, _ = train("bn", 8, distributed=True, sync_batchnorm=True)
        results["bn_sync"] = (w, hist)
        w, hist, t = train("bn", 8, distributed=True)   # per-rank statistics: runs, differs
        results["bn_local"] = (w, hist)
    elif case == "checkpoint":   # 2 epochs on N ranks, then a checkpoint
        X, y = data("mlp")
        m = model("mlp")
        t = fnn.Trainer(m, "cross_entropy", fnn.optim.Adam(lr=0.01), distributed=True)
        t.fit(X, y, epochs=2, batch_size=8, verbose=0, callbacks=[fnn.callbacks.CSVLogger(out + ".log.csv")])
        t.save_checkpoint(out + ".ckpt.safetensors")
        results["mlp"] = (np.asarray(m._flat_data).copy(), t.history.history)
    elif case == "cuda":   # the host-staged allreduce (run with NUMBA_ENABLE_CUDASIM=1), tiny
        X, y = data("mlp", n=40)
        for backend, batch, dist in (("cuda", 8, True), ("numpy", 8 * size, False)):
            m = model("mlp", backend)
            t = fnn.Trainer(m, "cross_entropy", fnn.optim.Adam(lr=0.01), distributed=dist)
            t.fit(X, y, epochs=2, batch_size=batch, verbose=0)
            results[backend] = (np.asarray(m._flat_data).copy(), t.history.history)
    elif case == "nan":   # a diverging run: the guard stops every rank alike, no abort
        X, y = data("mlp")
        X[:, 0] *= 1e6
        t = fnn.Trainer(model("mlp"), "mse", fnn.optim.SGD(lr=1e3), distributed=True)
        try:
            t.fit(X, np.eye(4)[y], epochs=5, batch_size=8, verbose=0)
        except FloatingPointError as exc:   # each rank's own file: two ranks' stderr can interleave mid-line
            with open(f"{out}.rank{rank}", "w") as f:
                f.write(f"{type(exc).__name__}: {exc}")
            raise
    elif case == "fail":   # rank 1 raises in its 3rd batch of epoch 1; rank 0 would wait forever
        class Boom(fnn.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if rank == 1 and self.trainer.epoch == 1 and batch == 2:
                    raise RuntimeError("boom on rank 1")
        X, y = data("mlp", n=4000)
        t = fnn.Trainer(model("mlp"), "cross_entropy", fnn.optim.SGD(lr=0.01), distributed=True)
        t.fit(X, y, epochs=50, batch_size=8, verbose=0, callbacks=[Boom()])
    elif case == "mismatch":   # rank 1 builds another model: caught before any step
        m = model("mlp") if rank == 0 else model("cnn")
        fnn.Trainer(m, "cross_entropy", distributed=True)
    elif case == "uneven":   # rank 1 has more rows, so more batches: caught at fit start
        X, y = data("mlp", n=90 + 40 * rank)
        t = fnn.Trainer(model("mlp"), "cross_entropy", distributed=True)
        t.fit(X, y, epochs=1, batch_size=8, verbose=0)
    else:
        raise SystemExit(f"unknown case {case!r}")
    if rank == 0:
        arrays = {f"{k}.w": v[0] for k, v in results.items()}
        meta = {k: v[1] for k, v in results.items()}
        np.savez(out, meta=json.dumps({"size": size, "history": meta}), **arrays)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
