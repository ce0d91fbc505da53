"""Checkpoints and resume: optimizer state_dict round trips (bit for bit, every optimizer,
float32/float64, param groups; the buffers against torch's), save_trainer / load_trainer
(a new process continues a run exactly), BackupAndRestore, atomic saves that survive
SIGKILL, and tampered checkpoints that fail cleanly without running anything."""
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import fastnn as fnn
from fastnn import io
from fastnn.checkpoint import BackupAndRestore, load_trainer, restore_trainer, save_trainer
from fastnn.layers import BatchNorm1D, Dense, Dropout, ReLU, Tanh

CPU = [b for b in fnn.backends() if b in ("numpy", "numba", "cython")]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

OPTIMIZERS = {
    "sgd": lambda m: fnn.optim.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01,
                                   param_groups=[{"params": m.layers[2], "lr": 0.01}]),
    "adam": lambda m: fnn.optim.Adam(lr=0.01, param_groups=[{"params": "0", "betas": (0.8, 0.9)}]),
    "adamw": lambda m: fnn.optim.AdamW(lr=0.01, clip_norm=1.0),
    "rmsprop": lambda m: fnn.optim.RMSprop(lr=0.01, momentum=0.9, centered=True,
                                           param_groups=[{"params": ["2.weight"], "alpha": 0.9}]),
    "adagrad": lambda m: fnn.optim.Adagrad(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1),
}


def small_model(backend, dtype, seed=0):
    return fnn.Sequential(Dense(4, 6), Tanh(), Dense(6, 3), backend=backend, dtype=dtype, seed=seed)


def feed(model, step):
    """The same pseudo-gradients for step `step` in every run."""
    rng = np.random.default_rng(step)
    for p in model.parameters():
        p.grad[...] = model.backend.to_device(rng.standard_normal(p.data.shape))


def steps(model, opt, start, stop):
    for s in range(start, stop):
        feed(model, s)
        opt.step(model.parameters())


def same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------- optimizer state
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("backend", CPU)
def test_optimizer_state_round_trip_is_bit_exact(backend, name, dtype):
    straight = small_model(backend, dtype)
    steps(straight, OPTIMIZERS[name](straight), 0, 6)

    first = small_model(backend, dtype)
    opt = OPTIMIZERS[name](first)
    steps(first, opt, 0, 3)
    sd = opt.state_dict()
    json.dumps({k: v for k, v in sd.items() if k != "state"})   # everything but the arrays is JSON
    assert all(isinstance(v, np.ndarray) for v in sd["state"].values())
    assert {k.rsplit(".", 1)[0] for k in sd["state"]} == {p.name for p in first.parameters()}
    # A model rebuilt from its weights and a fresh optimizer of defaults take the saved state.
    rebuilt = small_model(backend, dtype, seed=7)
    rebuilt.load_state_dict(first.state_dict())
    fresh = type(opt)()
    fresh.load_state_dict(sd)
    assert fresh.iterations == 3 and fresh.state_dict()["param_groups"] == sd["param_groups"]
    steps(rebuilt, fresh, 3, 6)
    assert same_state(rebuilt, straight)


@pytest.mark.parametrize("backend", CPU)
def test_state_dict_of_a_loaded_unstepped_optimizer_and_existing_groups(backend):
    a = small_model(backend, "float64")
    opt = OPTIMIZERS["sgd"](a)
    steps(a, opt, 0, 2)
    sd = opt.state_dict()
    b = small_model(backend, "float64")
    b.load_state_dict(a.state_dict())
    again = OPTIMIZERS["sgd"](b)     # its own groups (a Layer object) keep their members
    again.param_groups[0]["lr"] = 0.5
    again.load_state_dict(sd)
    assert again.param_groups[0]["lr"] == 0.01 and again.param_groups[0]["params"] is b.layers[2]
    # before its first step, state_dict gives back what was loaded
    resaved = again.state_dict()
    assert resaved["state"].keys() == sd["state"].keys()
    assert all(np.array_equal(resaved["state"][k], sd["state"][k]) for k in sd["state"])
    steps(b, again, 2, 4)
    steps(a, opt, 2, 4)
    assert same_state(a, b)


