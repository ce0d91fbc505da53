# Fused Dense kernels: reference.linear_act (bias + activation applied to the GEMM's output while it is in cache) and reference.linear_backward_into (the GEMM accumulates gradients straight into the model's buffers).


cdef void _leaky_inplace(floating *y, Py_ssize_t n, floating alpha) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating v
    for i in range(n):
        v = y[i]
        y[i] = v if v > 0 else v * alpha      # alpha = 0: relu


def linear_act(x, w, b, activation, alpha=0.01):
    """activation(x @ w.T + b) for relu, leaky_relu, sigmoid, tanh (reference.linear_act)."""
    cdef cnp.ndarray Y = linear(x, w, b)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(Y)
    cdef bint f32 = _is_f32(Y)
    cdef void *p = cnp.PyArray_DATA(Y)
    cdef double a = alpha if activation == "leaky_relu" else 0.0
    if activation == "relu" or activation == "leaky_relu":
        if f32:
            _leaky_inplace(<float *> p, n, <float> a)
        else:
            _leaky_inplace(<double *> p, n, a)
    elif activation == "sigmoid":
        if f32:
            _sigmoid_k(<const float *> p, <float *> p, n)
        else:
            _sigmoid_k(<const double *> p, <double *> p, n)
    elif activation == "tanh":
        if f32:
            _tanh_k(<const float *> p, <float *> p, n)
        else:
            _tanh_k(<const double *> p, <double *> p, n)
    else:
        raise ValueError(f"linear_act: cannot fuse activation {activation!r}")
    return Y


cdef void _colsum_into(const floating *d, floating *g, Py_ssize_t n, Py_ssize_t f,
                       bint accumulate) noexcept nogil:
    cdef Py_ssize_t i, j
    if not accumulate:
        _colsum_k(d, g, n, f)
        return
    for i in range(n):
        for j in range(f):
            g[j] += d[i * f + j]


def linear_backward_into(dy, x, w, dw, db, need_dx=True, accumulate=True):
    """dw (+)= dy.T @ x, db (+)= column sums of dy, in place; dx or None (reference.linear_backward_into)."""
    cdef cnp.ndarray DY = dy, X = x, W = w, DW = dw, DB, DX
    cdef Py_ssize_t n = DY.shape[0], f = DY.shape[1]
    cdef bint acc = accumulate
    _gemm_arrays(DY, X, DW, True, False, acc, _num_threads)    # dw (+)= dy.T @ x
    if db is not None:
        DB = db
        if _is_f32(DY):
            _colsum_into(<const float *> cnp.PyArray_DATA(DY), <float *> cnp.PyArray_DATA(DB), n, f, acc)
        else:
            _colsum_into(<const double *> cnp.PyArray_DATA(DY), <double *> cnp.PyArray_DATA(DB), n, f, acc)
    if not need_dx:
        return None
    DX = _empty2(X.shape[0], X.shape[1], cnp.PyArray_TYPE(DY))
    _gemm_arrays(DY, W, DX, False, False, False, _num_threads)        # dy @ w
    return DX
