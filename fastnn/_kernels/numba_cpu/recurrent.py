"""RNN (tanh), LSTM and GRU forward and BPTT backward over whole sequences; matches rnn, lstm, gru and their *_backward in fastnn/_kernels/reference.py.

Layout: samples in lanes. The batch is cut into blocks of LB = 16 samples and
every per-step quantity of a block is held as an (rows, LB) array whose last
axis is the 16 samples, so each gate row is one AVX-512 vector (float32) and
the recurrent product W_hh h_{t-1} is a chain of broadcast-FMAs. This keeps
every vector full whatever the hidden size (6 .. 32 in the target workload,
where vectorising along the hidden or gate axis would leave lanes idle), and
the gate nonlinearities run on 16 samples at once. The whole time loop, the
input projection (x_t W_ih^T), the gate math and the cell update are fused in
one @njit function per block: no Python runs per time step.

The matrix-times-lanes products (W_hh h_{t-1}, W_ih x_t and their transposes
in the backward) go through _rows4/_rows1: four weight rows at a time, the 16
lanes in scalar accumulators that the SLP vectorizer keeps in registers. A
plain `out[g, l] += w * src[j, l]` loop does not vectorize (LLVM cannot rule
out that out and src overlap) and ran 3x slower. The gate loops run over the
flattened (rows, LB) buffers with a runtime trip count, which LLVM's loop
vectorizer takes with runtime alias checks; inputs and outputs of a gate loop
are distinct buffers.

The backward runs the same blocks in reverse time; it writes the
pre-activation gradients of every step (as the reference does) and then gets
dW_hh from one packed GEMM (gemm._gemm_into); dW_ih and dx come from the same
GEMM when the input is wide, and from lane sums fused into the time loop when
it is narrow (F <= SKINNY_F; one feature in the target workload). Bias
gradients are summed in the lanes.

Blocks run in parallel (prange) only above PARALLEL_MIN_WORK, which the target
sizes (batch 100, 40 steps, hidden <= 32) stay below: on the shared 2-core
machine two Numba threads made these kernels 2-20x slower, not faster.
"""
import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from ._math import exp, exp32
from .gemm import _gemm_into

# 'contract' fuses a*b+c into FMAs; no 'reassoc' (nothing here reduces across
# lanes, and the exp polynomial must stay in its written order).
FM = {"contract", "nsz", "arcp"}
LB = 16                        # samples per block: one float32 AVX-512 vector
# Parallelise over blocks when blocks * steps * G * (F + H) * LB reaches this
# (about 3.5x the largest target size: LSTM, hidden 32, batch 100, 40 steps).
PARALLEL_MIN_WORK = 1 << 26
# Input widths up to this use the fused skinny loop for dW_ih; wider ones a GEMM.
SKINNY_F = 16

_F32 = np.float32
_ONE32, _TWO32 = _F32(1), _F32(2)
_C3, _C5, _C7 = _F32(-1 / 3), _F32(2 / 15), _F32(-17 / 315)
_SMALL32 = _F32(0.0625)


def _sigm(v):
    """Scalar logistic sigmoid in v's precision (resolved per dtype)."""
    raise NotImplementedError


def _tanh(v):
    """Scalar tanh in v's precision (resolved per dtype)."""
    raise NotImplementedError


@overload(_sigm, jit_options={"fastmath": FM, "error_model": "numpy"})
def _sigm_impl(v):
    if v == types.float32:
        def sig32(v):
            e = exp32(-abs(v))
            r = _ONE32 / (_ONE32 + e)
            return r if v >= 0 else e * r
        return sig32

    def sig64(v):
        e = exp(-abs(v))
        r = 1.0 / (1.0 + e)
        return r if v >= 0 else e * r
    return sig64


@overload(_tanh, jit_options={"fastmath": FM, "error_model": "numpy"})
def _tanh_impl(v):
    if v == types.float32:
        def tanh32(v):
            a = abs(v)
            t = exp32(-_TWO32 * a)
            r = _TWO32 / (_ONE32 + t) - _ONE32
            s = v * v
            small = a * (_ONE32 + s * (_C3 + s * (_C5 + s * _C7)))
            r = small if a < _SMALL32 else r
            return r if v >= 0 else -r
        return tanh32

    def tanh64(v):
        t = exp(-2.0 * abs(v))
        r = (1.0 - t) / (1.0 + t)
        return r if v >= 0 else -r
    return tanh64


# ------------------------------------------------------------ lane helpers


# ---- _rows4 / _rows1: generated (16 lanes, 4 rows / 1 row); edit both alike

