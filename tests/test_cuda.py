"""The cuda backend: every numba.cuda kernel against the reference, device arrays,
a model that trains on the device step for step like the numpy backend.

With no GPU these run under Numba's CUDA simulator (kernels executed on the CPU,
one Python thread per GPU thread), so shapes stay tiny. The simulator is switched
on here through Numba's config rather than the NUMBA_ENABLE_CUDASIM environment
variable: by now Numba is imported, and a changed NUMBA_* variable makes Numba's
compiler reload its whole config, which would undo the numba backend's tuning.
Only this file sees the simulated backend; fnn.backends() (and so every other
test) lists 'cuda' only where a real GPU is present. Skipped, with the reason,
where numba-cuda is not installed.
"""
import importlib
import sys

import numpy as np
import pytest

import fastnn as fnn
from fastnn import backend as backend_mod
from fastnn._kernels import reference as ref
from fastnn.layers import Dense, ReLU
from conftest import assert_close


def _cuda_backend():
    mod = importlib.import_module("fastnn._kernels.cuda")
    if "numba.cuda" not in sys.modules and mod._installed():
        # fnn.backends() found no GPU driver (else numba.cuda would be imported):
        # use the simulator for this file.
        import numba.core.config as config
        config.ENABLE_CUDASIM = 1
    ok, why = mod.available()
    if not ok:
        pytest.skip(f"cuda backend not available: {why}", allow_module_level=True)
    if "cuda" in fnn.backends():
        return fnn.get_backend("cuda")
    return backend_mod.Backend("cuda", mod)   # the simulator, private to this file


BE = _cuda_backend()
K = BE.raw
from fastnn._kernels.cuda import _device as dev, gemm  # noqa: E402  (after the simulator is chosen)

DTYPES = (np.float32, np.float64)


def rand(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def close(actual, expected, dtype, **kw):
    assert isinstance(actual, np.ndarray), type(actual)
    assert actual.dtype == np.dtype(dtype), actual.dtype
    assert_close(actual, expected, dtype, **kw)


# ------------------------------------------------------------------ availability


def test_simulated_or_real_is_reported():
    assert BE.name == "cuda"
    assert set(BE.overridden) >= {"matmul", "linear", "cross_entropy", "adam_step"}
    assert {"conv2d", "maxpool2d_backward", "lstm_backward"} <= set(BE.overridden)


def test_unavailable_reasons(monkeypatch):
    mod = BE.module
    monkeypatch.setattr(mod, "_installed", lambda: False)
    ok, why = mod.available()
    assert not ok and "fastnn[cuda]" in why
    monkeypatch.undo()
    ok, why = mod._probe.__wrapped__(False, False)
    assert not ok and "no NVIDIA GPU found" in why and "NUMBA_ENABLE_CUDASIM" in why


def test_get_backend_raises_the_reason(monkeypatch):
    monkeypatch.setattr(backend_mod, "_loaded", {})
    monkeypatch.setattr(backend_mod, "_failures", {})
    monkeypatch.setattr(BE.module, "available", lambda: (False, "no NVIDIA GPU found (test)"))
    with pytest.raises(fnn.BackendUnavailable, match="no NVIDIA GPU found"):
        fnn.get_backend("cuda")
    assert "cuda" not in fnn.backends()


# ------------------------------------------------------------------------- GEMM


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mkn", [(5, 7, 3), (33, 9, 17)])
@pytest.mark.parametrize("trans", [(False, False), (True, False), (False, True), (True, True)])
def test_matmul(dtype, mkn, trans):
    rng = np.random.default_rng(sum(mkn))
    (m, k, n), (ta, tb) = mkn, trans
    a = rand(rng, (k, m) if ta else (m, k), dtype)
    b = rand(rng, (n, k) if tb else (k, n), dtype)
    close(K.matmul(a, b, ta, tb), ref.matmul(a, b, ta, tb), dtype)


@pytest.mark.parametrize("config", gemm.CONFIGS)
def test_every_gemm_tile(config):
    rng = np.random.default_rng(1)
    a, b = rand(rng, (37, 19), np.float32), rand(rng, (41, 19), np.float32)
    c = gemm._gemm(dev.to_device(a), dev.to_device(b), False, True, config=config)
    close(dev.to_host(c), a @ b.T, np.float32)


def test_gemm_config_fills_the_gpu():
    assert gemm.choose_config(8192, 8192, sms=132) == gemm.LARGE
    assert gemm.choose_config(1024, 1024, sms=132) == gemm.SMALL
    assert gemm.choose_config(256, 128, sms=132) == gemm.TINY
    assert gemm.choose_config(256, 128) in gemm.CONFIGS


def test_matmul_on_device_stays_on_device():
    rng = np.random.default_rng(2)
    a, b = rand(rng, (6, 5), np.float32), rand(rng, (5, 4), np.float32)
    c = K.matmul(dev.to_device(a), b)
    assert isinstance(c, dev.DeviceArray) and c.shape == (6, 4)
    close(dev.to_host(c), a @ b, np.float32)
    # The checked public kernel takes device arrays too (it validates on the host).
    close(BE.matmul(dev.to_device(a), dev.to_device(b)), a @ b, np.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 7, 3), (33, 9, 17)])
