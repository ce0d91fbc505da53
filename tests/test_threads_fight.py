"""Threads that never fight (fastnn/threads.py): numpy's OpenBLAS runs its parallel jobs on the
OpenMP pool of our kernels. Behaviour only (no timing): the pool is shared by default and only
then, a user's FASTNN_BLAS_POOL=own wins, numpy's results are bit-identical either way, and
numpy and our kernels still work in a forked child (also one whose pool could not be shut
down), from a second Python thread, and where OpenMP hands out fewer threads than asked.
Cases that could hang run in a fresh interpreter with a timeout."""
import ctypes
import json
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import types
import warnings

import numpy as np
import pytest

import fastnn as fnn
from fastnn import threads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fnn.__file__)))
cy = pytest.importorskip("fastnn._kernels.cython")
threadpoolctl = pytest.importorskip("threadpoolctl")


def _numpy_openblas():
    """numpy's OpenBLAS (ctypes library) if it can take a threads callback, else None."""
    for lc in threadpoolctl.ThreadpoolController().lib_controllers:
        if lc.internal_api == "openblas" and "numpy" in lc.filepath and threads._setter(lc.dynlib):
            return lc
    return None


NUMPY_BLAS = _numpy_openblas()
needs_callback = pytest.mark.skipif(
    NUMPY_BLAS is None or not cy.has_openmp() or NUMPY_BLAS.threading_layer != "pthreads",
    reason="numpy's BLAS is not an OpenBLAS >= 0.3.27 on pthreads, or no OpenMP kernels")


def _installed_callback(lc):
    """The callback OpenBLAS will call now (0: its own threads)."""
    return ctypes.c_void_p.in_dll(lc.dynlib, "openblas_threads_callback_").value or 0


def _threaded_products(rng):
    """numpy products OpenBLAS splits over its threads (and a few LAPACK calls)."""
    out = []
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        for dtype in (np.float32, np.float64):
            a = rng.standard_normal((300, 257)).astype(dtype)
            b = rng.standard_normal((257, 190)).astype(dtype)
            out += [a @ b, a.T @ a, b @ b.T, np.linalg.solve(a[:257] @ a[:257].T + 257 * np.eye(257, dtype=dtype), b)]
        c = rng.standard_normal((200, 200)) + 1j * rng.standard_normal((200, 200))
        out.append(c @ c)
    return out


# ---- in this process

def test_the_cython_modules_carry_the_blas_pool_callback():
    assert hasattr(cy._mod, "_blas_pool_callback"), (
        "the compiled Cython modules predate fnn_blaspool.h: rebuild them "
        "(python setup.py build_ext --inplace)")
    assert (cy._mod._blas_pool_callback() != 0) == cy.has_openmp()


@needs_callback
def test_loading_a_compiled_backend_shares_the_pool():
    if threads._pool_choice() == "own":
        pytest.skip("FASTNN_BLAS_POOL=own in this environment")
    fnn.get_backend("cython")
    assert NUMPY_BLAS.filepath in threads.shared_blas_libraries()
    assert _installed_callback(NUMPY_BLAS) == cy._mod._blas_pool_callback() != 0
    assert "shared" in threads.describe()
    assert threads.share_blas_pool() == threads.shared_blas_libraries()   # idempotent


@needs_callback
def test_numpy_results_bit_identical_with_and_without_the_shared_pool():
    threads.share_blas_pool()
    shared = _threaded_products(np.random.default_rng(0))
    threads.release_blas_pool()
    try:
        assert _installed_callback(NUMPY_BLAS) == 0
        own = _threaded_products(np.random.default_rng(0))
    finally:
        threads.share_blas_pool()
    for s, o in zip(shared, own):
        assert s.dtype == o.dtype and np.array_equal(s, o)


@needs_callback
@pytest.mark.parametrize("backend", ["cython", "numba"])
def test_our_kernels_bit_identical_with_and_without_the_shared_pool(backend):
    be = fnn.get_backend(backend)
    be.module.set_num_threads(2)
    rng = np.random.default_rng(1)
    a = rng.standard_normal((256, 384)).astype(np.float32)
    b = rng.standard_normal((384, 320)).astype(np.float32)

    def run():   # ours with numpy's threaded BLAS between the calls
        out = []
        for _ in range(3):
            out.append(be.matmul(a, b))
            a @ b
        return out

    threads.share_blas_pool()
    shared = run()
    threads.release_blas_pool()
    try:
        own = run()
    finally:
        threads.share_blas_pool()
    for s, o in zip(shared, own):
        assert np.array_equal(s, o)
    np.testing.assert_allclose(shared[0], a.astype(np.float64) @ b, rtol=1e-4, atol=1e-3)


