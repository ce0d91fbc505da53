"""Command line: `fastnn digits [--model mlp|cnn|lstm|transformer]` (the main job),
`fastnn backends [--kernels]`, `fastnn warmup`, `fastnn tune` and `fastnn --version`.
`mpiexec -n N fastnn digits --distributed` trains data-parallel on N MPI ranks
(pip install 'fastnn[mpi]'): --batch-size is per rank and only rank 0 prints.

Bare `fastnn` prints this help on stdout and exits 0 (as pip, cargo and docker do; it runs
nothing). A bad argument (`--epochs 0`, an unknown backend, a `--plot` path that cannot be
written: all checked before any training) prints one line on stderr and exits 2.
"""
import argparse
import math
import os
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
                 seed=0, progress=True, out=None, model="mlp", validation_fraction=0.15,
                 distributed=False):
    """Train the same model (FAMILIES[model]) on the digits on each backend; return one result row
    each. epochs and lr default to the family's (the MLP's: 30 epochs, lr 0.05). A seeded
    validation_fraction of the training images is held out and scored after every epoch (the
    history's val_loss / val_accuracy); test accuracy is on the separate test set. Each row's
    speedup is against the numpy reference: when numpy is not among backends, the reference is
    timed on one epoch and its time per epoch scaled (row["reference"] says which).
    distributed=True trains every fit with Trainer(distributed=True) (call it on every rank of an
    MPI run): batch_size is per rank, test accuracy is reduced across ranks, only rank 0 prints."""
    from . import backend as registry, data
    out = sys.stdout if out is None else out
    if distributed:
        from . import distributed as dist
        if not dist.is_main():   # every rank trains; one prints
            out, progress = _Discard(), False
    _, _, default_epochs, default_lr = _family(model)
    epochs = default_epochs if epochs is None else epochs
    lr = default_lr if lr is None else lr
    X_train, y_train, X_test, y_test = data.load_digits(seed=seed, dtype=dtype)
    train, val = _validation_split(len(X_train), validation_fraction, seed)
    fit_data = (X_train[train], y_train[train], (X_train[val], y_train[val]) if len(val) else None)
    rows = []
    for name in backends or registry.backends():
        if progress:
            print(f"backend {name}:", file=out, flush=True)
        trainer, history, seconds = _timed_fit(name, dtype, seed, model, lr, momentum, fit_data,
                                               epochs, batch_size, progress, distributed)
        result = trainer.evaluate(X_test, y_test)   # reduced across ranks when distributed
        rows.append({"backend": name, "test_accuracy": result["accuracy"], "seconds": seconds,
                     "history": history, "n_train": len(train), "n_val": len(val), "n_test": len(X_test)})
    reference = next((r["seconds"] for r in rows if r["backend"] == "numpy"), None)
    how = "numpy"
    if reference is None and rows:   # time the reference anyway: a ratio needs it
        one = min(epochs, 1)
        reference = _timed_fit("numpy", dtype, seed, model, lr, momentum, fit_data, one,
                               batch_size, False, distributed)[2] * epochs / one
        how = f"numpy reference timed on {one} epoch"
    for r in rows:
        r["speedup"] = reference / r["seconds"] if reference else float("nan")
        r["reference"] = how
    return rows


