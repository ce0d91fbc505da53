"""The "auto" backend: per kernel family and size, the faster of the cython and numba kernels.

Every kernel of auto is one concrete backend's kernel. The families in FAMILIES (rnn, lstm, gru,
conv1d, conv2d, batch_norm, global_avgpool, max/avgpool1d/2d: each a forward and its backward,
chosen together by their summed time) are chosen per SIZE KEY: the family, the dtype and the
rounded log2 of the main dims (recurrent: N, T, F, H; conv: N, C_in, C_out, the input's L or
H*W, the kernel's k or kh*kw; batch_norm and the pools: N, C and the spatial size). At the first
call of a key in a process, each candidate runs once to warm up (numba compiles or loads its
cache there), then the candidates are timed in turns, best of 3 to 8 (one when a run is slow),
on copies of the caller's inputs, the backward on an upstream gradient of ones. The winner is
kept for the process and recorded in a JSON file (see Record). The caller gets the winner's
output, the same numbers an unmeasured call would return (a forward that updates an argument
in place, batch_norm's running statistics, measures on copies and then runs the winner once on
the caller's arrays). Every other kernel is cython's: numba's Dense (linear forward +
backward), activations, cross-entropy and Adam were slower at the sizes measured, and the rest
were not measured per size (a family is one entry in FAMILIES; see README "Kernel choice").

Overrides beat measurement: FASTNN_KERNELS="lstm=numba,conv2d=cython" (read when auto is
built) or choose("lstm", "numba") (choose("lstm", None) measures again). A name is a family
above (its forward and backward) or any registry kernel name (that kernel alone, e.g.
"lstm_backward=cython" or "matmul=numba"); a backend is cython, numba or numpy (the reference).
"""
import contextlib
import functools
import importlib.metadata
import inspect
import json
import math
import os
import platform
import threading
import time
import types
import warnings
import weakref
from dataclasses import dataclass
from typing import Callable

from . import reference, registry
from ..backend import Backend

CANDIDATES = ("cython", "numba")       # measured; the first is the base for everything else
OVERRIDE_BACKENDS = ("cython", "numba", "numpy")
SCHEMA = "fastnn.kernel_choice/1"
# Timing: best of at least MIN_ROUNDS and at most MAX_ROUNDS turns, stopping once each candidate
# has used BUDGET_S, or after any round past CAP_S (a slow size: one turn, no more).
MIN_ROUNDS, MAX_ROUNDS, BUDGET_S, CAP_S = 3, 8, 0.01, 0.1
# Another candidate replaces the base (cython) only when it takes under MARGIN of the base's
# time (a near tie is noise) after SWITCH_US more for each of its calls: inside a cython step a
# numba call costs more than timed alone (the BatchNorm CNN 1-D: numba's batch_norm and global
# pool at its 8-step size, 17-25% faster alone, made the whole step 0.89-0.91x: 12-19 us a
# call), which only matters for kernels of tens of microseconds.
MARGIN = 0.9
SWITCH_US = 15.0


def pick(times):
    """The winner of {backend: [forward us, backward us]}: the fastest by the sum, except that
    the base (cython) stays unless the fastest, plus SWITCH_US a timed call (a forward not
    timed is 0), takes under MARGIN of its time."""
    winner = min(times, key=lambda n: sum(times[n]))
    base = CANDIDATES[0]
    if base in times and winner != base:
        calls = sum(1 for t in times[winner] if t > 0)
        if sum(times[winner]) + SWITCH_US * calls >= MARGIN * sum(times[base]):
            return base
    return winner


def _timed_turns(runs, outs):
    """{backend: [forward us, backward us]}: runs {backend: (forward or None, backward)} timed in
    turns, best of MIN_ROUNDS to MAX_ROUNDS (see BUDGET_S and CAP_S); outs gets each output."""
    best = {name: [0.0 if fwd is None else math.inf, math.inf] for name, (fwd, _) in runs.items()}
    spent = 0.0
    for rounds in range(1, MAX_ROUNDS + 1):
        for name, (fwd, bwd) in runs.items():
            t0 = time.perf_counter()
            if fwd is not None:
                outs[name] = fwd()
            t1 = time.perf_counter()
            result = bwd()
            t2 = time.perf_counter()
            if fwd is None:
                outs[name] = result
            if fwd is not None:
                best[name][0] = min(best[name][0], t1 - t0)
            best[name][1] = min(best[name][1], t2 - t1)
            spent += t2 - t0
        if spent > CAP_S * len(runs) or (rounds >= MIN_ROUNDS and spent > BUDGET_S * len(runs)):
            break
    return {name: [round(t * 1e6, 1) for t in b] for name, b in best.items()}


