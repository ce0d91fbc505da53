"""Fork safety (fastnn/_kernels/forksafe.py): after a large threaded kernel call, a child
made by multiprocessing's fork runs GEMM and linear right, and the parent keeps
its threads. Each case runs in a fresh interpreter with a timeout, so a deadlock
fails the test instead of hanging pytest."""
import json
import multiprocessing as mp
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    "fork" not in mp.get_all_start_methods() or not os.path.isdir("/proc/self/task"),
    reason="needs the fork start method and Linux's /proc/self/task")

# Where the fastnn under test was imported from (the source tree in an editable install,
# site-packages otherwise; a source tree without built modules would lack the Cython backend).
import fastnn  # noqa: E402
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastnn.__file__)))

# argv: backend, then "pause-fails" to make the Cython pool pause unavailable.
SCRIPT = r"""
import json, multiprocessing as mp, os, sys
import numpy as np
import fastnn as fnn
from fastnn._kernels import forksafe

name, mode = sys.argv[1], sys.argv[2]
k = fnn.get_backend(name)
mod = k.module
if name != "numpy":
    mod.set_num_threads(2)
if name == "cython":
    for m in sys.modules["fastnn._kernels.cython"]._modules.values():
        m._set_straggler_guard(0)       # no single-thread backoff on a busy machine
        if mode == "pause-fails":
            m._omp_pause = lambda: False
rng = np.random.default_rng(0)
a = rng.standard_normal((1024, 512)).astype(np.float32)
b = rng.standard_normal((512, 384)).astype(np.float32)
w = rng.standard_normal((256, 512)).astype(np.float32)
bias = rng.standard_normal(256).astype(np.float32)
ref_mm = a.astype(np.float64) @ b
ref_lin = a.astype(np.float64) @ w.T.astype(np.float64) + bias

def tasks():
    return len(os.listdir("/proc/self/task"))

def error(got, ref):   # max of |got - ref| / (atol + rtol |ref|): <= 1 passes
    return float(np.max(np.abs(got - ref) / (1e-3 + 1e-4 * np.abs(ref))))

def run():
    before = tasks()
    mm, lin = k.matmul(a, b), k.linear(a, w, bias)
    return {"mm": error(mm, ref_mm), "lin": error(lin, ref_lin), "new_threads": tasks() - before,
            "threads_alive": tasks(), "num_threads": mod.get_num_threads() if name != "numpy" else 0}

def child(q):
    out = {"first": run()}
    if name != "numpy":
        mod.set_num_threads(2)          # what a user does to get threads back
        out["restored"] = run()
    out["numba_serial"] = forksafe.numba_serial()
    q.put(out)

run()                                   # warm: the pools start here
ctx = mp.get_context("fork")
q = ctx.Queue()
p = ctx.Process(target=child, args=(q,))
p.start()
try:
    res = q.get(timeout=40)
except Exception:
    res = None
p.join(10)
if p.is_alive():
    p.kill()
print(json.dumps({"child": res, "exitcode": p.exitcode, "parent": run(),
                  "layer": __import__("numba").threading_layer() if name == "numba" else None}))
"""


# The report: predict on a large batch, then predict in a forked child.
MODEL_SCRIPT = r"""
import json, multiprocessing as mp, sys
import numpy as np
import fastnn as fnn
L = fnn.layers
m = fnn.Sequential(L.Dense(512, 512), L.ReLU(), L.Dense(512, 10), backend=sys.argv[1], seed=0)
X = np.random.default_rng(0).random((4096, 512)).astype(np.float32)
m.predict(X)
ctx = mp.get_context("fork")
q = ctx.Queue()
p = ctx.Process(target=lambda: q.put(m.predict(X[:1000]).tolist()))
p.start()
try:
    got = q.get(timeout=40)
except Exception:
    got = None
p.join(10)
if p.is_alive():
    p.kill()
want = m.predict(X[:1000])
same = got is not None and bool(np.allclose(np.asarray(got, np.float32), want, rtol=1e-5, atol=1e-5))
print(json.dumps({"child": same, "exitcode": p.exitcode}))
"""


def _run(backend, mode="plain", script=SCRIPT, **env):
    pytest.importorskip({"numpy": "numpy", "numba": "fastnn._kernels.numba_cpu",
                         "cython": "fastnn._kernels.cython"}[backend])
    environ = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   NUMBA_NUM_THREADS="2", **env)
    try:
        r = subprocess.run([sys.executable, "-c", script, backend, mode], env=environ,
                           capture_output=True, text=True, timeout=60, cwd=os.path.expanduser("~"))
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{backend}: hung after fork (timeout)\n{exc.stderr}")
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["exitcode"] == 0, f"child exit code {out['exitcode']}\n{r.stderr[-3000:]}"
    return out


def _right(res):
    assert res["mm"] <= 1 and res["lin"] <= 1, res


@pytest.mark.parametrize("backend", ["numpy", "numba", "cython"])
def test_forked_child_runs_kernels_and_parent_keeps_threads(backend):
    out = _run(backend)
    child = out["child"]
    _right(child["first"])
    _right(out["parent"])
    if backend == "numpy":
        return
    _right(child["restored"])
    # the parent still has its pool after a threaded call (restarted if it was paused)
    assert out["parent"]["num_threads"] == 2 and out["parent"]["threads_alive"] >= 2, out
    if backend == "cython":          # the child keeps its threads too
        assert child["first"]["num_threads"] == 2 and child["first"]["new_threads"] >= 1, out
    elif out["layer"] == "omp":      # GNU OpenMP: Numba would kill a threaded child
        assert child["numba_serial"] and child["first"]["num_threads"] == 1, out
        assert child["restored"]["new_threads"] == 0, out


@pytest.mark.parametrize("backend", ["numpy", "numba", "cython"])
def test_predict_in_forked_child_after_large_predict(backend):
    out = _run(backend, script=MODEL_SCRIPT)
    assert out["child"] is True, out


def test_numba_workqueue_layer_keeps_threads_in_child():
    out = _run("numba", NUMBA_THREADING_LAYER="workqueue")
    assert out["layer"] == "workqueue"
    child = out["child"]
    _right(child["first"])
    assert not child["numba_serial"] and child["first"]["num_threads"] == 2, out
    _right(out["parent"])


def test_cython_child_drops_to_one_thread_where_the_pool_cannot_pause():
    out = _run("cython", mode="pause-fails")
    child = out["child"]
    _right(child["first"])
    assert child["first"]["num_threads"] == 1 and child["first"]["new_threads"] == 0, out
    _right(child["restored"])           # asking for threads again must not hang it
    assert child["restored"]["new_threads"] == 0, out
    _right(out["parent"])
    assert out["parent"]["num_threads"] == 2 and out["parent"]["threads_alive"] >= 2, out
