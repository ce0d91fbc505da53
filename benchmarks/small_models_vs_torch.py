"""Training steps (forward, backward, Adam) of small models at batch 100, fastnn's
backends against PyTorch CPU eager and JAX with the whole step jit-compiled (jax_models.py),
in one process: steps/s, and the default backend's ratio to each.

Models (the convolutional/recurrent issue's speed targets):
  cnn:    Conv1D(1,25,5,s2)-ReLU-Conv1D(25,25,3,s2)-ReLU-Conv1D(25,25,3,s2)-ReLU-Flatten-Dense(75,10), length 40
  lstm, gru:     LSTM/GRU(1,H) - Dense(H,10) on the last state, 40 steps, 1 feature
  bilstm, bigru: the same, bidirectional - Dense(2H,10)
  mlp:    40-100-100-10 ReLU MLP
  bncnn:  Conv2D(1,16,3,p1)-BatchNorm2D-ReLU-MaxPool2D(2)-Conv2D(16,32,3,p1)-BatchNorm2D-ReLU-GlobalAvgPool2D
          -Dense(32,10), 8x8 digits-size images
  bncnn1d: Conv1D(1,25,5,s2)-BatchNorm1D-ReLU-Conv1D(25,25,3,s2)-BatchNorm1D-ReLU-GlobalAvgPool1D-Dense(25,10),
          length 40

    python benchmarks/small_models_vs_torch.py [--models mlp cnn bncnn bncnn1d lstm bilstm gru bigru]
                                                [--hidden 6 32 128] [--torch-threads 1] [--no-jax]
                                                [--backends numba cython auto] [--rounds 3] [--flops]

The "vs" columns are the default backend's (auto, unless FASTNN_BACKEND says otherwise); with
auto among the backends, the last column is auto against the better of numba and cython.
"""
import argparse
import contextlib
import statistics
import time

import numpy as np

import fastnn as fnn
from fastnn import layers as L

BATCH = 100
RECURRENT = {"lstm": ("LSTM", 1), "bilstm": ("LSTM", 2), "gru": ("GRU", 1), "bigru": ("GRU", 2)}
MODELS = ["mlp", "cnn", "bncnn", "bncnn1d", *RECURRENT]


def fastnn_model(kind, hidden, backend):
    if kind == "cnn":
        layers = [L.Conv1D(1, 25, 5, stride=2), L.ReLU(), L.Conv1D(25, 25, 3, stride=2), L.ReLU(),
                  L.Conv1D(25, 25, 3, stride=2), L.ReLU(), L.Flatten(), L.Dense(75, 10)]
    elif kind == "bncnn":
        layers = [L.Conv2D(1, 16, 3, padding=1), L.BatchNorm2D(16), L.ReLU(), L.MaxPool2D(2),
                  L.Conv2D(16, 32, 3, padding=1), L.BatchNorm2D(32), L.ReLU(), L.GlobalAvgPool2D(),
                  L.Dense(32, 10)]
    elif kind == "bncnn1d":
        layers = [L.Conv1D(1, 25, 5, stride=2), L.BatchNorm1D(25), L.ReLU(), L.Conv1D(25, 25, 3, stride=2),
                  L.BatchNorm1D(25), L.ReLU(), L.GlobalAvgPool1D(), L.Dense(25, 10)]
    elif kind in RECURRENT:
        cell, directions = RECURRENT[kind]
        layers = [getattr(L, cell)(1, hidden, bidirectional=directions == 2), L.Dense(directions * hidden, 10)]
    else:
        layers = [L.Dense(40, 100), L.ReLU(), L.Dense(100, 100), L.ReLU(), L.Dense(100, 10)]
    return fnn.Sequential(*layers, backend=backend, seed=0)


