"""fastnn.callbacks: EarlyStopping, ModelCheckpoint, CSVLogger, ReduceLROnPlateau, TerminateOnNaN.

Most tests drive a callback's hooks with a small fake trainer (a real Sequential and a real SGD)
and scripted logs, so they do not depend on the trainer loop; a few fit with the Trainer."""
import csv
import math
import warnings

import numpy as np
import pytest

import fastnn as fnn
from fastnn import callbacks as C

L = fnn.layers


def _model(seed=0):
    return fnn.Sequential(L.Dense(3, 4), L.BatchNorm1D(4), L.ReLU(), L.Dense(4, 2),
                          backend="numpy", dtype="float64", seed=seed)


class FakeTrainer:
    """What a callback may read of a Trainer (the contract in the common brief)."""

    def __init__(self, model=None, optimizer=None):
        self.model = model if model is not None else _model()
        self.optimizer = optimizer if optimizer is not None else fnn.optim.SGD(lr=0.1)
        self.stop_training = False
        self.epoch = 0


def _perturb(model, epoch):
    """Give the model (parameters and buffers) values that depend on the epoch."""
    state = model.state_dict()
    model.load_state_dict({k: v + (epoch + 1) * 0.01 for k, v in state.items()})


def _drive(cb, trainer, logs_per_epoch, batches=0):
    """Run the hooks as fit does, epoch by epoch, until the logs end or stop_training;
    returns the epochs run."""
    cb.set_trainer(trainer)
    cb.on_train_begin({})
    ran = []
    for epoch, logs in enumerate(logs_per_epoch):
        cb.on_epoch_begin(epoch, {})
        for b in range(batches):
            cb.on_train_batch_begin(b, {})
            cb.on_train_batch_end(b, {"loss": 1.0, "size": 4})
        _perturb(trainer.model, epoch)
        cb.on_epoch_end(epoch, dict(logs))
        ran.append(epoch)
        trainer.epoch = epoch + 1
        if trainer.stop_training:
            break
    cb.on_train_end({})
    return ran


def _losses(*values):
    return [{"loss": v, "val_loss": v} for v in values]


# ------------------------------------------------------------------ EarlyStopping


def test_early_stopping_patience():
    t = FakeTrainer()
    es = C.EarlyStopping(patience=2)
    assert _drive(es, t, _losses(1.0, 0.9, 0.95, 0.96, 0.97, 0.5)) == [0, 1, 2, 3]
    assert t.stop_training and es.stopped_epoch == 3 and es.best == 0.9 and es.best_epoch == 1


def test_early_stopping_patience_zero_stops_at_the_first_worse_epoch():
    t = FakeTrainer()
    assert _drive(C.EarlyStopping(patience=0), t, _losses(1.0, 0.9, 0.9, 0.1)) == [0, 1, 2]


def test_early_stopping_min_delta_and_modes():
    # improvements smaller than min_delta do not count
    es = C.EarlyStopping(patience=1, min_delta=0.05)
    assert _drive(es, FakeTrainer(), _losses(1.0, 0.97, 0.96, 0.5)) == [0, 1]
    # auto: accuracy is maximized
    es = C.EarlyStopping(monitor="val_accuracy", patience=1)
    assert es.mode == "max"
    logs = [{"val_accuracy": a} for a in (0.5, 0.6, 0.55, 0.9)]
    assert _drive(es, FakeTrainer(), logs) == [0, 1, 2] and es.best == 0.6
    assert C.EarlyStopping(monitor="val_f1").mode == "max"
    assert C.EarlyStopping(monitor="output_1_accuracy").mode == "max"
    assert C.EarlyStopping(monitor="val_mae").mode == "min"
    # explicit mode wins over the name
    es = C.EarlyStopping(monitor="val_loss", mode="max", patience=0)
    assert _drive(es, FakeTrainer(), _losses(1.0, 2.0, 1.5)) == [0, 1, 2]


def test_early_stopping_baseline_keeps_patience_running():
    logs = _losses(1.0, 0.9, 0.95, 0.96)
    # without baseline: e2 and e3 do not improve; patience 2 runs out at e3
    assert _drive(C.EarlyStopping(patience=2), FakeTrainer(), logs) == [0, 1, 2, 3]
    # a baseline never beaten: improvements do not reset the count, so it stops at e2
    es = C.EarlyStopping(patience=2, baseline=0.5)
    assert _drive(es, FakeTrainer(), logs) == [0, 1, 2]
    assert es.stopped_epoch == 2