def bucket(n):
    """round(log2(n)) for n >= 1, in integer arithmetic (round half up)."""
    return ((2 * n * n).bit_length() - 1) >> 1


# ------------------------------------------------------------- families


def _recurrent_key(x, w_ih, w_hh, *rest, **kwargs):
    n, t, f = x.shape
    return (x.dtype.char, bucket(n), bucket(t), bucket(f), bucket(w_hh.shape[1]))


def _recurrent_backward_key(dh, x, h, *rest, **kwargs):
    n, t, f = x.shape
    return (x.dtype.char, bucket(n), bucket(t), bucket(f), bucket(h.shape[2]))


def _recurrent_backward_args(bound, out):
    out = out if isinstance(out, tuple) else (out,)
    a = bound.arguments
    return (reference.np.ones_like(out[0]), a["x"], *out, a["w_ih"], a["w_hh"], True)


def _conv_key(x, w, *rest, **kwargs):
    return (x.dtype.char, bucket(x.shape[0]), bucket(x.shape[1]), bucket(w.shape[0]),
            bucket(math.prod(x.shape[2:])), bucket(math.prod(w.shape[2:])))


def _conv_backward_key(dy, x, w, *rest, **kwargs):
    return _conv_key(x, w)


def _conv_backward_args(bound, out):
    a = bound.arguments
    return (reference.np.ones_like(out), a["x"], a["w"], a["stride"], a["padding"], True)


def _nd_key(x, *rest, **kwargs):
    return (x.dtype.char, bucket(x.shape[0]), bucket(x.shape[1]), bucket(math.prod(x.shape[2:])))


def _nd_backward_key(dy, x, *rest, **kwargs):
    return _nd_key(x)


def _batch_norm_backward_args(bound, out):
    y, mean, rstd = out
    a = bound.arguments
    return (reference.np.ones_like(y), a["x"], mean, rstd, a["weight"], a["training"], True)


def _global_avgpool_backward_args(bound, out):
    return (reference.np.ones_like(out), bound.arguments["x"])


def _maxpool_backward_args(bound, out):
    y, idx = out
    a = bound.arguments
    return (reference.np.ones_like(y), a["x"], idx, a["kernel_size"], a["stride"])


def _avgpool_backward_args(bound, out):
    a = bound.arguments
    return (reference.np.ones_like(out), a["x"], a["kernel_size"], a["stride"])


@dataclass(frozen=True)
class Family:
    name: str
    forward: str
    backward: str
    dims: tuple               # the names of the size key's dims, after the dtype
    key: Callable             # forward's (*args, **kwargs) -> size key
    backward_key: Callable    # backward's (*args, **kwargs) -> the same key
    backward_args: Callable   # (forward's bound arguments, forward's output) -> backward's args
    updates_inputs: bool = False   # the forward writes into an argument (batch_norm's running stats)


FAMILIES = {}
for _cell in ("rnn", "lstm", "gru"):
    FAMILIES[_cell] = Family(_cell, _cell, _cell + "_backward", ("N", "T", "F", "H"),
                             _recurrent_key, _recurrent_backward_key, _recurrent_backward_args)
for _dims in (1, 2):
    _name = f"conv{_dims}d"
    FAMILIES[_name] = Family(_name, _name, _name + "_backward",
                             ("N", "C", "O", "L" if _dims == 1 else "HW", "K"),
                             _conv_key, _conv_backward_key, _conv_backward_args)
FAMILIES["batch_norm"] = Family("batch_norm", "batch_norm", "batch_norm_backward", ("N", "C", "S"), _nd_key,
                                _nd_backward_key, _batch_norm_backward_args, updates_inputs=True)
FAMILIES["global_avgpool"] = Family("global_avgpool", "global_avgpool", "global_avgpool_backward",
                                    ("N", "C", "S"), _nd_key, _nd_backward_key, _global_avgpool_backward_args)
