"""Recurrent kernels (rnn, lstm, gru: forward and backward separately) of the cython and numba
backends against the NumPy reference, in one process, interleaved: the best of several
repeats per kernel, reported as ratios (time / cython's time; numpy's column is how many
times slower than cython the reference is).

    python benchmarks/recurrent_kernels.py [--cells lstm gru] [--hidden 6 32 128] [--batch 100]
                                           [--steps 40] [--features 1] [--dtype float32] [--seconds 0.3]
"""
import argparse
import time

import numpy as np

import fastnn as fnn

GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def inputs(cell, n, t, f, h, dtype, rng):
    g = GATES[cell] * h
    k = 1 / np.sqrt(h)
    x = rng.standard_normal((n, t, f)).astype(dtype)
    w_ih, w_hh = (rng.uniform(-k, k, s).astype(dtype) for s in ((g, f), (g, h)))
    b_ih, b_hh = (rng.uniform(-k, k, g).astype(dtype) for _ in range(2))
    return x, w_ih, w_hh, b_ih, b_hh


def best_time(fn, seconds):
    """Best of repeats of fn() within about `seconds` (at least 3 runs)."""
    fn()
    best, spent, runs = float("inf"), 0.0, 0
    while runs < 3 or spent < seconds:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, spent, runs = min(best, dt), spent + dt, runs + 1
    return best


def bench(cell, n, t, f, h, dtype, backends, seconds, rounds=3):
    rng = np.random.default_rng(0)
    x, w_ih, w_hh, b_ih, b_hh = inputs(cell, n, t, f, h, dtype, rng)
    kb = {b: fnn.get_backend(b) for b in backends}
    saved = getattr(kb["numpy"] if "numpy" in kb else fnn.get_backend("numpy"), cell)(x, w_ih, w_hh, b_ih, b_hh)
    saved = saved if isinstance(saved, tuple) else (saved,)
    dh = rng.standard_normal((n, t, h)).astype(dtype)
    calls = {}
    for b, k in kb.items():
        calls[(b, "fwd")] = (lambda k=k: getattr(k, cell)(x, w_ih, w_hh, b_ih, b_hh))
        calls[(b, "bwd")] = (lambda k=k: getattr(k, cell + "_backward")(dh, x, *saved, w_ih, w_hh))
    times = {key: float("inf") for key in calls}
    for _ in range(rounds):                      # interleaved rounds: the machine's noise hits all alike
        for key, fn in calls.items():
            times[key] = min(times[key], best_time(fn, seconds / rounds))
    return times


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", nargs="+", default=["lstm", "gru"], choices=list(GATES))
    parser.add_argument("--hidden", type=int, nargs="+", default=[6, 32, 128])
    parser.add_argument("--batch", type=int, nargs="+", default=[100])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--features", type=int, default=1)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--seconds", type=float, default=0.3)
    parser.add_argument("--backends", nargs="+", default=["numpy", "numba", "cython"])
    args = parser.parse_args()
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(1)
    except ImportError:
        pass
    print(f"fastnn from {fnn.__file__}; T={args.steps} F={args.features} {args.dtype}; "
          f"cells: us per call of cython, others as (their time / cython's)")
    others = [b for b in args.backends if b != "cython"]
    print(f"| cell | N | H | cython fwd us | cython bwd us | " +
          " | ".join(f"{b} fwd x | {b} bwd x" for b in others) + " |")
    print("|---" * (5 + 2 * len(others)) + "|")
    for cell in args.cells:
        for n in args.batch:
            for h in args.hidden:
                tm = bench(cell, n, args.steps, args.features, h, np.dtype(args.dtype), args.backends,
                           args.seconds)
                row = [cell, str(n), str(h), f"{tm[('cython', 'fwd')] * 1e6:.0f}",
                       f"{tm[('cython', 'bwd')] * 1e6:.0f}"]
                for b in others:
                    row += [f"{tm[(b, d)] / tm[('cython', d)]:.2f}" for d in ("fwd", "bwd")]
                print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
