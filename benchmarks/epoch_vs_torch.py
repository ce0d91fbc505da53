"""One training epoch of a 784-256-128-10 ReLU MLP (softmax cross-entropy, plain SGD)
on 60,000 synthetic samples: samples/s of every fastnn backend and of PyTorch CPU,
measured in one process, alternating, median of --repeats runs.

    python benchmarks/epoch_vs_torch.py --batch 128 32 [--backends numba cython] [--json out.json]
"""
import argparse
import json
import statistics
import time

import numpy as np

import fastnn as fnn
from fastnn.layers import Dense, ReLU

SIZES = (784, 256, 128, 10)


def data(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, SIZES[0])).astype(np.float32), rng.integers(0, SIZES[-1], n)


def fastnn_epoch(backend, batch):
    layers = [Dense(SIZES[0], SIZES[1]), ReLU(), Dense(SIZES[1], SIZES[2]), ReLU(), Dense(SIZES[2], SIZES[3])]
    model = fnn.Sequential(*layers, backend=backend, seed=0)
    trainer = fnn.Trainer(model, "cross_entropy", fnn.optim.SGD(lr=0.01))

    def run(X, y):
        trainer.fit(X, y, epochs=1, batch_size=batch, shuffle=True, progress=False)
    return run


def torch_epoch(batch):
    import torch
    from torch import nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(0)

    def run(X, y):
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        order = torch.randperm(len(Xt), generator=gen)
        for lo in range(0, len(Xt), batch):
            idx = order[lo:lo + batch]
            loss = loss_fn(model(Xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return run


def measure(backends, batches, n=60_000, repeats=3):
    X, y = data(n)
    results = {}
    for batch in batches:
        runners = {}
        try:
            runners["torch"] = torch_epoch(batch)
        except ImportError:
            pass
        runners.update({b: fastnn_epoch(b, batch) for b in backends})
        for run in runners.values():
            run(X[:2048], y[:2048])          # warm-up: JIT, caches, thread pools
        times = {name: [] for name in runners}
        for _ in range(repeats):
            for name, run in runners.items():
                time.sleep(0.3)   # let the previous engine's thread pool go idle
                start = time.perf_counter()
                run(X, y)
                times[name].append(time.perf_counter() - start)
        results[batch] = {name: n / statistics.median(t) for name, t in times.items()}
    return results


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, nargs="+", default=[128, 32])
    parser.add_argument("--backends", nargs="+", default=[b for b in fnn.backends() if b != "cuda"])
    parser.add_argument("--samples", type=int, default=60_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    results = measure(args.backends, args.batch, args.samples, args.repeats)
    print("| batch | engine | samples/s | vs torch | vs numpy |\n|---|---|---|---|---|")
    for batch, row in results.items():
        for name, sps in row.items():
            vs_torch = f"{sps / row['torch']:.2f}x" if "torch" in row else "n/a"
            vs_numpy = f"{sps / row['numpy']:.2f}x" if "numpy" in row else "n/a"
            print(f"| {batch} | {name} | {sps:,.0f} | {vs_torch} | {vs_numpy} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