for _kind, _args in (("max", _maxpool_backward_args), ("avg", _avgpool_backward_args)):
    for _dims in (1, 2):
        _name = f"{_kind}pool{_dims}d"
        FAMILIES[_name] = Family(_name, _name, _name + "_backward", ("N", "C", "L" if _dims == 1 else "HW"),
                                 _nd_key, _nd_backward_key, _args)
_OF_KERNEL = {k: f for f in FAMILIES.values() for k in (f.forward, f.backward)}
_DTYPES = {"f": "float32", "d": "float64"}


def key_name(family, key):
    """'lstm/float32/N128,T32,F1,H8': the record's name of a size key (each dim 2**bucket)."""
    dims = ",".join(f"{d}{2 ** b}" for d, b in zip(FAMILIES[family].dims, key[1:]))
    return f"{family}/{_DTYPES.get(key[0], key[0])}/{dims}"


# --------------------------------------------------------------- record


def cache_dir():
    return os.environ.get("FASTNN_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "fastnn")


def record_path():
    """Where the measured choices are kept: $FASTNN_CACHE_DIR/kernel_choice.json, by default
    ~/.cache/fastnn/kernel_choice.json."""
    return os.path.join(cache_dir(), "kernel_choice.json")


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


@functools.lru_cache(maxsize=None)
def machine():
    """What a record is valid for: another fastnn or numba version, CPU, ISA or kernel build
    measures again."""
    from .. import __version__
    from . import cython
    try:
        numba_version = importlib.metadata.version("numba")
    except importlib.metadata.PackageNotFoundError:
        numba_version = "none"
    return (f"fastnn {__version__} | numba {numba_version} | {_cpu_model()} | {cython.gemm_isa()}"
            f" | build {_build_id(cython._mod)}")


def _build_id(module):
    """The compiled Cython module's size and modification time: a rebuild or reinstall of the
    kernels (same version, other speed) measures again."""
    try:
        st = os.stat(module.__file__)
    except (AttributeError, TypeError, OSError):
        return "unknown"
    return f"{st.st_size}-{int(st.st_mtime)}"


class Record:
    """The JSON file of measured choices: {"schema": SCHEMA, "machines": {machine(): {key name:
    {"backend": name, "us": {backend: [forward us, backward us]}}}}}. Entries of other machines
    are kept, never used. A corrupt file or one of another schema warns once and is ignored
    (and replaced by the next write); an unwritable one warns once; neither stops a kernel.
    Writes merge with what is on disk under a lock file where fcntl exists, and land by
    os.replace of a temporary file, so two processes at once leave a valid file."""

    def __init__(self, path=None):
        self.path = path or record_path()
        self._warned = set()

    def _warn(self, what, message):
        if what not in self._warned:
            self._warned.add(what)
            warnings.warn(f"fastnn kernel choice: {message}", RuntimeWarning, stacklevel=4)

    def _read_all(self):
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except (FileNotFoundError, NotADirectoryError):   # nothing recorded yet
            return {}
        except (OSError, ValueError) as exc:
            self._warn("corrupt", f"ignoring the unreadable record {self.path} ({type(exc).__name__}: {exc})")
            return {}
        machines = data.get("machines") if isinstance(data, dict) and data.get("schema") == SCHEMA else None
        if not isinstance(machines, dict) or not all(isinstance(v, dict) for v in machines.values()):
            self._warn("corrupt", f"ignoring {self.path}: not a fastnn kernel-choice record ({SCHEMA})")
            return {}
        return machines

    def load(self):
        """{key name: backend name} recorded for this machine."""
        entries = self._read_all().get(machine(), {})
        return {k: v["backend"] for k, v in entries.items()
                if isinstance(v, dict) and v.get("backend") in CANDIDATES}

    @contextlib.contextmanager
    def _locked(self):
        try:
            import fcntl
        except ImportError:
            yield
            return
        with open(self.path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def add(self, entries):
        """Merge {key name: entry} into the file for this machine; False (after one warning)
        when it cannot be written."""
        tmp = None
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            with self._locked():
                machines = self._read_all()
                machines.setdefault(machine(), {}).update(entries)
                tmp = f"{self.path}.{os.getpid()}.{threading.get_ident()}.tmp"
                with open(tmp, "w", encoding="utf-8") as f:
                    json.dump({"schema": SCHEMA, "machines": machines}, f, indent=1, sort_keys=True)
                os.replace(tmp, self.path)
                tmp = None
            return True
        except OSError as exc:
            self._warn("unwritable", f"cannot write {self.path} ({type(exc).__name__}: {exc}); "
                                     f"the choices stay in this process only")
            return False
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.remove(tmp)


# -------------------------------------------------------------- backend


def parse_overrides(text):
    """FASTNN_KERNELS's 'lstm=numba, conv2d=cython' -> {'lstm': 'numba', 'conv2d': 'cython'}."""
    out = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, backend = (s.strip() for s in item.partition("="))
        if not sep or not name or not backend:
            raise ValueError(f"FASTNN_KERNELS: expected name=backend items separated by commas "
                             f"(e.g. 'lstm=numba,conv2d=cython'), got {item!r}")
        _check_override(name, backend, "FASTNN_KERNELS: ")
        out[name] = backend
    return out


def _check_override(name, backend, where=""):
    if not isinstance(name, str) or (name not in FAMILIES and name not in registry.KERNELS):
        raise ValueError(f"{where}unknown kernel or family {name!r}; the measured families are "
                         f"{sorted(FAMILIES)}, and any kernel of the registry may be named "
                         f"(e.g. 'lstm_backward', 'matmul')")
    if backend is not None and backend not in OVERRIDE_BACKENDS:
        raise ValueError(f"{where}unknown backend {backend!r} for {name!r}; choose one of "
                         f"{list(OVERRIDE_BACKENDS)} (or None to measure)")


class _Module:
    """auto's ``module``: cython's, except that set_num_threads sets numba's threads too."""

    def __init__(self, auto):
        self._auto = auto

    def __getattr__(self, name):
        return getattr(self._auto.base.module, name)

    def set_num_threads(self, n):
        self._auto.base.module.set_num_threads(n)
        numba_be = self._auto.loaded_candidates().get("numba")
        if numba_be is not None:
            import numba
            numba_be.module.set_num_threads(min(int(n), numba.config.NUMBA_NUM_THREADS))

    def get_num_threads(self):
        return self._auto.base.module.get_num_threads()


class AutoBackend(Backend):
    """The "auto" backend (see the module docstring). ``load(name)`` gives a concrete Backend;
    the candidates other than the base (cython) load at the first measurement."""

    name = "auto"

    def __init__(self, load, record=None):   # Backend.__init__ is not called: no module of its own
        self._load = load
        self.base = load(CANDIDATES[0])
        self.module = _Module(self)
        self.record = record or Record()
        self._recorded = None                    # {key name: backend}, read at the first miss
        self._chosen = {}                        # (family, key) -> (forward, backward, backend)
        self._info = {}                          # (family, key) -> {backend, source, us}
        self._overrides = {}
        self._lock = threading.RLock()
        if hasattr(os, "register_at_fork"):   # a child forked mid-measurement must not inherit the held lock
            me = weakref.ref(self)
            os.register_at_fork(after_in_child=lambda: me() is not None and me()._new_lock())
        self._unusable = set()
        self._remeasure = False                  # tune(): measure even what is recorded
        self.raw = types.SimpleNamespace()
        self.sources = {}
        for kernel in registry.KERNELS.values():
            setattr(self, kernel.name, self._checked(kernel.check, kernel.name))
        self.overridden = ()
        for helper in reference.HELPERS:
            setattr(self, helper, getattr(self.base, helper))
        self._dispatchers, self._fast = {}, []
        for fam in FAMILIES.values():
            self._dispatchers[fam.forward] = self._dispatcher(fam, 0)
            self._dispatchers[fam.backward] = self._dispatcher(fam, 1)
        self.set_overrides(parse_overrides(os.environ.get("FASTNN_KERNELS", "")))

    def __repr__(self):
        return "<fastnn backend 'auto'>"

    def _new_lock(self):
        self._lock = threading.RLock()

    def _checked(self, check, name):
        raw = self.raw

        def run(*args, **kwargs):
            args, kwargs = check(*args, **kwargs)
            return getattr(raw, name)(*args, **kwargs)
        run.__name__ = run.__qualname__ = name
        return run

    # ------------------------------------------------------- overrides
    def _try_load(self, name):
        try:
            return self._load(name)
        except Exception as exc:   # auto runs on cython alone where numba breaks
            if name not in self._unusable:
                self._unusable.add(name)
                warnings.warn(f"fastnn kernel choice: {exc}; the auto backend runs without {name}",
                              RuntimeWarning, stacklevel=5)
            return None

    def loaded_candidates(self):
        """{name: Backend} of the candidates that load here (cython always)."""
        out = {}
        for name in CANDIDATES:
            be = self._try_load(name) if name not in self._unusable else None
            if be is not None:
                out[name] = be
        return out

    def set_overrides(self, overrides):
        """Replace every override with {name: backend} (validated) and rebind the kernels."""
        for name, backend in overrides.items():
            _check_override(name, backend)
        for backend in set(overrides.values()):
            self._load(backend)                  # BackendUnavailable names an unusable one
        with self._lock:
            self._overrides = dict(overrides)
            self._rebind()

    def choose(self, name, backend):
        """Override one family or kernel (backend None: measure it again / cython's)."""
        _check_override(name, backend)
        overrides = dict(self._overrides)
        if backend is None:
            overrides.pop(name, None)
        else:
            overrides[name] = backend
        self.set_overrides(overrides)

    def _rebind(self):
        for kernel in registry.KERNELS:
            fam = _OF_KERNEL.get(kernel)
            forced = self._overrides.get(kernel) or (fam and self._overrides.get(fam.name))
            if forced:
                fn, source = getattr(self._load(forced).raw, kernel), f"override:{forced}"
            elif fam is not None:
                fn, source = self._dispatchers[kernel], "measured"
            else:
                fn, source = getattr(self.base.raw, kernel), f"{self.base.name}:{self.base.sources[kernel]}"
            setattr(self.raw, kernel, fn)
            self.sources[kernel] = source

    # ------------------------------------------------------- choosing
    def _dispatcher(self, fam, which):
        chosen, keyfn = self._chosen, (fam.key, fam.backward_key)[which]
        name = (fam.forward, fam.backward)[which]
        # A positional call's signature (shapes of its first 3 arguments, dtypes of 2: every key
        # function reads only those) -> its size key (computing the log2 key took 1-2.5 us a
        # call), and -> the chosen kernel itself (one lookup, 0.3 us a call in all; emptied
        # whenever a choice changes: _forget_fast)
        keys, fast = {}, {}
        self._fast.append(fast)

        def run(*args, **kwargs):
            sig = None
            if not kwargs and args:
                a0 = args[0]
                a1 = args[1] if len(args) > 1 else None
                a2 = args[2] if len(args) > 2 else None
                sig = (getattr(a0, "shape", a0), getattr(a1, "shape", a1), getattr(a2, "shape", a2),
                       getattr(a0, "dtype", None), getattr(a1, "dtype", None))
                try:
                    fn = fast.get(sig)
                except TypeError:          # an unhashable argument (a list for a size)
                    fn = sig = None
                if fn is not None:
                    return fn(*args)
            fn = chosen_kernel(args, kwargs, sig)
            if fn is None:
                return self._first_use(fam, which, args, kwargs)
            if sig is not None:
                if len(fast) > 512:        # a model with ever-changing shapes: start over
                    fast.clear()
                fast[sig] = fn
            return fn(*args, **kwargs)

        def chosen_kernel(args, kwargs, sig):
            """The kernel chosen for these arguments' size key (sig: their signature, or None
            where it is not hashable or kwargs are given); None before it is chosen."""
            key = None if sig is None else keys.get(sig)
            if key is None:
                key = keyfn(*args, **kwargs)
                if sig is not None:
                    if len(keys) > 512:
                        keys.clear()
                    keys[sig] = key
            fns = chosen.get((fam.name, key))
            return None if fns is None else fns[which]
        run.__name__ = run.__qualname__ = name
        return run

    def _forget_fast(self):
        for fast in self._fast:
            fast.clear()

    def concurrent_pair(self, kernel, x, w_ih, w_hh):
        """Backend.concurrent_pair: the base's (cython's) entry where auto runs cython's
        kernel and backward for these sizes (chosen, or overridden); None before the first
        call of this size has chosen."""
        fam = _OF_KERNEL.get(kernel)
        for which, name in enumerate((kernel, kernel + "_backward")):
            fn = getattr(self.raw, name, None)
            if fam is not None and fn is self._dispatchers.get(name):     # not overridden
                chosen = self._chosen.get((fam.name, fam.key(x, w_ih, w_hh)))
                fn = None if chosen is None else chosen[which]
            if fn is None or fn is not getattr(self.base.raw, name, None):
                return None
        return self.base.concurrent_pair(kernel, x, w_ih, w_hh)

    def _first_use(self, fam, which, args, kwargs):
        key = ((fam.key, fam.backward_key)[which])(*args, **kwargs)
        with self._lock:
            if (fam.name, key) not in self._chosen:
                if self._recorded is None:
                    self._recorded = self.record.load()
                name = key_name(fam.name, key)
                recorded = None if self._remeasure else self._recorded.get(name)
                backend = self._try_load(recorded) if recorded else None
                if backend is not None:
                    self._keep(fam, key, backend, "recorded", None)
                else:
                    candidates = self.loaded_candidates()
                    winner, us, out = self._measure(fam, which, args, kwargs, candidates)
                    self._keep(fam, key, candidates[winner], "measured", us)
                    self.record.add({name: {"backend": winner, "us": us}})
                    if not (fam.updates_inputs and which == 0):
                        return out
                    # measured on copies: the caller's arrays get the one real update below
        return self._chosen[(fam.name, key)][which](*args, **kwargs)

    def _keep(self, fam, key, backend, source, us):
        self._forget_fast()
        self._chosen[(fam.name, key)] = (getattr(backend.raw, fam.forward), getattr(backend.raw, fam.backward),
                                         backend.name)
        self._info[(fam.name, key)] = {"family": fam.name, "backend": backend.name, "source": source,
                                       "us": us}

    def _measure(self, fam, which, args, kwargs, candidates):
        """(winner, {backend: [forward us, backward us]}, the winner's output). Each candidate
        runs on copies of the array arguments (no caller's array is touched), is warmed up
        once, then the candidates are timed in turns (a burst of noise from another program
        hits them alike), best of MIN_ROUNDS to MAX_ROUNDS turns (see BUDGET_S and CAP_S)."""
        copy = lambda a: a.copy() if isinstance(a, reference.np.ndarray) else a
        bound = None
        if which == 0:
            bound = inspect.signature(getattr(reference, fam.forward)).bind(*args, **kwargs)
            bound.apply_defaults()
        runs, outs = {}, {}
        for name, be in candidates.items():
            a, kw = tuple(map(copy, args)), {k: copy(v) for k, v in kwargs.items()}
            forward, backward = getattr(be.raw, fam.forward), getattr(be.raw, fam.backward)
            try:
                if which == 0:
                    out = forward(*a, **kw)                       # warm-up: numba compiles here
                    b_args = fam.backward_args(_rebound(bound, a, kw), out)
                    backward(*b_args)
                    runs[name] = ((lambda f=forward, a=a, kw=kw: f(*a, **kw)),
                                  (lambda b=backward, b_args=b_args: b(*b_args)))
                else:   # the backward came first (no forward inputs here): time it alone
                    out = backward(*a, **kw)
                    runs[name] = (None, (lambda b=backward, a=a, kw=kw: b(*a, **kw)))
            except Exception as exc:
                if name == CANDIDATES[0]:
                    raise
                warnings.warn(f"fastnn kernel choice: {name}'s {fam.name} failed while measuring "
                              f"({type(exc).__name__}: {exc}); not using it", RuntimeWarning, stacklevel=4)
                continue
            outs[name] = out
        times = _timed_turns(runs, outs)
        winner = pick(times)
        if winner != CANDIDATES[0] and CANDIDATES[0] in times:
            # A switch must win a second, independent measurement too: one burst of noise on the
            # base's turns (a cython backward once measured 367 us, its usual 105) was recorded
            # as numba's win for good. The record keeps the best of both.
            again = _timed_turns(runs, outs)
            if pick(again) != winner:
                winner = CANDIDATES[0]
            times = {name: [min(a, b) for a, b in zip(times[name], again[name])] for name in times}
        return winner, times, outs[winner]

    def kernel_choices(self):
        """{name: {"family", "backend", "source" ('measured', 'recorded' or 'override'), "us"}}:
        one entry per size key chosen in this process ('lstm/float32/N128,T32,F1,H8') and one
        per override (under the overridden family's or kernel's name)."""
        with self._lock:
            out = {key_name(f, k): dict(v) for (f, k), v in self._info.items()}
            for name, backend in self._overrides.items():
                fam = FAMILIES.get(name) or _OF_KERNEL.get(name)
                out[name] = {"family": fam.name if fam else registry.KERNELS[name].family,
                             "backend": backend, "source": "override", "us": None}
        return out


def _rebound(bound, args, kwargs):
    """bound's arguments with args/kwargs (the copies) in place of the originals."""
    new = bound.signature.bind(*args, **kwargs)
    new.apply_defaults()
    return new


# ---------------------------------------------------------------- tune

TUNE_HIDDEN = (6, 32, 128)
TUNE_BATCHES = (32, 64, 128)


def _tune_cases(batch, dtype, rng):
    """(family, forward args) at the sizes of benchmarks/small_models_vs_torch.py: the recurrent
    cells on 40 steps of 1 feature, the CNN's Conv1D stack (length 40), the BatchNorm CNN's
    Conv2D pair (8x8 images), their BatchNorms, MaxPool2D and global average pools."""
    r = lambda *shape: (rng.standard_normal(shape) * 0.3).astype(dtype)
    for cell, gates in (("rnn", 1), ("lstm", 4), ("gru", 3)):
        for hid in TUNE_HIDDEN:
            g = gates * hid
            yield cell, (r(batch, 40, 1), r(g, 1), r(g, hid), r(g), r(g))
    for c_in, c_out, k, length in ((1, 25, 5, 40), (25, 25, 3, 18), (25, 25, 3, 8)):
        yield "conv1d", (r(batch, c_in, length), r(c_out, c_in, k), r(c_out), 2, 0)
    for c_in, c_out, side in ((1, 16, 8), (16, 32, 4)):
        yield "conv2d", (r(batch, c_in, side, side), r(c_out, c_in, 3, 3), r(c_out), (1, 1), (1, 1))
    ones, zeros = (lambda c: reference.np.ones(c, dtype)), (lambda c: reference.np.zeros(c, dtype))
    for c, s in ((16, 64), (32, 16), (25, 18), (25, 8)):      # the BatchNorm CNNs' BatchNorm2D/1D
        yield "batch_norm", (r(batch, c, s), ones(c), zeros(c), zeros(c), ones(c), 0.1, 1e-5, True)
    yield "maxpool2d", (r(batch, 16, 8, 8), (2, 2), (2, 2))
    for c, s in ((32, 16), (25, 8)):
        yield "global_avgpool", (r(batch, c, s),)


def tune(batches=TUNE_BATCHES, dtypes=("float32",), out=None):
    """Measure (again, even where recorded) and record auto's choice at the benchmark sizes
    for each batch size and dtype ("measured at install": `fastnn tune`). Returns
    kernel_choices() of the measured keys."""
    import sys
    from ..backend import get_backend
    out = out or sys.stdout
    auto = get_backend("auto")
    rng = reference.np.random.default_rng(0)
    seen = []
    with auto._lock:
        auto._remeasure = True
        try:
            for dtype in dtypes:
                for batch in batches:
                    for family, args in _tune_cases(int(batch), reference.np.dtype(dtype), rng):
                        key = (family, FAMILIES[family].key(*args))
                        if key in seen:
                            continue
                        seen.append(key)
                        auto._chosen.pop(key, None)
                        auto._forget_fast()
                        auto._dispatchers[FAMILIES[family].forward](*args)
        finally:
            auto._remeasure = False
    choices = auto.kernel_choices()
    result = {}
    for family, key in seen:
        name = key_name(family, key)
        entry = result[name] = choices[name]
        times = ", ".join(f"{b} {sum(t):,.0f} us" for b, t in (entry["us"] or {}).items())
        print(f"{name:<42} {entry['backend']:<7} ({times})", file=out)
    print(f"recorded in {auto.record.path}", file=out)
    return result
