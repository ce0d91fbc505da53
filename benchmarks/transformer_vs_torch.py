"""Training steps (forward, MSE loss, backward, Adam) of a 2-layer Transformer encoder, fastnn's
backends against PyTorch CPU in one process, interleaved: steps/s and the ratio to torch.
Also the fused attention kernels (forward, backward) against the NumPy reference.

Model: 2 x TransformerEncoderLayer(d_model 64, 4 heads, dim_feedforward 256, dropout 0,
relu, post-norm), sequence 32, batch 32, float32, Adam(lr=1e-3); torch: the same
nn.TransformerEncoder(batch_first=True) layers. Threads: torch.set_num_threads(--threads),
fastnn's backends with --threads and OpenBLAS held to one thread while they run.

    python benchmarks/transformer_vs_torch.py [--backends numba cython] [--threads 1] [--ff 256]
"""
import argparse
import statistics
import time

import numpy as np

import fastnn as fnn
from fastnn import layers as L
from fastnn._kernels import reference as ref

N, T, D, H = 32, 32, 64, 4


def fastnn_step(backend, ff, x, target):
    model = fnn.Sequential(*[L.TransformerEncoderLayer(D, H, dim_feedforward=ff, dropout=0.0)
                             for _ in range(2)], backend=backend, seed=0)
    opt, loss, params = fnn.optim.Adam(lr=1e-3), model.backend.raw.mse, model.parameters()

    def step():
        (out,), tape = model._train_forward([x])     # the step as Trainer.fit runs it
        _, grad = loss(out, target)
        model.zero_grad()
        model._backprop(tape, [grad])
        opt.step(params)
    return step


def torch_step(ff, x, target):
    import torch
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(D, H, dim_feedforward=ff, dropout=0.0, batch_first=True)
    model = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, tt = torch.from_numpy(x), torch.from_numpy(target)

    def step():
        loss = torch.nn.functional.mse_loss(model(xt), tt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def kernel_calls(backend, dtype=np.float32):
    rng = np.random.default_rng(0)
    q, k, v, dout = (rng.standard_normal((N, T, D)).astype(dtype) for _ in range(4))
    fwd = backend.raw.attention
    _, p = fwd(q, k, v, None, H, False)
    bwd = backend.raw.attention_backward
    return (lambda: fwd(q, k, v, None, H, False)), (lambda: bwd(dout, q, k, v, p, H))


def rate(fn, seconds, repeats=5):
    fn()
    rates = []
    for _ in range(repeats):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / repeats:
            fn()
            n += 1
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", nargs="+", default=[b for b in fnn.backends() if b != "cuda"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ff", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from threadpoolctl import threadpool_limits
    from fastnn.threads import backend_threads
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, T, D)).astype(np.float32)
    target = rng.standard_normal((N, T, D)).astype(np.float32)
    steps = {}
    try:
        import torch
        torch.set_num_threads(args.threads)
        steps["torch"] = torch_step(args.ff, x, target)
    except ImportError:
        pass
    for b in args.backends:
        be = fnn.get_backend(b)
        if hasattr(be.module, "set_num_threads"):
            be.module.set_num_threads(args.threads)
        steps[b] = fastnn_step(b, args.ff, x, target)
    # Interleaved rounds: each engine's median over rounds, so drift on a shared machine hits all.
    results = {k: [] for k in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            time.sleep(0.2)
            if name == "torch":
                with threadpool_limits(limits=args.threads, user_api="blas"):
                    results[name].append(rate(step, args.seconds))
            else:
                with backend_threads(fnn.get_backend(name)):
                    results[name].append(rate(step, args.seconds))
    print(f"2-layer encoder training step (d_model {D}, {H} heads, ff {args.ff}, seq {T}, batch {N}, "
          f"{args.threads} thread(s))")
    print("| engine | steps/s | vs torch |\n|---|---|---|")
    base = statistics.median(results["torch"]) if "torch" in results else None
    for name, rs in results.items():
        r = statistics.median(rs)
        print(f"| {name} | {r:,.1f} | {f'{r / base:.2f}x' if base else 'n/a'} |", flush=True)

    print(f"\nattention kernels, float32, q/k/v ({N}, {T}, {D}), {H} heads: calls/s and ratio to the NumPy reference")
    print("| backend | forward | vs ref | backward | vs ref |\n|---|---|---|---|---|")
    with threadpool_limits(limits=1, user_api="blas"):
        calls = {b: kernel_calls(fnn.get_backend(b)) for b in ["numpy"] + [b for b in args.backends if b != "numpy"]}
        got = {b: ([], []) for b in calls}
        for _ in range(args.rounds):
            for b, (f, g) in calls.items():
                got[b][0].append(rate(f, args.seconds / 4))
                got[b][1].append(rate(g, args.seconds / 4))
        rf, rb = (statistics.median(v) for v in got["numpy"])
        for b, (fs, bs) in got.items():
            f, g = statistics.median(fs), statistics.median(bs)
            print(f"| {b} | {f:,.0f} | {f / rf:.2f}x | {g:,.0f} | {g / rb:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
