"""Export a model (Sequential or graph) to ONNX, to run it in onnxruntime, OpenVINO, TensorRT, a browser...

    model.export_onnx("model.onnx")                  # needs: pip install 'fastnn[onnx]'
    import onnxruntime as ort
    sess = ort.InferenceSession("model.onnx")
    logits = sess.run(None, {"input": X.astype(np.float32)})[0]   # == model.predict(X)

One ONNX node (or two) per layer, weights as initializers in the model's dtype:

    Dense          Gemm(x, W, b, transB=1)         (PyTorch's (out, in) layout as is)
    Sigmoid/Tanh/ReLU/LeakyReLU/Softmax   Sigmoid/Tanh/Relu/LeakyRelu(alpha)/Softmax(axis=-1)
    Step           Cast(Greater(x, 0))
    Flatten        Flatten(axis=1)
    Reshape        Reshape(x, [0, *shape])          (0 keeps the batch axis)
    Conv1D/Conv2D  Conv(strides, pads, kernel_shape); padding='same' with an even kernel pads
                   one less at the begin (torch's extra zero at the end)
    Max/AvgPool    MaxPool / AveragePool (kernel_shape, strides, no padding, floor mode)
    Add / Concatenate / Residual   Add / Concat(axis) / the inner layers, then Add
    Dense on (N, ..., F)           MatMul(x, W.T) + Add(b)
    RNN / LSTM / GRU               Transpose to time-major, RNN / LSTM / GRU (gate blocks reordered
                                   from PyTorch's: LSTM ifgo -> iofc, GRU rzn -> zrh with
                                   linear_before_reset=1), Transpose + Reshape back to batch-first
    GELU           x/2 (1 + Erf(x / sqrt 2)), or the tanh form (ONNX's Gelu op is opset 20)
    SiLU / ELU     Mul(x, Sigmoid(x)) / Elu(alpha) (float64: Where, Exp, ... to keep alpha float64)
    Softplus       (Relu(z) + Log(1 + Exp(-|z|))) / beta, z = beta x; x itself where z > threshold
    LayerNorm      LayerNormalization(axis=-k) (float32, opset 17+); else ReduceMean, Sub, Sqrt, Div, ...
    BatchNorm1D/2D BatchNormalization with the running statistics (float32); float64: Mul + Add
                   by per-channel scale and shift folded in float64 (ONNX's epsilon is a float32)
    GlobalAvgPool  ReduceMean over the spatial axes (keepdims=0)
    Dropout        Identity (inference)
    Embedding      Gather(weight, indices, axis=0); an input that feeds Embedding is int64
    MultiHeadAttention   MatMul projections, Reshape/Transpose into heads, scaled MatMul scores,
                   Trilu (causal) / the key_padding_mask input as -inf by Where, Softmax (a fully
                   masked row zeroed, as fastnn does), MatMul with v, heads merged, out_proj
    TransformerEncoderLayer  its sublayers' nodes (dropout: the identity) and the residual Adds

The batch axis is named "N" (any size). The other input axes come from
``input_shape`` (without the batch axis) when given, else from the first layer
where it fixes them (Dense: in_features; Conv: channels, with the spatial axes
left symbolic; RNN/LSTM/GRU: a symbolic time axis "T" and input_size; attention: "L" and
the embedding size; Embedding: a sequence of indices "L"). onnxruntime's
CPU kernels for Conv, pooling and RNN/LSTM/GRU take float32 only (a float64 model exports
as valid ONNX that onnx.reference runs); float64 Dense and activation layers run there too.
A layer the exporter does not know raises NotImplementedError.
"""
import numpy as np

from . import layers as L
from .model import Sequential

DEFAULT_OPSET = 17


def _onnx():
    try:
        import onnx
    except ImportError as exc:
        raise ImportError("ONNX export needs the onnx package: pip install 'fastnn[onnx]'") from exc
    return onnx


