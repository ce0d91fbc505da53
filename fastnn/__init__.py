"""fastnn: a from-scratch neural-network training engine.

    import fastnn as fnn
    model = fnn.Sequential(fnn.layers.Dense(64, 128), fnn.layers.ReLU(),
                           fnn.layers.Dense(128, 10), backend="cython", seed=0)
    trainer = fnn.Trainer(model, loss="cross_entropy", optimizer=fnn.optim.SGD(lr=0.1, momentum=0.9))
    history = trainer.fit(X, y, epochs=10, batch_size=100)
"""
from . import callbacks, data, layers, losses, optim
from . import metrics  # noqa: F401  (issue 11, metrics area)
from . import threads  # noqa: F401  (installs the at-fork hooks of the thread pools)
from . import distributed  # noqa: F401  (rank(), size(), is_main(): MPI data-parallel runs)
from .backend import BackendUnavailable, backends, default_backend, get_backend
from .graph import Input
from .io import ModelFileError
from .model import Model, Parameter, Sequential, TapeError, load
from .trainer import Callback, History, Trainer

__version__ = "0.1.0"

__all__ = [
    "backends", "get_backend", "default_backend", "BackendUnavailable",
    "Input", "Model", "Sequential", "Parameter", "TapeError", "Trainer", "History", "Callback",
    "load", "ModelFileError", "layers", "losses", "optim", "data", "callbacks",
    "metrics",
]
