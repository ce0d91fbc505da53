"""Recurrent kernels at batch 100, T = 40, F = 1 (the small-model rows): a roofline table and
the bidirectional layer's two directions at once against one after the other.

1. roofline: forward + backward kernel time of one LSTM/GRU direction (cython) at H 6/32/128
   on 1 thread, 2 threads (the kernels' own policy: _RNN_PAR_MIN_WORK) and 2 threads forced
   (min work 0), and the GEMM FLOP rate that reaches: per step 2*N*(F+H)*G*H forward and twice
   that backward (G = 4 LSTM, 3 GRU). "bi" rows: both directions, one after the other (seq)
   and at once (pair: _recurrent_pair, one direction a core). Against cython's GEMM at the
   step's shape (N x (F+H) @ (F+H) x G*H) and at 1024^3, on 1 and 2 threads.
2. split (--split): one direction on 1 thread, forward / backward / backward without dx, the
   dW_hh GEMM (h^T d_hid over the N*T rows) alone and the forward's GEMM flops at the step
   GEMM's rate: where the H = 32 rows path's time goes.
3. A/B: a bidirectional layer's training step (forward, backward, Adam) with the pair on and
   off (_set_rnn_pair_concurrent), alternating in one process; ratio = seq time / pair time.

    python benchmarks/recurrent_bidir.py [--hidden 6 32 128] [--cells lstm gru] [--rounds 7]
                                         [--skip-roofline] [--skip-ab] [--split] [--backend auto]

Roofline and split: the best of interleaved rounds; A/B: medians of rounds (and best/best).
OpenBLAS on one thread.
"""
import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

import fastnn as fnn
from fastnn import layers as L
from fastnn._kernels import cython as cy

sys.path.insert(0, str(Path(__file__).parent))
from acts_vs_numpy import _best  # noqa: E402  (best-of-n wall time of a call)

N, T, F = 100, 40, 1
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def _blas_one_thread():
    try:
        from threadpoolctl import threadpool_limits
        return threadpool_limits(1)
    except ImportError:   # pragma: no cover
        return None


def _interleaved(cases, rounds, repeat):
    """{name: the best over rounds of the best of `repeat` runs}, the cases alternating (on a
    shared machine the best is the steadiest estimate of the kernel's own speed)."""
    for fn in cases.values():
        fn()                                   # warm up (numba/alloc/first-touch)
    times = {k: [] for k in cases}
    for _ in range(rounds):
        for k, fn in cases.items():
            times[k].append(_best(fn, repeat))
    return {k: min(v) for k, v in times.items()}


def _args(cell, hid, rng, dtype=np.float32):
    g = GATES[cell] * hid
    return (rng.standard_normal((N, T, F)).astype(dtype),
            *(rng.uniform(-0.3, 0.3, s).astype(dtype) for s in ((g, F), (g, hid), (g,), (g,))))


def _threads(n, min_work):
    mod = cy._mod

    def setup():
        cy.set_num_threads(n)
        mod._set_rnn_parallel_min_work(min_work)
    return setup