@needs_callback
def test_numpy_and_our_kernels_from_two_python_threads():
    threads.share_blas_pool()
    be = fnn.get_backend("cython")
    be.module.set_num_threads(2)
    rng = np.random.default_rng(2)
    a = rng.standard_normal((256, 300))
    b = rng.standard_normal((300, 280))
    want = a @ b
    errors = []

    def work(ours):
        try:
            for _ in range(15):
                got = be.matmul(a, b) if ours else a @ b
                if not np.allclose(got, want, rtol=1e-10, atol=1e-10):
                    errors.append("wrong result")
        except Exception as exc:   # pragma: no cover - reported below
            errors.append(repr(exc))

    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        ts = [threading.Thread(target=work, args=(ours,)) for ours in (True, False, False)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
    assert not any(t.is_alive() for t in ts), "a thread hung"
    assert not errors, errors


def test_bad_setting_warns_and_keeps_the_default(monkeypatch):
    monkeypatch.setenv(threads.ENV_POOL, "sometimes")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert threads._pool_choice() == "shared"
    assert any(threads.ENV_POOL in str(w.message) for w in caught)


# ---- in a fresh interpreter (the env is read there; a hang fails instead of blocking)

SCRIPT = r"""
import ctypes, json, multiprocessing as mp, sys
import numpy as np, threadpoolctl
import fastnn as fnn
from fastnn import threads

mode = sys.argv[1]
be = fnn.get_backend("cython")
be.module.set_num_threads(2)
if mode == "pause-fails":
    for m in sys.modules["fastnn._kernels.cython"]._modules.values():
        m._omp_pause = lambda: False
nb = fnn.get_backend("numba")
nb.module.set_num_threads(2)
lc = [c for c in threadpoolctl.ThreadpoolController().lib_controllers
      if c.internal_api == "openblas" and "numpy" in c.filepath][0]
rng = np.random.default_rng(0)
a = rng.standard_normal((400, 300)).astype(np.float32)
b = rng.standard_normal((300, 350)).astype(np.float32)
ref = a.astype(np.float64) @ b

def err(x):
    return float(np.max(np.abs(x - ref) / (1e-3 + 1e-4 * np.abs(ref))))

def run():
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        return {"numpy": err(a @ b), "cython": err(be.matmul(a, b)), "numba": err(nb.matmul(a, b)),
                "numpy_again": err(a @ b), "shared": threads.shared_blas_libraries() != [],
                "callback": bool(ctypes.c_void_p.in_dll(lc.dynlib, "openblas_threads_callback_").value)}

out = {"parent": run()}
if mode in ("fork", "pause-fails"):
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=lambda: q.put(run()))
    p.start()
    try:
        out["child"] = q.get(timeout=60)
    except Exception:
        out["child"] = None
    p.join(10)
    if p.is_alive():
        p.kill()
    out["exitcode"] = p.exitcode
    out["parent_after"] = run()
print(json.dumps(out))
"""


def _run(mode, **env):
    pytest.importorskip("fastnn._kernels.numba_cpu")
    environ = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   NUMBA_NUM_THREADS="2", **env)
    environ.pop(threads.ENV_POOL, None)
    environ.update(env)
    try:
        r = subprocess.run([sys.executable, "-c", SCRIPT, mode], env=environ, capture_output=True,
                           text=True, timeout=120, cwd=os.path.expanduser("~"))
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{mode}: hung (timeout)\n{exc.stderr}")
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _right(res):
    assert res is not None
    for k in ("numpy", "cython", "numba", "numpy_again"):
        assert res[k] <= 1, res


@needs_callback
def test_shared_by_default_in_a_fresh_process():
    out = _run("plain")
    _right(out["parent"])
    assert out["parent"]["shared"] and out["parent"]["callback"], out


@needs_callback
@pytest.mark.parametrize("value", ["own", "0"])
def test_user_setting_own_wins(value):
    out = _run("plain", FASTNN_BLAS_POOL=value)
    _right(out["parent"])
    assert not out["parent"]["shared"] and not out["parent"]["callback"], out


@needs_callback
@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs fork")
def test_numpy_and_kernels_in_a_forked_child():
    out = _run("fork")
    assert out["exitcode"] == 0, out
    _right(out["child"])
    assert out["child"]["callback"], out          # the child's pool was shut down cleanly: still shared
    _right(out["parent_after"])


@needs_callback
@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs fork")
def test_child_whose_pool_could_not_pause_gets_openblas_threads_back():
    out = _run("pause-fails")
    assert out["exitcode"] == 0, out
    _right(out["child"])                           # numpy in that child must not hang on libgomp
    assert not out["child"]["callback"] and not out["child"]["shared"], out
    assert out["parent_after"]["callback"], out    # the parent keeps sharing
    _right(out["parent_after"])


@needs_callback
@pytest.mark.parametrize("env", [{"OMP_THREAD_LIMIT": "1"}, {"OMP_DYNAMIC": "true"}])
def test_a_smaller_openmp_team_still_runs_every_blas_job(env):
    # OpenBLAS's jobs wait for each other: the callback must give each a thread of its own
    # even where OpenMP hands out fewer than asked (else numpy would hang here).
    out = _run("plain", **env)
    _right(out["parent"])
    assert out["parent"]["callback"], out


# ---- the straggler guards (a busy process on the other core holds up a worker thread)

