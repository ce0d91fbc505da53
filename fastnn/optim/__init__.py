"""Optimizers with PyTorch's update rules, applied by one backend kernel call
over the flat buffer that holds every parameter of a model.

SGD, Adam, AdamW, RMSprop, Adagrad: ``opt.step(model.parameters())`` after
``model.backward``. Every optimizer also takes

* ``clip_norm=``: clip the gradients to this total 2-norm before each step
  (``clip_grad_norm``, torch.nn.utils.clip_grad_norm_);
* ``param_groups=``: torch-style groups with their own hyper-parameters, e.g.
  ``SGD(lr=0.1, param_groups=[{"params": model.layers[0], "lr": 0.01}])``.
  A group's ``params`` is a Layer (its parameters and its sublayers'), a
  Parameter, a parameter name ('0.weight') or layer prefix ('0'), or a list of
  those; its other keys are the optimizer's constructor arguments (lr, momentum,
  weight_decay, betas, ...), filled from the optimizer's own at construction.
  Parameters in no group follow the optimizer's attributes (``opt.lr``, ...),
  so a scheduler that sets ``opt.lr`` moves them; ``opt.param_groups`` is the
  list of group dicts (change ``group["lr"]`` to move a group).

``opt.state_dict()`` / ``opt.load_state_dict(sd)`` save and restore an optimizer as torch's
do: hyper-parameters, groups (members by parameter name / layer prefix), the step count
and the state buffers as numpy arrays keyed "<parameter name>.<buffer>" (torch's buffer
names: momentum_buffer, exp_avg, exp_avg_sq, square_avg, grad_avg, sum), so the state
fits a model rebuilt from its file; fastnn.checkpoint stores them in checkpoints.

Frozen layers (``layer.trainable = False``) are skipped: their parameters and
optimizer state do not change at all (no weight decay, no momentum), and
clip_grad_norm leaves their gradients out of the norm, as torch does for
parameters with requires_grad=False.

With no group and nothing frozen a step is one kernel call over the whole flat
buffer; otherwise one call per contiguous run of parameters that share their
hyper-parameters (state buffers stay whole; the runs are views into them). The
step count behind Adam's bias correction and Adagrad's lr_decay is the
optimizer's (``iterations``), shared by every group.
"""
import math
import numbers

import numpy as np

from ..backend import get_backend
from ..layers import base as _layers


def _buffers(params):
    """(key, data, grad) 1-D buffer triples, validated: the model's flat buffers when
    given model.parameters(), else one per parameter. The kernels trust these
    buffers, so every shape, dtype and layout is checked here."""
    flat = getattr(params, "flat_data", None)
    if flat is not None:
        # A model's own flat buffers: checked once per parameters() list, not every step.
        checked = getattr(params, "_checked", None)
        if checked is None or checked[0] is not params.flat_data or checked[1] is not params.flat_grad:
            pairs = [(params.flat_data,) + _pair("model.parameters()", params.flat_data, params.flat_grad)]
            checked = params._checked = (params.flat_data, params.flat_grad, pairs)
        return checked[2]
    if isinstance(params, (str, bytes)) or not hasattr(params, "__iter__"):
        raise TypeError(f"step() takes model.parameters() or an iterable of Parameters, got {type(params).__name__}")
    pairs = []
    for p in params:
        if not (hasattr(p, "data") and hasattr(p, "grad")):
            raise TypeError(f"step() takes Parameters (with .data and .grad), got {type(p).__name__}")
        name = repr(getattr(p, "name", p))
        # The state is keyed by p.data itself: its 1-D view is a new object each step.
        pairs.append((p.data,) + _pair(name, p.data, p.grad))
    return pairs


