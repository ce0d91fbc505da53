"""Learning-rate schedulers with torch.optim.lr_scheduler's semantics.

``StepLR``, ``CosineAnnealingLR`` (with an optional linear warm-up), ``OneCycleLR`` and
``LambdaLR`` take one of fastnn's optimizers. As in torch:

* construction is "step 0": it records ``base_lrs`` and sets the initial lr;
* ``step()`` advances ``last_epoch`` by one and sets the new lrs: call it after each epoch
  (after each batch for ``OneCycleLR``, whose class attribute ``per_batch`` is True;
  the Trainer reads that attribute: ``fit(..., scheduler=s)``);
* ``get_last_lr()`` is the list of lrs the last step set;
* ``state_dict()`` / ``load_state_dict()`` save and restore the schedule (plain JSON-able
  dicts; LambdaLR's functions are not saved, only the ``__dict__`` of callable objects,
  like torch). ``from_state_dict(optimizer, state)`` rebuilds a scheduler from its state
  alone (what a checkpoint loader needs; LambdaLR also needs its ``lr_lambda`` again).

**One lr per param group.** fastnn's optimizers keep the lr of the parameters in no
explicit group in ``optimizer.lr`` and the explicit groups in ``optimizer.param_groups``.
A scheduler treats ``optimizer.lr`` as group 0 and ``optimizer.param_groups[i]`` as group
``i + 1``: ``base_lrs``, ``get_last_lr()``, a per-group ``max_lr`` list or ``lr_lambda``
list have ``1 + len(optimizer.param_groups)`` entries, in that order (the same as a
torch optimizer built with the ungrouped parameters as its first group). Each group is
scheduled from its own base lr; a step sets ``optimizer.lr`` and every group's ``"lr"``.

Differences from torch, on purpose:

* ``load_state_dict`` also puts the saved lrs (and OneCycleLR's momentum) back into the
  optimizer, so a run resumes right even when the optimizer's own state was not restored
  (torch leaves that to ``optimizer.load_state_dict``);
* there is no ``last_epoch=`` constructor argument: resume with ``load_state_dict``;
* ``step(epoch)`` (deprecated in torch) is accepted and uses the closed forms, as torch does.
"""
import math
import numbers
import types

import numpy as np

from ..layers.base import nonneg_int as _nonneg_int, positive_int as _positive_int

__all__ = ["LRScheduler", "StepLR", "CosineAnnealingLR", "OneCycleLR", "LambdaLR", "from_state_dict"]


# ----------------------------------------------------------------- helpers


def _real(value, name, low=None, high=None, low_open=False, high_open=False):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")
    return value




def _check_optimizer(optimizer):
    groups = getattr(optimizer, "param_groups", None)
    if not hasattr(optimizer, "lr") or not isinstance(groups, list):
        raise TypeError(f"a scheduler takes a fastnn optimizer (with .lr and .param_groups), "
                        f"got {type(optimizer).__name__}")
    return optimizer


def group_lrs(optimizer):
    """[optimizer.lr] + each explicit group's lr: the lrs a scheduler sets, in its order."""
    return [float(optimizer.lr)] + [float(g["lr"]) for g in optimizer.param_groups]


def set_group_lrs(optimizer, lrs, who="scheduler"):
    """Set optimizer.lr to lrs[0] and param_groups[i]['lr'] to lrs[i + 1] (validated)."""
    lrs = list(lrs)
    if len(lrs) != 1 + len(optimizer.param_groups):
        raise ValueError(f"{who}: {len(lrs)} learning rates for an optimizer with "
                         f"{1 + len(optimizer.param_groups)} groups (optimizer.lr and its param_groups)")
    # (the common case, finite floats >= 0, checked without a call per lr: this runs every batch)
    if not all(type(lr) is float and 0.0 <= lr < math.inf for lr in lrs):
        lrs = [_real(lr, f"{who}: the learning rate of group {i}", low=0.0) for i, lr in enumerate(lrs)]
    optimizer.lr = lrs[0]
    for group, lr in zip(optimizer.param_groups, lrs[1:]):
        group["lr"] = lr
    return lrs