@njit(cache=True, fastmath=FM, error_model="numpy")
def _rows4(out, g, b, w, src, accumulate):
    """out[g:g+4, :] (+)= b[g:g+4] + w[g:g+4] @ src over the 16 lanes, in scalar
    accumulators that the SLP vectorizer keeps in registers (no stores in the loop)."""
    if accumulate:
        (a0_0, a0_1, a0_2, a0_3, a0_4, a0_5, a0_6, a0_7, a0_8, a0_9, a0_10, a0_11, a0_12, a0_13,
         a0_14, a0_15) = (
         out[g+0,0], out[g+0,1], out[g+0,2], out[g+0,3], out[g+0,4], out[g+0,5], out[g+0,6],
         out[g+0,7], out[g+0,8], out[g+0,9], out[g+0,10], out[g+0,11], out[g+0,12], out[g+0,13],
         out[g+0,14], out[g+0,15])
    else:
        bv = b[g + 0]
        (a0_0, a0_1, a0_2, a0_3, a0_4, a0_5, a0_6, a0_7, a0_8, a0_9, a0_10, a0_11, a0_12, a0_13,
         a0_14, a0_15) = (
         bv, bv, bv, bv, bv, bv, bv, bv, bv, bv, bv, bv, bv, bv, bv, bv)
    if accumulate:
        (a1_0, a1_1, a1_2, a1_3, a1_4, a1_5, a1_6, a1_7, a1_8, a1_9, a1_10, a1_11, a1_12, a1_13,
         a1_14, a1_15) = (
         out[g+1,0], out[g+1,1], out[g+1,2], out[g+1,3], out[g+1,4], out[g+1,5], out[g+1,6],
         out[g+1,7], out[g+1,8], out[g+1,9], out[g+1,10], out[g+1,11], out[g+1,12], out[g+1,13],
         out[g+1,14], out[g+1,15])
    else:
        bv = b[g + 1]
        (a1_0, a1_1, a1_2, a1_3, a1_4, a1_5, a1_6, a1_7, a1_8, a1_9, a1_10, a1_11, a1_12, a1_13,
         a1_14, a1_15) = (
         bv, bv, bv, bv, bv, bv, bv, bv, bv, bv, bv, bv, bv, bv, bv, bv)
    if accumulate:
        (a2_0, a2_1, a2_2, a2_3, a2_4, a2_5, a2_6, a2_7, a2_8, a2_9, a2_10, a2_11, a2_12, a2_13,
         a2_14, a2_15) = (
         out[g+2,0], out[g+2,1], out[g+2,2], out[g+2,3], out[g+2,4], out[g+2,5], out[g+2,6],
         out[g+2,7], out[g+2,8], out[g+2,9], out[g+2,10], out[g+2,11], out[g+2,12], out[g+2,13],
         out[g+2,14], out[g+2,15])
    else:
        bv = b[g + 2]
        (a2_0, a2_1, a2_2, a2_3, a2_4, a2_5, a2_6, a2_7, a2_8, a2_9, a2_10, a2_11, a2_12, a2_13,
         a2_14, a2_15) = (
         bv, bv, bv, bv, bv, bv, bv, bv, bv, bv, bv, bv, bv, bv, bv, bv)
    if accumulate:
        (a3_0, a3_1, a3_2, a3_3, a3_4, a3_5, a3_6, a3_7, a3_8, a3_9, a3_10, a3_11, a3_12, a3_13,
         a3_14, a3_15) = (
         out[g+3,0], out[g+3,1], out[g+3,2], out[g+3,3], out[g+3,4], out[g+3,5], out[g+3,6],
         out[g+3,7], out[g+3,8], out[g+3,9], out[g+3,10], out[g+3,11], out[g+3,12], out[g+3,13],
         out[g+3,14], out[g+3,15])
    else:
        bv = b[g + 3]
        (a3_0, a3_1, a3_2, a3_3, a3_4, a3_5, a3_6, a3_7, a3_8, a3_9, a3_10, a3_11, a3_12, a3_13,
         a3_14, a3_15) = (
         bv, bv, bv, bv, bv, bv, bv, bv, bv, bv, bv, bv, bv, bv, bv, bv)
    for j in range(w.shape[1]):
        (s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15) = (
         src[j,0], src[j,1], src[j,2], src[j,3], src[j,4], src[j,5], src[j,6], src[j,7],
         src[j,8], src[j,9], src[j,10], src[j,11], src[j,12], src[j,13], src[j,14], src[j,15])
        u = w[g + 0, j]
        (a0_0, a0_1, a0_2, a0_3, a0_4, a0_5, a0_6, a0_7, a0_8, a0_9, a0_10, a0_11, a0_12, a0_13,
         a0_14, a0_15) = (
         a0_0+u*s0, a0_1+u*s1, a0_2+u*s2, a0_3+u*s3, a0_4+u*s4, a0_5+u*s5, a0_6+u*s6, a0_7+u*s7,
         a0_8+u*s8, a0_9+u*s9, a0_10+u*s10, a0_11+u*s11, a0_12+u*s12, a0_13+u*s13, a0_14+u*s14,
         a0_15+u*s15)
        u = w[g + 1, j]
        (a1_0, a1_1, a1_2, a1_3, a1_4, a1_5, a1_6, a1_7, a1_8, a1_9, a1_10, a1_11, a1_12, a1_13,
         a1_14, a1_15) = (
         a1_0+u*s0, a1_1+u*s1, a1_2+u*s2, a1_3+u*s3, a1_4+u*s4, a1_5+u*s5, a1_6+u*s6, a1_7+u*s7,
         a1_8+u*s8, a1_9+u*s9, a1_10+u*s10, a1_11+u*s11, a1_12+u*s12, a1_13+u*s13, a1_14+u*s14,
         a1_15+u*s15)
        u = w[g + 2, j]
        (a2_0, a2_1, a2_2, a2_3, a2_4, a2_5, a2_6, a2_7, a2_8, a2_9, a2_10, a2_11, a2_12, a2_13,
         a2_14, a2_15) = (
         a2_0+u*s0, a2_1+u*s1, a2_2+u*s2, a2_3+u*s3, a2_4+u*s4, a2_5+u*s5, a2_6+u*s6, a2_7+u*s7,
         a2_8+u*s8, a2_9+u*s9, a2_10+u*s10, a2_11+u*s11, a2_12+u*s12, a2_13+u*s13, a2_14+u*s14,
         a2_15+u*s15)
        u = w[g + 3, j]
        (a3_0, a3_1, a3_2, a3_3, a3_4, a3_5, a3_6, a3_7, a3_8, a3_9, a3_10, a3_11, a3_12, a3_13,
         a3_14, a3_15) = (
         a3_0+u*s0, a3_1+u*s1, a3_2+u*s2, a3_3+u*s3, a3_4+u*s4, a3_5+u*s5, a3_6+u*s6, a3_7+u*s7,
         a3_8+u*s8, a3_9+u*s9, a3_10+u*s10, a3_11+u*s11, a3_12+u*s12, a3_13+u*s13, a3_14+u*s14,
         a3_15+u*s15)
    (out[g+0,0], out[g+0,1], out[g+0,2], out[g+0,3], out[g+0,4], out[g+0,5], out[g+0,6],
     out[g+0,7], out[g+0,8], out[g+0,9], out[g+0,10], out[g+0,11], out[g+0,12], out[g+0,13],
     out[g+0,14], out[g+0,15]) = (
     a0_0, a0_1, a0_2, a0_3, a0_4, a0_5, a0_6, a0_7, a0_8, a0_9, a0_10, a0_11, a0_12, a0_13,
     a0_14, a0_15)
    (out[g+1,0], out[g+1,1], out[g+1,2], out[g+1,3], out[g+1,4], out[g+1,5], out[g+1,6],
     out[g+1,7], out[g+1,8], out[g+1,9], out[g+1,10], out[g+1,11], out[g+1,12], out[g+1,13],
     out[g+1,14], out[g+1,15]) = (
     a1_0, a1_1, a1_2, a1_3, a1_4, a1_5, a1_6, a1_7, a1_8, a1_9, a1_10, a1_11, a1_12, a1_13,
     a1_14, a1_15)
    (out[g+2,0], out[g+2,1], out[g+2,2], out[g+2,3], out[g+2,4], out[g+2,5], out[g+2,6],
     out[g+2,7], out[g+2,8], out[g+2,9], out[g+2,10], out[g+2,11], out[g+2,12], out[g+2,13],
     out[g+2,14], out[g+2,15]) = (
     a2_0, a2_1, a2_2, a2_3, a2_4, a2_5, a2_6, a2_7, a2_8, a2_9, a2_10, a2_11, a2_12, a2_13,
     a2_14, a2_15)
    (out[g+3,0], out[g+3,1], out[g+3,2], out[g+3,3], out[g+3,4], out[g+3,5], out[g+3,6],
     out[g+3,7], out[g+3,8], out[g+3,9], out[g+3,10], out[g+3,11], out[g+3,12], out[g+3,13],
     out[g+3,14], out[g+3,15]) = (
     a3_0, a3_1, a3_2, a3_3, a3_4, a3_5, a3_6, a3_7, a3_8, a3_9, a3_10, a3_11, a3_12, a3_13,
     a3_14, a3_15)


