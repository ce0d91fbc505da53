"""The graph core: symbolic tensors, nodes (layer, inputs), the execution plan and the tape.

``fnn.Input(shape)`` is a symbolic tensor; calling a layer on symbolic tensors
makes a Node and returns its output tensor. A Graph is the nodes in run order;
``Graph.run`` executes them and, when training, returns a Tape: one
(node, Context) per layer call, which ``Graph.backprop`` walks in reverse.
The tape belongs to the caller, so a predict between a forward and its
backward, or in another thread, never touches it.

The plan fuses a Dense into the activation that alone consumes its output
(linear_act); what each layer computes on its own is unchanged.
"""
import threading

import numpy as np

from .layers.base import Context, Layer


class SymbolicTensor:
    """A graph edge: the output of a node, with its shape (no batch axis)."""

    def __init__(self, node, shape):
        self.node, self.shape = node, tuple(shape)

    def __repr__(self):
        return f"<SymbolicTensor shape=(batch, {', '.join(map(str, self.shape))}) from {self.node.name}>"


class Node:
    def __init__(self, layer, inputs, shape):
        self.layer = layer          # None for a model input
        self.inputs = tuple(inputs)  # the Nodes whose outputs this one takes
        self.shape = tuple(shape)
        self.output = SymbolicTensor(self, shape)

    @property
    def name(self):
        return "Input" if self.layer is None else type(self.layer).__name__


def Input(shape):
    """A model input of per-sample shape ``shape`` (without the batch axis)."""
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    try:
        shape = tuple(shape)
    except TypeError:
        raise ValueError(f"Input shape must be a tuple of positive integers, got {shape!r}") from None
    if not shape or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in shape):
        raise ValueError(f"Input shape must be a tuple of positive integers, got {shape!r}")
    return Node(None, (), tuple(int(s) for s in shape)).output


def call_layer(layer, x):
    """layer(symbolic tensor(s)): a new Node; its output shape checked now."""
    many = isinstance(x, (list, tuple))
    tensors = list(x) if many else [x]
    if layer.n_inputs == 1 and many:
        raise TypeError(f"{type(layer).__name__} takes one input, got a list of {len(tensors)}")
    if layer.n_inputs != 1 and not many:
        raise TypeError(f"{type(layer).__name__} takes a list of inputs")
    shapes = [t.shape for t in tensors]
    shape = layer.output_shape(shapes if many else shapes[0])
    return Node(layer, [t.node for t in tensors], shape).output


class Tape:
    """What one training forward recorded: (node, ctx) in run order, and its outputs."""

    def __init__(self):
        self.records = []
        self.outputs = None   # [(shape, dtype)] of the outputs, to check backward's gradients


