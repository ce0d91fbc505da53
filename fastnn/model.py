"""Models: a graph of layer calls (Model) or a chain (Sequential), parameters in one flat buffer.

Every parameter of a model lives in one flat buffer and every gradient in
another, so an optimizer step, a clip or an allreduce is one kernel call; the
layers' non-trainable buffers (running statistics) live in a third. A layer
object called twice is one set of parameters whose gradients add up.

``forward`` records a tape (per thread) that ``backward`` consumes; ``predict``
runs in inference mode without a tape, so it never disturbs a pending step.
"""
import math
import threading
import weakref
from collections import Counter, namedtuple

import numpy as np

from . import graph as G
from ._kernels import checks
from .backend import get_backend
from .layers.base import Layer, positive_int, trainable_version
from .threads import backend_threads

DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}


class TapeError(RuntimeError, ValueError):
    """backward() without a pending forward(), or twice for one forward."""


class StateDictError(RuntimeError, ValueError):
    """load_state_dict: keys that do not match (strict), a shape mismatch, or a bad tensor.
    A RuntimeError as torch raises, and a ValueError as fastnn's checks raise."""


class IncompatibleKeys(namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])):
    """What load_state_dict returns, as torch's _IncompatibleKeys: the model's keys the
    state_dict lacked and the state_dict's keys the model has no place for."""
    __slots__ = ()

    def __repr__(self):
        if not self.missing_keys and not self.unexpected_keys:
            return "<All keys matched successfully>"
        return super().__repr__()

    __str__ = __repr__


_IncompatibleKeys = IncompatibleKeys   # torch's name


class Parameter:
    """One named tensor of a layer: ``data`` and ``grad`` are views into the
    model's flat buffers, so an optimizer can update every parameter at once."""

    def __init__(self, name, data, grad):
        self.name, self.data, self.grad = name, data, grad

    @property
    def shape(self):
        return self.data.shape

    def __repr__(self):
        return f"Parameter({self.name!r}, shape={self.data.shape}, dtype={self.data.dtype})"


class Parameters(list):
    """The list model.parameters() returns; ``flat_data``/``flat_grad`` are the
    1-D buffers every parameter lives in, ``backend`` the model's backend."""

    def __init__(self, items, flat_data, flat_grad, backend):
        super().__init__(items)
        self.flat_data, self.flat_grad, self.backend = flat_data, flat_grad, backend


def _dtype(dtype):
    try:
        key = np.dtype(dtype).name
    except TypeError:
        key = None
    if key not in DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return DTYPES[key]


def named_layers(top):
    """(prefix, layer) for every layer of ``top`` (index-named) and every sublayer
    ('2.0'), each object once, at its first place: the keys of state_dict."""
    out, seen = [], set()
    for index, layer in enumerate(top):
        for prefix, sub in _walk(layer, str(index)):
            if id(sub) not in seen:
                seen.add(id(sub))
                out.append((prefix, sub))
    return out


def expected_state_shapes(top):
    """name -> shape of every parameter and buffer a model of these layers holds."""
    shapes = {}
    for prefix, layer in named_layers(top):
        for name, shape in {**layer.param_shapes(), **layer.buffer_shapes()}.items():
            shapes[f"{prefix}.{name}"] = tuple(int(d) for d in shape)
    return shapes


def _walk(layer, prefix):
    """(prefix, layer) for a layer and, depth first, the layers inside it."""
    yield prefix, layer
    for name, sub in layer.sublayers():
        yield from _walk(sub, f"{prefix}.{name}")