def test_dense_kernels(dtype, shape):
    rng = np.random.default_rng(3)
    n, fin, fout = shape
    x, w, b = rand(rng, (n, fin), dtype), rand(rng, (fout, fin), dtype), rand(rng, fout, dtype)
    dy = rand(rng, (n, fout), dtype)
    close(K.linear(x, w, b), ref.linear(x, w, b), dtype)
    close(K.linear(x, w, None), ref.linear(x, w, None), dtype)
    close(K.bias_add(dy, b), ref.bias_add(dy, b), dtype)
    close(K.bias_grad(dy), ref.bias_grad(dy), dtype)
    for need_dx in (True, False):
        got, want = K.linear_backward(dy, x, w, need_dx), ref.linear_backward(dy, x, w, need_dx)
        for g, e in zip(got, want):
            if e is None:
                assert g is None
            else:
                close(g, e, dtype)


# ------------------------------------------------------------------ activations

ACTS = [("step", {}), ("sigmoid", {}), ("tanh", {}), ("relu", {}),
        ("leaky_relu", {"alpha": 0.2}), ("softmax", {})]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,kw", ACTS)
def test_activation_and_backward(dtype, name, kw):
    rng = np.random.default_rng(4)
    x = rand(rng, (5, 7), dtype, scale=3.0)
    x[0, :3] = [0.0, 40.0, -40.0]                    # the edge and saturation
    dy = rand(rng, (5, 7), dtype)
    y = getattr(K, name)(x, **kw)
    y_ref = getattr(ref, name)(x, **kw)
    close(y, y_ref, dtype)
    close(getattr(K, name + "_backward")(dy, x, y_ref, **kw),
          getattr(ref, name + "_backward")(dy, x, y_ref, **kw), dtype)


# ----------------------------------------------------------------------- losses


@pytest.mark.parametrize("dtype", DTYPES)
def test_losses(dtype):
    rng = np.random.default_rng(5)
    pred, target = rand(rng, (33, 9), dtype), rand(rng, (33, 9), dtype)
    probs = rng.uniform(size=(33, 9)).astype(dtype)
    labels = rng.integers(0, 9, 33)
    rows = rng.dirichlet(np.ones(9), 33).astype(dtype)
    cases = [("mse", pred, target), ("binary_cross_entropy", pred * 5, probs),
             ("cross_entropy", pred, labels), ("cross_entropy", pred, rows)]
    for name, a, b in cases:
        loss, grad = getattr(K, name)(a, b)
        loss_ref, grad_ref = getattr(ref, name)(a, b)
        assert isinstance(loss, float)
        assert abs(loss - loss_ref) <= (1e-5 if dtype == np.float32 else 1e-12) * (1 + abs(loss_ref))
        close(grad, grad_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_is_stable_for_huge_logits(dtype):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4], [5.0, 5.0, 5.0]], dtype)
    labels = np.array([1, 2, 0])
    loss, grad = K.cross_entropy(logits, labels)
    loss_ref, grad_ref = ref.cross_entropy(logits, labels)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    assert abs(loss - loss_ref) <= 1e-6 * abs(loss_ref)
    close(grad, grad_ref, dtype)
    loss, _ = K.binary_cross_entropy(logits, np.ones_like(logits))
    assert np.isfinite(loss)


