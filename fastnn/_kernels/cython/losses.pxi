# Losses with their gradients in one fused pass (softmax + cross-entropy + gradient per row): reference.mse, cross_entropy, binary_cross_entropy.

cdef enum:
    _CHUNK = 512


cdef double _mse_k(const floating *p, const floating *t, floating *g, Py_ssize_t n) noexcept nogil:
    cdef double buf[_CHUNK]
    cdef double total = 0
    cdef floating scale = <floating> (2.0 / n), d
    cdef Py_ssize_t s, i, L
    s = 0
    while s < n:
        L = _imin(_CHUNK, n - s)
        for i in range(L):
            d = p[s + i] - t[s + i]
            g[s + i] = scale * d
            buf[i] = <double> d * d
        total += _vsum_d(buf, L)
        s += _CHUNK
    return total / n


def mse(pred, target):
    """(mean((pred - target)^2), its gradient) (reference.mse)."""
    cdef cnp.ndarray P = pred, T = target
    cdef cnp.ndarray G = _empty_like(P)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(P)
    cdef double loss
    if _is_f32(P):
        loss = _mse_k(<const float *> cnp.PyArray_DATA(P), <const float *> cnp.PyArray_DATA(T),
                      <float *> cnp.PyArray_DATA(G), n)
    else:
        loss = _mse_k(<const double *> cnp.PyArray_DATA(P), <const double *> cnp.PyArray_DATA(T),
                      <double *> cnp.PyArray_DATA(G), n)
    return loss, G


cdef double _ce_rows(const floating *x, const long long *lab, const floating *soft, floating *g,
                     Py_ssize_t rows, Py_ssize_t cols) noexcept nogil:
    """Sum over rows of -log softmax(x)[label] (or of -sum_j t_j log p_j for soft
    rows), writing (softmax - target) / rows into g: max-shift and log-sum-exp,
    so logits of +-1e4 stay finite."""
    cdef Py_ssize_t i, j
    cdef floating m, inv, invn = <floating> (1.0 / rows)
    cdef double total = 0, lz, acc
    cdef const floating *xr
    cdef const floating *tr
    cdef floating *gr
    for i in range(rows):
        xr = x + i * cols
        gr = g + i * cols
        m = _vmax(xr, cols)
        for j in range(cols):
            gr[j] = _exp(xr[j] - m)
        acc = _vsum(gr, cols)
        lz = log(acc)
        inv = <floating> (invn / acc)
        for j in range(cols):
            gr[j] = gr[j] * inv
        if soft == NULL:
            total += lz - (<double> xr[lab[i]] - m)
            gr[lab[i]] -= invn
        else:
            tr = soft + i * cols
            for j in range(cols):
                total += tr[j] * (lz - (<double> xr[j] - m))
                gr[j] -= tr[j] * invn
    return total / rows


def cross_entropy(logits, labels):
    """Softmax cross-entropy from logits (N, C) with int64 labels (N,) or
    target rows (N, C), and its gradient (reference.cross_entropy)."""
    cdef cnp.ndarray X = logits, L = labels
    cdef cnp.ndarray G = _empty_like(X)
    cdef Py_ssize_t n = X.shape[0], c = X.shape[1]
    cdef const long long *lab = NULL
    cdef const float *soft_s = NULL
    cdef const double *soft_d = NULL
    cdef double loss
    if cnp.PyArray_NDIM(L) == 1:
        lab = <const long long *> cnp.PyArray_DATA(L)
    elif _is_f32(X):
        soft_s = <const float *> cnp.PyArray_DATA(L)
    else:
        soft_d = <const double *> cnp.PyArray_DATA(L)
    if _is_f32(X):
        loss = _ce_rows(<const float *> cnp.PyArray_DATA(X), lab, soft_s,
                        <float *> cnp.PyArray_DATA(G), n, c)
    else:
        loss = _ce_rows(<const double *> cnp.PyArray_DATA(X), lab, soft_d,
                        <double *> cnp.PyArray_DATA(G), n, c)
    return loss, G


cdef double _bce_k(const floating *z, const floating *t, floating *g, Py_ssize_t n) noexcept nogil:
    """max(z,0) - z t + log1p(exp(-|z|)) summed, gradient (sigmoid(z) - t) / n."""
    cdef double buf[_CHUNK]
    cdef double total = 0
    cdef floating invn = <floating> (1.0 / n), v, e, d, sg, l1p
    cdef Py_ssize_t s, i, L
    s = 0
    while s < n:
        L = _imin(_CHUNK, n - s)
        for i in range(L):
            v = z[s + i]
            e = _exp(-v if v >= 0 else v)
            d = 1 / (1 + e)
            sg = d if v >= 0 else e * d
            g[s + i] = (sg - t[s + i]) * invn
            if floating is float:
                l1p = fnn_log1p01f(e)
            else:
                l1p = fnn_log1p01(e)
            buf[i] = <double> (v if v > 0 else 0) - <double> v * t[s + i] + l1p
        total += _vsum_d(buf, L)
        s += _CHUNK
    return total / n


def binary_cross_entropy(logits, target):
    """Sigmoid + binary cross-entropy from logits, and its gradient (reference.binary_cross_entropy)."""
    cdef cnp.ndarray Z = logits, T = target
    cdef cnp.ndarray G = _empty_like(Z)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(Z)
    cdef double loss
    if _is_f32(Z):
        loss = _bce_k(<const float *> cnp.PyArray_DATA(Z), <const float *> cnp.PyArray_DATA(T),
                      <float *> cnp.PyArray_DATA(G), n)
    else:
        loss = _bce_k(<const double *> cnp.PyArray_DATA(Z), <const double *> cnp.PyArray_DATA(T),
                      <double *> cnp.PyArray_DATA(G), n)
    return loss, G
