"""The examples/ scripts run as a user runs them (briefly here): the residual BatchNorm/Dropout CNN
learns the digits, and the character-level Transformer's loss falls from chance."""
import importlib.util
import math
import pathlib

import pytest

import fastnn as fnn

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
BACKEND = "cython" if "cython" in fnn.backends() else "numpy"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_residual_cnn_learns_the_digits(capsys):
    pytest.importorskip("sklearn")
    result = _load("residual_cnn_digits").main(["--epochs", "2", "--backend", BACKEND])
    assert result["test_accuracy"] > 0.85   # chance is 0.10; 15 epochs reach ~0.98 (README)


def test_char_transformer_loss_falls_and_it_samples(capsys):
    result = _load("char_transformer").main(["--steps", "60", "--backend", BACKEND, "--seq-len", "32",
                                             "--blocks", "1", "--sample", "40", "--dropout", "0.1"])
    losses = result["losses"]
    vocab_chance = math.log(len(set(_load("char_transformer").load_text())))
    assert losses[0] > vocab_chance - 1.0           # starts near chance (ln 103 = 4.6)
    assert sum(losses[-10:]) / 10 < min(3.4, losses[0] - 1.0)   # learns at least the character frequencies
    assert math.isfinite(result["valid_loss"])
    assert len(result["sample"]) == len('The "while" statement') + 40