def roofline(cells, hiddens, rounds):
    mod = cy._mod
    default_min = mod._set_rnn_parallel_min_work(1 << 25)
    rng = np.random.default_rng(0)
    gemm = {}
    big_a = rng.standard_normal((1024, 1024)).astype(np.float32)
    big_b = rng.standard_normal((1024, 1024)).astype(np.float32)
    for nth in (1, 2):
        t = _interleaved({0: lambda: cy.matmul_isa(big_a, big_b, num_threads=nth)}, rounds, 3)[0]
        gemm[("1024^3", nth)] = 2 * 1024 ** 3 / t / 1e9
    print(f"cython sgemm 1024^3: {gemm[('1024^3', 1)]:.0f} GF/s on 1 thread, "
          f"{gemm[('1024^3', 2)]:.0f} on 2")
    print(f"\nroofline: N={N} T={T} F={F} float32, forward+backward of the cython kernels; GF/s of "
          f"the GEMM flops (3 * 2*N*(F+H)*G*H per step and direction); % of cython's GEMM at the step "
          f"shape (N x (F+H) @ (F+H) x G*H) on as many threads")
    head = (f"{'model':>10} {'H':>4} {'threads':>14} {'ms':>8} {'GF/s':>7} {'step GEMM GF/s':>15} "
            f"{'% step':>7} {'% 1024^3':>8}")
    print(head)
    for cell in cells:
        fwd, bwd = getattr(mod, cell), getattr(mod, cell + "_backward")
        for hid in hiddens:
            g = GATES[cell] * hid
            a, b = _args(cell, hid, rng), _args(cell, hid, rng)
            sa, sb = fwd(*a), fwd(*b)
            tup = lambda o: o if isinstance(o, tuple) else (o,)
            dh = np.ones((N, T, hid), np.float32)
            ba, bb = (dh, a[0], *tup(sa), a[1], a[2], True), (dh, b[0], *tup(sb), b[1], b[2], True)
            sa_ = rng.standard_normal((N, F + hid)).astype(np.float32)
            sb_ = rng.standard_normal((F + hid, g)).astype(np.float32)
            flops = 3 * 2 * N * (F + hid) * g * T
            for nth in (1, 2):
                gemm[(hid, cell, nth)] = 2 * N * (F + hid) * g / _interleaved(
                    {0: lambda: cy.matmul_isa(sa_, sb_, num_threads=nth)}, rounds, 50)[0] / 1e9
            configs = [("1", _threads(1, default_min), 1), ("2", _threads(2, default_min), 2),
                       ("2 forced", _threads(2, 0), 2)]
            cases = {}
            for label, setup, nth in configs:
                def uni(setup=setup):
                    setup()
                    fwd(*a)
                    bwd(*ba)

                def seq(setup=setup):
                    setup()
                    mod._set_rnn_pair_concurrent(False)
                    mod._recurrent_pair(cell, a, b)
                    mod._recurrent_pair(cell + "_backward", ba, bb)

                def pair(setup=setup):
                    setup()
                    mod._set_rnn_pair_concurrent(True)
                    mod._recurrent_pair(cell, a, b)
                    mod._recurrent_pair(cell + "_backward", ba, bb)
                cases[(cell, label, nth)] = uni
                cases[("bi" + cell + " seq", label, nth)] = seq
                if nth == 2:
                    cases[("bi" + cell + " pair", label, nth)] = pair
            res = _interleaved(cases, rounds, 3)
            for (name, label, nth), t in res.items():
                dirs = 2 if name.startswith("bi") else 1
                rate = dirs * flops / t / 1e9
                step = gemm[(hid, cell, nth)]
                print(f"{name:>10} {hid:>4} {label:>14} {t * 1e3:8.2f} {rate:7.1f} {step:15.1f} "
                      f"{100 * rate / step:6.0f}% {100 * rate / gemm[('1024^3', nth)]:7.0f}%")
    cy.set_num_threads(2)
    mod._set_rnn_parallel_min_work(default_min)
    mod._set_rnn_pair_concurrent(True)


