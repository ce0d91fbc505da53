"""The Trainer's loop: resuming by (seed, epoch), loaders, generators and memmaps, the NaN guard,
history kept whatever ends fit, validation_split and verbosity."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import fastnn as fnn
from fastnn.layers import BatchNorm1D, Dense, Dropout, ReLU


@pytest.fixture(scope="module")
def digits():
    X, y, Xt, yt = fnn.data.load_digits(seed=0)
    return X[:400], y[:400], Xt[:100], yt[:100]


def small_model(backend="numpy", dropout=True, norm=False, seed=0, dtype="float32"):
    layers = [Dense(64, 32)] + ([BatchNorm1D(32)] if norm else []) + [ReLU()]
    layers += ([Dropout(0.2)] if dropout else []) + [Dense(32, 10)]
    return fnn.Sequential(*layers, backend=backend, seed=seed, dtype=dtype)


def flat(model):
    return model.backend.to_host(model._flat_data).copy()


@pytest.mark.parametrize("backend", ["numpy", "cython"])
def test_two_fits_continue_like_one(backend, digits):
    if backend not in fnn.backends():
        pytest.skip(f"{backend} not built")
    X, y, _, _ = digits
    runs = []
    for split in (False, True):
        trainer = fnn.Trainer(small_model(backend), optimizer=fnn.optim.SGD(lr=0.05, momentum=0.9), seed=3)
        if split:
            trainer.fit(X, y, epochs=2, batch_size=32, progress=False)
            assert trainer.epoch == 2
            trainer.fit(X, y, epochs=4, batch_size=32, initial_epoch=trainer.epoch, progress=False)
        else:
            trainer.fit(X, y, epochs=4, batch_size=32, progress=False)
        assert trainer.epoch == 4 and trainer.history.epoch == [0, 1, 2, 3]
        runs.append((flat(trainer.model), trainer.history.history["loss"]))
    assert np.array_equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]


def test_epoch_order_depends_on_seed_and_epoch_only():
    a = fnn.data.epoch_order(5, 3, 100)
    assert np.array_equal(a, fnn.data.epoch_order(5, 3, 100))
    assert not np.array_equal(a, fnn.data.epoch_order(5, 4, 100))
    assert not np.array_equal(a, fnn.data.epoch_order(6, 3, 100))
    assert sorted(a) == list(range(100))


def test_dataloader_fit_equals_array_fit(digits):
    X, y, _, _ = digits
    weights = []
    for use_loader in (False, True):
        trainer = fnn.Trainer(small_model(), optimizer=fnn.optim.SGD(lr=0.05), seed=7)
        if use_loader:
            loader = fnn.data.DataLoader(X, y, batch_size=32, shuffle=True, seed=7)
            trainer.fit(loader, epochs=3, progress=False)
        else:
            trainer.fit(X, y, epochs=3, batch_size=32, progress=False)
        weights.append(flat(trainer.model))
    assert np.array_equal(weights[0], weights[1])


def test_dataloader_batches_and_options(digits):
    X, y, _, _ = digits
    loader = fnn.data.DataLoader(X, y, batch_size=64, shuffle=True, seed=1, drop_last=True)
    assert len(loader) == 400 // 64
    loader.set_epoch(2)
    rows = np.concatenate([xb for xb, _ in loader])
    order = fnn.data.epoch_order(1, 2, 400)[:len(loader) * 64]
    assert np.array_equal(rows, X[order])
    prefetched = fnn.data.DataLoader(X, y, batch_size=64, shuffle=True, seed=1, prefetch=True)
    plain = fnn.data.DataLoader(X, y, batch_size=64, shuffle=True, seed=1)
    for (a, ya), (b, yb) in zip(prefetched, plain):
        assert np.array_equal(a, b) and np.array_equal(ya, yb)
    with pytest.raises(ValueError, match="different numbers of rows"):
        fnn.data.DataLoader(X, y[:10])
    with pytest.raises(ValueError, match="batch_size"):
        fnn.data.DataLoader(X, y, batch_size=0)


def test_generators_and_lists_of_batches(digits):
    X, y, _, _ = digits
    trainer = fnn.Trainer(small_model(), optimizer=fnn.optim.SGD(lr=0.05))

    def batches():
        for lo in range(0, 400, 50):
            yield X[lo:lo + 50], y[lo:lo + 50]

    trainer.fit(batches(), epochs=1, progress=False)
    with pytest.raises(ValueError, match="generator can be consumed once"):
        trainer.fit(batches(), epochs=2, progress=False)
    drawn = []

    def endless():
        while True:
            drawn.append(1)
            yield X[:50], y[:50]

    trainer.fit(endless(), epochs=2, steps_per_epoch=3, progress=False)
    assert len(drawn) == 6
    history = trainer.fit(list(batches()), epochs=2, progress=False)
    assert history.history["loss"][-1] < history.history["loss"][0]
    with pytest.raises(TypeError, match=r"batch 0 must be a tuple \(x, y\)"):
        trainer.fit(iter([X[:10]]), progress=False)
    with pytest.raises(ValueError, match="y must be None"):
        trainer.fit(fnn.data.DataLoader(X, y), y, progress=False)


def test_bad_batch_from_a_loader_names_it(digits):
    X, y, _, _ = digits
    bad = X[:50].copy()
    bad[3, 2] = np.nan
    trainer = fnn.Trainer(small_model(), optimizer=fnn.optim.SGD(lr=0.05))
    with pytest.raises(ValueError, match="batch 1.*NaN"):
        trainer.fit([(X[:50], y[:50]), (bad, y[:50])], progress=False)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        trainer.fit([(X[:50], y[:50] + 10)], progress=False)


def test_memmap_is_read_batch_by_batch(tmp_path, digits):
    X, y, _, _ = digits
    path = tmp_path / "x.f64"
    mm = np.memmap(path, dtype=np.float64, mode="w+", shape=X.shape)
    mm[:] = X
    mm.flush()
    mm = np.memmap(path, dtype=np.float64, mode="r", shape=X.shape)
    weights = []
    for data in (X.astype(np.float64), mm):
        trainer = fnn.Trainer(small_model(dropout=False), optimizer=fnn.optim.SGD(lr=0.05))
        trainer.fit(data, y, epochs=2, batch_size=32, shuffle=False, progress=False)
        weights.append(flat(trainer.model))
    assert np.array_equal(weights[0], weights[1])
    trainer = fnn.Trainer(small_model(dropout=False), optimizer=fnn.optim.SGD(lr=0.05))
    history = trainer.fit(mm, y, epochs=3, batch_size=32, progress=False, validation_split=0.2)
    assert history.history["loss"][-1] < history.history["loss"][0]
    bad = np.memmap(path, dtype=np.float64, mode="r+", shape=X.shape)
    bad[250, 1] = np.inf
    bad.flush()
    with pytest.raises(ValueError, match="rows .*NaN or inf"):
        trainer.fit(np.memmap(path, dtype=np.float64, mode="r", shape=X.shape), y, shuffle=False,
                    progress=False)


MEMMAP_SCRIPT = r"""
import sys, numpy as np, fastnn as fnn
path, rows = sys.argv[1], int(sys.argv[2])
X = np.memmap(path, dtype=np.float64, mode="r", shape=(rows, 64))
y = np.arange(rows) % 10
model = fnn.Sequential(fnn.layers.Dense(64, 16), fnn.layers.ReLU(), fnn.layers.Dense(16, 10),
                       backend="numpy", seed=0)