def _input_dims(model, input_shape):
    if input_shape is not None:
        shape = tuple(int(s) for s in input_shape)
        model.output_shape(shape)  # a clear ValueError when the model cannot take it
        return list(shape)
    first = model.layers[0]
    if isinstance(first, L.Dense):
        return [first.in_features]
    if isinstance(first, (L.Conv1D, L.Conv2D)):
        return [first.in_channels] + (["L"] if first.dims == 1 else ["H", "W"])
    if isinstance(first, tuple(_GATE_ORDER)):
        return ["T", first.input_size]
    if type(first).__name__ == "Embedding":
        return ["L"]   # a sequence of token indices
    if type(first).__name__ in ("MultiHeadAttention", "TransformerEncoderLayer"):
        return ["L", getattr(first, "embed_dim", None) or first.d_model]
    raise ValueError(f"cannot tell the input shape of a model that starts with "
                     f"{type(first).__name__}: pass input_shape (without the batch axis)")


def _output_dims(model, dims):
    """Output axes: sizes where the input fixes them, names where they follow symbolic input axes."""
    if all(isinstance(d, int) for d in dims):
        return list(model.output_shape(tuple(dims)))
    try:
        probes = [model.output_shape(tuple(d if isinstance(d, int) else size for d in dims))
                  for size in (64, 97)]
        return [a if a == b else f"out_{i}" for i, (a, b) in enumerate(zip(*probes), start=1)]
    except ValueError:  # e.g. Flatten then Dense: only one spatial size fits
        pass
    for i in range(len(model.layers) - 1, -1, -1):
        if isinstance(model.layers[i], L.Dense):
            shape = (model.layers[i].out_features,)
            for layer in model.layers[i + 1:]:
                shape = layer.output_shape(shape)
            return list(shape)
    raise ValueError("cannot tell the output shape: pass input_shape (without the batch axis)")


class _Graph:
    def __init__(self, onnx, dtype):
        self.onnx, self.dtype = onnx, np.dtype(dtype)
        self.nodes, self.inits, self.count = [], [], 0
        self.rank = {}   # tensor name -> its rank, batch axis included

    def name(self, stem):
        self.count += 1
        return f"{stem}_{self.count}"

    def const(self, stem, value, dtype=None):
        name = self.name(stem)
        array = np.asarray(value, dtype=dtype or self.dtype)
        self.inits.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op, inputs, stem, out=None, **attrs):
        out = out or self.name(stem)
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [out], name=self.name(op), **attrs))
        return out

    def nodes_out(self, op, inputs, outputs, **attrs):
        """A node with several outputs; outputs: a stem per output, or None for an unused one."""
        names = ["" if o is None else self.name(o) for o in outputs]
        self.nodes.append(self.onnx.helper.make_node(op, inputs, names, name=self.name(op), **attrs))
        return names


_SIMPLE = {L.Sigmoid: "Sigmoid", L.Tanh: "Tanh", L.ReLU: "Relu"}

# ONNX's gate blocks (rows of W, R and B) taken from ours (PyTorch's): LSTM i,f,g,o -> i,o,f,c;
# GRU r,z,n -> z,r,h; RNN has one block.
_GATE_ORDER = {L.RNN: ("RNN", [0]), L.LSTM: ("LSTM", [0, 3, 1, 2]), L.GRU: ("GRU", [1, 0, 2])}


def _recurrent(graph, stem, layer, x, params):
    """RNN/LSTM/GRU as ONNX's op of the same name on a time-major copy of x:
    (N, T, F) -> (N, T, H*dirs) (return_sequences) or (N, H*dirs) (each direction's final state).
    A stack (num_layers > 1) is one op per layer, each on the whole output sequence of the one below."""
    layers = getattr(layer, "num_layers", 1)
    for k in range(layers):
        x = _recurrent_layer(graph, stem if k == 0 else f"{stem}_l{k}", layer, x, params, layer._tag(k) if layers > 1 else "",
                             layer.return_sequences or k < layers - 1)
    return x


