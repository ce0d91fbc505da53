"""The kernel registry: one declaration per kernel, backends that override by name
(a misspelled override fails at import), every kernel on every backend, `overridden`
that tells the truth, and `fastnn backends --kernels`."""
import json
import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

import fastnn as fnn
from fastnn import backend as backend_mod, cli, losses
from fastnn._kernels import checks, examples, reference, registry
from conftest import BACKENDS, assert_close

PACKAGES = {"numba": "fastnn._kernels.numba_cpu", "cython": "fastnn._kernels.cython",
            "cuda": "fastnn._kernels.cuda"}

# the kernels built from a backend's own other kernels where it has no native one
COMPOSED = ("linear_act", "linear_backward_into", "batch_norm_relu", "batch_norm_relu_backward")


def _relu(x):
    return np.maximum(x, 0)


# ------------------------------------------------------------- declarations


def test_everything_that_lists_kernels_derives_from_the_registry():
    names = tuple(registry.KERNELS)
    assert reference.KERNELS == names
    assert tuple(checks.CHECKS) == names
    assert registry.names("loss") == reference.LOSSES
    # every loss kernel is a loss name, but those that are another loss with options
    assert losses.NAMES == tuple(n for n in registry.names("loss") if n not in losses.OPTION_KERNELS)
    assert set(reference.CONV) | set(reference.RECURRENT) <= set(names)
    for act in reference.ACTIVATIONS:
        assert {act, act + "_backward"} <= set(registry.names("activation"))
    for kernel in registry.KERNELS.values():
        assert kernel.reference is getattr(reference, kernel.name)
        assert kernel.examples.tests and kernel.examples.bench, kernel.name
    assert {k for k, v in registry.KERNELS.items() if v.compose} == set(COMPOSED)


def test_a_kernel_is_declared_once():
    with pytest.raises(ValueError, match="'relu' is declared twice"):
        registry.declare("relu", "activation", checks.CHECKS["relu"], examples.Cases(()))


def test_a_new_activation_needs_only_its_reference():
    """The activation family's check and examples are generic: read from the reference's signature."""
    def softsign(x, scale=1.0):
        return scale * x / (1 + np.abs(x))

    check = checks.activation("softsign", softsign)
    (x,), kwargs = check(np.ones((2, 3), dtype=np.int64), 0.5)
    assert x.dtype == np.float64 and kwargs == {"scale": 0.5}
    assert check(np.ones((2, 3)), scale=2)[1] == {"scale": 2.0}
    with pytest.raises(ValueError, match="softsign x must be 2-D"):
        check(np.ones(3))
    with pytest.raises(TypeError, match="unexpected or repeated argument 'alpha'"):
        check(np.ones((2, 3)), alpha=0.1)
    with pytest.raises(ValueError, match="scale must be finite"):
        check(np.ones((2, 3)), scale=float("nan"))
    cases = examples.activation("softsign", softsign)
    assert "scale=0.2" in [c.id for c in cases.tests]
    args, kwargs = cases.tests[-1].make(np.random.default_rng(0), np.float32)
    assert args[0].dtype == np.float32 and kwargs == {"scale": 0.2}


# ---------------------------------------------------------------- overrides


def test_misspelled_override_raises_naming_it():
    with pytest.raises(registry.UnknownKernelError, match=r"'rleu' in a table \(did you mean 'relu'\?\)"):
        registry.overrides("mine", [{"rleu": _relu}])
    module = types.ModuleType("mine_kernels")
    exec("def rleu(x):\n    return x\ndef relu(x):\n    return x\ndef _private(x):\n    return x", module.__dict__)
    with pytest.raises(registry.UnknownKernelError, match="'rleu' in mine_kernels"):
        registry.overrides("mine", [module])
    assert set(registry.overrides("mine", [module], helpers=("rleu",))) == {"relu"}
    with pytest.raises(registry.UnknownKernelError, match="'rleu'"):
        backend_mod.Backend("mine", types.SimpleNamespace(NATIVE={"rleu": _relu}))


def test_misspelled_override_fails_the_backend_import(tmp_path, monkeypatch):
    """Not a quiet 'backend unavailable': get_backend and backends() raise, naming it."""
    pkg = tmp_path / "mybackend"
    pkg.mkdir()
    (pkg / "kernels.py").write_text("def rleu(x):\n    return x\n")
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        from fastnn._kernels import registry
        from . import kernels
        NATIVE = registry.overrides("mine", [kernels])
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(backend_mod._MODULES, "mine", "mybackend")
    monkeypatch.setattr(backend_mod, "_loaded", {})
    monkeypatch.setattr(backend_mod, "_failures", {})
    with pytest.raises(registry.UnknownKernelError, match="'rleu' in mybackend.kernels"):
        fnn.get_backend("mine")
    with pytest.raises(registry.UnknownKernelError, match="rleu"):
        fnn.backends()


