# Shared declarations for every kernel file: the C header (microkernels, vector exp/log, OpenMP shims), NumPy's C-API and small helpers; no reference counterpart.
cimport cython
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.math cimport log, sqrt, sqrtf

cnp.import_array()

cdef extern from "fnn_simd.h" nogil:
    enum:
        FNN_MR_S    # tile and block sizes: fnn_tiles.h, generated from _kernels/tiles.py
        FNN_NR_S
        FNN_KC_S
        FNN_MC_S
        FNN_NC_S
        FNN_MR_D
        FNN_NR_D
        FNN_KC_D
        FNN_MC_D
        FNN_NC_D
        FNN_DIRECT_B_TILES
    const char *fnn_isa_name()
    int fnn_have_openmp()
    int fnn_omp_pause()
    int fnn_team_size()
    int fnn_team_rank()
    long fnn_atomic_next(long *counter)
    double fnn_now()
    void *fnn_aligned_alloc(size_t nbytes)
    void fnn_aligned_free(void *p)
    void fnn_ukr_s(long k, const float *a, const float *b, long ldb, float *c, long ldc, int m, int n, int acc)
    void fnn_ukr_d(long k, const double *a, const double *b, long ldb, double *c, long ldc, int m, int n, int acc)
    float fnn_expf(float x)
    double fnn_exp(double x)
    float fnn_tanhf(float x)
    double fnn_tanh(double x)
    float fnn_log1p01f(float e)
    double fnn_log1p01(double e)

# Threads the parallel kernels may use (set from fastnn._kernels.cython.set_num_threads).
cdef int _num_threads = 1


# Straggler guard. On a machine shared with other busy processes, a worker
# thread can wait a whole scheduler tick (4-12 ms) before it runs, or lose its
# core halfway through its share, and every parallel region must wait for it.
# Work is handed out dynamically, so the master then does what is left and only
# the wait is lost. When the master, out of work, waited more than _LATE seconds
# and more than a quarter of its own working time for the others (a late worker
# or one descheduled in mid-chunk: a busy process on the other core), the next
# kernels run on one thread for _solo_span seconds, and for at least 25 times
# the wait (beside a spinning process a held-up worker can wait 20 ms: a probe
# then costs a few percent, not the step), then threads are tried again. The
# span doubles (up to 1 s) while it keeps happening and halves back toward
# 20 ms with each region that is on time. _set_straggler_guard(0) turns this off.
cdef enum:
    _MAX_TEAM = 64
cdef double _LATE = 0.0005
cdef double _solo_until = 0.0
cdef double _solo_span = 0.02
cdef double _region_start = 0.0   # when _team_size last handed out a team
# Set in a forked child whose inherited OpenMP pool could not be paused before
# the fork (fastnn/_kernels/forksafe.py): a parallel region there would hang.
cdef bint _threads_forbidden = 0


cdef inline int _team_size(int nthreads) noexcept nogil:
    """The threads to use now: nthreads, or 1 while backing off after a straggler."""
    global _region_start
    if _threads_forbidden:
        return 1
    if nthreads > _MAX_TEAM:
        nthreads = _MAX_TEAM
    if nthreads > 1 and _solo_until > 0 and fnn_now() < _solo_until:
        return 1
    if nthreads > 1:
        _region_start = fnn_now()
    return nthreads


cdef void _team_report(const long *claimed, const double *master_done, int n) noexcept nogil:
    """After a parallel region: claimed[i] work items per thread (kept for the callers;
    the wait says it all), master_done[0] when thread 0 ran out of work."""
    global _solo_until, _solo_span
    cdef double now = fnn_now()
    cdef double waited = now - master_done[0]
    cdef double worked = master_done[0] - _region_start
    cdef double span
    if waited > _LATE and waited > 0.25 * worked:
        span = 25 * waited if 25 * waited > _solo_span else _solo_span
        _solo_until = now + (span if span < 2.0 else 2.0)
        _solo_span = _solo_span * 2 if _solo_span < 0.5 else 1.0
    elif _solo_span > 0.02:
        _solo_span = _solo_span * 0.5


