"""Our two-thread GEMMs beside numpy.matmul (OpenBLAS, two threads) in ONE process.

The "user calls numpy between our kernels" case: calls alternate ours / numpy /
ours / numpy ..., each timed on its own; beside that the same kernels alone
(quiet figures). GFLOP/s: the best of 8 stretches of calls, each from its total time (a
call that waited 4 ms for a core counts in full), with the median call beside it.

    python benchmarks/threads_vs_openblas.py [--backends cython numba] [--seconds 0.3]
    python benchmarks/threads_vs_openblas.py --busy      # + a busy process pinned to the other core
    FASTNN_BLAS_POOL=own python ...                      # before the fix: OpenBLAS keeps its own threads

On a machine shared with other busy programs run it as `nice -n -20 python ...` (root), or
the tables measure the neighbours; each table says how many cores the others used meanwhile.

--busy: each kernel alone, quiet and then with a competing spin loop pinned to
one core (taskset-style, os.sched_setaffinity in a child), as a fraction of its
quiet speed; ours two threads, numpy two threads. Prints markdown tables.
"""
import argparse
import multiprocessing as mp
import os
import signal
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

import fastnn as fnn

SHAPES = [(f"{n}^3", n, n, n, False, False) for n in (64, 128, 256, 512, 1024)]
# The 784-256-128-10 MLP at batch 128: forward x @ W.T, backward dy.T @ x and dy @ W
for _m, _k, _n in ((128, 784, 256), (128, 256, 128), (128, 128, 10)):
    SHAPES += [(f"x@W.T {_m}x{_k}x{_n}", _m, _k, _n, False, True),
               (f"dy.T@x {_n}x{_m}x{_k}", _n, _m, _k, True, False),
               (f"dy@W {_m}x{_n}x{_k}", _m, _n, _k, False, False)]


def operands(m, k, n, ta, tb, dtype, rng):
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    return a, b


def _timed(fn, seconds, min_calls=20):
    """Per-call times of fn for about `seconds`."""
    fn()
    times, end = [], time.perf_counter() + seconds
    while len(times) < min_calls or time.perf_counter() < end:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return np.array(times)


def _interleaved(fns, seconds, min_rounds=20):
    """Per-call times of each fn, calling them in turn (f0, f1, f0, f1, ...)."""
    for f in fns:
        f()
    times = [[] for _ in fns]
    end = time.perf_counter() + seconds
    while len(times[0]) < min_rounds or time.perf_counter() < end:
        for f, t in zip(fns, times):
            t0 = time.perf_counter()
            f()
            t.append(time.perf_counter() - t0)
    return [np.array(t) for t in times]


WINDOWS = 8


def gflops(flop, times, windows=WINDOWS):
    """(GF/s of the best of `windows` consecutive stretches of calls, of the median call).

    Each stretch's rate comes from its total time, so a call that waited for a core counts
    in full; the best stretch is the one a busy neighbour (another program on this shared
    machine) happened to leave alone. A fight between our pool and OpenBLAS's is there in
    every stretch: it shows in the best one too."""
    parts = np.array_split(times, min(windows, len(times)))
    best = max(flop * len(p) / p.sum() for p in parts)
    return best / 1e9, flop / np.median(times) / 1e9


class OtherLoad:
    """CPU the rest of the machine used while a table ran, in cores (from /proc/stat): on a
    shared machine a busy neighbour looks like a slow kernel, so each table says it."""

    def __enter__(self):
        self.t0, self.busy0, self.ours0 = time.perf_counter(), self._busy(), self._ours()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.t0
        busy = self._busy() - self.busy0
        self.cores = (busy - (self._ours() - self.ours0)) / wall if busy == busy else float("nan")
        print(f"\n(other processes used {self.cores:.2f} cores meanwhile)", flush=True)

    @staticmethod
    def _busy():
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
        except OSError:
            return float("nan")
        return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")   # all but idle, iowait

    @staticmethod
    def _ours():
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system


def _spin(core):
    try:
        os.sched_setaffinity(0, {core})
    except (AttributeError, OSError):
        pass
    while True:
        pass


