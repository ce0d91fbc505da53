"""How many threads a parallel Numba kernel may use now; no kernel here.

numba.get_num_threads(), except

  * in a forked child where Numba's threading layer cannot run (GNU OpenMP: Numba
    kills such a child at its first parallel region; see fastnn/_kernels/forksafe.py):
    there every kernel takes its serial path;
  * while backing off after a straggler (the Numba twin of the Cython kernels' guard in
    cython/common.pxi). prange splits the work statically, so when a busy process on the
    other core holds up one of the threads (a scheduler slice, 3-12 ms) the whole call
    waits for it. The threaded GEMM reports each call's time (report()); a call that took
    more than 2.5x and 0.5 ms longer than its work needs at the best rate seen lately
    means a straggler, and the next kernels run on one thread for a span (20 ms, doubling
    up to 1 s while it keeps happening, halving back when calls are on time; and at least 25x
    the delay: beside a spinning process a held-up thread can wait 20 ms, and a probe then
    costs a few percent, not the step), then threads are tried again.
    set_straggler_guard(0) turns this off.
"""
import time

import numba

from .. import forksafe

forksafe.install()

_LATE = 0.0005             # seconds a call may overrun before it counts as held up
_SLOW = 2.5                # ... and this factor over its expected time
_solo_until = 0.0
_solo_span = 0.02
_rate = {}                 # itemsize -> best recent multiply-adds per second on threads


def configured():
    """Threads the kernels are set to use (1 in a fork child where Numba's pool cannot run)."""
    return 1 if forksafe.numba_serial() else numba.get_num_threads()


def usable():
    """Threads the next parallel kernel may use (1: take the serial path)."""
    if forksafe.numba_serial():
        return 1
    n = numba.get_num_threads()
    if n > 1 and _solo_until and time.perf_counter() < _solo_until:
        return 1
    return n


def report(work, seconds, itemsize):
    """After a threaded call of `work` multiply-adds that took `seconds`."""
    global _solo_until, _solo_span
    if seconds <= 0:
        return
    rate = work / seconds
    best = max(rate, _rate.get(itemsize, 0.0) * 0.999)   # forgets a lucky call slowly
    _rate[itemsize] = best
    expected = work / best
    now = time.perf_counter()
    if seconds > expected + _LATE and seconds > _SLOW * expected:
        _solo_until = now + min(max(_solo_span, 25 * (seconds - expected)), 2.0)
        _solo_span = _solo_span * 2 if _solo_span < 0.5 else 1.0
    elif _solo_span > 0.02:
        _solo_span *= 0.5


def set_straggler_guard(late_s):
    """Seconds a threaded call may overrun before backing off (<= 0: never back off)."""
    global _LATE, _solo_until, _solo_span
    late_s = float(late_s)
    _LATE = late_s if late_s > 0 else float("inf")
    _solo_until = 0.0
    _solo_span = 0.02


def straggler_state():
    return {"late_s": _LATE, "solo_for_s": max(0.0, _solo_until - time.perf_counter()),
            "next_span_s": _solo_span, "best_rate": dict(_rate)}