trainer = fnn.Trainer(model, optimizer=fnn.optim.SGD(lr=0.01))
trainer.fit(X[:1000], y[:1000], epochs=1, batch_size=500, progress=False)   # imports, first calls
def status(key):
    return int(open("/proc/self/status").read().split(key + ":")[1].split()[0]) * 1024
base = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")   # resets VmHWM, the peak RSS, to the current RSS
trainer.fit(X, y, epochs=1, batch_size=2000, progress=False)
print(base, status("VmHWM"), X.nbytes)
"""


def test_memmap_fit_keeps_memory_low(tmp_path):
    rows = 250_000                       # 128 MB of float64
    path = tmp_path / "big.f64"
    mm = np.memmap(path, dtype=np.float64, mode="w+", shape=(rows, 64))
    for lo in range(0, rows, 50_000):
        mm[lo:lo + 50_000] = np.random.default_rng(lo).random((min(50_000, rows - lo), 64))
    mm.flush()
    del mm
    out = subprocess.run([sys.executable, "-c", MEMMAP_SCRIPT, str(path), str(rows)], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    base, peak, size = map(int, out.stdout.split())
    # a whole copy would add size (float64) or size / 2 (float32); batches add a few MB
    assert peak - base < size / 4, (base, peak, size)


def regression(n=256, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 64)).astype(np.float32)
    return X, (X[:, :1] * 3.0 + 1.0).astype(np.float32)


class Recorder(fnn.Callback):
    """The weights (and buffers) after every batch."""

    def __init__(self):
        self.after = []

    def on_train_batch_end(self, batch, logs=None):
        model = self.trainer.model
        self.after.append((flat(model), model._flat_buffers.copy(), logs["loss"]))


def _kept_batch(message):
    found = re.search(r"weights after batch (\d+)", message)
    return None if found is None else int(found.group(1))


@pytest.mark.parametrize("norm", [False, True])
def test_diverging_fit_stops_in_the_batch_with_the_last_finite_weights(norm):
    X, t = regression()
    model = fnn.Sequential(Dense(64, 16), *([BatchNorm1D(16)] if norm else []), ReLU(), Dense(16, 1),
                           backend="numpy", seed=0)
    trainer = fnn.Trainer(model, loss="mse", optimizer=fnn.optim.SGD(lr=1e3 if not norm else 3e4))
    rec = Recorder()
    with pytest.raises(FloatingPointError, match=r"epoch \d+, batch \d+") as info:
        trainer.fit(X, t, epochs=20, batch_size=16, progress=False, callbacks=[rec])
    kept = _kept_batch(str(info.value))
    assert kept is not None, str(info.value)
    assert np.isfinite(flat(model)).all() and np.isfinite(model._flat_buffers).all()
    epoch = int(re.search(r"epoch (\d+)", str(info.value)).group(1))
    assert trainer.epoch == epoch and len(trainer.history.epoch) == epoch   # completed epochs kept
    index = epoch * 16 + kept
    assert np.array_equal(flat(model), rec.after[index][0])
    assert np.array_equal(model._flat_buffers, rec.after[index][1])


def test_overflowing_step_is_replayed_back_to_the_last_finite_one():
    X, t = regression()
    model = fnn.Sequential(Dense(64, 16), ReLU(), Dropout(0.1), Dense(16, 1), backend="numpy", seed=0)
    trainer = fnn.Trainer(model, loss="mse", optimizer=fnn.optim.SGD(lr=1e-3, momentum=0.9))

    class Explode(Recorder):
        def on_train_batch_end(self, batch, logs=None):
            super().on_train_batch_end(batch, logs)
            if self.trainer.epoch == 1 and batch == 4:
                self.trainer.optimizer.lr = 1e38     # the next step overflows float32 weights

    rec = Explode()
    with pytest.raises(FloatingPointError, match="epoch 1, batch 6") as info:
        trainer.fit(X, t, epochs=3, batch_size=16, progress=False, callbacks=[rec])
    assert _kept_batch(str(info.value)) == 4
    assert np.array_equal(flat(model), rec.after[16 + 4][0])


def test_without_guard_a_nan_epoch_still_raises():
    X, t = regression()
    model = fnn.Sequential(Dense(64, 16), ReLU(), Dense(16, 1), backend="numpy", seed=0)
    trainer = fnn.Trainer(model, loss="mse", optimizer=fnn.optim.SGD(lr=1e3))
    with pytest.raises(FloatingPointError, match="epoch 0"):
        trainer.fit(X, t, epochs=3, batch_size=16, progress=False, nan_guard=False)


def test_history_survives_keyboard_interrupt(digits):
    X, y, _, _ = digits
    ended = []

    class CtrlC(fnn.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self.trainer.epoch == 2 and batch == 3:
                raise KeyboardInterrupt

        def on_train_end(self, logs=None):
            ended.append(logs)

    trainer = fnn.Trainer(small_model(), optimizer=fnn.optim.SGD(lr=0.05))
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(X, y, epochs=5, batch_size=32, progress=True, callbacks=[CtrlC()])
    assert trainer.epoch == 2 and trainer.history.epoch == [0, 1]
    assert ended == [{"interrupted": True}]


def test_callback_hooks_order_and_trainer(digits):
    X, y, _, _ = digits
    seen = []

    class Spy(fnn.Callback):
        def on_train_begin(self, logs=None):
            seen.append(("train_begin", self.trainer is trainer, self.model is trainer.model))

        def on_epoch_begin(self, epoch, logs=None):
            seen.append(("epoch_begin", epoch))

        def on_train_batch_begin(self, batch, logs=None):
            seen.append(("batch_begin", batch))

        def on_train_batch_end(self, batch, logs=None):
            seen.append(("batch_end", batch, logs["size"]))

        def on_epoch_end(self, epoch, logs=None):
            seen.append(("epoch_end", epoch, sorted(logs)))

        def on_train_end(self, logs=None):
            seen.append(("train_end", logs))

    trainer = fnn.Trainer(small_model(), optimizer=fnn.optim.SGD(lr=0.05))
    trainer.fit(X[:100], y[:100], epochs=2, batch_size=64, validation_split=0.2, progress=False,
                callbacks=[Spy()])
    assert seen[0] == ("train_begin", True, True)
    assert seen[1:6] == [("epoch_begin", 0), ("batch_begin", 0), ("batch_end", 0, 64),
                         ("batch_begin", 1), ("batch_end", 1, 16)]
    assert seen[6] == ("epoch_end", 0, ["accuracy", "loss", "time", "val_accuracy", "val_loss"])
    assert seen[-1] == ("train_end", {})


def test_validation_split_holds_out_the_last_rows(digits):
    X, y, _, _ = digits
    trainer = fnn.Trainer(small_model(dropout=False), optimizer=fnn.optim.SGD(lr=0.05))
    history = trainer.fit(X, y, epochs=1, batch_size=32, validation_split=0.25, progress=False)
    assert history.history["val_loss"][0] == pytest.approx(trainer.evaluate(X[300:], y[300:])["loss"])
    with pytest.raises(ValueError, match="validation_split"):
        trainer.fit(X, y, validation_split=1.0, progress=False)
    with pytest.raises(ValueError, match="not both"):
        trainer.fit(X, y, validation_split=0.1, validation_data=(X, y), progress=False)


def test_verbose_two_prints_a_line_per_epoch(digits, capsys):
    X, y, _, _ = digits
    trainer = fnn.Trainer(small_model(), optimizer=fnn.optim.SGD(lr=0.05))
    trainer.fit(X, y, epochs=3, batch_size=100, verbose=2)
    err = capsys.readouterr().err
    assert len(re.findall(r"^epoch \d/3 - loss: ", err, flags=re.M)) == 3
    with pytest.raises(ValueError, match="verbose"):
        trainer.fit(X, y, verbose=3)


def test_a_drawn_bar_shows_batches_and_the_running_loss(digits, capsys, monkeypatch):
    from fastnn import trainer as trainer_module
    from tqdm.auto import tqdm
    monkeypatch.setattr(trainer_module, "_progress", lambda e, n, b: tqdm(
        total=b, desc=f"epoch {e + 1}/{n}", unit="batch", leave=True, delay=0, mininterval=0))
    X, y, _, _ = digits
    trainer = fnn.Trainer(small_model(), optimizer=fnn.optim.SGD(lr=0.05))
    trainer.fit(X, y, epochs=1, batch_size=100)
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "4/4" in err and "loss=" in err and "accuracy=" in err


def test_distributed_in_one_process_is_the_plain_fit(digits):
    """Without a launcher a distributed trainer is rank 0 of 1: the same steps as without."""
    pytest.importorskip("mpi4py")
    X, y, _, _ = digits
    runs = []
    for distributed in (False, True):
        model = small_model()
        trainer = fnn.Trainer(model, optimizer=fnn.optim.SGD(lr=0.05), distributed=distributed)
        trainer.fit(X[:300], y[:300], epochs=2, batch_size=32, verbose=0)
        runs.append((np.asarray(model._flat_data).copy(), trainer.history.history["loss"]))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]


def test_a_short_epoch_prints_one_line_and_no_bar(digits, capsys):
    X, y, _, _ = digits
    trainer = fnn.Trainer(small_model(), optimizer=fnn.optim.SGD(lr=0.05))
    trainer.fit(X, y, epochs=2, batch_size=100, progress=True)
    err = capsys.readouterr().err
    assert len(re.findall(r"^epoch \d/2: 4 batches, loss=", err, flags=re.M)) == 2, err
    assert "%|" not in err, err


def test_summary_shows_shapes_from_the_first_dense_and_counts():
    model = small_model(dropout=True)
    text = model.summary(print_fn=None)
    assert "(batch, ..., 32)" in text and "(batch, ..., 10)" in text
    assert f"total parameters: {model.count_params():,}" in text
    assert model.count_params() == 64 * 32 + 32 + 32 * 10 + 10


@pytest.mark.parametrize("shape", [(64,), (1, 8, 8)])
def test_the_threaded_row_gather_trains_like_numpy_indexing(shape, monkeypatch):
    """Shuffled batches taken by cython's threaded gather (Trainer._row_gather) train to the
    same bits as batches taken by numpy's indexing, for flat and image-shaped inputs."""
    if "cython" not in fnn.backends():
        pytest.skip("cython not built")
    from fastnn.layers import Flatten
    rng = np.random.default_rng(0)
    X = rng.standard_normal((3000,) + shape).astype(np.float32)   # 3000 x 256 B rows: threaded batches
    y = rng.integers(0, 10, 3000)
    results = []
    for gather in (True, False):
        if not gather:
            monkeypatch.setattr(fnn.Trainer, "_row_gather", lambda self: None)
        model = fnn.Sequential(Flatten(), Dense(64, 10), backend="cython", seed=0)
        trainer = fnn.Trainer(model, optimizer=fnn.optim.SGD(lr=0.05), seed=1)
        assert (trainer._row_gather() is not None) == gather
        trainer.fit(X, y, epochs=2, batch_size=600, progress=False)
        results.append(flat(model))
    np.testing.assert_array_equal(results[0], results[1])