def test_optimizer_buffers_match_torch():
    torch = pytest.importorskip("torch")
    cases = {
        "sgd": (fnn.optim.SGD(lr=0.1, momentum=0.9), lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
        "adam": (fnn.optim.Adam(lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
        "adamw": (fnn.optim.AdamW(lr=0.01), lambda p: torch.optim.AdamW(p, lr=0.01)),
        "rmsprop": (fnn.optim.RMSprop(lr=0.01, momentum=0.9, centered=True),
                    lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.9, centered=True)),
        "adagrad": (fnn.optim.Adagrad(lr=0.1), lambda p: torch.optim.Adagrad(p, lr=0.1)),
    }
    for name, (opt, make_topt) in cases.items():
        model = small_model("numpy", "float64")
        tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in model.parameters()]
        topt = make_topt(tparams)
        for s in range(3):
            feed(model, s)
            for tp, p in zip(tparams, model.parameters()):
                tp.grad = torch.tensor(p.grad.copy())
            opt.step(model.parameters())
            topt.step()
        state = opt.state_dict()["state"]
        tstate = topt.state_dict()["state"]
        for i, p in enumerate(model.parameters()):
            for buf in type(opt).STATE_NAMES:
                if buf not in tstate[i]:
                    continue     # torch keeps no buffer it does not use
                want = tstate[i][buf].numpy()
                got = state[f"{p.name}.{buf}"]
                assert np.max(np.abs(got - want)) <= 1e-9 * (1 + np.max(np.abs(want))), (name, p.name, buf)


def test_optimizer_load_state_dict_rejects_bad_input():
    model = small_model("numpy", "float32")
    opt = fnn.optim.Adam()
    steps(model, opt, 0, 1)
    sd = opt.state_dict()

    def changed(**kw):
        out = dict(sd, state=dict(sd["state"]), hyper=dict(sd["hyper"]))
        for k, v in kw.items():
            if k.startswith("hyper_"):
                out["hyper"][k[6:]] = v
            else:
                out[k] = v
        return out

    with pytest.raises(ValueError, match="SGD"):
        fnn.optim.SGD().load_state_dict(sd)
    with pytest.raises(TypeError, match="dict"):
        fnn.optim.Adam().load_state_dict([1, 2])
    with pytest.raises(ValueError, match="iterations"):
        fnn.optim.Adam().load_state_dict(changed(iterations=-1))
    with pytest.raises(ValueError, match="lr"):
        fnn.optim.Adam().load_state_dict(changed(hyper_lr=-1.0))
    with pytest.raises(ValueError, match="exactly"):
        fnn.optim.Adam().load_state_dict(changed(hyper_momentum=0.9))
    with pytest.raises(ValueError, match="unexpected state"):
        fnn.optim.Adam().load_state_dict(changed(state={"0.weight.momentum_buffer": np.zeros((6, 4))}))
    with pytest.raises(TypeError, match="float numpy array"):
        fnn.optim.Adam().load_state_dict(changed(state={"0.weight.exp_avg": [[0.0]]}))
    nan = dict(sd["state"], **{"0.bias.exp_avg": np.full(6, np.nan, np.float32)})
    with pytest.raises(ValueError, match="NaN"):
        fnn.optim.Adam().load_state_dict(changed(state=nan))
    with pytest.raises(TypeError, match="param_groups"):
        fnn.optim.Adam().load_state_dict(changed(param_groups=[{"params": [3]}]))
    grouped = fnn.optim.Adam(param_groups=[{"params": model.layers[0]}]).state_dict()
    with pytest.raises(ValueError, match="param groups"):      # sd has no group, this one has
        fnn.optim.Adam(param_groups=[{"params": "0"}]).load_state_dict(sd)
    with pytest.raises(ValueError, match=r"holds \['2'\]"):
        fnn.optim.Adam(param_groups=[{"params": "2"}]).load_state_dict(grouped)
    # shapes are only known at the step: a state for another model fails there, clearly
    wrong = dict(sd["state"], **{"0.weight.exp_avg": np.zeros((3, 3), np.float32)})
    bad = fnn.optim.Adam()
    bad.load_state_dict(changed(state=wrong))
    with pytest.raises(ValueError, match="shape"):
        bad.step(model.parameters())
    partial = fnn.optim.Adam()
    partial.load_state_dict(changed(state={"0.weight.exp_avg": sd["state"]["0.weight.exp_avg"]}))
    with pytest.raises(ValueError, match="missing"):
        partial.step(model.parameters())


# ------------------------------------------------------------ checkpoints
def drop_model(backend="numba", seed=1):
    return fnn.Sequential(Dense(5, 8), BatchNorm1D(8), ReLU(), Dropout(0.3), Dense(8, 3),
                          backend=backend, seed=seed)


def data(n=48):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 5)).astype(np.float32), rng.integers(0, 3, n)


