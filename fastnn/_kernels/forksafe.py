"""Fork safety of the compiled backends: a child made by fork (os.fork, multiprocessing's
"fork" start method, DataLoader-style workers, joblib) can run every kernel.

Thread pools do not survive fork: the child has only the thread that forked,
while the runtime's bookkeeping says the pool's threads exist. Unhandled:

  * cython (GNU OpenMP, libgomp): libgomp has no fork handler, so the child's
    first parallel kernel waits forever for the parent's pool threads;
  * numba on its 'omp' threading layer (GNU OpenMP, the default without tbb):
    Numba kills the child (SIGTERM, "Terminating: fork() called from a process
    already using GNU OpenMP") at its first parallel region;
  * numpy (OpenBLAS) has its own fork handler: nothing to do.

What fastnn does (install() registers os.register_at_fork hooks; fastnn/threads.py
calls it when fastnn is imported):

  * before the fork, in the parent: the forking thread's OpenMP pool is shut
    down (omp_pause_resource_all, OpenMP 5.0). The parent's next parallel
    kernel starts a fresh pool (a few tens of microseconds, once), and so does
    the child's: the Cython kernels keep their threads on both sides. Where the
    runtime cannot pause (an OpenMP older than 5.0), the child's Cython kernels
    drop to one thread instead.
  * after the fork, in the child: if the parent had started Numba's threading
    layer and it is GNU OpenMP, the Numba kernels take their serial code paths
    in that child (and its children) for good; numba.set_num_threads(1) is
    called so get_num_threads() says so. Numba's 'workqueue' and 'tbb' layers
    restart their pools in a child, so with them (NUMBA_THREADING_LAYER=workqueue,
    or `pip install tbb`) the child keeps its Numba threads.
  * the parent keeps its thread counts.

Threads in a child: fnn.get_backend(name).module.set_num_threads(n) sets them as
in any process (a worker pool would often choose 1 per child). Two cases cannot
run threads in the child, and there set_num_threads(n) changes the count the
backend reports but the kernels stay on one thread: Numba on GNU OpenMP (Numba
would kill the process), and Cython where the pause failed (libgomp would
hang). For threaded kernels in such workers use the "spawn" or "forkserver"
start method, or a fork-safe Numba threading layer chosen before the first
parallel call.
"""
import os
import sys

_installed = False
_paused = True            # the last before-fork pause worked (or nothing to pause)
_numba_serial = False     # this process is a fork child that must not run Numba threads


def numba_serial():
    """True in a forked child where Numba's threading layer cannot run (GNU OpenMP)."""
    return _numba_serial


def pool_paused():
    """False in a fork child whose inherited OpenMP pool could not be shut down before the
    fork (no OpenMP region may run there; fastnn/threads.py gives OpenBLAS its threads back)."""
    return _paused


def _cython_modules():
    pkg = sys.modules.get("fastnn._kernels.cython")
    return list(getattr(pkg, "_modules", {}).values()) if pkg is not None else []


def _before_fork():
    global _paused
    ok = True
    for mod in _cython_modules():
        pause = getattr(mod, "_omp_pause", None)
        ok = bool(pause()) if pause is not None else False
        if not ok:
            break
    _paused = ok


def _numba_layer_unsafe_after_fork():
    """Whether Numba had started a threading layer that cannot run in a fork child."""
    par = sys.modules.get("numba.np.ufunc.parallel")
    if par is None or not getattr(par, "_is_initialized", False):
        return False
    if getattr(par, "_threading_layer", None) != "omp":
        return False          # workqueue and tbb restart their pools in the child
    omp = sys.modules.get("numba.np.ufunc.omppool")
    return getattr(omp, "openmp_vendor", "GNU") == "GNU"


def _after_in_child():
    global _numba_serial
    if not _paused:
        for mod in _cython_modules():
            mod._forbid_threads()
        sys.modules["fastnn._kernels.cython"].set_num_threads(1)
    if _numba_layer_unsafe_after_fork():
        _numba_serial = True
        import numba
        numba.set_num_threads(1)


def install():
    """Register the at-fork hooks once per process (a no-op where os.fork does not exist)."""
    global _installed
    if _installed or not hasattr(os, "register_at_fork"):
        return
    os.register_at_fork(before=_before_fork, after_in_child=_after_in_child)
    _installed = True