def torch_model(kind, hidden):
    import torch
    from torch import nn

    class LastState(nn.Module):
        def __init__(self, rnn):
            super().__init__()
            self.rnn = rnn

        def forward(self, x):
            _, h = self.rnn(x)
            h = h[0] if isinstance(h, tuple) else h      # LSTM returns (h_n, c_n)
            return torch.cat(list(h), dim=1)             # (dirs, N, H) -> (N, dirs*H)

    if kind == "cnn":
        return nn.Sequential(nn.Conv1d(1, 25, 5, stride=2), nn.ReLU(), nn.Conv1d(25, 25, 3, stride=2), nn.ReLU(),
                             nn.Conv1d(25, 25, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(75, 10))
    if kind == "bncnn":
        return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    if kind == "bncnn1d":
        return nn.Sequential(nn.Conv1d(1, 25, 5, stride=2), nn.BatchNorm1d(25), nn.ReLU(),
                             nn.Conv1d(25, 25, 3, stride=2), nn.BatchNorm1d(25), nn.ReLU(),
                             nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(25, 10))
    if kind in RECURRENT:
        cell, directions = RECURRENT[kind]
        rnn = getattr(nn, cell)(1, hidden, batch_first=True, bidirectional=directions == 2)
        return nn.Sequential(LastState(rnn), nn.Linear(directions * hidden, 10))
    return nn.Sequential(nn.Linear(40, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10))


def batch_for(kind, rng):
    shape = {"cnn": (BATCH, 1, 40), "bncnn": (BATCH, 1, 8, 8), "bncnn1d": (BATCH, 1, 40)}.get(
        kind, (BATCH, 40, 1) if kind in RECURRENT else (BATCH, 40))
    return rng.standard_normal(shape).astype(np.float32), rng.integers(0, 10, BATCH)


def fastnn_step(kind, hidden, backend, x, y):
    model = fastnn_model(kind, hidden, backend)
    opt, loss, params = fnn.optim.Adam(lr=1e-3), model.backend.raw.cross_entropy, model.parameters()

    def step():
        # The step as Trainer.fit runs it: a tape of its own, batches checked once per fit.
        (out,), tape = model._train_forward([x])
        _, grad = loss(out, y)
        model._backprop_fresh(tape, [grad])   # zero_grad() and _backprop() in one
        opt.step(params)
    return step


def torch_step(kind, hidden, x, y):
    import torch
    torch.manual_seed(0)
    model = torch_model(kind, hidden)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        loss = loss_fn(model(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def steps_per_second(step, seconds=0.5, repeats=5):
    step()
    rates = []
    for _ in range(repeats):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / repeats:
            step()
            n += 1
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def default_backends():
    """Every CPU backend, and auto (the default: per kernel the faster of numba and cython)."""
    names = [b for b in fnn.backends() if b != "cuda"]
    try:
        fnn.get_backend("auto")
        names.append("auto")
    except fnn.BackendUnavailable:
        pass
    return names


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--hidden", type=int, nargs="+", default=[6, 32, 128])
    parser.add_argument("--backends", nargs="+", default=default_backends())
    parser.add_argument("--seconds", type=float, default=1.0, help="timed seconds per engine and row")
    parser.add_argument("--rounds", type=int, default=3,
                        help="the engines are timed in turns this many times; each keeps its best")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's own choice)")
    parser.add_argument("--no-jax", action="store_true", help="leave out the JAX-jit column")
    parser.add_argument("--flops", action="store_true",
                        help="then each row's FLOP rates and what the bars need (step_flops.py)")
    args = parser.parse_args()
    if args.torch_threads:
        import torch
        torch.set_num_threads(args.torch_threads)
    peers = {"torch": torch_step}
    if not args.no_jax:
        from jax_models import jax_step
        peers["jax"] = jax_step
    default = fnn.backend.default_backend()
    rng = np.random.default_rng(0)
    engines = [*peers, *args.backends]
    # auto's column beside the better of its two candidates: >= 1 within noise is the point of auto
    best_of = [b for b in ("numba", "cython") if b in args.backends] if "auto" in args.backends else []
    extra = ["auto vs best of " + "/".join(best_of)] if best_of else []
    print(f"| model | {' | '.join(engines)} | {default} vs torch | {default} vs jax | {' | '.join(extra)}"
          f"{' |' if extra else ''}")
    print("|---" * (len(engines) + 3 + len(extra)) + "|")
    from fastnn.threads import backend_threads
    all_rates = {}
    for kind in args.models:
        for hidden in (args.hidden if kind in RECURRENT else [None]):
            x, y = batch_for(kind, rng)
            steps = {}
            for name, make in peers.items():
                try:
                    steps[name] = (make(kind, hidden, x, y), contextlib.nullcontext)
                except ImportError:
                    pass
            for b in args.backends:
                steps[b] = (fastnn_step(kind, hidden, b, x, y), lambda b=b: backend_threads(fnn.get_backend(b)))
            # every engine in turn, --rounds times, its best round kept: a burst of load from
            # another program costs one engine one round, not its row. A pause between engines:
            # a thread pool still spinning from the engine before starves the next one's threads.
            rates = {}
            for _ in range(args.rounds):
                for name, (step, threads) in steps.items():
                    with threads():
                        rate = steps_per_second(step, args.seconds / args.rounds)
                    rates[name] = max(rates.get(name, 0.0), rate)
                    time.sleep(0.3)
            all_rates[(kind, hidden)] = rates
            label = kind if hidden is None else f"{kind} H={hidden}"
            cells = [f"{rates[e]:,.0f}" if e in rates else "n/a" for e in engines]
            vs = [f"{rates[default] / rates[p]:.2f}x" if p in rates and default in rates else "n/a"
                  for p in ("torch", "jax")]
            if extra:
                vs.append(f"{rates['auto'] / max(rates[b] for b in best_of):.2f}x")
            print(f"| {label} | {' | '.join(cells)} | {' | '.join(vs)} |", flush=True)
    if args.flops:
        from step_flops import fma_rate, gemm_rate, print_roofline
        print_roofline(all_rates, gemm_rate(default), fma=fma_rate(default))
    if "auto" in args.backends:
        print("\nauto's choices (fnn.backend.kernel_choices()):")
        for name, entry in sorted(fnn.backend.kernel_choices().items()):
            print(f"  {name}: {entry['backend']} ({entry['source']}, us {entry['us']})")


if __name__ == "__main__":
    main()
