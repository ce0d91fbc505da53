"""fastnn.sklearn vs sklearn.neural_network at the same settings: test accuracy and fit time.

    PYTHONPATH=. python benchmarks/sklearn_compare.py [--repeat 3] [--epochs 20] [--quick]

Two data sets: scikit-learn's digits (1797 x 64, 10 classes, scaled to [0, 1]) and
20,000 x 784 synthetic samples with 10 classes (make_classification). Both
estimators run a fixed number of epochs (tol=0, n_iter_no_change=epochs) from the
same Glorot initialisation (same random_state), Adam, hidden_layer_sizes=(100,),
batch_size 200. fastnn trains in float32 on each of its backends; scikit-learn in
float64 (its default for float64 input) with NumPy's BLAS, timed both on every
core and on one BLAS thread (on a busy machine one thread can be faster); the
speed-up is against the faster of the two. Times are the best of --repeat fits,
all in this one process.
"""
import argparse
import time
import warnings

import numpy as np
from sklearn.datasets import load_digits, make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier as SkMLP
from threadpoolctl import threadpool_limits

import fastnn
from fastnn.sklearn import MLPClassifier


def datasets(quick):
    X, y = load_digits(return_X_y=True)
    yield "digits 1797x64", train_test_split(X / 16.0, y, test_size=0.25, random_state=0, stratify=y)
    n = 4000 if quick else 20000
    X, y = make_classification(n_samples=n, n_features=784, n_informative=60, n_redundant=20,
                               n_classes=10, n_clusters_per_class=2, class_sep=2.0, random_state=0)
    X = (X - X.mean(0)) / X.std(0)
    yield f"synthetic {n}x784", train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)


class _OneThread:
    """An estimator whose fit runs with NumPy's BLAS held to one thread."""

    def __init__(self, est):
        self.est = est

    def set_params(self, **params):
        self.est.set_params(**params)
        return self

    def fit(self, X, y):
        with threadpool_limits(limits=1, user_api="blas"):
            self.est.fit(X, y)
        return self

    def score(self, X, y):
        return self.est.score(X, y)


def timed_fit(make, X, y, repeat):
    best, model = np.inf, None
    for _ in range(repeat):
        model = make()
        start = time.perf_counter()
        model.fit(X, y)
        best = min(best, time.perf_counter() - start)
    return best, model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="4,000 synthetic samples")
    parser.add_argument("--backends", default=",".join(fastnn.backends()))
    args = parser.parse_args()
    warnings.simplefilter("ignore", ConvergenceWarning)
    settings = dict(hidden_layer_sizes=(100,), solver="adam", batch_size=200, learning_rate_init=1e-3,
                    max_iter=args.epochs, tol=0.0, n_iter_no_change=args.epochs, random_state=0)
    print(f"settings: {settings}")
    print(f"{'data':<20} {'estimator':<28} {'test acc':>8} {'fit s':>8} {'speed-up':>8}")
    for name, (Xtr, Xte, ytr, yte) in datasets(args.quick):
        makers = {"sklearn (float64)": lambda: SkMLP(**settings),
                  "sklearn (float64, 1 thread)": lambda: _OneThread(SkMLP(**settings))}
        for backend in args.backends.split(","):
            makers[f"fastnn {backend} (float32)"] = (lambda b=backend: MLPClassifier(backend=b, **settings))
        # warm up every estimator once (Numba compiles or loads its cache), then time
        for make in makers.values():
            make().set_params(max_iter=1).fit(Xtr[:400], ytr[:400])
        results = {}
        for label, make in makers.items():
            seconds, model = timed_fit(make, Xtr, ytr, args.repeat)
            results[label] = (model.score(Xte, yte), seconds)
        base = min(seconds for label, (_, seconds) in results.items() if label.startswith("sklearn"))
        for label, (acc, seconds) in results.items():
            print(f"{name:<20} {label:<28} {acc:8.4f} {seconds:8.3f} {base / seconds:7.2f}x")


if __name__ == "__main__":
    main()
