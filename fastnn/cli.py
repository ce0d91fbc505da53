"""Command line: `fastnn digits [--model mlp|cnn|lstm|transformer]` (the main job),
`fastnn backends [--kernels]` and `fastnn warmup`."""
import argparse
import sys
import time

import numpy as np


def _mlp_layers():
    from .layers import Dense, ReLU
    return [Dense(64, 256), ReLU(), Dense(256, 128), ReLU(), Dense(128, 10)]


def _cnn_layers():
    # each digit as a 1x8x8 image: two 3x3 convolutions ("same" by padding 1), each pooled 2x2
    from .layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU, Reshape
    return [Reshape((1, 8, 8)), Conv2D(1, 16, 3, padding=1), ReLU(), MaxPool2D(2),
            Conv2D(16, 32, 3, padding=1), ReLU(), MaxPool2D(2), Flatten(), Dense(32 * 2 * 2, 10)]


def _lstm_layers():
    # the 8 rows of each digit as a sequence of 8 steps of 8 features; the final state classifies
    from .layers import LSTM, Dense, Reshape
    return [Reshape((8, 8)), LSTM(8, 64), Dense(64, 10)]


def _transformer_layers():
    # the 8 rows as 8 tokens, each embedded to 32 features; one post-norm encoder layer (4 heads,
    # feed-forward 64, no dropout); the tokens flattened into the classifier, whose weights per
    # token tell the rows apart (fastnn has no positional embedding layer)
    from .layers import Dense, Flatten, Reshape, TransformerEncoderLayer
    return [Reshape((8, 8)), Dense(8, 32), TransformerEncoderLayer(32, 4, 64, dropout=0.0),
            Flatten(), Dense(8 * 32, 10)]


# --model name: (title in the table's heading, layers, default epochs, default SGD lr)
FAMILIES = {
    "mlp": ("MLP 64-256-128-10", _mlp_layers, 30, 0.05),
    "cnn": ("CNN Conv3x3(16)-MaxPool-Conv3x3(32)-MaxPool-Dense(128, 10) on 1x8x8 images", _cnn_layers, 10, 0.05),
    "lstm": ("LSTM(8, 64)-Dense(64, 10) reading the 8 rows as a sequence", _lstm_layers, 30, 0.1),
    "transformer": ("Transformer: 8 row tokens, Dense(8, 32), TransformerEncoderLayer(32, 4 heads, ff 64), "
                    "Flatten, Dense(256, 10)", _transformer_layers, 15, 0.02),
}


def _family(model):
    if model not in FAMILIES:
        raise ValueError(f"unknown digits model {model!r}: choose one of {', '.join(FAMILIES)}")
    return FAMILIES[model]


def _digits_model(backend, dtype, seed, model="mlp"):
    from . import Sequential
    return Sequential(*_family(model)[1](), backend=backend, dtype=dtype, seed=seed)


def train_digits(backends=None, epochs=None, batch_size=32, lr=None, momentum=0.9, dtype="float32",
                 seed=0, progress=True, out=sys.stdout, model="mlp"):
    """Train the same model (FAMILIES[model]) on the digits on each backend; return one result row
    each. epochs and lr default to the family's (the MLP's: 30 epochs, lr 0.05)."""
    from . import Trainer, backend as registry, data, optim
    _, _, default_epochs, default_lr = _family(model)
    epochs = default_epochs if epochs is None else epochs
    lr = default_lr if lr is None else lr
    X_train, y_train, X_test, y_test = data.load_digits(seed=seed, dtype=dtype)
    rows = []
    for name in backends or registry.backends():
        # Warm-up on a few batches so a JIT compile is not counted as training time.
        warm = Trainer(_digits_model(name, dtype, seed, model), "cross_entropy", optim.SGD(lr=lr))
        warm.fit(X_train[:2 * batch_size], y_train[:2 * batch_size], epochs=1,
                 batch_size=batch_size, progress=False)
        net = _digits_model(name, dtype, seed, model)
        trainer = Trainer(net, "cross_entropy", optim.SGD(lr=lr, momentum=momentum), seed=seed)
        if progress:
            print(f"backend {name}:", file=out, flush=True)
        start = time.perf_counter()
        history = trainer.fit(X_train, y_train, epochs=epochs, batch_size=batch_size, progress=progress)
        seconds = time.perf_counter() - start
        result = trainer.evaluate(X_test, y_test)
        rows.append({"backend": name, "test_accuracy": result["accuracy"], "seconds": seconds,
                     "history": history})
    reference = next((r["seconds"] for r in rows if r["backend"] == "numpy"), None)
    for r in rows:
        r["speedup"] = reference / r["seconds"] if reference else float("nan")
    return rows