def explicit_epoch(trainer, X, y, epoch, batch_size=16):
    """One epoch the way the contract's fit runs it: the shuffle of epoch e from (seed, e)."""
    model = trainer.model
    order = np.random.default_rng([trainer.seed, epoch]).permutation(len(X))
    for lo in range(0, len(X), batch_size):
        idx = order[lo:lo + batch_size]
        out = model.forward(X[idx])
        _, grad = fnn.losses.cross_entropy(out, y[idx])
        model.zero_grad()
        model.backward(grad)
        trainer.optimizer.step(model.parameters())
    trainer.epoch = epoch + 1


def test_checkpoint_round_trip_restores_everything(tmp_path):
    X, y = data()
    model = drop_model()
    opt = fnn.optim.Adam(lr=0.01, param_groups=[{"params": model.layers[0], "lr": 0.02}])
    trainer = fnn.Trainer(model, loss="cross_entropy", optimizer=opt, seed=3)
    for e in range(2):
        explicit_epoch(trainer, X, y, e)
    trainer.history = fnn.History()
    trainer.history.append(0, {"loss": 1.5, "accuracy": float("nan")})
    trainer.history.append(1, {"loss": 1.25, "accuracy": 0.5})
    path = tmp_path / "ckpt.safetensors"
    save_trainer(trainer, path)
    back = load_trainer(path)
    assert back.epoch == 2 and back.seed == 3
    assert same_state(back.model, model) and back.model.backend.name == "numba"
    assert back.history.epoch == [0, 1] and back.history.history["loss"] == [1.5, 1.25]
    assert np.isnan(back.history.history["accuracy"][0])
    assert back.optimizer.iterations == opt.iterations and back.optimizer.param_groups[0]["lr"] == 0.02
    assert back.model.layers[3].calls == model.layers[3].calls == 6
    assert back.model.layers[3]._key == model.layers[3]._key
    # the next epoch is the same in both
    explicit_epoch(trainer, X, y, 2)
    explicit_epoch(back, X, y, 2)
    assert same_state(back.model, model)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    # another backend on request; npz checkpoints too
    assert load_trainer(path, backend="numpy").model.backend.name == "numpy"
    save_trainer(trainer, tmp_path / "ckpt.npz")
    assert same_state(load_trainer(tmp_path / "ckpt.npz").model, model)


def test_a_model_without_seed_resumes_its_dropout_masks(tmp_path):
    X, y = data()
    trainer = fnn.Trainer(drop_model("numpy", seed=None), optimizer=fnn.optim.SGD(lr=0.1), seed=0)
    explicit_epoch(trainer, X, y, 0)
    save_trainer(trainer, tmp_path / "c.safetensors")
    back = load_trainer(tmp_path / "c.safetensors")
    explicit_epoch(trainer, X, y, 1)
    explicit_epoch(back, X, y, 1)
    assert same_state(back.model, trainer.model)


