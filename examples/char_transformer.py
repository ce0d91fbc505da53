"""A character-level Transformer language model trained on the Python language reference.

The text ships with Python itself (pydoc_data.topics: the reference manual's sections, used by
`help()`), so this runs offline. The model is a small GPT: token and learned position embeddings,
pre-norm blocks of causal self-attention and a GELU feed-forward, each inside a Residual, then a
LayerNorm and a Dense to the vocabulary. It trains with the explicit loop (forward, loss, backward,
step) and then samples text.

    python examples/char_transformer.py --steps 1500 --backend cython
"""
import argparse
import time

import numpy as np

import fastnn as fnn

L = fnn.layers


def load_text():
    from pydoc_data.topics import topics
    return "\n\n".join(topics[k] for k in sorted(topics))


class PositionEmbedding(fnn.layers.Layer):
    """Adds a learned (seq_len, dim) table to (batch, seq_len, dim) inputs: a custom layer."""

    def __init__(self, seq_len, dim):
        super().__init__()
        self.seq_len, self.dim = seq_len, dim

    def param_shapes(self):
        return {"weight": (self.seq_len, self.dim)}

    def init_params(self, rng):
        return {"weight": 0.02 * rng.standard_normal((self.seq_len, self.dim))}

    def output_shape(self, shape):
        if tuple(shape) != (self.seq_len, self.dim):
            raise ValueError(f"PositionEmbedding expects (batch, {self.seq_len}, {self.dim}), got {shape}")
        return tuple(shape)

    def config(self):
        return {"seq_len": self.seq_len, "dim": self.dim}

    def forward(self, ctx, x):
        return x + self.params["weight"]

    def backward(self, ctx, dy):
        self.grads["weight"] += dy.sum(axis=0)
        return dy


def build(vocab, seq_len, dim, heads, blocks, dropout, backend, seed):
    layers = [L.Embedding(vocab, dim), PositionEmbedding(seq_len, dim), L.Dropout(dropout)]
    for _ in range(blocks):
        layers.append(L.Residual(L.LayerNorm(dim), L.MultiHeadAttention(dim, heads, causal=True),
                                 L.Dropout(dropout)))
        layers.append(L.Residual(L.LayerNorm(dim), L.Dense(dim, 4 * dim), L.GELU(),
                                 L.Dense(4 * dim, dim), L.Dropout(dropout)))
    layers += [L.LayerNorm(dim), L.Dense(dim, vocab)]
    return fnn.Sequential(*layers, backend=backend, dtype="float32", seed=seed)


def sample(model, stoi, itos, prompt, length, seq_len, temperature, rng):
    ids = [stoi.get(c, 0) for c in prompt]
    for _ in range(length):
        context = ids[-seq_len:]
        context = [0] * (seq_len - len(context)) + context   # left-pad (index 0) to the model's length
        logits = model.predict(np.array([context], dtype=np.int64))[0, -1].astype(np.float64)
        p = np.exp((logits - logits.max()) / temperature)
        ids.append(int(rng.choice(len(p), p=p / p.sum())))
    return "".join(itos[i] for i in ids)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default=None, help="default: fastnn's default backend")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample", type=int, default=400, help="characters to sample after training")
    args = ap.parse_args(argv)

    text = load_text()
    chars = sorted(set(text))
    stoi, itos = {c: i for i, c in enumerate(chars)}, chars
    data = np.array([stoi[c] for c in text], dtype=np.int64)
    split = int(0.95 * len(data))
    train, valid = data[:split], data[split:]
    print(f"text: {len(text):,} characters of the Python reference (pydoc_data), vocabulary {len(chars)}")

    model = build(len(chars), args.seq_len, args.dim, args.heads, args.blocks, args.dropout,
                  args.backend, args.seed)
    print(f"model: {model.count_params():,} parameters, backend {model.backend.name}")
    opt = fnn.optim.AdamW(lr=args.lr, weight_decay=0.01)
    rng = np.random.default_rng(args.seed)
    T = args.seq_len

    def batch(source, n):
        starts = rng.integers(0, len(source) - T - 1, n)
        x = np.stack([source[s:s + T] for s in starts])
        return x, np.stack([source[s + 1:s + T + 1] for s in starts])

    def loss_of(xb, yb, train_step):
        out = model.forward(xb) if train_step else model.predict(xb)
        V = out.shape[-1]
        loss, grad = fnn.losses.cross_entropy(out.reshape(-1, V), yb.reshape(-1))
        return loss, grad.reshape(out.shape)

    model.train()
    start = time.perf_counter()
    losses, vloss = [], float("nan")
    for step in range(1, args.steps + 1):
        warmup = max(1, min(100, args.steps // 10))   # linear warm-up, then cosine decay
        lr = args.lr * min(1.0, step / warmup) * 0.5 * (1 + np.cos(np.pi * step / args.steps))
        opt.lr = max(lr, args.lr * 0.05)
        xb, yb = batch(train, args.batch_size)
        loss, grad = loss_of(xb, yb, True)
        model.zero_grad()
        model.backward(grad)
        opt.step(model.parameters())
        losses.append(loss)
        if step % 100 == 0 or step == args.steps:
            vx, vy = batch(valid, 64)
            vloss, _ = loss_of(vx, vy, False)
            print(f"step {step:5d}  train loss {loss:.3f}  valid loss {vloss:.3f}  "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    model.eval()
    print("\nsample (temperature 0.8):\n")
    text = sample(model, stoi, itos, "The \"while\" statement", args.sample, T, 0.8, np.random.default_rng(1))
    print(text)
    return {"losses": losses, "valid_loss": vloss, "sample": text}


if __name__ == "__main__":
    main()
