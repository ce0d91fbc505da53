"""Training checkpoints: a Trainer's whole state in one safetensors file, and resume.

``save_trainer(trainer, path)`` writes (atomically, fastnn.io.atomic_write):

* tensors: the model's parameters and buffers as ``model.<state_dict key>`` and the
  optimizer's state buffers as ``optimizer.state.<parameter>.<buffer>``
  ("optimizer.state.0.weight.exp_avg");
* JSON in the metadata (format tag ``fastnn-checkpoint-v1``): the model's architecture
  (``model.config()``, as in model files) and train/eval mode, the optimizer's class and
  ``state_dict()`` without arrays, the scheduler's class and ``state_dict()``, the
  trainer's seed, epoch and history, the loss (names and options; a custom function is
  recorded by name only), loss weights and options, the metric names, each Dropout
  layer's ``calls`` counter (the position of its mask stream) and the fastnn version.

``load_trainer(path, backend=None, loss=None, scheduler=None)`` rebuilds the Trainer.
Nothing is unpickled: the JSON's types are checked, the tensors' names and shapes are
checked against the architecture before any is read, and unknown classes, a file of
another kind or a corrupt one raise ``fastnn.ModelFileError``. Continuing with
``fit(..., initial_epoch=trainer.epoch)`` then draws the same batches (shuffles come from
(seed, epoch)) and the same dropout masks as the run that was never interrupted.

``BackupAndRestore(backup_dir)`` is Keras' callback of that name, built on these.
"""
import json
import numbers
import os
import sys
import warnings

import numpy as np

from . import io
from .callbacks import Callback

MODEL, OPTIMIZER = "model.", "optimizer.state."


# ------------------------------------------------------------------ saving
def save_trainer(trainer, path):
    """Write the trainer's state (model, optimizer, scheduler, epoch, history, loss,
    metrics, dropout positions) to one .safetensors file, atomically. A distributed trainer
    writes on rank 0 only (every rank holds the same state)."""
    if getattr(trainer, "is_main", True):
        _write(path, _snapshot(trainer))


def _snapshot(trainer, epoch=None):
    """(JSON metadata, tensors) of the trainer now: copies, so they can be written later."""
    if not hasattr(trainer.optimizer, "state_dict"):
        raise TypeError(f"cannot checkpoint a {type(trainer.optimizer).__name__}: it has no state_dict()")
    tensors = {MODEL + k: v for k, v in trainer.model.state_dict().items()}
    tensors.update({OPTIMIZER + k: v for k, v in trainer.optimizer.state_dict()["state"].items()})
    return _meta(trainer, epoch), tensors


def _meta(trainer, epoch=None):
    """The JSON part of a checkpoint (a deep copy made of JSON types only)."""
    from . import __version__
    model, optimizer = trainer.model, trainer.optimizer
    opt = optimizer._describe() if hasattr(optimizer, "_describe") else \
        {k: v for k, v in optimizer.state_dict().items() if k != "state"}
    scheduler = getattr(trainer, "scheduler", None)
    meta = {
        "fastnn_version": __version__,
        "model": model.config(),
        "training": bool(model.training),
        "optimizer": opt,
        "scheduler": None if scheduler is None else
        {"type": type(scheduler).__name__, "state": scheduler.state_dict()},
        "seed": trainer.seed,
        "epoch": int(getattr(trainer, "epoch", 0) if epoch is None else epoch),
        "history": _history_json(getattr(trainer, "history", None)),
        "loss": _loss_spec_of(trainer),
        "metrics": None if getattr(trainer, "metrics", None) is None else
        [m if isinstance(m, str) else {"custom": _name_of(m)} for m in trainer.metrics],
        # the mask stream's key too: with seed=None a rebuilt model would draw a new one
        "dropout": {prefix: {"calls": int(layer.calls), "key": int(layer._key)}
                    for prefix, layer in _rng_layers(model)},
    }
    try:
        meta = json.loads(json.dumps(meta, default=_plain))   # a deep, JSON-only copy
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot checkpoint this trainer: its state is not JSON-able: {exc}") from None
    return meta


