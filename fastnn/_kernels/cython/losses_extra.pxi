# huber, l1 and cross_entropy_weighted with their gradients in one pass: reference.huber, l1, cross_entropy_weighted (torch's definitions).
from libc.math cimport fabs, pow as c_pow


cdef double _huber_k(const floating *p, const floating *t, floating *g, Py_ssize_t n,
                     double delta) noexcept nogil:
    cdef double buf[_CHUNK]
    cdef double total = 0
    cdef floating inv = <floating> (1.0 / n), dl = <floating> delta, d, a
    cdef Py_ssize_t s, i, L
    s = 0
    while s < n:
        L = _imin(_CHUNK, n - s)
        for i in range(L):
            d = p[s + i] - t[s + i]
            a = d if d >= 0 else -d
            if a < dl:
                g[s + i] = d * inv
                buf[i] = 0.5 * <double> d * d
            else:
                g[s + i] = dl * inv if d > 0 else -dl * inv
                buf[i] = delta * (<double> a - 0.5 * delta)
        total += _vsum_d(buf, L)
        s += _CHUNK
    return total / n


def huber(pred, target, double delta=1.0):
    """(torch.nn.HuberLoss(delta) (mean), its gradient) (reference.huber)."""
    cdef cnp.ndarray P = pred, T = target
    cdef cnp.ndarray G = _empty_like(P)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(P)
    cdef double loss
    if _is_f32(P):
        loss = _huber_k(<const float *> cnp.PyArray_DATA(P), <const float *> cnp.PyArray_DATA(T),
                        <float *> cnp.PyArray_DATA(G), n, delta)
    else:
        loss = _huber_k(<const double *> cnp.PyArray_DATA(P), <const double *> cnp.PyArray_DATA(T),
                        <double *> cnp.PyArray_DATA(G), n, delta)
    return loss, G


cdef double _l1_k(const floating *p, const floating *t, floating *g, Py_ssize_t n) noexcept nogil:
    cdef double buf[_CHUNK]
    cdef double total = 0
    cdef floating inv = <floating> (1.0 / n), d
    cdef Py_ssize_t s, i, L
    s = 0
    while s < n:
        L = _imin(_CHUNK, n - s)
        for i in range(L):
            d = p[s + i] - t[s + i]
            g[s + i] = inv if d > 0 else (-inv if d < 0 else 0)
            buf[i] = <double> (d if d >= 0 else -d)
        total += _vsum_d(buf, L)
        s += _CHUNK
    return total / n


def l1(pred, target):
    """(torch.nn.L1Loss (mean), its gradient sign(d) / size) (reference.l1)."""
    cdef cnp.ndarray P = pred, T = target
    cdef cnp.ndarray G = _empty_like(P)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(P)
    cdef double loss
    if _is_f32(P):
        loss = _l1_k(<const float *> cnp.PyArray_DATA(P), <const float *> cnp.PyArray_DATA(T),
                     <float *> cnp.PyArray_DATA(G), n)
    else:
        loss = _l1_k(<const double *> cnp.PyArray_DATA(P), <const double *> cnp.PyArray_DATA(T),
                     <double *> cnp.PyArray_DATA(G), n)
    return loss, G


cdef double _ce_w_rows(const floating *x, const long long *lab, const floating *w, floating *g,
                       Py_ssize_t rows, Py_ssize_t cols, double ls, long long ignore) noexcept nogil:
    """Weighted, smoothed cross-entropy (torch's mean: divided by the kept rows' weights);
    g must be zeroed (ignored rows keep 0). 0 when no weight is kept."""
    cdef Py_ssize_t i, j
    cdef long long k
    cdef double total_w = 0, sum_w = 0, b, a, lz, acc, smooth, total = 0
    cdef floating m, scale, bf
    cdef const floating *xr
    cdef floating *gr
    for i in range(rows):
        if lab[i] != ignore:
            total_w += w[lab[i]]
    if total_w == 0:
        return 0
    for j in range(cols):
        sum_w += w[j]
    b = ls / (cols * total_w)
    bf = <floating> b
    for i in range(rows):
        k = lab[i]
        if k == ignore:
            continue
        xr = x + i * cols
        gr = g + i * cols
        m = _vmax(xr, cols)
        for j in range(cols):
            gr[j] = _exp(xr[j] - m)
        acc = _vsum(gr, cols)
        lz = log(acc) + m
        a = (1 - ls) * w[k] / total_w
        scale = <floating> ((a + b * sum_w) / acc)
        smooth = 0
        for j in range(cols):
            smooth += w[j] * (<double> xr[j] - lz)
            gr[j] = gr[j] * scale - bf * w[j]
        gr[k] -= <floating> a
        total -= a * (<double> xr[k] - lz) + b * smooth
    return total


def cross_entropy_weighted(logits, labels, weight, double label_smoothing=0.0,
                           long long ignore_index=-1):
    """torch.nn.CrossEntropyLoss(weight, label_smoothing, ignore_index) from logits (N, C)
    with int64 labels (N,), and its gradient (reference.cross_entropy_weighted)."""
    cdef cnp.ndarray X = logits, L = labels, W = weight
    cdef cnp.ndarray G = cnp.PyArray_ZEROS(2, cnp.PyArray_DIMS(X), cnp.PyArray_TYPE(X), 0)
    cdef Py_ssize_t n = X.shape[0], c = X.shape[1]
    cdef const long long *lab = <const long long *> cnp.PyArray_DATA(L)
    cdef double loss
    if _is_f32(X):
        loss = _ce_w_rows(<const float *> cnp.PyArray_DATA(X), lab, <const float *> cnp.PyArray_DATA(W),
                          <float *> cnp.PyArray_DATA(G), n, c, label_smoothing, ignore_index)
    else:
        loss = _ce_w_rows(<const double *> cnp.PyArray_DATA(X), lab, <const double *> cnp.PyArray_DATA(W),
                          <double *> cnp.PyArray_DATA(G), n, c, label_smoothing, ignore_index)
    return loss, G