def _recurrent_layer(graph, stem, layer, x, params, tag, sequences):
    op, order = _GATE_ORDER[type(layer)]
    hid = layer.hidden_size

    def blocks(a):
        return np.concatenate([a[k * hid:(k + 1) * hid] for k in order], axis=0)

    w, r, b = [], [], []
    for s in layer._suffixes:   # ONNX's direction axis: forward, then reverse, as our halves
        w.append(blocks(params["weight_ih" + tag + s]))
        r.append(blocks(params["weight_hh" + tag + s]))
        b.append(np.concatenate([blocks(params["bias_ih" + tag + s]), blocks(params["bias_hh" + tag + s])]))
    attrs = dict(hidden_size=hid, direction="bidirectional" if layer.bidirectional else "forward")
    if op == "GRU":
        attrs["linear_before_reset"] = 1   # PyTorch's n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    # onnxruntime's CPU kernels take only layout=0 (time-major): transpose around the op.
    xt = graph.node("Transpose", [x], stem, perm=[1, 0, 2])
    inputs = [xt, graph.const(f"{stem}.W", np.stack(w)), graph.const(f"{stem}.R", np.stack(r)),
              graph.const(f"{stem}.B", np.stack(b))]
    width = graph.const(f"{stem}.shape", [0, 0, hid * len(w)] if sequences
                        else [0, hid * len(w)], dtype=np.int64)
    if sequences:
        y, = graph.nodes_out(op, inputs, [f"{stem}.Y"], **attrs)          # (T, dirs, N, H)
        y = graph.node("Transpose", [y], stem, perm=[2, 0, 1, 3])          # (N, T, dirs, H)
    else:
        _, y = graph.nodes_out(op, inputs, [None, f"{stem}.Y_h"], **attrs)  # (dirs, N, H)
        y = graph.node("Transpose", [y], stem, perm=[1, 0, 2])             # (N, dirs, H)
    return graph.node("Reshape", [y, width], stem)                         # forward half first


def _out_rank(layer, ranks):
    """The rank (batch axis included) of what layer makes from inputs of the given ranks."""
    if isinstance(layer, L.Flatten):
        return 2
    if isinstance(layer, L.Reshape):
        return 1 + len(layer.shape)
    if isinstance(layer, tuple(_GATE_ORDER)):
        return 3 if layer.return_sequences else 2
    if isinstance(layer, _GLOBAL_POOLS):
        return 2
    if type(layer).__name__ == "Embedding":
        return ranks[0] + 1
    return ranks[0]


def _layer(graph, prefix, layer, xs, weights, prefixes):
    """The ONNX nodes of one layer call on input names xs; returns the output name."""
    out = _layer_nodes(graph, prefix, layer, xs, weights, prefixes)
    graph.rank[out] = _out_rank(layer, [graph.rank[x] for x in xs])
    return out


