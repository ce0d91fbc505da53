"""Issue-10 kernels (GELU, SiLU, ELU, Softplus, Dropout, Embedding with 1000 rows, one index per
row of x) against the NumPy reference,
interleaved in one process, one thread: prints time ratios (reference / backend).

    python benchmarks/acts_vs_numpy.py [--shape 1024 256] [--repeat 30]
"""
import argparse
import os
import sys
import time

import numpy as np
import threadpoolctl

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # this checkout's fastnn
import fastnn as fnn  # noqa: E402


def _best(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def cases(x, dy):
    out = [(k, (x,)) for k in ("gelu", "gelu_tanh")]
    out += [(k + "_backward", (dy, x, x)) for k in ("gelu", "gelu_tanh")]
    extra = [("silu", (x,)), ("elu", (x,)), ("softplus", (x,)),
             ("silu_backward", (dy, x, x)), ("elu_backward", (dy, x, x)), ("softplus_backward", (dy, x, x))]
    mask = fnn._kernels.reference.dropout_mask(x.shape, 0.1, 12345)
    extra += [("dropout", (x, 0.1, 12345)), ("dropout_backward", (dy, mask, 0.1))]
    idx = np.random.default_rng(1).integers(0, 1000, (x.shape[0],))
    w = np.random.default_rng(2).standard_normal((1000, x.shape[1])).astype(x.dtype)
    dw = np.zeros_like(w)
    extra += [("embedding", (w, idx)), ("embedding_backward_into", (x, idx, dw, -1))]
    return out + extra


def _torch_forward(name, x):
    """torch's own forward for the activation kernels (None where there is no counterpart or no torch)."""
    try:
        import torch
    except ImportError:
        return None
    F, t = torch.nn.functional, torch.from_numpy(x)
    fns = {"gelu": lambda: F.gelu(t), "gelu_tanh": lambda: F.gelu(t, approximate="tanh"),
           "silu": lambda: F.silu(t), "elu": lambda: F.elu(t), "softplus": lambda: F.softplus(t)}
    return fns.get(name)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", type=int, nargs=2, default=(1024, 256))
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    backends = [b for b in fnn.backends() if b != "numpy"]
    for dtype in (np.float32, np.float64):
        x = (rng.standard_normal(args.shape) * 3).astype(dtype)
        dy = rng.standard_normal(args.shape).astype(dtype)
        print(f"\n{np.dtype(dtype).name} {tuple(args.shape)}: reference time / backend time (best of "
              f"{args.repeat}, {args.rounds} interleaved rounds, median ratio)")
        for name, a in cases(x, dy):
            ratios = {b: [] for b in backends}
            torch_fn, vs_torch = _torch_forward(name, x), []
            for _ in range(args.rounds):
                ref_t = _best(lambda: getattr(fnn.get_backend("numpy"), name)(*a), args.repeat)
                times = {}
                for b in backends:
                    be = fnn.get_backend(b)
                    getattr(be, name)(*a)   # compile / warm up
                    times[b] = _best(lambda: getattr(be, name)(*a), args.repeat)
                    ratios[b].append(ref_t / times[b])
                if torch_fn is not None:
                    vs_torch.append(_best(torch_fn, args.repeat) / min(times.values()))
            line = f"  {name:24s} " + "  ".join(f"{b} {np.median(r):6.1f}x" for b, r in ratios.items())
            if vs_torch:
                line += f"   (torch time / fastest backend: {np.median(vs_torch):.2f})"
            print(line)


if __name__ == "__main__":
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        pass
    with threadpoolctl.threadpool_limits(1):
        fnn.get_backend("cython").module.set_num_threads(1)
        import numba
        numba.set_num_threads(1)
        main()
