"""The small-image fast paths of the compiled conv kernels (batch-inner im2col layout,
unrolled 2x2 max pool) against the reference, forced on and off, float32 and float64."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn._kernels import reference as ref
from conftest import COMPILED, assert_close

# (batch, C_in, H, W, C_out, kernel, stride, padding): batches above BI_MIN_N, padded,
# strided, 1x1, and the BatchNorm CNN's two layers
CASES = [(20, 3, 5, 6, 4, (3, 2), (1, 1), (1, 0)), (17, 2, 7, 5, 3, (3, 3), (2, 2), (2, 1)),
         (12, 1, 8, 8, 5, (1, 1), (1, 1), (0, 0)), (9, 2, 3, 3, 2, (3, 3), (1, 3), (2, 2)),
         (30, 16, 4, 4, 32, (3, 3), (1, 1), (1, 1)), (40, 1, 8, 8, 16, (3, 3), (1, 1), (1, 1))]
# sums of up to ~2000 products of N(0, 1) values
TOL = {np.float32: dict(rtol=2e-4, atol=2e-3), np.float64: dict(rtol=1e-10, atol=1e-10)}


def _force_bi(name, on):
    """Turn the batch-inner layout on for every batch >= 2 (on) or off; returns the undo."""
    value = 2 if on else 10 ** 9
    if name == "cython":
        from fastnn._kernels.cython import _mod as mod   # the compiled module the kernels come from
        mod._set_conv_bi_min_n(value)
        return lambda: mod._set_conv_bi_min_n(8)
    from fastnn._kernels.numba_cpu import conv
    old, conv.BI_MIN_N = conv.BI_MIN_N, value
    return lambda: setattr(conv, "BI_MIN_N", old)


@pytest.mark.parametrize("name", COMPILED)
@pytest.mark.parametrize("bi", [True, False], ids=["batch-inner", "plain"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_paths_match_reference(name, bi, dtype):
    kernels = fnn.get_backend(name)
    rng = np.random.default_rng(7)
    undo = _force_bi(name, bi)
    try:
        for n, c, h, w, co, k, s, p in CASES:
            x = rng.standard_normal((n, c, h, w)).astype(dtype)
            wt = rng.standard_normal((co, c) + k).astype(dtype)
            b = rng.standard_normal(co).astype(dtype)
            for bias in (b, None):
                assert_close(kernels.conv2d(x, wt, bias, s, p), ref.conv2d(x, wt, bias, s, p), dtype, **TOL[dtype])
            dy = rng.standard_normal(ref.conv2d(x, wt, b, s, p).shape).astype(dtype)
            for need_dx in (True, False):
                got = kernels.conv2d_backward(dy, x, wt, s, p, need_dx)
                want = ref.conv2d_backward(dy, x, wt, s, p, need_dx)
                assert (got[0] is None) == (not need_dx)
                for g, e in zip(got, want):
                    if e is not None:
                        assert_close(g, e, dtype, **TOL[dtype])
    finally:
        undo()


@pytest.mark.parametrize("name", COMPILED)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv1d_batch_inner_matches_reference(name, dtype):
    kernels = fnn.get_backend(name)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 3, 11)).astype(dtype)
    wt = rng.standard_normal((4, 3, 3)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    assert_close(kernels.conv1d(x, wt, b, 2, 1), ref.conv1d(x, wt, b, 2, 1), dtype, **TOL[dtype])
    dy = rng.standard_normal((50, 4, 6)).astype(dtype)
    for g, e in zip(kernels.conv1d_backward(dy, x, wt, 2, 1), ref.conv1d_backward(dy, x, wt, 2, 1)):
        assert_close(g, e, dtype, **TOL[dtype])


@pytest.mark.parametrize("name", COMPILED)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_maxpool_2x2_matches_reference_with_ties_and_nans(name, dtype):
    kernels = fnn.get_backend(name)
    rng = np.random.default_rng(5)
    for shape in [(3, 4, 8, 8), (2, 3, 5, 7), (1, 1, 2, 2)]:
        x = rng.integers(0, 3, size=shape).astype(dtype)     # many ties
        x.flat[rng.choice(x.size, size=max(1, x.size // 7), replace=False)] = np.nan
        y, idx = kernels.maxpool2d(x, (2, 2), (2, 2))
        y_ref, idx_ref = ref.maxpool2d(x, (2, 2), (2, 2))
        np.testing.assert_array_equal(idx, idx_ref)
        np.testing.assert_array_equal(y, y_ref)            # NaNs compare equal here