@njit(cache=True, fastmath=FM, error_model="numpy")
def _rows1(out, g, b, w, src, accumulate):
    """out[g:g+1, :] (+)= b[g:g+1] + w[g:g+1] @ src over the 16 lanes, in scalar
    accumulators that the SLP vectorizer keeps in registers (no stores in the loop)."""
    if accumulate:
        (a0_0, a0_1, a0_2, a0_3, a0_4, a0_5, a0_6, a0_7, a0_8, a0_9, a0_10, a0_11, a0_12, a0_13,
         a0_14, a0_15) = (
         out[g+0,0], out[g+0,1], out[g+0,2], out[g+0,3], out[g+0,4], out[g+0,5], out[g+0,6],
         out[g+0,7], out[g+0,8], out[g+0,9], out[g+0,10], out[g+0,11], out[g+0,12], out[g+0,13],
         out[g+0,14], out[g+0,15])
    else:
        bv = b[g + 0]
        (a0_0, a0_1, a0_2, a0_3, a0_4, a0_5, a0_6, a0_7, a0_8, a0_9, a0_10, a0_11, a0_12, a0_13,
         a0_14, a0_15) = (
         bv, bv, bv, bv, bv, bv, bv, bv, bv, bv, bv, bv, bv, bv, bv, bv)
    for j in range(w.shape[1]):
        (s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15) = (
         src[j,0], src[j,1], src[j,2], src[j,3], src[j,4], src[j,5], src[j,6], src[j,7],
         src[j,8], src[j,9], src[j,10], src[j,11], src[j,12], src[j,13], src[j,14], src[j,15])
        u = w[g + 0, j]
        (a0_0, a0_1, a0_2, a0_3, a0_4, a0_5, a0_6, a0_7, a0_8, a0_9, a0_10, a0_11, a0_12, a0_13,
         a0_14, a0_15) = (
         a0_0+u*s0, a0_1+u*s1, a0_2+u*s2, a0_3+u*s3, a0_4+u*s4, a0_5+u*s5, a0_6+u*s6, a0_7+u*s7,
         a0_8+u*s8, a0_9+u*s9, a0_10+u*s10, a0_11+u*s11, a0_12+u*s12, a0_13+u*s13, a0_14+u*s14,
         a0_15+u*s15)
    (out[g+0,0], out[g+0,1], out[g+0,2], out[g+0,3], out[g+0,4], out[g+0,5], out[g+0,6],
     out[g+0,7], out[g+0,8], out[g+0,9], out[g+0,10], out[g+0,11], out[g+0,12], out[g+0,13],
     out[g+0,14], out[g+0,15]) = (
     a0_0, a0_1, a0_2, a0_3, a0_4, a0_5, a0_6, a0_7, a0_8, a0_9, a0_10, a0_11, a0_12, a0_13,
     a0_14, a0_15)


