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

For the recurrent layers (reverse direction, final state, two directions side
by side) it also takes: integer and strided indexes (views that need not be
contiguous; a negative step, such as ``x[:, ::-1]``, gives a contiguous copy,
as Numba's device views have no negative strides), ``contiguous()``,
assignment of a device array into a view, ``a + b``, and through NumPy's
``__array_function__``: ``np.concatenate`` and ``np.zeros_like`` on the device.
Any other NumPy function given a DeviceArray runs on host copies, as before.
A kernel handed a non-contiguous view copies it to a contiguous one first.
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
        return DeviceArray(self.contiguous().arr.reshape(shape))

    def ravel(self):
        return self.reshape(self.size)

    def __getitem__(self, key):
        key, flips = _split_negative_steps(key, self.shape)
        out = self.arr[key]
        if not _numba_array(out):
            return out   # an element: a host scalar
        out = DeviceArray(out)
        if any(flips):
            out = out._copy(flips)
        return out

    def is_c_contiguous(self):
        return bool(self.arr.is_c_contiguous())

    def contiguous(self):
        """self when C-contiguous, else a contiguous copy on the device."""
        return self if self.is_c_contiguous() else self._copy()

    def _copy(self, flips=None):
        """A contiguous copy, reversed along the axes where flips is true."""
        out = empty(self.shape, self.dtype)
        copy_into(self, out, flips)
        return out

    def __setitem__(self, key, value):
        if is_device(value) and not isinstance(value, DeviceArray):
            value = as_device(value)
        if isinstance(value, DeviceArray):
            if _split_negative_steps(key, self.shape)[1]:
                raise IndexError("assignment through a negative-step device index is not supported")
            target = self[key]
            if not isinstance(target, DeviceArray) or target.shape != value.shape:
                raise ValueError(f"cannot assign a device array of shape {value.shape} "
                                 f"to a device view of shape {getattr(target, 'shape', ())}")
            copy_into(value, target)
            return
        else:
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
        if not self.is_c_contiguous():
            _kernel_for_views(self, "fill")
        flat = self.arr.reshape(self.size)
        _fill_kernel[launch(flat.shape[0])](flat, self.dtype.type(value))

    def __iadd__(self, other):
        if not self.is_c_contiguous():
            _kernel_for_views(self, "+=")
        other = as_device(other, self.dtype)
        if other.shape != self.shape:
            raise ValueError(f"cannot add shape {other.shape} into {self.shape} in place")
        n = self.size
        _add_kernel[launch(n)](self.arr.reshape(n), other.arr.reshape(n))
        return self

    def __add__(self, other):
        if not is_device(other):
            return NotImplemented
        out = self._copy()
        out += other
        return out

    def __mul__(self, scalar):
        """A scaled copy (a loss weight on a gradient); scalars only."""
        if not isinstance(scalar, (int, float, np.integer, np.floating)):
            return NotImplemented
        out = self._copy()
        n = out.size
        _scale_kernel[launch(n)](out.arr.reshape(n), self.dtype.type(scalar))
        return out

    __rmul__ = __mul__

    def copy(self):
        if not self.is_c_contiguous():
            return self._copy()
        out = cuda.device_array(self.shape, self.dtype)
        out.copy_to_device(self.arr)
        return DeviceArray(out)

    def copy_to_host(self):
        return self.contiguous().arr.copy_to_host()

    def __array__(self, dtype=None, copy=None):
        host = self.copy_to_host()
        return host if dtype is None else host.astype(dtype, copy=False)

    def __array_function__(self, func, types, args, kwargs):
        if func is np.concatenate:
            return _concatenate(*args, **kwargs)
        if func is np.zeros_like and len(args) == 1 and set(kwargs) <= {"dtype"}:
            return zeros(self.shape, kwargs.get("dtype") or self.dtype)
        # Anything else runs on host copies (what NumPy did through __array__).
        return func(*_to_host_tree(args), **_to_host_tree(kwargs))


def _kernel_for_views(a, what):
    raise ValueError(f"{what} on a non-contiguous device view (shape {a.shape}) is not supported")


def _to_host_tree(value):
    if isinstance(value, DeviceArray):
        return value.copy_to_host()
    if isinstance(value, (list, tuple)):
        return type(value)(_to_host_tree(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_host_tree(v) for k, v in value.items()}
    return value


def _split_negative_steps(key, shape):
    """(key with every negative-step slice made positive, flips per result axis);
    handles ints, slices and one Ellipsis (what the layers use)."""
    parts = key if isinstance(key, tuple) else (key,)
    if not any(isinstance(k, slice) and k.step is not None and k.step < 0 for k in parts):
        return key, ()
    if any(k is None or not isinstance(k, (slice, int, np.integer, type(Ellipsis))) for k in parts):
        raise IndexError(f"unsupported device index with a negative step: {key!r}")
    if Ellipsis in parts:
        e = parts.index(Ellipsis)
        fill = len(shape) - (len(parts) - 1)
        parts = parts[:e] + (slice(None),) * fill + parts[e + 1:]
    new, flips = [], []
    for axis, k in enumerate(parts):
        if isinstance(k, slice) and k.step is not None and k.step < 0:
            idx = range(*k.indices(shape[axis]))
            if len(idx) == 0:
                new.append(slice(0, 0))
            else:
                # the same elements in increasing order, then flipped by the copy
                new.append(slice(idx[-1], idx[0] + 1, -k.step))
            flips.append(True)
        else:
            new.append(k)
            if isinstance(k, slice):
                flips.append(False)
    flips += [False] * (len(shape) - len(parts))
    return tuple(new), tuple(flips)


def _concatenate(arrays, axis=0, out=None, dtype=None, casting="same_kind"):
    if out is not None:
        raise TypeError("np.concatenate on device arrays takes no out=")
    arrays = [as_device(a) for a in arrays]
    dt = np.dtype(dtype) if dtype is not None else np.result_type(*(a.dtype for a in arrays))
    arrays = [as_device(a, dt) for a in arrays]
    ndim = arrays[0].ndim
    axis = axis + ndim if axis < 0 else axis
    shape = list(arrays[0].shape)
    shape[axis] = sum(a.shape[axis] for a in arrays)
    result = empty(tuple(shape), dt)
    at = 0
    for a in arrays:
        key = (slice(None),) * axis + (slice(at, at + a.shape[axis]),)
        copy_into(a, DeviceArray(result.arr[key]))
        at += a.shape[axis]
    return result


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


@cuda.jit
def _scale_kernel(x, value):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, x.shape[0], stride):
        x[i] *= value


@cuda.jit
def _copy1(src, dst, f0):
    n0 = dst.shape[0]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, n0, stride):
        dst[i] = src[n0 - 1 - i if f0 else i]


