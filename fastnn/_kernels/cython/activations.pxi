# Activations and their backward passes, one pass over memory each: reference.step/sigmoid/tanh/relu/leaky_relu/softmax and *_backward.

ctypedef void (*_unary_f)(const float *, float *, Py_ssize_t) noexcept nogil
ctypedef void (*_unary_d)(const double *, double *, Py_ssize_t) noexcept nogil


cdef void _step_k(const floating *x, floating *y, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        y[i] = 1 if x[i] > 0 else 0


cdef void _relu_k(const floating *x, floating *y, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating v
    for i in range(n):
        v = x[i]
        y[i] = 0 if v < 0 else v      # NaN passes through like np.maximum


cdef void _sigmoid_k(const floating *x, floating *y, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating v, e, d
    for i in range(n):
        v = x[i]
        e = _exp(-v if v >= 0 else v)          # exp(-|x|) never overflows
        d = 1 / (1 + e)
        y[i] = d if v >= 0 else e * d


cdef void _tanh_k(const floating *x, floating *y, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if floating is float:
            y[i] = fnn_tanhf(x[i])
        else:
            y[i] = fnn_tanh(x[i])


cdef inline cnp.ndarray _unary(x, _unary_f fs, _unary_d fd):
    cdef cnp.ndarray X = x
    cdef cnp.ndarray Y = _empty_like(X)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(X)
    if _is_f32(X):
        fs(<const float *> cnp.PyArray_DATA(X), <float *> cnp.PyArray_DATA(Y), n)
    else:
        fd(<const double *> cnp.PyArray_DATA(X), <double *> cnp.PyArray_DATA(Y), n)
    return Y


def step(x):
    """Heaviside step: 1 where x > 0 else 0 (reference.step)."""
    return _unary(x, _step_k[float], _step_k[double])


def relu(x):
    """max(x, 0) (reference.relu)."""
    return _unary(x, _relu_k[float], _relu_k[double])


def sigmoid(x):
    """1 / (1 + exp(-x)), stable for large |x| (reference.sigmoid)."""
    return _unary(x, _sigmoid_k[float], _sigmoid_k[double])


def tanh(x):
    """tanh(x) (reference.tanh)."""
    return _unary(x, _tanh_k[float], _tanh_k[double])


def leaky_relu(x, alpha=0.01):
    """x where x > 0 else alpha * x (reference.leaky_relu)."""
    cdef cnp.ndarray X = x
    cdef cnp.ndarray Y = _empty_like(X)
    cdef Py_ssize_t i, n = cnp.PyArray_SIZE(X)
    cdef float af = alpha
    cdef double ad = alpha
    cdef const float *xs
    cdef float *ys
    cdef const double *xd
    cdef double *yd
    if _is_f32(X):
        xs = <const float *> cnp.PyArray_DATA(X)
        ys = <float *> cnp.PyArray_DATA(Y)
        for i in range(n):
            ys[i] = xs[i] if xs[i] > 0 else xs[i] * af
    else:
        xd = <const double *> cnp.PyArray_DATA(X)
        yd = <double *> cnp.PyArray_DATA(Y)
        for i in range(n):
            yd[i] = xd[i] if xd[i] > 0 else xd[i] * ad
    return Y


cdef void _softmax_k(const floating *x, floating *y, Py_ssize_t rows, Py_ssize_t cols) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef floating m, inv
    cdef const floating *xr
    cdef floating *yr
    for i in range(rows):
        xr = x + i * cols
        yr = y + i * cols
        m = _vmax(xr, cols)
        for j in range(cols):
            yr[j] = _exp(xr[j] - m)
        inv = 1 / _vsum(yr, cols)
        for j in range(cols):
            yr[j] = yr[j] * inv


def softmax(x):
    """Softmax along the last axis of a 2-D x (reference.softmax)."""
    cdef cnp.ndarray X = x
    cdef cnp.ndarray Y = _empty_like(X)
    if _is_f32(X):
        _softmax_k(<const float *> cnp.PyArray_DATA(X), <float *> cnp.PyArray_DATA(Y),
                   X.shape[0], X.shape[1])
    else:
        _softmax_k(<const double *> cnp.PyArray_DATA(X), <double *> cnp.PyArray_DATA(Y),
                   X.shape[0], X.shape[1])
    return Y


# ------------------------------------------------------------- backward

ctypedef void (*_bwd_f)(const float *, const float *, const float *, float *, Py_ssize_t) noexcept nogil
ctypedef void (*_bwd_d)(const double *, const double *, const double *, double *, Py_ssize_t) noexcept nogil


cdef void _sigmoid_b(const floating *dy, const floating *x, const floating *y, floating *dx,
                     Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        dx[i] = dy[i] * y[i] * (1 - y[i])


cdef void _tanh_b(const floating *dy, const floating *x, const floating *y, floating *dx,
                  Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        dx[i] = dy[i] * (1 - y[i] * y[i])


cdef void _relu_b(const floating *dy, const floating *x, const floating *y, floating *dx,
                  Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        dx[i] = dy[i] if x[i] > 0 else 0


cdef inline cnp.ndarray _backward(dy, x, y, _bwd_f fs, _bwd_d fd):
    cdef cnp.ndarray DY = dy, X = x, Y = y
    cdef cnp.ndarray DX = _empty_like(DY)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(DY)
    if _is_f32(DY):
        fs(<const float *> cnp.PyArray_DATA(DY), <const float *> cnp.PyArray_DATA(X),
           <const float *> cnp.PyArray_DATA(Y), <float *> cnp.PyArray_DATA(DX), n)
    else:
        fd(<const double *> cnp.PyArray_DATA(DY), <const double *> cnp.PyArray_DATA(X),
           <const double *> cnp.PyArray_DATA(Y), <double *> cnp.PyArray_DATA(DX), n)
    return DX


def step_backward(dy, x, y):
    """Zero almost everywhere (reference.step_backward)."""
    cdef cnp.ndarray DY = dy
    return cnp.PyArray_ZEROS(cnp.PyArray_NDIM(DY), cnp.PyArray_DIMS(DY), cnp.PyArray_TYPE(DY), 0)


def sigmoid_backward(dy, x, y):
    """dy * y * (1 - y) (reference.sigmoid_backward)."""
    return _backward(dy, x, y, _sigmoid_b[float], _sigmoid_b[double])


def tanh_backward(dy, x, y):
    """dy * (1 - y^2) (reference.tanh_backward)."""
    return _backward(dy, x, y, _tanh_b[float], _tanh_b[double])


def relu_backward(dy, x, y):
    """dy where x > 0 else 0 (reference.relu_backward)."""
    return _backward(dy, x, y, _relu_b[float], _relu_b[double])


def leaky_relu_backward(dy, x, y, alpha=0.01):
    """dy where x > 0 else alpha * dy (reference.leaky_relu_backward)."""
    cdef cnp.ndarray DY = dy, X = x
    cdef cnp.ndarray DX = _empty_like(DY)
    cdef Py_ssize_t i, n = cnp.PyArray_SIZE(DY)
    cdef float af = alpha
    cdef double ad = alpha
    cdef const float *gs
    cdef const float *xs
    cdef float *os
    cdef const double *gd
    cdef const double *xd
    cdef double *od
    if _is_f32(DY):
        gs = <const float *> cnp.PyArray_DATA(DY)
        xs = <const float *> cnp.PyArray_DATA(X)
        os = <float *> cnp.PyArray_DATA(DX)
        for i in range(n):
            os[i] = gs[i] if xs[i] > 0 else gs[i] * af
    else:
        gd = <const double *> cnp.PyArray_DATA(DY)
        xd = <const double *> cnp.PyArray_DATA(X)
        od = <double *> cnp.PyArray_DATA(DX)
        for i in range(n):
            od[i] = gd[i] if xd[i] > 0 else gd[i] * ad
    return DX


cdef void _softmax_b(const floating *dy, const floating *y, floating *dx,
                     Py_ssize_t rows, Py_ssize_t cols) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef floating s
    cdef const floating *gr
    cdef const floating *yr
    cdef floating *dr
    for i in range(rows):
        gr = dy + i * cols
        yr = y + i * cols
        dr = dx + i * cols
        for j in range(cols):
            dr[j] = gr[j] * yr[j]
        s = _vsum(dr, cols)
        for j in range(cols):
            dr[j] = yr[j] * (gr[j] - s)


def softmax_backward(dy, x, y):
    """y * (dy - sum(dy * y)) per row (reference.softmax_backward)."""
    cdef cnp.ndarray DY = dy, Y = y
    cdef cnp.ndarray DX = _empty_like(DY)
    if _is_f32(DY):
        _softmax_b(<const float *> cnp.PyArray_DATA(DY), <const float *> cnp.PyArray_DATA(Y),
                   <float *> cnp.PyArray_DATA(DX), DY.shape[0], DY.shape[1])
    else:
        _softmax_b(<const double *> cnp.PyArray_DATA(DY), <const double *> cnp.PyArray_DATA(Y),
                   <double *> cnp.PyArray_DATA(DX), DY.shape[0], DY.shape[1])
    return DX