def _per_group(value, n, name, check):
    """value as a list with one entry per lr group (a scalar is used for all)."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name}: {len(value)} values for an optimizer with {n} groups "
                             "(optimizer.lr and its param_groups)")
        return [check(v, f"{name}[{i}]") for i, v in enumerate(value)]
    return [check(value, name)] * n


# --------------------------------------------------------------- the base


class LRScheduler:
    """Base of the schedulers: a subclass defines ``get_lr()`` (the lrs at ``last_epoch``)
    and may define ``_closed_form()`` (used by ``step(epoch)``) and list in ``HYPER`` the
    attributes that ``state_dict`` saves besides the step counters."""

    per_batch = False
    HYPER = ()

    def __init__(self, optimizer):
        self.optimizer = _check_optimizer(optimizer)
        if not hasattr(self, "base_lrs"):
            self.base_lrs = group_lrs(optimizer)
        self.last_epoch = -1
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()     # torch's "step 0": sets the initial lrs
        finally:
            self._is_initial = False

    @property
    def n_groups(self):
        return 1 + len(self.optimizer.param_groups)

    def get_lr(self):
        raise NotImplementedError(f"{type(self).__name__} does not define get_lr")

    def step(self, epoch=None):
        """Advance one epoch (one batch for a per_batch scheduler) and set the new lrs.
        ``step(epoch)`` jumps to that epoch with the closed form (torch's deprecated form)."""
        if len(self.base_lrs) != self.n_groups:
            raise ValueError(f"{type(self).__name__} was built for {len(self.base_lrs)} lr groups but "
                             f"the optimizer now has {self.n_groups}")
        self._step_count += 1
        if epoch is None:
            self.last_epoch += 1
            values = self.get_lr()
        else:
            self.last_epoch = _nonneg_int(epoch, "epoch")
            closed = getattr(self, "_closed_form", None)
            values = closed() if closed is not None else self.get_lr()
        self._last_lr = set_group_lrs(self.optimizer, values, type(self).__name__)

    def get_last_lr(self):
        """The lrs the last step set: [optimizer.lr] + each param group's."""
        return list(self._last_lr)

    # ---------------------------------------------------------- state
    def state_dict(self):
        """A JSON-able dict: the step counters, base and last lrs and the hyper-parameters."""
        state = {"type": type(self).__name__, "last_epoch": int(self.last_epoch),
                 "_step_count": int(self._step_count), "base_lrs": [float(v) for v in self.base_lrs],
                 "_last_lr": [float(v) for v in self._last_lr]}
        for key in self.HYPER:
            state[key] = _plain(getattr(self, key))
        return state

    def load_state_dict(self, state):
        """Restore what state_dict saved and put the saved lrs back into the optimizer."""
        if not isinstance(state, dict):
            raise TypeError(f"load_state_dict takes the dict state_dict() made, got {type(state).__name__}")
        name = type(self).__name__
        if state.get("type", name) != name:
            raise ValueError(f"this state_dict is of a {state['type']}, not of a {name}")
        missing = [k for k in ("last_epoch", "_step_count", "base_lrs", "_last_lr") + tuple(self.HYPER)
                   if k not in state]
        if missing:
            raise ValueError(f"{name}.load_state_dict: the state lacks {missing}")
        for key in ("base_lrs", "_last_lr"):
            if not isinstance(state[key], (list, tuple)) or len(state[key]) != self.n_groups:
                raise ValueError(f"{name}.load_state_dict: {key} must list {self.n_groups} lrs "
                                 "(optimizer.lr and its param_groups)")
        last_epoch = state["last_epoch"]
        if isinstance(last_epoch, bool) or not isinstance(last_epoch, numbers.Integral) or last_epoch < -1:
            raise ValueError(f"{name}.load_state_dict: bad last_epoch {last_epoch!r}")
        hyper = {key: state[key] for key in self.HYPER}
        self._load_hyper(hyper)
        self.base_lrs = [_real(v, f"base_lrs[{i}]", low=0.0) for i, v in enumerate(state["base_lrs"])]
        self.last_epoch = int(last_epoch)
        self._step_count = _nonneg_int(state["_step_count"], "_step_count")
        self._last_lr = set_group_lrs(self.optimizer, state["_last_lr"], name)

    def _load_hyper(self, hyper):
        for key, value in hyper.items():
            setattr(self, key, value)

    def __repr__(self):
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.HYPER if not k.startswith("_"))
        return f"{type(self).__name__}({args}, last_epoch={self.last_epoch})"


