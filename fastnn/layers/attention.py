"""Multi-head attention and the Transformer encoder layer: torch.nn.MultiheadAttention and
torch.nn.TransformerEncoderLayer (batch_first=True), their parameters and state_dict keys.

MultiHeadAttention takes one input (N, L, E) for self-attention (so it fits in a
Sequential), or, called on a list in a graph, [query (N, L, E), key_value (N, S, E)]
for cross-attention and [query, key_value, key_padding_mask (N, S)] with torch's mask
convention (nonzero / True = that key is ignored). A query whose keys are all ignored
gets a zero attention output (torch returns NaN there), so its output is out_proj.bias.
The projections run on the linear kernels; scores, the (masked) softmax and p @ v run
in one fused attention kernel that keeps only the probabilities for the backward.
"""
import numpy as np

from .base import Layer, positive_int
from .dense import Dense


class _OutProj(Dense):
    """MultiHeadAttention's out_proj: a Dense whose bias starts at zero, as torch's."""

    def init_params(self, rng):
        params = super().init_params(rng)
        if "bias" in params:
            params["bias"] = np.zeros_like(params["bias"])
        return params


class _OneOrList:
    """A layer that takes one tensor (Sequential) or, called on a list in a graph, several:
    n_inputs is 1 until the layer is first called on a list (saved in its config)."""

    def _init_inputs(self, lo, hi):
        self._n_range, self._multi = (lo, hi), False

    @property
    def n_inputs(self):
        return None if self._multi else 1

    def __call__(self, x, training=False):
        many = isinstance(x, (list, tuple))
        if many != self._multi:
            if getattr(self, "_called", False):
                raise TypeError(f"{type(self).__name__} was called on "
                                f"{'a list' if self._multi else 'one tensor'} before: a layer "
                                f"takes its inputs one way")
            self._multi = many
        result = super().__call__(x, training=training)
        self._called = True
        return result

    def _input_shapes(self, shapes):
        """(first input's shape, the others) from output_shape's argument."""
        if not self._multi:
            return tuple(shapes), []
        shapes = [tuple(s) for s in shapes]
        lo, hi = self._n_range
        if not lo <= len(shapes) <= hi:
            raise ValueError(f"{type(self).__name__} takes a list of {lo} to {hi} inputs, got {len(shapes)}")
        return shapes[0], shapes[1:]

    def _list_config(self, config):
        if self._multi:
            config["inputs"] = "list"
        return config

    @classmethod
    def from_config(cls, config, build_layer):
        config = dict(config)
        multi = config.pop("inputs", None) == "list"
        layer = cls(**config)
        layer._multi = multi
        return layer

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "inputs")
        return f"{type(self).__name__}({args})"


