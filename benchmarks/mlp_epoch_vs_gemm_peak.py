"""How close a GEMM-bound training epoch comes to the machine's limit: one epoch of the 784-256-128-10
ReLU MLP (batch 128, Trainer.fit) as a GEMM FLOP rate, beside the FLOP rate the same backend's own GEMM
reaches on a large square float32 multiply, in one process, alternating, with the same thread count.

The epoch's FLOPs are its matrix products only: per step of B rows, forward 2B(784*256 + 256*128 +
128*10), the weight gradients as many again, and the input gradients of the 2nd and 3rd layers
2B(256*128 + 128*10) (the first layer's is not needed). Everything else in the step (bias, ReLU,
softmax, the optimizer, Python) is time spent at no FLOPs, so the ratio says how much it costs.
Beside both, the cores' own limit: float32 multiply-adds alone in the widest vectors on as many
threads (cython's fma_peak), which no kernel can pass; turbo clocks move it by a few percent.

    python benchmarks/mlp_epoch_vs_gemm_peak.py [--backends cython numba] [--square 1024] [--optimizer sgd adam]
"""
import argparse
import statistics
import time

import numpy as np

import fastnn as fnn
from fastnn.layers import Dense, ReLU

SIZES = (784, 256, 128, 10)


def epoch_flops(n, batch):
    pairs = list(zip(SIZES[:-1], SIZES[1:]))
    forward = sum(a * b for a, b in pairs)
    per_row = 2 * (2 * forward + sum(a * b for a, b in pairs[1:]))
    return per_row * (n // batch) * batch


def square_gemm_rate(backend, size, seconds=0.5):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(np.float32)
    b = rng.standard_normal((size, size)).astype(np.float32)
    mm = fnn.get_backend(backend).raw.matmul
    mm(a, b)
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * size ** 3 / best


def epoch_rate(backend, optimizer, X, y, batch):
    model = fnn.Sequential(Dense(784, 256), ReLU(), Dense(256, 128), ReLU(), Dense(128, 10), backend=backend, seed=0)
    opt = fnn.optim.SGD(lr=0.01) if optimizer == "sgd" else fnn.optim.Adam(lr=1e-3)
    trainer = fnn.Trainer(model, "cross_entropy", opt, metrics=[])
    trainer.fit(X[:batch * 20], y[:batch * 20], epochs=1, batch_size=batch, progress=False)   # warm-up

    def run():
        start = time.perf_counter()
        trainer.fit(X, y, epochs=1, batch_size=batch, progress=False)
        return epoch_flops(len(y), batch) / (time.perf_counter() - start)
    return run


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", nargs="+", default=[fnn.backend.default_backend()])
    parser.add_argument("--optimizer", nargs="+", default=["sgd", "adam"], choices=["sgd", "adam"])
    parser.add_argument("--square", type=int, default=1024)
    parser.add_argument("--samples", type=int, default=60_000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.samples, 784)).astype(np.float32)
    y = rng.integers(0, 10, args.samples)
    from fastnn.threads import backend_threads
    cython = fnn.get_backend("cython").module if "cython" in fnn.backends() else None
    print(f"{args.samples} rows, batch {args.batch}; GFLOP/s, median of {args.repeats} alternating rounds\n")
    print(f"| backend | threads | FMA limit | {args.square}^3 GEMM | GEMM/limit | "
          + " | ".join(f"epoch ({o})" for o in args.optimizer)
          + " | " + " | ".join(f"epoch/GEMM ({o})" for o in args.optimizer)
          + " | " + " | ".join(f"epoch/limit ({o})" for o in args.optimizer) + " |")
    print("|---" * (5 + 3 * len(args.optimizer)) + "|")
    for b in args.backends:
        backend = fnn.get_backend(b)
        with backend_threads(backend):
            runs = {o: epoch_rate(b, o, X, y, args.batch) for o in args.optimizer}
            threads = getattr(backend.module, "get_num_threads", lambda: 1)()
            gemm, limits, epochs, ratios = [], [], {o: [] for o in runs}, {o: [] for o in runs}
            for _ in range(args.repeats):
                if cython is not None:
                    limits.append(cython.fma_peak(0.3, threads) * 1e9)
                g = square_gemm_rate(b, args.square)
                gemm.append(g)
                for o, run in runs.items():
                    e = run()
                    epochs[o].append(e)
                    ratios[o].append(e / g)
        med = statistics.median
        limit = med(limits) if limits else None
        of_limit = (lambda v: f"{v / limit:.0%}") if limit else (lambda v: "n/a")
        print(f"| {b} | {threads} | {limit / 1e9:.0f} | " if limit else f"| {b} | {threads} | n/a | ", end="")
        print(f"{med(gemm) / 1e9:.0f} | {of_limit(med(gemm))} | "
              + " | ".join(f"{med(epochs[o]) / 1e9:.0f}" for o in runs) + " | "
              + " | ".join(f"{med(ratios[o]):.0%} ({min(ratios[o]):.0%}-{max(ratios[o]):.0%})" for o in runs)
              + " | " + " | ".join(of_limit(med(epochs[o])) for o in runs) + " |", flush=True)


if __name__ == "__main__":
    main()