class Busy:
    """A competing busy process pinned to one core (the last usable one)."""

    def __init__(self):
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
        self.core = cores[-1]
        self.proc = None

    def __enter__(self):
        self.proc = mp.get_context("spawn").Process(target=_spin, args=(self.core,), daemon=True)
        self.proc.start()
        time.sleep(0.2)
        return self

    def run(self, on):
        """Let the busy process spin (on) or stop it (SIGSTOP) for a quiet measurement."""
        os.kill(self.proc.pid, signal.SIGCONT if on else signal.SIGSTOP)
        time.sleep(0.05)

    def __exit__(self, *exc):
        self.run(True)
        self.proc.terminate()
        self.proc.join()


RAW = False   # --raw: the unchecked kernels (backend.raw.matmul), without the input check's cost


def kernels(names, threads):
    out = {}
    for name in names:
        be = fnn.get_backend(name)
        be.module.set_num_threads(threads)
        out[name] = be.raw.matmul if RAW else be.matmul
    return out


def run_interleaved(args, rng):
    mm = kernels(args.backends, args.threads)
    cols = " | ".join(f"{b} GF/s (median call) | numpy GF/s (median call) | {b}/numpy" for b in args.backends)
    print(f"\n### Interleaved with numpy.matmul, {args.threads} threads each, {args.dtype}\n")
    print(f"| shape | {cols} |")
    print("|---" * (1 + 3 * len(args.backends)) + "|")
    worst = {b: np.inf for b in args.backends}
    for label, m, k, n, ta, tb in SHAPES:
        a, b = operands(m, k, n, ta, tb, args.dtype, rng)
        opa, opb = (a.T if ta else a), (b.T if tb else b)
        flop = 2.0 * m * n * k
        cells = []
        with threadpool_limits(args.threads, user_api="blas"):
            for name, f in mm.items():
                t_ours, t_np = _interleaved([lambda: f(a, b, ta, tb), lambda: opa @ opb], args.seconds)
                (o, om), (p, pm) = gflops(flop, t_ours), gflops(flop, t_np)
                worst[name] = min(worst[name], o / p)
                cells.append(f"{o:.0f} ({om:.0f}) | {p:.0f} ({pm:.0f}) | {o / p:.2f}")
        print(f"| {label} | {' | '.join(cells)} |", flush=True)
    print("\nlowest ratio: " + ", ".join(f"{b} {w:.2f}" for b, w in worst.items()))
    return worst


def alone_speeds(args, rng, mm, busy=None):
    """{(label, name, 'quiet' | 'busy'): GF/s} of each kernel alone (name 'numpy' =
    numpy.matmul). With a Busy process: each shape quiet (the process stopped), then busy
    (continued), so a neighbour's drift on this shared machine hits both alike."""
    out = {}
    phases = ["quiet"] + (["busy"] if busy is not None else [])
    with threadpool_limits(args.threads, user_api="blas"):
        for label, m, k, n, ta, tb in SHAPES:
            a, b = operands(m, k, n, ta, tb, args.dtype, rng)
            opa, opb = (a.T if ta else a), (b.T if tb else b)
            flop = 2.0 * m * n * k
            for phase in phases:
                if busy is not None:
                    busy.run(phase == "busy")
                for name, f in mm.items():
                    out[label, name, phase] = gflops(flop, _timed(lambda: f(a, b, ta, tb), args.seconds))[0]
                out[label, "numpy", phase] = gflops(flop, _timed(lambda: opa @ opb, args.seconds))[0]
                time.sleep(0.15)   # OpenBLAS's own workers (FASTNN_BLAS_POOL=own) back to sleep
    if busy is not None:
        busy.run(True)
    return out


