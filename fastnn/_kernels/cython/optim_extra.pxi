# AdamW, RMSprop and Adagrad steps in place over the flat buffers, and a gradient clip's two passes: reference.adamw_step, rmsprop_step, adagrad_step, grad_norm, grad_scale (PyTorch's rules).
from libc.math cimport isinf


cdef void _adamw_k(floating *p, const floating *g, floating *m, floating *v, Py_ssize_t n,
                   floating decay, floating b1, floating b2, floating eps, floating step,
                   floating ibc2s) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating gi, mi, vi
    cdef floating c1 = 1 - b1, c2 = 1 - b2
    for i in range(n):
        gi = g[i]
        mi = b1 * m[i] + c1 * gi
        vi = b2 * v[i] + c2 * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = p[i] * decay - step * mi / (_sqrt(vi) * ibc2s + eps)


def adamw_step(param, grad, m, v, double lr, double beta1, double beta2, double eps,
               double weight_decay, t):
    """In-place AdamW step t (1-based), decoupled weight decay (reference.adamw_step)."""
    cdef cnp.ndarray P = param, G = grad, Mm = m, Vv = v
    cdef Py_ssize_t n = cnp.PyArray_SIZE(P)
    cdef double decay = 1 - lr * weight_decay, step = lr / (1.0 - beta1 ** t)
    cdef double ibc2s = 1.0 / sqrt(1.0 - beta2 ** t)
    if _is_f32(P):
        with nogil:
            _adamw_k(<float *> cnp.PyArray_DATA(P), <const float *> cnp.PyArray_DATA(G),
                     <float *> cnp.PyArray_DATA(Mm), <float *> cnp.PyArray_DATA(Vv), n,
                     <float> decay, <float> beta1, <float> beta2, <float> eps, <float> step,
                     <float> ibc2s)
    else:
        with nogil:
            _adamw_k(<double *> cnp.PyArray_DATA(P), <const double *> cnp.PyArray_DATA(G),
                     <double *> cnp.PyArray_DATA(Mm), <double *> cnp.PyArray_DATA(Vv), n,
                     decay, beta1, beta2, eps, step, ibc2s)


cdef void _rmsprop_k(floating *p, const floating *g, floating *sq, floating *ga, floating *mb,
                     Py_ssize_t n, floating lr, floating alpha, floating eps, floating wd,
                     floating mom, bint centered) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating gi, s, a, avg, b
    cdef floating ac = 1 - alpha
    for i in range(n):
        gi = g[i] + wd * p[i]
        s = alpha * sq[i] + ac * gi * gi
        sq[i] = s
        if centered:
            a = alpha * ga[i] + ac * gi
            ga[i] = a
            s = s - a * a
        avg = _sqrt(s) + eps
        if mom != 0:
            b = mom * mb[i] + gi / avg
            mb[i] = b
            p[i] = p[i] - lr * b
        else:
            p[i] = p[i] - lr * gi / avg


def rmsprop_step(param, grad, square_avg, grad_avg, momentum_buf, double lr, double alpha,
                 double eps, double weight_decay=0.0, double momentum=0.0, centered=False):
    """In-place RMSprop step (reference.rmsprop_step)."""
    cdef cnp.ndarray P = param, G = grad, S = square_avg, A = grad_avg, B = momentum_buf
    cdef Py_ssize_t n = cnp.PyArray_SIZE(P)
    cdef bint c = bool(centered)
    if _is_f32(P):
        with nogil:
            _rmsprop_k(<float *> cnp.PyArray_DATA(P), <const float *> cnp.PyArray_DATA(G),
                       <float *> cnp.PyArray_DATA(S), <float *> cnp.PyArray_DATA(A),
                       <float *> cnp.PyArray_DATA(B), n, <float> lr, <float> alpha, <float> eps,
                       <float> weight_decay, <float> momentum, c)
    else:
        with nogil:
            _rmsprop_k(<double *> cnp.PyArray_DATA(P), <const double *> cnp.PyArray_DATA(G),
                       <double *> cnp.PyArray_DATA(S), <double *> cnp.PyArray_DATA(A),
                       <double *> cnp.PyArray_DATA(B), n, lr, alpha, eps, weight_decay, momentum, c)


cdef void _adagrad_k(floating *p, const floating *g, floating *ss, Py_ssize_t n, floating clr,
                     floating wd, floating eps) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating gi, s
    for i in range(n):
        gi = g[i] + wd * p[i]
        s = ss[i] + gi * gi
        ss[i] = s
        p[i] = p[i] - clr * gi / (_sqrt(s) + eps)


