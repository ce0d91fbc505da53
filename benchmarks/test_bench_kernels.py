"""One benchmark group per kernel (and size), generated from the registry: the numpy
reference beside every other CPU backend, each timing ``backend.raw.<kernel>`` on the
kernel's bench examples (fastnn/_kernels/examples.py), float32."""
import zlib

import numpy as np
import pytest

from fastnn._kernels import registry

DT = np.float32
CASES = [pytest.param(kernel, example, id=f"{kernel.name}-{example.id}")
         for kernel in registry.KERNELS.values() for example in kernel.examples.bench]


@pytest.mark.parametrize("kernel,example", CASES)
def test_kernel(benchmark, backend, kernel, example):
    rng = np.random.default_rng(zlib.crc32(f"{kernel.name}/{example.id}".encode()))
    args, kwargs = example.make(rng, DT)
    args, kwargs = kernel.check(*args, **kwargs)   # the raw-kernel contract, once, untimed
    fn = getattr(backend.raw, kernel.name)
    fn(*args, **kwargs)   # JIT compile (numba) outside the timing
    several = len(kernel.examples.bench) > 1
    benchmark.group = f"{kernel.name} {example.id}" if several else kernel.name
    benchmark.extra_info["example"] = example.id
    benchmark(fn, *args, **kwargs)
