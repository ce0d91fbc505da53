"""Backend registry: which kernel implementations exist here, and the default.

A backend is the reference kernels of fastnn/_kernels/reference.py with some
replaced by faster ones. Each public kernel call is validated by
fastnn/_kernels/checks.py first; ``backend.raw`` holds the unchecked kernels
for callers (the layers) that validated their inputs once already.
"""
import functools
import importlib
import os
import types

from ._kernels import checks, reference

# name -> module whose functions named like reference kernels override them
_MODULES = {
    "numpy": "fastnn._kernels.reference",
    "numba": "fastnn._kernels.numba_cpu",
    "cython": "fastnn._kernels.cython",
    "cuda": "fastnn._kernels.cuda",
}
DEFAULT_ORDER = ("cython", "numba", "numpy")


class BackendUnavailable(RuntimeError):
    """The named backend exists but cannot run on this machine."""


class Backend:
    """The kernels of one backend, each validated before it runs."""

    def __init__(self, name, module):
        self.name = name
        self.module = module
        raw = {k: getattr(module, k, getattr(reference, k)) for k in reference.KERNELS}
        self.overridden = tuple(k for k in reference.KERNELS if raw[k] is not getattr(reference, k)
                                and not getattr(raw[k], "host_fallback", False))
        self.raw = types.SimpleNamespace(**raw)
        # Fused kernels the module lacks are composed from its own kernels.
        for kernel, compose in reference.COMPOSED.items():
            own = getattr(module, kernel, None)
            if own is None or getattr(own, "host_fallback", False):
                raw[kernel] = compose(self.raw)
                setattr(self.raw, kernel, raw[kernel])
        for kernel, fn in raw.items():
            setattr(self, kernel, _checked(kernel, fn))
        # Where the model's arrays live: identities on CPU backends (reference.HELPERS).
        for helper in reference.HELPERS:
            setattr(self, helper, getattr(module, helper, getattr(reference, helper)))

    def __repr__(self):
        return f"<fastnn backend {self.name!r}>"


def _checked(kernel, fn):
    check = checks.CHECKS[kernel]

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
    if name in _failures:
        raise BackendUnavailable(_failures[name])
    try:
        module = importlib.import_module(_MODULES[name])
        available = getattr(module, "available", lambda: (True, ""))
        ok, why = available()
        if not ok:
            raise BackendUnavailable(f"backend {name!r} is not available here: {why}")
    except BackendUnavailable as exc:
        _failures[name] = str(exc)
        raise
    except Exception as exc:  # a missing or broken build must not break the others
        _failures[name] = f"backend {name!r} is not available here: {type(exc).__name__}: {exc}"
        raise BackendUnavailable(_failures[name]) from None
    _loaded[name] = Backend(name, module)
    return _loaded[name]


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
    """FASTNN_BACKEND if set, else the first usable of cython, numba, numpy."""
    chosen = os.environ.get("FASTNN_BACKEND")
    if chosen:
        return chosen
    for name in DEFAULT_ORDER:
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
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; known backends: {sorted(_MODULES)}")
    return _load(name)