def _set_straggler_guard(double late_s):
    """Seconds of worker lateness that trigger single-thread backoff (<= 0: never back off)."""
    global _LATE, _solo_until, _solo_span
    _LATE = late_s if late_s > 0 else 1e300
    _solo_until = 0.0
    _solo_span = 0.02


def _straggler_state():
    return {"late_s": _LATE, "solo_for_s": max(0.0, _solo_until - fnn_now()) if _solo_until else 0.0,
            "next_span_s": _solo_span}


def _set_num_threads(int n):
    global _num_threads
    _num_threads = n if n > 0 else 1


def isa():
    """The instruction set this module was compiled for: avx512, avx2 or generic."""
    return fnn_isa_name().decode()


def has_openmp():
    """Whether this module was built with OpenMP (else it runs on one thread)."""
    return bool(fnn_have_openmp())


def _omp_pause():
    """Before fork: end this thread's OpenMP thread pool (fnn_omp_pause in
    fnn_simd.h), so a forked child starts its own. True if done (or no pool)."""
    return fnn_omp_pause() == 0


cdef extern from "fnn_blaspool.h" nogil:
    void *fnn_blas_pool_callback()


def _blas_pool_callback():
    """Address of the C callback that runs OpenBLAS's parallel jobs on this module's OpenMP
    pool (fnn_blaspool.h; installed by fastnn/threads.py), or 0 when built without OpenMP."""
    return <size_t> fnn_blas_pool_callback() if fnn_have_openmp() else 0


def _forbid_threads():
    """In a forked child with a stale OpenMP pool: every kernel on one thread, for good."""
    global _threads_forbidden, _num_threads
    _threads_forbidden = 1
    _num_threads = 1


cdef inline bint _is_f32(cnp.ndarray x) noexcept:
    return cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32


cdef inline cnp.ndarray _empty_like(cnp.ndarray x):
    return cnp.PyArray_EMPTY(cnp.PyArray_NDIM(x), cnp.PyArray_DIMS(x), cnp.PyArray_TYPE(x), 0)


cdef inline cnp.ndarray _empty2(Py_ssize_t rows, Py_ssize_t cols, int typenum):
    cdef cnp.npy_intp dims[2]
    dims[0] = rows
    dims[1] = cols
    return cnp.PyArray_EMPTY(2, dims, typenum, 0)


cdef inline cnp.ndarray _empty1(Py_ssize_t n, int typenum):
    cdef cnp.npy_intp dims[1]
    dims[0] = n
    return cnp.PyArray_EMPTY(1, dims, typenum, 0)


cdef inline floating _exp(floating x) noexcept nogil:
    if floating is float:
        return fnn_expf(x)
    else:
        return fnn_exp(x)


cdef inline floating _sqrt(floating x) noexcept nogil:
    # sqrtf for float: libc's sqrt would promote the whole loop to double (half the lanes)
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef extern from "fnn_vec.h":
    float fnn_vsum_s(const float *x, long n) nogil
    double fnn_vsum_d(const double *x, long n) nogil
    float fnn_vmax_s(const float *x, long n) nogil
    double fnn_vmax_d(const double *x, long n) nogil
    void fnn_vdot4_s(const float *d, const float *c0, const float *c1, const float *c2,
                     const float *c3, long n, float *out) nogil
    void fnn_vdot4_d(const double *d, const double *c0, const double *c1, const double *c2,
                     const double *c3, long n, double *out) nogil


cdef inline floating _vsum(const floating *x, Py_ssize_t n) noexcept nogil:
    """Sum of x[0:n] in 16 lanes (fnn_vec.h)."""
    if floating is float:
        return fnn_vsum_s(x, n)
    else:
        return fnn_vsum_d(x, n)


cdef inline double _vsum_d(const double *x, Py_ssize_t n) noexcept nogil:
    return fnn_vsum_d(x, n)


cdef inline floating _vmax(const floating *x, Py_ssize_t n) noexcept nogil:
    """Largest of x[0:n] (n >= 1), in 16 lanes (fnn_vec.h)."""
    if floating is float:
        return fnn_vmax_s(x, n)
    else:
        return fnn_vmax_d(x, n)