def test_early_stopping_start_from_epoch_and_nan():
    es = C.EarlyStopping(patience=0, start_from_epoch=3)
    assert _drive(es, FakeTrainer(), _losses(1.0, 2.0, 3.0, 4.0, 5.0, 6.0)) == [0, 1, 2, 3, 4]
    assert es.best == 4.0 and es.best_epoch == 3
    # NaN is never an improvement (and never becomes the best)
    es = C.EarlyStopping(patience=1)
    assert _drive(es, FakeTrainer(), _losses(float("nan"), 1.0, float("nan"), 0.5)) == [0, 1, 2]
    assert es.best == 1.0 and es.stopped_epoch == 2


@pytest.mark.parametrize("stops", [True, False], ids=["patience-ran-out", "patience-never-ran-out"])
def test_early_stopping_restores_exactly_the_best_epochs_weights(stops):
    t = FakeTrainer()
    seen = {}

    class Snapshot(C.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen[epoch] = self.model.state_dict()

    es = C.EarlyStopping(patience=2 if stops else 10, restore_best_weights=True)
    values = (1.0, 0.7, 0.8, 0.9, 0.95) if stops else (1.0, 0.7, 0.8)
    es.set_trainer(t)
    snap = Snapshot()
    snap.set_trainer(t)
    es.on_train_begin({})
    for epoch, logs in enumerate(_losses(*values)):
        _perturb(t.model, epoch)
        snap.on_epoch_end(epoch, logs)
        es.on_epoch_end(epoch, logs)
        if t.stop_training:
            break
    assert t.stop_training is stops
    before_end = t.model.state_dict()
    assert not np.array_equal(before_end["0.weight"], seen[1]["0.weight"])
    es.on_train_end({})
    restored = t.model.state_dict()
    assert es.best_epoch == 1
    assert set(restored) == set(seen[1])
    for key, value in seen[1].items():     # parameters and BatchNorm's buffers
        np.testing.assert_array_equal(restored[key], value, err_msg=key)


def test_early_stopping_warns_once_when_the_monitor_is_missing():
    es = C.EarlyStopping(monitor="val_loss")
    with pytest.warns(RuntimeWarning, match=r"val_loss.*available: accuracy, loss") as record:
        _drive(es, FakeTrainer(), [{"loss": 1.0, "accuracy": 0.5}] * 3)
    assert len([w for w in record if "val_loss" in str(w.message)]) == 1
    assert es.stopped_epoch == 0


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(monitor=3), TypeError, "monitor"),
    (dict(patience=-1), ValueError, "patience"),
    (dict(patience=1.5), ValueError, "patience"),
    (dict(min_delta=float("nan")), ValueError, "min_delta"),
    (dict(mode="up"), ValueError, "mode"),
    (dict(restore_best_weights="yes"), TypeError, "restore_best_weights"),
    (dict(baseline="low"), ValueError, "baseline"),
    (dict(start_from_epoch=-2), ValueError, "start_from_epoch"),
])
def test_early_stopping_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        C.EarlyStopping(**kwargs)


def test_a_callback_without_trainer_says_so():
    es = C.EarlyStopping(patience=0, restore_best_weights=True)
    with pytest.raises(RuntimeError, match="not attached"):
        es.on_epoch_end(0, {"val_loss": 1.0})


# ---------------------------------------------------------------- ModelCheckpoint


def _assert_same_state(path, state):
    loaded = fnn.load(path).state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        np.testing.assert_array_equal(loaded[key], value, err_msg=key)


def test_checkpoint_every_epoch_with_epoch_in_the_name(tmp_path):
    t = FakeTrainer()
    states = {}

    class Snapshot(C.Callback):
        def on_epoch_end(self, epoch, logs=None):
            states[epoch] = self.model.state_dict()

    ck = C.ModelCheckpoint(str(tmp_path / "run" / "m-{epoch:02d}-{loss:.2f}.safetensors"))
    ck.set_trainer(t)
    snap = Snapshot()
    snap.set_trainer(t)
    ck.on_train_begin({})
    for epoch, logs in enumerate(_losses(1.0, 0.5, 0.25)):
        _perturb(t.model, epoch)
        snap.on_epoch_end(epoch, logs)
        ck.on_epoch_end(epoch, logs)
    ck.on_train_end({})
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == ["m-01-1.00.safetensors", "m-02-0.50.safetensors", "m-03-0.25.safetensors"]
    for epoch in range(3):
        _assert_same_state(tmp_path / "run" / names[epoch], states[epoch])


