"""fastnn layers, one family a file."""
from .activations import LeakyReLU, ReLU, Sigmoid, Softmax, Step, Tanh
from .base import Layer
from .conv import Conv1D, Conv2D
from .dense import Dense
from .pooling import AvgPool1D, AvgPool2D, MaxPool1D, MaxPool2D
from .recurrent import GRU, LSTM, RNN
from .shape import Flatten, Reshape

__all__ = ["Layer", "Dense", "Step", "Sigmoid", "Tanh", "ReLU", "LeakyReLU", "Softmax",
           "Conv1D", "Conv2D", "MaxPool1D", "MaxPool2D", "AvgPool1D", "AvgPool2D",
           "Flatten", "Reshape", "RNN", "LSTM", "GRU"]


def layer_class(name):
    """The layer class called name (for loading saved models)."""
    cls = globals().get(name)
    if not (isinstance(cls, type) and issubclass(cls, Layer)) or name == "Layer":
        raise ValueError(f"unknown layer type {name!r}")
    return cls
