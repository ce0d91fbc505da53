"""huber, l1 and cross_entropy's options (weight, label_smoothing, ignore_index): torch's
values and gradients on every backend (cuda under the simulator at tiny sizes), gradient
checks, the Trainer with loss names, options and Loss objects, and bad input."""
import importlib
import sys

import numpy as np
import pytest

import fastnn as fnn
from fastnn import backend as backend_mod
from fastnn.layers import Dense, ReLU
from seq_helpers import numeric_grad


def _cuda():
    """The cuda backend: the GPU where there is one, else the simulator (as tests/test_cuda.py)."""
    mod = importlib.import_module("fastnn._kernels.cuda")
    if not mod._installed():
        return None
    if "numba.cuda" not in sys.modules:
        import numba.core.config as config
        config.ENABLE_CUDASIM = 1
    if not mod.available()[0]:
        return None
    if "cuda" in fnn.backends():
        return fnn.get_backend("cuda")
    return backend_mod.Backend("cuda", mod)


CPU = [fnn.get_backend(b) for b in fnn.backends() if b != "cuda"]
CUDA = _cuda()
ALL = CPU + ([CUDA] if CUDA is not None else [])
ids = lambda b: b.name


def close(a, b, tol=1e-9):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    assert np.all(np.abs(a - b) <= tol * (1 + np.abs(b))), np.max(np.abs(a - b))


def host(x):
    return np.asarray(x) if isinstance(x, np.ndarray) else x.copy_to_host()


def torch_loss(module, out, target, target_dtype=None):
    torch = pytest.importorskip("torch")
    o = torch.tensor(out, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(target) if target_dtype is None else torch.tensor(target, dtype=target_dtype)
    loss = module(o, t)
    loss.backward()
    return float(loss.detach()), o.grad.numpy()


def _data(n=6, c=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, c)) * 2, rng.standard_normal((n, c))


# ------------------------------------------------------------------ torch


@pytest.mark.parametrize("be", ALL, ids=ids)
@pytest.mark.parametrize("delta", [1.0, 0.3, 2.5])
def test_huber_matches_torch(be, delta):
    torch = pytest.importorskip("torch")
    out, t = _data()
    want = torch_loss(torch.nn.HuberLoss(delta=delta), out, t)
    loss, grad = fnn.losses.huber(out, t, delta=delta, backend=be)
    close(loss, want[0])
    close(host(grad), want[1])


@pytest.mark.parametrize("be", ALL, ids=ids)
def test_l1_matches_torch_with_ties(be):
    torch = pytest.importorskip("torch")
    out, t = _data()
    t[::2, 1] = out[::2, 1]            # d == 0: torch's gradient there is 0
    want = torch_loss(torch.nn.L1Loss(), out, t)
    loss, grad = fnn.losses.l1(out, t, backend=be)
    close(loss, want[0])
    close(host(grad), want[1])
    assert np.all(host(grad)[::2, 1] == 0)


CE_OPTIONS = [
    dict(weight=True),
    dict(label_smoothing=0.1),
    dict(ignore_index=-100),
    dict(ignore_index=2),
    dict(weight=True, label_smoothing=0.2),
    dict(weight=True, label_smoothing=0.3, ignore_index=-100),
    dict(weight=True, ignore_index=1),
    dict(label_smoothing=1.0),
]


