"""Keep thread pools from fighting over the cores.

NumPy's OpenBLAS and the OpenMP/Numba pools of the compiled backends each
busy-wait between calls; run side by side they starve each other (we measured
a 20-50x slowdown). While a compiled backend trains or predicts, the BLAS pool
is held to one thread; the numpy backend keeps OpenBLAS's own threading.
"""
import contextlib


@contextlib.contextmanager
def backend_threads(backend):
    if backend.name == "numpy":
        yield
        return
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1, user_api="blas"):
        yield