class Model:
    """A graph model: ``fnn.Model(inputs=fnn.Input(...), outputs=...)``, either a
    symbolic tensor or a list of them."""

    def __init__(self, inputs, outputs, backend=None, dtype="float32", seed=0):
        self._multi_in = isinstance(inputs, (list, tuple))
        self._multi_out = isinstance(outputs, (list, tuple))
        in_nodes, out_nodes = G.as_tensors(inputs, "inputs"), G.as_tensors(outputs, "outputs")
        if any(n.layer is not None for n in in_nodes):
            raise TypeError("Model inputs must be fnn.Input tensors")
        self._setup(G.Graph(in_nodes, out_nodes), backend, dtype, seed)

    def _setup(self, graph, backend, dtype, seed):
        self._graph = graph
        self.backend = get_backend(backend)
        self.dtype = _dtype(dtype)
        self.seed = seed
        self.training = True
        self._pending = threading.local()
        self._lock = G.backend_lock(self.backend)
        self._index_layers = _index_consumers(graph)
        self._build(np.random.default_rng(seed))

    @property
    def layers(self):
        """The model's layers, each once, in the order of their first call."""
        return list(self._graph.layers)

    # ------------------------------------------------------------ building
    def _named_layers(self):
        return named_layers(self._graph.layers)

    def _build(self, rng):
        named = self._named_layers()
        for _, layer in named:
            owner = getattr(layer, "_owner", None)
            owner = owner() if owner is not None else None
            if owner is not None and owner is not self:
                raise ValueError(f"{layer!r} already belongs to another model: layers share weights "
                                 "within one model; build a new layer (or copy its state_dict)")
        specs = [(prefix, layer, layer.param_shapes(), layer.buffer_shapes()) for prefix, layer in named]
        size = lambda shape: int(np.prod(shape))
        n_params = sum(size(s) for _, _, ps, _ in specs for s in ps.values())
        n_buffers = sum(size(s) for _, _, _, bs in specs for s in bs.values())
        # Initial values are filled on the host, then the buffers go where the
        # backend computes (on CPU backends to_device leaves them in place).
        host, host_buf = np.zeros(n_params, self.dtype), np.zeros(n_buffers, self.dtype)
        off = boff = 0
        for _, layer, pshapes, bshapes in specs:
            initial, initial_buf = layer.init_params(rng), layer.init_buffers()
            for name, shape in pshapes.items():
                host[off:off + size(shape)].reshape(shape)[...] = initial[name]
                off += size(shape)
            for name, shape in bshapes.items():
                host_buf[boff:boff + size(shape)].reshape(shape)[...] = initial_buf[name]
                boff += size(shape)
        self._flat_data = self.backend.to_device(host)
        self._flat_grad = self.backend.zeros(n_params, self.dtype)
        self._flat_buffers = self.backend.to_device(host_buf)
        self._params, self._buffers, self._prefix = [], [], {}
        off = boff = 0
        for prefix, layer, pshapes, bshapes in specs:
            params, grads, buffers = {}, {}, {}
            for name, shape in pshapes.items():
                params[name] = self._flat_data[off:off + size(shape)].reshape(shape)
                grads[name] = self._flat_grad[off:off + size(shape)].reshape(shape)
                param = Parameter(f"{prefix}.{name}", params[name], grads[name])
                # where it lives in the flat buffer, its owner and the backend its buffers are on
                param.offset, param.layer, param.backend = off, layer, self.backend
                self._params.append(param)
                off += size(shape)
            for name, shape in bshapes.items():
                buffers[name] = self._flat_buffers[boff:boff + size(shape)].reshape(shape)
                self._buffers.append((f"{prefix}.{name}", buffers[name]))
                boff += size(shape)
            layer.build(self.backend, self.dtype, params, grads, buffers)
            layer._owner = weakref.ref(self)
            self._prefix[id(layer)] = prefix
            seed_rng = getattr(layer, "seed_rng", None)   # issue 10 (acts): Dropout's key from the seed
            if seed_rng is not None:
                seed_rng(self.seed, prefix)

    # ------------------------------------------------------- parameters
    def parameters(self):
        return Parameters(self._params, self._flat_data, self._flat_grad, self.backend)

    def count_params(self):
        return int(sum(p.data.size for p in self._params))

    def state_dict(self):
        """name -> array copy, keyed like PyTorch's ('0.weight', '0.bias', ...), buffers included."""
        out = {p.name: self.backend.to_host(p.data).copy() for p in self._params}
        out.update({name: self.backend.to_host(b).copy() for name, b in self._buffers})
        return out

    def _state_shapes(self):
        shapes = {p.name: tuple(p.data.shape) for p in self._params}
        shapes.update({name: tuple(b.shape) for name, b in self._buffers})
        return shapes

    def load_state_dict(self, state_dict, strict=True):
        """Copy tensors in by name, as torch's Module.load_state_dict: fastnn's keys or torch's
        (also torch.nn.RNN/LSTM/GRU's weight_ih_l0, ..._reverse; values may be torch tensors).
        strict=True: the keys must match exactly, else StateDictError lists the missing and the
        unexpected ones and nothing is loaded. strict=False loads the keys that match. A shape
        mismatch always raises. Returns IncompatibleKeys(missing_keys, unexpected_keys)."""
        if not isinstance(strict, (bool, np.bool_)):
            raise TypeError(f"strict must be True or False, got {strict!r}")
        if not hasattr(state_dict, "keys") or not hasattr(state_dict, "__getitem__"):
            raise TypeError(f"load_state_dict takes a mapping of name -> array, got {type(state_dict).__name__}")
        expected = self._state_shapes()
        found, unexpected = _match_keys(state_dict, expected, self._torch_aliases())
        missing = [name for name in expected if name not in found]
        if strict and (missing or unexpected):
            raise StateDictError(_incompatible_message(type(self).__name__, missing, unexpected))
        values = {}
        for name, given in found.items():   # every check before any tensor is written
            value = _host_array(state_dict[given], given)
            if value.shape != expected[name]:
                alias = "" if given == name else f" (fastnn's {name})"
                raise StateDictError(f"size mismatch for {given}{alias}: the state_dict's tensor has shape "
                                     f"{value.shape}, the model's has shape {expected[name]}")
            if value.dtype.kind not in "fiu":
                raise StateDictError(f"{given}: dtype {value.dtype} is not numeric")
            if not np.isfinite(value).all():
                raise StateDictError(f"{given} holds NaN or inf")
            values[name] = value
        targets = dict((p.name, p.data) for p in self._params)
        targets.update(self._buffers)
        for name, value in values.items():
            targets[name][...] = self.backend.to_device(np.asarray(value, dtype=self.dtype))
        return IncompatibleKeys(missing, unexpected)

    def _torch_aliases(self):
        """torch's name -> fastnn's for every key whose torch name differs (recurrent layers)."""
        aliases = {}
        for prefix, layer in self._named_layers():
            names = getattr(layer, "torch_names", None)
            for ours, theirs in (names() if names is not None else {}).items():
                aliases[f"{prefix}.{theirs}"] = f"{prefix}.{ours}"
        return aliases

    def zero_grad(self):
        self._flat_grad.fill(0)

    # ------------------------------------------------------------- modes
    def train(self, mode=True):
        """Training mode (the default): forward runs layers as in a training step."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Inference mode for forward (Dropout off, BatchNorm on running statistics)."""
        return self.train(False)

    # ------------------------------------------------------------- shapes
    def output_shape(self, input_shape):
        """Output shape (no batch axis; a list for several outputs) for inputs of input_shape."""
        shapes = [n.shape for n in self._graph.outputs]
        given = input_shape if self._multi_in else [input_shape]
        for node, shape in zip(self._graph.inputs, given):
            if tuple(shape) != node.shape:
                raise ValueError(f"the model's input has shape (batch, {', '.join(map(str, node.shape))}), "
                                 f"got (batch, {', '.join(map(str, shape))})")
        return shapes if self._multi_out else shapes[0]

    def _output_shapes(self, xs):
        """Each output's shape (no batch axis) for the checked inputs xs."""
        return [n.shape for n in self._graph.outputs]

    def check_input(self, X, name="X"):
        """X as C-contiguous arrays of the model's dtype (a list for several inputs), or a clear error."""
        if self._multi_in:
            if not isinstance(X, (list, tuple)) or len(X) != len(self._graph.inputs):
                raise ValueError(f"{name} must be a list of {len(self._graph.inputs)} arrays (one per input)")
            xs = [self._check_one(x, f"{name}[{i}]", node.shape, i)
                  for i, (x, node) in enumerate(zip(X, self._graph.inputs))]
            if len({len(x) for x in xs}) != 1:
                raise ValueError(f"{name}: the inputs have different numbers of samples {[len(x) for x in xs]}")
            return xs
        return self._check_one(X, name, self._graph.inputs[0].shape, 0)

    def _check_one(self, x, name, shape, index=0):
        if self._index_layers[index]:     # an input of Embedding layers: int64 indices
            return _check_indices(x, name, shape, self._index_layers[index])
        x = _as_batch(x, name)
        if shape is not None and tuple(x.shape[1:]) != tuple(shape):
            raise ValueError(f"{name} has shape {x.shape}; the model takes (batch, {', '.join(map(str, shape))})")
        if shape is None:
            try:
                self.output_shape(x.shape[1:])
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        if x.size == 0:
            raise ValueError(f"{name} is empty (shape {x.shape})")
        return _finite(np.ascontiguousarray(x, dtype=self.dtype), name)

    def _inputs_list(self, X):
        return list(X) if self._multi_in else [X]

    def _outputs(self, outs):
        return list(outs) if self._multi_out else outs[0]

    # ------------------------------------------------------------ compute
    def forward(self, X):
        """Outputs for a batch (in the model's mode); records the tape backward uses."""
        return self._forward(self.check_input(X))

    def _forward(self, X):
        """forward for inputs already checked (host or device arrays)."""
        xs = [self.backend.to_device(x) for x in self._inputs_list(X)]
        with self._lock:
            outs, tape = self._graph.run(xs, self.training, record=True)
        tape.outputs = [(tuple(o.shape), np.dtype(o.dtype)) for o in outs]
        self._pending.tape = tape
        return self._outputs(outs)

    def backward(self, grad, return_input_grad=False):
        """Backpropagate d loss / d output(s) from the last forward in this thread;
        adds into every parameter's .grad. Returns None, or with return_input_grad
        d loss / d input (a list for several inputs)."""
        tape = getattr(self._pending, "tape", None)
        if tape is None:
            raise TapeError("backward() needs a pending forward(): call model.forward(x) first "
                            "(each forward can be backpropagated once)")
        grads = self._check_grads(grad, tape)
        self._pending.tape = None
        dxs = self._backprop(tape, grads, return_input_grad)
        if return_input_grad:
            return self._outputs_in(dxs)

    def _outputs_in(self, dxs):
        return list(dxs) if self._multi_in else dxs[0]

    def _backprop(self, tape, grads, input_grads=False, after_layer=None, overwrite=None):
        with self._lock:
            return self._graph.backprop(tape, grads, input_grads, after_layer, overwrite)

    def _backprop_fresh(self, tape, grads):
        """zero_grad() then _backprop(tape, grads), without a pass over the whole gradient:
        in a chain, each trainable Dense called once writes its gradient outright, and only
        the other parameters' gradients are zeroed first (the Trainer's step)."""
        plan = self._fresh_plan()
        if plan is None:
            self.zero_grad()
            return self._backprop(tape, grads)
        overwrite, to_zero = plan
        for view in to_zero:
            view.fill(0)
        return self._backprop(tape, grads, overwrite=overwrite)

    def _fresh_plan(self):
        """(ids of the layers that overwrite, the flat-gradient views to zero) for
        _backprop_fresh, or None (not a chain); cached until the plan or a trainable flag changes."""
        chain = self._graph.chain
        key = (id(chain), trainable_version(), id(self._flat_grad))
        cached = getattr(self, "_fresh_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        plan = None
        if chain is not None:
            calls = Counter(id(layer) for layer, _, _ in chain)
            overwrite = frozenset(id(layer) for layer, _, _ in chain
                                  if _overwrites_grads(layer) and layer._trainable
                                  and calls[id(layer)] == 1 and not layer.sublayers())
            ranges = []
            for p in self._params:
                if id(p.layer) in overwrite:
                    continue
                start, stop = p.offset, p.offset + int(p.data.size)
                if ranges and ranges[-1][1] == start:
                    ranges[-1][1] = stop
                else:
                    ranges.append([start, stop])
            plan = (overwrite, [self._flat_grad[a:b] for a, b in ranges])
        self._fresh_cache = (key, plan)
        return plan

    @property
    def fuse(self):
        """Whether the execution plan fuses Dense + activation (linear_act) and BatchNorm + ReLU
        (batch_norm_relu, forward and backward) (True by default)."""
        return self._graph.fuse

    @fuse.setter
    def fuse(self, value):
        self._graph.fuse = bool(value)

    def _check_grads(self, grad, tape):
        many = len(tape.outputs) > 1
        grads = list(grad) if many and isinstance(grad, (list, tuple)) else [grad]
        if len(grads) != len(tape.outputs):
            raise ValueError(f"backward needs {len(tape.outputs)} gradients (one per output, None for none)")
        out = []
        for i, (g, (shape, _)) in enumerate(zip(grads, tape.outputs)):
            if g is None and many:
                out.append(None)
                continue
            what = f"gradient {i}" if many else "gradient"
            if _on_device(g):
                if tuple(g.shape) != shape or np.dtype(g.dtype) != self.dtype:
                    raise ValueError(f"{what}: shape {tuple(g.shape)} / dtype {g.dtype} do not match the "
                                     f"forward output {shape} / {self.dtype}")
                out.append(g)
                continue
            g = checks._array(g, what, allow_empty=True)
            if g.dtype.kind not in "fiu":
                raise TypeError(f"{what} must hold numbers, got dtype {g.dtype}")
            if g.shape != shape:
                raise ValueError(f"{what} has shape {g.shape}, the forward output has shape {shape}")
            out.append(self.backend.to_device(_finite(np.ascontiguousarray(g, dtype=self.dtype), what)))
        return out

    def predict(self, X, batch_size=1024):
        """Outputs in inference mode (logits for a classifier) as numpy arrays, in batches."""
        batch_size = positive_int(batch_size, "batch_size")
        xs = self._inputs_list(self.check_input(X))
        n = len(xs[0])
        with backend_threads(self.backend):
            parts = [self._infer([x[i:i + batch_size] for x in xs]) for i in range(0, n, batch_size)]
        outs = [np.concatenate([p[k] for p in parts]) if len(parts) > 1 else parts[0][k].copy()
                for k in range(len(parts[0]))]
        return self._outputs(outs)

    __call__ = predict

    def _infer(self, xs):
        """Host outputs (a list) for one checked batch, inference mode, no tape."""
        xs = [self.backend.to_device(x) for x in xs]
        with self._lock:
            outs, _ = self._graph.run(xs, False, record=False)
        return [self.backend.to_host(o) for o in outs]

    def _train_forward(self, xs):
        """(outputs list, tape) for one checked device batch in training mode (the Trainer's step)."""
        with self._lock:
            return self._graph.run(xs, True, record=True)

    # ------------------------------------------------------------- summary
    def summary(self, print_fn=print, input_shape=None):
        """A table of layers, output shapes and parameter counts; returns it as a string.
        (A Sequential shows output shapes when given input_shape, without the batch axis.)"""
        rows = [("layer", "output shape", "params")] + self._summary_rows(input_shape)
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.append(f"total parameters: {self.count_params():,}")
        text = "\n".join(lines)
        if print_fn is not None:
            print_fn(text)
        return text

    def _summary_rows(self, input_shape):
        counts = {}
        for p in self._params:
            counts[p.name.split(".")[0]] = counts.get(p.name.split(".")[0], 0) + p.data.size
        rows = []
        for node in self._graph.nodes:
            if node.layer is None:
                rows.append(("Input", _shape_text(node.shape), "0"))
                continue
            prefix = self._prefix[id(node.layer)]
            rows.append((f"{prefix}: {type(node.layer).__name__}", _shape_text(node.shape),
                         f"{counts.pop(prefix, 0):,}"))   # a shared layer's weights count once
        return rows

    # --------------------------------------------------------- save / load
    def config(self):
        layers = self.layers
        index = {id(l): i for i, l in enumerate(layers)}
        node_index = {id(n): i for i, n in enumerate(self._graph.nodes)}
        return {"class": "Model", "dtype": self.dtype.name, "backend": self.backend.name, "seed": self.seed,
                "layers": [layer_spec(l) for l in layers],
                "nodes": [{"layer": None if n.layer is None else index[id(n.layer)],
                           "inputs": [node_index[id(i)] for i in n.inputs], "shape": list(n.shape)}
                          for n in self._graph.nodes],
                "inputs": [node_index[id(n)] for n in self._graph.inputs],
                "outputs": [node_index[id(n)] for n in self._graph.outputs],
                "multi_in": self._multi_in, "multi_out": self._multi_out}

    def save(self, path):
        """Write weights and architecture to .safetensors (default) or .npz; never pickle."""
        from . import io
        io.save(path, self.config(), self.state_dict())

    def export_onnx(self, path, input_shape=None, opset=17):
        """Write the network as ONNX (needs onnx; see fastnn.onnx_export); returns the ModelProto."""
        from .onnx_export import export_onnx
        return export_onnx(self, path, input_shape=input_shape, opset=opset)

    def __repr__(self):
        inner = ",\n  ".join(repr(l) for l in self.layers)
        return f"{type(self).__name__}(\n  {inner},\n  backend={self.backend.name!r}, dtype={self.dtype.name!r})"


class Sequential(Model):
    """Layers in order; the input shape follows from the first layer."""

    def __init__(self, *layers, backend=None, dtype="float32", seed=0):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        for layer in layers:
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential takes fastnn layers, got {type(layer).__name__}")
            if layer.n_inputs != 1:
                raise TypeError(f"{type(layer).__name__} takes several inputs: use fnn.Model for it")
        self._sequence = list(layers)
        self._multi_in = self._multi_out = False
        # The chain's shapes are unknown until an input arrives: nodes carry none.
        node = G.Node(None, (), ())
        first = node
        for layer in layers:
            node = G.Node(layer, [node], ())
        self._setup(G.Graph([first], [node]), backend, dtype, seed)

    @property
    def layers(self):
        """The layers in order, as given (a shared layer appears at each use)."""
        return list(self._sequence)

    def _named_layers(self):
        return named_layers(self._sequence)

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        for layer in self._sequence:
            shape = tuple(layer.output_shape(shape))
        return shape

    def _check_one(self, x, name, shape, index=0):
        return super()._check_one(x, name, None, index)

    def _output_shapes(self, xs):
        return [self.output_shape(xs[0].shape[1:])]

    def _summary_rows(self, input_shape):
        rows = []
        shape = None if input_shape is None else tuple(input_shape)
        first = self._sequence[0] if self._sequence else None
        if shape is None and type(first).__name__ == "Dense":   # its input is (batch, ..., in_features)
            shape = ("...", first.in_features)
        done = set()
        for index, layer in enumerate(self._sequence):
            prefix = self._prefix[id(layer)]
            count = 0 if id(layer) in done else sum(
                p.data.size for p in self._params if p.name.startswith(prefix + "."))
            done.add(id(layer))
            try:
                shape = None if shape is None else tuple(layer.output_shape(shape))
            except (TypeError, ValueError):   # a shape guessed from the first Dense ("..." axes)
                shape = None
            rows.append((f"{index}: {type(layer).__name__}" + ("" if prefix == str(index) else f" (= {prefix})"),
                         "?" if shape is None else _shape_text(shape), f"{count:,}"))
        return rows

    def config(self):
        first = {}
        specs = []
        for index, layer in enumerate(self._sequence):
            if id(layer) in first:
                specs.append({"ref": first[id(layer)]})   # the same layer object again (shared weights)
            else:
                first[id(layer)] = index
                specs.append(layer_spec(layer))
        return {"class": "Sequential", "layers": specs, "dtype": self.dtype.name,
                "backend": self.backend.name, "seed": self.seed}


# ------------------------------------------------------------- helpers
def layer_spec(layer):
    spec = {"type": type(layer).__name__, "config": layer.config()}
    if not layer.trainable:
        spec["trainable"] = False   # a frozen layer stays frozen when loaded
    return spec


def _shape_text(shape):
    return "(batch, " + ", ".join(map(str, shape)) + ")"


def _as_batch(x, name):
    x = checks._array(x, name, allow_empty=True)
    if x.dtype.kind == "b":
        raise TypeError(f"{name} must hold numbers, got booleans")
    if x.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold numbers, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"{name} must have a batch axis first, got shape {x.shape}")
    return x