def _write(path, snapshot):
    meta, tensors = snapshot
    io.save(path, meta, tensors, format=io.CHECKPOINT_FORMAT)


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-able")


def _name_of(obj):
    return str(getattr(obj, "name", None) or getattr(obj, "__name__", None) or type(obj).__name__)


def _rng_layers(model):
    """(prefix, layer) of every layer with a mask stream (Dropout: seed_rng and calls)."""
    return [(prefix, layer) for prefix, layer in model._named_layers()
            if hasattr(layer, "seed_rng") and isinstance(getattr(layer, "calls", None), numbers.Integral)]


def _history_json(history):
    if history is None:
        return {"epoch": [], "history": {}}
    return {"epoch": [int(e) for e in history.epoch],
            "history": {str(k): list(v) for k, v in history.history.items()}}


def _loss_json(loss):
    """A loss as the Trainer was given it, in JSON: a name, {"name", "options"} for a Loss
    object, {"custom": name} for a function (which cannot be saved), or a list per output."""
    from . import losses
    if isinstance(loss, str):
        return loss
    if isinstance(loss, losses.Loss):
        return {"name": loss.name, "options": loss.options()}
    if isinstance(loss, dict):       # per output, keyed by output index
        return [_loss_json(loss[k]) for k in sorted(loss)]
    if isinstance(loss, (list, tuple)):
        return [_loss_json(item) for item in loss]
    if callable(loss):
        return {"custom": str(getattr(loss, "__name__", type(loss).__name__))}
    raise TypeError(f"cannot checkpoint the loss {loss!r}")


def _loss_spec_of(trainer):
    """{"loss", "loss_options", "loss_weights"} from trainer.loss_spec (the Trainer's
    arguments as given), else recovered from the Trainer's per-output losses."""
    spec = getattr(trainer, "loss_spec", None)
    if isinstance(spec, dict):
        weights = spec.get("loss_weights")
        if isinstance(weights, dict):
            weights = [weights[k] for k in sorted(weights)]
        options = spec.get("loss_options")
        return {"loss": _loss_json(spec.get("loss", "cross_entropy")), "loss_options": options,
                "loss_weights": weights}
    # Until the Trainer records loss_spec: names and weights survive, a Loss object's options
    # do not (its bound kernel is then not the plain one), so say so.
    outs = getattr(trainer, "_losses", [])
    raw = trainer.model.backend.raw
    if any(not o.custom and o.kernel is not getattr(raw, o.name, None) for o in outs):
        warnings.warn("this Trainer has no loss_spec: the loss options (label_smoothing, weight, delta, "
                      "...) are not in the checkpoint", stacklevel=3)
    names = [{"custom": o.name} if o.custom else o.name for o in outs]
    return {"loss": names[0] if len(names) == 1 else names, "loss_options": None,
            "loss_weights": [o.weight for o in outs] if any(o.weight != 1.0 for o in outs) else None}


# ----------------------------------------------------------------- reading
def _bad(path, message):
    return io.ModelFileError(f"{path}: {message}")


def _int(path, value, what, low=0):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _bad(path, f"{what} must be an integer >= {low}, got {value!r}")
    return value