def _validation_split(n, fraction, seed):
    """(train indices, validation indices) of n rows: a seeded permutation's last fraction."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {fraction!r}")
    order = np.random.default_rng([seed, 11]).permutation(n)
    k = int(round(n * fraction))
    return np.sort(order[:n - k]), np.sort(order[n - k:])


def _timed_fit(name, dtype, seed, model, lr, momentum, fit_data, epochs, batch_size, progress,
               distributed=False):
    """(trainer, history, seconds) of one fit, after a warm-up fit on a few batches so that a
    JIT compile is not counted as training time (the warm-up is each rank's own, not distributed)."""
    from . import Trainer, optim
    X, y, validation = fit_data
    warm = Trainer(_digits_model(name, dtype, seed, model), "cross_entropy", optim.SGD(lr=lr))
    warm.fit(X[:2 * batch_size], y[:2 * batch_size], epochs=1, batch_size=batch_size, progress=False)
    trainer = Trainer(_digits_model(name, dtype, seed, model), "cross_entropy",
                      optim.SGD(lr=lr, momentum=momentum), seed=seed, distributed=distributed)
    start = time.perf_counter()
    history = trainer.fit(X, y, epochs=epochs, batch_size=batch_size, validation_data=validation,
                          progress=progress)
    return trainer, history, time.perf_counter() - start


# ------------------------------------------------------------------ warmup
def _fit_once(model, X, y, loss="cross_entropy", optimizer=None, batch_size=None):
    """One short training epoch and a predict: compiles a model's forward, backward, loss and
    optimizer kernels for its backend and dtype (the eval path too)."""
    from . import Trainer, optim
    Trainer(model, loss, optimizer or optim.SGD(lr=0.01, momentum=0.9)).fit(
        X, y, epochs=1, batch_size=batch_size or len(X) // 2, progress=False)
    model.predict(X[:3])


def _warm_dense(backend, dtype, rng):
    from . import Sequential, optim
    from .layers import (ELU, GELU, Dense, LeakyReLU, ReLU, SiLU, Sigmoid, Softmax, Softplus, Step,
                         Tanh)
    # big enough that the GEMMs take their multi-threaded paths too
    X, y = rng.standard_normal((256, 256)), rng.integers(0, 3, 256)
    model = Sequential(Dense(256, 256), ReLU(), Dense(256, 64), Tanh(), Dense(64, 16), Sigmoid(),
                       Dense(16, 3), backend=backend, dtype=dtype)
    _fit_once(model, X, y, batch_size=128)
    acts = [LeakyReLU(), GELU(), GELU(approximate="tanh"), SiLU(), ELU(), Softplus(), Step(), Softmax()]
    layers = [Dense(8, 8, bias=False)]
    for act in acts:
        layers += [act, Dense(8, 8)]
    X, y = rng.standard_normal((16, 2, 8)), rng.standard_normal((16, 2, 8))   # Dense on any rank
    for loss in ("mse", "huber", "l1"):
        _fit_once(Sequential(*layers, backend=backend, dtype=dtype), X, y, loss=loss)
    X, t = rng.standard_normal((16, 8)), rng.integers(0, 2, (16, 3)).astype(float)
    _fit_once(Sequential(Dense(8, 3), backend=backend, dtype=dtype), X, t, loss="binary_cross_entropy")
    _fit_once(Sequential(Dense(8, 3), backend=backend, dtype=dtype), X, rng.integers(0, 3, 16),
              loss="cross_entropy", optimizer=optim.SGD(lr=0.01))


def _warm_conv(backend, dtype, rng):
    from . import Sequential
    from .layers import (AvgPool1D, AvgPool2D, Conv1D, Conv2D, Dense, Flatten, GlobalAvgPool1D,
                         GlobalAvgPool2D, MaxPool1D, MaxPool2D, ReLU)
    y = rng.integers(0, 3, 8)
    one_d = Sequential(Conv1D(2, 4, 3, padding="same"), ReLU(), MaxPool1D(2), Conv1D(4, 4, 3, stride=2),
                       AvgPool1D(2), Conv1D(4, 4, 1), GlobalAvgPool1D(), Dense(4, 3), backend=backend, dtype=dtype)
    _fit_once(one_d, rng.standard_normal((8, 2, 16)), y)
    two_d = Sequential(Conv2D(1, 4, 3, padding=1), ReLU(), MaxPool2D(2), Conv2D(4, 4, 3, stride=2, padding=1),
                       AvgPool2D(2), Flatten(), Dense(4, 3), backend=backend, dtype=dtype)
    _fit_once(two_d, rng.standard_normal((8, 1, 8, 8)), y)
    pooled = Sequential(Conv2D(1, 4, (3, 2)), GlobalAvgPool2D(), Dense(4, 3), backend=backend, dtype=dtype)
    _fit_once(pooled, rng.standard_normal((8, 1, 6, 6)), y)


def _warm_recurrent(backend, dtype, rng):
    from . import Sequential
    from .layers import GRU, LSTM, RNN, Dense
    X, y = rng.standard_normal((8, 5, 4)), rng.integers(0, 3, 8)
    for cell in (RNN, LSTM, GRU):
        model = Sequential(cell(4, 6, return_sequences=True, bidirectional=True), cell(12, 6), Dense(6, 3),
                           backend=backend, dtype=dtype)
        _fit_once(model, X, y)


def _warm_normalization(backend, dtype, rng):
    from . import Sequential
    from .layers import BatchNorm1D, BatchNorm2D, Dense, Flatten, LayerNorm
    y = rng.integers(0, 3, 8)
    _fit_once(Sequential(Dense(6, 6), BatchNorm1D(6), LayerNorm(6), Dense(6, 3), backend=backend, dtype=dtype),
              rng.standard_normal((8, 6)), y)
    _fit_once(Sequential(BatchNorm1D(2), Flatten(), Dense(10, 3), backend=backend, dtype=dtype),
              rng.standard_normal((8, 2, 5)), y)
    _fit_once(Sequential(BatchNorm2D(2), LayerNorm((2, 3, 3)), Flatten(), Dense(18, 3), backend=backend,
                         dtype=dtype), rng.standard_normal((8, 2, 3, 3)), y)


def _warm_attention(backend, dtype, rng):
    from . import Sequential
    from .layers import Dense, Flatten, MultiHeadAttention, TransformerEncoderLayer
    X, y = rng.standard_normal((8, 5, 8)), rng.integers(0, 3, 8)
    for causal in (False, True):
        _fit_once(Sequential(MultiHeadAttention(8, 2, causal=causal), Flatten(), Dense(40, 3),
                             backend=backend, dtype=dtype), X, y)
    for norm_first, activation in ((False, "relu"), (True, "gelu")):
        _fit_once(Sequential(TransformerEncoderLayer(8, 2, 16, dropout=0.1, activation=activation,
                                                     norm_first=norm_first), Flatten(), Dense(40, 3),
                             backend=backend, dtype=dtype), X, y)


def _warm_dropout_embedding(backend, dtype, rng):
    from . import Sequential
    from .layers import Dense, Dropout, Embedding, Flatten
    X, y = rng.integers(0, 10, (8, 5)), rng.integers(0, 3, 8)
    for padding_idx in (None, 0):
        _fit_once(Sequential(Embedding(10, 4, padding_idx=padding_idx), Dropout(0.2), Flatten(), Dense(20, 3),
                             backend=backend, dtype=dtype), X, y)


def _warm_optimizers(backend, dtype, rng):
    from . import Sequential, optim
    from .layers import Dense, ReLU
    X, y = rng.standard_normal((16, 8)), rng.integers(0, 3, 16)
    for opt in (optim.SGD(lr=0.01), optim.SGD(lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4),
                optim.SGD(lr=0.01, clip_norm=1.0), optim.Adam(), optim.Adam(weight_decay=1e-4), optim.AdamW(),
                optim.RMSprop(), optim.RMSprop(momentum=0.9, centered=True, weight_decay=1e-4),
                optim.Adagrad(), optim.Adagrad(lr_decay=0.01, weight_decay=1e-4)):
        _fit_once(Sequential(Dense(8, 8), ReLU(), Dense(8, 3), backend=backend, dtype=dtype), X, y, optimizer=opt)


def _warm_kernels(backend, dtype, rng):
    """Every registry kernel on its test examples (the signatures the layers above may miss)."""
    from .backend import get_backend
    from ._kernels.registry import KERNELS
    be = get_backend(backend)
    for kernel in KERNELS.values():
        for example in kernel.examples.tests:
            args, kwargs = example.make(rng, np.dtype(dtype).type)
            getattr(be, kernel.name)(*args, **kwargs)


WARMUP = {"dense": _warm_dense, "conv": _warm_conv, "recurrent": _warm_recurrent,
          "normalization": _warm_normalization, "attention": _warm_attention,
          "dropout-embedding": _warm_dropout_embedding, "optimizers": _warm_optimizers,
          "kernels": _warm_kernels}


def warmup(out=None, backends=None, families=None, dtypes=("float32", "float64")):
    """Compile every kernel family a model can use (WARMUP: dense layers and activations with
    every loss, conv 1D/2D and pools, RNN/LSTM/GRU, normalization, attention, dropout and
    embedding, every optimizer, then every registry kernel) once per backend and dtype, so that
    Numba's on-disk cache (cache=True) holds them. backends default to ['numba'] (the Cython
    backend is compiled ahead of time, numpy compiles nothing). Returns {backend: seconds}."""
    from . import backend as registry
    out = sys.stdout if out is None else out
    backends = list(backends) if backends is not None else [b for b in ("numba",) if b in registry.backends()]
    families = list(families) if families is not None else list(WARMUP)
    times = {}
    for name in backends:
        start = time.perf_counter()
        for family in families:
            began = time.perf_counter()
            for dtype in dtypes:
                WARMUP[family](name, dtype, np.random.default_rng(0))
            print(f"{name}: {family} ({time.perf_counter() - began:.1f} s)", file=out, flush=True)
        times[name] = time.perf_counter() - start
        print(f"{name}: ready ({times[name]:.1f} s)", file=out, flush=True)
    if not backends:
        print("nothing to compile: the numba backend is not usable here", file=out)
    return times


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


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad argument reported in one line (no usage block) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _number(kind, low, what, low_open=False):
    """An argparse type: text -> kind (int or float), finite and >= low (> low if low_open)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {what}, got {text!r}") from None
        if not math.isfinite(value) or (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(f"must be a {what}, got {text}")
        return value
    return parse


_positive_int = _number(int, 1, "positive integer")
_seed = _number(int, 0, "non-negative integer")
_positive_float = _number(float, 0.0, "positive finite number", low_open=True)


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _check_backends(parser, names, default):
    """The backend names given (or the default), each usable here, else parser.error."""
    from .backend import BackendUnavailable, get_backend
    if names is None:
        return default()
    if not names:
        parser.error("--backends needs at least one backend name")
    for name in names:
        try:
            get_backend(name)
        except ValueError as exc:
            parser.error(str(exc))
        except BackendUnavailable as exc:
            parser.error(str(exc).splitlines()[0])
    return list(dict.fromkeys(names))


def _check_plot_path(parser, path):
    """parser.error unless a plot can be written at path: checked before any training."""
    if not path:
        parser.error("--plot needs a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        parser.error(f"--plot {path}: is a folder, give a file name such as {os.path.join(path, 'curves.png')}")
    if not os.path.isdir(folder):
        parser.error(f"--plot {path}: the folder {folder} does not exist")
    existed = os.path.exists(path)
    try:   # the one reliable test (permissions, read-only mounts, root): open it for writing
        open(path, "ab").close()
    except OSError as exc:
        parser.error(f"--plot {path}: cannot write there ({exc.strerror or exc})")
    if not existed:
        os.remove(path)
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return   # no plot will be drawn; the run says so at the end
    suffix = os.path.splitext(path)[1].lstrip(".").lower()
    kinds = Figure().canvas.get_supported_filetypes()
    if suffix not in kinds:
        parser.error(f"--plot {path}: the file name must end in one of "
                     f"{', '.join('.' + k for k in sorted(kinds))} (e.g. .png)")


def _parser():
    from . import __version__
    parser = _Parser(prog="fastnn", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fastnn {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    d = sub.add_parser("digits", help="train a model (default: a 64-256-128-10 MLP) on the 8x8 digits "
                                      "on every backend")
    d.add_argument("--model", default="mlp", choices=list(FAMILIES),
                   help="the model family: " + "; ".join(f"{k}: {v[0]}" for k, v in FAMILIES.items()))
    d.add_argument("--backends", nargs="*", default=None,
                   help="default: every usable backend; the speed column is against numpy, "
                        "timed on one epoch when it is not listed")
    d.add_argument("--epochs", type=_positive_int, default=None,
                   help="default: the family's (" + ", ".join(f"{k} {v[2]}" for k, v in FAMILIES.items()) + ")")
    d.add_argument("--batch-size", type=_positive_int, default=32,
                   help="rows per step (default 32); with --distributed, per rank")
    d.add_argument("--lr", type=_positive_float, default=None,
                   help="SGD's learning rate (momentum 0.9); default: the family's ("
                        + ", ".join(f"{k} {v[3]}" for k, v in FAMILIES.items()) + ")")
    d.add_argument("--validation", type=_fraction, default=0.15,
                   help="the fraction of the training images held out as validation data (default 0.15)")
    d.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    d.add_argument("--seed", type=_seed, default=0)
    d.add_argument("--no-progress", action="store_true")
    d.add_argument("--plot", default="digits_curves.png",
                   help="where to save the training and validation curves (default digits_curves.png)")
    d.add_argument("--distributed", action="store_true",
                   help="data-parallel training on MPI, launched as 'mpiexec -n N fastnn digits "
                        "--distributed' (pip install 'fastnn[mpi]'): --batch-size is per rank, so N ranks "
                        "at batch b train as one process at batch N*b; only rank 0 prints and plots")
    b = sub.add_parser("backends", help="list the backends usable here")
    b.add_argument("--kernels", action="store_true",
                   help="and per backend which kernels are native and which fall back")
    w = sub.add_parser("warmup", help="compile and cache every Numba kernel a model can use "
                                      "(once per install; later processes load them in well under a second)")
    w.add_argument("--backends", nargs="*", default=None, help="default: numba")
    w.add_argument("--families", nargs="+", default=None, choices=list(WARMUP),
                   help="default: all of them")
    # kernel choice (issue 13): measure the auto backend's choices ahead of time
    t = sub.add_parser("tune", help="measure and record the auto backend's choice of kernel (cython or "
                                    "numba) at the benchmark sizes (else each size is measured at first use)")
    t.add_argument("--batch-sizes", nargs="+", type=_positive_int, default=None,
                   help="default: 32 64 128")
    t.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "float64"])
    parser.commands = {"digits": d, "backends": b, "warmup": w, "tune": t}   # each reports its own errors
    return parser


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return _run(parser, args)
    except KeyboardInterrupt:
        print("fastnn: interrupted", file=sys.stderr)
        return 130


def _run(parser, args):
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "backends":
        from .backend import backends, default_backend
        print("usable backends:", ", ".join(backends()), f"(default: {default_backend()})")
        if args.kernels:
            print()
            print(kernel_table())
        return 0
    parser = parser.commands.get(args.command, parser)
    if args.command == "warmup":
        from .backend import backends
        names = _check_backends(parser, args.backends, lambda: [b for b in ("numba",) if b in backends()])
        warmup(backends=names, families=args.families)
        return 0
    if args.command == "tune":
        from .backend import BackendUnavailable, get_backend
        from ._kernels import choice
        try:
            get_backend("auto")
        except (BackendUnavailable, ValueError) as exc:
            parser.error(str(exc).splitlines()[0])
        choice.tune(batches=args.batch_sizes or choice.TUNE_BATCHES, dtypes=args.dtypes)
        return 0
    # digits: every argument checked before the first epoch
    from .backend import backends
    launched = _launcher_size()
    if args.distributed:
        names, ranks, main_rank = _check_distributed(parser, args)
    else:
        if launched > 1:
            parser.error(f"started by an MPI launcher as one of {launched} processes: add --distributed "
                         f"to train together (else each process trains alone and all of them print)")
        names, ranks, main_rank = _check_backends(parser, args.backends, backends), 1, True
        _check_plot_path(parser, args.plot)
    title, _, default_epochs, default_lr = FAMILIES[args.model]
    epochs = default_epochs if args.epochs is None else args.epochs
    lr = default_lr if args.lr is None else args.lr
    rows = train_digits(names, epochs, args.batch_size, lr, dtype=args.dtype, seed=args.seed,
                        progress=not args.no_progress, model=args.model, validation_fraction=args.validation,
                        distributed=args.distributed)
    if not main_rank:
        return 0
    r = rows[0]
    batch = (f"batch {args.batch_size} per rank x {ranks} ranks (global batch {args.batch_size * ranks})"
             if args.distributed else f"batch {args.batch_size}")
    print(f"\nDigits {title}, {epochs} epochs, {batch}, "
          f"SGD lr={lr} momentum=0.9, {args.dtype}, {r['n_train']} training / "
          f"{r['n_val']} validation / {r['n_test']} test images")
    print(format_table(rows, epochs, r["n_train"]))
    if r["reference"] != "numpy":
        print(f"(speed vs numpy: the {r['reference']}, scaled to {epochs} epochs)")
    _plot_curves(rows[-1], args.plot, args.model)
    return 0


# ------------------------------------------------------------------ --distributed
_LAUNCHER_SIZE = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")   # MPICH/Hydra, Open MPI, MVAPICH


def _launcher_size():
    """How many processes an MPI launcher (mpiexec, srun) says it started: 1 outside one."""
    for key in _LAUNCHER_SIZE:
        try:
            return max(1, int(os.environ[key]))
        except (KeyError, ValueError):
            continue
    return 1


class _Discard:
    """Where a rank other than 0 prints."""

    def write(self, text):
        return len(text)

    def flush(self):
        pass


class _ArgumentProblem(Exception):
    pass


class _Collect:
    """Takes the parser's place while one rank checks its arguments: the error is raised, not
    printed, so that the ranks can agree before any of them exits."""

    def error(self, message):
        raise _ArgumentProblem(message)


def _check_distributed(parser, args):
    """(backends, ranks, is rank 0) once every rank has checked its arguments: the backends on
    each rank (each host may differ), the plot path on rank 0 (the one that writes it). A problem
    on any rank exits every rank with status 2, rank 0 printing it, so none waits for the others."""
    import importlib.util
    import socket
    from . import distributed as dist
    from .backend import backends
    try:
        ranks = dist.size()   # under a launcher, imports mpi4py (ImportError without it)
    except ImportError as exc:
        parser.error(f"--distributed: {exc}")
    launched = _launcher_size()
    names, problem = None, None
    try:
        if ranks == 1 and importlib.util.find_spec("mpi4py") is None:
            raise _ArgumentProblem("--distributed needs mpi4py and an MPI: pip install 'fastnn[mpi]'")
        if ranks == 1 and launched > 1:
            raise _ArgumentProblem(f"--distributed: started as one of {launched} MPI processes, but this one "
                                   f"runs alone (an mpiexec of another MPI than mpi4py's?)")
        names = _check_backends(_Collect(), args.backends, backends)
        if dist.is_main():
            _check_plot_path(_Collect(), args.plot)
    except _ArgumentProblem as exc:
        problem = str(exc)
    if ranks == 1 and problem:
        parser.error(problem)
    found = dist.allgather((problem, names, socket.gethostname()))
    failed = [(r, p) for r, (p, _, _) in enumerate(found) if p]
    if not failed:   # every rank must run the same fits, in the same order
        failed = [(r, f"its usable backends ({', '.join(n)}) differ from rank 0's ({', '.join(found[0][1])}): "
                      f"choose them with --backends") for r, (_, n, _) in enumerate(found) if n != found[0][1]]
    if failed:
        if dist.is_main():
            r, p = failed[0]
            parser.error(p if r == 0 else f"on rank {r}: {p}")
        sys.exit(2)
    names = found[0][1]
    _share_cores(names, sum(host == socket.gethostname() for _, _, host in found))
    if ranks == 1 and dist.is_main():
        print("fastnn: --distributed on a single process (launch it as 'mpiexec -n N fastnn digits "
              "--distributed' to train on N)", file=sys.stderr)
    return names, ranks, dist.is_main()


def _share_cores(names, local_ranks):
    """Split this host's cores between the ranks on it: each compiled backend (and OpenBLAS)
    would otherwise start one busy-waiting thread per core in every rank. OMP_NUM_THREADS,
    when set, is the user's choice and wins."""
    if local_ranks <= 1:
        return
    from .backend import get_backend
    from threadpoolctl import threadpool_limits
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    threads = int(os.environ.get("OMP_NUM_THREADS") or 0) or max(1, cores // local_ranks)
    for name in names:
        module = getattr(get_backend(name), "module", None)
        if hasattr(module, "set_num_threads"):
            module.set_num_threads(min(threads, module.get_num_threads()) if name == "numba" else threads)
    threadpool_limits(limits=threads, user_api="blas")


if __name__ == "__main__":
    sys.exit(main())