def test_cython_embedding_gathers_large_batches_on_any_team():
    if "cython" not in fnn.backends():
        pytest.skip("cython not built")
    be = fnn.get_backend("cython")
    rng = np.random.default_rng(3)
    for dtype in (np.float32, np.float64):
        w = rng.standard_normal((5000, 300)).astype(dtype)
        idx = rng.integers(0, 5000, 700)           # 700 rows of 1.2-2.4 KB: above the threading threshold
        old = be.module.get_num_threads()
        try:
            for threads in (1, 2, 3):
                be.module.set_num_threads(threads)
                np.testing.assert_array_equal(be.embedding(w, idx), w[idx])
        finally:
            be.module.set_num_threads(old)


def test_cython_grad_norm_of_a_large_buffer_has_one_value_on_any_team():
    if "cython" not in fnn.backends():
        pytest.skip("cython not built")
    be = fnn.get_backend("cython")
    g = np.random.default_rng(4).standard_normal(300_001).astype(np.float32)   # 19 blocks, on a team
    old = be.module.get_num_threads()
    try:
        values = set()
        for threads in (1, 2, 3):
            be.module.set_num_threads(threads)
            values.add(be.raw.grad_norm(g, 2.0))
    finally:
        be.module.set_num_threads(old)
    assert len(values) == 1
    np.testing.assert_allclose(values.pop(), np.sqrt((g.astype(np.float64) ** 2).sum()), rtol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "cython"])
def test_the_guard_counts_a_float32_gradient_whose_square_overflows(backend):
    if backend not in fnn.backends():
        pytest.skip(f"{backend} not built")
    from fastnn.nan_guard import NanGuard
    model = small_model(backend, dropout=False)
    guard = NanGuard(fnn.Trainer(model, optimizer=fnn.optim.SGD(lr=0.1)))
    g = np.zeros(model.count_params(), np.float32)
    g[5] = 3.0
    assert guard.grad_norm2(g) == pytest.approx(9.0)
    g[7] = 2e19                                  # finite, but its square is beyond float32
    assert guard.grad_norm2(g) == np.inf
    g[7] = np.nan
    assert np.isnan(guard.grad_norm2(g))
