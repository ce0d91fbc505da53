"""Recurrent kernels (rnn, lstm, gru: forward and backward separately) of the cython and numba
backends against the NumPy reference, in one process, interleaved: the best of several
repeats per kernel, reported as ratios (time / cython's time; numpy's column is how many
times slower than cython the reference is).

    python benchmarks/recurrent_kernels.py [--cells lstm gru] [--hidden 6 32 128] [--batch 100]
                                           [--steps 40] [--features 1] [--dtype float32] [--seconds 0.3]
                                           [--baseline path/to/another/_avx512.cpython-*.so]

--baseline loads another build of the cython kernel module (e.g. main's) beside this one as the
backend 'base' (raw kernels, no input checks), to see what a change bought.
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


EXTRA = {}


def load_module(path):
    """Another build of the cython kernel module, under a name of its own."""
    import importlib.util
    isa = path.rsplit("/", 1)[-1].split(".")[0]            # _avx512, _avx2 or _generic
    spec = importlib.util.spec_from_file_location(f"fastnn_baseline.{isa}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def bench(cell, n, t, f, h, dtype, backends, seconds, rounds=3):
    rng = np.random.default_rng(0)
    x, w_ih, w_hh, b_ih, b_hh = inputs(cell, n, t, f, h, dtype, rng)
    kb = {b: EXTRA[b] if b in EXTRA else fnn.get_backend(b) for b in backends}
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
    parser.add_argument("--baseline", default=None, help="another build of the cython module (.so)")
    parser.add_argument("--threads", type=int, default=1, help="kernel threads of cython (and base)")
    args = parser.parse_args()
    from fastnn._kernels import cython as cyk
    cyk.set_num_threads(args.threads)
    if args.baseline:
        EXTRA["base"] = load_module(args.baseline)
        EXTRA["base"]._set_num_threads(args.threads)
        args.backends = args.backends + ["base"]
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(1)
    except ImportError:
        pass
    print(f"fastnn from {fnn.__file__}; T={args.steps} F={args.features} {args.dtype}, {args.threads} thread(s); "
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