def _read(path):
    """(meta, {tensor name: (shape, dtype)}) of a checkpoint, every JSON field type-checked."""
    path = os.fspath(path)
    meta, shapes = io.read_header(path, formats=(io.CHECKPOINT_FORMAT,))
    need = {"model": dict, "training": bool, "optimizer": dict, "epoch": int, "history": dict,
            "loss": (str, dict, list), "metrics": (list, type(None)), "dropout": dict}
    for key, kind in need.items():
        if key not in meta:
            raise _bad(path, f"the checkpoint lacks {key!r}")
        if not isinstance(meta[key], kind) or (kind is int and isinstance(meta[key], bool)):
            raise _bad(path, f"{key!r} has the wrong type ({type(meta[key]).__name__})")
    _int(path, meta["epoch"], "epoch")
    if meta.get("seed") is not None:
        _int(path, meta["seed"], "seed")
    if not all(isinstance(m, str) or (isinstance(m, dict) and set(m) == {"custom"}
                                      and isinstance(m["custom"], str)) for m in meta["metrics"] or []):
        raise _bad(path, "metrics must be a list of names")
    h = meta["history"]
    if not isinstance(h.get("epoch"), list) or not isinstance(h.get("history"), dict):
        raise _bad(path, "history must hold an 'epoch' list and a 'history' dict")
    for e in h["epoch"]:
        _int(path, e, "a history epoch")
    for k, values in h["history"].items():
        if not isinstance(values, list) or not all(
                v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values):
            raise _bad(path, f"history[{k!r}] must be a list of numbers")
    for prefix, rng in meta["dropout"].items():
        if not isinstance(rng, dict) or set(rng) != {"calls", "key"}:
            raise _bad(path, f"dropout[{prefix!r}] must be {{'calls': n, 'key': k}}")
        _int(path, rng["calls"], f"dropout[{prefix!r}] calls")
        if _int(path, rng["key"], f"dropout[{prefix!r}] key") >= 1 << 64:
            raise _bad(path, f"dropout[{prefix!r}] key must fit 64 bits")
    opt = meta["optimizer"]
    if not isinstance(opt.get("type"), str):
        raise _bad(path, "the optimizer's type must be a class name")
    sched = meta.get("scheduler")
    if sched is not None and not (isinstance(sched, dict) and isinstance(sched.get("type"), str)
                                  and isinstance(sched.get("state"), dict)):
        raise _bad(path, "scheduler must be null or {'type': name, 'state': dict}")
    return path, meta, shapes


def _optimizer_class(path, name):
    from . import optim
    classes = {cls.__name__: cls for cls in optim.OPTIMIZERS.values()}
    if name not in classes:
        raise _bad(path, f"unknown optimizer class {name!r} (known: {sorted(classes)})")
    return classes[name]


def _check_tensors(path, shapes, model_shapes, params, opt_cls):
    """Every tensor is a float of the right shape: model.<key> for each model tensor and
    optimizer.state.<parameter>.<buffer> for a known buffer of a known parameter."""
    model_keys = {k[len(MODEL):] for k in shapes if k.startswith(MODEL)}
    other = [k for k in shapes if not k.startswith(MODEL) and not k.startswith(OPTIMIZER)]
    if other:
        raise _bad(path, f"unexpected tensors {sorted(other)[:5]}")
    if model_keys != set(model_shapes):
        missing, extra = sorted(set(model_shapes) - model_keys), sorted(model_keys - set(model_shapes))
        raise _bad(path, f"the model tensors do not match the architecture (missing {missing[:5]}, "
                         f"unexpected {extra[:5]})")
    for key, (shape, dtype) in shapes.items():
        if dtype.kind != "f":
            raise _bad(path, f"{key} has dtype {dtype}, not a float")
        if key.startswith(MODEL):
            if shape != model_shapes[key[len(MODEL):]]:
                raise _bad(path, f"{key} has shape {shape}, the architecture needs "
                                 f"{model_shapes[key[len(MODEL):]]}")
            continue
        pname, _, buf = key[len(OPTIMIZER):].rpartition(".")
        if buf not in opt_cls.STATE_NAMES or pname not in params:
            raise _bad(path, f"unexpected optimizer state {key}")
        if shape != params[pname]:
            raise _bad(path, f"{key} has shape {shape}, the parameter has {params[pname]}")


def _build_model(path, meta, backend):
    """(shapes of the model's tensors, of its parameters, a function that builds the model
    unfilled): fastnn.model's loader pieces, nothing allocated yet."""
    from . import model as M
    top, expected, build = M.saved_builder(path, meta["model"], backend)
    try:
        params = {f"{prefix}.{name}": tuple(int(d) for d in shape)
                  for prefix, layer in M.named_layers(top) for name, shape in layer.param_shapes().items()}
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise _bad(path, f"corrupt architecture: {type(exc).__name__}: {exc}") from None
    return expected, params, build