# ---------------------------------- integer inputs (issue 10: acts; Embedding)
def _index_consumers(graph):
    """Per model input, the layers reading it when they all take integer indices (Embedding:
    that input stays int64), else []. An input read by both kinds is a TypeError."""
    out = []
    for k, inp in enumerate(graph.inputs):
        readers = [n.layer for n in graph.nodes if n.layer is not None and any(i is inp for i in n.inputs)]
        integer = [bool(getattr(layer, "integer_input", False)) for layer in readers]
        if any(integer) and not all(integer):
            raise TypeError(f"model input {k} feeds both layers that take integer indices (Embedding) "
                            f"and layers that take floats: give them separate inputs")
        out.append(readers if readers and all(integer) else [])
    return out


def _check_indices(x, name, shape, layers):
    """A batch of indices for Embedding layers: C-contiguous int64, in every layer's range."""
    if _on_device(x):
        raise TypeError(f"{name}: pass Embedding indices as a host (NumPy) array")
    x = checks._array(x, name, allow_empty=True)
    if x.dtype.kind not in "iu":
        from .layers.embedding import IndexDtypeError
        raise IndexDtypeError(f"{name}: this input feeds an Embedding, which takes integer indices, "
                              f"got dtype {x.dtype}")
    if x.ndim < 1 or (shape is not None and tuple(x.shape[1:]) != tuple(shape)):
        want = "(batch, ...)" if shape is None else _shape_text(shape)
        raise ValueError(f"{name} has shape {x.shape}; the model takes {want}")
    if x.size == 0:
        raise ValueError(f"{name} is empty (shape {x.shape})")
    for layer in layers:
        x = layer.check_indices(x, name)
    return x


