"""AdamW, RMSprop, Adagrad (and SGD/Adam with the new options) against torch.optim's
trajectories on every backend (cuda under the simulator at tiny sizes); clip_grad_norm
against torch.nn.utils.clip_grad_norm_; freezing (layer.trainable = False); parameter
groups; bad input."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn.layers import Dense, ReLU, Tanh
from test_losses_more import ALL, CPU, host, ids

torch = pytest.importorskip("torch")

OPTIMIZERS = {
    "sgd-momentum-wd": (lambda: fnn.optim.SGD(lr=0.1, momentum=0.9, weight_decay=0.01),
                        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01)),
    "adam-wd": (lambda: fnn.optim.Adam(lr=0.01, weight_decay=0.01),
                lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.01)),
    "adamw": (lambda: fnn.optim.AdamW(), lambda p: torch.optim.AdamW(p)),
    "adamw-betas-wd": (lambda: fnn.optim.AdamW(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
                       lambda p: torch.optim.AdamW(p, lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    "rmsprop": (lambda: fnn.optim.RMSprop(), lambda p: torch.optim.RMSprop(p)),
    "rmsprop-centered": (lambda: fnn.optim.RMSprop(lr=0.01, centered=True),
                         lambda p: torch.optim.RMSprop(p, lr=0.01, centered=True)),
    "rmsprop-momentum-centered-wd": (
        lambda: fnn.optim.RMSprop(lr=0.01, alpha=0.9, momentum=0.9, centered=True, weight_decay=0.01),
        lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.9, momentum=0.9, centered=True, weight_decay=0.01)),
    "adagrad": (lambda: fnn.optim.Adagrad(), lambda p: torch.optim.Adagrad(p)),
    "adagrad-decay-wd-init": (
        lambda: fnn.optim.Adagrad(lr=0.1, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1),
        lambda p: torch.optim.Adagrad(p, lr=0.1, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1)),
}


def _pair(backend, layers=None, seed=0):
    """An fnn model and a torch model with the same float64 weights."""
    layers = layers or [Dense(4, 6), Tanh(), Dense(6, 3)]
    model = fnn.Sequential(*layers, backend=backend, dtype="float64", seed=seed)
    tmodel = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    tmodel.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
    return model, tmodel


def _feed(model, tmodel, grads):
    """Give both the same gradients (name -> array)."""
    for p in model.parameters():
        p.grad[...] = model.backend.to_device(grads[p.name])
    for name, tp in tmodel.named_parameters():
        tp.grad = torch.tensor(grads[name])


def _same(model, tmodel, tol=1e-9):
    sd = model.state_dict()
    for name, tp in tmodel.named_parameters():
        want = tp.detach().numpy()
        err = np.max(np.abs(sd[name] - want) / (1 + np.abs(want)))
        assert err <= tol, (name, err)


def _run(model, tmodel, opt, topt, steps=20, seed=1, clip=None):
    rng = np.random.default_rng(seed)
    shapes = {p.name: p.data.shape for p in model.parameters()}
    for _ in range(steps):
        grads = {k: rng.standard_normal(s) for k, s in shapes.items()}
        _feed(model, tmodel, grads)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(tmodel.parameters(), clip)
        opt.step(model.parameters())
        topt.step()
    _same(model, tmodel)


@pytest.mark.parametrize("be", ALL, ids=ids)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_trajectory_matches_torch(be, name):
    make, tmake = OPTIMIZERS[name]
    model, tmodel = _pair(be.name if be.name != "cuda" else be)
    _run(model, tmodel, make(), tmake(tmodel.parameters()))


@pytest.mark.parametrize("name", ["sgd-momentum-wd", "adamw", "rmsprop-momentum-centered-wd", "adagrad"])
def test_end_to_end_training_matches_torch(name):
    """Gradients from backprop and the optimizer together, 20 steps of MSE."""
    make, tmake = OPTIMIZERS[name]
    model, tmodel = _pair(CPU[-1].name)
    opt, topt = make(), tmake(tmodel.parameters())
    rng = np.random.default_rng(2)
    for _ in range(20):
        x, y = rng.standard_normal((8, 4)), rng.standard_normal((8, 3))
        loss, grad = fnn.losses.mse(model.forward(x), y)
        model.zero_grad()
        model.backward(grad)
        opt.step(model.parameters())
        topt.zero_grad()
        torch.nn.functional.mse_loss(tmodel(torch.tensor(x)), torch.tensor(y)).backward()
        topt.step()
    _same(model, tmodel)


# ---------------------------------------------------------------- clipping


@pytest.mark.parametrize("be", ALL, ids=ids)
@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf"), 3.0])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_matches_torch(be, norm_type, max_norm):
    model, tmodel = _pair(be.name if be.name != "cuda" else be)
    rng = np.random.default_rng(3)
    grads = {p.name: rng.standard_normal(p.data.shape) for p in model.parameters()}
    _feed(model, tmodel, grads)
    total = fnn.optim.clip_grad_norm(model.parameters(), max_norm, norm_type=norm_type)
    want = torch.nn.utils.clip_grad_norm_(tmodel.parameters(), max_norm, norm_type=norm_type)
    assert isinstance(total, float)
    assert abs(total - float(want)) <= 1e-12 * float(want)
    for p, (_, tp) in zip(model.parameters(), tmodel.named_parameters()):
        np.testing.assert_allclose(host(p.grad), tp.grad.numpy(), rtol=1e-12, atol=1e-15)
    # a list of Parameters works the same
    _feed(model, tmodel, grads)
    assert abs(fnn.optim.clip_grad_norm(list(model.parameters()), max_norm, norm_type) - total) < 1e-12 * total


@pytest.mark.parametrize("be", CPU, ids=ids)
@pytest.mark.parametrize("name", ["sgd-momentum-wd", "adam-wd", "adamw", "rmsprop", "adagrad"])
def test_clip_norm_argument_clips_before_each_step(be, name):
    make, tmake = OPTIMIZERS[name]
    model, tmodel = _pair(be.name)
    opt = make()
    opt.clip_norm = 0.7     # the same as the constructor argument
    _run(model, tmodel, opt, tmake(tmodel.parameters()), clip=0.7)
    model2, _ = _pair(be.name)
    opt2 = type(opt)(clip_norm=0.7)
    assert opt2.clip_norm == 0.7


def test_clip_grad_norm_one_kernel_each_on_the_flat_buffer(monkeypatch):
    model, _ = _pair(CPU[-1].name)
    raw = model.backend.raw
    calls = []
    for k in ("grad_norm", "grad_scale"):
        fn = getattr(raw, k)
        monkeypatch.setattr(raw, k, lambda *a, _fn=fn, _k=k: (calls.append((_k, a[0].size)), _fn(*a))[1])
    model.parameters().flat_grad[...] = 1.0
    fnn.optim.clip_grad_norm(model.parameters(), 0.1)
    n = model.count_params()
    assert calls == [("grad_norm", n), ("grad_scale", n)]


# ----------------------------------------------------------------- freezing


def _classification(n=80, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 4))
    return X, (X[:, 0] + X[:, 1] > 0).astype(int)


@pytest.mark.parametrize("be", CPU, ids=ids)
@pytest.mark.parametrize("opt", [lambda: fnn.optim.SGD(lr=0.1, momentum=0.9, weight_decay=0.1),
                                 lambda: fnn.optim.AdamW(lr=0.01), lambda: fnn.optim.RMSprop(lr=0.01,
                                                                                             momentum=0.5)])
def test_frozen_layer_is_bit_identical_after_fit(be, opt):
    X, y = _classification()
    model = fnn.Sequential(Dense(4, 8), ReLU(), Dense(8, 2), backend=be.name, seed=0)
    trainer = fnn.Trainer(model, optimizer=opt())
    trainer.fit(X, y, epochs=2, batch_size=16, progress=False)   # momentum / state is non-zero now
    model.layers[0].trainable = False
    before = model.state_dict()
    trainer.fit(X, y, epochs=2, batch_size=16, progress=False)
    after = model.state_dict()
    for k in ("0.weight", "0.bias"):
        assert np.array_equal(before[k], after[k]), k
    assert not np.array_equal(before["2.weight"], after["2.weight"])
    model.layers[0].trainable = True                           # unfreezing works
    trainer.fit(X, y, epochs=1, batch_size=16, progress=False)
    assert not np.array_equal(after["0.weight"], model.state_dict()["0.weight"])


def test_frozen_first_layer_matches_torch_requires_grad_false():
    model, tmodel = _pair(CPU[-1].name)
    model.layers[2].trainable = False
    for p in tmodel[2].parameters():
        p.requires_grad_(False)
    opt = fnn.optim.SGD(lr=0.1, momentum=0.9, weight_decay=0.01)
    topt = torch.optim.SGD([p for p in tmodel.parameters() if p.requires_grad], lr=0.1, momentum=0.9,
                           weight_decay=0.01)
    rng = np.random.default_rng(4)
    for _ in range(5):
        x, y = rng.standard_normal((8, 4)), rng.standard_normal((8, 3))
        _, grad = fnn.losses.mse(model.forward(x), y)
        model.zero_grad()
        model.backward(grad)
        total = fnn.optim.clip_grad_norm(model.parameters(), 0.5)
        opt.step(model.parameters())
        topt.zero_grad()
        torch.nn.functional.mse_loss(tmodel(torch.tensor(x)), torch.tensor(y)).backward()
        want = torch.nn.utils.clip_grad_norm_(tmodel.parameters(), 0.5)   # frozen grads are None
        topt.step()
        assert abs(total - float(want)) < 1e-12 * float(want)
    _same(model, tmodel)
    model.layers[2].trainable = True


@pytest.mark.parametrize("be", CPU, ids=ids)
def test_frozen_dense_skips_its_weight_gradient_but_passes_dx(be):
    rng = np.random.default_rng(5)
    model = fnn.Sequential(Dense(4, 5), Tanh(), Dense(5, 3), backend=be.name, dtype="float64", seed=0)
    x, dy = rng.standard_normal((6, 4)), rng.standard_normal((6, 3))
    model.forward(x)
    model.zero_grad()
    model.backward(dy)
    want = {p.name: p.grad.copy() for p in model.parameters()}
    model.layers[2].trainable = False
    model.forward(x)
    model.zero_grad()
    model.backward(dy)
    got = {p.name: p.grad.copy() for p in model.parameters()}
    model.layers[2].trainable = True
    assert np.all(got["2.weight"] == 0) and np.all(got["2.bias"] == 0)
    np.testing.assert_allclose(got["0.weight"], want["0.weight"], rtol=1e-12, atol=1e-15)


def test_trainable_is_saved_and_loaded(tmp_path):
    model = fnn.Sequential(Dense(4, 3), ReLU(), Dense(3, 2), seed=0)
    model.layers[0].trainable = False
    model.save(tmp_path / "m.npz")
    loaded = fnn.load(tmp_path / "m.npz")
    assert [l.trainable for l in loaded.layers] == [False, True, True]
    model.layers[0].trainable = True
    block = fnn.layers.Residual(Dense(4, 4), ReLU())
    res = fnn.Sequential(block, Dense(4, 2), seed=0)
    block.layers[0].trainable = False                  # a sublayer alone
    res.save(tmp_path / "r.npz")
    sub = fnn.load(tmp_path / "r.npz").layers[0]
    assert sub.trainable and [l.trainable for l in sub.layers] == [False, True]
    block.layers[0].trainable = True


def test_freezing_a_residual_freezes_its_sublayers():
    block = fnn.layers.Residual(Dense(4, 4), ReLU())
    model = fnn.Sequential(block, Dense(4, 2), seed=0)
    block.trainable = False
    assert all(not sub.trainable for _, sub in block.sublayers())
    before = model.state_dict()
    model.forward(np.ones((2, 4)))
    model.backward(np.ones((2, 2)))
    fnn.optim.SGD(lr=0.1).step(model.parameters())
    after = model.state_dict()
    assert np.array_equal(before["0.0.weight"], after["0.0.weight"])
    assert not np.array_equal(before["1.weight"], after["1.weight"])
    block.trainable = True
    assert all(sub.trainable for _, sub in block.sublayers())


# ----------------------------------------------------------- param groups


@pytest.mark.parametrize("be", ALL, ids=ids)
def test_param_groups_match_torch(be):
    model, tmodel = _pair(be.name if be.name != "cuda" else be)
    opt = fnn.optim.SGD(lr=0.1, momentum=0.9, param_groups=[{"params": model.layers[0], "lr": 0.01}])
    topt = torch.optim.SGD([{"params": tmodel[0].parameters(), "lr": 0.01},
                            {"params": tmodel[2].parameters()}], lr=0.1, momentum=0.9)
    _run(model, tmodel, opt, topt)


def test_param_groups_by_name_and_parameter_with_adam():
    model, tmodel = _pair(CPU[-1].name)
    params = model.parameters()
    opt = fnn.optim.Adam(lr=0.01, param_groups=[
        {"params": ["0.weight", params[3]], "lr": 0.05, "weight_decay": 0.1},
        {"params": "2.weight", "betas": (0.5, 0.9)}])
    tp = dict(tmodel.named_parameters())
    topt = torch.optim.Adam([{"params": [tp["0.weight"], tp["2.bias"]], "lr": 0.05, "weight_decay": 0.1},
                             {"params": [tp["2.weight"]], "betas": (0.5, 0.9)},
                             {"params": [tp["0.bias"]]}], lr=0.01)
    _run(model, tmodel, opt, topt)
    opt.param_groups[0]["lr"] = 0.001        # a group's lr can change, as in torch
    topt.param_groups[0]["lr"] = 0.001
    _run(model, tmodel, opt, topt, steps=3)


def test_kernel_calls_one_for_the_common_case_one_per_run_with_groups(monkeypatch):
    model = fnn.Sequential(Dense(4, 6), Tanh(), Dense(6, 5), ReLU(), Dense(5, 3), seed=0, backend=CPU[-1].name)
    raw = model.backend.raw
    sizes = []
    fn = raw.sgd_step
    monkeypatch.setattr(raw, "sgd_step", lambda p, *a: (sizes.append(p.size), fn(p, *a))[1])
    fnn.optim.SGD(lr=0.1).step(model.parameters())
    assert sizes == [model.count_params()]
    sizes.clear()
    # layers 2 and 4 (no parameters between them): one run; layers 0 and 4 in one group: three runs
    opt = fnn.optim.SGD(lr=0.1, param_groups=[{"params": [model.layers[2], model.layers[4]], "lr": 0.01}])
    opt.step(model.parameters())
    assert sizes == [4 * 6 + 6, 6 * 5 + 5 + 5 * 3 + 3]
    sizes.clear()
    opt = fnn.optim.SGD(lr=0.1, param_groups=[{"params": [model.layers[0], model.layers[4]], "lr": 0.01}])
    opt.step(model.parameters())
    assert sizes == [4 * 6 + 6, 6 * 5 + 5, 5 * 3 + 3]
    sizes.clear()
    model.layers[2].trainable = False
    opt.step(model.parameters())
    assert sizes == [4 * 6 + 6, 5 * 3 + 3]
    model.layers[2].trainable = True


# --------------------------------------------------------------- bad input


def test_bad_optimizer_arguments():
    model = fnn.Sequential(Dense(4, 3), Dense(3, 2), seed=0)
    for bad in (lambda: fnn.optim.AdamW(lr=0), lambda: fnn.optim.AdamW(betas=(1.0, 0.9)),
                lambda: fnn.optim.AdamW(betas=0.9), lambda: fnn.optim.RMSprop(alpha=-1),
                lambda: fnn.optim.RMSprop(momentum=float("nan")), lambda: fnn.optim.Adagrad(lr_decay=-1),
                lambda: fnn.optim.Adagrad(initial_accumulator_value=-0.1), lambda: fnn.optim.SGD(clip_norm=0),
                lambda: fnn.optim.SGD(param_groups=[{"params": model.layers[0], "momentom": 0.9}]),
                lambda: fnn.optim.SGD(param_groups=[{"params": model.layers[0], "lr": -1}]),
                lambda: fnn.optim.Adam(param_groups=[{"params": []}])):
        with pytest.raises(ValueError):
            bad()
    with pytest.raises(TypeError):
        fnn.optim.SGD(lr="fast")
    with pytest.raises(TypeError, match="list of dicts"):
        fnn.optim.SGD(param_groups={"params": model.layers[0]})
    with pytest.raises(TypeError, match="'params'"):
        fnn.optim.SGD(param_groups=[{"lr": 0.1}])
    with pytest.raises(TypeError, match="Layers, Parameters"):
        fnn.optim.SGD(param_groups=[{"params": 3}])
    twice = fnn.optim.SGD(param_groups=[{"params": model.layers[0]}, {"params": "0.weight"}])
    with pytest.raises(ValueError, match="more than one"):
        twice.step(model.parameters())
    nothing = fnn.optim.SGD(param_groups=[{"params": "7"}])
    with pytest.raises(ValueError, match="matches no parameter"):
        nothing.step(model.parameters())
    with pytest.raises(ValueError, match="max_norm"):
        fnn.optim.clip_grad_norm(model.parameters(), -1)
    with pytest.raises(ValueError, match="norm_type"):
        fnn.optim.clip_grad_norm(model.parameters(), 1.0, norm_type=0)
    with pytest.raises(TypeError, match="trainable"):
        model.layers[0].trainable = "no"
    model.parameters().flat_grad[0] = np.nan
    with pytest.raises(FloatingPointError):
        fnn.optim.clip_grad_norm(model.parameters(), 1.0, error_if_nonfinite=True)
    assert np.isnan(fnn.optim.clip_grad_norm(model.parameters(), 1.0))   # torch's result: nan


def test_optimizers_by_name():
    for name, cls in (("adamw", fnn.optim.AdamW), ("rmsprop", fnn.optim.RMSprop), ("adagrad", fnn.optim.Adagrad)):
        assert isinstance(fnn.optim.get(name), cls)


def test_a_list_of_parameters_steps_like_the_flat_buffer():
    """step(list of Parameters): one kernel per parameter, with groups and a frozen layer."""
    models = [fnn.Sequential(Dense(4, 5), Tanh(), Dense(5, 3), Dense(3, 2), dtype="float64", seed=0)
              for _ in range(2)]
    opts = [fnn.optim.RMSprop(lr=0.01, momentum=0.9, param_groups=[{"params": m.layers[2], "lr": 0.1}])
            for m in models]
    rng = np.random.default_rng(6)
    for m in models:
        m.layers[3].trainable = False
    for _ in range(5):
        g = rng.standard_normal(models[0].count_params())
        for m in models:
            m.parameters().flat_grad[...] = g
        opts[0].step(models[0].parameters())
        opts[1].step(list(models[1].parameters()))
    for m in models:
        m.layers[3].trainable = True
    a, b = models[0].state_dict(), models[1].state_dict()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-13, atol=1e-15)
    assert np.array_equal(a["3.weight"], fnn.Sequential(Dense(4, 5), Tanh(), Dense(5, 3), Dense(3, 2),
                                                        dtype="float64", seed=0).state_dict()["3.weight"])
