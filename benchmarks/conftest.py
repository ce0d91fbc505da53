"""pytest-benchmark suites: every group holds the numpy reference and every other backend.

Run:      pytest benchmarks --benchmark-save=mine
Compare:  pytest-benchmark compare --group-by=group   (or --benchmark-compare=0001 on a later run)
"""
import numpy as np
import pytest

import fastnn as fnn

CPU_BACKENDS = [b for b in fnn.backends() if b != "cuda"]


@pytest.fixture(params=CPU_BACKENDS)
def backend(request):
    return fnn.get_backend(request.param)


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(0)