def run_alone(args, rng, busy=False):
    mm = kernels(args.backends, args.threads)
    names = list(mm) + ["numpy"]
    if busy:
        with Busy() as b:
            speeds = alone_speeds(args, rng, mm, b)
        title = f"Alone, quiet and beside a busy process on core {b.core}"
    else:
        speeds = alone_speeds(args, rng, mm)
        title = "Alone (quiet)"
    print(f"\n### {title}, {args.threads} threads, {args.dtype}: GF/s" + (" (busy/quiet)" if busy else "") + "\n")
    print("| shape | " + " | ".join(names) + " |")
    print("|---" * (1 + len(names)) + "|")
    worst = {n: np.inf for n in names}
    for label, *_ in SHAPES:
        cells = []
        for n in names:
            q = speeds[label, n, "quiet"]
            if busy:
                loaded = speeds[label, n, "busy"]
                frac = loaded / q
                worst[n] = min(worst[n], frac)
                cells.append(f"{q:.0f} -> {loaded:.0f} ({frac:.2f})")
            else:
                cells.append(f"{q:.0f}")
        print(f"| {label} | {' | '.join(cells)} |", flush=True)
    if busy:
        print("\nlowest busy/quiet: " + ", ".join(f"{n} {w:.2f}" for n, w in worst.items()))
    return speeds, worst


def _guards(names):
    """{backend: set_straggler_guard(late_s)} of the compiled backends."""
    out = {}
    for name in names:
        if name == "cython":
            out[name] = lambda late: fnn.get_backend("cython").module._mod._set_straggler_guard(late)
        elif name == "numba":
            from fastnn._kernels.numba_cpu import _threads
            out[name] = _threads.set_straggler_guard
    return out


def run_guard(args, rng, batch=10):
    """Our kernels alone with the straggler guard on against off, interleaved in batches of
    calls: on a quiet machine the guard must cost nothing (it only ever drops to one thread)."""
    mm = kernels(args.backends, args.threads)
    guards = _guards(args.backends)
    print(f"\n### Straggler guard on / off, kernels alone, {args.threads} threads, {args.dtype}: GF/s\n")
    print("| shape | " + " | ".join(f"{b} on | {b} off | {b} on/off" for b in guards) + " |")
    print("|---" * (1 + 3 * len(guards)) + "|")
    for label, m, k, n, ta, tb in SHAPES:
        a, b = operands(m, k, n, ta, tb, args.dtype, rng)
        flop = 2.0 * m * n * k * batch
        cells = []
        for name, set_guard in guards.items():
            f = mm[name]

            def calls(late):
                set_guard(late)
                for _ in range(batch):
                    f(a, b, ta, tb)
            t_on, t_off = _interleaved([lambda: calls(0.0005), lambda: calls(0)], args.seconds)
            on, off = gflops(flop, t_on)[0], gflops(flop, t_off)[0]
            cells.append(f"{on:.0f} | {off:.0f} | {on / off:.2f}")
        print(f"| {label} | {' | '.join(cells)} |", flush=True)
    for set_guard in guards.values():
        set_guard(0.0005)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+",
                        default=[b for b in ("cython", "numba") if b in fnn.backends()])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--seconds", type=float, default=0.3, help="per shape and kernel")
    parser.add_argument("--busy", action="store_true", help="also run beside a busy process")
    parser.add_argument("--only", choices=["interleaved", "alone", "busy", "guard"],
                        help="run just one of the tables")
    parser.add_argument("--raw", action="store_true",
                        help="time backend.raw.matmul (no input check) instead of backend.matmul")
    args = parser.parse_args(argv)
    global RAW
    RAW = args.raw
    rng = np.random.default_rng(0)
    env = {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OPENBLAS_NUM_THREADS",
                                      "OMP_NUM_THREADS", "FASTNN_BLAS_POOL") if k in os.environ}
    kernels(args.backends, args.threads)      # load the backends (the BLAS pool is set up then)
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, cores "
          f"{len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()}, "
          f"{'raw' if RAW else 'checked'} matmul, nice {os.nice(0)}, env {env or '{}'}\nfastnn {os.path.dirname(fnn.__file__)}: "
          f"{getattr(fnn.threads, 'describe', lambda: 'no threads.describe()')()}")
    if args.only in (None, "interleaved"):
        with OtherLoad():
            run_interleaved(args, rng)
    if args.only == "alone" or (args.only is None and not args.busy):
        with OtherLoad():
            run_alone(args, rng)
    if args.only == "guard":
        with OtherLoad():
            run_guard(args, rng)
    if args.only == "busy" or (args.only is None and args.busy):
        with OtherLoad():     # the busy process is our child: not counted as "other"
            run_alone(args, rng, busy=True)


if __name__ == "__main__":
    main()
