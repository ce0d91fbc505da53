"""What the small-model bars ask of the machine: each model's multiply-adds per training step,
the FLOP rate the rows of small_models_vs_torch.py reach, and the rate a bar (3x torch, 1.5x JAX)
would need, beside our GEMM's rate on a large square multiply in the same process.

A step's FLOPs are counted from the layers' shapes: 2 FLOPs per multiply-add of the GEMM-like
layers (Dense, Conv1D/2D, RNN/LSTM/GRU) forward, and as much again for each of the weight
gradient and the input gradient (none into the first layer's input, which needs no dx; a
recurrent layer's state gradient through W_hh is always needed). Elementwise work
(activations, BatchNorm, pooling, Adam) is left out, so the rates are lower bounds of the work done.

    python benchmarks/step_flops.py [--models ...] [--hidden 6 32 128]     # the FLOP counts alone
    small_models_vs_torch.py --flops                                       # and the rates beside its table
"""
import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from small_models_vs_torch import BATCH, MODELS, RECURRENT, batch_for, fastnn_model  # noqa: E402

from fastnn import layers as L  # noqa: E402


def layer_multiply_adds(layer, shape):
    """(multiply-adds of one sample's forward on the layer's input, those on its recurrent
    state, the output shape) for one layer on `shape` (a sample's shape, without the batch)."""
    out = layer.output_shape(shape)
    if isinstance(layer, L.Dense):
        return layer.in_features * layer.out_features * math.prod(shape[:-1]), 0, out
    if isinstance(layer, (L.Conv1D, L.Conv2D)):
        taps = layer.in_channels * math.prod(layer.kernel_size)
        return taps * math.prod(out), 0, out
    if isinstance(layer, (L.RNN, L.LSTM, L.GRU)):
        steps, size = shape
        rows = (2 if layer.bidirectional else 1) * steps * layer.gates * layer.hidden_size
        inputs = rows * size                     # the first layer's W_ih; deeper layers' are state below
        state = rows * layer.hidden_size * layer.num_layers + rows * (layer.num_layers - 1) * (
            (2 if layer.bidirectional else 1) * layer.hidden_size)
        return inputs, state, out
    return 0, 0, out


def step_flops(kind, hidden):
    """FLOPs of one training step of the benchmark's model at its batch (see the docstring)."""
    model = fastnn_model(kind, hidden, "numpy")
    x, _ = batch_for(kind, np.random.default_rng(0))
    shape, total = x.shape[1:], 0
    for i, layer in enumerate(model.layers):
        inputs, state, shape = layer_multiply_adds(layer, shape)
        # forward, dW, and dx except into the model's input; the state's gradient always
        total += 2 * (inputs * (2 if i == 0 else 3) + state * 3)
    return total * BATCH


def gemm_rate(backend="cython", n=1024, seconds=1.0):
    """GFLOP/s of the backend's float32 matmul on an n^3 square multiply (best of a few),
    on the backend's threads."""
    import fastnn as fnn
    from fastnn.threads import backend_threads
    be = fnn.get_backend(backend)
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
    best = math.inf
    with backend_threads(be):
        be.raw.matmul(a, b, False, False)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            start = time.perf_counter()
            be.raw.matmul(a, b, False, False)
            best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def fma_rate(backend="cython"):
    """GFLOP/s of float32 multiply-adds alone on the backend's threads (cython's fma_peak): the
    cores' limit, which no float32 kernel passes. None without the cython backend."""
    import fastnn as fnn
    if "cython" not in fnn.backends():
        return None
    cy = fnn.get_backend("cython").module
    threads = getattr(fnn.get_backend(backend).module, "get_num_threads", cy.get_num_threads)()
    return cy.fma_peak(0.5, threads)


def print_roofline(rates, peak, out=sys.stdout, fma=None):
    """rates: {(kind, hidden): {engine: steps/s}}. One row per model: its GFLOP per step, each
    engine's GFLOP/s, and what each bar needs (as GFLOP/s and as a share of `peak`, and of the
    cores' multiply-add limit `fma` where given)."""
    limit = "" if fma is None else f"; the cores' float32 multiply-add limit: {fma:.0f} GFLOP/s"
    print(f"\nFLOP rates (GEMM-like layers only; our float32 GEMM at 1024^3 here: {peak:.0f} GFLOP/s{limit})\n",
          file=out)
    seen = [e for r in rates.values() for e in r]
    engines = [e for e in ("torch", "jax") if e in seen] + [e for e in dict.fromkeys(seen) if e not in ("torch", "jax")]
    print(f"| model | MFLOP/step | {' | '.join(e + ' GF/s' for e in engines)} | 3x torch needs | 1.5x jax needs |",
          file=out)
    print("|---" * (len(engines) + 4) + "|", file=out)
    for (kind, hidden), r in rates.items():
        flops = step_flops(kind, hidden)
        cells = [f"{r[e] * flops / 1e9:.1f}" if e in r else "n/a" for e in engines]
        need = []
        for peer, factor in (("torch", 3.0), ("jax", 1.5)):
            if peer in r:
                g = factor * r[peer] * flops / 1e9
                share = "" if fma is None else f", {100 * g / fma:.0f}% of the limit"
                need.append(f"{g:.1f} ({100 * g / peak:.0f}% of GEMM{share})")
            else:
                need.append("n/a")
        label = kind if hidden is None else f"{kind} H={hidden}"
        print(f"| {label} | {flops / 1e6:.1f} | {' | '.join(cells)} | {' | '.join(need)} |", file=out)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--hidden", type=int, nargs="+", default=[6, 32, 128])
    args = parser.parse_args()
    print("| model | MFLOP per step |\n|---|---|")
    for kind in args.models:
        for hidden in (args.hidden if kind in RECURRENT else [None]):
            label = kind if hidden is None else f"{kind} H={hidden}"
            print(f"| {label} | {step_flops(kind, hidden) / 1e6:.1f} |")


if __name__ == "__main__":
    main()
