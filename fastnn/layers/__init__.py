"""fastnn layers, one family a file."""
from .activations import ELU, GELU, LeakyReLU, ReLU, SiLU, Sigmoid, Softmax, Softplus, Step, Tanh
from .attention import MultiHeadAttention, TransformerEncoderLayer
from .base import Context, Layer, layer_class
from .conv import Conv1D, Conv2D
from .dense import Dense
from .dropout import Dropout
from .embedding import Embedding
from .merge import Add, Concatenate, Residual
from .normalization import BatchNorm1D, BatchNorm2D, LayerNorm
from .pooling import AvgPool1D, AvgPool2D, GlobalAvgPool1D, GlobalAvgPool2D, MaxPool1D, MaxPool2D
from .recurrent import GRU, LSTM, RNN
from .shape import Flatten, Reshape

__all__ = ["Layer", "Context", "Dense", "Step", "Sigmoid", "Tanh", "ReLU", "LeakyReLU", "Softmax",
           "GELU", "SiLU", "ELU", "Softplus",
           "Conv1D", "Conv2D", "MaxPool1D", "MaxPool2D", "AvgPool1D", "AvgPool2D",
           "GlobalAvgPool1D", "GlobalAvgPool2D", "Flatten", "Reshape", "Dropout",
           "BatchNorm1D", "BatchNorm2D", "LayerNorm", "Embedding", "RNN", "LSTM", "GRU",
           "MultiHeadAttention", "TransformerEncoderLayer", "Add", "Concatenate", "Residual"]
