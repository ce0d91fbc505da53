# Optimizer updates in one pass over the flat parameter/gradient/state buffers, in place: reference.sgd_step and adam_step (PyTorch's rules).

cdef enum:
    _OPT_BLOCK = 16384
# Buffers at least this long are split over the threads.
cdef Py_ssize_t _OPT_PAR_MIN = 1 << 17


cdef void _sgd_k(floating *p, const floating *g, floating *v, Py_ssize_t n, floating lr,
                 floating mom, bint nesterov, floating wd) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating gi, vi
    cdef bint use_wd = wd != 0
    if mom != 0:
        if nesterov:
            for i in range(n):
                gi = g[i] + wd * p[i] if use_wd else g[i]
                vi = mom * v[i] + gi
                v[i] = vi
                p[i] = p[i] - lr * (gi + mom * vi)
        else:
            for i in range(n):
                gi = g[i] + wd * p[i] if use_wd else g[i]
                vi = mom * v[i] + gi
                v[i] = vi
                p[i] = p[i] - lr * vi
    else:
        for i in range(n):
            p[i] = p[i] - lr * (g[i] + wd * p[i] if use_wd else g[i])


cdef void _sgd_par(floating *p, const floating *g, floating *v, Py_ssize_t n, floating lr,
                   floating mom, bint nesterov, floating wd, int nt) noexcept nogil:
    cdef Py_ssize_t nb = (n + _OPT_BLOCK - 1) // _OPT_BLOCK, blk, s
    cdef long next_blk = 0
    cdef long claimed[_MAX_TEAM]
    cdef double master_done[1]
    cdef int t
    if n >= _OPT_PAR_MIN:
        nt = _team_size(nt)
    if nt <= 1 or n < _OPT_PAR_MIN:
        _sgd_k(p, g, v, n, lr, mom, nesterov, wd)
        return
    for t in range(nt):
        claimed[t] = 0
    master_done[0] = 0
    with parallel(num_threads=nt):
        t = fnn_team_rank()
        while True:      # blocks handed out dynamically: a late thread takes fewer
            blk = fnn_atomic_next(&next_blk)
            if blk >= nb:
                break
            claimed[t] += 1
            s = blk * _OPT_BLOCK
            _sgd_k(p + s, g + s, v + s, _imin(_OPT_BLOCK, n - s), lr, mom, nesterov, wd)
        if t == 0:
            master_done[0] = fnn_now()
    _team_report(claimed, master_done, nt)


def sgd_step(param, grad, velocity, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    """In-place SGD with momentum / Nesterov / weight decay (reference.sgd_step)."""
    cdef cnp.ndarray P = param, G = grad, V = velocity
    cdef Py_ssize_t n = cnp.PyArray_SIZE(P)
    if _is_f32(P):
        _sgd_par(<float *> cnp.PyArray_DATA(P), <const float *> cnp.PyArray_DATA(G),
                 <float *> cnp.PyArray_DATA(V), n, <float> lr, <float> momentum,
                 bool(nesterov), <float> weight_decay, _num_threads)
    else:
        _sgd_par(<double *> cnp.PyArray_DATA(P), <const double *> cnp.PyArray_DATA(G),
                 <double *> cnp.PyArray_DATA(V), n, <double> lr, <double> momentum,
                 bool(nesterov), <double> weight_decay, _num_threads)


cdef void _adam_k(floating *p, const floating *g, floating *m, floating *v, Py_ssize_t n,
                  floating lr, floating b1, floating b2, floating eps, floating wd,
                  floating ibc1, floating ibc2) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating gi, mi, vi
    cdef floating c1 = 1 - b1, c2 = 1 - b2
    cdef bint use_wd = wd != 0
    for i in range(n):
        gi = g[i] + wd * p[i] if use_wd else g[i]
        mi = b1 * m[i] + c1 * gi
        vi = b2 * v[i] + c2 * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = p[i] - lr * (mi * ibc1) / (_sqrt(vi * ibc2) + eps)


cdef void _adam_par(floating *p, const floating *g, floating *m, floating *v, Py_ssize_t n,
                    floating lr, floating b1, floating b2, floating eps, floating wd,
                    floating ibc1, floating ibc2, int nt) noexcept nogil:
    cdef Py_ssize_t nb = (n + _OPT_BLOCK - 1) // _OPT_BLOCK, blk, s
    cdef long next_blk = 0
    cdef long claimed[_MAX_TEAM]
    cdef double master_done[1]
    cdef int t
    if n >= _OPT_PAR_MIN:
        nt = _team_size(nt)
    if nt <= 1 or n < _OPT_PAR_MIN:
        _adam_k(p, g, m, v, n, lr, b1, b2, eps, wd, ibc1, ibc2)
        return
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
            _adam_k(p + s, g + s, m + s, v + s, _imin(_OPT_BLOCK, n - s),
                    lr, b1, b2, eps, wd, ibc1, ibc2)
        if t == 0:
            master_done[0] = fnn_now()
    _team_report(claimed, master_done, nt)


def adam_step(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, t):
    """In-place Adam step t (1-based) with bias correction (reference.adam_step)."""
    cdef cnp.ndarray P = param, G = grad, Mm = m, Vv = v
    cdef Py_ssize_t n = cnp.PyArray_SIZE(P)
    cdef double ibc1 = 1.0 / (1.0 - beta1 ** t), ibc2 = 1.0 / (1.0 - beta2 ** t)
    if _is_f32(P):
        _adam_par(<float *> cnp.PyArray_DATA(P), <const float *> cnp.PyArray_DATA(G),
                  <float *> cnp.PyArray_DATA(Mm), <float *> cnp.PyArray_DATA(Vv), n,
                  <float> lr, <float> beta1, <float> beta2, <float> eps, <float> weight_decay,
                  <float> ibc1, <float> ibc2, _num_threads)
    else:
        _adam_par(<double *> cnp.PyArray_DATA(P), <const double *> cnp.PyArray_DATA(G),
                  <double *> cnp.PyArray_DATA(Mm), <double *> cnp.PyArray_DATA(Vv), n,
                  <double> lr, <double> beta1, <double> beta2, <double> eps,
                  <double> weight_decay, <double> ibc1, <double> ibc2, _num_threads)