@cuda.jit
def _copy2(src, dst, f0, f1):
    n0, n1 = dst.shape
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, n0 * n1, stride):
        i = e // n1
        j = e - i * n1
        dst[i, j] = src[n0 - 1 - i if f0 else i, n1 - 1 - j if f1 else j]


@cuda.jit
def _copy3(src, dst, f0, f1, f2):
    n0, n1, n2 = dst.shape
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, n0 * n1 * n2, stride):
        k = e % n2
        r = e // n2
        j = r % n1
        i = r // n1
        dst[i, j, k] = src[n0 - 1 - i if f0 else i, n1 - 1 - j if f1 else j,
                           n2 - 1 - k if f2 else k]


@cuda.jit
def _copy4(src, dst, f0, f1, f2, f3):
    n0, n1, n2, n3 = dst.shape
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, n0 * n1 * n2 * n3, stride):
        l = e % n3
        r = e // n3
        k = r % n2
        r = r // n2
        j = r % n1
        i = r // n1
        dst[i, j, k, l] = src[n0 - 1 - i if f0 else i, n1 - 1 - j if f1 else j,
                              n2 - 1 - k if f2 else k, n3 - 1 - l if f3 else l]


_COPIES = {1: _copy1, 2: _copy2, 3: _copy3, 4: _copy4}


def copy_into(src, dst, flips=None):
    """dst[...] = src (reversed along the axes where flips is true), both device
    arrays of one shape, either of them possibly a strided view: one kernel."""
    if src.shape != dst.shape:
        raise ValueError(f"cannot copy shape {src.shape} into {dst.shape}")
    n = src.size
    if n == 0:
        return
    flips = tuple(bool(f) for f in flips) if flips else (False,) * src.ndim
    if src.ndim not in _COPIES:
        # rare (0-D, or 5-D and more: no fastnn layer has those): through the host
        host = src.copy_to_host()
        host = host[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]
        dst.arr[...] = np.ascontiguousarray(host)
        return
    _COPIES[src.ndim][launch(n)](src.arr, dst.arr, *flips)


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
        d = x.contiguous()
    elif _numba_array(x) or _foreign_device(x):
        arr = x if _numba_array(x) else cuda.as_cuda_array(x)
        if not arr.is_c_contiguous():
            raise ValueError("device arrays given to fastnn's cuda kernels must be C-contiguous")
        d = DeviceArray(arr)
    else:
        # (reshaped back: ascontiguousarray makes a 0-d array, a BatchNorm counter, 1-D)
        return DeviceArray(cuda.to_device(np.ascontiguousarray(x, dtype=dtype).reshape(np.shape(x))))
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
