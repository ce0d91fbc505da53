"""The small-image conv paths on and off, interleaved in one process: the bncnn
training step (small_models_vs_torch.py's BatchNorm CNN, batch 100) of the cython
and numba backends with the batch-inner conv layout, the single-thread numba conv
GEMMs and the unrolled 2x2 max pool ("after") or without them ("before"), against
torch CPU at one thread (timed first, on its own).

    python benchmarks/conv_small_paths.py [--rounds 15] [--steps 20] [--models bncnn]

One model a run: torch is timed first in the process (see main), so only the first
model of --models gets a fair torch ratio.
"""
import argparse
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

import fastnn as fnn
from small_models_vs_torch import batch_for, fastnn_step, torch_step


def set_paths(on):
    from fastnn._kernels.cython import _mod as cy     # the compiled module in use
    cy._set_conv_bi_min_n(8 if on else 10 ** 9)
    cy._set_maxpool_2x2(on)
    from fastnn._kernels.numba_cpu import conv
    conv.BI_MIN_N = 8 if on else 10 ** 9
    conv.MAXPOOL_2X2 = on
    conv.GEMM_PAR_MIN_WORK = 1 << 24 if on else 0      # 0: gemm.py's own threading rule


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--models", nargs="+", default=["bncnn"])
    args = parser.parse_args()
    import torch
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    with threadpool_limits(limits=1, user_api="blas"):
        for kind in args.models:
            x, y = batch_for(kind, rng)
            steps = {"torch": torch_step(kind, None, x, y)}
            for b in ("cython", "numba"):
                steps[b] = fastnn_step(kind, None, b, x, y)
            # torch first and on its own: once the compiled engines' OpenMP/Numba pools have
            # run in this process, torch's step here came out 5-50x slower (thread pools
            # spinning on the two shared cores), which no pause between engines cured.
            torch_times = []
            steps["torch"]()
            for _ in range(args.rounds):
                start = time.perf_counter()
                for _ in range(args.steps):
                    steps["torch"]()
                torch_times.append(time.perf_counter() - start)
            t_torch = statistics.median(torch_times)
            runs = [(b, on) for b in ("cython", "numba") for on in (False, True)]
            times = {r: [] for r in runs}
            for name, on in runs:          # warm up (numba compiles both paths)
                set_paths(on)
                steps[name]()
            for _ in range(args.rounds):   # before/after interleaved
                for name, on in runs:
                    set_paths(on)
                    time.sleep(0.05)
                    start = time.perf_counter()
                    for _ in range(args.steps):
                        steps[name]()
                    times[(name, on)].append(time.perf_counter() - start)
            ratios = {r: t_torch / statistics.median(v) for r, v in times.items()}
            speedup = {b: statistics.median(x / y for x, y in zip(times[(b, False)], times[(b, True)]))
                       for b in ("cython", "numba")}
            set_paths(True)
            print("| model | engine | before vs torch | after vs torch | after / before |\n|---|---|---|---|---|")
            for b in ("cython", "numba"):
                print(f"| {kind} | {b} | {ratios[(b, False)]:.2f}x | {ratios[(b, True)]:.2f}x "
                      f"| {speedup[b]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
