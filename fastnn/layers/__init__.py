"""fastnn layers, one family a file."""
from .activations import LeakyReLU, ReLU, Sigmoid, Softmax, Step, Tanh
from .base import Layer
from .dense import Dense

__all__ = ["Layer", "Dense", "Step", "Sigmoid", "Tanh", "ReLU", "LeakyReLU", "Softmax"]


def layer_class(name):
    """The layer class called name (for loading saved models)."""
    cls = globals().get(name)
    if not (isinstance(cls, type) and issubclass(cls, Layer)) or name == "Layer":
        raise ValueError(f"unknown layer type {name!r}")
    return cls
