"""The fused optimizer and clipping kernels against the NumPy reference on a ~1M-parameter
flat buffer (float32 and float64), timed interleaved in one process on one thread.

    python benchmarks/optim_step_ratio.py [--size 1000000] [--repeat 30]

Prints, per kernel and backend, the median time ratio reference / backend (higher is faster).
The inputs are the registry's bench examples (fastnn/_kernels/examples.py) with the given size.
"""
import argparse
import statistics
import time
import zlib

import numpy as np

import fastnn as fnn
from fastnn._kernels import examples as ex, registry

KERNELS = ("sgd_step", "adam_step", "adamw_step", "rmsprop_step", "adagrad_step", "grad_norm", "grad_scale")
MAKERS = {   # kernel -> make(rng, dtype, size): the bench example's arguments at any size
    "sgd_step": lambda r, d, n: ex._sgd(r, d, n, 0.9, False, 0.0, lr=1e-9),
    "adam_step": lambda r, d, n: ex._adam(r, d, n, 0.0, 3, lr=1e-9),
    "adamw_step": lambda r, d, n: ex._adamw(r, d, n, 0.01, 3, lr=1e-9),
    "rmsprop_step": lambda r, d, n: ex._rmsprop(r, d, n, 0.0, 0.9, True, lr=1e-9),
    "adagrad_step": lambda r, d, n: ex._adagrad(r, d, n, 0.0, 0.0, 2, lr=1e-9),
    "grad_norm": lambda r, d, n: ex._grad_norm(r, d, n, 2.0),
    "grad_scale": lambda r, d, n: ex._grad_scale(r, d, n),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(1)
    except ImportError:
        pass
    names = [b for b in fnn.backends() if b in ("numpy", "numba", "cython")]
    for b in names:
        fnn.get_backend(b).module.__dict__.get("set_num_threads", lambda n: None)(1)
    print(f"{args.size} parameters, median of {args.repeat} interleaved runs, one thread")
    print(f"{'kernel':14s} {'dtype':8s} " + " ".join(f"{b + ' x':>10s}" for b in names if b != "numpy"))
    for dtype in (np.float32, np.float64):
        for kernel in KERNELS:
            rng = np.random.default_rng(zlib.crc32(kernel.encode()))
            a, kw = MAKERS[kernel](rng, dtype, args.size)
            a, kw = registry.KERNELS[kernel].check(*a, **kw)
            fns = {b: getattr(fnn.get_backend(b).raw, kernel) for b in names}
            for fn in fns.values():
                fn(*a, **kw)          # compile / warm up
            times = {b: [] for b in names}
            for _ in range(args.repeat):
                for b, fn in fns.items():
                    t = time.perf_counter()
                    fn(*a, **kw)
                    times[b].append(time.perf_counter() - t)
            ref = statistics.median(times["numpy"])
            ratios = [ref / statistics.median(times[b]) for b in names if b != "numpy"]
            print(f"{kernel:14s} {np.dtype(dtype).name:8s} " + " ".join(f"{r:10.1f}" for r in ratios))


if __name__ == "__main__":
    main()