@njit(cache=True, fastmath=FM, error_model="numpy")
def _affine(out, b, w, src, accumulate):
    """out[g, :] (+)= b[g] + sum_j w[g, j] * src[j, :] over the LB lanes, four rows
    of w at a time (four independent FMA chains hide the FMA latency)."""
    rows = w.shape[0]
    g = 0
    while g + 4 <= rows:
        _rows4(out, g, b, w, src, accumulate)
        g += 4
    while g < rows:
        _rows1(out, g, b, w, src, accumulate)
        g += 1


@njit(cache=True, fastmath=FM, error_model="numpy")
def _back_affine(out, wt, src, accumulate):
    """out[j, :] (+)= sum_g wt[j, g] * src[g, :]: the transpose product, wt = w.T."""
    if not accumulate:
        out[:wt.shape[0], :] = 0
    _affine(out, src[0], wt, src, True)


@njit(cache=True, fastmath=FM, error_model="numpy")
def _gather(dst, src, n0, nl, t):
    """dst[k, l] = src[n0 + l, t, k] for the nl live lanes (the rest stay as they are)."""
    for l in range(nl):
        for k in range(dst.shape[0]):
            dst[k, l] = src[n0 + l, t, k]


@njit(cache=True, fastmath=FM, error_model="numpy")
def _scatter(dst, src, n0, nl, t):
    """dst[n0 + l, t, k] = src[k, l] for the nl live lanes."""
    for l in range(nl):
        for k in range(dst.shape[2]):
            dst[n0 + l, t, k] = src[k, l]


def _blocks(n):
    return (n + LB - 1) // LB


def _use_parallel(n, t, g, f, h):
    blocks = _blocks(n)
    return (numba.get_num_threads() > 1 and blocks > 1
            and blocks * t * g * (f + h) * LB >= PARALLEL_MIN_WORK)


# ----------------------------------------------------------------- forward


@njit(cache=True, fastmath=FM, error_model="numpy")
def _rnn_block(x, w_ih, w_hh, b, h_out, n0):
    n, t_len, f = x.shape
    hid = w_hh.shape[1]
    nl = min(LB, n - n0)
    dt = x.dtype
    xb = np.zeros((f, LB), dt)
    hb = np.zeros((hid, LB), dt)
    ab = np.empty((hid, LB), dt)
    hbf, abf = hb.reshape(-1), ab.reshape(-1)
    for t in range(t_len):
        _gather(xb, x, n0, nl, t)
        _affine(ab, b, w_ih, xb, False)
        _affine(ab, b, w_hh, hb, True)
        for q in range(hbf.size):
            hbf[q] = _tanh(abf[q])
        _scatter(h_out, hb, n0, nl, t)


@njit(cache=True, fastmath=FM, error_model="numpy")
def _lstm_block(x, w_ih, w_hh, b, h_out, c_out, gates, n0):
    n, t_len, f = x.shape
    hid = w_hh.shape[1]
    nl = min(LB, n - n0)
    dt = x.dtype
    xb = np.zeros((f, LB), dt)
    hb = np.zeros((hid, LB), dt)
    cb = np.zeros((hid, LB), dt)
    ab = np.empty((4 * hid, LB), dt)
    gb = np.empty((4 * hid, LB), dt)
    # flat views: the gate loops run over hid * LB elements with a runtime trip
    # count, which LLVM's loop vectorizer takes (with its runtime alias checks)
    hbf, cbf, abf, gbf = hb.reshape(-1), cb.reshape(-1), ab.reshape(-1), gb.reshape(-1)
    hl = hid * LB
    for t in range(t_len):
        _gather(xb, x, n0, nl, t)
        _affine(ab, b, w_ih, xb, False)
        _affine(ab, b, w_hh, hb, True)
        for q in range(hl):
            i = _sigm(abf[q])
            fg = _sigm(abf[hl + q])
            g = _tanh(abf[2 * hl + q])
            o = _sigm(abf[3 * hl + q])
            c = fg * cbf[q] + i * g
            cbf[q] = c
            hbf[q] = o * _tanh(c)
            gbf[q] = i
            gbf[hl + q] = fg
            gbf[2 * hl + q] = g
            gbf[3 * hl + q] = o
        _scatter(h_out, hb, n0, nl, t)
        _scatter(c_out, cb, n0, nl, t)
        _scatter(gates, gb, n0, nl, t)


