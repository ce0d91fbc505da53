"""History.plot writes a PNG of the loss and accuracy curves."""
import numpy as np
import pytest

import fastnn as fnn

pytest.importorskip("matplotlib")


def _history(validation=True):
    X, y, Xt, yt = fnn.data.load_digits()
    model = fnn.Sequential(fnn.layers.Dense(64, 32), fnn.layers.ReLU(), fnn.layers.Dense(32, 10), seed=0)
    trainer = fnn.Trainer(model, optimizer=fnn.optim.SGD(lr=0.05, momentum=0.9))
    return trainer.fit(X, y, epochs=4, batch_size=64, progress=False,
                       validation_data=(Xt, yt) if validation else None)


def test_plot_writes_png(tmp_path):
    path = tmp_path / "curves.png"
    fig = _history().plot(path, title="digits")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert [ax.get_title() for ax in fig.axes] == ["Loss", "Accuracy"]
    assert all(len(ax.get_lines()) == 2 for ax in fig.axes)  # train and validation
    from matplotlib.image import imread
    pixels = imread(str(path))
    assert pixels.shape[0] > 200 and pixels.shape[1] > 600
    assert np.std(pixels[..., :3]) > 0.05  # not a blank canvas


def test_plot_regression_history_and_no_path(tmp_path):
    X = np.random.default_rng(0).normal(size=(64, 3))
    model = fnn.Sequential(fnn.layers.Dense(3, 1), seed=0)
    history = fnn.Trainer(model, loss="mse").fit(X, X.sum(1), epochs=3, batch_size=16, progress=False)
    fig = history.plot()  # no accuracy: one panel; no path: nothing written
    assert [ax.get_title() for ax in fig.axes] == ["Loss"]
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="nothing to plot"):
        fnn.History().plot()
