"""fastnn.optim.lr_scheduler against torch.optim.lr_scheduler: the lr sequences, the momentum
OneCycleLR cycles, state_dict round trips, and bad arguments."""
import json
import math
import warnings

import numpy as np
import pytest

import fastnn as fnn
from fastnn.optim import lr_scheduler as S

L = fnn.layers
STEPS = 36


def _model():
    return fnn.Sequential(L.Dense(3, 4), L.ReLU(), L.Dense(4, 2), backend="numpy", dtype="float64", seed=0)


def _pair(opt_name="SGD", lr=0.1, group_lrs=(0.01,), **kw):
    """A fastnn optimizer with len(group_lrs) explicit groups and the torch optimizer with the
    same lrs: torch group 0 holds what fastnn keeps in optimizer.lr."""
    torch = pytest.importorskip("torch")
    model = _model()
    groups = [{"params": model.layers[2 * i], "lr": g} for i, g in enumerate(group_lrs)]
    opt = getattr(fnn.optim, opt_name)(lr=lr, param_groups=groups or None, **kw)
    tgroups = [{"params": [torch.nn.Parameter(torch.zeros(1))]}]
    tgroups += [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": g} for g in group_lrs]
    topt = getattr(torch.optim, opt_name)(tgroups, lr=lr, **kw)
    return opt, topt


def _optimizer_lrs(opt):
    return [opt.lr] + [g["lr"] for g in opt.param_groups]


def _close(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x == pytest.approx(y, rel=1e-12, abs=1e-300), (a, b)


CASES = [
    ("StepLR", dict(step_size=3), (0.01,)),
    ("StepLR", dict(step_size=5, gamma=0.5), (0.01, 0.3)),
    ("StepLR", dict(step_size=1, gamma=0.9), ()),
    ("CosineAnnealingLR", dict(T_max=10), (0.01,)),
    ("CosineAnnealingLR", dict(T_max=7, eta_min=0.001), (0.01, 0.2)),   # past T_max: back up, as torch
    ("CosineAnnealingLR", dict(T_max=STEPS), ()),
    ("OneCycleLR", dict(max_lr=1.0, total_steps=STEPS + 4), (0.01,)),
    ("OneCycleLR", dict(max_lr=[0.5, 2.0], epochs=4, steps_per_epoch=10, pct_start=0.25,
                        anneal_strategy="linear", div_factor=10.0, final_div_factor=100.0), (0.01,)),
    ("OneCycleLR", dict(max_lr=[0.5, 2.0, 0.1], total_steps=STEPS + 1, three_phase=True), (0.01, 0.3)),
    ("OneCycleLR", dict(max_lr=0.3, total_steps=STEPS + 2, three_phase=True, anneal_strategy="linear",
                        base_momentum=0.8, max_momentum=0.9), ()),
    ("LambdaLR", dict(lr_lambda=lambda e: 0.95 ** e), (0.01,)),
    ("LambdaLR", dict(lr_lambda=[lambda e: 1.0 / (e + 1), lambda e: 0.5, lambda e: (e % 4) + 1]), (0.01, 0.3)),
]


@pytest.mark.parametrize("name,kwargs,group_lrs", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_sequence_matches_torch(name, kwargs, group_lrs):
    torch = pytest.importorskip("torch")
    opt, topt = _pair("SGD", 0.1, group_lrs, momentum=0.9)
    ours = getattr(S, name)(opt, **kwargs)
    theirs = getattr(torch.optim.lr_scheduler, name)(topt, **kwargs)
    assert ours.base_lrs == pytest.approx(theirs.base_lrs, rel=1e-15)
    for step in range(STEPS):
        assert ours.last_epoch == theirs.last_epoch == step
        _close(ours.get_last_lr(), theirs.get_last_lr())
        _close(_optimizer_lrs(opt), [g["lr"] for g in topt.param_groups])
        if name == "OneCycleLR":   # momentum cycled opposite to the lr, on every group
            _close([opt.momentum] + [g["momentum"] for g in opt.param_groups],
                   [g["momentum"] for g in topt.param_groups])
        topt.step()
        theirs.step()
        ours.step()


def test_onecycle_cycles_adam_beta1_like_torch():
    torch = pytest.importorskip("torch")
    opt, topt = _pair("Adam", 1e-3, (1e-4,), betas=(0.9, 0.99))
    ours = S.OneCycleLR(opt, max_lr=[0.01, 0.02], total_steps=20)
    theirs = torch.optim.lr_scheduler.OneCycleLR(topt, max_lr=[0.01, 0.02], total_steps=20)
    for _ in range(20):
        _close(ours.get_last_lr(), theirs.get_last_lr())
        _close([opt.betas[0], opt.param_groups[0]["betas"][0]], [g["betas"][0] for g in topt.param_groups])
        assert opt.betas[1] == opt.param_groups[0]["betas"][1] == 0.99
        topt.step()
        theirs.step()
        ours.step()


def test_onecycle_without_momentum_cycling_leaves_momentum_alone():
    opt = fnn.optim.SGD(lr=0.1, momentum=0.5)
    s = S.OneCycleLR(opt, max_lr=1.0, total_steps=10, cycle_momentum=False)
    for _ in range(10):
        s.step()
    assert opt.momentum == 0.5
    s = S.OneCycleLR(fnn.optim.Adagrad(lr=0.1), max_lr=1.0, total_steps=10, cycle_momentum=False)
    assert s.get_last_lr() == [pytest.approx(1.0 / 25)]


def test_onecycle_last_step_stays_at_min_lr_then_raises():
    torch = pytest.importorskip("torch")
    opt, topt = _pair("SGD", 0.1, (), momentum=0.9)
    ours = S.OneCycleLR(opt, max_lr=1.0, total_steps=12, anneal_strategy="linear")
    theirs = torch.optim.lr_scheduler.OneCycleLR(topt, max_lr=1.0, total_steps=12, anneal_strategy="linear")
    for _ in range(12):
        topt.step()
        theirs.step()
        ours.step()
    # step total_steps: torch extrapolates below the minimum (negative here); ours stays at it
    assert theirs.get_last_lr()[0] < 0
    assert ours.get_last_lr() == [pytest.approx(1.0 / 25 / 1e4, rel=1e-12)]
    with pytest.raises(ValueError, match="total_steps"):
        ours.step()


def test_onecycle_is_per_batch_and_the_others_are_not():
    assert S.OneCycleLR.per_batch is True
    assert S.StepLR.per_batch is S.CosineAnnealingLR.per_batch is S.LambdaLR.per_batch is False


@pytest.mark.parametrize("name,kwargs", [("StepLR", dict(step_size=4, gamma=0.5)),
                                         ("CosineAnnealingLR", dict(T_max=9, eta_min=0.01))])
def test_step_with_epoch_uses_torchs_closed_form(name, kwargs):
    torch = pytest.importorskip("torch")
    opt, topt = _pair("SGD", 0.1, (0.02,))
    ours = getattr(S, name)(opt, **kwargs)
    theirs = getattr(torch.optim.lr_scheduler, name)(topt, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # torch deprecates step(epoch)
        for epoch in (5, 2, 13, 9, 0, 20):
            topt.step()
            theirs.step(epoch)
            ours.step(epoch)
            assert ours.last_epoch == epoch
            _close(ours.get_last_lr(), theirs.get_last_lr())


def test_cosine_warmup_rule():
    opt = fnn.optim.SGD(lr=0.1, param_groups=[{"params": _model().layers[0], "lr": 0.4}])
    s = S.CosineAnnealingLR(opt, T_max=10, eta_min=0.01, warmup_epochs=3)
    seen = []
    for _ in range(11):
        seen.append(s.get_last_lr())
        s.step()
    for e, lrs in enumerate(seen):
        for base, lr in zip((0.1, 0.4), lrs):
            if e < 3:
                want = base * (e + 1) / 4
            else:
                want = 0.01 + (base - 0.01) * (1 + math.cos(math.pi * (e - 3) / 7)) / 2
            assert lr == pytest.approx(want, rel=1e-12)
    assert seen[3] == pytest.approx([0.1, 0.4]) and seen[10] == pytest.approx([0.01, 0.01])
    assert all(a[0] < b[0] for a, b in zip(seen[:3], seen[1:4]))   # rises, never from 0
    assert _optimizer_lrs(opt) == pytest.approx(s.get_last_lr())


def test_the_optimizer_steps_with_the_scheduled_lrs():
    model = _model()
    opt = fnn.optim.SGD(lr=0.1, param_groups=[{"params": model.layers[0], "lr": 0.4}])
    s = S.StepLR(opt, step_size=1, gamma=0.5)
    s.step()
    x = np.random.default_rng(0).normal(size=(5, 3))
    out = model.forward(x)
    model.zero_grad()
    model.backward(np.ones_like(out))
    before = model.state_dict()
    grads = {p.name: p.grad.copy() for p in model.parameters()}
    opt.step(model.parameters())
    after = model.state_dict()
    for name, g in grads.items():
        lr = 0.2 if name.startswith("0.") else 0.05
        np.testing.assert_allclose(after[name], before[name] - lr * g, rtol=1e-12, atol=1e-15)


def _fresh(name, kwargs, group_lrs):
    opt = fnn.optim.SGD(lr=0.1, momentum=0.9, param_groups=[{"params": _model().layers[2 * i], "lr": g}
                                                           for i, g in enumerate(group_lrs)] or None)
    return opt, getattr(S, name)(opt, **kwargs)


@pytest.mark.parametrize("name,kwargs,group_lrs", [CASES[1], CASES[4], CASES[7], CASES[8], CASES[11],
                                                   ("CosineAnnealingLR", dict(T_max=20, warmup_epochs=4), (0.3,))],
                         ids=["step", "cosine", "onecycle", "onecycle3", "lambda", "cosine-warmup"])
def test_state_dict_round_trip_resumes_the_same_sequence(name, kwargs, group_lrs):
    opt, s = _fresh(name, kwargs, group_lrs)
    whole = []
    for _ in range(30):
        s.step()
        whole.append((s.get_last_lr(), opt.momentum))
    opt, s = _fresh(name, kwargs, group_lrs)
    for _ in range(11):
        s.step()
    state = json.loads(json.dumps(s.state_dict()))   # JSON-able
    assert state["last_epoch"] == 11
    opt2, s2 = _fresh(name, kwargs, group_lrs)        # a new run: lrs back at the start
    s2.load_state_dict(state)
    assert s2.last_epoch == 11
    assert _optimizer_lrs(opt2) == s.get_last_lr()  # the optimizer gets the saved lrs back
    assert opt2.momentum == opt.momentum
    resumed = whole[:11]
    for _ in range(19):
        s2.step()
        resumed.append((s2.get_last_lr(), opt2.momentum))
    assert resumed == whole


@pytest.mark.parametrize("name,kwargs,group_lrs", [CASES[1], CASES[4], CASES[7], CASES[9], CASES[10],
                                                   ("CosineAnnealingLR", dict(T_max=20, warmup_epochs=4), (0.3,))],
                         ids=["step", "cosine", "onecycle", "onecycle3", "lambda", "cosine-warmup"])
def test_from_state_dict_rebuilds_and_resumes(name, kwargs, group_lrs):
    opt, s = _fresh(name, kwargs, group_lrs)
    whole = []
    for _ in range(25):
        s.step()
        whole.append((s.get_last_lr(), opt.momentum))
    opt, s = _fresh(name, kwargs, group_lrs)
    for _ in range(9):
        s.step()
    state = json.loads(json.dumps(s.state_dict()))
    opt2 = fnn.optim.SGD(lr=0.1, momentum=0.9, param_groups=[{"params": _model().layers[2 * i], "lr": g}
                                                            for i, g in enumerate(group_lrs)] or None)
    if name == "LambdaLR":
        with pytest.raises(ValueError, match="lr_lambda"):
            S.from_state_dict(opt2, state)
    s2 = S.from_state_dict(opt2, state, lr_lambda=kwargs.get("lr_lambda"))
    assert type(s2) is type(s) and s2.last_epoch == 9 and _optimizer_lrs(opt2) == s.get_last_lr()
    resumed = whole[:9]
    for _ in range(16):
        s2.step()
        resumed.append((s2.get_last_lr(), opt2.momentum))
    assert resumed == whole
    with pytest.raises(ValueError, match="unknown scheduler"):
        S.from_state_dict(opt2, dict(state, type="CyclicLR"))


def test_lambda_state_saves_callable_objects_not_functions():
    class Decay:
        def __init__(self):
            self.rate = 0.5

        def __call__(self, epoch):
            return self.rate ** epoch

    opt = fnn.optim.SGD(lr=1.0, param_groups=[{"params": _model().layers[0], "lr": 2.0}])
    fn = Decay()
    s = S.LambdaLR(opt, [fn, lambda e: 1.0])
    fn.rate = 0.25
    s.step()
    state = json.loads(json.dumps(s.state_dict()))
    assert state["lr_lambdas"] == [{"rate": 0.25}, None]
    fn2 = Decay()
    opt2 = fnn.optim.SGD(lr=1.0, param_groups=[{"params": _model().layers[0], "lr": 2.0}])
    s2 = S.LambdaLR(opt2, [fn2, lambda e: 1.0])
    s2.load_state_dict(state)
    assert fn2.rate == 0.25
    s2.step()
    assert s2.get_last_lr() == pytest.approx([0.25 ** 2, 2.0])


BAD = [
    (S.StepLR, dict(step_size=0), ValueError, "step_size"),
    (S.StepLR, dict(step_size=2.5), ValueError, "step_size"),
    (S.StepLR, dict(step_size=True), ValueError, "step_size"),
    (S.StepLR, dict(step_size=2, gamma=-0.1), ValueError, "gamma"),
    (S.StepLR, dict(step_size=2, gamma=float("nan")), ValueError, "gamma"),
    (S.CosineAnnealingLR, dict(T_max=0), ValueError, "T_max"),
    (S.CosineAnnealingLR, dict(T_max=5, eta_min=-1.0), ValueError, "eta_min"),
    (S.CosineAnnealingLR, dict(T_max=5, warmup_epochs=5), ValueError, "warmup_epochs"),
    (S.CosineAnnealingLR, dict(T_max=5, warmup_epochs=-1), ValueError, "warmup_epochs"),
    (S.OneCycleLR, dict(max_lr=1.0), ValueError, "total_steps"),
    (S.OneCycleLR, dict(max_lr=1.0, epochs=3), ValueError, "total_steps"),
    (S.OneCycleLR, dict(max_lr=1.0, total_steps=0), ValueError, "total_steps"),
    (S.OneCycleLR, dict(max_lr=1.0, total_steps=10, epochs=3, steps_per_epoch=4), ValueError, "disagrees"),
    (S.OneCycleLR, dict(max_lr=1.0, epochs=0, steps_per_epoch=4), ValueError, "epochs"),
    (S.OneCycleLR, dict(max_lr=1.0, total_steps=10, pct_start=1.5), ValueError, "pct_start"),
    (S.OneCycleLR, dict(max_lr=1.0, total_steps=10, anneal_strategy="exp"), ValueError, "anneal_strategy"),
    (S.OneCycleLR, dict(max_lr=[1.0, 2.0, 3.0], total_steps=10), ValueError, "max_lr"),
    (S.OneCycleLR, dict(max_lr=0.0, total_steps=10), ValueError, "max_lr"),
    (S.OneCycleLR, dict(max_lr=1.0, total_steps=10, div_factor=0), ValueError, "div_factor"),
    (S.OneCycleLR, dict(max_lr=1.0, total_steps=10, max_momentum=1.0), ValueError, "max_momentum"),
    (S.LambdaLR, dict(lr_lambda=0.5), TypeError, "lr_lambda"),
    (S.LambdaLR, dict(lr_lambda=[lambda e: 1.0]), ValueError, "lr_lambda"),
    (S.LambdaLR, dict(lr_lambda=lambda e: float("nan")), ValueError, "lr_lambda"),
    (S.LambdaLR, dict(lr_lambda=lambda e: "fast"), TypeError, "lr_lambda"),
    (S.LambdaLR, dict(lr_lambda=lambda e: -1.0), ValueError, "learning rate"),
]


@pytest.mark.parametrize("cls,kwargs,error,match", BAD, ids=[f"{b[0].__name__}-{i}" for i, b in enumerate(BAD)])
def test_bad_arguments_raise(cls, kwargs, error, match):
    opt = fnn.optim.SGD(lr=0.1, momentum=0.9, param_groups=[{"params": _model().layers[0], "lr": 0.01}])
    with pytest.raises(error, match=match):
        cls(opt, **kwargs)


def test_misuse_of_the_optimizer_and_state():
    with pytest.raises(TypeError, match="optimizer"):
        S.StepLR("sgd", step_size=2)
    with pytest.raises(ValueError, match="cycle_momentum=False"):
        S.OneCycleLR(fnn.optim.Adagrad(lr=0.1), max_lr=1.0, total_steps=10)
    s = S.StepLR(fnn.optim.SGD(lr=0.1), step_size=2)
    with pytest.raises(ValueError, match="epoch"):
        s.step(-3)
    with pytest.raises(TypeError, match="dict"):
        s.load_state_dict([1, 2])
    with pytest.raises(ValueError, match="CosineAnnealingLR"):
        s.load_state_dict(S.CosineAnnealingLR(fnn.optim.SGD(lr=0.1), T_max=3).state_dict())
    two = S.StepLR(fnn.optim.SGD(lr=0.1, param_groups=[{"params": _model().layers[0], "lr": 0.01}]), step_size=2)
    with pytest.raises(ValueError, match="must list 1 lrs"):
        s.load_state_dict(two.state_dict())
    state = s.state_dict()
    state["step_size"] = 0
    with pytest.raises(ValueError, match="step_size"):
        s.load_state_dict(state)


# ------------------------------------------------------------ with the Trainer


def _fit_data(n=64):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 3))
    return X, (X[:, 0] > 0).astype(np.int64)


def test_fit_steps_an_epoch_scheduler_after_every_epoch():
    X, y = _fit_data()
    model = _model()
    opt = fnn.optim.SGD(lr=0.1, param_groups=[{"params": model.layers[0], "lr": 0.4}])
    s = S.StepLR(opt, step_size=1, gamma=0.5)
    seen = []

    class LR(fnn.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(_optimizer_lrs(self.trainer.optimizer))

    trainer = fnn.Trainer(model, loss="cross_entropy", optimizer=opt, seed=0)
    trainer.fit(X, y, epochs=3, batch_size=16, progress=False, scheduler=s, callbacks=[LR()])
    assert trainer.scheduler is s and s.last_epoch == 3
    assert seen == [[0.1, 0.4], [0.05, 0.2], [0.025, 0.1]]


def test_fit_steps_onecycle_after_every_batch_like_torch():
    torch = pytest.importorskip("torch")
    X, y = _fit_data()
    opt, topt = _pair("SGD", 0.1, (), momentum=0.9)
    s = S.OneCycleLR(opt, max_lr=1.0, epochs=2, steps_per_epoch=4)
    theirs = torch.optim.lr_scheduler.OneCycleLR(topt, max_lr=1.0, epochs=2, steps_per_epoch=4)
    want = []
    for _ in range(8):
        want.append(theirs.get_last_lr()[0])
        topt.step()
        theirs.step()
    seen = []

    class LR(fnn.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(self.trainer.optimizer.lr)

    trainer = fnn.Trainer(_model(), loss="cross_entropy", optimizer=opt, seed=0)
    trainer.fit(X, y, epochs=2, batch_size=16, progress=False, scheduler=s, callbacks=[LR()])
    assert s.last_epoch == 8
    _close(seen, want)


def test_a_schedule_through_lr_zero_steps_with_param_groups():
    model = _model()
    opt = fnn.optim.SGD(lr=0.1, param_groups=[{"params": model.layers[0], "lr": 0.2}])
    S.LambdaLR(opt, lambda e: e / 10)           # torch's usual warm-up idiom: lr 0 at step 0
    out = model.forward(np.ones((2, 3)))
    model.zero_grad()
    model.backward(np.ones_like(out))
    before = model.state_dict()
    opt.step(model.parameters())
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