def _pair(name, data, grad):
    for what, a in (("data", data), ("grad", grad)):
        if not hasattr(a, "dtype") or not hasattr(a, "shape"):
            raise TypeError(f"{name}: .{what} must be an array, got {type(a).__name__}")
        if np.dtype(a.dtype) not in (np.float32, np.float64):
            raise TypeError(f"{name}: .{what} has dtype {a.dtype}; optimizers update float32 or float64")
    if tuple(data.shape) != tuple(grad.shape):
        raise ValueError(f"{name}: .grad has shape {tuple(grad.shape)} but .data has {tuple(data.shape)}")
    if np.dtype(data.dtype) != np.dtype(grad.dtype):
        raise TypeError(f"{name}: .grad is {grad.dtype} but .data is {data.dtype}")
    if isinstance(data, np.ndarray) != isinstance(grad, np.ndarray):
        raise TypeError(f"{name}: .data and .grad must live on the same device")
    if isinstance(data, np.ndarray):
        if not (data.flags.c_contiguous and grad.flags.c_contiguous):
            raise ValueError(f"{name} is not contiguous: the optimizer cannot update it in place")
        if not data.flags.writeable:
            raise ValueError(f"{name}: .data is read-only")
        if np.shares_memory(data, grad):
            raise ValueError(f"{name}: .data and .grad share memory")
    return data.reshape(-1), grad.reshape(-1)


def _check(value, name, low=0.0, high=None, low_open=False):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    bad = value <= low if low_open else value < low
    if bad or (high is not None and value >= high) or not np.isfinite(value):
        raise ValueError(f"invalid {name}: {value}")
    return value


def _betas(betas):
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    return (_check(betas[0], "beta1", high=1.0), _check(betas[1], "beta2", high=1.0))


def _backend_of(params):
    """The backend of model.parameters(), else of the first Parameter that knows it, else the default."""
    backend = getattr(params, "backend", None)
    if backend is None and isinstance(params, (list, tuple)) and params:
        backend = getattr(params[0], "backend", None)
    return backend or get_backend()


def _frozen(p):
    layer = getattr(p, "layer", None)
    return layer is not None and not layer.trainable


# ------------------------------------------------------------ parameter runs


class _Run:
    """A contiguous stretch of parameters stepped by one kernel call: [start, stop) of
    the flat buffer, its group (None: the optimizer's own hyper-parameters)."""
    __slots__ = ("start", "stop", "group", "data", "grad")

    def __init__(self, start, stop, group):
        self.start, self.stop, self.group = start, stop, group
        self.data = self.grad = None


def _group_members(spec, what):
    """(layer ids, parameter objects, names) a group's 'params' entry names."""
    items = spec if isinstance(spec, (list, tuple)) else [spec]
    if not items:
        raise ValueError(f"{what}: 'params' is empty")
    layers, params, names = set(), [], set()
    for item in items:
        if isinstance(item, _layers.Layer):
            stack = [item]
            while stack:
                layer = stack.pop()
                layers.add(id(layer))
                stack.extend(sub for _, sub in layer.sublayers())
        elif isinstance(item, str):
            names.add(item)
        elif hasattr(item, "data") and hasattr(item, "grad"):
            params.append(item)
        else:
            raise TypeError(f"{what}: 'params' takes Layers, Parameters or parameter names, "
                            f"got {type(item).__name__}")
    return layers, params, names


def _matches(p, members):
    layers, params, names = members
    name = getattr(p, "name", None)
    if any(p is q or p.data is q.data for q in params):
        return True
    if id(getattr(p, "layer", None)) in layers:
        return True
    return name is not None and any(name == n or name.startswith(n + ".") for n in names)


