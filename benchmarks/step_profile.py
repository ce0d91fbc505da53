"""Where the microseconds of one small-model training step go: each kernel's time, and the rest
(Python dispatch in the layers, graph and trainer, batch gathering, loss bookkeeping).

Runs the models of small_models_vs_torch.py through Trainer.fit (the real per-batch path: inputs
checked once per fit, one tape per step) for a few epochs, twice: once plain, for the step time,
and once with every kernel of the backend's raw table wrapped in a timer, alternately, keeping the
fastest of each. The wrapped run's kernel sums, less the timer's own cost (calibrated on an empty
function), split the plain step time into kernels and the rest.

    python benchmarks/step_profile.py [--models mlp cnn bncnn lstm gru] [--hidden 6] [--backend cython]
"""
import argparse
import collections
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from small_models_vs_torch import BATCH, MODELS, RECURRENT, batch_for, fastnn_model  # noqa: E402

import fastnn as fnn  # noqa: E402


class KernelTimer:
    """Wraps the functions of backend.raw in place; restore() puts them back."""

    def __init__(self, backend):
        self.raw = backend.raw
        self.saved = dict(vars(self.raw))
        self.seconds = collections.Counter()
        self.calls = collections.Counter()
        self.depth = [0]     # shared by every wrapper
        for name, fn in self.saved.items():
            setattr(self.raw, name, self._timed(name, fn))
        self.overhead = self._calibrate()

    def _timed(self, name, fn):
        clock, seconds, calls, depth = time.perf_counter, self.seconds, self.calls, self.depth

        def run(*args, **kwargs):
            if depth[0]:        # a kernel composed of others: only the outermost call counts
                return fn(*args, **kwargs)
            depth[0] += 1
            start = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[name] += clock() - start
                calls[name] += 1
                depth[0] -= 1
        return run

    def _calibrate(self, n=20000):
        """Seconds the wrapper adds to a call, beyond the call itself."""
        probe = self._timed("_probe", lambda: None)
        start = time.perf_counter()
        for _ in range(n):
            probe()
        wrapped = time.perf_counter() - start
        bare = lambda: None  # noqa: E731
        start = time.perf_counter()
        for _ in range(n):
            bare()
        plain = time.perf_counter() - start
        del self.seconds["_probe"], self.calls["_probe"]
        return max(wrapped - plain, 0.0) / n

    def restore(self):
        for name, fn in self.saved.items():
            setattr(self.raw, name, fn)


def fit_seconds_per_step(model, x, y, epochs):
    trainer = fnn.Trainer(model, loss="cross_entropy", optimizer=fnn.optim.Adam(lr=1e-3), metrics=[], seed=0)
    trainer.fit(x, y, epochs=1, batch_size=BATCH, progress=False)      # warm-up: compiles, allocations
    steps = epochs * (len(y) // BATCH)
    start = time.perf_counter()
    trainer.fit(x, y, epochs=epochs, batch_size=BATCH, progress=False)
    return (time.perf_counter() - start) / steps, steps


def profile(kind, hidden, backend, epochs, repeats, batches=20):
    """(step seconds, {kernel: seconds per step}, {kernel: calls per step}): the plain and the
    timed runs alternate `repeats` times and the fastest of each counts (a shared machine's
    load only ever adds time)."""
    rng = np.random.default_rng(0)
    parts = [batch_for(kind, rng) for _ in range(batches)]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    model = fastnn_model(kind, hidden, backend)
    best_step, best_kernels = float("inf"), None
    for _ in range(repeats):
        step, steps = fit_seconds_per_step(model, x, y, epochs)
        best_step = min(best_step, step)
        timer = KernelTimer(model.backend)
        try:
            fit_seconds_per_step(model, x, y, epochs)
        finally:
            timer.restore()
        # the timed run made 1 warm-up epoch + epochs: per step, per kernel
        total_steps = steps + len(y) // BATCH
        per_kernel = {name: (s - timer.calls[name] * timer.overhead) / total_steps
                      for name, s in timer.seconds.items()}
        if best_kernels is None or sum(per_kernel.values()) < sum(best_kernels[0].values()):
            best_kernels = per_kernel, {name: c / total_steps for name, c in timer.calls.items()}
    return (best_step, *best_kernels)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn", "bncnn", "lstm", "gru"], choices=MODELS)
    parser.add_argument("--hidden", type=int, default=6)
    parser.add_argument("--backend", default=None, help="default: fastnn's default backend")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    backend = args.backend or fnn.backend.default_backend()
    from fastnn.threads import backend_threads
    print(f"backend {backend}, batch {BATCH}, Adam, Trainer.fit; microseconds per step\n")
    print("| model | step | kernels | rest (Python, batches) | rest share | the largest kernels (us per step) |")
    print("|---|---|---|---|---|---|")
    for kind in args.models:
        hidden = args.hidden if kind in RECURRENT else None
        with backend_threads(fnn.get_backend(backend)):
            step, per_kernel, calls = profile(kind, hidden, backend, args.epochs, args.repeats)
        kernels = sum(per_kernel.values())
        top = sorted(per_kernel.items(), key=lambda kv: -kv[1])[:5]
        top_s = ", ".join(f"{name} {s * 1e6:.0f} (x{calls[name]:.0f})" for name, s in top)
        label = kind if hidden is None else f"{kind} H={hidden}"
        rest = step - kernels
        print(f"| {label} | {step * 1e6:.0f} | {kernels * 1e6:.0f} | {rest * 1e6:.0f} | "
              f"{rest / step:.0%} | {top_s} |", flush=True)


if __name__ == "__main__":
    main()