@pytest.mark.parametrize("be", ALL, ids=ids)
@pytest.mark.parametrize("opts", CE_OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_cross_entropy_options_match_torch(be, opts):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    n, c = 7, 4
    logits = rng.standard_normal((n, c)) * 2
    labels = rng.integers(0, c, n)
    ignore = opts.get("ignore_index")
    if ignore is not None:
        labels[::3] = ignore
    weight = rng.random(c) + 0.2 if opts.get("weight") else None
    kw = dict(label_smoothing=opts.get("label_smoothing", 0.0))
    if ignore is not None:
        kw["ignore_index"] = ignore
    module = torch.nn.CrossEntropyLoss(weight=None if weight is None else torch.tensor(weight), **kw)
    want = torch_loss(module, logits, labels, torch.int64)
    loss, grad = fnn.losses.cross_entropy(logits, labels, weight=weight, backend=be,
                                          label_smoothing=kw["label_smoothing"], ignore_index=ignore)
    close(loss, want[0])
    close(host(grad), want[1])
    # the Loss object gives the same on the checked and the raw (Trainer) path
    obj = fnn.losses.CrossEntropy(weight=weight, ignore_index=ignore, label_smoothing=kw["label_smoothing"])
    close(obj(logits, labels, backend=be)[0], want[0])
    raw_loss, raw_grad = obj.bind(be)(be.to_device(logits), be.to_device(labels))
    close(raw_loss, want[0])
    close(host(raw_grad), want[1])


@pytest.mark.parametrize("be", CPU, ids=ids)
def test_cross_entropy_float32_close_to_float64(be):
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((33, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 33)
    labels[::4] = -100
    w = (rng.random(10) + 0.1).astype(np.float32)
    l32, g32 = fnn.losses.cross_entropy(logits, labels, w, 0.1, -100, backend=be)
    l64, g64 = fnn.losses.cross_entropy(logits.astype(np.float64), labels, w.astype(np.float64), 0.1, -100,
                                        backend="numpy")
    assert g32.dtype == np.float32
    close(l32, l64, 1e-5)
    close(g32, g64, 1e-5)


@pytest.mark.parametrize("be", CPU, ids=ids)
def test_cross_entropy_probability_targets_with_smoothing_match_torch(be):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((5, 3))
    t = rng.random((5, 3))
    t /= t.sum(axis=1, keepdims=True)
    want = torch_loss(torch.nn.CrossEntropyLoss(label_smoothing=0.25), logits, t)
    loss, grad = fnn.losses.cross_entropy(logits, t, label_smoothing=0.25, backend=be)
    close(loss, want[0])
    close(grad, want[1])
    with pytest.raises(ValueError, match="probability targets"):
        fnn.losses.cross_entropy(logits, t, weight=np.ones(3), backend=be)


@pytest.mark.parametrize("be", ALL, ids=ids)
def test_all_targets_ignored_gives_zero_not_nan(be):
    # torch returns nan here; fastnn's documented choice is loss 0 and a zero gradient.
    logits = np.random.default_rng(0).standard_normal((3, 4))
    loss, grad = fnn.losses.cross_entropy(logits, np.full(3, -100), ignore_index=-100, backend=be)
    assert loss == 0.0 and np.all(host(grad) == 0)
    loss, grad = fnn.losses.cross_entropy(logits, np.array([1, 1, 0]), weight=np.array([0, 0, 1, 1.0]),
                                          backend=be)
    assert loss == 0.0 and np.all(host(grad) == 0)


def test_plain_cross_entropy_keeps_the_fast_kernel(monkeypatch):
    be = CPU[-1]
    calls = []
    monkeypatch.setattr(be, "cross_entropy_weighted", lambda *a, **k: calls.append(1))
    fnn.losses.cross_entropy(np.zeros((2, 3)), np.array([0, 1]), backend=be)
    assert calls == []


# --------------------------------------------------------- gradient checks


@pytest.mark.parametrize("be", CPU, ids=ids)
@pytest.mark.parametrize("kind", ["huber", "l1", "ce_weighted", "ce_smooth_ignore"])
def test_new_loss_gradients_by_central_differences(be, kind):
    rng = np.random.default_rng(4)
    out = rng.standard_normal((5, 4)) * 2
    if kind in ("huber", "l1"):
        t = out + rng.choice([-1, 1], out.shape) * (0.2 + rng.random(out.shape) * 2)   # away from kinks
        t[0, 0] = out[0, 0] + 0.5                     # huber with delta 1: the quadratic part too
        fn = (lambda: fnn.losses.huber(out, t, 1.0, backend=be)) if kind == "huber" else \
            (lambda: fnn.losses.l1(out, t, backend=be))
    else:
        labels = rng.integers(0, 4, 5)
        w = rng.random(4) + 0.1
        if kind == "ce_weighted":
            fn = lambda: fnn.losses.cross_entropy(out, labels, weight=w, backend=be)
        else:
            labels[1] = 7
            fn = lambda: fnn.losses.cross_entropy(out, labels, weight=w, label_smoothing=0.3,
                                                  ignore_index=7, backend=be)
    _, grad = fn()
    numeric = numeric_grad(lambda: fn()[0], out)
    assert np.max(np.abs(grad - numeric)) < 1e-7


# ----------------------------------------------------------------- Trainer


def _regression_model(be="numpy"):
    return fnn.Sequential(Dense(3, 8), ReLU(), Dense(8, 2), backend=be, dtype="float64", seed=0)


@pytest.mark.parametrize("loss", ["huber", "l1", fnn.losses.Huber(delta=0.5), ("huber", {"delta": 0.2})])
def test_trainer_fits_with_regression_losses(loss):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((64, 3))
    y = X[:, :2] * 2 - X[:, 1:] + 0.1
    loss, options = loss if isinstance(loss, tuple) else (loss, None)
    trainer = fnn.Trainer(_regression_model(CPU[-1].name), loss=loss, loss_options=options,
                          optimizer=fnn.optim.Adam(lr=0.01))
    first = trainer.evaluate(X, y)["loss"]
    trainer.fit(X, y, epochs=20, batch_size=16, progress=False)
    assert trainer.evaluate(X, y)["loss"] < 0.5 * first


def test_trainer_loss_value_matches_the_loss_function():
    rng = np.random.default_rng(6)
    X, y = rng.standard_normal((10, 3)), rng.standard_normal((10, 2))
    model = _regression_model()
    trainer = fnn.Trainer(model, loss="huber", loss_options={"delta": 0.3})
    want = fnn.losses.huber(model.predict(X), y, delta=0.3)[0]
    assert abs(trainer.evaluate(X, y)["loss"] - want) < 1e-12


def test_trainer_cross_entropy_options_and_ignore_index():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((60, 4))
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)
    y_masked = y.copy()
    y_masked[::5] = -100                               # padding labels, out of range but ignored
    model = fnn.Sequential(Dense(4, 16), ReLU(), Dense(16, 3), backend=CPU[-1].name, dtype="float64", seed=0)
    loss = fnn.losses.CrossEntropy(weight=[1.0, 2.0, 1.0], label_smoothing=0.1, ignore_index=-100)
    trainer = fnn.Trainer(model, loss=loss, optimizer=fnn.optim.Adam(lr=0.02))
    out = model.predict(X)
    want = fnn.losses.cross_entropy(out, y_masked, weight=[1.0, 2.0, 1.0], label_smoothing=0.1,
                                    ignore_index=-100, backend="numpy")[0]
    assert abs(trainer.evaluate(X, y_masked)["loss"] - want) < 1e-9
    trainer.fit(X, y_masked, epochs=30, batch_size=20, progress=False)
    assert trainer.evaluate(X, y)["accuracy"] > 0.8
    with pytest.raises(ValueError, match=r"\[0, 3\)"):        # -100 without ignore_index is out of range
        fnn.Trainer(model, loss="cross_entropy").fit(X, y_masked, progress=False)
    t2 = fnn.Trainer(model, loss="cross_entropy", loss_options={"ignore_index": -100})
    assert abs(t2.evaluate(X, y_masked)["loss"] - fnn.losses.cross_entropy(
        model.predict(X), y_masked, ignore_index=-100)[0]) < 1e-9
    # accuracy counts only the kept rows, in evaluate and in fit's logs
    kept = y_masked != -100
    right = (model.predict(X).argmax(axis=1) == y)[kept].mean()
    assert abs(trainer.evaluate(X, y_masked)["accuracy"] - right) < 1e-12
    zero = fnn.Trainer(model, loss=fnn.losses.CrossEntropy(ignore_index=0))   # an ignored class in range
    right0 = (model.predict(X).argmax(axis=1) == y)[y != 0].mean()
    assert abs(zero.evaluate(X, y)["accuracy"] - right0) < 1e-12
    history = fnn.Trainer(model, loss=loss, optimizer=fnn.optim.SGD(lr=1e-9)).fit(
        X, y_masked, epochs=1, batch_size=60, shuffle=False, progress=False)
    assert abs(history.history["accuracy"][0] - right) < 1e-6
    assert np.isnan(t2.evaluate(X[:2], np.full(2, -100))["accuracy"])   # nothing to count


# --------------------------------------------------------------- bad input


def test_bad_loss_arguments():
    out, t = _data()
    labels = np.array([0, 1, 2, 3, 0, 1])
    with pytest.raises(ValueError, match="delta"):
        fnn.losses.huber(out, t, delta=0)
    with pytest.raises(ValueError, match="delta"):
        fnn.losses.Huber(delta=-1.0)
    with pytest.raises(ValueError, match="finite"):
        fnn.losses.huber(out, t, delta=float("nan"))
    with pytest.raises(ValueError, match="same shape"):
        fnn.losses.l1(out, t[:, :2])
    for ls in (-0.1, 1.5):
        with pytest.raises(ValueError, match="label_smoothing"):
            fnn.losses.cross_entropy(out, labels, label_smoothing=ls)
        with pytest.raises(ValueError, match="label_smoothing"):
            fnn.losses.CrossEntropy(label_smoothing=ls)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        fnn.losses.cross_entropy(out, labels, weight=np.ones(3))
    with pytest.raises(ValueError, match=">= 0"):
        fnn.losses.cross_entropy(out, labels, weight=[1, -1, 1, 1])
    with pytest.raises(ValueError, match="finite"):
        fnn.losses.CrossEntropy(weight=[1, np.nan, 1, 1])
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        fnn.losses.cross_entropy(out, np.array([0, 1, 2, 4, 0, 1]), ignore_index=-100)
    with pytest.raises(TypeError, match="ignore_index"):
        fnn.losses.cross_entropy(out, labels, ignore_index=1.5)
    with pytest.raises(ValueError, match="unknown loss"):
        fnn.losses.get("hubber")
    with pytest.raises(TypeError, match="bad options"):
        fnn.Trainer(_regression_model(), loss="huber", loss_options={"beta": 1})
    with pytest.raises(ValueError, match="loss_options"):
        fnn.Trainer(_regression_model(), loss=fnn.losses.Huber(), loss_options={"delta": 1})