class MultiHeadAttention(_OneOrList, Layer):
    """torch.nn.MultiheadAttention(embed_dim, num_heads, bias=bias, batch_first=True)
    without dropout; causal=True masks future keys (torch's is_causal). The call
    returns the attention output only (not the averaged weights)."""

    def __init__(self, embed_dim, num_heads, causal=False, bias=True):
        super().__init__()
        self.embed_dim = positive_int(embed_dim, "MultiHeadAttention embed_dim")
        self.num_heads = positive_int(num_heads, "MultiHeadAttention num_heads")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"MultiHeadAttention: embed_dim={embed_dim} is not divisible by "
                             f"num_heads={num_heads}")
        if not isinstance(causal, (bool, np.bool_)):
            raise TypeError(f"MultiHeadAttention causal must be True or False, got {causal!r}")
        self.causal, self.use_bias = bool(causal), bool(bias)
        self.out_proj = _OutProj(self.embed_dim, self.embed_dim, bias=self.use_bias)
        self._init_inputs(2, 3)

    def sublayers(self):
        return [("out_proj", self.out_proj)]

    def param_shapes(self):
        e = self.embed_dim
        shapes = {"in_proj_weight": (3 * e, e)}
        if self.use_bias:
            shapes["in_proj_bias"] = (3 * e,)
        return shapes

    def init_params(self, rng):
        # torch: xavier_uniform_ on in_proj_weight, zero in_proj_bias.
        e = self.embed_dim
        bound = np.sqrt(6.0 / (e + 3 * e))
        params = {"in_proj_weight": rng.uniform(-bound, bound, size=(3 * e, e))}
        if self.use_bias:
            params["in_proj_bias"] = np.zeros(3 * e)
        return params

    def config(self):
        return self._list_config({"embed_dim": self.embed_dim, "num_heads": self.num_heads,
                                  "causal": self.causal, "bias": self.use_bias})

    def output_shape(self, shapes):
        who, e = type(self).__name__, self.embed_dim
        query, rest = self._input_shapes(shapes)
        if len(query) != 2 or query[1] != e:
            raise ValueError(f"{who}({e}, {self.num_heads}) expects a query of shape (batch, length, {e}), "
                             f"got (batch, {', '.join(map(str, query))})")
        if rest:
            kv = rest[0]
            if len(kv) != 2 or kv[1] != e:
                raise ValueError(f"{who}: key_value must have shape (batch, source length, {e}), "
                                 f"got (batch, {', '.join(map(str, kv))})")
            if len(rest) > 1 and tuple(rest[1]) != (kv[0],):
                raise ValueError(f"{who}: key_padding_mask must have shape (batch, {kv[0]}) "
                                 f"(one flag per key), got (batch, {', '.join(map(str, rest[1]))})")
        return tuple(query)

    # ------------------------------------------------------------- compute
    def _project(self, x2, i):
        """x2 (rows, E) through rows i*E .. (i+1)*E of the input projection."""
        e = self.embed_dim
        w = self.params["in_proj_weight"][i * e:(i + 1) * e]
        b = self.params["in_proj_bias"][i * e:(i + 1) * e] if self.use_bias else None
        return self.kernels.linear(x2, w, b)

    def attend(self, ctx, query, key_value, mask, self_attention=False):
        """The attention output for arrays (mask None or (N, S)); fills ctx for backward_parts.
        self_attention: key_value is query (one projection input, one gradient)."""
        e = self.embed_dim
        n, l = query.shape[:2]
        s = key_value.shape[1]
        q2 = query.reshape(n * l, e)
        kv2 = q2 if self_attention else key_value.reshape(n * s, e)
        q = self._project(q2, 0).reshape(n, l, e)
        k = self._project(kv2, 1).reshape(n, s, e)
        v = self._project(kv2, 2).reshape(n, s, e)
        attn, p = self.kernels.attention(q, k, v, mask, self.num_heads, self.causal)
        ctx.inputs, ctx.qkv, ctx.p, ctx.self_attention = (q2, kv2), (q, k, v), p, self_attention
        ctx.out = ctx.child()
        return self.out_proj._forward_impl(ctx.out, attn)

    def backward_parts(self, ctx, dy, need_dx):
        """(d query, d key_value) (None when not need_dx) from the ctx attend filled;
        for self-attention d key_value is None and d query holds the whole gradient."""
        e = self.embed_dim
        q, k, v = ctx.qkv
        dattn = self.out_proj._backward_impl(ctx.out, dy)
        grads = self.kernels.attention_backward(dattn, q, k, v, ctx.p, self.num_heads)
        wg = self.grads["in_proj_weight"]
        bg = self.grads.get("in_proj_bias")
        w = self.params["in_proj_weight"]
        dxs = []
        for i, (g, x2) in enumerate(zip(grads, (ctx.inputs[0], ctx.inputs[1], ctx.inputs[1]))):
            rows = slice(i * e, (i + 1) * e)
            dx = self.kernels.linear_backward_into(g.reshape(x2.shape[0], e), x2, w[rows], wg[rows],
                                                   None if bg is None else bg[rows], need_dx)
            dxs.append(dx)
        if not need_dx:
            return None, None
        dkv = dxs[1] + dxs[2]
        if ctx.self_attention:
            return (dxs[0] + dkv).reshape(q.shape), None
        return dxs[0].reshape(q.shape), dkv.reshape(k.shape)

    def forward(self, ctx, x):
        if not self._multi:
            return self.attend(ctx, x, x, None, self_attention=True)
        ctx.n_in = len(x)
        return self.attend(ctx, x[0], x[1], x[2] if len(x) > 2 else None)

    def backward(self, ctx, dy):
        dq, dkv = self.backward_parts(ctx, dy, ctx.need_dx)
        if not self._multi:
            return dq
        if not ctx.need_dx:
            return None
        return [dq, dkv] + [None] * (ctx.n_in - 2)


