"""Our GEMMs against numpy.matmul (OpenBLAS) in one process: GFLOP/s and the ratio,
per shape, dtype and thread count. Threads: OpenBLAS is limited with threadpoolctl,
ours with the backend's set_num_threads; calls alternate and the best of --repeats counts.

    python benchmarks/gemm_vs_numpy.py [--backends cython numba] [--threads 1 2] [--dtype float32]
"""
import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

import fastnn as fnn

# (label, m, k, n, trans_a, trans_b): square sizes and the 784-256-128-10 MLP's products
SHAPES = [(f"{n}^3", n, n, n, False, False) for n in (256, 512, 1024)]
for batch in (32, 128, 256):
    SHAPES += [(f"x@W.T b{batch}", batch, 784, 256, False, True),
               (f"dy.T@x b{batch}", 256, batch, 784, True, False),
               (f"dy@W b{batch}", batch, 256, 784, False, False)]


def best_time(fn, repeats, min_time=0.05):
    fn()
    best = float("inf")
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed > min_time:
                break
        best = min(best, elapsed / calls)
    return best


def operands(m, k, n, ta, tb, dtype, rng):
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    return a, b


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", nargs="+", default=[b for b in ("cython", "numba") if b in fnn.backends()])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dtype", nargs="+", default=["float32", "float64"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    kernels = {b: fnn.get_backend(b) for b in args.backends}
    header = " | ".join(f"{b} GF/s | {b} ratio" for b in args.backends)
    print(f"| dtype | threads | shape | numpy GF/s | {header} |")
    print("|---" * (4 + 2 * len(args.backends)) + "|")
    for dtype in args.dtype:
        for threads in args.threads:
            for name in args.backends:
                kernels[name].module.set_num_threads(threads)
            for label, m, k, n, ta, tb in SHAPES:
                a, b = operands(m, k, n, ta, tb, dtype, rng)
                flop = 2.0 * m * n * k
                opa, opb = (a.T if ta else a), (b.T if tb else b)
                with threadpool_limits(threads, user_api="blas"):
                    t_np = best_time(lambda: opa @ opb, args.repeats)
                cells = []
                with threadpool_limits(1, user_api="blas"):
                    for name, be in kernels.items():
                        t = best_time(lambda: be.raw.matmul(a, b, ta, tb), args.repeats)
                        cells.append(f"{flop / t / 1e9:.0f} | {t_np / t:.2f}")
                print(f"| {dtype} | {threads} | {label} | {flop / t_np / 1e9:.0f} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