# Numba's default (workqueue) thread pool aborts the process when two threads
# launch parallel kernels at once: calls into it are serialised.
_LOCKS = {"numba": threading.RLock()}


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class Graph:
    """Nodes in run order between the given input and output nodes."""

    def __init__(self, inputs, outputs):
        self.inputs, self.outputs = list(inputs), list(outputs)
        self.nodes = _topological(self.inputs, self.outputs)
        self.layers = _unique_layers(self.nodes)
        consumers = {id(n): [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                consumers[id(i)].append(n)
        self.consumers = consumers
        output_ids = {id(n) for n in self.outputs}
        input_ids = {id(n) for n in self.inputs}
        # A node needs its dx only when one of its inputs came from a layer.
        self.need_dx = {id(n): any(id(i) not in input_ids for i in n.inputs) for n in self.nodes}
        # Fuse: Dense -> its only consumer, a fusable activation, not a model output.
        self.fused = {}
        from .layers.dense import Dense
        for n in self.nodes:
            after = consumers[id(n)]
            if (isinstance(n.layer, Dense) and len(after) == 1 and id(n) not in output_ids
                    and after[0].layer is not None and hasattr(after[0].layer, "fusable")):
                fusion = after[0].layer.fusable()
                if fusion is not None:
                    self.fused[id(n)] = (after[0], fusion)
        self.fuse = True

    def lock(self, backend):
        return _LOCKS.get(backend.name) or _NoLock()

    def run(self, xs, training, record):
        """Outputs (a list) for the input arrays xs; with record, also the Tape."""
        tape = Tape() if record else None
        values = {id(n): x for n, x in zip(self.inputs, xs)}
        remaining = {id(n): len(self.consumers[id(n)]) for n in self.nodes}
        keep = {id(n) for n in self.outputs}
        skip = set()
        for node in self.nodes:
            if node.layer is None or id(node) in skip:
                continue
            args = [values[id(i)] for i in node.inputs]
            ctx = Context(training, self.need_dx[id(node)])
            fusion = self.fused.get(id(node)) if self.fuse else None
            if fusion is not None and args[0].ndim == 2:
                act_node, (kernel, alpha) = fusion
                y = node.layer.forward_fused(ctx, args[0], kernel, alpha)
                act_ctx = Context(training, True)
                act_node.layer.record_fused(act_ctx, y)
                if record:
                    tape.records.append((node, ctx))
                    tape.records.append((act_node, act_ctx))
                values[id(act_node)] = y
                skip.add(id(act_node))
                self._release(node, values, remaining, keep)
                continue
            values[id(node)] = node.layer._forward_impl(ctx, args if node.layer.n_inputs != 1 else args[0])
            if record:
                tape.records.append((node, ctx))
            self._release(node, values, remaining, keep)
        outs = [values[id(n)] for n in self.outputs]
        if record:
            tape.outputs = [(tuple(o.shape), np.dtype(o.dtype)) for o in outs]
        return outs, tape

    def _release(self, node, values, remaining, keep):
        """Drop inputs no later node reads (inference keeps only what it needs)."""
        for i in node.inputs:
            remaining[id(i)] -= 1
            if remaining[id(i)] == 0 and id(i) not in keep:
                values.pop(id(i), None)

    def backprop(self, tape, grads, input_grads=False):
        """Walk the tape in reverse from d loss / d output (None: no gradient);
        with input_grads, also compute and return d loss / d each input."""
        flowing = {}
        if input_grads:
            for _, ctx in tape.records:
                ctx.need_dx = True
        for node, g in zip(self.outputs, grads):
            if g is not None:
                _accumulate(flowing, node, g)
        for node, ctx in reversed(tape.records):
            dy = flowing.pop(id(node), None)
            if dy is None:
                continue
            dx = node.layer._backward_impl(ctx, dy)
            if not ctx.need_dx:
                continue
            dxs = dx if node.layer.n_inputs != 1 else [dx]
            for inp, d in zip(node.inputs, dxs):
                if d is not None and (inp.layer is not None or input_grads):
                    _accumulate(flowing, inp, d)
        if input_grads:
            return [flowing.get(id(n)) for n in self.inputs]


def _accumulate(flowing, node, g):
    """Sum the gradients of a node's output that reach it from several consumers."""
    prev = flowing.get(id(node))
    flowing[id(node)] = g if prev is None else prev + g


def _topological(inputs, outputs):
    """Nodes reachable backwards from the outputs, each after all its inputs."""
    order, state = [], {}
    input_ids = {id(n) for n in inputs}

    def visit(node):
        # Iterative DFS: deep graphs must not hit Python's recursion limit.
        stack = [(node, False)]
        while stack:
            n, done = stack.pop()
            if done:
                if state.get(id(n)) != 2:
                    state[id(n)] = 2
                    order.append(n)
                continue
            if state.get(id(n)) == 2:
                continue
            if n.layer is None and id(n) not in input_ids:
                raise ValueError("the outputs depend on an fnn.Input that is not among the model's inputs")
            state[id(n)] = 1
            stack.append((n, True))
            for i in reversed(n.inputs):
                if state.get(id(i)) != 2:
                    stack.append((i, False))

    for node in outputs:
        visit(node)
    seen = {id(n) for n in order}
    for node in inputs:
        if id(node) not in seen:
            order.insert(0, node)
    return order


def _unique_layers(nodes):
    """Each layer object once, in the order of its first call (a shared layer is one)."""
    layers, seen = [], set()
    for n in nodes:
        if n.layer is not None and id(n.layer) not in seen:
            seen.add(id(n.layer))
            layers.append(n.layer)
    return layers


def as_tensors(value, what):
    """A SymbolicTensor or a list of them, as a list of their nodes."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items or not all(isinstance(t, SymbolicTensor) for t in items):
        raise TypeError(f"Model {what} must be fnn.Input / layer outputs (symbolic tensors), got {value!r}")
    return [t.node for t in items]


__all__ = ["Input", "SymbolicTensor", "Node", "Graph", "Tape", "Layer"]
