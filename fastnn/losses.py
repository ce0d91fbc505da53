"""Losses: each takes the model's outputs and targets, returns (loss, d loss / d outputs).

mse: mean squared error over every element.
cross_entropy: softmax cross-entropy from logits, with integer class labels (N,)
    or target rows (N, C) (one-hot or soft); mean over the batch.
binary_cross_entropy: sigmoid + binary cross-entropy from logits; mean over elements.
"""
from ._kernels import registry
from .backend import get_backend

NAMES = registry.names("loss")   # the loss kernels the registry declares


def mse(pred, target, backend=None):
    return get_backend(backend).mse(pred, target)


def cross_entropy(logits, labels, backend=None):
    return get_backend(backend).cross_entropy(logits, labels)


def binary_cross_entropy(logits, target, backend=None):
    return get_backend(backend).binary_cross_entropy(logits, target)


def get(name):
    """The loss called name, or a callable passed through."""
    if callable(name):
        return name
    if name not in NAMES:
        raise ValueError(f"unknown loss {name!r}; known losses: {list(NAMES)}")
    return globals()[name]