def _layer_nodes(graph, prefix, layer, xs, weights, prefixes):
    stem = f"l{prefix}"
    kind = type(layer)
    params = {name: weights[f"{prefix}.{name}"] for name in (*layer.param_shapes(), *layer.buffer_shapes())}
    if kind is L.Add:
        out = xs[0]
        for other in xs[1:]:
            out = graph.node("Add", [out, other], stem)
        return out
    if kind is L.Concatenate:
        return graph.node("Concat", list(xs), stem, axis=layer.axis)
    if kind is L.Residual:
        h = xs[0]
        for sub in layer.layers:
            h = _layer(graph, prefixes[id(sub)], sub, [h], weights, prefixes)
        return graph.node("Add", [xs[0], h], stem)
    x = xs[0]
    if isinstance(layer, L.Dense) and kind.forward is L.Dense.forward:
        kind = L.Dense   # a subclass that computes as Dense (e.g. MultiHeadAttention's out_proj)
    if kind is L.Dense and graph.rank[x] != 2:   # any rank: the last axis, as Dense computes
        y = graph.node("MatMul", [x, graph.const(f"{stem}.weight_t", params["weight"].T)], stem)
        return graph.node("Add", [y, graph.const(f"{stem}.bias", params["bias"])], stem) if layer.use_bias else y
    if kind is L.Dense:
        inputs = [x, graph.const(f"{stem}.weight", params["weight"])]
        if layer.use_bias:
            inputs.append(graph.const(f"{stem}.bias", params["bias"]))
        return graph.node("Gemm", inputs, stem, transB=1)
    if kind in _SIMPLE:
        return graph.node(_SIMPLE[kind], [x], stem)
    if kind is L.LeakyReLU:
        if graph.dtype == np.float64:  # the alpha attribute is a float32: keep float64's slope exact
            return graph.node("PRelu", [x, graph.const(f"{stem}.alpha", [layer.alpha])], stem)
        return graph.node("LeakyRelu", [x], stem, alpha=float(layer.alpha))
    if kind is L.Softmax:
        return graph.node("Softmax", [x], stem, axis=-1)
    if kind is L.Step:
        positive = graph.node("Greater", [x, graph.const(f"{stem}.zero", 0)], stem)
        return graph.node("Cast", [positive], stem, to=graph.onnx.helper.np_dtype_to_tensor_dtype(graph.dtype))
    if kind is L.Flatten:
        return graph.node("Flatten", [x], stem, axis=1)
    if kind is L.Reshape:
        shape = graph.const(f"{stem}.shape", [0, *layer.shape], dtype=np.int64)
        return graph.node("Reshape", [x, shape], stem)
    if kind in (L.Conv1D, L.Conv2D):
        return graph.node(
            "Conv", [x, graph.const(f"{stem}.weight", params["weight"]),
                     graph.const(f"{stem}.bias", params["bias"])], stem,
            kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
            # begins then ends; padding='same' with an even kernel pads one less at the begin
            pads=[p - c for p, c in zip(layer.padding, layer._crop)] + list(layer.padding),
            dilations=[1] * layer.dims, group=1)
    if kind in (L.MaxPool1D, L.MaxPool2D, L.AvgPool1D, L.AvgPool2D):
        op = "MaxPool" if layer.kind == "max" else "AveragePool"
        return graph.node(op, [x], stem, kernel_shape=list(layer.kernel_size),
                          strides=list(layer.stride))
    if kind in _GATE_ORDER:
        return _recurrent(graph, stem, layer, x, params)
    new = _new_layer(graph, stem, layer, xs, params,
                     lambda sub, ins: _layer(graph, prefixes[id(sub)], sub, ins, weights, prefixes))
    if new is not None:
        return new
    raise NotImplementedError(f"ONNX export does not support {kind.__name__} layers yet")


# ---------------------------------------------------------------- issue 10's layers (branch onnx)
_GLOBAL_POOLS = tuple(getattr(L, n) for n in ("GlobalAvgPool1D", "GlobalAvgPool2D") if hasattr(L, n))


