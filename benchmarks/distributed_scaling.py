"""Data-parallel scaling on MPI: samples/s of a 784-256-128-10 ReLU MLP epoch (SGD, softmax
cross-entropy, 60,000 synthetic rows) on 1 and 2 ranks, one thread per rank, with the
communication time per step the trainer reports and a bare allreduce of the same size.

    python benchmarks/distributed_scaling.py [--ranks 1 2] [--batch 128] [--epochs 2] [--repeats 3]
    python benchmarks/distributed_scaling.py --cost-model     # the README's table for more machines

Each run is `mpiexec -n R python distributed_scaling.py --worker ...` in a subprocess (rounds
alternate between the rank counts; the median of --repeats is reported). --batch is per rank, so
R ranks take global batches of R x batch; the extra row "1 rank at batch R x b" shows how much of
a speed-up is only the larger batch. Needs the mpi extra (pip install ".[mpi]").
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

SIZES = (784, 256, 128, 10)
ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                               "NUMBA_NUM_THREADS")}


# ------------------------------------------------------------------ the worker (one per rank)
def synthetic(n, seed=0):
    """Rows and labels of a random linear teacher (learnable, so the loss moves): the same on every rank."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, SIZES[0]), dtype=np.float32)
    teacher = rng.standard_normal((SIZES[0], SIZES[-1])).astype(np.float32)
    return X, np.argmax(X @ teacher, axis=1)


def worker(args):
    import fastnn as fnn
    from fastnn import distributed as dist
    from fastnn.layers import Dense, ReLU

    backend = fnn.get_backend(args.backend)
    if hasattr(backend.module, "set_num_threads"):
        backend.module.set_num_threads(1)
    X, y = synthetic(args.rows)
    model = fnn.Sequential(Dense(SIZES[0], SIZES[1]), ReLU(), Dense(SIZES[1], SIZES[2]), ReLU(),
                           Dense(SIZES[2], SIZES[3]), backend=args.backend, seed=0)
    trainer = fnn.Trainer(model, "cross_entropy", fnn.optim.SGD(lr=0.01), distributed=True)
    warm = args.batch * dist.size() * 20   # first touches, caches, MPI connections: not timed
    trainer.fit(X[:warm], y[:warm], epochs=1, batch_size=args.batch, progress=False)
    dist.barrier()
    start = time.perf_counter()
    trainer.fit(X, y, epochs=args.epochs, batch_size=args.batch, progress=False)
    fit_seconds = max(dist.allgather(time.perf_counter() - start))   # the slowest rank's time
    # The epochs alone (History's "time"): fit's one-off start (checking all of X on every rank,
    # the broadcast) is left out, as the issue asks for samples/s of an epoch.
    seconds = max(dist.allgather(sum(trainer.history.history["time"][-args.epochs:])))
    stats = trainer.comm_stats
    # a bare allreduce of the gradient buffer's size (float32), as the trainer's buckets sum it
    grad = np.ones(model.count_params(), np.float32)
    for _ in range(3):
        dist.allreduce(grad)
    dist.barrier()
    t = time.perf_counter()
    for _ in range(args.allreduces):
        dist.allreduce(grad)
    bare = max(dist.allgather((time.perf_counter() - t) / args.allreduces))
    if dist.is_main():
        result = {"ranks": dist.size(), "batch": args.batch, "rows": args.rows, "epochs": args.epochs,
                  "seconds": seconds, "samples_per_s": args.rows * args.epochs / seconds,
                  "fit_seconds": fit_seconds,
                  "params": model.count_params(), "steps": stats["steps"], "wait_s": stats["wait_s"],
                  "bytes": stats["bytes"], "allreduce_s": bare,
                  "train_loss": trainer.history.history["loss"][-1]}
        with open(args.out, "w") as f:
            json.dump(result, f)


# ------------------------------------------------------------------ the README's cost model
def readme_models():
    """(name, model) for the models the README measures, built as its scripts build them."""
    import fastnn as fnn
    from fastnn import cli, layers as L
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [here, os.path.join(os.path.dirname(here), "examples")]
    import char_transformer
    import residual_cnn_digits
    import small_models_vs_torch as small
    models = [(f"digits {k} (`fastnn digits --model {k}`)", cli._digits_model("numpy", "float32", 0, k))
              for k in cli.FAMILIES]
    models.append(("784-256-128-10 MLP (`epoch_vs_torch.py`, this benchmark)", fnn.Sequential(
        L.Dense(784, 256), L.ReLU(), L.Dense(256, 128), L.ReLU(), L.Dense(128, 10), backend="numpy")))
    models += [(f"small models: {kind}", small.fastnn_model(kind, hidden, "numpy"))
               for kind, hidden in (("cnn", None), ("bilstm", 32), ("gru", 32), ("mlp", None))]
    models.append(("2 x TransformerEncoderLayer(64, 4 heads, ff 256)", fnn.Sequential(
        *[L.TransformerEncoderLayer(64, 4, dim_feedforward=256, dropout=0.0) for _ in range(2)], backend="numpy")))
    models.append(("`examples/residual_cnn_digits.py`", residual_cnn_digits.build("numpy", 0)))
    vocab = len(set(char_transformer.load_text()))
    models.append(("`examples/char_transformer.py`", char_transformer.build(vocab, 64, 64, 4, 2, 0.0, "numpy", 0)))
    return models


