import atexit
import os
import shutil
import tempfile

import numpy as np
import pytest

import fastnn as fnn
from fastnn._kernels import registry

# kernel choice (issue 13): the auto backend records its measured choices under FASTNN_CACHE_DIR;
# the suite keeps them in a temporary folder of its own, never in the real ~/.cache
os.environ["FASTNN_CACHE_DIR"] = tempfile.mkdtemp(prefix="fastnn-test-cache-")
atexit.register(shutil.rmtree, os.environ["FASTNN_CACHE_DIR"], True)

BACKENDS = fnn.backends()
# Backends other than the reference: what parity tests compare with it.
COMPILED = [b for b in BACKENDS if b != "numpy"]
compiled_backends = pytest.mark.parametrize("backend", [fnn.get_backend(b) for b in COMPILED], ids=COMPILED)


def pytest_report_header(config):
    return f"fastnn backends: {BACKENDS}"


@pytest.fixture(params=BACKENDS)
def backend(request):
    return fnn.get_backend(request.param)


def assert_close(actual, expected, dtype, rtol=None, atol=None):
    """|actual - expected| <= atol + rtol * |expected|, elementwise: the one tolerance test.
    rtol and atol default to the registry's elementwise tolerance for dtype."""
    default_rtol, default_atol = registry.elementwise(dtype)
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    bound = atol + rtol * np.abs(expected.astype(np.float64))
    worst = np.argmax(err - bound) if err.size else 0
    assert np.all(err <= bound), (
        f"max excess {np.max(err - bound):.3g} at flat index {worst}: "
        f"got {actual.flat[worst]!r}, expected {expected.flat[worst]!r}")
