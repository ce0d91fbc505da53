"""How many threads a parallel Numba kernel may use now; no kernel here.

numba.get_num_threads(), except in a forked child where Numba's threading layer
cannot run (GNU OpenMP: Numba kills such a child at its first parallel region;
see fastnn/_kernels/forksafe.py): there every kernel takes its serial path.
"""
import numba

from .. import forksafe

forksafe.install()


def usable():
    """Threads the next parallel kernel may use (1: take the serial path)."""
    return 1 if forksafe.numba_serial() else numba.get_num_threads()
