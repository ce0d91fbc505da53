import numpy as np
import pytest

import fastnn as fnn

BACKENDS = fnn.backends()


def pytest_report_header(config):
    return f"fastnn backends: {BACKENDS}"


@pytest.fixture(params=BACKENDS)
def backend(request):
    return fnn.get_backend(request.param)


def assert_close(actual, expected, dtype, rtol=None, atol=None):
    """|actual - expected| <= atol + rtol * |expected|, elementwise."""
    if rtol is None:
        rtol = 2e-4 if np.dtype(dtype) == np.float32 else 1e-10
    if atol is None:
        atol = 1e-5 if np.dtype(dtype) == np.float32 else 1e-12
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    bound = atol + rtol * np.abs(expected.astype(np.float64))
    worst = np.argmax(err - bound) if err.size else 0
    assert np.all(err <= bound), (
        f"max excess {np.max(err - bound):.3g} at flat index {worst}: "
        f"got {actual.flat[worst]!r}, expected {expected.flat[worst]!r}")