class Optimizer:
    """Base of the optimizers: ``step(params)``, ``zero_grad(params)``, groups and clipping
    (module docstring). A subclass lists its hyper-parameters in HYPER (name -> checker)
    and defines ``_kernel(backend, data, grad, state, hyper)``; STATE says how many state
    buffers each parameter needs, with their initial values."""
    HYPER = {}

    def __init__(self, param_groups=None, clip_norm=None):
        self._state = {}   # id(data buffer) -> (data buffer, state arrays)
        self._layout = {}  # id(data buffer) -> (data buffer, backend, [(param name, offset, shape)])
        self._pending = None   # a loaded state ("<param>.<buffer>" -> array), applied at the next step
        self._tracked = None   # the buffer list whose layout is recorded (model.parameters()' cached one)
        self.iterations = 0
        if clip_norm is not None:
            clip_norm = _check(clip_norm, "clip_norm", low_open=True)
        self.clip_norm = clip_norm
        self.param_groups = self._make_groups(param_groups)
        self._plans = {}

    # ------------------------------------------------------------- groups
    def _make_groups(self, groups):
        if groups is None:
            return []
        if isinstance(groups, dict) or not isinstance(groups, (list, tuple)):
            raise TypeError("param_groups must be a list of dicts like {'params': layer, 'lr': 0.01}")
        out = []
        for i, group in enumerate(groups):
            what = f"param_groups[{i}]"
            if not isinstance(group, dict) or "params" not in group:
                raise TypeError(f"{what} must be a dict with a 'params' entry")
            unknown = set(group) - {"params"} - set(self.HYPER)
            if unknown:
                raise ValueError(f"{what}: unknown option(s) {sorted(unknown)} for "
                                 f"{type(self).__name__}; it takes {sorted(self.HYPER)}")
            filled = {"params": group["params"]}
            for key in self.HYPER:
                filled[key] = group.get(key, getattr(self, key))
            self._hyper(filled, what)            # validated now, and again at each step
            filled["_members"] = _group_members(group["params"], what)
            out.append(filled)
        return out

    def _hyper(self, group, what=None):
        """The validated hyper-parameters of a group (None: the optimizer's own)."""
        if group is None:
            return {key: getattr(self, key) for key in self.HYPER}
        return {key: check(group[key], f"{what or 'param group'} {key}") for key, check in self.HYPER.items()}

    def _group_of(self, p):
        found = [g for g in self.param_groups if _matches(p, g["_members"])]
        if len(found) > 1:
            raise ValueError(f"parameter {getattr(p, 'name', p)!r} is in more than one param group")
        return found[0] if found else None

    def _plan(self, params):
        """The runs of a model's flat buffer to step: cached until a layer's trainable
        flag changes; None means the whole buffer in one call."""
        key = (id(params.flat_data), _layers.trainable_version())
        plan = self._plans.get(key)
        if plan is not None and plan[0] is params.flat_data:
            return plan[1]
        runs, seen = [], set()
        simple = True
        for p in params:
            start = getattr(p, "offset", None)
            if start is None:
                raise TypeError("model.parameters() lacks the parameters' offsets")
            stop = start + int(np.prod(p.data.shape))
            if _frozen(p):
                simple = False
                continue
            group = self._group_of(p)
            if group is not None:
                simple = False
                seen.add(id(group))
            if runs and runs[-1].stop == start and runs[-1].group is group:
                runs[-1].stop = stop
            else:
                runs.append(_Run(start, stop, group))
        for i, g in enumerate(self.param_groups):
            if id(g) not in seen and not any(_frozen(p) and _matches(p, g["_members"]) for p in params):
                raise ValueError(f"param_groups[{i}] matches no parameter of the model")
        for run in runs:
            run.data, run.grad = params.flat_data[run.start:run.stop], params.flat_grad[run.start:run.stop]
        plan = None if simple else runs
        self._plans = {key: (params.flat_data, plan)}
        return plan

    # -------------------------------------------------------------- state
    def _state_for(self, backend, key, data, count=None):
        """The state buffers for the parameter ``key`` (1-D like data), allocated
        where data lives (backend.zeros), with the optimizer's initial values."""
        entry = self._state.get(id(key))
        if entry is None or entry[0] is not key:
            states = []
            for value in self._initial_state()[:count]:
                buf = backend.zeros(data.shape, data.dtype)
                if value:
                    buf.fill(value)
                states.append(buf)
            entry = (key, states)
            self._state[id(key)] = entry
        return entry[1]

    def _initial_state(self):
        """The initial value of each state buffer (zeros by default)."""
        return (0.0,) * self.STATE

    STATE = 0

    # --------------------------------------------------------------- step
    def step(self, params):
        if not isinstance(params, (list, tuple)) and getattr(params, "flat_data", None) is None:
            params = list(params) if hasattr(params, "__iter__") and not isinstance(params, (str, bytes)) else params
        backend = _backend_of(params)
        pairs = _buffers(params)
        self._track(backend, params, pairs)
        if self.clip_norm is not None:
            clip_grad_norm(params, self.clip_norm)
        self.iterations += 1
        if getattr(params, "flat_data", None) is not None:
            if not self.param_groups and not _layers.any_frozen():
                key, data, grad = pairs[0]
                self._kernel(backend, data, grad, self._state_for(backend, key, data), self._hyper(None))
                return
            plan = self._plan(params)
            key, data, grad = pairs[0]
            state = self._state_for(backend, key, data)
            if plan is None:
                self._kernel(backend, data, grad, state, self._hyper(None))
                return
            for run in plan:
                self._kernel(backend, run.data, run.grad, [s[run.start:run.stop] for s in state],
                             self._hyper(run.group))
            return
        for p, (key, data, grad) in zip(params, pairs):
            if _frozen(p):
                continue
            group = self._group_of(p) if self.param_groups else None
            self._kernel(backend, data, grad, self._state_for(backend, key, data), self._hyper(group))

    # ------------------------------------------------------ state_dict
    STATE_NAMES = ()   # each state buffer's name in state_dict (torch's names)
    OPTIONS = {}       # constructor arguments beyond HYPER that state_dict keeps: name -> bool or float

    def __getstate__(self):
        # The layout holds buffers and backends (modules): it is rebuilt at the next step.
        state = dict(self.__dict__)
        state["_layout"], state["_tracked"], state["_plans"] = {}, None, {}
        return state

    def _track(self, backend, params, pairs):
        """Remember which parameters each state buffer holds (by name and offset: the
        state_dict keys), then put a loaded state in place."""
        if pairs is self._tracked and self._pending is None:
            return        # model.parameters()' cached buffer list, already known: the usual step
        flat = getattr(params, "flat_data", None) is not None
        for i, (key, data, _) in enumerate(pairs):
            known = self._layout.get(id(key))
            if known is not None and known[0] is key:
                continue
            if flat:
                layout = [(p.name, p.offset, tuple(p.data.shape)) for p in params]
            else:
                p = params[i]
                layout = [(str(getattr(p, "name", None) or i), 0, tuple(p.data.shape))]
            self._layout[id(key)] = (key, backend, layout)
        if self._pending is not None:
            self._apply_pending(backend, pairs)
        self._tracked = pairs if flat else None

    def _apply_pending(self, backend, pairs):
        pending = self._pending
        if pending:
            expected = {f"{name}.{b}": shape for key, _, _ in pairs
                        for name, _, shape in self._layout[id(key)][2] for b in self.STATE_NAMES}
            if set(pending) != set(expected):
                missing, extra = sorted(set(expected) - set(pending)), sorted(set(pending) - set(expected))
                raise ValueError(f"the loaded {type(self).__name__} state does not fit these parameters: "
                                 f"missing {missing[:5]}, unexpected {extra[:5]}")
            for name, shape in expected.items():
                if pending[name].shape != shape:
                    raise ValueError(f"optimizer state {name} has shape {pending[name].shape}, "
                                     f"the parameter has {shape}")
            for key, data, _ in pairs:
                hosts = []
                for b, initial in zip(self.STATE_NAMES, self._initial_state()):
                    host = np.full(data.shape, initial, data.dtype)
                    for name, off, shape in self._layout[id(key)][2]:
                        host[off:off + math.prod(shape)] = pending[f"{name}.{b}"].reshape(-1)
                    hosts.append(host)
                self._state[id(key)] = (key, [backend.to_device(h) for h in hosts])
        self._pending = None

    def _options(self):
        """The constructor's arguments: HYPER, OPTIONS and clip_norm (JSON-able)."""
        out = {key: _jsonable(getattr(self, key)) for key in self.HYPER}
        out.update({key: getattr(self, key) for key in self.OPTIONS})
        out["clip_norm"] = self.clip_norm
        return out

    def state_dict(self):
        """Everything the next step depends on, torch-like: ``type``, ``hyper`` (the
        constructor's arguments), ``iterations``, ``param_groups`` (each group's
        hyper-parameters and its members as parameter names / layer prefixes) -- all
        JSON-able -- and ``state``: "<parameter name>.<buffer>" -> numpy array (e.g.
        "0.weight.exp_avg"), so it survives a model rebuilt from its file. Before the first
        step the state is empty (the buffers start at their initial values)."""
        if self._pending is not None:
            state = {k: v.copy() for k, v in self._pending.items()}
        else:
            state = {}
            for key_id, (key, states) in self._state.items():
                known = self._layout.get(key_id)
                if known is None or known[0] is not key:
                    continue
                _, backend, layout = known
                for b, buf in zip(self.STATE_NAMES, states):
                    host = np.asarray(backend.to_host(buf))
                    for name, off, shape in layout:
                        state[f"{name}.{b}"] = host[off:off + math.prod(shape)].reshape(shape).copy()
        return dict(self._describe(), state=state)

    def _describe(self):
        """state_dict() without the state arrays (all JSON-able)."""
        groups = []
        for i, g in enumerate(self.param_groups):
            desc = {"params": _member_names(g["params"], f"param_groups[{i}]")}
            desc.update({key: _jsonable(g[key]) for key in self.HYPER})
            groups.append(desc)
        return {"type": type(self).__name__, "hyper": self._options(), "iterations": self.iterations,
                "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore what state_dict() returned (the optimizer's class must match). Groups
        this optimizer already has keep their members and take the saved hyper-parameters;
        an optimizer built without groups takes the saved groups by name. The saved state
        is put in place at the next step, which is then the step the saved optimizer would
        have taken."""
        sd = state_dict
        cls = type(self).__name__
        if not isinstance(sd, dict):
            raise TypeError(f"{cls}.load_state_dict takes a dict, got {type(sd).__name__}")
        if sd.get("type") != cls:
            raise ValueError(f"this state_dict is of a {sd.get('type')!r} optimizer, not a {cls}")
        missing = {"hyper", "iterations", "param_groups", "state"} - set(sd)
        if missing:
            raise ValueError(f"{cls} state_dict lacks {sorted(missing)}")
        iterations = sd["iterations"]
        if isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral) or iterations < 0:
            raise ValueError(f"state_dict iterations must be an integer >= 0, got {iterations!r}")
        hyper = self.check_hyper(sd["hyper"])
        groups = sd["param_groups"]
        if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
            raise TypeError("state_dict param_groups must be a list of dicts")
        for i, g in enumerate(groups):
            names = g.get("params")
            if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
                raise TypeError(f"state_dict param_groups[{i}]['params'] must be a list of parameter names")
            unknown = set(g) - {"params"} - set(self.HYPER)
            if unknown or set(self.HYPER) - set(g):
                raise ValueError(f"state_dict param_groups[{i}] must hold 'params' and {sorted(self.HYPER)}")
            self._hyper(g, f"state_dict param_groups[{i}]")
        if self.param_groups and len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(groups)} param groups, this optimizer {len(self.param_groups)}")
        for i, (g, saved) in enumerate(zip(self.param_groups, groups)):
            try:
                mine = _member_names(g["params"], f"param_groups[{i}]")
            except ValueError:
                continue      # a layer not in a built model yet: nothing to compare
            if sorted(mine) != sorted(saved["params"]):
                raise ValueError(f"param_groups[{i}] holds {mine}, the state_dict's group {saved['params']}")
        buffers = sd["state"]
        if not isinstance(buffers, dict):
            raise TypeError("state_dict state must be a dict of arrays")
        pending = {}
        for name, value in buffers.items():
            if not isinstance(name, str) or name.rsplit(".", 1)[-1] not in self.STATE_NAMES or "." not in name:
                raise ValueError(f"{cls} state_dict: unexpected state {name!r} (buffers: {list(self.STATE_NAMES)})")
            if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
                raise TypeError(f"{cls} state_dict: state {name} must be a float numpy array")
            if not np.isfinite(value).all():
                raise ValueError(f"{cls} state_dict: state {name} holds NaN or inf")
            pending[name] = np.array(value)
        # Everything is checked: now change the optimizer.
        for key, value in hyper.items():
            setattr(self, key, value)
        if self.param_groups:
            for g, saved in zip(self.param_groups, groups):
                g.update(self._hyper(saved))
        else:
            self.param_groups = self._make_groups([dict(g) for g in groups])
        self.iterations = int(iterations)
        self._state, self._plans, self._pending = {}, {}, pending

    @classmethod
    def check_hyper(cls, hyper, what="state_dict hyper"):
        """The constructor arguments in a state_dict's ``hyper``, validated (a class method:
        ``cls(**cls.check_hyper(sd["hyper"]))`` rebuilds the optimizer)."""
        if not isinstance(hyper, dict):
            raise TypeError(f"{what} must be a dict")
        known = set(cls.HYPER) | set(cls.OPTIONS) | {"clip_norm"}
        if set(hyper) != known:
            raise ValueError(f"{what} must hold exactly {sorted(known)}, got {sorted(hyper)}")
        out = {key: check(hyper[key], f"{what} {key}") for key, check in cls.HYPER.items()}
        for key, kind in cls.OPTIONS.items():
            value = hyper[key]
            if kind is bool:
                if not isinstance(value, bool):
                    raise TypeError(f"{what} {key} must be true or false, got {value!r}")
                out[key] = value
            else:
                out[key] = _check(value, f"{what} {key}")
        clip = hyper["clip_norm"]
        out["clip_norm"] = None if clip is None else _check(clip, f"{what} clip_norm", low_open=True)
        return out

    def _kernel(self, backend, data, grad, state, hyper):
        raise NotImplementedError(f"{type(self).__name__} does not define its update")

    def zero_grad(self, params):
        for p in params:
            p.grad[...] = 0


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def _member_names(spec, what):
    """A group's 'params' as parameter names / layer prefixes (what state_dict stores)."""
    items = spec if isinstance(spec, (list, tuple)) else [spec]
    names = []
    for item in items:
        if isinstance(item, str):
            names.append(item)
        elif isinstance(item, _layers.Layer):
            owner = getattr(item, "_owner", None)
            model = owner() if owner is not None else None
            prefix = None if model is None else model._prefix.get(id(item))
            if prefix is None:
                raise ValueError(f"{what}: {type(item).__name__} is in no built model, so it has no name")
            names.append(prefix)
        elif isinstance(getattr(item, "name", None), str):
            names.append(item.name)
        else:
            raise ValueError(f"{what}: a parameter without a name cannot be saved")
    return names