def test_numba_guard_backs_off_after_a_held_up_call_and_keeps_results_right():
    nb = pytest.importorskip("fastnn._kernels.numba_cpu")
    from fastnn._kernels.numba_cpu import _threads as nt
    be = fnn.get_backend("numba")
    be.module.set_num_threads(2)
    rng = np.random.default_rng(3)
    a = rng.standard_normal((256, 300))
    b = rng.standard_normal((300, 260))
    nt.set_straggler_guard(0.0005)
    try:
        nt.report(1e6, 1e-4, 8)            # a call on time (or the best rate seen is higher)
        assert nt.usable() == 2
        nt.report(1e6, 0.05, 8)            # the same work 500x slower: held up
        assert nt.usable() == 1 and nt.straggler_state()["solo_for_s"] > 0
        assert be.module.get_num_threads() == 2          # the setting itself is unchanged
        np.testing.assert_allclose(be.matmul(a, b), a @ b, rtol=1e-10, atol=1e-10)
        nt.set_straggler_guard(0)          # off: threads again at once, and no back-off
        assert nt.usable() == 2
        nt.report(1e6, 10.0, 8)
        assert nt.usable() == 2
        np.testing.assert_allclose(be.matmul(a, b), a @ b, rtol=1e-10, atol=1e-10)
    finally:
        nt.set_straggler_guard(0.0005)
        nb.set_num_threads(2)


def test_numba_guard_backs_off_for_25x_a_long_wait():
    """A call held up 50 ms (a scheduler slice beside a busy process) keeps the kernels on one
    thread for 25x that (capped at 2 s), not just the current 20 ms span."""
    pytest.importorskip("fastnn._kernels.numba_cpu")
    from fastnn._kernels.numba_cpu import _threads as nt
    fnn.get_backend("numba").module.set_num_threads(2)
    key = 4                                # float32's key: its best rate is reset below
    saved = nt._rate.get(key)
    nt.set_straggler_guard(0.0005)
    try:
        nt._rate.pop(key, None)
        nt.report(1e6, 1e-4, key)          # on time: best rate 1e10 / s, 0.1 ms for this work
        assert nt.straggler_state()["solo_for_s"] == 0
        nt.report(1e6, 0.05 + 1e-4, key)   # the same work 50 ms late
        solo = nt.straggler_state()["solo_for_s"]
        assert 1.0 < solo <= 2.0, solo     # 25 * 0.05 = 1.25 s, not the 20 ms span
        assert nt.straggler_state()["next_span_s"] == pytest.approx(0.04)
    finally:
        nt._rate.pop(key, None)
        if saved is not None:
            nt._rate[key] = saved
        nt.set_straggler_guard(0.0005)


def test_numba_guard_ignores_calls_that_are_merely_slower_shapes():
    pytest.importorskip("fastnn._kernels.numba_cpu")
    from fastnn._kernels.numba_cpu import _threads as nt
    nt.set_straggler_guard(0.0005)
    fnn.get_backend("numba").module.set_num_threads(2)
    key = 2                                # an itemsize no real GEMM reports (float16)
    try:
        nt.report(1e9, 0.1, key)           # best rate 1e10 / s
        nt.report(1e5, 1e-4, key)          # 10x slower, but 0.09 ms late: a small shape
        nt.report(1e9, 0.2, key)           # 2x slower, a big shape: within 2.5x
        assert nt.usable() == 2
    finally:
        nt._rate.pop(key, None)
        nt.set_straggler_guard(0.0005)


def test_cython_guard_results_right_with_any_wait_counted_as_late():
    mod = cy._mod
    be = fnn.get_backend("cython")
    be.module.set_num_threads(2)
    rng = np.random.default_rng(4)
    a = rng.standard_normal((300, 280)).astype(np.float32)
    b = rng.standard_normal((280, 330)).astype(np.float32)
    want = a.astype(np.float64) @ b
    try:
        mod._set_straggler_guard(1e-12)    # nearly any wait at the end counts: backs off often
        for _ in range(5):                 # threaded and one-thread calls alike stay right
            np.testing.assert_allclose(be.matmul(a, b), want, rtol=1e-4, atol=1e-3)
    finally:
        mod._set_straggler_guard(0.0005)


def _blas_threads():
    return [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]


def test_backend_threads_holds_blas_to_one_thread_and_gives_the_count_back():
    """backend_threads keeps its ThreadpoolController between calls (a new one scans every
    loaded library) and makes another after new imports, which may have loaded a BLAS."""
    before = _blas_threads()
    assert before, "no BLAS library found"
    backend = fnn.get_backend("cython")
    for _ in range(3):
        with threads.backend_threads(backend):
            assert set(_blas_threads()) == {1}
        assert _blas_threads() == before
    kept = threads._blas_controller()
    assert threads._blas_controller() is kept
    sys.modules["_fastnn_test_new_import"] = types.ModuleType("_fastnn_test_new_import")
    try:
        assert threads._blas_controller() is not kept
        with threads.backend_threads(backend):
            assert set(_blas_threads()) == {1}
        assert _blas_threads() == before
    finally:
        del sys.modules["_fastnn_test_new_import"]