def test_checkpoint_save_best_only(tmp_path):
    t = FakeTrainer()
    ck = C.ModelCheckpoint(tmp_path / "best-{epoch}.npz", save_best_only=True)
    _drive(ck, t, _losses(1.0, 0.8, 0.9, 0.7, 0.75))
    assert [p.rsplit("/", 1)[1] for p in ck.saved] == ["best-1.npz", "best-2.npz", "best-4.npz"]
    assert ck.best == 0.7
    # one file, overwritten: it holds the best epoch's weights
    path = tmp_path / "best.safetensors"
    ck = C.ModelCheckpoint(path, monitor="val_accuracy", save_best_only=True)
    t = FakeTrainer()
    states = []

    class Snapshot(C.Callback):
        def on_epoch_end(self, epoch, logs=None):
            states.append(self.model.state_dict())

    ck.set_trainer(t)
    snap = Snapshot()
    snap.set_trainer(t)
    for epoch, acc in enumerate((0.5, 0.9, 0.7)):
        _perturb(t.model, epoch)
        snap.on_epoch_end(epoch, {"val_accuracy": acc})
        ck.on_epoch_end(epoch, {"val_accuracy": acc})
    _assert_same_state(path, states[1])


def test_checkpoint_every_n_batches(tmp_path):
    ck = C.ModelCheckpoint(tmp_path / "e{epoch}-b{batch}.npz", save_freq=3)
    _drive(ck, FakeTrainer(), _losses(1.0, 0.9), batches=4)
    # batches seen: 1..8 over two epochs of 4; a save every 3rd
    assert [p.rsplit("/", 1)[1] for p in ck.saved] == ["e1-b3.npz", "e2-b2.npz"]


def test_checkpoint_missing_monitor_warns_and_skips(tmp_path):
    ck = C.ModelCheckpoint(tmp_path / "m.npz", monitor="val_loss", save_best_only=True)
    with pytest.warns(RuntimeWarning, match="available: loss"):
        _drive(ck, FakeTrainer(), [{"loss": 1.0}] * 2)
    assert ck.saved == [] and not (tmp_path / "m.npz").exists()


def test_checkpoint_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="extension"):
        C.ModelCheckpoint(tmp_path / "m.pkl")
    with pytest.raises(ValueError, match="format template"):
        C.ModelCheckpoint(str(tmp_path / "m-{epoch.safetensors"))
    with pytest.raises(ValueError, match="save_freq"):
        C.ModelCheckpoint(tmp_path / "m.npz", save_freq=0)
    with pytest.raises(ValueError, match="save_freq"):
        C.ModelCheckpoint(tmp_path / "m.npz", save_freq="batch")
    with pytest.raises(TypeError, match="path"):
        C.ModelCheckpoint(3)
    with pytest.raises(ValueError, match="mode"):
        C.ModelCheckpoint(tmp_path / "m.npz", mode="best")
    ck = C.ModelCheckpoint(str(tmp_path / "m-{val_acc:.2f}.npz"))
    with pytest.raises(KeyError, match="val_acc"):
        _drive(ck, FakeTrainer(), _losses(1.0))


# --------------------------------------------------------------------- CSVLogger


def test_csv_logger_keras_format_and_flush(tmp_path):
    path = tmp_path / "log.csv"
    logger = C.CSVLogger(path)
    t = FakeTrainer()
    logger.set_trainer(t)
    logger.on_train_begin({})
    logger.on_epoch_end(0, {"loss": 0.5, "accuracy": 0.25, "time": 1.5})
    assert path.read_bytes() == b"epoch,accuracy,loss,time\r\n0,0.25,0.5,1.5\r\n"   # flushed
    logger.on_epoch_end(1, {"loss": 0.125, "time": 2.0})
    logger.on_train_end({})
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["epoch", "accuracy", "loss", "time"], ["0", "0.25", "0.5", "1.5"], ["1", "NA", "0.125", "2.0"]]