def _lr(v, name):
    return _check(v, name)       # 0 is allowed, as in torch: a schedule may pass through it


def _nonneg(v, name):
    return _check(v, name)


class SGD(Optimizer):
    """SGD with optional momentum, Nesterov momentum and L2 weight decay (torch.optim.SGD)."""
    HYPER = {"lr": _lr, "momentum": _nonneg, "weight_decay": _nonneg}
    STATE = 1
    STATE_NAMES = ("momentum_buffer",)
    OPTIONS = {"nesterov": bool}

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0,
                 param_groups=None, clip_norm=None):
        self.lr = _check(lr, "learning rate lr", low_open=True)
        self.momentum = _check(momentum, "momentum")
        self.weight_decay = _check(weight_decay, "weight_decay")
        if nesterov and self.momentum == 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.nesterov = bool(nesterov)
        super().__init__(param_groups, clip_norm)
        if self.nesterov and any(g["momentum"] == 0 for g in self.param_groups):
            raise ValueError("Nesterov momentum needs momentum > 0 in every param group")

    def _kernel(self, backend, data, grad, state, h):
        backend.raw.sgd_step(data, grad, state[0], h["lr"], h["momentum"], self.nesterov, h["weight_decay"])


class _AdamBase(Optimizer):
    HYPER = {"lr": _lr, "betas": lambda v, name: _betas(v), "eps": _nonneg, "weight_decay": _nonneg}
    STATE = 2
    STATE_NAMES = ("exp_avg", "exp_avg_sq")

    def __init__(self, lr, betas, eps, weight_decay, param_groups, clip_norm):
        self.lr = _check(lr, "learning rate lr", low_open=True)
        self.betas = _betas(betas)
        self.eps = _check(eps, "eps")
        self.weight_decay = _check(weight_decay, "weight_decay")
        super().__init__(param_groups, clip_norm)

    # The names Adam had before betas was a pair (kept for callers that read them).
    @property
    def beta1(self):
        return self.betas[0]

    @property
    def beta2(self):
        return self.betas[1]

    def _kernel(self, backend, data, grad, state, h):
        m, v = state
        b1, b2 = h["betas"]
        getattr(backend.raw, self.STEP_KERNEL)(data, grad, m, v, h["lr"], b1, b2, h["eps"],
                                               h["weight_decay"], self.iterations)


