"""Keep thread pools from fighting over the cores.

Three pools could run in a fastnn process: the GNU OpenMP pool (libgomp) of the
Cython kernels, Numba's (its 'omp' threading layer is that same libgomp, so one
pool), and numpy's OpenBLAS with its own pthreads (scipy brings a second
OpenBLAS). Every one of them busy-waits after a call: libgomp's threads for
GOMP_SPINCOUNT spins (~10 ms here), OpenBLAS's for 2^28 cycles (~0.13 s). When
a user's code calls numpy between our kernels, each kernel started while the
other pool's thread still spun on the second core: 3 busy threads on 2 cores,
and whichever thread the scheduler parked held up its whole call (we measured
1-20 GFLOP/s for kernels that run at 100+).

What fastnn does:

  * One pool (share_blas_pool). When a compiled backend loads, every OpenBLAS
    loaded in the process that offers openblas_set_threads_callback_function
    (OpenBLAS >= 0.3.27; numpy's and scipy's wheels do) is given a callback
    (fastnn/_kernels/cython/fnn_blaspool.h) that runs its parallel jobs on the
    caller's libgomp pool, the one our kernels use. OpenBLAS still decides how
    many threads a call gets (threadpoolctl, OPENBLAS_NUM_THREADS and
    openblas_set_num_threads work as before) and computes exactly what it
    computed (the same jobs; results are bit-identical); only whose threads run
    them changes, so OpenBLAS's own workers go to sleep for good and never spin
    beside ours. Side effect: numpy's BLAS threads now wait the way libgomp's do
    (OMP_WAIT_POLICY / GOMP_SPINCOUNT apply to them). Set FASTNN_BLAS_POOL=own
    before importing fastnn to leave OpenBLAS's threads alone; an OpenBLAS
    loaded after the backend is covered by calling share_blas_pool() again.
  * While a compiled backend trains or predicts (backend_threads), BLAS is held
    to one thread; the numpy backend keeps OpenBLAS's own threading.
  * Fork safety: importing this module installs the at-fork hooks of
    fastnn/_kernels/forksafe.py (a forked child runs every kernel). A child
    whose OpenMP pool could not be shut down before the fork gets OpenBLAS's
    own threads back (a libgomp region there would hang).
"""
import contextlib
import ctypes
import itertools
import os
import sys
import warnings

from ._kernels import forksafe

forksafe.install()

ENV_POOL = "FASTNN_BLAS_POOL"          # "shared" (default) or "own"
_AFFIXES = list(itertools.product(("", "scipy_"), ("", "64_", "_64")))
_shared = {}                           # OpenBLAS file path -> (setter, callback address)
_state = {"pool": "not yet (no compiled backend loaded)"}
_hooked = False


_controller = [None, -1]   # a threadpoolctl.ThreadpoolController, len(sys.modules) when made


def _blas_controller():
    """A ThreadpoolController over the loaded libraries, made again only after new imports.
    Making one scans every loaded shared library (0.7 ms with torch and scipy loaded: a cost
    of every fit and predict), a limit through a kept one takes 15 us. Libraries arrive with
    imports; one loaded by ctypes alone is seen after the next import."""
    from threadpoolctl import ThreadpoolController
    ctl, seen = _controller
    if ctl is None or seen != len(sys.modules):
        ctl = ThreadpoolController()
        _controller[:] = [ctl, len(sys.modules)]
    return ctl


@contextlib.contextmanager
def backend_threads(backend):
    if backend.name == "numpy":
        yield
        return
    with _blas_controller().limit(limits=1, user_api="blas"):
        yield


def _pool_choice():
    value = os.environ.get(ENV_POOL, "shared").strip().lower()
    if value in ("", "shared", "1", "on", "yes"):
        return "shared"
    if value in ("own", "0", "off", "no"):
        return "own"
    warnings.warn(f"{ENV_POOL}={value!r} is neither 'shared' nor 'own'; using 'shared'")
    return "shared"


def _callback_address():
    """The C callback of the Cython kernels in use (0 where there is none: not built,
    built without OpenMP)."""
    try:
        from ._kernels import cython as cy
    except ImportError:
        return 0
    fn = getattr(cy._mod, "_blas_pool_callback", None)
    return int(fn()) if fn is not None else 0


def _openblas_libraries():
    """[(path, ctypes library)] of every OpenBLAS with its own pthreads pool loaded now."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return []
    out = []
    for lc in ThreadpoolController().lib_controllers:
        if lc.internal_api == "openblas" and getattr(lc, "threading_layer", "") == "pthreads":
            out.append((lc.filepath, lc.dynlib))
    return out


def _setter(lib):
    for prefix, suffix in _AFFIXES:
        fn = getattr(lib, f"{prefix}openblas_set_threads_callback_function{suffix}", None)
        if fn is not None:
            fn.argtypes = [ctypes.c_void_p]
            fn.restype = None
            return fn
    return None


def share_blas_pool():
    """Run the parallel jobs of every loaded OpenBLAS on our OpenMP pool (see the module
    docstring); returns the paths of the libraries now shared. Idempotent; does nothing
    when FASTNN_BLAS_POOL=own or the Cython kernels (with OpenMP) are not there. OpenBLAS
    asks that the callback be set while no other thread is inside a BLAS call: fastnn
    calls this when a compiled backend is first imported."""
    global _hooked
    if _pool_choice() == "own":
        _state["pool"] = f"own ({ENV_POOL}=own)"
        return []
    address = _callback_address()
    if not address:
        _state["pool"] = "own (no Cython kernels with OpenMP)"
        return []
    for path, lib in _openblas_libraries():
        if path in _shared:
            continue
        setter = _setter(lib)
        if setter is None:      # OpenBLAS older than 0.3.27
            continue
        setter(address)
        _shared[path] = (setter, address)
    if not _hooked and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_in_child)   # runs after forksafe's hook
        _hooked = True
    _state["pool"] = "shared" if _shared else "own (no OpenBLAS with a threads callback)"
    return sorted(_shared)


def release_blas_pool():
    """Give every OpenBLAS its own threads back (undoes share_blas_pool for this process)."""
    for setter, _ in _shared.values():
        setter(None)
    _shared.clear()
    _state["pool"] = "own (released)"


def _after_in_child():
    if not forksafe.pool_paused():
        release_blas_pool()


def shared_blas_libraries():
    """Paths of the OpenBLAS libraries whose jobs run on our pool now."""
    return sorted(_shared)


def describe():
    """One line: where BLAS threads come from and the OpenMP wait settings."""
    env = ", ".join(f"{k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
                    if k in os.environ)
    libs = ", ".join(os.path.basename(p) for p in sorted(_shared))
    return f"BLAS pool {_state['pool']}" + (f" [{libs}]" if libs else "") + (f"; {env}" if env else "")
