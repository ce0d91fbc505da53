"""Backend registry: which kernel implementations exist here, and the default.

A backend is the kernels declared in fastnn/_kernels/registry.py, each the backend
module's own (its NATIVE table) where it has one, else the registry's composition of
its own kernels, else the NumPy reference (or the module's ``fallback``). Each public
kernel call is validated by its check first; ``backend.raw`` holds the unchecked
kernels for callers (the layers) that validated their inputs once already.

"auto" (fastnn/_kernels/choice.py) is the default where the compiled backends load: per
kernel family and size the faster of cython's and numba's kernels, measured at first use and
recorded. It is a compiled CPU backend like them, but ``backends()`` lists only the concrete
backends (the tests parametrize over it).
"""
import functools
import importlib
import os
import types

from . import _malloc
from ._kernels import reference, registry

# name -> module whose NATIVE table ({kernel: function}) overrides the reference
_MODULES = {
    "numpy": "fastnn._kernels.reference",
    "numba": "fastnn._kernels.numba_cpu",
    "cython": "fastnn._kernels.cython",
    "cuda": "fastnn._kernels.cuda",
}
DEFAULT_ORDER = ("cython", "numba", "numpy")   # where "auto" cannot run
AUTO = "auto"


class BackendUnavailable(RuntimeError):
    """The named backend exists but cannot run on this machine."""


class Backend:
    """The kernels of one backend, each validated before it runs.

    ``sources[kernel]`` says where each comes from: 'native' (the module's own),
    'composed' (the registry's composition of the backend's own kernels) or
    'reference'; ``overridden`` lists the native ones.
    """

    def __init__(self, name, module):
        self.name = name
        self.module = module
        native = registry.overrides(name, [getattr(module, "NATIVE", {})])
        fallback = getattr(module, "fallback", None)   # cuda: the reference on the host
        # kernels that validate their own inputs (the registry's check, its usual case inlined)
        self_checked = getattr(module, "CHECKED", {})
        self.raw = types.SimpleNamespace()
        self.sources = {}
        for kernel in registry.KERNELS.values():
            if kernel.name in native:
                fn, source = native[kernel.name], "native"
            elif kernel.compose is not None and native:
                fn, source = kernel.compose(self.raw), "composed"
            else:
                fn, source = (fallback(kernel.name) if fallback else kernel.reference), "reference"
            setattr(self.raw, kernel.name, fn)
            checked = self_checked.get(kernel.name) if source == "native" else None
            setattr(self, kernel.name, checked or _checked(kernel.check, fn))
            self.sources[kernel.name] = source
        self.overridden = tuple(k for k, s in self.sources.items() if s == "native")
        # Where the model's arrays live: identities on CPU backends (reference.HELPERS).
        for helper in reference.HELPERS:
            setattr(self, helper, getattr(module, helper, getattr(reference, helper)))

    def __repr__(self):
        return f"<fastnn backend {self.name!r}>"

    def concurrent_pair(self, kernel, x, w_ih, w_hh):
        """The entry that runs two calls of a recurrent kernel at once, one a core
        (``pair(kernel_or_its_backward, args_a, args_b, check)``: a bidirectional layer's two
        directions), where this backend's module has one and both the kernel and its backward
        are that module's own; else None. x, w_ih, w_hh: the forward's inputs (auto's choice
        depends on their sizes)."""
        mod = getattr(self.module, "_mod", None)          # cython's compiled module
        pair = getattr(mod, "_recurrent_pair", None)
        if pair is None:
            return None
        for name in (kernel, kernel + "_backward"):
            if getattr(self.raw, name, None) is not getattr(mod, name, None):
                return None
        return pair


def _checked(check, fn):
    @functools.wraps(fn)
    def run(*args, **kwargs):
        args, kwargs2 = check(*args, **kwargs)
        return fn(*args, **kwargs2)
    return run


_loaded = {}
_failures = {}


def _load(name):
    if name in _loaded:
        return _loaded[name]
    if name == AUTO:
        return _load_auto()
    if name in _failures:
        raise BackendUnavailable(_failures[name])
    try:
        module = importlib.import_module(_MODULES[name])
        available = getattr(module, "available", lambda: (True, ""))
        ok, why = available()
        if not ok:
            raise BackendUnavailable(f"backend {name!r} is not available here: {why}")
        if name == "cuda":   # under mpiexec: one GPU per rank of each machine
            from . import distributed
            distributed.select_gpu()
    except BackendUnavailable as exc:
        _failures[name] = str(exc)
        raise
    except registry.UnknownKernelError:   # a misspelled override is a bug, not a missing build
        raise
    except Exception as exc:  # a missing or broken build must not break the others
        _failures[name] = f"backend {name!r} is not available here: {type(exc).__name__}: {exc}"
        raise BackendUnavailable(_failures[name]) from None
    _loaded[name] = Backend(name, module)
    # tfspeed: the compiled CPU backends reuse freed heap memory (fastnn/_malloc.py)
    if name in ("cython", "numba"):
        _malloc.tune()
    return _loaded[name]


def _load_auto():
    """The auto backend: needs cython (its base, loaded now) and numba (loaded at the first
    measurement; here only looked up, so that a model of Dense layers never imports numba)."""
    import importlib.util
    if AUTO in _failures:
        raise BackendUnavailable(_failures[AUTO])
    try:
        _load("cython")
        if importlib.util.find_spec("numba") is None:
            raise BackendUnavailable("backend 'auto' is not available here: numba is not installed")
    except BackendUnavailable as exc:
        _failures[AUTO] = str(exc).replace("backend 'cython'", "backend 'auto' needs cython, but cython")
        raise BackendUnavailable(_failures[AUTO]) from None
    from ._kernels import choice
    _loaded[AUTO] = choice.AutoBackend(_load)
    return _loaded[AUTO]


def kernel_choices():
    """What the auto backend chose in this process, per family and size key (and each
    override): {name: {'family', 'backend', 'source': 'measured'|'recorded'|'override', 'us'}}."""
    return _load(AUTO).kernel_choices()


def choose(name, backend):
    """Make the auto backend run one family's ('lstm': lstm and lstm_backward) or one
    registry kernel's ('lstm_backward', 'matmul') kernels from backend ('cython', 'numba' or
    'numpy') at every size; backend None measures again. Beats FASTNN_KERNELS. Layers look
    their kernels up per call, so it applies to models built before it too."""
    _load(AUTO).choose(name, backend)


def backends():
    """Names of the backends that can run here, e.g. ['numpy', 'numba', 'cython']."""
    names = []
    for name in _MODULES:
        try:
            _load(name)
        except BackendUnavailable:
            continue
        names.append(name)
    return names


def default_backend():
    """FASTNN_BACKEND if set, else 'auto' where it can run, else the first usable of cython,
    numba, numpy."""
    chosen = os.environ.get("FASTNN_BACKEND")
    if chosen:
        return chosen
    for name in (AUTO, *DEFAULT_ORDER):
        try:
            _load(name)
            return name
        except BackendUnavailable:
            continue
    return "numpy"


def get_backend(name=None):
    """The Backend called name (a Backend passes through; None means the default)."""
    if isinstance(name, Backend):
        return name
    if name is None:
        name = default_backend()
    if not isinstance(name, str):
        raise TypeError(f"backend must be a name such as 'numpy', got {name!r}")
    if name not in _MODULES and name != AUTO:
        raise ValueError(f"unknown backend {name!r}; known backends: {sorted([*_MODULES, AUTO])}")
    return _load(name)