def _on_device(x):
    """Whether x is a device array (the cuda backend's), which np.asarray would copy to the host."""
    return not isinstance(x, np.ndarray) and hasattr(x, "copy_to_host") and hasattr(x, "dtype")


def _overwrites_grads(layer):
    """Whether layer's backward honours ctx.overwrite_grads: the class that defines its backward
    says so itself (a subclass of Dense with a backward of its own is not assumed to)."""
    for cls in type(layer).__mro__:
        if "backward" in vars(cls):
            return bool(vars(cls).get("overwrites_grads", False))
    return False


_SUM_CHECK_MIN = 1 << 16   # below, np.errstate costs more than the pass it saves


def _finite(x, name):
    # A sum is finite only if every term is: one pass without np.isfinite's boolean array
    # (half the time on a 60000 x 784 float32 set). A finite sum cannot be wrong; a
    # non-finite one (a NaN, an inf, or an overflowing sum of large values) is checked exactly.
    if x.dtype.kind == "f" and x.size >= _SUM_CHECK_MIN:
        with np.errstate(over="ignore", invalid="ignore"):
            total = np.add.reduce(x, axis=None)
        if math.isfinite(total):
            return x
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x


# ---------------------------------------------- load_state_dict (issue 11: interop)
def _match_keys(state_dict, expected, aliases):
    """(model name -> the state_dict's key that fills it, [keys with no place]). A key is
    the model's own name or torch's alias of it; the same tensor under both names is an error."""
    found, unexpected = {}, []
    for key in state_dict.keys():
        if not isinstance(key, str):
            raise TypeError(f"state_dict keys must be strings, got {key!r}")
        name = key if key in expected else aliases.get(key)
        if name is None:
            unexpected.append(key)
        elif name in found:
            raise StateDictError(f"{found[name]} and {key} name the same tensor ({name}): give one of them")
        else:
            found[name] = key
    return found, unexpected


