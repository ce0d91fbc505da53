"""Streaming metrics against scikit-learn on the whole data, and sample-weighted losses against
the unweighted backend kernel and torch; timed interleaved in one process on one thread.

    python benchmarks/metrics_vs_sklearn.py [--rows 50000] [--classes 10] [--repeat 15]

Prints median time ratios (higher: fastnn is faster). Metrics stream in batches of 1024, as
evaluate and validation do; scikit-learn gets every row at once. The results are checked equal.
"""
import argparse
import statistics
import time

import numpy as np

import fastnn as fnn
from fastnn import losses, metrics


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def ratios(pairs, repeat):
    """{label: median(t_other / t_fastnn)} with the calls interleaved."""
    out = {label: [] for label in pairs}
    for _ in range(repeat):
        for label, (ours, theirs) in pairs.items():
            a, b = timed(ours), timed(theirs)
            out[label].append(b / a)
    return {k: statistics.median(v) for k, v in out.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(1)
    except ImportError:
        pass
    from sklearn import metrics as skm
    rng = np.random.default_rng(0)
    n, c = args.rows, args.classes
    out = rng.normal(size=(n, c)).astype(np.float32)
    y = rng.integers(0, c, n)
    w = rng.uniform(0, 2, n)
    reg_out, reg_y = rng.normal(size=(n, 3)), rng.normal(size=(n, 3))

    def stream(name, o, t):
        m = metrics.get(name)

        def run():
            m.reset()
            for lo in range(0, n, 1024):
                m.update(o[lo:lo + 1024], t[lo:lo + 1024], w[lo:lo + 1024])
            return m.result()
        return run

    sk = {"accuracy": lambda: skm.accuracy_score(y, out.argmax(1), sample_weight=w),
          "f1": lambda: skm.f1_score(y, out.argmax(1), average="macro", sample_weight=w, zero_division=0),
          "top_k_accuracy": lambda: skm.top_k_accuracy_score(y, out, k=5, labels=np.arange(c), sample_weight=w),
          "r2": lambda: skm.r2_score(reg_y, reg_out, sample_weight=w)}
    pairs = {}
    for name, fn in sk.items():
        o, t = (reg_out, reg_y) if name == "r2" else (out, y)
        ours = stream(name, o, t)
        assert abs(ours() - fn()) < 1e-9, name
        pairs[f"{name} (streamed, 1024-row batches) vs sklearn"] = (ours, fn)

    be = fnn.get_backend("cython" if "cython" in fnn.backends() else "numpy")
    zb, yb, wb = out[:256], y[:256], w[:256]
    pairs[f"sample_weighted(cross_entropy) vs {be.name} cross_entropy (unweighted), 256x{c}"] = (
        lambda: losses.sample_weighted("cross_entropy", zb, yb, wb), lambda: be.cross_entropy(zb, yb))
    try:
        import torch
        torch.set_num_threads(1)
        F = torch.nn.functional

        def torch_weighted():
            zt = torch.tensor(zb, requires_grad=True)
            per = F.cross_entropy(zt, torch.from_numpy(yb), reduction="none")
            wt = torch.from_numpy(wb).float()
            ((wt * per).sum() / wt.sum()).backward()
            return zt.grad
        pairs[f"sample_weighted(cross_entropy) vs torch (none + weighted mean + backward), 256x{c}"] = (
            lambda: losses.sample_weighted("cross_entropy", zb, yb, wb), torch_weighted)
    except ImportError:
        pass
    for label, r in ratios(pairs, args.repeat).items():
        print(f"{r:7.2f}x  {label}")


if __name__ == "__main__":
    main()
