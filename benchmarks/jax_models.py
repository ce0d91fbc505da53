"""The small models of small_models_vs_torch.py in JAX: the whole training step (forward, backward,
optax Adam) jit-compiled by XLA, parameters and optimizer state donated so XLA updates them in
place. Needs the optional `bench` extra (jax, optax); `jax_step` raises ImportError without it.
"""
import numpy as np


def _dense(key, n_in, n_out):
    import jax
    bound = 1.0 / np.sqrt(n_in)    # torch's nn.Linear init
    kw, kb = jax.random.split(key)
    return {"w": jax.random.uniform(kw, (n_in, n_out), minval=-bound, maxval=bound),
            "b": jax.random.uniform(kb, (n_out,), minval=-bound, maxval=bound)}


def _conv(key, c_in, c_out, *kernel):
    import jax
    fan_in = c_in * int(np.prod(kernel))
    bound = 1.0 / np.sqrt(fan_in)
    kw, kb = jax.random.split(key)
    return {"w": jax.random.uniform(kw, (c_out, c_in, *kernel), minval=-bound, maxval=bound),
            "b": jax.random.uniform(kb, (c_out,), minval=-bound, maxval=bound)}


def _apply_conv(p, x, stride, padding):
    from jax import lax
    nd = x.ndim - 2
    dims = ("NCH", "OIH", "NCH") if nd == 1 else ("NCHW", "OIHW", "NCHW")
    y = lax.conv_general_dilated(x, p["w"], (stride,) * nd, [(padding, padding)] * nd,
                                 dimension_numbers=dims)
    return y + p["b"].reshape((1, -1) + (1,) * nd)


def _batchnorm(p, x, eps=1e-5):
    """Training-mode BatchNorm over every axis but the channel axis 1 (running statistics are
    not kept: they cost the step nothing that matters and would need a state pytree)."""
    import jax.numpy as jnp
    axes = (0,) + tuple(range(2, x.ndim))
    mean = x.mean(axes, keepdims=True)
    var = x.var(axes, keepdims=True)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x - mean) / jnp.sqrt(var + eps) * p["g"].reshape(shape) + p["b"].reshape(shape)


def _rnn_params(key, cell, n_in, hidden):
    import jax
    gates = {"lstm": 4, "gru": 3}[cell]
    bound = 1.0 / np.sqrt(hidden)
    k = jax.random.split(key, 4)
    u = lambda kk, shape: jax.random.uniform(kk, shape, minval=-bound, maxval=bound)  # noqa: E731
    return {"wi": u(k[0], (n_in, gates * hidden)), "wh": u(k[1], (hidden, gates * hidden)),
            "bi": u(k[2], (gates * hidden,)), "bh": u(k[3], (gates * hidden,))}


def _run_rnn(p, cell, xs, hidden, reverse=False):
    """The last hidden state of a torch-convention LSTM/GRU over xs (T, N, F) by lax.scan."""
    import jax
    import jax.numpy as jnp
    n = xs.shape[1]
    xi = jnp.einsum("tnf,fg->tng", xs, p["wi"]) + p["bi"]   # the input projection of every step at once
    if cell == "lstm":
        def step(carry, xt):
            h, c = carry
            z = xt + h @ p["wh"] + p["bh"]
            i, f, g, o = jnp.split(z, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), None
        init = (jnp.zeros((n, hidden)), jnp.zeros((n, hidden)))
        (h, _), _ = jax.lax.scan(step, init, xi, reverse=reverse)
        return h

    def step(h, xt):
        hh = h @ p["wh"] + p["bh"]
        xr, xz, xn = jnp.split(xt, 3, axis=-1)
        hr, hz, hn = jnp.split(hh, 3, axis=-1)
        r = jax.nn.sigmoid(xr + hr)
        z = jax.nn.sigmoid(xz + hz)
        cand = jnp.tanh(xn + r * hn)
        return (1 - z) * cand + z * h, None
    h, _ = jax.lax.scan(step, jnp.zeros((n, hidden)), xi, reverse=reverse)
    return h


