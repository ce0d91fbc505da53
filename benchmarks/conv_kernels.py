"""The small CNNs' conv and pool kernels (small_models_vs_torch.py's cnn, bncnn, bncnn1d at
batch 100, float32), one at a time, on the Cython module: each against the NumPy reference
and against the machine's GEMM rate (our matmul at the conv's own GEMM shapes: the floor
im2col + GEMM could reach), at 1 and 2 threads, interleaved in one process.

    python benchmarks/conv_kernels.py [--rounds 7] [--threads 1 2] [--so PATH]
    python benchmarks/conv_kernels.py --ab OLD.so [--pairs 4]   # old/new/old/new processes

--so times a compiled module file (e.g. a copy of the _avx512 .so from before a change)
instead of the package's; --ab runs this script alternately on OLD.so and on the package's
module and prints each kernel's new/old time ratio range over the pairs.
"""
import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # this checkout's fastnn

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

F = np.float32


def load(path):
    if path is None:
        from fastnn._kernels.cython import _mod
        return _mod
    name = os.path.basename(path).split(".")[0]         # _avx512: PyInit__avx512
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cases(rng):
    """(name, kernel name, args, kwargs, GEMM shapes (m, k, n) it does, reference call)."""
    from fastnn._kernels import reference as ref
    r = lambda *s: rng.standard_normal(s).astype(F)   # noqa: E731
    x1, w1, b16 = r(100, 1, 8, 8), r(16, 1, 3, 3), r(16)
    x2, w2, b32 = r(100, 16, 4, 4), r(32, 16, 3, 3), r(32)
    xp = r(100, 16, 8, 8)
    yp, ip = ref.maxpool2d(xp, (2, 2), (2, 2))
    c1, cw1, cb = r(100, 1, 40), r(25, 1, 5), r(25)
    c2, c3, cw2 = r(100, 25, 18), r(100, 25, 8), r(25, 25, 3)
    out = [
        ("bncnn conv2d 1->16 8x8", "conv2d", (x1, w1, b16, (1, 1), (1, 1)), {}, [(16, 9, 6400)]),
        ("bncnn conv2d_bwd 1->16 (no dx)", "conv2d_backward", (r(100, 16, 8, 8), x1, w1, (1, 1), (1, 1)),
         {"need_dx": False}, [(16, 6400, 9)]),
        ("bncnn maxpool2d 16x8x8", "maxpool2d", (xp, (2, 2), (2, 2)), {}, []),
        ("bncnn maxpool2d_bwd", "maxpool2d_backward", (r(100, 16, 4, 4), xp, ip, (2, 2), (2, 2)), {}, []),
        ("bncnn conv2d 16->32 4x4", "conv2d", (x2, w2, b32, (1, 1), (1, 1)), {}, [(32, 144, 1600)]),
        ("bncnn conv2d_bwd 16->32", "conv2d_backward", (r(100, 32, 4, 4), x2, w2, (1, 1), (1, 1)), {},
         [(144, 1600, 32), (144, 32, 1600)]),
        ("cnn conv1d 1->25 k5 L40", "conv1d", (c1, cw1, cb, 2, 0), {}, [(25, 5, 1800)]),
        ("cnn conv1d_bwd 1->25 (no dx)", "conv1d_backward", (r(100, 25, 18), c1, cw1, 2, 0),
         {"need_dx": False}, [(25, 1800, 5)]),
        ("cnn conv1d 25->25 k3 L18", "conv1d", (c2, cw2, cb, 2, 0), {}, [(25, 75, 800)]),
        ("cnn conv1d_bwd 25->25 L18", "conv1d_backward", (r(100, 25, 8), c2, cw2, 2, 0), {},
         [(75, 800, 25), (75, 25, 800)]),
        ("cnn conv1d 25->25 k3 L8", "conv1d", (c3, cw2, cb, 2, 0), {}, [(25, 75, 300)]),
        ("cnn conv1d_bwd 25->25 L8", "conv1d_backward", (r(100, 25, 3), c3, cw2, 2, 0), {},
         [(75, 300, 25), (75, 25, 300)]),
    ]
    return out


def best_us(fn, reps):
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e6


def measure(mod, threads, rounds, with_ref):
    from fastnn._kernels import reference as ref
    rng = np.random.default_rng(0)
    table = {}
    todo = cases(rng)
    gemm_ops = {}
    for name, kernel, args, kw, gemms in todo:
        ops = []
        for m, k, n in gemms:
            a, b = rng.standard_normal((m, k)).astype(F), rng.standard_normal((k, n)).astype(F)
            ops.append(lambda a=a, b=b: mod.matmul(a, b))
        gemm_ops[name] = ops
    for nth in threads:
        mod._set_num_threads(nth)
        with threadpool_limits(nth):
            samples = {name: {"kernel": [], "gemm": [], "numpy": []} for name, *_ in todo}
            for _ in range(rounds):
                for name, kernel, args, kw, gemms in todo:      # interleaved: round-robin
                    f = getattr(mod, kernel)
                    samples[name]["kernel"].append(best_us(lambda: f(*args, **kw), 20))
                    if gemm_ops[name]:
                        samples[name]["gemm"].append(sum(best_us(op, 20) for op in gemm_ops[name]))
                    if with_ref:
                        g = getattr(ref, kernel)
                        samples[name]["numpy"].append(best_us(lambda: g(*args, **kw), 3))
            for name, s in samples.items():
                table[f"{name} @{nth}t"] = {k: (min(v) if v else None) for k, v in s.items()}
    mod._set_num_threads(1)
    return table


def print_table(table):
    print(f"{'kernel (float32, batch 100)':40s} {'us':>8s} {'numpy us':>9s} {'x numpy':>8s} "
          f"{'GEMM us':>8s} {'/GEMM':>6s}")
    for name, r in table.items():
        k, g, n = r["kernel"], r["gemm"], r["numpy"]
        print(f"{name:40s} {k:8.1f} {n if n else float('nan'):9.1f} "
              f"{(n / k) if n else float('nan'):8.1f} {g if g else float('nan'):8.1f} "
              f"{(k / g) if g else float('nan'):6.2f}")


def ab(old, pairs, rounds, threads):
    runs = {"old": [], "new": []}
    for _ in range(pairs):
        for side in ("old", "new"):
            cmd = [sys.executable, __file__, "--json", "--no-ref", "--rounds", str(rounds),
                   "--threads", *map(str, threads)] + (["--so", old] if side == "old" else [])
            runs[side].append(json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                                        text=True).stdout))
    print(f"{'kernel':40s} {'new/old time':>16s}   (min..max over {pairs} old/new process pairs)")
    for name in runs["new"][0]:
        ratios = [n[name]["kernel"] / o[name]["kernel"] for o, n in zip(runs["old"], runs["new"])]
        print(f"{name:40s} {min(ratios):7.2f}..{max(ratios):5.2f}   "
              f"(old {statistics.median(o[name]['kernel'] for o in runs['old']):7.1f} us, "
              f"new {statistics.median(n[name]['kernel'] for n in runs['new']):7.1f} us)")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--so", default=None)
    p.add_argument("--ab", default=None, metavar="OLD_SO")
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-ref", action="store_true")
    args = p.parse_args()
    if args.ab:
        return ab(args.ab, args.pairs, args.rounds, args.threads)
    mod = load(args.so)
    table = measure(mod, args.threads, args.rounds, not args.no_ref)
    if args.json:
        print(json.dumps(table))
    else:
        print(f"module {mod.__file__}")
        print_table(table)


if __name__ == "__main__":
    main()