def adagrad_step(param, grad, state_sum, double lr, double lr_decay=0.0, double weight_decay=0.0,
                 double eps=1e-10, t=1):
    """In-place Adagrad step t (1-based) (reference.adagrad_step)."""
    cdef cnp.ndarray P = param, G = grad, S = state_sum
    cdef Py_ssize_t n = cnp.PyArray_SIZE(P)
    cdef double clr = lr / (1 + (t - 1) * lr_decay)
    if _is_f32(P):
        with nogil:
            _adagrad_k(<float *> cnp.PyArray_DATA(P), <const float *> cnp.PyArray_DATA(G),
                       <float *> cnp.PyArray_DATA(S), n, <float> clr, <float> weight_decay, <float> eps)
    else:
        with nogil:
            _adagrad_k(<double *> cnp.PyArray_DATA(P), <const double *> cnp.PyArray_DATA(G),
                       <double *> cnp.PyArray_DATA(S), n, clr, weight_decay, eps)


cdef double _sum_pow_k(const floating *g, Py_ssize_t n, double order) noexcept nogil:
    """sum |g|^order (order 2 and 1 in 16 float64 lanes), or max |g| for inf (NaN wins)."""
    cdef double acc[16]
    cdef double s = 0, x
    cdef Py_ssize_t i, j, n16 = n - n % 16
    if isinf(order):
        for i in range(n):
            x = fabs(<double> g[i])
            if x > s or x != x:
                s = x
        return s
    for j in range(16):
        acc[j] = 0
    if order == 2:
        for i in range(0, n16, 16):
            for j in range(16):
                x = g[i + j]
                acc[j] += x * x
        for i in range(n16, n):
            x = g[i]
            s += x * x
    elif order == 1:
        for i in range(0, n16, 16):
            for j in range(16):
                acc[j] += fabs(<double> g[i + j])
        for i in range(n16, n):
            s += fabs(<double> g[i])
    else:
        for i in range(n):
            s += c_pow(fabs(<double> g[i]), order)
    for j in range(16):
        s += acc[j]
    return s


# A buffer of at least this many values is summed in blocks of _OPT_BLOCK, the blocks on a
# team, their sums added in block order: the same bits on any number of threads.
cdef Py_ssize_t _NORM_PAR_MIN = 1 << 17


cdef double _sum_pow_par(const floating *g, Py_ssize_t n, double order, int nt) noexcept nogil:
    cdef Py_ssize_t nb = (n + _OPT_BLOCK - 1) // _OPT_BLOCK, blk, s
    cdef long next_blk = 0
    cdef long claimed[_MAX_TEAM]
    cdef double master_done[1]
    cdef double *part
    cdef double total = 0
    cdef int t
    if isinf(order) or n < _NORM_PAR_MIN:
        return _sum_pow_k(g, n, order)
    part = <double *> fnn_aligned_alloc(nb * sizeof(double))
    if part == NULL:
        return _sum_pow_k(g, n, order)
    nt = _team_size(nt)
    if nt <= 1:
        for blk in range(nb):
            s = blk * _OPT_BLOCK
            part[blk] = _sum_pow_k(g + s, _imin(_OPT_BLOCK, n - s), order)
    else:
        for t in range(nt):
            claimed[t] = 0
        master_done[0] = 0
        with parallel(num_threads=nt):
            t = fnn_team_rank()
            while True:
                blk = fnn_atomic_next(&next_blk)
                if blk >= nb:
                    break
                claimed[t] += 1
                s = blk * _OPT_BLOCK
                part[blk] = _sum_pow_k(g + s, _imin(_OPT_BLOCK, n - s), order)
            if t == 0:
                master_done[0] = fnn_now()
        _team_report(claimed, master_done, nt)
    for blk in range(nb):
        total += part[blk]
    fnn_aligned_free(part)
    return total


def grad_norm(grad, double norm_type=2.0):
    """The norm_type-norm of a flat buffer (inf: max |g|) (reference.grad_norm)."""
    cdef cnp.ndarray G = grad
    cdef Py_ssize_t n = cnp.PyArray_SIZE(G)
    cdef double order = norm_type, s
    if _is_f32(G):
        with nogil:
            s = _sum_pow_par(<const float *> cnp.PyArray_DATA(G), n, order, _num_threads)
    else:
        with nogil:
            s = _sum_pow_par(<const double *> cnp.PyArray_DATA(G), n, order, _num_threads)
    return s if isinf(order) else c_pow(s, 1.0 / order)   # libc pow: NaN stays a float


cdef void _scale_k(floating *g, Py_ssize_t n, floating f) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        g[i] = g[i] * f


def grad_scale(grad, double factor):
    """grad *= factor, in place (reference.grad_scale)."""
    cdef cnp.ndarray G = grad
    cdef Py_ssize_t n = cnp.PyArray_SIZE(G)
    if _is_f32(G):
        with nogil:
            _scale_k(<float *> cnp.PyArray_DATA(G), n, <float> factor)
    else:
        with nogil:
            _scale_k(<double *> cnp.PyArray_DATA(G), n, <double> factor)
