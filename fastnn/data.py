"""Small real datasets that work offline."""
import numpy as np


def load_digits(test_fraction=0.25, seed=0, dtype="float32"):
    """scikit-learn's 8x8 handwritten digits (1,797 images, shipped with it), scaled
    to [0, 1] and split once by a seeded permutation, stratified by class.

    Returns (X_train, y_train, X_test, y_test); X rows have 64 features.
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise ImportError("the digits dataset needs scikit-learn: pip install 'fastnn[data]'") from None
    digits = sk_load_digits()
    X = (digits.data / 16.0).astype(dtype)
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        test[members[:int(round(len(members) * test_fraction))]] = True
    return X[~test], y[~test], X[test], y[test]