def jax_model(kind, hidden, seed=0):
    """(params, apply(params, x) -> logits) for one of small_models_vs_torch.py's kinds."""
    import jax
    import jax.numpy as jnp
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), 16))
    relu = jax.nn.relu
    if kind == "mlp":
        params = [_dense(next(keys), 40, 100), _dense(next(keys), 100, 100), _dense(next(keys), 100, 10)]

        def apply(p, x):
            for layer in p[:-1]:
                x = relu(x @ layer["w"] + layer["b"])
            return x @ p[-1]["w"] + p[-1]["b"]
        return params, apply
    if kind == "cnn":
        params = [_conv(next(keys), 1, 25, 5), _conv(next(keys), 25, 25, 3), _conv(next(keys), 25, 25, 3),
                  _dense(next(keys), 75, 10)]

        def apply(p, x):
            x = relu(_apply_conv(p[0], x, 2, 0))
            x = relu(_apply_conv(p[1], x, 2, 0))
            x = relu(_apply_conv(p[2], x, 2, 0))
            return x.reshape(x.shape[0], -1) @ p[3]["w"] + p[3]["b"]
        return params, apply
    if kind in ("bncnn", "bncnn1d"):
        two_d = kind == "bncnn"
        widths = (16, 32) if two_d else (25, 25)
        kernel = (3, 3) if two_d else (5,)
        bn = lambda c: {"g": jnp.ones(c), "b": jnp.zeros(c)}  # noqa: E731
        params = [_conv(next(keys), 1, widths[0], *kernel), bn(widths[0]),
                  _conv(next(keys), widths[0], widths[1], *((3, 3) if two_d else (3,))), bn(widths[1]),
                  _dense(next(keys), widths[1], 10)]

        def apply(p, x):
            if two_d:
                x = relu(_batchnorm(p[1], _apply_conv(p[0], x, 1, 1)))
                x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
                x = relu(_batchnorm(p[3], _apply_conv(p[2], x, 1, 1)))
                x = x.mean((2, 3))
            else:
                x = relu(_batchnorm(p[1], _apply_conv(p[0], x, 2, 0)))
                x = relu(_batchnorm(p[3], _apply_conv(p[2], x, 2, 0)))
                x = x.mean(2)
            return x @ p[4]["w"] + p[4]["b"]
        return params, apply
    cell = "lstm" if "lstm" in kind else "gru"
    directions = 2 if kind.startswith("bi") else 1
    params = [_rnn_params(next(keys), cell, 1, hidden) for _ in range(directions)]
    params.append(_dense(next(keys), directions * hidden, 10))

    def apply(p, x):
        xs = jnp.swapaxes(x, 0, 1)       # (N, T, F) -> (T, N, F)
        hs = [_run_rnn(p[d], cell, xs, hidden, reverse=d == 1) for d in range(directions)]
        return jnp.concatenate(hs, axis=1) @ p[-1]["w"] + p[-1]["b"]
    return params, apply


def jax_step(kind, hidden, x, y, lr=1e-3):
    """A zero-argument training step (forward, cross-entropy, backward, Adam) over one batch."""
    import jax
    import optax
    params, apply = jax_model(kind, hidden)
    opt = optax.adam(lr)
    state = [params, opt.init(params)]
    xj, yj = jax.device_put(x), jax.device_put(y.astype(np.int32))

    def loss_fn(p, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(apply(p, xb), yb).mean()

    def update(p, s, xb, yb):
        loss, grads = jax.value_and_grad(loss_fn)(p, xb, yb)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss
    update = jax.jit(update, donate_argnums=(0, 1))

    def step():
        state[0], state[1], loss = update(state[0], state[1], xj, yj)
        loss.block_until_ready()
    return step