class TransformerEncoderLayer(_OneOrList, Layer):
    """torch.nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, activation,
    layer_norm_eps, batch_first=True, norm_first): self-attention and a feed-forward block,
    each with a residual connection and a LayerNorm (after it, or before with norm_first).
    causal=True masks future positions (torch's is_causal with a causal src_mask); called on
    a list [x, src_key_padding_mask (N, L)] in a graph it also ignores the masked positions.
    Its parameters are torch's: self_attn.*, linear1.*, linear2.*, norm1.*, norm2.*."""

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, activation="relu",
                 layer_norm_eps=1e-5, norm_first=False, causal=False):
        super().__init__()
        from . import GELU, LayerNorm, ReLU
        self.d_model = positive_int(d_model, "TransformerEncoderLayer d_model")
        self.nhead = positive_int(nhead, "TransformerEncoderLayer nhead")
        self.dim_feedforward = positive_int(dim_feedforward, "TransformerEncoderLayer dim_feedforward")
        if isinstance(dropout, (bool, np.bool_)) or not isinstance(dropout, (int, float, np.floating)) \
                or not 0 <= dropout < 1:
            raise ValueError(f"TransformerEncoderLayer dropout must be a probability in [0, 1), got {dropout!r}")
        if activation not in ("relu", "gelu"):
            raise ValueError(f"TransformerEncoderLayer activation must be 'relu' or 'gelu', got {activation!r}")
        self.dropout_p, self.activation_name = float(dropout), activation
        self.norm_first = bool(norm_first)
        self.self_attn = MultiHeadAttention(self.d_model, self.nhead, causal=causal)
        self.causal = self.self_attn.causal
        self.linear1 = Dense(self.d_model, self.dim_feedforward)
        self.linear2 = Dense(self.dim_feedforward, self.d_model)
        self.norm1 = LayerNorm(self.d_model, eps=layer_norm_eps)
        self.norm2 = LayerNorm(self.d_model, eps=layer_norm_eps)
        self.layer_norm_eps = self.norm1.eps
        self.activation = ReLU() if activation == "relu" else GELU()
        # Dropout layers only where they do something (p = 0 is the identity).
        self._drops = {}
        if self.dropout_p > 0:
            from . import Dropout
            self._drops = {name: Dropout(self.dropout_p) for name in ("dropout", "dropout1", "dropout2")}
        self._init_inputs(2, 2)

    def sublayers(self):
        return [("self_attn", self.self_attn), ("linear1", self.linear1), ("linear2", self.linear2),
                ("norm1", self.norm1), ("norm2", self.norm2), ("activation", self.activation)] + \
            list(self._drops.items())

    def config(self):
        return self._list_config({
            "d_model": self.d_model, "nhead": self.nhead, "dim_feedforward": self.dim_feedforward,
            "dropout": self.dropout_p, "activation": self.activation_name,
            "layer_norm_eps": self.layer_norm_eps, "norm_first": self.norm_first, "causal": self.causal})

    def output_shape(self, shapes):
        x, rest = self._input_shapes(shapes)
        if len(x) != 2 or x[1] != self.d_model:
            raise ValueError(f"TransformerEncoderLayer(d_model={self.d_model}) expects inputs of shape "
                             f"(batch, length, {self.d_model}), got (batch, {', '.join(map(str, x))})")
        if rest and tuple(rest[0]) != (x[0],):
            raise ValueError(f"TransformerEncoderLayer: src_key_padding_mask must have shape (batch, {x[0]}), "
                             f"got (batch, {', '.join(map(str, rest[0]))})")
        return tuple(x)

    # ------------------------------------------------------------- compute
    def _run(self, ctx, names, h):
        """h through the named sublayers in order (a missing dropout is the identity)."""
        for name in names:
            layer = self._drops.get(name) if name.startswith("dropout") else getattr(self, name)
            if layer is None:
                continue
            c = ctx.child()
            h = layer._forward_impl(c, h)
            ctx.records.append((layer, c))
        return h

    @staticmethod
    def _back(ctx, count, g):
        """g back through the last count records of ctx (popped)."""
        for _ in range(count):
            layer, c = ctx.records.pop()
            g = layer._backward_impl(c, g)
        return g

    def _attention_block(self, ctx, h, mask):
        c = ctx.child()
        a = self.self_attn.attend(c, h, h, mask, self_attention=True)
        ctx.attn = c
        start = len(ctx.records)
        a = self._run(ctx, ["dropout1"], a)
        ctx.n_attn_drop = len(ctx.records) - start
        return a

    def _feed_forward(self, ctx, h):
        start = len(ctx.records)
        f = self._run(ctx, ["linear1", "activation", "dropout", "linear2", "dropout2"], h)
        ctx.n_ff = len(ctx.records) - start
        return f

    def forward(self, ctx, x):
        x, mask = (x[0], x[1]) if self._multi else (x, None)
        ctx.records = []
        if self.norm_first:
            h = x + self._attention_block(ctx, self._run(ctx, ["norm1"], x), mask)
            return h + self._feed_forward(ctx, self._run(ctx, ["norm2"], h))
        h = self._run(ctx, ["norm1"], x + self._attention_block(ctx, x, mask))
        return self._run(ctx, ["norm2"], h + self._feed_forward(ctx, h))

    def _attention_back(self, ctx, g):
        g = self._back(ctx, ctx.n_attn_drop, g)
        return self.self_attn.backward_parts(ctx.attn, g, True)[0]

    def backward(self, ctx, dy):
        if self.norm_first:
            # out = h + ff(norm2(h)); h = x + attn(norm1(x))
            dh = dy + self._back(ctx, 1, self._back(ctx, ctx.n_ff, dy))
            dx = dh + self._back(ctx, 1, self._attention_back(ctx, dh))
        else:
            # out = norm2(h + ff(h)); h = norm1(x + attn(x))
            ds = self._back(ctx, 1, dy)
            dh = ds + self._back(ctx, ctx.n_ff, ds)
            dr = self._back(ctx, 1, dh)
            dx = dr + self._attention_back(ctx, dr)
        if not ctx.need_dx:
            return None
        return [dx, None] if self._multi else dx