def test_checkpoint_keeps_loss_options_weights_and_custom_losses(tmp_path):
    X, y = data()
    smooth = fnn.losses.CrossEntropy(label_smoothing=0.1, weight=[1.0, 2.0, 0.5])
    trainer = fnn.Trainer(drop_model("numpy"), loss=smooth, optimizer=fnn.optim.SGD(lr=0.1))
    path = tmp_path / "a.safetensors"
    if not hasattr(trainer, "loss_spec"):      # until the lead's Trainer records its arguments
        with pytest.warns(UserWarning, match="loss options"):
            save_trainer(trainer, path)
        trainer.loss_spec = {"loss": smooth, "loss_options": None, "loss_weights": None}
    save_trainer(trainer, path)
    assert load_trainer(path).evaluate(X, y)["loss"] == trainer.evaluate(X, y)["loss"]
    two = fnn.Trainer(drop_model("numpy"), loss="huber", loss_options={"delta": 0.5},
                      optimizer=fnn.optim.SGD(lr=0.1), loss_weights=[2.0])
    Y = np.eye(3, dtype=np.float32)[y]
    if not hasattr(two, "loss_spec"):
        two.loss_spec = {"loss": "huber", "loss_options": {"delta": 0.5}, "loss_weights": [2.0]}
    save_trainer(two, path)
    assert load_trainer(path).evaluate(X, Y)["loss"] == two.evaluate(X, Y)["loss"]

    def my_loss(out, target):
        return fnn.losses.mse(out, target)

    custom = fnn.Trainer(drop_model("numpy"), loss=my_loss, optimizer=fnn.optim.SGD(lr=0.1))
    save_trainer(custom, path)
    with pytest.raises(ValueError, match="my_loss.*loss="):
        load_trainer(path)
    back = load_trainer(path, loss=my_loss)
    assert back.evaluate(X, Y)["loss"] == custom.evaluate(X, Y)["loss"]


def test_checkpoint_of_a_model_file_and_vice_versa(tmp_path):
    model = drop_model("numpy")
    model.save(tmp_path / "m.safetensors")
    with pytest.raises(fnn.ModelFileError, match="model file, not a training checkpoint"):
        load_trainer(tmp_path / "m.safetensors")
    save_trainer(fnn.Trainer(model, optimizer=fnn.optim.Adam()), tmp_path / "c.safetensors")
    with pytest.raises(fnn.ModelFileError, match="checkpoint, not a model file"):
        fnn.load(tmp_path / "c.safetensors")
    with pytest.raises(fnn.ModelFileNotFoundError if hasattr(fnn, "ModelFileNotFoundError")
                       else fnn.ModelFileError):
        load_trainer(tmp_path / "missing.safetensors")


RESUME = """
import sys, numpy as np
sys.path.insert(0, {root!r})
import fastnn as fnn
from fastnn.checkpoint import load_trainer
rng = np.random.default_rng(0)
X = rng.standard_normal((48, 5)).astype(np.float32); y = rng.integers(0, 3, 48)
t = load_trainer({path!r})
t.fit(X, y, epochs=4, batch_size=16, initial_epoch=t.epoch, progress=False)
np.savez({out!r}, **t.model.state_dict())
print(t.epoch, len(t.history.epoch))
"""