class Adam(_AdamBase):
    """Adam (Kingma & Ba) with bias correction and optional L2 weight decay (torch.optim.Adam)."""
    STEP_KERNEL = "adam_step"

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 param_groups=None, clip_norm=None):
        super().__init__(lr, betas, eps, weight_decay, param_groups, clip_norm)


class AdamW(_AdamBase):
    """AdamW (Loshchilov & Hutter): Adam with decoupled weight decay, p *= 1 - lr * weight_decay
    before the Adam update (torch.optim.AdamW)."""
    STEP_KERNEL = "adamw_step"

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 param_groups=None, clip_norm=None):
        super().__init__(lr, betas, eps, weight_decay, param_groups, clip_norm)


class RMSprop(Optimizer):
    """RMSprop (torch.optim.RMSprop): square_avg = alpha sq + (1 - alpha) g^2; centered
    subtracts the squared running mean of g; momentum > 0 keeps a buffer of g / avg."""
    HYPER = {"lr": _nonneg, "alpha": _nonneg, "eps": _nonneg, "weight_decay": _nonneg,
             "momentum": _nonneg}
    STATE = 3   # square_avg, grad_avg (centered), momentum buffer
    STATE_NAMES = ("square_avg", "grad_avg", "momentum_buffer")
    OPTIONS = {"centered": bool}

    def __init__(self, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, param_groups=None, clip_norm=None):
        self.lr = _check(lr, "learning rate lr", low_open=True)
        self.alpha = _check(alpha, "alpha")
        self.eps = _check(eps, "eps")
        self.weight_decay = _check(weight_decay, "weight_decay")
        self.momentum = _check(momentum, "momentum")
        self.centered = bool(centered)
        super().__init__(param_groups, clip_norm)

    def _kernel(self, backend, data, grad, state, h):
        sq, ga, mb = state
        backend.raw.rmsprop_step(data, grad, sq, ga, mb, h["lr"], h["alpha"], h["eps"],
                                 h["weight_decay"], h["momentum"], self.centered)