def test_csv_logger_separator_and_append(tmp_path):
    path = tmp_path / "log.tsv"
    for _ in range(2):
        logger = C.CSVLogger(path, separator="\t", append=True)
        _drive(logger, FakeTrainer(), _losses(1.0, 0.5))
    assert path.read_text().splitlines() == ["epoch\tloss\tval_loss", "0\t1.0\t1.0", "1\t0.5\t0.5",
                                             "0\t1.0\t1.0", "1\t0.5\t0.5"]
    _drive(C.CSVLogger(path), FakeTrainer(), _losses(2.0))     # append=False: a new file
    assert path.read_text().splitlines() == ["epoch,loss,val_loss", "0,2.0,2.0"]


def test_csv_logger_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="separator"):
        C.CSVLogger(tmp_path / "x.csv", separator=", ")
    with pytest.raises(TypeError, match="append"):
        C.CSVLogger(tmp_path / "x.csv", append=1)
    with pytest.raises(TypeError, match="path"):
        C.CSVLogger(None)


# ------------------------------------------------------------- ReduceLROnPlateau


def _lrs(opt):
    return [opt.lr] + [g["lr"] for g in opt.param_groups]


def test_reduce_lr_on_plateau_patience_cooldown_and_groups():
    model = _model()
    opt = fnn.optim.SGD(lr=0.1, param_groups=[{"params": model.layers[0], "lr": 0.04}])
    t = FakeTrainer(model, opt)
    cb = C.ReduceLROnPlateau(factor=0.5, patience=2, cooldown=2, min_lr=0.006)
    cb.set_trainer(t)
    cb.on_train_begin({})
    seen = []
    for epoch in range(10):
        cb.on_epoch_end(epoch, {"val_loss": 1.0})   # a plateau from the start
        seen.append(_lrs(opt))
    # reductions at epochs 2, 5 and 8 (patience 2, then 2 epochs of cooldown); each group's
    # lr is halved on its own and floored at min_lr
    want, lrs = [], [0.1, 0.04]
    for epoch in range(10):
        if epoch in (2, 5, 8):
            lrs = [max(lr * 0.5, 0.006) if lr > 0.006 else lr for lr in lrs]
        want.append(list(lrs))
    assert seen == want
    assert seen[-1] == [0.0125, 0.006]


def test_reduce_lr_on_plateau_resets_on_improvement_and_maximizes_accuracy():
    opt = fnn.optim.SGD(lr=1.0)
    t = FakeTrainer(optimizer=opt)
    cb = C.ReduceLROnPlateau(monitor="val_accuracy", factor=0.1, patience=1, min_delta=0.0)
    assert cb.mode == "max"
    lrs = []
    cb.set_trainer(t)
    cb.on_train_begin({})
    for epoch, acc in enumerate((0.5, 0.6, 0.7, 0.7, 0.8, 0.6)):
        cb.on_epoch_end(epoch, {"val_accuracy": acc})
        lrs.append(opt.lr)
    assert lrs == pytest.approx([1.0, 1.0, 1.0, 0.1, 0.1, 0.01])


def test_reduce_lr_on_plateau_min_delta():
    opt = fnn.optim.SGD(lr=1.0)
    cb = C.ReduceLROnPlateau(factor=0.5, patience=1, min_delta=0.1)
    _drive(cb, FakeTrainer(optimizer=opt), _losses(1.0, 0.95, 0.8))   # 0.95 is not 0.1 better
    assert opt.lr == 0.5


@pytest.mark.parametrize("kwargs,match", [(dict(factor=1.0), "factor"), (dict(factor=0.0), "factor"),
                                          (dict(factor=-0.5), "factor"), (dict(patience=-1), "patience"),
                                          (dict(min_lr=-1e-3), "min_lr"), (dict(cooldown=0.5), "cooldown"),
                                          (dict(mode="lower"), "mode")])
def test_reduce_lr_on_plateau_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        C.ReduceLROnPlateau(**kwargs)


def test_reduce_lr_on_plateau_warns_once_on_missing_monitor():
    cb = C.ReduceLROnPlateau(patience=0)
    opt = fnn.optim.SGD(lr=1.0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _drive(cb, FakeTrainer(optimizer=opt), [{"loss": 1.0}] * 4)
    assert len([w for w in record if "val_loss" in str(w.message)]) == 1
    assert opt.lr == 1.0


# ---------------------------------------------------------------- TerminateOnNaN


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_terminate_on_nan_stops_at_the_bad_batch(bad, capsys):
    t = FakeTrainer()
    cb = C.TerminateOnNaN()
    cb.set_trainer(t)
    for batch, loss in enumerate((0.5, 0.4, bad, 0.3)):
        cb.on_train_batch_end(batch, {"loss": loss, "size": 8})
        if t.stop_training:
            break
    assert t.stop_training and cb.stopped_batch == 2 and batch == 2
    assert "Batch 2: Invalid loss" in capsys.readouterr().out


def test_terminate_on_nan_ignores_finite_losses():
    t = FakeTrainer()
    cb = C.TerminateOnNaN()
    cb.set_trainer(t)
    for batch in range(3):
        cb.on_train_batch_end(batch, {"loss": 1e30, "size": 8})
    cb.on_train_batch_end(3, {})
    assert not t.stop_training and cb.stopped_batch is None


# ------------------------------------------------------------ with the Trainer


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64)
    return X, y


