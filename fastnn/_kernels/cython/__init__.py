"""The Cython backend: every kernel of fastnn/_kernels/reference.py, compiled per instruction set.

setup.py compiles the same kernel source (kernels.pxi and its topic files)
three times, as _avx512 (AVX-512 F/DQ/BW/VL + FMA), _avx2 (AVX2 + FMA) and
_generic (no ISA flags). At import this package picks the best module the
running CPU supports, from NumPy's view of the CPU features, and exposes its
kernels under their registry names (NATIVE). FASTNN_CYTHON_ISA=avx512|avx2|generic
forces a choice (falling back, with a warning, if this CPU cannot run it).
"""
import importlib
import os
import warnings

from .. import registry

ISAS = ("avx512", "avx2", "generic")
# The compiled modules' public functions are kernels of the registry, except these.
HELPERS = ("has_openmp", "isa")


def _cpu_features():
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # pragma: no cover - older NumPy layouts
        try:
            from numpy.core._multiarray_umath import __cpu_features__
        except ImportError:
            return {}
    return dict(__cpu_features__)


def cpu_supports(isa):
    """Whether this CPU can run the kernels compiled for isa."""
    f = _cpu_features()
    if isa == "avx512":
        return all(f.get(k) for k in ("AVX512F", "AVX512_SKX", "AVX2", "FMA3"))
    if isa == "avx2":
        return all(f.get(k) for k in ("AVX2", "FMA3"))
    if isa == "generic":
        return True
    raise ValueError(f"unknown ISA {isa!r}; choose one of {ISAS}")


_modules = {}
_import_errors = {}


def kernels_for(isa):
    """The compiled kernel module for isa (ImportError if not built, RuntimeError if
    this CPU cannot run it). Its functions are the kernels, with reference names."""
    if isa not in ISAS:
        raise ValueError(f"unknown ISA {isa!r}; choose one of {ISAS}")
    if not cpu_supports(isa):
        raise RuntimeError(f"this CPU cannot run the {isa} kernels")
    if isa not in _modules:
        mod = importlib.import_module(f"{__name__}._{isa}")
        mod._set_num_threads(_num_threads)
        _modules[isa] = mod
    return _modules[isa]


def _default_threads():
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


_num_threads = _default_threads()


def _choose():
    forced = os.environ.get("FASTNN_CYTHON_ISA", "").strip().lower()
    order = list(ISAS)
    if forced:
        if forced not in ISAS:
            warnings.warn(f"FASTNN_CYTHON_ISA={forced!r} is not one of {ISAS}; ignoring it")
        elif not cpu_supports(forced):
            warnings.warn(f"FASTNN_CYTHON_ISA={forced!r}: this CPU cannot run it; "
                          f"choosing the best supported instead")
        else:
            order = [forced] + [i for i in ISAS if i != forced]
    for isa in order:
        if not cpu_supports(isa):
            continue
        try:
            return isa, kernels_for(isa)
        except ImportError as exc:
            _import_errors[isa] = str(exc)
    raise ImportError("no compiled fastnn Cython kernel module could be imported "
                      f"(build with `pip install .`): {_import_errors}")


_isa, _mod = _choose()


def gemm_isa():
    """The instruction set of the kernels in use: 'avx512', 'avx2' or 'generic'."""
    return _isa


def built_isas():
    """The ISAs whose kernel modules were built and can run on this CPU."""
    out = []
    for isa in ISAS:
        try:
            kernels_for(isa)
        except (ImportError, RuntimeError):
            continue
        out.append(isa)
    return out


def has_openmp():
    """Whether the kernels were built with OpenMP (else they use one thread)."""
    return _mod.has_openmp()


def set_num_threads(n):
    """Threads the GEMM and optimizer kernels may use (default: every usable core)."""
    global _num_threads
    n = int(n)
    if n < 1:
        raise ValueError(f"number of threads must be >= 1, got {n}")
    _num_threads = n
    for mod in _modules.values():
        mod._set_num_threads(n)


def get_num_threads():
    """The thread count set by set_num_threads (1 when built without OpenMP)."""
    return _num_threads if _mod.has_openmp() else 1


def matmul_isa(a, b, trans_a=False, trans_b=False, isa=None, num_threads=None):
    """op(a) @ op(b) with the kernels of a given ISA (None: the one in use) and,
    optionally, an exact thread count. Raw-kernel contract: C-contiguous arrays
    of one float dtype."""
    mod = _mod if isa is None else kernels_for(isa)
    if num_threads is None:
        return mod.matmul(a, b, trans_a, trans_b)
    return mod._matmul_threads(a, b, trans_a, trans_b, int(num_threads))


def fma_peak(seconds=0.2, num_threads=None):
    """GFLOP/s of float32 multiply-adds alone, with this ISA's vectors, on num_threads threads at
    once (default: get_num_threads()): the machine's limit that GEMM-bound benchmarks compare
    against (fnn_peak.h). Turbo clocks make it vary by several percent between calls."""
    n = get_num_threads() if num_threads is None else int(num_threads)
    return _mod._fma_peak(float(seconds), n)[0]


def available():
    return True, ""


# Checked against the registry: a misspelled kernel in the .pxi files raises
# registry.UnknownKernelError here instead of leaving the reference in its place.
NATIVE = registry.overrides("cython", [_mod], HELPERS)
KERNEL_NAMES = tuple(NATIVE)
globals().update(NATIVE)
# Kernels that check their own inputs (the check's usual case in C): Backend uses these
# as backend.<name> in place of the registry's check followed by the raw kernel.
CHECKED = {"matmul": _mod._checked_matmul}
# embedding (rows of an array at given indices) runs on threads for large gathers: the
# Trainer takes shuffled batches with it (Trainer._row_gather)
THREADED_GATHER = True

# One thread pool for our kernels and numpy's BLAS (fastnn/threads.py): OpenBLAS's parallel
# jobs run on this module's OpenMP pool instead of OpenBLAS's own spinning threads.
from ... import threads as _fnn_threads  # noqa: E402

_fnn_threads.share_blas_pool()