def _incompatible_message(model, missing, unexpected):
    lines = [f"Error(s) in loading state_dict for {model}:"]
    if missing:
        lines.append("Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in missing) + ".")
    if unexpected:
        lines.append("Unexpected key(s) in state_dict: " + ", ".join(f'"{k}"' for k in unexpected) + ".")
    lines.append("(strict=False loads the keys that match and returns the others)")
    return "\n\t".join(lines)


def _host_array(value, key):
    """A state_dict value as a NumPy array: arrays, lists, torch tensors (detached, on the CPU)."""
    if hasattr(value, "detach") and hasattr(value, "cpu") and hasattr(value, "numpy"):
        value = value.detach().cpu().numpy()   # a torch tensor (without importing torch)
    elif _on_device(value):
        value = value.copy_to_host()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{key}: cannot be read as an array ({type(value).__name__}: {exc})") from None


# ------------------------------------------------------------- loading
def build_layer(spec):
    """A layer from its saved {"type", "config"} (a user's Layer subclass too, once defined)."""
    from .layers.base import layer_class
    if not isinstance(spec, dict) or not isinstance(spec.get("config", {}), dict):
        raise TypeError(f"a layer description must be a dict, got {spec!r}")
    layer = layer_class(spec["type"]).from_config(spec.get("config", {}), build_layer)
    if spec.get("trainable", True) is False:
        layer.trainable = False
    return layer


def _architecture(config):
    """(kind, top-level layers in state_dict order, a function that builds the model)."""
    kind = config.get("class", "Sequential")
    if kind == "Sequential":
        sequence = []
        for spec in config["layers"]:
            if isinstance(spec, dict) and "ref" in spec:
                ref = spec["ref"]
                if not isinstance(ref, int) or not 0 <= ref < len(sequence):
                    raise ValueError(f"bad shared-layer reference {ref!r}")
                sequence.append(sequence[ref])
            else:
                sequence.append(build_layer(spec))
        return sequence, lambda **kw: Sequential(*sequence, **kw)
    if kind != "Model":
        raise ValueError(f"unknown model class {kind!r}")
    layers = [build_layer(spec) for spec in config["layers"]]

    def make(**kw):
        nodes = []
        for spec in config["nodes"]:
            inputs = [nodes[i] for i in spec["inputs"]]
            if spec["layer"] is None:
                nodes.append(G.Input(tuple(spec["shape"])).node)
            else:
                layer = layers[spec["layer"]]
                arg = [n.output for n in inputs]
                nodes.append(G.call_layer(layer, arg if layer.n_inputs != 1 else arg[0]).node)
        ins = [nodes[i].output for i in config["inputs"]]
        outs = [nodes[i].output for i in config["outputs"]]
        return Model(inputs=ins if config.get("multi_in") else ins[0],
                     outputs=outs if config.get("multi_out") else outs[0], **kw)
    return layers, make


def saved_builder(path, config, backend=None):
    """(layer tree, expected state shapes, build()) for a saved architecture, nothing allocated:
    a loader checks a file's tensors against the shapes before it calls build(). The model goes
    on the saved backend unless one is given (the default where that one is unavailable)."""
    from . import io
    from .backend import BackendUnavailable
    bad = lambda exc: io.ModelFileError(f"{path}: corrupt architecture: {type(exc).__name__}: {exc}")
    try:
        top, make = _architecture(config)
        expected = expected_state_shapes(top)
        dtype = _dtype(config.get("dtype", "float32"))
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise bad(exc) from None
    if backend is None:
        try:
            backend = get_backend(config.get("backend")).name
        except (BackendUnavailable, ValueError, TypeError):
            backend = None  # saved on a backend this machine lacks: use the default
    seed = config.get("seed", 0)

    def build():
        try:
            return make(backend=backend, dtype=dtype, seed=seed if isinstance(seed, int) else 0)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise bad(exc) from None
    return top, expected, build


def load(path, backend=None):
    """Rebuild a saved model (on its saved backend unless one is given, or the default
    where that one is unavailable). Every malformed file raises ModelFileError, and
    the file's tensors are checked against the architecture before any is allocated."""
    import os
    from . import io
    path = os.fspath(path)
    config, shapes = io.read_header(path)
    _, expected, build = saved_builder(path, config, backend)
    if set(shapes) != set(expected):
        missing, extra = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
        raise io.ModelFileError(f"{path}: the tensors do not match the architecture "
                                f"(missing {missing[:5]}, unexpected {extra[:5]})")
    for name, shape in expected.items():
        if shapes[name][0] != shape:
            raise io.ModelFileError(f"{path}: {name} has shape {shapes[name][0]}, the architecture needs {shape}")
        if shapes[name][1].kind != "f":
            raise io.ModelFileError(f"{path}: {name} has dtype {shapes[name][1]}, not a float")
    model = build()
    try:
        model.load_state_dict(io.read_tensors(path))
    except ValueError as exc:
        raise io.ModelFileError(f"{path}: {exc}") from None
    return model