@njit(cache=True, fastmath=FM, error_model="numpy")
def _gru_block(x, w_ih, w_hh, b_ih, b_hh, h_out, gates, hn, n0):
    n, t_len, f = x.shape
    hid = w_hh.shape[1]
    nl = min(LB, n - n0)
    dt = x.dtype
    one = dt.type(1)
    xb = np.zeros((f, LB), dt)
    hb = np.zeros((hid, LB), dt)
    ai = np.empty((3 * hid, LB), dt)
    ah = np.empty((3 * hid, LB), dt)
    gb = np.empty((3 * hid, LB), dt)
    hbf, aif, ahf, gbf = hb.reshape(-1), ai.reshape(-1), ah.reshape(-1), gb.reshape(-1)
    hl = hid * LB
    for t in range(t_len):
        _gather(xb, x, n0, nl, t)
        _affine(ai, b_ih, w_ih, xb, False)
        _affine(ah, b_hh, w_hh, hb, False)
        for q in range(hl):
            r = _sigm(aif[q] + ahf[q])
            z = _sigm(aif[hl + q] + ahf[hl + q])
            nw = _tanh(aif[2 * hl + q] + r * ahf[2 * hl + q])
            hbf[q] = (one - z) * nw + z * hbf[q]
            gbf[q] = r
            gbf[hl + q] = z
            gbf[2 * hl + q] = nw
        _scatter(h_out, hb, n0, nl, t)
        _scatter(gates, gb, n0, nl, t)
        _scatter_part(hn, ah, 2 * hid, n0, nl, t)


@njit(cache=True, fastmath=FM, error_model="numpy")
def _scatter_part(dst, src, k0, n0, nl, t):
    """dst[n0 + l, t, k] = src[k0 + k, l]."""
    for l in range(nl):
        for k in range(dst.shape[2]):
            dst[n0 + l, t, k] = src[k0 + k, l]