def _plain(value):
    """value with numpy scalars and tuples turned into JSON's types."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


# ----------------------------------------------------------- schedulers


class StepLR(LRScheduler):
    """Multiply every group's lr by gamma every step_size epochs (torch.optim.lr_scheduler.StepLR):
    lr_e = base_lr * gamma ** (e // step_size)."""

    HYPER = ("step_size", "gamma")

    def __init__(self, optimizer, step_size, gamma=0.1):
        self.step_size = _positive_int(step_size, "step_size")
        self.gamma = _real(gamma, "gamma", low=0.0)
        super().__init__(optimizer)

    def _load_hyper(self, hyper):
        self.step_size = _positive_int(hyper["step_size"], "step_size")
        self.gamma = _real(hyper["gamma"], "gamma", low=0.0)

    def get_lr(self):
        # torch's recursive form: the current lrs, times gamma at each multiple of step_size.
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return group_lrs(self.optimizer)
        return [lr * self.gamma for lr in group_lrs(self.optimizer)]

    def _closed_form(self):
        return [base * self.gamma ** (self.last_epoch // self.step_size) for base in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing from each group's base lr to eta_min over T_max epochs
    (torch.optim.lr_scheduler.CosineAnnealingLR), with an optional linear warm-up.

    Without warm-up (the default) the lrs are torch's exactly: its recursive update
    lr_e = eta_min + (lr_{e-1} - eta_min) (1 + cos(pi e / T_max)) / (1 + cos(pi (e-1) / T_max)),
    which tracks the closed form eta_min + (base - eta_min) (1 + cos(pi e / T_max)) / 2 and
    follows changes other code makes to the lr; ``step(epoch)`` uses the closed form.
    Past T_max the cosine goes back up, as torch's does.

    With ``warmup_epochs = W > 0`` (a closed form, W < T_max):
        epoch e < W:   lr_e = base_lr * (e + 1) / (W + 1)       (rises linearly, never 0)
        epoch e >= W:  lr_e = eta_min + (base_lr - eta_min) (1 + cos(pi (e - W) / (T_max - W))) / 2
    so the lr peaks at base_lr at epoch W and still reaches eta_min at epoch T_max.
    """

    HYPER = ("T_max", "eta_min", "warmup_epochs")

    def __init__(self, optimizer, T_max, eta_min=0.0, warmup_epochs=0):
        self._load_hyper({"T_max": T_max, "eta_min": eta_min, "warmup_epochs": warmup_epochs})
        super().__init__(optimizer)

    def _load_hyper(self, hyper):
        T_max = _positive_int(hyper["T_max"], "T_max")
        eta_min = _real(hyper["eta_min"], "eta_min", low=0.0)
        warmup = _nonneg_int(hyper["warmup_epochs"], "warmup_epochs")
        if warmup >= T_max:
            raise ValueError(f"warmup_epochs ({warmup}) must be smaller than T_max ({T_max})")
        self.T_max, self.eta_min, self.warmup_epochs = T_max, eta_min, warmup

    def get_lr(self):
        if self.warmup_epochs:
            return self._closed_form()
        e, T, eta = self.last_epoch, self.T_max, self.eta_min
        if self._is_initial:
            return group_lrs(self.optimizer)
        if self._step_count == 1 and e > 0:
            return self._closed_form()
        if (e - 1 - T) % (2 * T) == 0:
            return [lr + (base - eta) * (1 - math.cos(math.pi / T)) / 2
                    for base, lr in zip(self.base_lrs, group_lrs(self.optimizer))]
        return [(1 + math.cos(math.pi * e / T)) / (1 + math.cos(math.pi * (e - 1) / T)) * (lr - eta) + eta
                for lr in group_lrs(self.optimizer)]

    def _closed_form(self):
        e, W, eta = self.last_epoch, self.warmup_epochs, self.eta_min
        if e < W:
            return [base * (e + 1) / (W + 1) for base in self.base_lrs]
        return [eta + (base - eta) * (1 + math.cos(math.pi * (e - W) / (self.T_max - W))) / 2
                for base in self.base_lrs]


class OneCycleLR(LRScheduler):
    """The 1cycle policy (torch.optim.lr_scheduler.OneCycleLR), stepped after every batch
    (``per_batch = True``): the lr rises from max_lr / div_factor to max_lr over the first
    pct_start of total_steps, then anneals to max_lr / (div_factor * final_div_factor)
    ("cos" or "linear"); ``three_phase`` comes back down to the initial lr first, as torch's.

    total_steps, or epochs and steps_per_epoch (total_steps = epochs * steps_per_epoch;
    both forms given must agree). Stepping more than total_steps times raises, as torch.
    The lrs equal torch's for steps 0 .. total_steps - 1; at step total_steps (the step after
    the last batch, one past the cycle) torch extrapolates beyond the minimum lr (to a
    negative lr with "linear"), here the lr stays at the minimum.

    ``cycle_momentum=True`` (torch's default) cycles the momentum inversely to the lr between
    max_momentum and base_momentum: SGD's and RMSprop's ``momentum``, Adam's and AdamW's
    beta1 (``betas[0]``), on optimizer's own attributes and on every group; an optimizer
    with neither (Adagrad) needs ``cycle_momentum=False``.
    """

    per_batch = True
    HYPER = ("total_steps", "pct_start", "anneal_strategy", "three_phase", "div_factor",
             "final_div_factor", "cycle_momentum", "use_beta1", "initial_lrs", "max_lrs", "min_lrs",
             "base_momentums", "max_momentums", "_last_momentum")

    def __init__(self, optimizer, max_lr, total_steps=None, epochs=None, steps_per_epoch=None,
                 pct_start=0.3, anneal_strategy="cos", div_factor=25.0, final_div_factor=1e4,
                 three_phase=False, cycle_momentum=True, base_momentum=0.85, max_momentum=0.95):
        _check_optimizer(optimizer)
        n = 1 + len(optimizer.param_groups)
        if total_steps is not None:
            total_steps = _positive_int(total_steps, "total_steps")
            if epochs is not None or steps_per_epoch is not None:
                if epochs is None or steps_per_epoch is None:
                    raise ValueError("give total_steps, or epochs and steps_per_epoch (both)")
                product = _positive_int(epochs, "epochs") * _positive_int(steps_per_epoch, "steps_per_epoch")
                if product != total_steps:
                    raise ValueError(f"total_steps={total_steps} disagrees with epochs * steps_per_epoch "
                                     f"= {epochs} * {steps_per_epoch} = {product}")
        elif epochs is not None and steps_per_epoch is not None:
            total_steps = _positive_int(epochs, "epochs") * _positive_int(steps_per_epoch, "steps_per_epoch")
        else:
            raise ValueError("OneCycleLR needs total_steps, or epochs and steps_per_epoch")
        if not isinstance(three_phase, (bool, np.bool_)):
            raise TypeError(f"three_phase must be True or False, got {three_phase!r}")
        if not isinstance(cycle_momentum, (bool, np.bool_)):
            raise TypeError(f"cycle_momentum must be True or False, got {cycle_momentum!r}")
        hyper = {"total_steps": total_steps, "pct_start": pct_start, "anneal_strategy": anneal_strategy,
                 "three_phase": bool(three_phase), "div_factor": div_factor,
                 "final_div_factor": final_div_factor, "cycle_momentum": bool(cycle_momentum)}
        self._load_hyper(hyper, check_only=True)
        max_lrs = _per_group(max_lr, n, "max_lr", lambda v, name: _real(v, name, low=0.0, low_open=True))
        self.max_lrs = max_lrs
        self.initial_lrs = [m / self.div_factor for m in max_lrs]
        self.min_lrs = [i / self.final_div_factor for i in self.initial_lrs]
        self.use_beta1 = False
        self.base_momentums = self.max_momentums = None
        self._last_momentum = None
        if self.cycle_momentum:
            names = set(getattr(type(optimizer), "HYPER", ()))
            if "betas" not in names and "momentum" not in names:
                raise ValueError(f"{type(optimizer).__name__} has no momentum or beta1 to cycle: "
                                 "use OneCycleLR(..., cycle_momentum=False)")
            self.use_beta1 = "betas" in names

            def mom(v, name):
                return _real(v, name, low=0.0, high=1.0, high_open=True)
            self.base_momentums = _per_group(base_momentum, n, "base_momentum", mom)
            self.max_momentums = _per_group(max_momentum, n, "max_momentum", mom)
        self.base_lrs = list(self.initial_lrs)   # torch's base_lrs: the groups' initial_lr
        super().__init__(optimizer)

    def _load_hyper(self, hyper, check_only=False):
        total = _positive_int(hyper["total_steps"], "total_steps")
        pct = _real(hyper["pct_start"], "pct_start", low=0.0, high=1.0)
        if hyper["anneal_strategy"] not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {hyper['anneal_strategy']!r}")
        div = _real(hyper["div_factor"], "div_factor", low=0.0, low_open=True)
        final = _real(hyper["final_div_factor"], "final_div_factor", low=0.0, low_open=True)
        self.total_steps, self.pct_start, self.anneal_strategy = total, pct, hyper["anneal_strategy"]
        self.three_phase, self.div_factor, self.final_div_factor = bool(hyper["three_phase"]), div, final
        self.cycle_momentum = bool(hyper["cycle_momentum"])
        if check_only:
            return
        n = self.n_groups
        for key in ("initial_lrs", "max_lrs", "min_lrs"):
            setattr(self, key, _per_group(list(hyper[key]), n, key,
                                          lambda v, name: _real(v, name, low=0.0)))
        self.use_beta1 = bool(hyper["use_beta1"])
        for key in ("base_momentums", "max_momentums", "_last_momentum"):
            value = hyper[key]
            setattr(self, key, None if value is None else _per_group(
                list(value), n, key, lambda v, name: _real(v, name, low=0.0, high=1.0, high_open=True)))

    def _phases(self):
        """(end_step, start, end) per phase; start/end name the lr lists (torch's phases)."""
        t, p = self.total_steps, self.pct_start
        if self.three_phase:
            return [(float(p * t) - 1, "initial", "max"), (float(2 * p * t) - 2, "max", "initial"),
                    (t - 1, "initial", "min")]
        return [(float(p * t) - 1, "initial", "max"), (t - 1, "max", "min")]

    def _phase_at(self, step):
        """(phase's start step, end step, start name, end name) of the phase holding step."""
        phases = self._phases()
        start_step = 0.0
        for i, (end_step, a, b) in enumerate(phases):
            if step <= end_step or i == len(phases) - 1:
                return start_step, end_step, a, b
            start_step = end_step

    def _anneal(self, start, end, pct):
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def get_lr(self):
        step = self.last_epoch
        if step > self.total_steps:
            raise ValueError(f"OneCycleLR stepped {step} times, more than its total_steps="
                             f"{self.total_steps}: give a larger total_steps (or epochs / steps_per_epoch)")
        lrs = {"initial": self.initial_lrs, "max": self.max_lrs, "min": self.min_lrs}
        # The momentum runs opposite to the lr: max_momentum at the initial and min lr, base at the peak.
        moms = {"initial": self.max_momentums, "max": self.base_momentums, "min": self.max_momentums}
        start_step, end_step, a, b = self._phase_at(step)   # the same phase for every group
        width = end_step - start_step
        # A phase of zero width (pct_start * total_steps == 1): torch divides by 0 there.
        pct = (step - start_step) / width if width else 0.0
        # Step total_steps (the step after the last batch) is past the cycle: torch
        # extrapolates there (below 0 with "linear"); the lr stays at its minimum.
        pct = min(pct, 1.0)
        out = [self._anneal(lo, hi, pct) for lo, hi in zip(lrs[a], lrs[b])]
        if self.cycle_momentum:
            self._set_momentum([self._anneal(lo, hi, pct) for lo, hi in zip(moms[a], moms[b])])
        return out

    def _set_momentum(self, values):
        opt = self.optimizer
        slots = [None] + list(opt.param_groups)
        for slot, m in zip(slots, values):
            if self.use_beta1:
                if slot is None:
                    opt.betas = (float(m), opt.betas[1])
                else:
                    slot["betas"] = (float(m), slot["betas"][1])
            elif slot is None:
                opt.momentum = float(m)
            else:
                slot["momentum"] = float(m)
        self._last_momentum = [float(m) for m in values]

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if self.cycle_momentum and self._last_momentum is not None:
            self._set_momentum(self._last_momentum)


class LambdaLR(LRScheduler):
    """lr_e = base_lr * lr_lambda(e) (torch.optim.lr_scheduler.LambdaLR). lr_lambda is a function
    of the epoch, or a list of them, one per group ([optimizer.lr's] + one per param group).
    state_dict saves no function (only the __dict__ of callable objects, as torch)."""

    def __init__(self, optimizer, lr_lambda):
        _check_optimizer(optimizer)
        n = 1 + len(optimizer.param_groups)
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != n:
                raise ValueError(f"lr_lambda: {len(lr_lambda)} functions for an optimizer with {n} groups "
                                 "(optimizer.lr and its param_groups)")
            lambdas = list(lr_lambda)
        else:
            lambdas = [lr_lambda] * n
        for i, fn in enumerate(lambdas):
            if not callable(fn):
                raise TypeError(f"lr_lambda must be a function of the epoch (or a list of them), "
                                f"got {type(fn).__name__} for group {i}")
        self.lr_lambdas = lambdas
        super().__init__(optimizer)

    def get_lr(self):
        out = []
        for i, (fn, base) in enumerate(zip(self.lr_lambdas, self.base_lrs)):
            factor = fn(self.last_epoch)
            if isinstance(factor, (bool, np.bool_)) or not isinstance(factor, numbers.Real):
                raise TypeError(f"lr_lambda({self.last_epoch}) returned {factor!r} for group {i}, not a number")
            if not math.isfinite(factor):
                raise ValueError(f"lr_lambda({self.last_epoch}) returned {factor} for group {i}")
            out.append(base * float(factor))
        return out

    def state_dict(self):
        state = super().state_dict()
        state["lr_lambdas"] = [None if isinstance(fn, types.FunctionType) else _plain(dict(fn.__dict__))
                               for fn in self.lr_lambdas]
        return state

    def load_state_dict(self, state):
        if not isinstance(state, dict):
            raise TypeError(f"load_state_dict takes the dict state_dict() made, got {type(state).__name__}")
        saved = state.get("lr_lambdas", [None] * len(self.lr_lambdas))
        if not isinstance(saved, (list, tuple)) or len(saved) != len(self.lr_lambdas):
            raise ValueError(f"LambdaLR.load_state_dict: lr_lambdas must list {len(self.lr_lambdas)} entries")
        super().load_state_dict(state)
        for fn, attrs in zip(self.lr_lambdas, saved):
            if attrs is not None:
                fn.__dict__.update(attrs)


SCHEDULERS = {cls.__name__: cls for cls in (StepLR, CosineAnnealingLR, OneCycleLR, LambdaLR)}


def from_state_dict(optimizer, state, lr_lambda=None):
    """A scheduler on ``optimizer`` rebuilt from ``state`` (a ``state_dict()``, e.g. read back
    from a checkpoint's JSON) and resumed where it was: its class comes from ``state['type']``,
    its arguments from the saved hyper-parameters; the saved lrs (and OneCycleLR's momentum)
    are put back into the optimizer. A LambdaLR's functions are not in its state: pass them
    as ``lr_lambda``."""
    if not isinstance(state, dict):
        raise TypeError(f"from_state_dict takes the dict state_dict() made, got {type(state).__name__}")
    cls = SCHEDULERS.get(state.get("type"))
    if cls is None:
        raise ValueError(f"unknown scheduler type {state.get('type')!r} in the state; "
                         f"known: {sorted(SCHEDULERS)}")
    missing = [k for k in cls.HYPER if k not in state]
    if missing:
        raise ValueError(f"the {cls.__name__} state lacks {missing}")
    if cls is LambdaLR:
        if lr_lambda is None:
            raise ValueError("a LambdaLR's functions are not saved in its state: pass lr_lambda= again")
        scheduler = LambdaLR(optimizer, lr_lambda)
    elif cls is OneCycleLR:
        extra = {}
        if state["cycle_momentum"]:
            extra = {"base_momentum": state["base_momentums"], "max_momentum": state["max_momentums"]}
        scheduler = OneCycleLR(optimizer, max_lr=state["max_lrs"], total_steps=state["total_steps"],
                               pct_start=state["pct_start"], anneal_strategy=state["anneal_strategy"],
                               div_factor=state["div_factor"], final_div_factor=state["final_div_factor"],
                               three_phase=state["three_phase"], cycle_momentum=state["cycle_momentum"], **extra)
    else:
        scheduler = cls(optimizer, **{k: state[k] for k in cls.HYPER})
    scheduler.load_state_dict(state)
    return scheduler
