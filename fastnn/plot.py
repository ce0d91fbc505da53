"""Training curves: loss and accuracy per epoch, train and validation, to a PNG.

    history = trainer.fit(X, y, epochs=20, validation_data=(Xv, yv))
    history.plot("curves.png")          # needs matplotlib: pip install 'fastnn[plot]'

Draws on a bare matplotlib Figure with the Agg canvas: pyplot and the user's
chosen matplotlib backend are left alone, so it works headless and in notebooks.
"""
import os

PANELS = (("loss", "Loss"), ("accuracy", "Accuracy"))


def plot_history(history, path=None, title=None, dpi=100):
    """A Figure with one panel per metric (loss, then accuracy when recorded),
    train and validation curves together; saved to path (PNG by its suffix) when given."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("History.plot needs matplotlib: pip install 'fastnn[plot]'") from exc
    logs = getattr(history, "history", history)
    panels = [(key, label) for key, label in PANELS if key in logs or "val_" + key in logs]
    if not panels:
        raise ValueError(f"nothing to plot: the history holds {sorted(logs)}, no loss or accuracy")
    fig = Figure(figsize=(5.2 * len(panels), 4.0), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    for i, (key, label) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for name, style, legend in ((key, "-o", "train"), ("val_" + key, "-s", "validation")):
            values = logs.get(name)
            if values:
                epochs = range(1, len(values) + 1)
                ax.plot(epochs, values, style, markersize=3, linewidth=1.5, label=legend)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label.lower())
        ax.set_title(label)
        ax.grid(True, alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    if path is not None:
        fig.savefig(os.fspath(path))
    return fig