class Adagrad(Optimizer):
    """Adagrad (torch.optim.Adagrad): state_sum += g^2, p -= clr g / (sqrt(state_sum) + eps),
    clr = lr / (1 + (step - 1) lr_decay); state_sum starts at initial_accumulator_value."""
    HYPER = {"lr": _nonneg, "lr_decay": _nonneg, "weight_decay": _nonneg, "eps": _nonneg}
    STATE = 1
    STATE_NAMES = ("sum",)
    OPTIONS = {"initial_accumulator_value": float}

    def __init__(self, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                 eps=1e-10, param_groups=None, clip_norm=None):
        self.lr = _check(lr, "learning rate lr", low_open=True)
        self.lr_decay = _check(lr_decay, "lr_decay")
        self.weight_decay = _check(weight_decay, "weight_decay")
        self.initial_accumulator_value = _check(initial_accumulator_value, "initial_accumulator_value")
        self.eps = _check(eps, "eps")
        super().__init__(param_groups, clip_norm)

    def _initial_state(self):
        return (self.initial_accumulator_value,)

    def _kernel(self, backend, data, grad, state, h):
        backend.raw.adagrad_step(data, grad, state[0], h["lr"], h["lr_decay"], h["weight_decay"],
                                 h["eps"], self.iterations)


