"""Dropout (mask + scale in one pass, and its backward) and Embedding (row gather, scatter-add
backward): reference.dropout, dropout_backward, embedding, embedding_backward_into.

The dropout mask is the reference's counter-based hash (splitmix64 of seed + (i + 1) * golden),
in uint64 arithmetic (every constant a uint64: mixing in an int64 would make Numba use floats).
"""
import numpy as np
from numba import njit

from .. import reference as _r

_U = np.uint64
_GOLD, _M1, _M2 = _U(_r.SPLITMIX_GOLDEN), _U(_r.SPLITMIX_M1), _U(_r.SPLITMIX_M2)
_S27, _S30, _S31, _S32, _ONE = _U(27), _U(30), _U(31), _U(32), _U(1)


@njit(cache=True, error_model="numpy")
def _dropout(x, seed, thr, scale):
    out = np.empty_like(x)
    mask = np.empty(x.shape, np.uint8)
    xf, of, mf = x.reshape(-1), out.reshape(-1), mask.reshape(-1)
    zero = x.dtype.type(0)
    z = seed
    for i in range(xf.size):
        z += _GOLD                                  # seed + (i + 1) * golden
        h = (z ^ (z >> _S30)) * _M1
        h = (h ^ (h >> _S27)) * _M2
        h ^= h >> _S31
        keep = (h >> _S32) >= thr
        mf[i] = 1 if keep else 0
        of[i] = xf[i] * scale if keep else zero
    return out, mask


@njit(cache=True, error_model="numpy")
def _dropout_backward(dy, mask, scale):
    out = np.empty_like(dy)
    df, mf, of = dy.reshape(-1), mask.reshape(-1), out.reshape(-1)
    zero = dy.dtype.type(0)
    for i in range(df.size):
        of[i] = df[i] * scale if mf[i] != 0 else zero
    return out


def dropout(x, p, seed):
    scale = x.dtype.type(1.0 / (1.0 - p))
    return _dropout(x, _U(seed), _U(_r.dropout_threshold(p)), scale)


def dropout_backward(dy, mask, p):
    return _dropout_backward(dy, mask, dy.dtype.type(1.0 / (1.0 - p)))


@njit(cache=True, error_model="numpy")
def _embedding(weight, idx):
    d = weight.shape[1]
    flat = idx.reshape(-1)
    out = np.empty((flat.size, d), weight.dtype)
    for n in range(flat.size):
        row = weight[flat[n]]
        o = out[n]
        for j in range(d):
            o[j] = row[j]
    return out


@njit(cache=True, error_model="numpy")
def _embedding_backward_into(dy, idx, dw, padding_idx):
    for n in range(idx.size):
        r = idx[n]
        if r == padding_idx:
            continue
        g, w = dy[n], dw[r]
        for j in range(w.size):
            w[j] += g[j]


def embedding(weight, idx):
    return _embedding(weight, idx).reshape(idx.shape + (weight.shape[1],))


def embedding_backward_into(dy, idx, dw, padding_idx=-1):
    _embedding_backward_into(dy.reshape(-1, dw.shape[1]), idx.reshape(-1), dw, padding_idx)
