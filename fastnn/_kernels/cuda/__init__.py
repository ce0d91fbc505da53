"""numba.cuda kernels for NVIDIA GPUs; each matches the kernel of the same name in fastnn/_kernels/reference.py.

Layout, one topic a file: gemm.py (matmul, bias_add, bias_grad, linear,
linear_backward: shared-memory tiles with 2-D register blocking), activations.py,
losses.py, optim.py, conv.py (conv1d/2d as im2col + the GEMM, max/avg pooling),
recurrent.py (RNN, LSTM, GRU: one input GEMM, then per step a recurrent GEMM
and a fused gate kernel), _device.py (DeviceArray, to_device / to_host / zeros).
The kernels compile lazily, per dtype, on first use.

Arrays: every kernel takes NumPy arrays or device arrays (DeviceArray, numba
device arrays, or any CUDA-array-interface array). Given any device array it
returns device arrays (no copy to the host); given only NumPy arrays it copies
in, computes and returns NumPy arrays. Losses always return the loss as a
Python float (one number copied back). A Sequential built on this backend keeps
its flat parameter and gradient buffers on the device (model.py asks the
backend's ``to_device`` / ``zeros``), the optimizer keeps its state there, and
the Trainer copies each batch in once and takes back only the loss and, for
classifiers, the batch's outputs for accuracy.

Every kernel of the registry but the fused linear_act and linear_backward_into
(composed from the ones here) has a CUDA version, so CNNs and recurrent models
also train with activations and weights on the device. A registry kernel in no
file here would run the NumPy reference on the host (``fallback``: device
arguments copied back, results copied in).

Importing this package does not import numba.cuda; ``available()`` does, only
when a CUDA driver is present or NUMBA_ENABLE_CUDASIM=1 (Numba's CUDA simulator,
which runs the kernels on the CPU: how CI tests them).
"""
import functools
import importlib
import importlib.util
import os

from .. import reference, registry

# Every public function of these topic files is a kernel of the registry (checked when
# NATIVE is first read: a misspelled one raises registry.UnknownKernelError), except HELPERS.
TOPICS = ("gemm", "activations", "losses", "optim", "conv", "recurrent",
          "losses_extra", "optim_extra")   # *_extra: issue 10 (optim)
TOPICS += ("activations_more", "dropout_embedding")   # issue 10: acts
TOPICS += ("attention",)   # issue 10: attn
TOPICS += ("normalization",)   # issue 10: norm
HELPERS = ("sm_count", "choose_config", "bias_add_device", "bias_grad_device")   # in gemm.py
DEVICE = ("to_device", "to_host", "zeros", "DeviceArray", "is_device", "SIMULATED")   # in _device.py
INSTALL = "pip install 'fastnn[cuda]' (the numba-cuda package)"


def _installed():
    try:
        return importlib.util.find_spec("numba_cuda") is not None
    except (ImportError, ValueError):
        return False


def _simulator_requested():
    """Whether numba.cuda will import as the simulator: Numba's ENABLE_CUDASIM,
    or NUMBA_ENABLE_CUDASIM set in the environment after Numba read its config.
    (Only that one setting is updated: a full numba config reload would undo the
    numba backend's process-wide tuning.)"""
    import numba.core.config as config
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0").strip() not in ("", "0"):
        config.ENABLE_CUDASIM = 1
    return bool(config.ENABLE_CUDASIM)


def _driver_found():
    """Whether the CUDA driver library loads: a cheap test for an NVIDIA GPU that
    avoids importing numba.cuda on machines without one."""
    import ctypes
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll", "libcuda.dylib"):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


@functools.lru_cache(maxsize=None)
def _probe(simulate, driver):
    if not _installed():
        return False, f"the numba-cuda package is not installed: {INSTALL}"
    if not simulate and not driver:
        return False, ("no NVIDIA GPU found (the CUDA driver library libcuda cannot be loaded) "
                       "and NUMBA_ENABLE_CUDASIM is not set")
    try:
        from numba import cuda
    except Exception as exc:  # a numba-cuda that does not match this numba fails here
        import numba
        return False, (f"numba.cuda failed to import ({type(exc).__name__}: {exc}); "
                       f"install a numba-cuda that matches numba {numba.__version__}: "
                       f"pip install -U 'fastnn[cuda]'")
    try:
        ok = cuda.is_available()
    except Exception as exc:
        return False, f"numba.cuda cannot use the GPU: {type(exc).__name__}: {exc}"
    if not ok:
        return False, ("no usable NVIDIA GPU found (numba.cuda.is_available() is False) "
                       "and NUMBA_ENABLE_CUDASIM is not set")
    return True, ""


def available():
    """(True, '') when numba.cuda can run kernels here (a GPU, or the simulator), else (False, why)."""
    import sys
    if not _installed():
        return False, f"the numba-cuda package is not installed: {INSTALL}"
    if "numba.cuda" in sys.modules:        # its mode (GPU or simulator) is fixed now
        return _probe(True, True)
    return _probe(_simulator_requested(), _driver_found())


def _host_fallback(name):
    """The reference kernel on the host, for kernels without a CUDA version:
    device arguments are copied back and, when any was given, results go back in."""
    ref = getattr(reference, name)
    dev = importlib.import_module(f"{__name__}._device")

    def convert(value, fn):
        if isinstance(value, tuple):
            return tuple(convert(v, fn) for v in value)
        return fn(value)

    @functools.wraps(ref)
    def run(*args, **kwargs):
        on_device = any(dev.is_device(a) for a in list(args) + list(kwargs.values()))
        args = tuple(dev.to_host(a) for a in args)
        kwargs = {k: dev.to_host(v) for k, v in kwargs.items()}
        out = ref(*args, **kwargs)
        if not on_device:
            return out
        return convert(out, lambda v: dev.to_device(v) if hasattr(v, "shape") else v)
    run.host_fallback = True
    return run


fallback = _host_fallback   # backend.Backend's fallback for kernels without a CUDA version


def _native():
    """{kernel: function} of the topic files (imports numba.cuda: call after available())."""
    modules = [importlib.import_module(f"{__name__}.{topic}") for topic in TOPICS]
    return registry.overrides("cuda", modules, HELPERS)


def __getattr__(name):
    """Kernels load on first use (after available()): numba.cuda is imported then."""
    if name == "NATIVE":
        value = _native()
    elif name in DEVICE:
        value = getattr(importlib.import_module(f"{__name__}._device"), name)
    elif name in registry.KERNELS:
        native = __getattr__("NATIVE")
        value = native[name] if name in native else _host_fallback(name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(DEVICE) | set(registry.KERNELS) | {"NATIVE"})
