"""`fastnn digits --model mlp|cnn|lstm|transformer`: each family trains briefly and prints its table."""
import pytest

import fastnn as fnn
from fastnn import cli

pytest.importorskip("sklearn")
BACKEND = "cython" if "cython" in fnn.backends() else "numpy"


@pytest.mark.parametrize("model", list(cli.FAMILIES))
def test_each_family_trains_and_prints_its_table(model, tmp_path, capsys):
    title, _, epochs, lr = cli.FAMILIES[model]
    assert cli.main(["digits", "--model", model, "--epochs", "3", "--no-progress",
                     "--backends", BACKEND, "--plot", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out
    assert f"Digits {title}, 3 epochs, batch 32, SGD lr={lr} momentum=0.9" in out
    row = next(line for line in out.splitlines() if line.startswith(f"| {BACKEND} |"))
    assert float(row.split("|")[2].strip().rstrip("%")) > 50   # test accuracy after 3 epochs (chance: 10%)


def test_default_is_the_mlp_as_before(monkeypatch):
    """No --model: the 64-256-128-10 MLP, 30 epochs, lr 0.05 (train_digits' defaults too)."""
    seen = {}

    def fake(backends, epochs, batch_size, lr, **kw):
        seen.update(epochs=epochs, lr=lr, **kw)
        raise SystemExit(0)

    monkeypatch.setattr(cli, "train_digits", fake)
    with pytest.raises(SystemExit):
        cli.main(["digits"])
    assert seen["epochs"] == 30 and seen["lr"] == 0.05 and seen["model"] == "mlp"
    layers = cli._digits_model("numpy", "float32", 0).layers
    assert [type(l).__name__ for l in layers] == ["Dense", "ReLU", "Dense", "ReLU", "Dense"]


def test_unknown_family_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        cli.main(["digits", "--model", "resnet"])
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown digits model 'resnet'"):
        cli.train_digits(["numpy"], epochs=1, model="resnet")