@njit(cache=True, fastmath=FM, error_model="numpy")
def _rnn_serial(x, w_ih, w_hh, b, h):
    for blk in range((x.shape[0] + LB - 1) // LB):
        _rnn_block(x, w_ih, w_hh, b, h, blk * LB)


@njit(cache=True, parallel=True)
def _rnn_parallel(x, w_ih, w_hh, b, h):
    for blk in prange((x.shape[0] + LB - 1) // LB):
        _rnn_block(x, w_ih, w_hh, b, h, blk * LB)


@njit(cache=True, fastmath=FM, error_model="numpy")
def _lstm_serial(x, w_ih, w_hh, b, h, c, gates):
    for blk in range((x.shape[0] + LB - 1) // LB):
        _lstm_block(x, w_ih, w_hh, b, h, c, gates, blk * LB)


@njit(cache=True, parallel=True)
def _lstm_parallel(x, w_ih, w_hh, b, h, c, gates):
    for blk in prange((x.shape[0] + LB - 1) // LB):
        _lstm_block(x, w_ih, w_hh, b, h, c, gates, blk * LB)


@njit(cache=True, fastmath=FM, error_model="numpy")
def _gru_serial(x, w_ih, w_hh, b_ih, b_hh, h, gates, hn):
    for blk in range((x.shape[0] + LB - 1) // LB):
        _gru_block(x, w_ih, w_hh, b_ih, b_hh, h, gates, hn, blk * LB)


@njit(cache=True, parallel=True)
def _gru_parallel(x, w_ih, w_hh, b_ih, b_hh, h, gates, hn):
    for blk in prange((x.shape[0] + LB - 1) // LB):
        _gru_block(x, w_ih, w_hh, b_ih, b_hh, h, gates, hn, blk * LB)


def rnn(x, w_ih, w_hh, b_ih, b_hh):
    """Elman RNN: h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh). Returns h (N, T, H)."""
    n, t, f = x.shape
    hid = w_hh.shape[1]
    h = np.empty((n, t, hid), x.dtype)
    run = _rnn_parallel if _use_parallel(n, t, hid, f, hid) else _rnn_serial
    run(x, w_ih, w_hh, b_ih + b_hh, h)
    return h


def lstm(x, w_ih, w_hh, b_ih, b_hh):
    """LSTM (gates i, f, g, o): returns (h, c, gates), gates (N, T, 4H) after activation."""
    n, t, f = x.shape
    hid = w_hh.shape[1]
    h, c = np.empty((n, t, hid), x.dtype), np.empty((n, t, hid), x.dtype)
    gates = np.empty((n, t, 4 * hid), x.dtype)
    run = _lstm_parallel if _use_parallel(n, t, 4 * hid, f, hid) else _lstm_serial
    run(x, w_ih, w_hh, b_ih + b_hh, h, c, gates)
    return h, c, gates


def gru(x, w_ih, w_hh, b_ih, b_hh):
    """GRU (gates r, z, n): returns (h, gates, hn), hn = W_hn h_{t-1} + b_hn."""
    n, t, f = x.shape
    hid = w_hh.shape[1]
    h, hn = np.empty((n, t, hid), x.dtype), np.empty((n, t, hid), x.dtype)
    gates = np.empty((n, t, 3 * hid), x.dtype)
    run = _gru_parallel if _use_parallel(n, t, 3 * hid, f, hid) else _gru_serial
    run(x, w_ih, w_hh, b_ih, b_hh, h, gates, hn)
    return h, gates, hn


# ---------------------------------------------------------------- backward
# Each block writes d_in / d_hid (N, T, G): the gradients of the input-side and
# hidden-side pre-activations (the same array for RNN and LSTM), accumulates
# the bias gradients in lane sums db (2, G, LB) per block, and, when need_dx
# and the input is narrow, dx and the lane sums of dW_ih.


@njit(cache=True, fastmath=FM, error_model="numpy")
def _input_grads(da, xb, wt_ih, dxb, dwih, need_dx, skinny):
    """dx lanes from da (G, LB) and dW_ih lane sums (G, F, LB) for narrow inputs."""
    if need_dx and skinny:
        _back_affine(dxb, wt_ih, da, False)
    if skinny:
        g_rows, f = da.shape[0], xb.shape[0]
        for g in range(g_rows):
            for ff in range(f):
                acc = dwih[g, ff]
                for l in range(LB):
                    acc[l] += da[g, l] * xb[ff, l]


@njit(cache=True, fastmath=FM, error_model="numpy")
def _rnn_back_block(dh, x, h, w_hh_t, w_ih_t, da_out, dx, db, dwih, need_dx, skinny, n0):
    n, t_len, f = x.shape
    hid = h.shape[2]
    nl = min(LB, n - n0)
    dt = x.dtype
    one = dt.type(1)
    carry = np.zeros((hid, LB), dt)
    hb = np.zeros((hid, LB), dt)
    dhb = np.zeros((hid, LB), dt)
    da = np.zeros((hid, LB), dt)
    xb = np.zeros((f, LB), dt)
    dxb = np.zeros((f, LB), dt)
    hbf, dhf, caf, daf, dbf = hb.reshape(-1), dhb.reshape(-1), carry.reshape(-1), da.reshape(-1), db.reshape(-1)
    for t in range(t_len - 1, -1, -1):
        _gather(hb, h, n0, nl, t)
        _gather(dhb, dh, n0, nl, t)
        for q in range(hbf.size):
            v = hbf[q]
            d = (dhf[q] + caf[q]) * (one - v * v)
            daf[q] = d
        for q in range(hbf.size):
            dbf[q] += daf[q]
        _back_affine(carry, w_hh_t, da, False)
        if skinny:
            _gather(xb, x, n0, nl, t)
        _input_grads(da, xb, w_ih_t, dxb, dwih, need_dx, skinny)
        if need_dx and skinny:
            _scatter(dx, dxb, n0, nl, t)
        _scatter(da_out, da, n0, nl, t)


@njit(cache=True, fastmath=FM, error_model="numpy")
def _lstm_back_block(dh, x, h, c, gates, w_hh_t, w_ih_t, da_out, dx, db, dwih,
                     need_dx, skinny, n0):
    n, t_len, f = x.shape
    hid = h.shape[2]
    nl = min(LB, n - n0)
    dt = x.dtype
    one = dt.type(1)
    dh_next = np.zeros((hid, LB), dt)
    dc_next = np.zeros((hid, LB), dt)
    dhb = np.zeros((hid, LB), dt)
    cb = np.zeros((hid, LB), dt)
    cpb = np.zeros((hid, LB), dt)
    gb = np.zeros((4 * hid, LB), dt)
    da = np.zeros((4 * hid, LB), dt)
    xb = np.zeros((f, LB), dt)
    dxb = np.zeros((f, LB), dt)
    dhf, dnf, dcf = dhb.reshape(-1), dh_next.reshape(-1), dc_next.reshape(-1)
    cf, cpf, gbf, daf, dbf = cb.reshape(-1), cpb.reshape(-1), gb.reshape(-1), da.reshape(-1), db.reshape(-1)
    hl = hid * LB
    for t in range(t_len - 1, -1, -1):
        _gather(dhb, dh, n0, nl, t)
        _gather(cb, c, n0, nl, t)
        _gather(gb, gates, n0, nl, t)
        if t > 0:
            _gather(cpb, c, n0, nl, t - 1)
        else:
            cpb[:] = 0
        for q in range(hl):
            dhf[q] += dnf[q]
        for q in range(hl):
            i, fg, g, o = gbf[q], gbf[hl + q], gbf[2 * hl + q], gbf[3 * hl + q]
            tc = _tanh(cf[q])
            dht = dhf[q]
            dc = dcf[q] + dht * o * (one - tc * tc)
            daf[q] = dc * g * i * (one - i)
            daf[hl + q] = dc * cpf[q] * fg * (one - fg)
            daf[2 * hl + q] = dc * i * (one - g * g)
            daf[3 * hl + q] = dht * tc * o * (one - o)
            dcf[q] = dc * fg
        for q in range(daf.size):
            dbf[q] += daf[q]
        _back_affine(dh_next, w_hh_t, da, False)
        if skinny:
            _gather(xb, x, n0, nl, t)
        _input_grads(da, xb, w_ih_t, dxb, dwih, need_dx, skinny)
        if need_dx and skinny:
            _scatter(dx, dxb, n0, nl, t)
        _scatter(da_out, da, n0, nl, t)


@njit(cache=True, fastmath=FM, error_model="numpy")
def _gru_back_block(dh, x, h, gates, hn, w_hh_t, w_ih_t, d_in, d_hid, dx, db, dbh, dwih,
                    need_dx, skinny, n0):
    n, t_len, f = x.shape
    hid = h.shape[2]
    nl = min(LB, n - n0)
    dt = x.dtype
    one = dt.type(1)
    dh_next = np.zeros((hid, LB), dt)
    dht = np.zeros((hid, LB), dt)
    hpb = np.zeros((hid, LB), dt)
    hnb = np.zeros((hid, LB), dt)
    gb = np.zeros((3 * hid, LB), dt)
    din = np.zeros((3 * hid, LB), dt)
    dhid = np.zeros((3 * hid, LB), dt)
    xb = np.zeros((f, LB), dt)
    dxb = np.zeros((f, LB), dt)
    dtf, dnf, hpf, hnf = dht.reshape(-1), dh_next.reshape(-1), hpb.reshape(-1), hnb.reshape(-1)
    gbf, dif, dhf = gb.reshape(-1), din.reshape(-1), dhid.reshape(-1)
    dbf, dbhf = db.reshape(-1), dbh.reshape(-1)
    hl = hid * LB
    for t in range(t_len - 1, -1, -1):
        _gather(dht, dh, n0, nl, t)
        _gather(gb, gates, n0, nl, t)
        _gather(hnb, hn, n0, nl, t)
        if t > 0:
            _gather(hpb, h, n0, nl, t - 1)
        else:
            hpb[:] = 0
        for q in range(hl):
            dtf[q] += dnf[q]
        for q in range(hl):
            r, z, nw = gbf[q], gbf[hl + q], gbf[2 * hl + q]
            d = dtf[q]
            dnf[q] = d * z          # the direct path; d_hid @ w_hh is added below
            d_new = d * (one - z) * (one - nw * nw)
            d_r = d_new * hnf[q] * r * (one - r)
            d_z = d * (hpf[q] - nw) * z * (one - z)
            dif[q] = d_r
            dif[hl + q] = d_z
            dif[2 * hl + q] = d_new
            dhf[q] = d_r
            dhf[hl + q] = d_z
            dhf[2 * hl + q] = d_new * r
        for q in range(dif.size):
            dbf[q] += dif[q]
            dbhf[q] += dhf[q]
        _back_affine(dh_next, w_hh_t, dhid, True)
        if skinny:
            _gather(xb, x, n0, nl, t)
        _input_grads(din, xb, w_ih_t, dxb, dwih, need_dx, skinny)
        if need_dx and skinny:
            _scatter(dx, dxb, n0, nl, t)
        _scatter(d_in, din, n0, nl, t)
        _scatter(d_hid, dhid, n0, nl, t)


@njit(cache=True, fastmath=FM, error_model="numpy")
def _rnn_back_all(dh, x, h, w_hh_t, w_ih_t, da, dx, db, dwih, need_dx, skinny):
    for blk in range(db.shape[0]):
        _rnn_back_block(dh, x, h, w_hh_t, w_ih_t, da, dx, db[blk], dwih[blk],
                        need_dx, skinny, blk * LB)


@njit(cache=True, parallel=True)
def _rnn_back_par(dh, x, h, w_hh_t, w_ih_t, da, dx, db, dwih, need_dx, skinny):
    for blk in prange(db.shape[0]):
        _rnn_back_block(dh, x, h, w_hh_t, w_ih_t, da, dx, db[blk], dwih[blk],
                        need_dx, skinny, blk * LB)


@njit(cache=True, fastmath=FM, error_model="numpy")
def _lstm_back_all(dh, x, h, c, gates, w_hh_t, w_ih_t, da, dx, db, dwih, need_dx, skinny):
    for blk in range(db.shape[0]):
        _lstm_back_block(dh, x, h, c, gates, w_hh_t, w_ih_t, da, dx, db[blk], dwih[blk],
                         need_dx, skinny, blk * LB)


@njit(cache=True, parallel=True)
def _lstm_back_par(dh, x, h, c, gates, w_hh_t, w_ih_t, da, dx, db, dwih, need_dx, skinny):
    for blk in prange(db.shape[0]):
        _lstm_back_block(dh, x, h, c, gates, w_hh_t, w_ih_t, da, dx, db[blk], dwih[blk],
                         need_dx, skinny, blk * LB)


@njit(cache=True, fastmath=FM, error_model="numpy")
def _gru_back_all(dh, x, h, gates, hn, w_hh_t, w_ih_t, d_in, d_hid, dx, db, dbh, dwih,
                  need_dx, skinny):
    for blk in range(db.shape[0]):
        _gru_back_block(dh, x, h, gates, hn, w_hh_t, w_ih_t, d_in, d_hid, dx, db[blk],
                        dbh[blk], dwih[blk], need_dx, skinny, blk * LB)


@njit(cache=True, parallel=True)
def _gru_back_par(dh, x, h, gates, hn, w_hh_t, w_ih_t, d_in, d_hid, dx, db, dbh, dwih,
                  need_dx, skinny):
    for blk in prange(db.shape[0]):
        _gru_back_block(dh, x, h, gates, hn, w_hh_t, w_ih_t, d_in, d_hid, dx, db[blk],
                        dbh[blk], dwih[blk], need_dx, skinny, blk * LB)


@njit(cache=True, fastmath=FM, error_model="numpy")
def _previous(h):
    """h_{t-1} for every step, zeros before the first: (N*T, H)."""
    n, t_len, hid = h.shape
    out = np.empty((n * t_len, hid), h.dtype)
    for i in range(n):
        out[i * t_len, :] = 0
        for t in range(1, t_len):
            out[i * t_len + t, :] = h[i, t - 1]
    return out


def _weight_grads(x, h, d_in, d_hid, w_ih, dx, dwih_lanes, skinny, need_dx):
    """dW_ih, dW_hh (and dx for wide inputs) from the pre-activation gradients."""
    n, t, f = x.shape
    g = d_in.shape[2]
    d_in2 = d_in.reshape(n * t, g)
    d_hid2 = d_hid.reshape(n * t, g)
    dw_hh = _gemm_into(d_hid2, _previous(h), np.empty((g, h.shape[2]), x.dtype), True, False)
    if skinny:
        dw_ih = dwih_lanes.sum(axis=(0, 3)).astype(x.dtype, copy=False)
    else:
        dw_ih = _gemm_into(d_in2, x.reshape(n * t, f), np.empty((g, f), x.dtype), True, False)
        if need_dx:
            dx = _gemm_into(d_in2, w_ih, np.empty((n * t, f), x.dtype), False, False).reshape(x.shape)
    return dx if need_dx else None, dw_ih, dw_hh


def _setup(x, h, w_ih, w_hh, g, need_dx):
    n, t, f = x.shape
    hid = h.shape[2]
    blocks = _blocks(n)
    skinny = f <= SKINNY_F
    dt = x.dtype
    dx = np.empty(x.shape, dt) if (need_dx and skinny) else np.empty((1, 1, 1), dt)
    dwih = np.zeros((blocks, g, f, LB) if skinny else (blocks, 1, 1, LB), dt)
    db = np.zeros((blocks, g, LB), dt)
    par = _use_parallel(n, t, g, f, hid)
    return (np.ascontiguousarray(w_hh.T), np.ascontiguousarray(w_ih.T), dx, dwih, db, skinny, par)


def rnn_backward(dh, x, h, w_ih, w_hh, need_dx=True):
    """BPTT from dh (N, T, H): (dx or None, dw_ih, dw_hh, db_ih, db_hh)."""
    w_hh_t, w_ih_t, dx, dwih, db, skinny, par = _setup(x, h, w_ih, w_hh, w_hh.shape[0], need_dx)
    da = np.empty(h.shape, x.dtype)
    run = _rnn_back_par if par else _rnn_back_all
    run(dh, x, h, w_hh_t, w_ih_t, da, dx, db, dwih, need_dx, skinny)
    dx, dw_ih, dw_hh = _weight_grads(x, h, da, da, w_ih, dx, dwih, skinny, need_dx)
    dbias = db.sum(axis=(0, 2)).astype(x.dtype, copy=False)
    return dx, dw_ih, dw_hh, dbias, dbias.copy()


def lstm_backward(dh, x, h, c, gates, w_ih, w_hh, need_dx=True):
    w_hh_t, w_ih_t, dx, dwih, db, skinny, par = _setup(x, h, w_ih, w_hh, w_hh.shape[0], need_dx)
    da = np.empty(gates.shape, x.dtype)
    run = _lstm_back_par if par else _lstm_back_all
    run(dh, x, h, c, gates, w_hh_t, w_ih_t, da, dx, db, dwih, need_dx, skinny)
    dx, dw_ih, dw_hh = _weight_grads(x, h, da, da, w_ih, dx, dwih, skinny, need_dx)
    dbias = db.sum(axis=(0, 2)).astype(x.dtype, copy=False)
    return dx, dw_ih, dw_hh, dbias, dbias.copy()


def gru_backward(dh, x, h, gates, hn, w_ih, w_hh, need_dx=True):
    w_hh_t, w_ih_t, dx, dwih, db, skinny, par = _setup(x, h, w_ih, w_hh, w_hh.shape[0], need_dx)
    dbh = np.zeros_like(db)
    d_in, d_hid = np.empty(gates.shape, x.dtype), np.empty(gates.shape, x.dtype)
    run = _gru_back_par if par else _gru_back_all
    run(dh, x, h, gates, hn, w_hh_t, w_ih_t, d_in, d_hid, dx, db, dbh, dwih, need_dx, skinny)
    dx, dw_ih, dw_hh = _weight_grads(x, h, d_in, d_hid, w_ih, dx, dwih, skinny, need_dx)
    return (dx, dw_ih, dw_hh, db.sum(axis=(0, 2)).astype(x.dtype, copy=False),
            dbh.sum(axis=(0, 2)).astype(x.dtype, copy=False))
