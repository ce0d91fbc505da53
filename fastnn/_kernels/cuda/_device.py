"""Device arrays for the cuda backend: DeviceArray, to_device / to_host / zeros, launch helpers.

Not kernels of reference.py: these move data. They replace reference.to_device,
to_host and zeros, which are identities on the CPU backends.

DeviceArray wraps one numba device array (a DeviceNDArray on a GPU, a
FakeCUDAArray under NUMBA_ENABLE_CUDASIM) and offers only what fastnn's model,
layers and optimizers do to their buffers: shape/dtype/size, reshape, basic
slicing (views), ``a[...] = value``, ``fill``, in-place ``+=``, ``copy`` and
``copy_to_host``/``np.asarray`` (both copy to the host). Because it offers
the same small surface on a GPU and under the simulator, code that passes the
simulator tests does not lean on the simulator's NumPy-backed extras.
"""
import math

import numpy as np
from numba import cuda

SIMULATED = cuda.jit.__module__.startswith("numba.cuda.simulator")
THREADS = 256          # threads per block of the 1-D kernels
MAX_BLOCKS = 4096      # grid-stride loops cover the rest


def _numba_array(x):
    """True for a numba device array (a DeviceNDArray, or the simulator's FakeCUDAArray)."""
    return bool(getattr(x, "__cuda_ndarray__", False))


def _foreign_device(x):
    """True for another library's GPU array (CuPy, PyTorch: the CUDA array interface)."""
    return not SIMULATED and hasattr(x, "__cuda_array_interface__")


class DeviceArray:
    """A C-contiguous array in GPU memory (see the module docstring)."""

    __slots__ = ("arr",)

    def __init__(self, arr):
        self.arr = arr

    # ------------------------------------------------------------ metadata
    @property
    def shape(self):
        return tuple(self.arr.shape)

    @property
    def dtype(self):
        return np.dtype(self.arr.dtype)

    @property
    def ndim(self):
        return len(self.arr.shape)

    @property
    def size(self):
        return int(np.prod(self.arr.shape, dtype=np.int64))

    @property
    def nbytes(self):
        return self.size * self.dtype.itemsize

    def __len__(self):
        return self.arr.shape[0]

    @property
    def __cuda_array_interface__(self):
        return self.arr.__cuda_array_interface__

    def __repr__(self):
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype.name})"

    # --------------------------------------------------------------- views
    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = tuple(int(s) for s in shape)
        if -1 in shape:
            known = int(np.prod([s for s in shape if s != -1], dtype=np.int64))
            shape = tuple(self.size // known if s == -1 else s for s in shape)
        if int(np.prod(shape, dtype=np.int64)) != self.size:
            raise ValueError(f"cannot reshape a device array of shape {self.shape} into {shape}")
        if shape == self.shape:
            return self
        return DeviceArray(self.arr.reshape(shape))

    def ravel(self):
        return self.reshape(self.size)

    def __getitem__(self, key):
        out = self.arr[key]
        if _numba_array(out):
            return DeviceArray(out)
        return out   # an element: a host scalar

    def __setitem__(self, key, value):
        if isinstance(value, DeviceArray):
            value = value.arr
        elif not _numba_array(value):
            value = np.asarray(value, dtype=self.dtype)
            if value.ndim == 0 and key is Ellipsis:
                self.fill(value)
                return
            if key is Ellipsis and value.shape == self.shape:
                self.arr.copy_to_device(np.ascontiguousarray(value))
                return
        self.arr[key] = value

    # ------------------------------------------------------------ updates
    def fill(self, value):
        flat = self.arr.reshape(self.size)
        _fill_kernel[launch(flat.shape[0])](flat, self.dtype.type(value))

    def __iadd__(self, other):
        other = as_device(other, self.dtype)
        if other.shape != self.shape:
            raise ValueError(f"cannot add shape {other.shape} into {self.shape} in place")
        n = self.size
        _add_kernel[launch(n)](self.arr.reshape(n), other.arr.reshape(n))
        return self

    def copy(self):
        out = cuda.device_array(self.shape, self.dtype)
        out.copy_to_device(self.arr)
        return DeviceArray(out)

    def copy_to_host(self):
        return self.arr.copy_to_host()

    def __array__(self, dtype=None, copy=None):
        host = self.arr.copy_to_host()
        return host if dtype is None else host.astype(dtype, copy=False)


@cuda.jit
def _fill_kernel(x, value):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, x.shape[0], stride):
        x[i] = value


@cuda.jit
def _add_kernel(x, y):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, x.shape[0], stride):
        x[i] += y[i]


def launch(n, threads=THREADS):
    """(blocks, threads) for a grid-stride loop over n items; small n get small
    blocks (which also keeps the simulator, one Python thread per GPU thread, quick)."""
    threads = min(threads, max(32, 32 * math.ceil(n / 32)))
    return min(MAX_BLOCKS, max(1, math.ceil(n / threads))), threads


# ------------------------------------------------------- moving arrays


def is_device(x):
    """True for a DeviceArray or any numba/CUDA-array-interface device array."""
    return isinstance(x, DeviceArray) or _numba_array(x) or _foreign_device(x)


def as_device(x, dtype=None):
    """x as a C-contiguous DeviceArray (copied in when it is a host array)."""
    if isinstance(x, DeviceArray):
        d = x
    elif _numba_array(x) or _foreign_device(x):
        arr = x if _numba_array(x) else cuda.as_cuda_array(x)
        if not arr.is_c_contiguous():
            raise ValueError("device arrays given to fastnn's cuda kernels must be C-contiguous")
        d = DeviceArray(arr)
    else:
        return DeviceArray(cuda.to_device(np.ascontiguousarray(x, dtype=dtype)))
    if dtype is not None and d.dtype != np.dtype(dtype):
        # A rare path (a user's device array of another dtype): cast on the host.
        return DeviceArray(cuda.to_device(d.copy_to_host().astype(dtype)))
    return d


def to_device(x, dtype=None):
    """x on the GPU as a DeviceArray; a DeviceArray of the right dtype passes through."""
    return as_device(x, dtype)


def to_host(x):
    """x as a NumPy array: device arrays are copied back, host arrays pass through."""
    if isinstance(x, DeviceArray):
        return x.copy_to_host()
    if _numba_array(x) or _foreign_device(x):
        return as_device(x).copy_to_host()
    return x


def zeros(shape, dtype):
    """A zero-filled DeviceArray."""
    shape = (shape,) if np.isscalar(shape) else tuple(shape)
    out = DeviceArray(cuda.device_array(shape, np.dtype(dtype)))
    if out.size:
        out.fill(0)
    return out


def empty(shape, dtype):
    shape = (shape,) if np.isscalar(shape) else tuple(shape)
    return DeviceArray(cuda.device_array(shape, np.dtype(dtype)))


class Call:
    """Inputs of one kernel call moved to the device; ``out`` hands results back
    on the device when any input was a device array, else as NumPy arrays."""

    __slots__ = ("on_device",)

    def __init__(self, *arrays):
        self.on_device = any(is_device(a) for a in arrays if a is not None)

    def out(self, x):
        if x is None or self.on_device:
            return x
        return x.copy_to_host()