def test_resume_in_a_new_process_is_bit_exact(tmp_path):
    X, y = data()

    def trainer():
        model = drop_model()
        return fnn.Trainer(model, loss="cross_entropy", optimizer=fnn.optim.Adam(lr=0.01), seed=5)

    straight = trainer()
    straight.fit(X, y, epochs=4, batch_size=16, progress=False)
    first = trainer()
    first.fit(X, y, epochs=2, batch_size=16, progress=False)
    assert first.epoch == 2
    path, out = str(tmp_path / "c.safetensors"), str(tmp_path / "w.npz")
    save_trainer(first, path)
    run = subprocess.run([sys.executable, "-c", RESUME.format(root=ROOT, path=path, out=out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["4", "4"]
    with np.load(out) as resumed:
        want = straight.model.state_dict()
        assert set(resumed.files) == set(want)
        for k in want:
            assert np.array_equal(resumed[k], want[k]), k


# --------------------------------------------------------- BackupAndRestore
def test_backup_and_restore_driven_like_fit(tmp_path):
    """The hooks in the contract's order; an interrupt in epoch 3 saves the end of epoch 2
    (the last completed one) and a new run resumes from it exactly."""
    X, y = data()

    def trainer():
        return fnn.Trainer(drop_model(), optimizer=fnn.optim.SGD(lr=0.05, momentum=0.9), seed=2)

    straight = trainer()
    for e in range(4):
        explicit_epoch(straight, X, y, e)

    t = trainer()
    t.epoch = 0
    cb = BackupAndRestore(tmp_path / "bk", save_freq=2)
    cb.set_trainer(t)
    cb.on_train_begin({})
    for e in range(3):
        cb.on_epoch_begin(e, {})
        explicit_epoch(t, X, y, e)
        cb.on_epoch_end(e, {"loss": 1.0})
    assert os.path.exists(cb.path)          # written at the begin of epoch 2 (save_freq=2)
    cb.on_epoch_begin(3, {})
    explicit_epoch(t, X, y, 3)                # epoch 3 is under way when Ctrl-C comes
    t.model.layers[0].params["weight"][...] = 0
    cb.on_train_end({"interrupted": True})

    again = trainer()
    again.epoch = 0
    cb2 = BackupAndRestore(tmp_path / "bk", save_freq=2)
    cb2.set_trainer(again)
    cb2.on_train_begin({})
    assert again.epoch == 3
    cb2.on_epoch_begin(3, {})
    explicit_epoch(again, X, y, 3)
    cb2.on_epoch_end(3, {})
    assert same_state(again.model, straight.model)
    cb2.on_train_end({})                      # finished: the backup goes
    assert not os.path.exists(cb2.path)


def test_backup_kept_on_an_exception_and_arguments_checked(tmp_path):
    t = fnn.Trainer(drop_model("numpy"), optimizer=fnn.optim.SGD(lr=0.05))
    cb = BackupAndRestore(str(tmp_path / "b"), delete_checkpoint=True)
    cb.set_trainer(t)
    cb.on_train_begin({})
    cb.on_epoch_end(0, {})
    try:
        raise FloatingPointError("diverged")
    except FloatingPointError:
        cb.on_train_end({})
    assert load_trainer(cb.path).epoch == 1
    with pytest.raises(ValueError, match="save_freq"):
        BackupAndRestore(tmp_path, save_freq=0)
    with pytest.raises(TypeError, match="backup_dir"):
        BackupAndRestore(None)
    other = fnn.Trainer(drop_model("numpy"), optimizer=fnn.optim.Adam())
    with pytest.raises(fnn.ModelFileError, match="SGD"):
        restore_trainer(other, cb.path)


def test_backup_and_restore_with_fit_and_ctrl_c(tmp_path):
    X, y = data()

    class CtrlC(fnn.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if self.trainer.epoch == 2 and batch == 1:
                raise KeyboardInterrupt

    def trainer():
        return fnn.Trainer(drop_model(), optimizer=fnn.optim.Adam(lr=0.01), seed=4)

    straight = trainer()
    straight.fit(X, y, epochs=4, batch_size=16, progress=False)
    t = trainer()
    with pytest.raises(KeyboardInterrupt):
        t.fit(X, y, epochs=4, batch_size=16, progress=False,
              callbacks=[BackupAndRestore(tmp_path), CtrlC()])
    again = trainer()
    again.fit(X, y, epochs=4, batch_size=16, progress=False, callbacks=[BackupAndRestore(tmp_path)])
    assert again.history.epoch == [0, 1, 2, 3]
    assert same_state(again.model, straight.model)
    assert not os.path.exists(os.path.join(tmp_path, BackupAndRestore.FILE))


# ---------------------------------------------------------- atomic saves
SAVER = """
import sys
sys.path.insert(0, {root!r})
import fastnn as fnn
from fastnn.layers import Dense
model = fnn.Sequential(Dense(7000, 7000), backend="numpy", seed=0)   # 49M floats: 196 MB
model.save({path!r})
print("saved", flush=True)
while True:
    model.save({path!r})
"""


def temporaries(folder):
    return sorted(f for f in os.listdir(folder) if f.startswith(".fastnn-") and f.endswith(".tmp"))


def test_sigkill_during_a_large_save_keeps_the_old_file(tmp_path):
    path = str(tmp_path / "big.safetensors")
    proc = subprocess.Popen([sys.executable, "-c", SAVER.format(root=ROOT, path=path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "saved", proc.stderr.read()[-2000:]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:      # wait until a save has started writing
            tmps = temporaries(tmp_path)
            try:
                if tmps and os.path.getsize(tmp_path / tmps[0]) > 0:
                    break
            except FileNotFoundError:           # renamed meanwhile: the next save comes
                pass
            time.sleep(0.002)
        else:
            pytest.fail("the saver never wrote a temporary")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    left = temporaries(tmp_path)
    assert left and all(f.startswith(f".fastnn-{proc.pid}-") for f in left)
    old = fnn.load(path)                      # the last complete save, intact
    assert old.layers[0].params["weight"].shape == (7000, 7000)
    del old
    # a live process's temporary stays; the dead writer's go with the next save
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".fastnn-{sleeper.pid}-abc123.tmp"
        live.write_bytes(b"in progress")
        fnn.Sequential(Dense(2, 2), backend="numpy").save(tmp_path / "small.npz")
        assert temporaries(tmp_path) == [live.name]
    finally:
        sleeper.kill()
        sleeper.wait()
    save_trainer(fnn.Trainer(fnn.Sequential(Dense(2, 2), backend="numpy")), tmp_path / "c.safetensors")
    assert temporaries(tmp_path) == []        # checkpoints use the same writer


def test_temporary_names_carry_the_pid_and_failed_writes_leave_nothing(tmp_path, monkeypatch):
    seen = []

    def boom(f):
        seen.extend(temporaries(tmp_path))
        f.write(b"partial")
        raise RuntimeError("disk full")

    (tmp_path / "m.npz").write_bytes(b"old")
    with pytest.raises(RuntimeError):
        io.atomic_write(tmp_path / "m.npz", boom)
    assert seen[0].startswith(f".fastnn-{os.getpid()}-") and seen[0].endswith(".tmp")
    assert os.listdir(tmp_path) == ["m.npz"] and (tmp_path / "m.npz").read_bytes() == b"old"
    # the folder is fsynced after the rename
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.path.isdir(f"/proc/self/fd/{fd}")
                                                               and os.path.samefile(f"/proc/self/fd/{fd}", tmp_path)),
                                                 real(fd))[1])
    io.atomic_write(tmp_path / "m.npz", lambda f: f.write(b"new"))
    assert (tmp_path / "m.npz").read_bytes() == b"new"
    if sys.platform.startswith("linux"):
        assert synced == [False, True]        # the file, then its folder
    # pid 0 and our own pid are never treated as dead
    for pid in (0, os.getpid()):
        (tmp_path / f".fastnn-{pid}-ab.tmp").write_bytes(b"x")
    io.remove_stale_temporaries(str(tmp_path))
    assert len(temporaries(tmp_path)) == 2


# ------------------------------------------------------ tampered checkpoints
@pytest.fixture
def checkpoint(tmp_path):
    model = drop_model("numpy")
    trainer = fnn.Trainer(model, optimizer=fnn.optim.Adam(lr=0.01))
    explicit_epoch(trainer, *data(), 0)
    path = tmp_path / "good.safetensors"
    save_trainer(trainer, path)
    from safetensors import safe_open
    with safe_open(str(path), framework="numpy") as f:
        meta = json.loads(f.metadata()["fastnn"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tmp_path, meta, tensors


def rewrite(folder, meta, tensors, name="bad.safetensors"):
    from safetensors.numpy import save_file
    path = folder / name
    save_file(tensors, str(path), metadata={"fastnn": meta if isinstance(meta, str) else json.dumps(meta)})
    return path


def edit(meta, keys, value):
    meta = json.loads(json.dumps(meta))
    target = meta
    for k in keys[:-1]:
        target = target[k]
    target[keys[-1]] = value
    return meta


@pytest.mark.parametrize("keys, value, message", [
    (("epoch",), "two", "epoch"),
    (("epoch",), -1, "epoch"),
    (("seed",), 1.5, "seed"),
    (("history",), [1, 2], "history"),
    (("history", "history", "loss"), ["x"], "history"),
    (("metrics",), [3], "metrics"),
    (("dropout", "3", "calls"), "many", "dropout"),
    (("dropout", "3", "key"), 1 << 64, "dropout"),
    (("dropout", "3"), 7, "dropout"),
    (("dropout",), {"0": {"calls": 1, "key": 2}}, "dropout"),
    (("training",), "yes", "training"),
    (("optimizer", "type"), "os.system", "unknown optimizer class"),
    (("optimizer", "type"), "Evil", "unknown optimizer class"),
    (("optimizer", "hyper", "lr"), "0.1", "lr"),
    (("optimizer", "iterations"), 1.5, "iterations"),
    (("optimizer", "param_groups"), [{"params": ["9"], "lr": 0.1, "betas": [0.9, 0.99], "eps": 1e-8,
                                      "weight_decay": 0.0}], "no parameter"),
    (("scheduler",), {"type": "subprocess.Popen", "state": {}}, "scheduler"),
    (("scheduler",), "StepLR", "scheduler"),
    (("model", "layers", 0, "type"), "NoSuchLayer", "unknown layer type"),
    (("model", "layers", 0, "config"), {"in_features": "5"}, "corrupt architecture"),
    (("model", "class"), "Pickle", "unknown model class"),
    (("loss",), {"loss": {"eval": "x"}}, "loss"),
    (("format",), "fastnn-checkpoint-v0", "not a fastnn checkpoint"),
])
def test_tampered_metadata_is_a_clear_model_file_error(checkpoint, keys, value, message):
    folder, meta, tensors = checkpoint
    path = rewrite(folder, edit(meta, keys, value), tensors)
    with pytest.raises(fnn.ModelFileError, match=message):
        load_trainer(path)


def test_tampered_tensors_are_caught_before_loading(checkpoint):
    folder, meta, tensors = checkpoint
    cases = {
        "wrong model shape": (dict(tensors, **{"model.0.weight": np.zeros((8, 6), np.float32)}), "shape"),
        "wrong state shape": (dict(tensors, **{"optimizer.state.0.weight.exp_avg": np.zeros(3, np.float32)}),
                              "shape"),
        "integer tensor": (dict(tensors, **{"model.0.bias": np.zeros(8, np.int32)}), "not a float"),
        "unknown state": (dict(tensors, **{"optimizer.state.0.weight.sum": np.zeros((8, 5), np.float32)}),
                          "unexpected optimizer state"),
        "stray tensor": (dict(tensors, **{"payload": np.zeros(1, np.float32)}), "unexpected tensors"),
        "missing tensor": ({k: v for k, v in tensors.items() if k != "model.4.bias"}, "missing"),
        "NaN weights": (dict(tensors, **{"model.0.bias": np.full(8, np.nan, np.float32)}), "NaN"),
    }
    for name, (bad, message) in cases.items():
        with pytest.raises(fnn.ModelFileError, match=message):
            load_trainer(rewrite(folder, meta, bad))
    with pytest.raises(fnn.ModelFileError, match="corrupt"):
        load_trainer(rewrite(folder, "{not json", tensors))
    with pytest.raises(fnn.ModelFileError, match="not a fastnn checkpoint"):
        load_trainer(rewrite(folder, json.dumps([1, 2]), tensors))


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))   # unpickling would create the marker file


def test_a_pickle_renamed_safetensors_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    blob = pickle.dumps({"model": _Payload(str(marker))})
    for name in ("evil.safetensors", "evil.npz"):
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(fnn.ModelFileError):
            load_trainer(tmp_path / name)
    (tmp_path / "trunc.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(fnn.ModelFileError):
        load_trainer(tmp_path / "trunc.safetensors")
    assert not marker.exists()


def test_save_trainer_refuses_what_it_cannot_write(tmp_path):
    trainer = fnn.Trainer(drop_model("numpy"))

    class Odd:
        def state_dict(self):
            return {"fn": print}

    trainer.scheduler = Odd()
    with pytest.raises(ValueError, match="JSON"):
        save_trainer(trainer, tmp_path / "c.safetensors")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------- schedulers, metrics, cuda
def test_scheduler_is_saved_and_rebuilt_around_the_loaded_optimizer(tmp_path):
    sched_mod = fnn.optim.lr_scheduler
    X, y = data()
    makers = {
        "step": lambda opt: sched_mod.StepLR(opt, step_size=1, gamma=0.5),
        "cosine": lambda opt: sched_mod.CosineAnnealingLR(opt, T_max=5, warmup_epochs=1),
        "onecycle": lambda opt: sched_mod.OneCycleLR(opt, max_lr=0.1, total_steps=20),
        "lambda": lambda opt: sched_mod.LambdaLR(opt, lambda e: 0.9 ** e),
    }
    for name, make in makers.items():
        def trainer():
            model = drop_model("numpy")
            opt = fnn.optim.SGD(lr=0.1, momentum=0.9, param_groups=[{"params": model.layers[4], "lr": 0.05}])
            t = fnn.Trainer(model, optimizer=opt, seed=1)
            t.scheduler = make(opt)
            return t

        def epoch(t, e):
            explicit_epoch(t, X, y, e)
            t.scheduler.step()

        straight = trainer()
        for e in range(3):
            epoch(straight, e)
        t = trainer()
        for e in range(2):
            epoch(t, e)
        path = tmp_path / f"{name}.safetensors"
        save_trainer(t, path)
        if name == "lambda":
            with pytest.raises(ValueError, match="scheduler="):
                load_trainer(path)
            back = load_trainer(path, scheduler=make)
        else:
            back = load_trainer(path)
        assert type(back.scheduler) is type(t.scheduler) and back.scheduler.optimizer is back.optimizer
        assert back.scheduler.get_last_lr() == t.scheduler.get_last_lr(), name
        epoch(back, 2)
        assert same_state(back.model, straight.model), name
        assert back.scheduler.get_last_lr() == straight.scheduler.get_last_lr(), name


def test_metrics_are_saved_by_name_and_custom_ones_must_be_given(tmp_path):
    t = fnn.Trainer(drop_model("numpy"), metrics=["accuracy", "f1"])
    save_trainer(t, tmp_path / "c.safetensors")
    assert load_trainer(tmp_path / "c.safetensors").metrics == ["accuracy", "f1"]

    def hits(y_true, y_pred):
        return 0.0

    t = fnn.Trainer(drop_model("numpy"), metrics=["accuracy", hits])
    save_trainer(t, tmp_path / "d.safetensors")
    with pytest.raises(ValueError, match="hits.*metrics="):
        load_trainer(tmp_path / "d.safetensors")
    assert load_trainer(tmp_path / "d.safetensors", metrics=["accuracy", hits]).metrics[1] is hits


def _cuda_backend():
    """The cuda backend, or Numba's CUDA simulator where there is no GPU (as test_cuda.py)."""
    import importlib
    from fastnn import backend as backend_mod
    mod = importlib.import_module("fastnn._kernels.cuda")
    if "numba.cuda" not in sys.modules and mod._installed():
        import numba.core.config as config
        config.ENABLE_CUDASIM = 1
    ok, why = mod.available()
    if not ok:
        pytest.skip(f"cuda backend not available: {why}")
    if "cuda" in fnn.backends():
        return fnn.get_backend("cuda")
    return backend_mod.Backend("cuda", mod)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_optimizer_state_on_device_arrays(name):
    be = _cuda_backend()
    straight = small_model(be, "float64")
    steps(straight, OPTIMIZERS[name](straight), 0, 4)
    first = small_model(be, "float64")
    opt = OPTIMIZERS[name](first)
    steps(first, opt, 0, 2)
    sd = opt.state_dict()
    assert all(type(v) is np.ndarray for v in sd["state"].values())   # host copies
    fresh = type(opt)()
    fresh.load_state_dict(sd)
    steps(first, fresh, 2, 4)
    assert same_state(first, straight)
    # the state moves between backends: the numpy run continues from the device one's
    host = small_model("numpy", "float64")
    host.load_state_dict(first.state_dict())
    moved = type(opt)()
    moved.load_state_dict(fresh.state_dict())
    steps(host, moved, 4, 5)
    steps(first, fresh, 4, 5)
    for k, v in host.state_dict().items():
        np.testing.assert_allclose(first.state_dict()[k], v, rtol=1e-12, atol=1e-12)
