"""Keep thread pools from fighting over the cores.

NumPy's OpenBLAS and the OpenMP/Numba pools of the compiled backends each
busy-wait between calls; run side by side they starve each other (we measured
a 20-50x slowdown). While a compiled backend trains or predicts, the BLAS pool
is held to one thread; the numpy backend keeps OpenBLAS's own threading.

Importing this module (fastnn does) also installs the at-fork hooks of
fastnn/_kernels/forksafe.py: a child made by fork runs every kernel (the
Cython kernels keep their threads; on Numba's GNU OpenMP layer the Numba
kernels run serially in the child). Read that module for the details.
"""
import contextlib

from ._kernels import forksafe

forksafe.install()


@contextlib.contextmanager
def backend_threads(backend):
    if backend.name == "numpy":
        yield
        return
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1, user_api="blas"):
        yield
