"""Training-step groups: one SGD step of an MLP per backend (numpy is the reference)."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn.layers import Dense, ReLU


def _step_fn(backend, batch, sizes):
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        layers.append(Dense(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(ReLU())
    model = fnn.Sequential(*layers, backend=backend.name, seed=0)
    trainer = fnn.Trainer(model, "cross_entropy", fnn.optim.SGD(lr=0.01, momentum=0.9))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], batch)
    loss_fn, params = backend.raw.cross_entropy, model.parameters()

    def step():
        # The step as Trainer.fit runs it: a tape of its own, batches checked once per fit.
        (out,), tape = model._train_forward([x])
        _, grad = loss_fn(out, y)
        model.zero_grad()
        model._backprop(tape, [grad])
        trainer.optimizer.step(params)
    step()
    return step


@pytest.mark.parametrize("batch", [32, 128])
def test_mlp_784_256_128_10_step(benchmark, backend, batch):
    benchmark.group = f"train step MLP 784-256-128-10 batch {batch}"
    benchmark(_step_fn(backend, batch, (784, 256, 128, 10)))


def test_digits_mlp_step(benchmark, backend):
    benchmark.group = "train step MLP 64-256-128-10 batch 32"
    benchmark(_step_fn(backend, 32, (64, 256, 128, 10)))