class _Record(C.Callback):
    def __init__(self):
        self.states, self.logs = [], []

    def on_epoch_end(self, epoch, logs=None):
        self.states.append(self.model.state_dict())
        self.logs.append(dict(logs))


def test_fit_early_stopping_restores_the_best_epoch(tmp_path):
    X, y = _data()
    Xv, yv = _data(32, seed=1)
    model = _model()
    trainer = fnn.Trainer(model, loss="cross_entropy", optimizer=fnn.optim.SGD(lr=2.0, momentum=0.9), seed=0)
    rec = _Record()
    es = C.EarlyStopping(patience=3, restore_best_weights=True)
    ck = C.ModelCheckpoint(tmp_path / "best.safetensors", save_best_only=True)
    log = C.CSVLogger(tmp_path / "log.csv")
    history = trainer.fit(X, y, epochs=12, batch_size=16, validation_data=(Xv, yv), progress=False,
                          callbacks=[rec, es, ck, log])
    val = history.history["val_loss"]
    best = int(np.argmin(val))
    assert es.best_epoch == best and es.best == val[best]
    # (seeded: it stops at epoch 4, the best being epoch 1, so restoring is not a no-op)
    assert es.stopped_epoch > 0 and len(val) == es.stopped_epoch + 1 < 12 and best < len(val) - 1
    for key, value in rec.states[best].items():
        np.testing.assert_array_equal(model.state_dict()[key], value, err_msg=key)
    _assert_same_state(tmp_path / "best.safetensors", rec.states[best])
    with open(tmp_path / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(len(val)))
    assert [float(r["val_loss"]) for r in rows] == val
    assert list(rows[0]) == ["epoch"] + sorted(rec.logs[0])


def test_fit_reduce_lr_on_plateau_moves_the_optimizer():
    X, y = _data()
    opt = fnn.optim.SGD(lr=0.5)
    trainer = fnn.Trainer(_model(), loss="cross_entropy", optimizer=opt, seed=0)
    rec = _Record()
    lrs = []

    class LR(C.Callback):
        def on_epoch_end(self, epoch, logs=None):
            lrs.append(self.trainer.optimizer.lr)

    cb = C.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=10.0)   # never improves enough
    trainer.fit(X, y, epochs=4, batch_size=16, progress=False, callbacks=[rec, cb, LR()])
    assert lrs == [0.5, 0.25, 0.125, 0.0625]


def test_fit_terminate_on_nan_stops_at_the_batch():
    X, y = _data()
    trainer = fnn.Trainer(_model(), loss="mse", optimizer=fnn.optim.SGD(lr=1e30), seed=0)
    cb = C.TerminateOnNaN()
    seen = []

    class Batches(C.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(logs["loss"])

    target = np.zeros((len(X), 2))
    with np.errstate(all="ignore"):
        history = trainer.fit(X, target, epochs=3, batch_size=8, progress=False, callbacks=[Batches(), cb],
                              nan_guard=False)
    assert cb.stopped_batch is not None and trainer.stop_training
    assert not math.isfinite(seen[-1]) and all(math.isfinite(v) for v in seen[:-1])
    assert len(history.epoch) <= 1


def test_fit_checkpoint_every_n_batches(tmp_path):
    X, y = _data()
    trainer = fnn.Trainer(_model(), loss="cross_entropy", optimizer=fnn.optim.SGD(lr=0.1), seed=0)
    ck = C.ModelCheckpoint(tmp_path / "e{epoch}-b{batch}.npz", save_freq=3)
    trainer.fit(X, y, epochs=2, batch_size=16, progress=False, callbacks=[ck])   # 4 batches an epoch
    assert [p.rsplit("/", 1)[1] for p in ck.saved] == ["e1-b3.npz", "e2-b2.npz"]