def _fill(path, meta, tensors, trainer, model, optimizer):
    """Put the checkpoint's model tensors, optimizer state, dropout positions, epoch and
    history into model / optimizer / trainer (all already validated)."""
    try:
        model.load_state_dict({k[len(MODEL):]: v for k, v in tensors.items() if k.startswith(MODEL)})
    except ValueError as exc:
        raise _bad(path, str(exc)) from None
    model.train(meta["training"])
    opt = dict(meta["optimizer"])
    opt["state"] = {k[len(OPTIMIZER):]: v for k, v in tensors.items() if k.startswith(OPTIMIZER)}
    names = [p.name for p in model.parameters()]
    for i, group in enumerate(opt.get("param_groups") or []):
        members = group.get("params") if isinstance(group, dict) else None
        for n in members if isinstance(members, list) else []:
            if not isinstance(n, str) or not any(p == n or p.startswith(n + ".") for p in names):
                raise _bad(path, f"optimizer param_groups[{i}] names {n!r}, which is no parameter of the model")
    try:
        optimizer.load_state_dict(opt)
    except (TypeError, ValueError) as exc:
        raise _bad(path, f"optimizer state: {exc}") from None
    rng = dict(_rng_layers(model))
    if set(meta["dropout"]) != set(rng):
        raise _bad(path, f"dropout counters for {sorted(meta['dropout'])}, the model's dropout layers "
                         f"are {sorted(rng)}")
    for prefix, saved in meta["dropout"].items():
        rng[prefix]._key, rng[prefix].calls = saved["key"], saved["calls"]
    trainer.epoch = meta["epoch"]
    history = getattr(trainer, "history", None)
    if history is None or not hasattr(history, "history"):
        from .trainer import History
        history = History()
    history.epoch[:] = meta["history"]["epoch"]
    history.history.clear()
    history.history.update({k: list(v) for k, v in meta["history"]["history"].items()})
    trainer.history = history
    if "seed" in meta:
        trainer.seed = meta["seed"]


def _scheduler(path, meta, optimizer, given):
    """The scheduler rebuilt around the loaded optimizer: given(optimizer) when given (a
    factory, needed for LambdaLR's functions) then its load_state_dict, else
    fastnn.optim.lr_scheduler.from_state_dict (class and arguments from the saved state)."""
    saved = meta.get("scheduler")
    if saved is None:
        return None if given is None else given(optimizer)
    name, state = saved["type"], saved["state"]
    if given is not None:
        sched = given(optimizer)
        if type(sched).__name__ != name:
            raise ValueError(f"{path}: the checkpoint's scheduler is a {name}, scheduler= made a "
                             f"{type(sched).__name__}")
        try:
            sched.load_state_dict(state)
        except (TypeError, ValueError, KeyError) as exc:
            raise _bad(path, f"scheduler state: {type(exc).__name__}: {exc}") from None
        return sched
    try:
        from .optim import lr_scheduler
    except ImportError:
        raise _bad(path, f"the checkpoint has a {name} scheduler but fastnn.optim.lr_scheduler "
                         "is missing") from None
    known = getattr(lr_scheduler, "SCHEDULERS", {})
    if name not in known or state.get("type", name) != name:
        raise _bad(path, f"unknown scheduler class {name!r} (known: {sorted(known)})")
    if "lr_lambdas" in state:
        raise ValueError(f"{path}: the checkpoint's {name} holds functions that are not saved: "
                         f"pass scheduler=lambda opt: {name}(opt, ...) to load_trainer")
    try:
        return lr_scheduler.from_state_dict(optimizer, state)
    except (TypeError, ValueError, KeyError) as exc:
        raise _bad(path, f"scheduler state: {type(exc).__name__}: {exc}") from None


