"""fastnn layers, one family a file."""
from .activations import LeakyReLU, ReLU, Sigmoid, Softmax, Step, Tanh
from .activations import ELU, GELU, SiLU, Softplus  # issue 10: acts
from .dropout import Dropout  # issue 10: acts
from .embedding import Embedding  # issue 10: acts
from .base import Context, Layer, layer_class
from .conv import Conv1D, Conv2D
from .dense import Dense
from .merge import Add, Concatenate, Residual
from .pooling import AvgPool1D, AvgPool2D, MaxPool1D, MaxPool2D
from .recurrent import GRU, LSTM, RNN
from .shape import Flatten, Reshape
# normalization and global pools (issue 10, branch norm)
from .normalization import BatchNorm1D, BatchNorm2D, LayerNorm
from .pooling import GlobalAvgPool1D, GlobalAvgPool2D

__all__ = ["Layer", "Context", "Dense", "Step", "Sigmoid", "Tanh", "ReLU", "LeakyReLU", "Softmax",
           "Conv1D", "Conv2D", "MaxPool1D", "MaxPool2D", "AvgPool1D", "AvgPool2D",
           "Flatten", "Reshape", "RNN", "LSTM", "GRU", "Add", "Concatenate", "Residual"]
__all__ += ["LayerNorm", "BatchNorm1D", "BatchNorm2D", "GlobalAvgPool1D", "GlobalAvgPool2D"]   # norm
__all__ += ["GELU", "SiLU", "ELU", "Softplus", "Dropout", "Embedding"]  # issue 10: acts
# attention and the Transformer encoder layer (issue 10, branch attn)
from .attention import MultiHeadAttention, TransformerEncoderLayer  # noqa: E402
__all__ += ["MultiHeadAttention", "TransformerEncoderLayer"]