def _gelu(graph, stem, layer, x):
    """torch's GELU from elementary ops (ONNX's Gelu op is opset 20):
    x/2 (1 + erf(x / sqrt 2)), or x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    if layer.approximate == "tanh":
        x3 = graph.node("Mul", [graph.node("Mul", [x, x], stem), x], stem)
        inner = graph.node("Add", [x, graph.node("Mul", [x3, graph.const(f"{stem}.c", 0.044715)], stem)], stem)
        u = graph.node("Mul", [inner, graph.const(f"{stem}.k", np.sqrt(2.0 / np.pi))], stem)
        t = graph.node("Tanh", [u], stem)
    else:
        t = graph.node("Erf", [graph.node("Mul", [x, graph.const(f"{stem}.k", np.sqrt(0.5))], stem)], stem)
    half_x = graph.node("Mul", [x, graph.const(f"{stem}.half", 0.5)], stem)
    return graph.node("Mul", [half_x, graph.node("Add", [t, graph.const(f"{stem}.one", 1.0)], stem)], stem)


def _reduce_mean(graph, stem, x, axes, keepdims):
    if graph.opset >= 18:   # axes became an input in opset 18
        return graph.node("ReduceMean", [x, graph.const(f"{stem}.axes", axes, dtype=np.int64)], stem,
                          keepdims=keepdims)
    return graph.node("ReduceMean", [x], stem, axes=axes, keepdims=keepdims)


def _layer_norm(graph, stem, layer, x, params):
    """LayerNormalization (opset 17) in float32; composed from ReduceMean, Sub, Sqrt, ... in float64
    (its epsilon attribute is a float32) and before opset 17."""
    k = len(layer.normalized_shape)
    weight, bias = params.get("weight"), params.get("bias")
    if graph.dtype == np.float32 and graph.opset >= 17:
        inputs = [x, graph.const(f"{stem}.weight", np.ones(layer.normalized_shape) if weight is None else weight)]
        if bias is not None:
            inputs.append(graph.const(f"{stem}.bias", bias))
        return graph.node("LayerNormalization", inputs, stem, axis=-k, epsilon=float(layer.eps))
    axes = list(range(-k, 0))
    d = graph.node("Sub", [x, _reduce_mean(graph, stem, x, axes, keepdims=1)], stem)
    var = _reduce_mean(graph, stem, graph.node("Mul", [d, d], stem), axes, keepdims=1)
    std = graph.node("Sqrt", [graph.node("Add", [var, graph.const(f"{stem}.eps", layer.eps)], stem)], stem)
    y = graph.node("Div", [d, std], stem)
    if weight is not None:
        y = graph.node("Mul", [y, graph.const(f"{stem}.weight", weight)], stem)
    if bias is not None:
        y = graph.node("Add", [y, graph.const(f"{stem}.bias", bias)], stem)
    return y


def _attention(graph, stem, layer, xs, params, sub):
    """MultiHeadAttention from MatMul, Softmax, ...: q, k, v projections, per-head scaled scores,
    the causal and key-padding masks (-inf), softmax (a row with every key masked: zeros, as
    fastnn computes it), p @ v, heads merged, out_proj."""
    e, h = layer.embed_dim, layer.num_heads
    d = e // h
    query = xs[0]
    key_value = xs[1] if len(xs) > 1 else query
    w, b = params["in_proj_weight"], params.get("in_proj_bias")

    def project(x, i, perm):
        y = graph.node("MatMul", [x, graph.const(f"{stem}.w{'qkv'[i]}", w[i * e:(i + 1) * e].T)], stem)
        if b is not None:
            y = graph.node("Add", [y, graph.const(f"{stem}.b{'qkv'[i]}", b[i * e:(i + 1) * e])], stem)
        y = graph.node("Reshape", [y, graph.const(f"{stem}.heads", [0, 0, h, d], dtype=np.int64)], stem)
        return graph.node("Transpose", [y], stem, perm=perm)   # heads second

    q = graph.node("Mul", [project(query, 0, [0, 2, 1, 3]), graph.const(f"{stem}.scale", 1.0 / np.sqrt(d))], stem)
    scores = graph.node("MatMul", [q, project(key_value, 1, [0, 2, 3, 1])], stem)   # (N, h, L, S)
    ignored = None
    if layer.causal:   # key j > query i: Trilu over ones the size of the scores' last two axes
        size = graph.node("Slice", [graph.node("Shape", [scores], stem),
                                    graph.const(f"{stem}.from", [2], dtype=np.int64),
                                    graph.const(f"{stem}.to", [4], dtype=np.int64)], stem)
        ones = graph.node("ConstantOfShape", [size], stem,
                          value=graph.onnx.numpy_helper.from_array(np.ones(1, graph.dtype)))
        above = graph.node("Trilu", [ones, graph.const(f"{stem}.k", 1, dtype=np.int64)], stem, upper=1)
        ignored = graph.node("Cast", [above], stem, to=graph.onnx.TensorProto.BOOL)
    if len(xs) > 2:    # key_padding_mask (N, S): nonzero = that key is ignored
        pad = graph.node("Not", [graph.node("Equal", [xs[2], graph.const(f"{stem}.zero", 0)], stem)], stem)
        pad = graph.node("Unsqueeze", [pad, graph.const(f"{stem}.axes", [1, 2], dtype=np.int64)], stem)
        ignored = pad if ignored is None else graph.node("Or", [ignored, pad], stem)
    if ignored is not None:
        scores = graph.node("Where", [ignored, graph.const(f"{stem}.ninf", -np.inf), scores], stem)
    p = graph.node("Softmax", [scores], stem, axis=-1)
    if len(xs) > 2:    # every key masked: softmax gives NaN, fastnn zeros
        p = graph.node("Where", [graph.node("IsNaN", [p], stem), graph.const(f"{stem}.zero", 0), p], stem)
    out = graph.node("MatMul", [p, project(key_value, 2, [0, 2, 1, 3])], stem)      # (N, h, L, d)
    out = graph.node("Transpose", [out], stem, perm=[0, 2, 1, 3])
    out = graph.node("Reshape", [out, graph.const(f"{stem}.merge", [0, 0, e], dtype=np.int64)], stem)
    graph.rank[out] = 3
    return sub(layer.out_proj, [out])


def _encoder_layer(graph, stem, layer, xs, sub):
    """TransformerEncoderLayer from its sublayers' exports (dropout is the identity in inference)."""
    x, extra = xs[0], list(xs[1:])

    def attention(h):
        return sub(layer.self_attn, [h, h, *extra] if extra else [h])

    def feed_forward(h):
        for part in (layer.linear1, layer.activation, layer.linear2):
            h = sub(part, [h])
        return h

    def add(a, c):
        out = graph.node("Add", [a, c], stem)
        graph.rank[out] = 3
        return out

    if layer.norm_first:
        h = add(x, attention(sub(layer.norm1, [x])))
        return add(h, feed_forward(sub(layer.norm2, [h])))
    h = sub(layer.norm1, [add(x, attention(x))])
    return sub(layer.norm2, [add(h, feed_forward(h))])