def ring_bytes(params, ranks, itemsize=4):
    """What each rank sends (and receives) per step in a ring allreduce of the gradients."""
    return 2 * (ranks - 1) / ranks * params * itemsize


def cost_model(ranks=(2, 8, 64), links_gbit=(10, 100)):
    """The README's table: per model, ring-allreduce bytes per step per rank and the step time
    below which each link cannot keep up (bytes * 8 / rate), for each rank count."""
    ns = " / ".join(f"N={n}" for n in ranks)
    print(f"| model | parameters | KB per step per rank ({ns}) | "
          + " | ".join(f"min step at {g} Gb/s, µs ({ns})" for g in links_gbit) + " |")
    print("|---|---|---|" + "---|" * len(links_gbit))
    for name, model in readme_models():
        p = model.count_params()
        kb = " / ".join(f"{ring_bytes(p, n) / 1e3:,.0f}" for n in ranks)
        us = [[ring_bytes(p, n) * 8 / (g * 1e9) * 1e6 for n in ranks] for g in links_gbit]
        times = [" / ".join(f"{t:.0f}" if t >= 10 else f"{t:.1f}" for t in row) for row in us]
        print(f"| {name} | {p:,} | {kb} | " + " | ".join(times) + " |")


# ------------------------------------------------------------------ the driver
def mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = here if os.access(here, os.X_OK) else shutil.which("mpiexec")
    if found is None:
        sys.exit("no mpiexec: pip install '.[mpi]' (mpi4py and the MPICH wheel)")
    return found


def launch(ranks, batch, args):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        cmd = [mpiexec(), "-n", str(ranks), sys.executable, os.path.abspath(__file__), "--worker",
               "--batch", str(batch), "--rows", str(args.rows), "--epochs", str(args.epochs),
               "--backend", args.backend, "--allreduces", str(args.allreduces), "--out", out]
        run = subprocess.run(cmd, env=dict(os.environ, **ONE_THREAD), capture_output=True, text=True,
                             timeout=args.timeout)
        if run.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed ({run.returncode}):\n{run.stdout}{run.stderr}")
        with open(out) as f:
            return json.load(f)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch", type=int, default=128, help="rows per rank per step (default 128)")
    p.add_argument("--rows", type=int, default=60_000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--backend", default="cython")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--allreduces", type=int, default=50, help="bare allreduce calls timed per run")
    p.add_argument("--no-big-batch", action="store_true", help="skip the 1-rank run at the global batch")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--json", default=None, help="also write every run's numbers here")
    p.add_argument("--cost-model", action="store_true",
                   help="only print the README's cost-model table (ring-allreduce bytes per step, the "
                        "step time a 10 / 100 Gb/s link keeps up with) for the README's models")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.cost_model:
        return cost_model()

    configs = [(r, args.batch) for r in args.ranks]
    if not args.no_big_batch:
        configs += [(1, r * args.batch) for r in args.ranks if r > 1]
    runs = {c: [] for c in configs}
    for i in range(args.repeats):   # rounds alternate the configurations: the machine's drift hits all
        for c in configs:
            runs[c].append(launch(*c, args))
            r = runs[c][-1]
            print(f"round {i + 1}: {c[0]} rank(s) x batch {c[1]}: {r['samples_per_s']:,.0f} samples/s",
                  file=sys.stderr, flush=True)

    def med(c, key):
        return statistics.median(r[key] for r in runs[c])

    base = med((args.ranks[0], args.batch), "samples_per_s")
    params = runs[configs[0]][0]["params"]
    print(f"\n784-256-128-10 MLP ({params:,} parameters), {args.rows:,} rows x {args.epochs} epochs, "
          f"{args.backend}, one thread per rank, median of {args.repeats}; samples/s of the epochs "
          f"(fit's one-off start, the data check and broadcast, left out: "
          + ", ".join(f"{c[0]}x{c[1]}: {med(c, 'fit_seconds') - med(c, 'seconds'):.2f} s" for c in configs) + ")")
    print("| ranks | batch per rank (global) | samples/s | vs 1 rank (ratio of medians; median of "
          "each round's ratio, range) | comm wait per step | MB allreduced per step | bare allreduce (ms) |")
    print("|---|---|---|---|---|---|---|")
    first = runs[(args.ranks[0], args.batch)]
    for c in configs:
        ranks, batch = c
        sps, steps = med(c, "samples_per_s"), med(c, "steps")
        wait = med(c, "wait_s") / max(steps, 1) * 1e3
        mb = med(c, "bytes") / max(steps, 1) / 1e6
        step_ms = med(c, "seconds") / max(steps, 1) * 1e3
        paired = [r["samples_per_s"] / f["samples_per_s"] for r, f in zip(runs[c], first)]   # same round
        print(f"| {ranks} | {batch} ({ranks * batch}) | {sps:,.0f} | {sps / base:.2f}x; "
              f"{statistics.median(paired):.2f}x ({min(paired):.2f}-{max(paired):.2f}) | "
              f"{wait:.2f} ms of {step_ms:.2f} ms | {mb:.2f} | {med(c, 'allreduce_s') * 1e3:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{r}x{b}": v for (r, b), v in runs.items()}, f, indent=1)


if __name__ == "__main__":
    main()