# ------------------------------------------------------------------- optimizers

SGD_CASES = [dict(momentum=0.0), dict(momentum=0.9), dict(momentum=0.9, nesterov=True, weight_decay=0.01)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("on_device", [False, True])
def test_optimizer_steps(dtype, on_device):
    rng = np.random.default_rng(6)
    n = 37
    for kw in SGD_CASES:
        p, g, v = rand(rng, n, dtype), rand(rng, n, dtype), rand(rng, n, dtype)
        want_p, want_v = p.copy(), v.copy()
        for _ in range(2):
            ref.sgd_step(want_p, g, want_v, 0.1, **kw)
        bufs = [dev.to_device(a) if on_device else a.copy() for a in (p, v)]
        for _ in range(2):
            K.sgd_step(bufs[0], g, bufs[1], 0.1, **kw)
        close(dev.to_host(bufs[0]), want_p, dtype)
        close(dev.to_host(bufs[1]), want_v, dtype)
    p, g = rand(rng, n, dtype), rand(rng, n, dtype)
    m, v = np.zeros(n, dtype), np.zeros(n, dtype)
    want = [p.copy(), m.copy(), v.copy()]
    bufs = [dev.to_device(a) if on_device else a.copy() for a in (p, m, v)]
    for t in (1, 2, 3):
        ref.adam_step(*want[:1], g, *want[1:], 1e-2, 0.9, 0.999, 1e-8, 0.01, t)
        K.adam_step(bufs[0], g, bufs[1], bufs[2], 1e-2, 0.9, 0.999, 1e-8, 0.01, t)
    for got, exp in zip(bufs, want):
        close(dev.to_host(got), exp, dtype)


# ---------------------------------------------------------------- device arrays


def test_device_array_surface():
    host = np.arange(12, dtype=np.float32)
    d = dev.to_device(host)
    view = d[2:8].reshape(2, -1)
    assert view.shape == (2, 3) and view.ndim == 2 and view.size == 6 and len(view) == 2
    view += np.ones((2, 3), np.float32)
    view[...] = dev.to_host(view) * 2
    d[0:2].fill(-1)
    expect = host.copy()
    expect[2:8] = (expect[2:8] + 1) * 2
    expect[:2] = -1
    np.testing.assert_array_equal(np.asarray(d), expect)
    c = d.copy()
    c.fill(0)
    assert np.asarray(d)[5] == expect[5]
    assert dev.to_host(host) is host
    z = dev.zeros((3, 2), np.float64)
    assert z.shape == (3, 2) and not np.asarray(z).any()


def test_host_fallback_kernels_take_device_arrays():
    # Every kernel has a CUDA version now; the fallback stays for kernels added
    # to the reference later: check it on one anyway.
    conv1d = BE.module._host_fallback("conv1d")
    assert conv1d.host_fallback
    rng = np.random.default_rng(7)
    x, w, b = rand(rng, (2, 3, 9), np.float32), rand(rng, (4, 3, 3), np.float32), rand(rng, 4, np.float32)
    y = conv1d(dev.to_device(x), dev.to_device(w), dev.to_device(b), 1, 1)
    assert isinstance(y, dev.DeviceArray)
    close(dev.to_host(y), ref.conv1d(x, w, b, 1, 1), np.float32)
    close(conv1d(x, w, b, 1, 1), ref.conv1d(x, w, b, 1, 1), np.float32)


# ------------------------------------------------------------------------ models


def _tiny(backend, dtype="float64"):
    return fnn.Sequential(Dense(4, 8), ReLU(), Dense(8, 3), backend=backend, dtype=dtype, seed=3)


@pytest.mark.parametrize("make_opt", [lambda: fnn.optim.SGD(lr=0.1, momentum=0.9),
                                      lambda: fnn.optim.Adam(lr=0.01)], ids=["sgd", "adam"])
def test_model_trains_step_for_step_like_numpy(make_opt):
    rng = np.random.default_rng(8)
    X, y = rng.standard_normal((12, 4)), rng.integers(0, 3, 12)
    gpu, cpu = _tiny(BE), _tiny("numpy")
    assert isinstance(gpu.parameters().flat_data, dev.DeviceArray)
    assert isinstance(gpu.parameters()[0].grad, dev.DeviceArray)
    opt_gpu, opt_cpu = make_opt(), make_opt()
    for step in range(3):
        xb, yb = X[4 * step:4 * step + 4], y[4 * step:4 * step + 4]
        losses = []
        for model, opt, kernels in ((gpu, opt_gpu, K), (cpu, opt_cpu, ref)):
            out = model.forward(xb)
            loss, grad = kernels.cross_entropy(out, dev.to_device(yb) if model is gpu else yb)
            model.zero_grad()
            model.backward(grad)
            opt.step(model.parameters())
            losses.append(loss)
        assert abs(losses[0] - losses[1]) < 1e-12
        for name, want in cpu.state_dict().items():
            got = gpu.state_dict()[name]
            assert isinstance(got, np.ndarray)
            assert_close(got, want, np.float64)
    state = opt_gpu._state[id(gpu.parameters().flat_data)][1]
    assert all(isinstance(s, dev.DeviceArray) for s in state)


def test_fit_predict_evaluate_save_load(tmp_path):
    rng = np.random.default_rng(9)
    X, y = rng.standard_normal((16, 4)), rng.integers(0, 3, 16)
    histories, models = [], []
    for backend in (BE, "numpy"):
        model = _tiny(backend)
        trainer = fnn.Trainer(model, loss="cross_entropy", optimizer=fnn.optim.SGD(lr=0.1))
        histories.append(trainer.fit(X, y, epochs=1, batch_size=8, progress=False).history)
        histories[-1]["eval"] = [trainer.evaluate(X, y)["loss"]]
        models.append(model)
    for key in ("loss", "accuracy", "eval"):
        assert abs(histories[0][key][0] - histories[1][key][0]) < 1e-12, key
    gpu, cpu = models
    out = gpu.predict(X)
    assert isinstance(out, np.ndarray)
    assert_close(out, cpu.predict(X), np.float64)
    path = tmp_path / "m.safetensors"
    gpu.save(path)
    again = fnn.load(path, backend=BE)
    assert again.backend is BE
    assert_close(again.predict(X), out, np.float64, rtol=0, atol=0)
    again.load_state_dict(cpu.state_dict())
    assert_close(again.predict(X), cpu.predict(X), np.float64)


def test_float32_mse_model_on_device():
    rng = np.random.default_rng(10)
    X, y = rng.standard_normal((8, 4)).astype(np.float32), rng.standard_normal((8, 3))
    gpu, cpu = _tiny(BE, "float32"), _tiny("numpy", "float32")
    for model in (gpu, cpu):
        fnn.Trainer(model, loss="mse", optimizer=fnn.optim.Adam(lr=0.01)).fit(
            X, y, epochs=1, batch_size=8, shuffle=False, progress=False)
    assert_close(gpu.predict(X), cpu.predict(X), np.float32, rtol=1e-4, atol=1e-5)


def test_gpu_bench_smoke(tmp_path, capsys):
    import importlib.util
    import json
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_bench.py"
    spec = importlib.util.spec_from_file_location("gpu_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    bench.main(["--smoke", "--out", str(out), "--sizes", "8", "--batches", "16", "--samples", "16"])
    result = json.loads(out.read_text())
    assert [r["n"] for r in result["gemm"]] == [8] and result["gemm"][0]["max_rel_err"] < 1e-5
    assert result["mlp"]["rows"][0]["batch"] == 16
    assert "float32 GEMM" in capsys.readouterr().out