def _new_layer(graph, stem, layer, xs, params, sub):
    """The nodes of issue 10's layers, or None for a layer this does not know.
    sub(sublayer, inputs) exports a sublayer (its own prefix and weights)."""
    kind = type(layer).__name__
    if kind == "MultiHeadAttention":
        return _attention(graph, stem, layer, xs, params, sub)
    if kind == "TransformerEncoderLayer":
        return _encoder_layer(graph, stem, layer, xs, sub)
    x = xs[0]
    if kind == "Embedding":  # int64 indices (any shape) -> rows of the table
        return graph.node("Gather", [graph.const(f"{stem}.weight", params["weight"]), x], stem, axis=0)
    if kind == "Dropout":    # inference: the identity
        return graph.node("Identity", [x], stem)
    if kind == "GELU":
        return _gelu(graph, stem, layer, x)
    if kind == "SiLU":
        return graph.node("Mul", [x, graph.node("Sigmoid", [x], stem)], stem)
    if kind == "ELU":
        if graph.dtype == np.float32:
            return graph.node("Elu", [x], stem, alpha=float(layer.alpha))
        # float64: composed, so alpha stays float64 (ONNX's attribute is a float32)
        neg = graph.node("Sub", [graph.node("Exp", [graph.node("Min", [x, graph.const(f"{stem}.zero", 0)], stem)], stem),
                                 graph.const(f"{stem}.one", 1)], stem)
        neg = graph.node("Mul", [neg, graph.const(f"{stem}.alpha", layer.alpha)], stem)
        return graph.node("Where", [graph.node("Greater", [x, graph.const(f"{stem}.zero", 0)], stem), x, neg], stem)
    if kind == "Softplus":   # ONNX's Softplus has no beta or threshold: log(1 + exp(-|z|)) + max(z, 0)
        z = graph.node("Mul", [x, graph.const(f"{stem}.beta", layer.beta)], stem)
        tail = graph.node("Exp", [graph.node("Neg", [graph.node("Abs", [z], stem)], stem)], stem)
        soft = graph.node("Add", [graph.node("Relu", [z], stem),
                                  graph.node("Log", [graph.node("Add", [tail, graph.const(f"{stem}.one", 1)], stem)], stem)], stem)
        soft = graph.node("Div", [soft, graph.const(f"{stem}.beta", layer.beta)], stem)
        linear = graph.node("Greater", [z, graph.const(f"{stem}.threshold", layer.threshold)], stem)
        return graph.node("Where", [linear, x, soft], stem)
    if kind == "LayerNorm":
        return _layer_norm(graph, stem, layer, x, params)
    if kind in ("BatchNorm1D", "BatchNorm2D"):   # inference: the running statistics
        names = ("weight", "bias", "running_mean", "running_var")
        if graph.dtype == np.float32:
            return graph.node("BatchNormalization", [x] + [graph.const(f"{stem}.{n}", params[n]) for n in names],
                              stem, epsilon=float(layer.eps))
        # float64: folded into y = x * scale + shift, computed here in float64 (epsilon is a float32 attribute)
        w, b, mean, var = (np.asarray(params[n], np.float64) for n in names)
        scale = w / np.sqrt(var + layer.eps)
        per_channel = (-1,) + (1,) * (graph.rank[x] - 2)   # broadcast over (N, C, ...)
        y = graph.node("Mul", [x, graph.const(f"{stem}.scale", scale.reshape(per_channel))], stem)
        return graph.node("Add", [y, graph.const(f"{stem}.shift", (b - mean * scale).reshape(per_channel))], stem)
    if kind in ("GlobalAvgPool1D", "GlobalAvgPool2D"):
        # ReduceMean, not GlobalAveragePool: onnxruntime runs it in float64 too
        return _reduce_mean(graph, stem, x, list(range(2, 2 + layer.dims)), keepdims=0)
    return None


