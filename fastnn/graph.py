"""The graph core: symbolic tensors, nodes (layer, inputs), the execution plan and the tape.

``fnn.Input(shape)`` is a symbolic tensor; calling a layer on symbolic tensors
makes a Node and returns its output tensor. A Graph is the nodes in run order;
``Graph.run`` executes them and, when training, returns a Tape: a record (the
layer and its Context) per layer call, which ``Graph.backprop`` walks in reverse.
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
    """What one training forward recorded: per layer call in run order, (layer, ctx,
    input slots, output slot), or (layer, ctx) for a chain; and the outputs' shapes."""

    def __init__(self):
        self.records = []
        self.outputs = None   # [(shape, dtype)] of the outputs, for model.backward's checks


# Numba's workqueue threading layer (its fallback without OpenMP or TBB) aborts when two threads
# launch parallel kernels at once: calls into it are serialised.
_LOCKS = {"numba": threading.RLock()}
_LOCKS["auto"] = _LOCKS["numba"]   # auto may run numba's kernels (fastnn/_kernels/choice.py)


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def backend_lock(backend):
    """The lock that serialises calls into backend's kernels (a no-op for most)."""
    return _LOCKS.get(backend.name) or _NoLock()


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
        # Fuse: a layer with forward_fused (Dense, BatchNorm) -> its only consumer, an
        # activation the layer can apply in its own kernel, not a model output.
        self.fused = {}
        for n in self.nodes:
            after = consumers[id(n)]
            if (_fuses_itself(n.layer) and len(after) == 1 and id(n) not in output_ids
                    and after[0].layer is not None and hasattr(after[0].layer, "fusable")):
                fusion = after[0].layer.fusable()
                if fusion is not None and n.layer.fuses(*fusion):
                    self.fused[id(n)] = (after[0], fusion)
        self.fuse = True

    @property
    def fuse(self):
        """Whether the plan fuses Dense + activation (linear_act) and BatchNorm + ReLU."""
        return self._fuse

    @fuse.setter
    def fuse(self, value):
        self._fuse = bool(value)
        self.plan = self._plan()
        self.chain = self._chain_plan()

    def _chain_plan(self):
        """For a plain chain (Sequential: one input, one output, each node feeding only
        the next), the steps as (layer, need_dx, (activation, kernel, alpha) or None);
        run and backprop then pass one array along. None for any other graph."""
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            return None
        path = [n for n in self.nodes if n.layer is not None]
        prev = self.inputs[0]
        for n in path:
            if n.inputs != (prev,) or len(self.consumers[id(prev)]) != 1 or n.layer.n_inputs != 1:
                return None
            prev = n
        if prev is not self.outputs[0]:
            return None
        return tuple((layer, need_dx, None if fusion is None else (fusion[0], fusion[2], fusion[3]))
                     for layer, _, _, need_dx, fusion, _ in self.plan[0])

    def _plan(self):
        """The run as slot-indexed steps (built when fuse is set):
        (layer, input slots, output slot, need_dx, fusion or None, slots to free after)."""
        slot = {id(n): i for i, n in enumerate(self.nodes)}
        keep = {id(n) for n in self.outputs}
        skip, steps = set(), []
        for node in self.nodes:
            if node.layer is None or id(node) in skip:
                continue
            fusion = self.fused.get(id(node)) if self._fuse else None
            if fusion is not None:
                act_node, (kernel, alpha) = fusion
                skip.add(id(act_node))
                fusion = (act_node.layer, slot[id(act_node)], kernel, alpha)
            steps.append([node.layer, tuple(slot[id(i)] for i in node.inputs), slot[id(node)],
                          self.need_dx[id(node)], fusion, ()])
        # Free each value after its last reader (inference keeps only what it needs).
        last = {}
        for k, step in enumerate(steps):
            for i in step[1]:
                last[i] = k
        for i, k in last.items():
            if id(self.nodes[i]) not in keep:
                steps[k][5] += (i,)
        return (tuple(tuple(s) for s in steps), [slot[id(n)] for n in self.inputs],
                [slot[id(n)] for n in self.outputs])

    def run(self, xs, training, record):
        """Outputs (a list) for the input arrays xs; with record, also the Tape:
        (layer, ctx, input slots, output slot) per layer call."""
        if self.chain is not None:
            return self._run_chain(xs[0], training, record)
        steps, in_slots, out_slots = self.plan
        tape = Tape() if record else None
        values = [None] * len(self.nodes)
        for i, x in zip(in_slots, xs):
            values[i] = x
        for layer, ins, out, need_dx, fusion, frees in steps:
            ctx = Context(training=training, need_dx=need_dx)
            if fusion is not None and layer.can_fuse(values[ins[0]]):
                act, act_slot, kernel, alpha = fusion
                y = layer.forward_fused(ctx, values[ins[0]], kernel, alpha)
                values[act_slot] = y
                if layer.fused_backward:   # its backward applies the activation's derivative
                    if record:
                        tape.records.append((layer, ctx, ins, act_slot))
                else:
                    act_ctx = Context(training=training, need_dx=True)
                    act.record_fused(act_ctx, y)
                    if record:
                        tape.records.append((layer, ctx, ins, out))
                        tape.records.append((act, act_ctx, (out,), act_slot))
            else:
                arg = values[ins[0]] if layer.n_inputs == 1 else [values[i] for i in ins]
                values[out] = layer._forward_impl(ctx, arg)
                if record:
                    tape.records.append((layer, ctx, ins, out))
                if fusion is not None:   # a batch of rank > 2: the activation runs on its own
                    act, act_slot = fusion[0], fusion[1]
                    act_ctx = Context(training=training, need_dx=True)
                    values[act_slot] = act._forward_impl(act_ctx, values[out])
                    if record:
                        tape.records.append((act, act_ctx, (out,), act_slot))
            for i in frees:
                values[i] = None
        return [values[i] for i in out_slots], tape

    def _run_chain(self, h, training, record):
        tape = Tape() if record else None
        for layer, need_dx, fusion in self.chain:
            ctx = Context(training=training, need_dx=need_dx)
            if fusion is not None and layer.can_fuse(h):
                act, kernel, alpha = fusion
                h = layer.forward_fused(ctx, h, kernel, alpha)
                if layer.fused_backward:   # its backward applies the activation's derivative
                    if record:
                        tape.records.append((layer, ctx))
                    continue
                act_ctx = Context(training=training, need_dx=True)
                act.record_fused(act_ctx, h)
                if record:
                    tape.records += ((layer, ctx), (act, act_ctx))
                continue
            h = layer._forward_impl(ctx, h)
            if record:
                tape.records.append((layer, ctx))
            if fusion is not None:   # a batch of rank > 2: the activation runs on its own
                act_ctx = Context(training=training, need_dx=True)
                h = fusion[0]._forward_impl(act_ctx, h)
                if record:
                    tape.records.append((fusion[0], act_ctx))
        return [h], tape

    def _backprop_chain(self, records, g, input_grads, after_layer, overwrite):
        while records and g is not None:
            layer, ctx = records.pop()
            if overwrite is not None and id(layer) in overwrite:
                ctx.overwrite_grads = True
            g = layer._backward_impl(ctx, g)
            if after_layer is not None:
                after_layer(len(records))
        if overwrite is not None:   # layers the gradient never reached hold zero gradients
            for layer, _ in records:
                if id(layer) in overwrite:
                    for grad in layer.grads.values():
                        grad.fill(0)
        return [g] if input_grads else None

    def backprop(self, tape, grads, input_grads=False, after_layer=None, overwrite=None):
        """Walk the tape in reverse from d loss / d output (None: no gradient);
        with input_grads, also compute and return d loss / d each input. after_layer(k), if
        given, is called after each record's backward with k records left (distributed.py
        starts a gradient bucket's allreduce once its layers are done). overwrite (chains
        only): ids of layers, each called once, whose backward writes its gradient instead
        of adding to it (Model._backprop_fresh)."""
        if input_grads:
            for record in tape.records:
                record[1].need_dx = True
        if self.chain is not None:
            return self._backprop_chain(tape.records, grads[0], input_grads, after_layer, overwrite)
        assert overwrite is None, "overwrite is for chains"
        _, in_slots, out_slots = self.plan
        flowing = [None] * len(self.nodes)
        for i, g in zip(out_slots, grads):
            if g is not None:
                flowing[i] = g if flowing[i] is None else flowing[i] + g
        inputs = set(in_slots)
        records = tape.records
        while records:
            # Popping drops each call's saved activations as soon as its backward ran:
            # less memory held, and the allocator reuses it for the next step.
            layer, ctx, ins, out = records.pop()
            dy = flowing[out]
            if dy is None:
                continue
            flowing[out] = None
            dx = layer._backward_impl(ctx, dy)
            if after_layer is not None:
                after_layer(len(records))
            if not ctx.need_dx:
                continue
            for i, d in zip(ins, dx if layer.n_inputs != 1 else (dx,)):
                # Gradients that reach a node from several consumers add up.
                if d is not None and (input_grads or i not in inputs):
                    flowing[i] = d if flowing[i] is None else flowing[i] + d
        if input_grads:
            return [flowing[i] for i in in_slots]


def _fuses_itself(layer):
    """Whether layer has forward_fused, defined by the class that defines its forward (and its
    backward, where that backward applies the activation too): a subclass that overrides them
    (a user's Dense or BatchNorm) runs unfused, its own code called."""
    if layer is None or not hasattr(layer, "forward_fused"):
        return False
    names = ("forward", "forward_fused") + (("backward",) if layer.fused_backward else ())
    owners = {next((c for c in type(layer).__mro__ if name in vars(c)), None) for name in names}
    return len(owners) == 1


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