# ------------------------------------------------------------------ clipping


def clip_grad_norm(params, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scale the gradients in place so their total norm is at most max_norm; returns the
    total norm before clipping, as torch.nn.utils.clip_grad_norm_ does (the same
    max_norm / (norm + 1e-6) factor, applied only when below 1). ``params`` is
    model.parameters() (one norm kernel and one scale kernel over the flat gradient;
    frozen layers' gradients are left out) or an iterable of Parameters."""
    from .._kernels import checks
    max_norm = _check(max_norm, "max_norm")
    order = checks.norm_order(norm_type)
    if not isinstance(params, (list, tuple)) and getattr(params, "flat_data", None) is None:
        params = list(params) if hasattr(params, "__iter__") and not isinstance(params, (str, bytes)) else params
    backend = _backend_of(params)
    pairs = _buffers(params)
    if getattr(params, "flat_data", None) is not None:
        if _layers.any_frozen():
            grads = [p.grad.reshape(-1) for p in params if not _frozen(p)]
        else:
            grads = [pairs[0][2]]
    else:
        grads = [grad for p, (_, _, grad) in zip(params, pairs) if not _frozen(p)]
    norms = [backend.raw.grad_norm(g, order) for g in grads]
    if not norms:
        return 0.0
    if math.isinf(order):
        total = max(norms)
        if any(math.isnan(n) for n in norms):
            total = float("nan")
    else:
        total = math.fsum(n ** order for n in norms) ** (1.0 / order)
    if error_if_nonfinite and not math.isfinite(total):
        raise FloatingPointError(f"the total norm of order {order} of the gradients is {total}: "
                                 "the gradients cannot be clipped")
    factor = max_norm / (total + 1e-6)
    if not factor >= 1.0:   # also NaN, as torch multiplies by it
        for g in grads:
            backend.raw.grad_scale(g, factor)
    return total


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop, "adagrad": Adagrad}


def get(optimizer):
    """An Optimizer, or one built from a name ('sgd', 'adam', 'adamw', 'rmsprop', 'adagrad') with defaults."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    if isinstance(optimizer, str) and optimizer.lower() in OPTIMIZERS:
        return OPTIMIZERS[optimizer.lower()]()
    raise ValueError(f"unknown optimizer {optimizer!r}; use an Optimizer or one of {list(OPTIMIZERS)}")
from . import lr_scheduler  # noqa: E402,F401  (StepLR, CosineAnnealingLR, OneCycleLR, LambdaLR)
