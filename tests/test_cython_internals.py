"""The Cython backend's internals: every kernel of every ISA module this CPU runs
(avx512, avx2, generic) against the NumPy reference, the GEMM's raw trans flags,
edge tiles, thread counts and block sizes, and numerically hard inputs."""
import itertools
import numpy as np
import pytest

from fastnn._kernels import reference as ref
from conftest import assert_close

cy = pytest.importorskip("fastnn._kernels.cython")

ISAS = cy.built_isas()
DTYPES = (np.float32, np.float64)


def close(actual, expected, dtype, rtol=None, atol=None):
    """conftest.assert_close, and the dtype must be the expected one."""
    assert np.asarray(actual).dtype == np.asarray(expected).dtype, (np.asarray(actual).dtype, expected.dtype)
    assert_close(actual, expected, dtype, rtol=rtol, atol=atol)


@pytest.fixture(params=ISAS)
def mod(request):
    return cy.kernels_for(request.param)


def test_dispatch_names():
    assert cy.gemm_isa() in cy.ISAS
    assert "generic" in ISAS
    for name in cy.KERNEL_NAMES:
        assert name in ref.KERNELS, name
        assert callable(getattr(cy, name)), name
    assert cy.get_num_threads() >= 1


def _gemm_case(rng, m, n, k, ta, tb, dtype):
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    return a, b