def warmup(out=sys.stdout):
    """Train a tiny Dense network once per CPU backend and dtype, so that Numba's
    on-disk cache holds the compiled kernels (the Cython backend needs none)."""
    from . import Sequential, Trainer, backend as registry, optim
    from .layers import Dense, ReLU, Sigmoid, Tanh
    rng = np.random.default_rng(0)
    # big enough that the GEMMs take their multi-threaded paths too
    X, y = rng.standard_normal((256, 256)), rng.integers(0, 3, 256)
    for name in [b for b in registry.backends() if b != "cuda"]:
        start = time.perf_counter()
        for dtype in ("float32", "float64"):
            for opt in (optim.SGD(lr=0.01, momentum=0.9), optim.Adam()):
                model = Sequential(Dense(256, 256), ReLU(), Dense(256, 64), Tanh(), Dense(64, 16), Sigmoid(),
                                   Dense(16, 3), backend=name, dtype=dtype)
                Trainer(model, "cross_entropy", opt).fit(X, y, epochs=1, batch_size=128, progress=False)
        print(f"{name}: ready ({time.perf_counter() - start:.1f} s)", file=out)


def _plot_curves(row, path, model="mlp"):
    """Save one backend's training curves (loss and accuracy per epoch) if matplotlib is here."""
    try:
        row["history"].plot(path, title=f"digits {model.upper()}, {row['backend']} backend")
    except ImportError:
        print("(no training-curve plot: pip install 'fastnn[plot]' for one)")
        return
    print(f"training curves ({row['backend']} backend): {path}")


def format_table(rows, epochs, n_train):
    lines = ["| backend | test accuracy | training time (s) | samples/s | speed vs numpy |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {100 * r['test_accuracy']:.2f}% | {r['seconds']:.3f} | "
                     f"{epochs * n_train / r['seconds']:,.0f} | {r['speedup']:.2f}x |")
    return "\n".join(lines)


def kernel_table(names=None):
    """Per kernel and backend: native (its own), composed (the registry's composition of the
    backend's own kernels) or reference (the NumPy reference; on cuda, run on the host)."""
    from .backend import backends, get_backend
    from ._kernels.registry import KERNELS
    bes = [get_backend(n) for n in (names or backends())]
    width = max(map(len, KERNELS))
    cols = [max(len(be.name), len("reference")) for be in bes]
    lines = ["  ".join([f"{'kernel':<{width}}"] + [f"{be.name:<{c}}" for be, c in zip(bes, cols)]).rstrip()]
    for kernel in KERNELS:
        cells = [f"{be.sources[kernel]:<{c}}" for be, c in zip(bes, cols)]
        lines.append("  ".join([f"{kernel:<{width}}"] + cells).rstrip())
    lines.append("")
    for be in bes:
        counts = {s: sum(v == s for v in be.sources.values()) for s in ("native", "composed", "reference")}
        lines.append(f"{be.name}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastnn", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    d = sub.add_parser("digits", help="train a model (default: a 64-256-128-10 MLP) on the 8x8 digits "
                                      "on every backend")
    d.add_argument("--model", default="mlp", choices=list(FAMILIES),
                   help="the model family: " + "; ".join(f"{k}: {v[0]}" for k, v in FAMILIES.items()))
    d.add_argument("--backends", nargs="*", default=None, help="default: every usable backend")
    d.add_argument("--epochs", type=int, default=None,
                   help="default: the family's (" + ", ".join(f"{k} {v[2]}" for k, v in FAMILIES.items()) + ")")
    d.add_argument("--batch-size", type=int, default=32)
    d.add_argument("--lr", type=float, default=None,
                   help="SGD's learning rate (momentum 0.9); default: the family's ("
                        + ", ".join(f"{k} {v[3]}" for k, v in FAMILIES.items()) + ")")
    d.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--no-progress", action="store_true")
    d.add_argument("--plot", default="digits_curves.png", help="where to save the training curves")
    b = sub.add_parser("backends", help="list the backends usable here")
    b.add_argument("--kernels", action="store_true",
                   help="and per backend which kernels are native and which fall back")
    sub.add_parser("warmup", help="compile and cache the Numba kernels a Dense network uses "
                                  "(once per install; later processes load them in well under a second)")
    args = parser.parse_args(argv)

    if args.command == "backends":
        from .backend import backends, default_backend
        print("usable backends:", ", ".join(backends()), f"(default: {default_backend()})")
        if args.kernels:
            print()
            print(kernel_table())
        return 0
    if args.command == "warmup":
        warmup()
        return 0
    if args.command in (None, "digits"):
        if args.command is None:
            args = parser.parse_args(["digits"])
        title, _, default_epochs, default_lr = FAMILIES[args.model]
        epochs = default_epochs if args.epochs is None else args.epochs
        lr = default_lr if args.lr is None else args.lr
        rows = train_digits(args.backends, epochs, args.batch_size, lr, dtype=args.dtype,
                            seed=args.seed, progress=not args.no_progress, model=args.model)
        from .data import load_digits
        n_train = len(load_digits(seed=args.seed)[0])
        print(f"\nDigits {title}, {epochs} epochs, batch {args.batch_size}, "
              f"SGD lr={lr} momentum=0.9, {args.dtype}, {n_train} training / "
              f"{1797 - n_train} test images")
        print(format_table(rows, epochs, n_train))
        _plot_curves(rows[-1], args.plot, args.model)
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
