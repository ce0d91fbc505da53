"""LayerNorm and BatchNorm kernels (forward, backward) of every CPU backend against the
NumPy reference and torch CPU, interleaved in one process, one thread each: the median
time of each and its ratio to the reference.

    python benchmarks/normalization_vs_numpy.py [--dtype float32] [--repeats 200]

Sizes: LayerNorm at transformer sizes (rows = 32 * 32, 64 features), BatchNorm2D on the
BatchNorm CNN's activations (100 x 16 x 8 x 8 and 100 x 32 x 4 x 4), BatchNorm1D on (100, 64).
"""
import argparse
import statistics
import time

import numpy as np

import fastnn as fnn
from fastnn._kernels import reference as ref

CASES = {
    "layer_norm 1024x64": ("ln", (1024, 64)),
    "batch_norm 100x16x64": ("bn", (100, 16, 64)),
    "batch_norm 100x32x16": ("bn", (100, 32, 16)),
    "batch_norm 100x64x1": ("bn", (100, 64, 1)),
}


def calls(kind, shape, kernels, dtype, rng):
    """(forward, backward) closures on fixed inputs."""
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    c = shape[1]
    w, b = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    if kind == "ln":
        _, mean, rstd = ref.layer_norm(x, w, b)
        return (lambda: kernels.layer_norm(x, w, b, 1e-5),
                lambda: kernels.layer_norm_backward(dy, x, mean, rstd, w, True))
    rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
    _, mean, rstd = ref.batch_norm(x, w, b, rm.copy(), rv.copy())
    return (lambda: kernels.batch_norm(x, w, b, rm, rv, 0.1, 1e-5, True),
            lambda: kernels.batch_norm_backward(dy, x, mean, rstd, w, True, True))


def torch_calls(kind, shape, dtype, rng):
    import torch
    torch.set_num_threads(1)
    x = torch.from_numpy(rng.standard_normal(shape).astype(dtype)).requires_grad_(True)
    dy = torch.from_numpy(rng.standard_normal(shape).astype(dtype))
    c = shape[1]
    w = torch.from_numpy(rng.standard_normal(c).astype(dtype)).requires_grad_(True)
    b = torch.from_numpy(rng.standard_normal(c).astype(dtype)).requires_grad_(True)
    if kind == "ln":
        f = lambda: torch.nn.functional.layer_norm(x, (c,), w, b, 1e-5)
    else:
        rm, rv = torch.zeros(c, dtype=x.dtype), torch.ones(c, dtype=x.dtype)
        f = lambda: torch.nn.functional.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5)

    def fwd():
        with torch.no_grad():
            f()

    def bwd():   # forward + backward: torch's backward alone cannot be timed apart
        torch.autograd.grad(f(), (x, w, b), dy)
    return fwd, bwd


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    from threadpoolctl import threadpool_limits
    dtype = np.dtype(args.dtype)
    backends = [b for b in fnn.backends() if b != "cuda"]
    for b in backends:
        if hasattr(fnn.get_backend(b).module, "set_num_threads"):
            fnn.get_backend(b).module.set_num_threads(1)
    print(f"| kernel ({dtype.name}) | engine | forward us | vs numpy | backward us | vs numpy |\n|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    with threadpool_limits(1):
        for label, (kind, shape) in CASES.items():
            engines = {b: calls(kind, shape, fnn.get_backend(b).raw, dtype, rng) for b in backends}
            try:
                engines["torch (bwd: fwd+bwd)"] = torch_calls(kind, shape, dtype, rng)
            except ImportError:
                pass
            samples = {(e, i): [] for e in engines for i in (0, 1)}
            for fns in engines.values():
                fns[0](), fns[1]()
            for _ in range(args.repeats):      # interleaved: the machine's noise hits all alike
                for e, fns in engines.items():
                    for i in (0, 1):
                        t = time.perf_counter()
                        fns[i]()
                        samples[e, i].append(time.perf_counter() - t)
            med = {k: statistics.median(v) * 1e6 for k, v in samples.items()}
            for e in engines:
                print(f"| {label} | {e} | {med[e, 0]:.1f} | {med['numpy', 0] / med[e, 0]:.2f}x "
                      f"| {med[e, 1]:.1f} | {med['numpy', 1] / med[e, 1]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