def test_a_kernel_defined_twice_raises():
    with pytest.raises(registry.UnknownKernelError, match="defines kernel 'relu' twice"):
        registry.overrides("mine", [{"relu": _relu}, {"relu": _relu}])


def test_missing_kernels_compose_from_the_backends_own_then_fall_back():
    calls = []

    def linear(x, w, b):
        calls.append("linear")
        return reference.linear(x, w, b)

    def relu(x):
        calls.append("relu")
        return reference.relu(x)

    be = backend_mod.Backend("mine", types.SimpleNamespace(NATIVE={"linear": linear, "relu": relu}))
    assert be.overridden == ("linear", "relu")
    assert be.sources["linear_act"] == "composed" and be.sources["tanh"] == "reference"
    assert be.raw.tanh is reference.tanh and be.raw.linear is linear
    x, w, b = np.ones((2, 3)), np.ones((4, 3)), np.zeros(4)
    assert_close(be.linear_act(x, w, b, "relu"), reference.linear_act(x, w, b, "relu"), np.float64)
    assert calls == ["linear", "relu"]


# ------------------------------------------------------------ every backend


@pytest.mark.parametrize("name", BACKENDS)
def test_every_kernel_is_on_every_backend(name):
    be = fnn.get_backend(name)
    assert list(be.sources) == list(registry.KERNELS)
    for kernel in registry.KERNELS:
        assert callable(getattr(be.raw, kernel)) and callable(getattr(be, kernel)), kernel
    assert set(be.sources.values()) <= {"native", "composed", "reference"}


@pytest.mark.parametrize("name", BACKENDS)
def test_overridden_is_what_the_backend_implements(name):
    be = fnn.get_backend(name)
    if name == "numpy":
        assert be.overridden == ()
    for kernel, source in be.sources.items():
        fn = getattr(be.raw, kernel)
        if source == "native":      # the backend's own function, bare (no wrapper)
            assert fn is be.module.NATIVE[kernel]
            assert fn.__module__.startswith(PACKAGES[name]), (kernel, fn.__module__)
        elif source == "reference":
            assert fn is getattr(reference, kernel)
        else:
            assert registry.KERNELS[kernel].compose is not None
    assert be.overridden == tuple(k for k, s in be.sources.items() if s == "native")


def test_cython_overrides_are_the_compiled_modules_public_functions():
    cy = pytest.importorskip("fastnn._kernels.cython")
    public = set(registry.public_functions(cy._mod))
    assert set(fnn.get_backend("cython").overridden) == public - set(cy.HELPERS)
    assert set(cy.KERNEL_NAMES) == public - set(cy.HELPERS)


def test_numba_overrides_are_the_topic_files_public_functions():
    nb = pytest.importorskip("fastnn._kernels.numba_cpu")
    import importlib
    public = set()
    for topic in nb.TOPICS:
        public |= set(registry.public_functions(importlib.import_module(f"{nb.__name__}.{topic}")))
    assert set(fnn.get_backend("numba").overridden) == public - set(nb.HELPERS)


def test_cuda_backend_under_the_simulator():
    pytest.importorskip("numba_cuda")
    code = textwrap.dedent("""
        import json
        import fastnn as fnn
        be = fnn.get_backend("cuda")
        print(json.dumps({k: [s, getattr(be.raw, k).__module__] for k, s in be.sources.items()}))
    """)
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    sources = json.loads(out.stdout.strip().splitlines()[-1])
    assert list(sources) == list(registry.KERNELS)
    for kernel, (source, module) in sources.items():
        if source == "native":
            assert module.startswith("fastnn._kernels.cuda."), (kernel, module)
    assert {k for k, (s, _) in sources.items() if s != "native"} == set(COMPOSED)
    assert {sources[k][0] for k in COMPOSED} == {"composed"}


# ------------------------------------------------------------------ the CLI


def test_backends_kernels_prints_each_kernels_source(capsys):
    assert cli.main(["backends", "--kernels"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("kernel "))
    assert lines[header].split() == ["kernel"] + BACKENDS
    rows = {line.split()[0]: line.split()[1:] for line in lines[header + 1:header + 1 + len(registry.KERNELS)]}
    assert list(rows) == list(registry.KERNELS)
    bes = [fnn.get_backend(n) for n in BACKENDS]
    for kernel, cells in rows.items():
        assert cells == [be.sources[kernel] for be in bes], kernel
    for be in bes:
        native = len(be.overridden)
        assert any(line.startswith(f"{be.name}: {native} native,") for line in lines), be.name


def test_backends_without_kernels_flag_lists_only_backends(capsys):
    assert cli.main(["backends"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usable backends:") and "matmul" not in out