def split(cells, hiddens, rounds):
    """Forward / backward pieces of one direction on one thread (best of interleaved rounds)."""
    mod = cy._mod
    cy.set_num_threads(1)
    rng = np.random.default_rng(0)
    print(f"\nsplit: one direction, 1 thread, float32, N={N} T={T} F={F}; ms (best of {rounds} rounds); "
          f"'fwd GEMM' = the forward's GEMM flops at the step GEMM's rate (the rest is gate math, "
          f"packing and copies)")
    print(f"{'cell':>5} {'H':>4} {'fwd':>7} {'fwd GEMM':>9} {'bwd':>7} {'bwd no dx':>10} {'dW_hh GEMM':>11}")
    for cell in cells:
        fwd, bwd = getattr(mod, cell), getattr(mod, cell + "_backward")
        for hid in hiddens:
            g = GATES[cell] * hid
            a = _args(cell, hid, rng)
            out = fwd(*a)
            out = out if isinstance(out, tuple) else (out,)
            dh = np.ones((N, T, hid), np.float32)
            hh = out[0].reshape(N * T, hid)
            dd = rng.standard_normal((N * T, g)).astype(np.float32)
            cols = (4 if cell == "gru" else GATES[cell]) * hid     # the GRU's panel: r, z, n_x, n_h
            sa_ = rng.standard_normal((N, F + hid)).astype(np.float32)
            sb_ = rng.standard_normal((F + hid, cols)).astype(np.float32)
            cases = {"fwd": lambda: fwd(*a), "bwd": lambda: bwd(dh, a[0], *out, a[1], a[2], True),
                     "nodx": lambda: bwd(dh, a[0], *out, a[1], a[2], False),
                     "dwhh": lambda: mod._matmul_threads(hh, dd, True, False, 1),
                     "step": lambda: mod._matmul_threads(sa_, sb_, False, False, 1)}
            best = {k: float("inf") for k in cases}
            for _ in range(rounds):
                for k, fn in cases.items():
                    best[k] = min(best[k], _best(fn, 3))
            print(f"{cell:>5} {hid:>4} {best['fwd'] * 1e3:7.3f} {best['step'] * T * 1e3:9.3f} "
                  f"{best['bwd'] * 1e3:7.3f} {best['nodx'] * 1e3:10.3f} {best['dwhh'] * 1e3:11.3f}")
    cy.set_num_threads(2)


def ab(cells, hiddens, rounds, backend):
    """A bidirectional layer's training step, pair on vs off (interleaved, one process)."""
    mod = cy._mod
    cy.set_num_threads(2)
    print(f"\nA/B: bidirectional {'/'.join(cells)}(1, H) - Dense(2H, 10) training step (forward, "
          f"cross-entropy, backward, Adam), batch {N}, T={T}, backend {backend}, 2 threads; "
          f"ratio = sequential / pair (> 1: the pair is faster)")
    print(f"{'model':>8} {'H':>4} {'seq ms':>8} {'pair ms':>8} {'ratio':>6} {'best/best':>9}  per-round ratios")
    rng = np.random.default_rng(0)
    for cell in cells:
        for hid in hiddens:
            model = fnn.Sequential(getattr(L, cell.upper())(1, hid, bidirectional=True),
                                   L.Dense(2 * hid, 10), backend=backend, dtype="float32", seed=0)
            opt = fnn.optim.Adam(lr=1e-3)
            x = rng.standard_normal((N, T, F)).astype(np.float32)
            y = rng.integers(0, 10, N)

            def step(on):
                mod._set_rnn_pair_concurrent(on)
                out = model.forward(x)
                _, grad = fnn.losses.cross_entropy(out, y)
                model.zero_grad()
                model.backward(grad)
                opt.step(model.parameters())
            for _ in range(3):
                step(True)
                step(False)
            per = []
            seq_t, pair_t = [], []
            for _ in range(rounds):
                s = _best(lambda: step(False), 5)
                p = _best(lambda: step(True), 5)
                seq_t.append(s)
                pair_t.append(p)
                per.append(s / p)
            s, p = statistics.median(seq_t), statistics.median(pair_t)
            print(f"{'bi' + cell:>8} {hid:>4} {s * 1e3:8.2f} {p * 1e3:8.2f} {s / p:6.2f} "
                  f"{min(seq_t) / min(pair_t):9.2f}  {min(per):.2f}-{max(per):.2f}")
    mod._set_rnn_pair_concurrent(True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, nargs="+", default=[6, 32, 128])
    ap.add_argument("--cells", nargs="+", default=["lstm", "gru"], choices=["lstm", "gru", "rnn"])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--skip-roofline", action="store_true")
    ap.add_argument("--skip-ab", action="store_true")
    ap.add_argument("--split", action="store_true")
    args = ap.parse_args()
    limits = _blas_one_thread()
    try:
        if not args.skip_roofline:
            roofline(args.cells, args.hidden, args.rounds)
        if args.split:
            split(args.cells, args.hidden, args.rounds)
        if not args.skip_ab:
            ab(args.cells, args.hidden, args.rounds, args.backend)
    finally:
        if limits is not None:
            limits.unregister()


if __name__ == "__main__":
    main()
