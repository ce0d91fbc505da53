"""What the NaN guard and the per-batch progress bar cost: MLP epochs on the digits with each
switched on and off, interleaved in one process; prints each variant's epoch time (median and minimum) as a
ratio to the bare loop (nan_guard=False, progress off).

    python benchmarks/fit_overhead.py [--backend cython] [--rounds 15] [--batch-size 32]
"""
import argparse
import io
import math
import statistics
import sys
import time
from contextlib import redirect_stderr

import numpy as np

import fastnn as fnn
from fastnn.cli import _digits_model


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="cython")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="the backend's threads (default: its own)")
    args = ap.parse_args(argv)
    if args.threads:
        fnn.get_backend(args.backend).module.set_num_threads(args.threads)
    X, y, _, _ = fnn.data.load_digits()
    variants = {"bare": dict(nan_guard=False, progress=False), "nan_guard": dict(nan_guard=True, progress=False),
                "progress": dict(nan_guard=False, progress=True), "both (default)": dict(nan_guard=True, progress=True)}
    trainers = {k: fnn.Trainer(_digits_model(args.backend, "float32", 0, "mlp"), "cross_entropy",
                               fnn.optim.SGD(lr=0.05, momentum=0.9)) for k in variants}
    times = {k: [] for k in variants}
    sink = io.StringIO()
    names = list(variants)
    for r in range(args.rounds + 2):
        for k in names[r % 4:] + names[:r % 4]:      # rotated: no variant always runs first
            opts = variants[k]
            with redirect_stderr(sink):
                start = time.perf_counter()
                trainers[k].fit(X, y, epochs=10, batch_size=args.batch_size, **opts)
                spent = (time.perf_counter() - start) / 10
            if r >= 2:          # two warm-up rounds
                times[k].append(spent)
    base, base_min = statistics.median(times["bare"]), min(times["bare"])
    print(f"MLP {X.shape[1]}-128-10 epoch on {len(X)} digits, batch {args.batch_size}, {args.backend}; "
          f"{args.rounds} rounds (the minimum is the least disturbed by other processes)")
    for k in variants:
        print(f"  {k:15s} median {statistics.median(times[k]) / base:6.3f}x, "
              f"minimum {min(times[k]) / base_min:6.3f}x the bare loop")
    guard_share = _guard_cost(trainers["bare"], X, y, args.batch_size) / base_min
    print(f"  the guard's own per-batch work (timed alone): {guard_share * 100:.2f}% of a bare epoch")
    bar_share = _progress_cost(X, args.batch_size) / base_min
    print(f"  the progress bar's work for one epoch (timed alone): {bar_share * 100:.2f}% of a bare epoch")
    return {k: min(v) / base_min for k, v in times.items()}


def _progress_cost(X, batch_size):
    """Seconds per epoch of what verbose=1 does: the bar, its per-batch update and its line."""
    from fastnn import trainer as trainer_module
    batches = -(-len(X) // batch_size)
    logs = {"loss": 0.1, "accuracy": 0.9, "time": 0.01}
    reps = 200
    sink = io.StringIO()
    with redirect_stderr(sink):
        start = time.perf_counter()
        for _ in range(reps):
            bar = trainer_module._progress(0, 10, batches)
            shown = time.perf_counter()
            for _ in range(batches):
                bar.update(1)
                if time.perf_counter() - shown > 0.2:
                    shown = time.perf_counter()
            trainer_module._finish_bar(bar, 0, 10, logs)
            bar.close()
        return (time.perf_counter() - start) / reps


def _guard_cost(trainer, X, y, batch_size):
    """Seconds per epoch of the NaN guard's per-batch checks, timed in a tight loop."""
    from fastnn.nan_guard import NanGuard
    guard = NanGuard(trainer)
    batches = -(-len(X) // batch_size)
    reps = 2000
    g = trainer.model._flat_grad
    from fastnn.threads import backend_threads
    with backend_threads(trainer.model.backend):   # as in fit: OpenBLAS held to one thread
        start = time.perf_counter()
        for _ in range(reps):           # what Trainer._train_batch does with a guard
            if guard.batch_state:
                guard.begin_batch()
            math.isfinite(0.5)
            math.isfinite(g.dot(g))
        return (time.perf_counter() - start) / reps * batches


if __name__ == "__main__":
    main(sys.argv[1:])
