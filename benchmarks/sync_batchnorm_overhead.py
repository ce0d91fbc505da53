"""What synchronized BatchNorm costs in compute, apart from the network: a training
forward + backward of BatchNorm1D/2D with layer.sync set to a one-rank communicator
(its collectives copy) against the same layer unsynced, interleaved in one process,
one thread, per CPU backend: median times and the sync / local ratio. A third row
takes each rank's statistics with NumPy on the host instead of the backend's kernel
(the alternative the layer does not use), to show why.

    python benchmarks/sync_batchnorm_overhead.py [--dtype float32] [--repeats 200]

Sizes: the BatchNorm CNN's activations (100 x 16 x 8 x 8, 100 x 32 x 4 x 4) and (100, 64).
"""
import argparse
import statistics
import time

import numpy as np

import fastnn as fnn
from fastnn.layers import BatchNorm1D, BatchNorm2D, Context

CASES = {"BatchNorm2D 100x16x8x8": (BatchNorm2D, (100, 16, 8, 8)),
         "BatchNorm2D 100x32x4x4": (BatchNorm2D, (100, 32, 4, 4)),
         "BatchNorm1D 100x64": (BatchNorm1D, (100, 64))}


class OneRank:
    """The communicator of a world of one: what the collectives cost without a network."""

    def allgather_array(self, a):
        return [np.array(a, copy=True)]

    def allreduce_sum(self, a):
        return np.array(a, copy=True)


def numpy_stats(layer):
    """layer._local_stats done on the host with NumPy (two passes and a temporary)."""
    def stats(x3):
        x = np.asarray(layer._to_host(x3), np.float64)
        mean = x.mean(axis=(0, 2))
        d = x - mean[None, :, None]
        return mean, np.einsum("ncs,ncs->c", d, d) / (x.shape[0] * x.shape[2])
    return stats


def step_fn(cls, shape, backend, dtype, variant, x, dy):
    model = fnn.Sequential(cls(shape[1]), backend=backend, dtype=dtype, seed=0)
    layer = model.layers[0]
    if variant != "local":
        layer.sync = OneRank()
    if variant == "sync, numpy stats":
        layer._local_stats = numpy_stats(layer)

    def step():
        ctx = Context(training=True, need_dx=True)
        layer.forward(ctx, x)
        layer.backward(ctx, dy)
    return step


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    from threadpoolctl import threadpool_limits
    dtype = np.dtype(args.dtype)
    backends = [b for b in fnn.backends() if b != "cuda"]
    for b in backends:
        if hasattr(fnn.get_backend(b).module, "set_num_threads"):
            fnn.get_backend(b).module.set_num_threads(1)
    variants = ("local", "sync", "sync, numpy stats")
    print(f"| layer ({dtype.name}) | backend | local fwd+bwd us | sync us | sync / local "
          f"| sync with numpy stats / local |\n|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    with threadpool_limits(1):
        for label, (cls, shape) in CASES.items():
            x = rng.standard_normal(shape).astype(dtype)
            dy = rng.standard_normal(shape).astype(dtype)
            fns = {(b, v): step_fn(cls, shape, b, dtype, v, x, dy) for b in backends for v in variants}
            samples = {k: [] for k in fns}
            for f in fns.values():
                f()
            for _ in range(args.repeats):      # interleaved: the machine's noise hits all alike
                for k, f in fns.items():
                    t = time.perf_counter()
                    f()
                    samples[k].append(time.perf_counter() - t)
            med = {k: statistics.median(v) * 1e6 for k, v in samples.items()}
            for b in backends:
                loc = med[b, "local"]
                print(f"| {label} | {b} | {loc:.1f} | {med[b, 'sync']:.1f} | {med[b, 'sync'] / loc:.2f}x "
                      f"| {med[b, 'sync, numpy stats'] / loc:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
