"""A small residual CNN with BatchNorm and Dropout on the 8x8 handwritten digits.

    python examples/residual_cnn_digits.py --epochs 15 --backend cython
"""
import argparse
import time

import fastnn as fnn

L = fnn.layers


def build(backend, seed, width=16, dropout=0.25):
    def conv_bn(c_in, c_out):
        return [L.Conv2D(c_in, c_out, 3, padding="same"), L.BatchNorm2D(c_out)]

    return fnn.Sequential(
        *conv_bn(1, width), L.ReLU(),
        L.Residual(*conv_bn(width, width), L.ReLU(), *conv_bn(width, width)), L.ReLU(),
        L.MaxPool2D(2),                                           # 8x8 -> 4x4
        L.Residual(*conv_bn(width, width), L.ReLU(), *conv_bn(width, width)), L.ReLU(),
        L.GlobalAvgPool2D(), L.Dropout(dropout), L.Dense(width, 10),
        backend=backend, dtype="float32", seed=seed)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default=None)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    X, y, Xt, yt = fnn.data.load_digits(seed=args.seed)
    X, Xt = X.reshape(-1, 1, 8, 8), Xt.reshape(-1, 1, 8, 8)
    model = build(args.backend, args.seed)
    print(f"model: {model.count_params():,} parameters, backend {model.backend.name}")
    trainer = fnn.Trainer(model, loss="cross_entropy", optimizer=fnn.optim.Adam(lr=3e-3), seed=args.seed)
    start = time.perf_counter()
    history = trainer.fit(X, y, epochs=args.epochs, batch_size=args.batch_size,
                          validation_data=(Xt, yt), progress=False)
    seconds = time.perf_counter() - start
    for epoch, (loss, acc) in enumerate(zip(history.history["loss"], history.history["val_accuracy"]), 1):
        print(f"epoch {epoch:2d}  loss {loss:.4f}  test accuracy {100 * acc:.2f}%")
    accuracy = trainer.evaluate(Xt, yt)["accuracy"]
    print(f"test accuracy {100 * accuracy:.2f}% after {seconds:.1f} s")
    return {"test_accuracy": accuracy, "seconds": seconds}


if __name__ == "__main__":
    main()
