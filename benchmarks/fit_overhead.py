"""What the NaN guard and the per-batch progress bar cost: MLP epochs on the digits with each
switched on and off, interleaved in one process; prints each variant's median epoch time as a
ratio to the bare loop (nan_guard=False, progress off).

    python benchmarks/fit_overhead.py [--backend cython] [--rounds 15] [--batch-size 32]
"""
import argparse
import io
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
    args = ap.parse_args(argv)
    X, y, _, _ = fnn.data.load_digits()
    variants = {"bare": dict(nan_guard=False, progress=False), "nan_guard": dict(nan_guard=True, progress=False),
                "progress": dict(nan_guard=False, progress=True), "both (default)": dict(nan_guard=True, progress=True)}
    trainers = {k: fnn.Trainer(_digits_model(args.backend, "float32", 0, "mlp"), "cross_entropy",
                               fnn.optim.SGD(lr=0.05, momentum=0.9)) for k in variants}
    times = {k: [] for k in variants}
    sink = io.StringIO()
    for r in range(args.rounds + 2):
        for k, opts in variants.items():
            with redirect_stderr(sink):
                start = time.perf_counter()
                trainers[k].fit(X, y, epochs=1, batch_size=args.batch_size, **opts)
                spent = time.perf_counter() - start
            if r >= 2:          # two warm-up rounds
                times[k].append(spent)
    base = statistics.median(times["bare"])
    print(f"MLP {X.shape[1]}-128-10 epoch on {len(X)} digits, batch {args.batch_size}, {args.backend}; "
          f"median of {args.rounds}")
    for k in variants:
        print(f"  {k:15s} {statistics.median(times[k]) / base:6.3f}x the bare loop")
    return {k: statistics.median(v) / base for k, v in times.items()}


if __name__ == "__main__":
    main(sys.argv[1:])