GEMM_SIZES = [(1, 1, 1), (7, 7, 7), (1, 33, 7), (33, 1, 31), (31, 33, 95), (95, 257, 33),
              (257, 95, 385), (33, 257, 1), (129, 70, 600)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
def test_gemm_raw_flags(mod, dtype, ta, tb):
    rng = np.random.default_rng(0)
    for m, n, k in GEMM_SIZES:
        a, b = _gemm_case(rng, m, n, k, ta, tb, dtype)
        expected = ref.matmul(a, b, ta, tb)
        rtol = 1e-4 * max(1.0, np.sqrt(k) / 8) if dtype == np.float32 else 1e-10
        close(mod.matmul(a, b, ta, tb), expected, dtype, rtol=rtol, atol=rtol * np.sqrt(k))
        for nt in (1, 2, 3):
            close(mod._matmul_threads(a, b, ta, tb, nt), expected, dtype,
                  rtol=rtol, atol=rtol * np.sqrt(k))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_small_blocks_many_threads(mod, dtype):
    """Tiny block sizes force every jc/pc/ic loop to run many times."""
    old = mod._get_blocking()[np.dtype(dtype).name]
    old_min = mod._get_blocking()["parallel_min_work"]
    old_direct = mod._get_blocking()["direct_b_tiles"]
    rng = np.random.default_rng(1)
    try:
        mod._set_blocking(np.dtype(dtype).name, 16, 24, 40)
        mod._set_parallel_min_work(1)
        mod._set_strips_per_thread(3)
        for direct, split, (m, n) in itertools.product((0, 1000), (0, 1), ((70, 90), (90, 70))):
            mod._set_direct_b_tiles(direct)
            mod._set_split_by_packing(split)     # both ways of sharing C between threads
            for ta in (False, True):
                for tb in (False, True):
                    a, b = _gemm_case(rng, m, n, 101, ta, tb, dtype)
                    for nt in (1, 2, 4):
                        close(mod._matmul_threads(a, b, ta, tb, nt), ref.matmul(a, b, ta, tb),
                              dtype, rtol=1e-4 if dtype == np.float32 else 1e-10, atol=1e-3)
    finally:
        mod._set_split_by_packing(True)
        mod._set_blocking(np.dtype(dtype).name, *old)
        mod._set_parallel_min_work(old_min)
        mod._set_strips_per_thread(1)
        mod._set_direct_b_tiles(old_direct)


def test_matmul_isa_forcing():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((40, 50))
    b = rng.standard_normal((50, 30))
    for isa in ISAS:
        assert cy.kernels_for(isa).isa() == isa
        close(cy.matmul_isa(a, b, False, False, isa), a @ b, np.float64)
        close(cy.matmul_isa(a.T.copy(), b, True, False, isa, num_threads=2), a @ b, np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense(mod, dtype):
    rng = np.random.default_rng(3)
    for n, fin, fout in [(1, 1, 1), (7, 33, 5), (33, 257, 7), (257, 7, 33)]:
        x = rng.standard_normal((n, fin)).astype(dtype)
        w = rng.standard_normal((fout, fin)).astype(dtype)
        b = rng.standard_normal(fout).astype(dtype)
        dy = rng.standard_normal((n, fout)).astype(dtype)
        r = 1e-4 if dtype == np.float32 else 1e-10
        close(mod.linear(x, w, b), ref.linear(x, w, b), dtype, rtol=r, atol=r * 20)
        close(mod.linear(x, w, None), ref.linear(x, w, None), dtype, rtol=r, atol=r * 20)
        close(mod.bias_add(x, x[0].copy()), ref.bias_add(x, x[0]), dtype)
        close(mod.bias_grad(dy), ref.bias_grad(dy), dtype, atol=1e-4 if dtype == np.float32 else 1e-12)
        for need_dx in (True, False):
            got = mod.linear_backward(dy, x, w, need_dx)
            exp = ref.linear_backward(dy, x, w, need_dx)
            assert (got[0] is None) == (exp[0] is None)
            for g, e in zip(got, exp):
                if e is not None:
                    close(g, e, dtype, rtol=r, atol=r * 20)


ACTS = ["step", "sigmoid", "tanh", "relu", "leaky_relu", "softmax"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ACTS)
def test_activations(mod, dtype, name):
    rng = np.random.default_rng(4)
    for shape in [(1, 1), (7, 33), (33, 257), (3, 1000)]:
        x = (rng.standard_normal(shape) * 4).astype(dtype)
        x.flat[::7] = rng.uniform(-1e-3, 1e-3, size=x.flat[::7].shape)
        x.flat[::11] = rng.choice([-100.0, 100.0, -1e4, 1e4, 0.0, 0.3, -0.6], size=x.flat[::11].shape)
        dy = rng.standard_normal(shape).astype(dtype)
        kwargs = {"alpha": 0.2} if name == "leaky_relu" else {}
        y = getattr(mod, name)(x, **kwargs)
        close(y, getattr(ref, name)(x, **kwargs), dtype)
        yr = getattr(ref, name)(x, **kwargs)
        close(getattr(mod, name + "_backward")(dy, x, yr, **kwargs),
              getattr(ref, name + "_backward")(dy, x, yr, **kwargs), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_exp_tanh_accuracy(mod, dtype):
    """The vector exp/tanh: every magnitude from tiny to overflow."""
    x = np.concatenate([np.linspace(-30, 30, 20001), np.geomspace(1e-30, 800, 5000),
                        -np.geomspace(1e-30, 800, 5000), [0.0, np.inf, -np.inf]]).astype(dtype)[None, :]
    tol = dict(rtol=4e-7, atol=1e-30) if dtype == np.float32 else dict(rtol=2e-15, atol=1e-300)
    with np.errstate(over="ignore"):
        close(mod.tanh(x), np.tanh(x), dtype, **tol)
        close(mod.sigmoid(x), ref.sigmoid(x), dtype, **tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_losses(mod, dtype):
    rng = np.random.default_rng(5)
    for n, c in [(1, 1), (7, 10), (33, 257), (128, 10)]:
        p = rng.standard_normal((n, c)).astype(dtype)
        t = rng.standard_normal((n, c)).astype(dtype)
        lv, g = mod.mse(p, t)
        lr, gr = ref.mse(p, t)
        assert isinstance(lv, float)
        assert abs(lv - lr) <= 1e-5 * abs(lr) + 1e-7
        close(g, gr, dtype)
        labels = rng.integers(0, c, size=n).astype(np.int64)
        soft = rng.random((n, c)).astype(dtype)
        soft /= soft.sum(axis=1, keepdims=True)
        for scale in (1.0, 1e4):
            z = (p * scale).astype(dtype)
            for lab in (labels, soft):
                lv, g = mod.cross_entropy(z, lab)
                lr, gr = ref.cross_entropy(z, lab)
                assert isinstance(lv, float) and np.isfinite(lv)
                assert abs(lv - lr) <= 1e-5 * abs(lr) + 1e-6, (lv, lr)
                close(g, gr, dtype)
            tb = rng.random((n, c)).astype(dtype)
            lv, g = mod.binary_cross_entropy(z, tb)
            lr, gr = ref.binary_cross_entropy(z, tb)
            assert isinstance(lv, float) and np.isfinite(lv)
            assert abs(lv - lr) <= 1e-5 * abs(lr) + 1e-6, (lv, lr)
            close(g, gr, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 33, 300_001])
def test_optimizers(mod, dtype, n):
    rng = np.random.default_rng(6)
    for momentum, nesterov, wd in [(0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 1e-2), (0.0, False, 1e-3)]:
        p, g, v = (rng.standard_normal(n).astype(dtype) for _ in range(3))
        p2, v2 = p.copy(), v.copy()
        mod.sgd_step(p, g, v, 0.1, momentum, nesterov, wd)
        ref.sgd_step(p2, g, v2, 0.1, momentum, nesterov, wd)
        close(p, p2, dtype)
        close(v, v2, dtype)
    for wd in (0.0, 1e-2):
        p, g, m = (rng.standard_normal(n).astype(dtype) for _ in range(3))
        v = rng.random(n).astype(dtype)
        p2, m2, v2 = p.copy(), m.copy(), v.copy()
        for t in (1, 2, 10):
            mod.adam_step(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, wd, t)
            ref.adam_step(p2, g, m2, v2, 1e-3, 0.9, 0.999, 1e-8, wd, t)
        close(p, p2, dtype)
        close(m, m2, dtype)
        close(v, v2, dtype)


def test_backend_registry_uses_cython():
    from fastnn import backend
    be = backend.get_backend("cython")
    assert set(cy.KERNEL_NAMES) <= set(be.overridden)
    rng = np.random.default_rng(7)
    a = rng.standard_normal((33, 7)).astype(np.float32)
    b = rng.standard_normal((33, 5)).astype(np.float32)
    close(be.matmul(a.T, b), a.T @ b, np.float32)     # a.T view: checks.py flips the flag
    close(be.matmul(b.T, a), b.T @ a, np.float32)


def test_set_num_threads_roundtrip():
    old = cy.get_num_threads()
    try:
        cy.set_num_threads(1)
        assert cy.get_num_threads() == 1
        with pytest.raises(ValueError):
            cy.set_num_threads(0)
    finally:
        cy.set_num_threads(old)


@pytest.mark.parametrize("isa", ISAS)
def test_env_forces_isa(isa, tmp_path):
    """FASTNN_CYTHON_ISA picks the module at import (checked in a fresh interpreter)."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, FASTNN_CYTHON_ISA=isa)
    code = ("import numpy as np, fastnn._kernels.cython as cy; a = np.ones((3, 4)); "
            "assert float(cy.matmul(a, a, False, True).sum()) == 36.0; print(cy.gemm_isa())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)  # not the source tree: it has no built modules
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == isa


def test_straggler_guard_keeps_results_right():
    """Backing off to one thread (forced with a zero lateness budget) changes no result."""
    mod = cy.kernels_for(cy.gemm_isa())
    rng = np.random.default_rng(8)
    a = rng.standard_normal((300, 200))
    b = rng.standard_normal((200, 250))
    p, g, v = (rng.standard_normal(300_001) for _ in range(3))
    p2, v2 = p.copy(), v.copy()
    try:
        mod._set_straggler_guard(1e-12)   # any wait counts as late
        for _ in range(5):
            close(mod._matmul_threads(a, b, False, False, 2), a @ b, np.float64)
        mod.sgd_step(p, g, v, 0.1, 0.9, False, 0.0)
        ref.sgd_step(p2, g, v2, 0.1, 0.9, False, 0.0)
        close(p, p2, np.float64)
        assert mod._straggler_state()["late_s"] == 1e-12
    finally:
        mod._set_straggler_guard(0.0005)


@pytest.mark.parametrize("threads", [1, 2])
def test_the_fma_limit_is_a_plausible_rate(mod, threads):
    """_fma_peak (fnn_peak.h) is a positive rate no CPU core passes: 64 float32 FLOPs a cycle
    at 8 GHz is 512 GFLOP/s a thread. A loop gcc folded (the first version, timed at 3e6 GFLOP/s)
    breaks the bound; load on the machine only lowers the rate, so this cannot flake."""
    limit, team = mod._fma_peak(0.02, threads)
    assert team == (threads if mod.has_openmp() else 1)
    assert np.isfinite(limit) and 0 < limit < 512 * team, limit


def test_the_fma_limit_counts_the_threads_that_ran(tmp_path):
    """Under an OpenMP thread limit (or a build without OpenMP) fewer threads run than asked:
    the rate counts those, not the request (it read twice one thread's rate before)."""
    import subprocess
    import sys
    code = ("from fastnn._kernels import cython as cy\n"
            "print(*(cy.kernels_for(i)._fma_peak(0.01, 2)[1] for i in cy.built_isas()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "OMP_THREAD_LIMIT": "1"},
                         cwd=tmp_path).stdout.split()   # not the source tree: it has no built modules
    assert out and set(out) == {"1"}, out


@pytest.mark.parametrize("threads", [0, -1, 1000])
def test_the_fma_limit_rejects_a_bad_thread_count(mod, threads):
    with pytest.raises(ValueError, match="nthreads"):
        mod._fma_peak(0.01, threads)
