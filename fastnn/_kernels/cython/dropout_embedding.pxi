# Dropout (mask + scale in one pass, and its backward) and Embedding (row gather, scatter-add backward): reference.dropout, dropout_backward, embedding, embedding_backward_into.
# The mask is the reference's counter-based hash: splitmix64(seed + (i + 1) * golden) >> 32 >= threshold.
from libc.stdint cimport uint8_t, uint64_t, int64_t
from libc.string cimport memcpy


cdef void _dropout_k(const floating *x, floating *y, uint8_t *mask, Py_ssize_t n, uint64_t seed,
                     uint64_t thr, floating scale) noexcept nogil:
    cdef Py_ssize_t i
    cdef uint64_t h
    cdef bint keep
    for i in range(n):
        h = seed + <uint64_t> (i + 1) * <uint64_t> 0x9E3779B97F4A7C15ULL
        h = (h ^ (h >> 30)) * <uint64_t> 0xBF58476D1CE4E5B9ULL
        h = (h ^ (h >> 27)) * <uint64_t> 0x94D049BB133111EBULL
        h = h ^ (h >> 31)
        keep = (h >> 32) >= thr
        mask[i] = keep
        y[i] = x[i] * scale if keep else 0


cdef void _dropout_b(const floating *dy, const uint8_t *mask, floating *dx, Py_ssize_t n,
                     floating scale) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        dx[i] = dy[i] * scale if mask[i] else 0


def dropout(x, p, seed):
    """(x / (1 - p) where kept else 0, uint8 mask) (reference.dropout)."""
    cdef cnp.ndarray X = x
    cdef cnp.ndarray Y = _empty_like(X)
    cdef cnp.ndarray M = cnp.PyArray_EMPTY(cnp.PyArray_NDIM(X), cnp.PyArray_DIMS(X), cnp.NPY_UINT8, 0)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(X)
    cdef uint64_t s = seed, thr = min(int(p * 4294967296.0 + 0.5), 4294967296)   # reference.dropout_threshold
    cdef double scale = 1.0 / (1.0 - <double> p)
    if _is_f32(X):
        _dropout_k(<const float *> cnp.PyArray_DATA(X), <float *> cnp.PyArray_DATA(Y),
                   <uint8_t *> cnp.PyArray_DATA(M), n, s, thr, <float> scale)
    else:
        _dropout_k(<const double *> cnp.PyArray_DATA(X), <double *> cnp.PyArray_DATA(Y),
                   <uint8_t *> cnp.PyArray_DATA(M), n, s, thr, scale)
    return Y, M


def dropout_backward(dy, mask, p):
    """dy / (1 - p) where the mask kept else 0 (reference.dropout_backward)."""
    cdef cnp.ndarray DY = dy, M = mask
    cdef cnp.ndarray DX = _empty_like(DY)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(DY)
    cdef double scale = 1.0 / (1.0 - <double> p)
    if _is_f32(DY):
        _dropout_b(<const float *> cnp.PyArray_DATA(DY), <const uint8_t *> cnp.PyArray_DATA(M),
                   <float *> cnp.PyArray_DATA(DX), n, <float> scale)
    else:
        _dropout_b(<const double *> cnp.PyArray_DATA(DY), <const uint8_t *> cnp.PyArray_DATA(M),
                   <double *> cnp.PyArray_DATA(DX), n, scale)
    return DX


cdef void _gather(const char *w, const int64_t *idx, char *out, Py_ssize_t n, size_t row_bytes) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        memcpy(out + i * row_bytes, w + idx[i] * row_bytes, row_bytes)


# Gathers of at least this many bytes run on a team, rows handed out a few at a time: from
# memory, one core alone copied a batch of 128 rows of 784 float32 out of a 60,000-row
# training set at about half the rate of two (61 -> 35 us; fit's batches use this kernel).
cdef Py_ssize_t _GATHER_PAR_MIN_BYTES = 1 << 17
cdef enum:
    _GATHER_ROWS = 8


cdef void _gather_par(const char *w, const int64_t *idx, char *out, Py_ssize_t n, size_t row_bytes,
                      int nt) noexcept nogil:
    cdef Py_ssize_t nb = (n + _GATHER_ROWS - 1) // _GATHER_ROWS, blk, lo
    cdef long next_blk = 0
    cdef long claimed[_MAX_TEAM]
    cdef double master_done[1]
    cdef int t
    if n * <Py_ssize_t> row_bytes >= _GATHER_PAR_MIN_BYTES and nb > 1:
        nt = _team_size(nt)
    else:
        nt = 1
    if nt <= 1:
        _gather(w, idx, out, n, row_bytes)
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
            lo = blk * _GATHER_ROWS
            _gather(w, idx + lo, out + lo * row_bytes, _imin(_GATHER_ROWS, n - lo), row_bytes)
        if t == 0:
            master_done[0] = fnn_now()
    _team_report(claimed, master_done, nt)


def embedding(weight, idx):
    """Rows of weight at idx: (*idx.shape, D) (reference.embedding)."""
    cdef cnp.ndarray W = weight, I = idx
    cdef Py_ssize_t n = cnp.PyArray_SIZE(I), d = W.shape[1]
    cdef cnp.ndarray Y = _empty2(n, d, cnp.PyArray_TYPE(W))
    with nogil:
        _gather_par(<const char *> cnp.PyArray_DATA(W), <const int64_t *> cnp.PyArray_DATA(I),
                    <char *> cnp.PyArray_DATA(Y), n, d * cnp.PyArray_ITEMSIZE(W), _num_threads)
    return Y.reshape(tuple(idx.shape) + (d,))


cdef void _scatter_add(const floating *dy, const int64_t *idx, floating *dw, Py_ssize_t n, Py_ssize_t d,
                       int64_t pad) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef const floating *g
    cdef floating *w
    for i in range(n):
        if idx[i] == pad:
            continue
        g = dy + i * d
        w = dw + idx[i] * d
        for j in range(d):
            w[j] += g[j]


def embedding_backward_into(dy, idx, dw, padding_idx=-1):
    """dw[idx[i]] += dy[i] for every index but padding_idx (reference.embedding_backward_into)."""
    cdef cnp.ndarray DY = dy, I = idx, DW = dw
    cdef Py_ssize_t n = cnp.PyArray_SIZE(I), d = DW.shape[1]
    cdef int64_t pad = padding_idx
    if _is_f32(DW):
        with nogil:
            _scatter_add(<const float *> cnp.PyArray_DATA(DY), <const int64_t *> cnp.PyArray_DATA(I),
                         <float *> cnp.PyArray_DATA(DW), n, d, pad)
    else:
        with nogil:
            _scatter_add(<const double *> cnp.PyArray_DATA(DY), <const int64_t *> cnp.PyArray_DATA(I),
                         <double *> cnp.PyArray_DATA(DW), n, d, pad)