def _decode_loss(path, spec, given):
    """The Trainer's loss argument from its JSON (given replaces it: required for custom ones)."""
    customs = []

    def decode(item):
        if isinstance(item, str):
            return item
        if isinstance(item, list):
            return [decode(i) for i in item]
        if isinstance(item, dict) and set(item) == {"custom"} and isinstance(item["custom"], str):
            customs.append(item["custom"])
            return None
        if isinstance(item, dict) and set(item) == {"name", "options"} and isinstance(item["name"], str) \
                and isinstance(item["options"], dict):
            from . import losses
            try:
                return losses.get(item["name"], **item["options"]) if item["options"] else item["name"]
            except (TypeError, ValueError) as exc:
                raise _bad(path, f"loss {item['name']!r}: {exc}") from None
        raise _bad(path, f"corrupt loss description {item!r}")

    loss = decode(spec)
    if given is not None:
        return given
    if customs:
        raise ValueError(f"{path}: the checkpoint's loss is a custom function ({', '.join(customs)}), "
                         "which is not saved: pass it as load_trainer(path, loss=...)")
    return loss


def load_trainer(path, backend=None, loss=None, scheduler=None, metrics=None):
    """The Trainer saved at path (save_trainer): model, optimizer state, scheduler, seed,
    epoch, history, metrics and dropout positions restored. ``backend`` overrides the saved
    one; ``loss`` must be given when the saved loss was a custom function (it replaces the
    saved loss), ``metrics`` when a saved metric was an object or function (it replaces the
    saved list); ``scheduler`` is a function optimizer -> scheduler, needed when the saved
    scheduler holds functions (LambdaLR). Every malformed file raises ModelFileError."""
    import inspect
    from .trainer import Trainer
    path, meta, shapes = _read(path)
    opt_cls = _optimizer_class(path, meta["optimizer"]["type"])
    expected, params, make = _build_model(path, meta, backend)
    spec = meta["loss"] if isinstance(meta["loss"], dict) and "loss" in meta["loss"] else {"loss": meta["loss"]}
    loss_arg = _decode_loss(path, spec["loss"], loss)
    options, weights = spec.get("loss_options"), spec.get("loss_weights")
    # The model is built (allocated) only after every tensor's name and shape is checked.
    _check_tensors(path, shapes, expected, params, opt_cls)
    model = make()
    try:
        optimizer = opt_cls(**opt_cls.check_hyper(meta["optimizer"].get("hyper")))
    except (TypeError, ValueError) as exc:
        raise _bad(path, f"optimizer: {exc}") from None
    kwargs = {"loss": loss_arg, "optimizer": optimizer, "seed": meta.get("seed"),
              "loss_weights": weights, "loss_options": options}
    custom = [m["custom"] for m in meta["metrics"] or [] if isinstance(m, dict)]
    if metrics is None and custom:
        raise ValueError(f"{path}: the checkpoint's metrics include objects or functions ({', '.join(custom)}) "
                         "that are not saved: pass the metrics list as load_trainer(path, metrics=[...])")
    if "metrics" in inspect.signature(Trainer).parameters:
        kwargs["metrics"] = metrics if metrics is not None else meta["metrics"]
    elif meta["metrics"]:
        warnings.warn(f"{path}: this Trainer takes no metrics; {meta['metrics']} are not restored")
    try:
        trainer = Trainer(model, **kwargs)
    except (TypeError, ValueError) as exc:
        raise _bad(path, f"cannot rebuild the Trainer: {exc}") from None
    _fill(path, meta, io.read_tensors(path), trainer, model, optimizer)
    trainer.scheduler = _scheduler(path, meta, optimizer, scheduler)
    return trainer


