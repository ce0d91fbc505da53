"""glibc malloc settings for the compiled CPU backends: keep freed memory in the heap.

A training step allocates and frees the same arrays (activations, gradients, GEMM
packing buffers: 100 KiB to a few MiB) again and again. glibc serves blocks that big
with mmap and returns them at free, so each step faults every page in anew (measured
~500 page faults a Transformer step on cython, ~1600 on numba: 20-25% of the step).
Above-default thresholds keep such blocks in the heap for reuse (what PyTorch's and
jemalloc's caching allocators do). FASTNN_MALLOC_TUNING=0 leaves malloc as it is.
"""
import ctypes
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20     # glibc's maximum on 64-bit: larger blocks still use mmap
TRIM_THRESHOLD = 128 << 20    # free heap kept at the top before it is given back

_done = None


def tune():
    """Apply the settings once (Linux/glibc only); True when they are in force."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("FASTNN_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return _done
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return _done
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return _done