def to_onnx(model, input_shape=None, opset=DEFAULT_OPSET):
    """The model as an onnx.ModelProto (checked by onnx.checker): inputs "input" (or
    "input_0", "input_1", ... for a graph with several), outputs "output" (or "output_k")."""
    onnx = _onnx()
    helper = onnx.helper
    opset = int(opset)
    if opset < 13:
        raise ValueError(f"ONNX export needs opset 13 or later (Softmax over the last axis), got {opset}")
    g_nodes = model._graph
    sequential = isinstance(model, Sequential)
    if sequential:
        in_dims = [_input_dims(model, input_shape)]
        out_dims = [_output_dims(model, in_dims[0])]
    else:
        in_dims = [list(n.shape) for n in g_nodes.inputs]
        out_dims = [list(n.shape) for n in g_nodes.outputs]
    in_names = ["input"] if len(in_dims) == 1 else [f"input_{i}" for i in range(len(in_dims))]
    out_names = ["output"] if len(out_dims) == 1 else [f"output_{i}" for i in range(len(out_dims))]
    graph = _Graph(onnx, model.dtype)
    graph.opset = opset
    weights = model.state_dict()  # host copies, whatever the backend
    names = {id(n): name for n, name in zip(g_nodes.inputs, in_names)}
    graph.rank.update({name: 1 + len(d) for name, d in zip(in_names, in_dims)})
    for node in g_nodes.nodes:
        if node.layer is not None:
            names[id(node)] = _layer(graph, model._prefix[id(node.layer)], node.layer,
                                     [names[id(i)] for i in node.inputs], weights, model._prefix)
    renamed = {}
    for node, out in zip(g_nodes.outputs, out_names):
        produced = names[id(node)]
        producer = next((n for n in graph.nodes if n.output[0] == produced), None)
        if producer is None or produced in renamed:   # an input, or an output named already
            graph.node("Identity", [renamed.get(produced, produced)], "out", out=out)
            continue
        producer.output[0] = renamed[produced] = out
        for n in graph.nodes:
            n.input[:] = [out if i == produced else i for i in n.input]
    elem = helper.np_dtype_to_tensor_dtype(model.dtype)
    # an input that feeds Embedding layers takes int64 indices, as model.predict does
    in_elems = [onnx.TensorProto.INT64 if readers else elem for readers in model._index_layers]
    g = helper.make_graph(
        graph.nodes, "fastnn_" + type(model).__name__.lower(),
        [helper.make_tensor_value_info(n, e, ["N", *d]) for n, e, d in zip(in_names, in_elems, in_dims)],
        [helper.make_tensor_value_info(n, elem, ["N", *d]) for n, d in zip(out_names, out_dims)],
        initializer=graph.inits)
    opset_import = [helper.make_opsetid("", opset)]
    proto = helper.make_model(g, opset_imports=opset_import, producer_name="fastnn",
                              ir_version=helper.find_min_ir_version_for(opset_import))
    proto.doc_string = f"fastnn {type(model).__name__}: {[type(l).__name__ for l in model.layers]}"
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(model, path, input_shape=None, opset=DEFAULT_OPSET):
    """Write model to path as ONNX; returns the onnx.ModelProto."""
    proto = to_onnx(model, input_shape=input_shape, opset=opset)
    _onnx().save(proto, str(path))
    return proto