def restore_trainer(trainer, path):
    """Load the checkpoint at path into an existing trainer (its model must have the
    checkpoint's architecture, its optimizer the checkpoint's class); the scheduler is
    restored into trainer.scheduler when both have one."""
    path, meta, shapes = _read(path)
    opt_cls = _optimizer_class(path, meta["optimizer"]["type"])
    if type(trainer.optimizer) is not opt_cls:
        raise _bad(path, f"the checkpoint's optimizer is a {opt_cls.__name__}, the trainer's a "
                         f"{type(trainer.optimizer).__name__}")
    model = trainer.model
    params = {p.name: tuple(p.data.shape) for p in model.parameters()}
    _check_tensors(path, shapes, model._state_shapes(), params, opt_cls)
    _fill(path, meta, io.read_tensors(path), trainer, model, trainer.optimizer)
    saved, current = meta.get("scheduler"), getattr(trainer, "scheduler", None)
    if saved is not None and current is not None:
        if type(current).__name__ != saved["type"]:
            raise _bad(path, f"the checkpoint's scheduler is a {saved['type']}, the trainer's a "
                             f"{type(current).__name__}")
        try:
            current.load_state_dict(saved["state"])
        except (TypeError, ValueError, KeyError) as exc:
            raise _bad(path, f"scheduler state: {type(exc).__name__}: {exc}") from None
    elif saved is not None:
        warnings.warn(f"{path}: the checkpoint's {saved['type']} scheduler is not restored: "
                      "the trainer has no scheduler")
    return trainer


# ------------------------------------------------------------ the callback
class BackupAndRestore(Callback):
    """Keras' BackupAndRestore: resume an interrupted fit where it stopped.

    At train begin, if ``<backup_dir>/backup.safetensors`` exists, the trainer's model,
    optimizer, scheduler, epoch and history are restored from it (fit then continues from
    ``trainer.epoch``). The state at the end of each completed epoch is kept in memory and
    written every ``save_freq`` epochs ("epoch" = 1); when fit ends by KeyboardInterrupt
    (``on_train_end({"interrupted": True})``) or another exception, the last completed
    epoch's state is written, so the resume is exact. When fit ends normally the backup is
    deleted (``delete_checkpoint=True``) or brought up to date.

    The state kept at ``on_epoch_end`` is refreshed (its JSON part: learning rates,
    scheduler, history) at the next ``on_epoch_begin``, so a scheduler stepped or an lr
    changed by another callback after this one's ``on_epoch_end`` is in the backup too;
    periodic writes happen then as well.
    """

    FILE = "backup.safetensors"

    def __init__(self, backup_dir, save_freq="epoch", delete_checkpoint=True):
        if not isinstance(backup_dir, (str, os.PathLike)) or not os.fspath(backup_dir):
            raise TypeError(f"backup_dir must be a folder path, got {backup_dir!r}")
        if save_freq == "epoch":
            save_freq = 1
        if isinstance(save_freq, bool) or not isinstance(save_freq, numbers.Integral) or save_freq < 1:
            raise ValueError(f"save_freq must be 'epoch' or a number of epochs >= 1, got {save_freq!r}")
        self.backup_dir = os.fspath(backup_dir)
        self.save_freq = int(save_freq)
        self.delete_checkpoint = bool(delete_checkpoint)
        self._snap = self._due = None

    @property
    def path(self):
        return os.path.join(self.backup_dir, self.FILE)

    def on_train_begin(self, logs=None):
        os.makedirs(self.backup_dir, exist_ok=True)
        self._snap, self._due = None, False
        if os.path.exists(self.path):
            restore_trainer(self.trainer, self.path)

    def on_epoch_end(self, epoch, logs=None):
        self._snap = _snapshot(self.trainer, epoch=epoch + 1)
        self._due = (epoch + 1) % self.save_freq == 0

    def on_epoch_begin(self, epoch, logs=None):
        if self._snap is None:
            return
        self._snap = (_meta(self.trainer, epoch=self._snap[0]["epoch"]), self._snap[1])
        if self._due:
            if getattr(self.trainer, "is_main", True):
                _write(self.path, self._snap)
            self._due = False

    def on_train_end(self, logs=None):
        logs = logs or {}
        failed = bool(logs.get("interrupted")) or logs.get("exception") is not None \
            or sys.exc_info()[1] is not None
        if not getattr(self.trainer, "is_main", True):   # distributed: rank 0 writes
            pass
        elif failed:
            if self._snap is not None:
                _write(self.path, self._snap)
        elif self.delete_checkpoint:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        else:
            save_trainer(self.trainer, self.path)
        self._snap = None
