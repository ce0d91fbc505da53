"""The model file format, and nothing else: safetensors (tensors keyed like a
state_dict, the architecture as JSON in its metadata) or npz (the same JSON as a
string array). Never pickle: npz files are read with allow_pickle=False.

Files are written atomically (``atomic_write``): to a temporary file beside the
target, named ``.fastnn-<writer pid>-<random>.tmp``, fsynced, renamed over the
target, and the folder fsynced so the rename survives a power cut (POSIX). A save
killed part-way (even by SIGKILL) leaves the old file intact; its temporary is
removed by the next save into that folder, which deletes the temporaries of
writers that are no longer alive (never a live process's).
Reading is two steps, so that a loader can check a file's tensors against the
architecture before it allocates anything large: ``read_header`` (the JSON and
each tensor's shape and dtype, no tensor data) and then ``read_tensors``.
"""
import json
import os
import re
import secrets
import zipfile

import numpy as np

FORMAT = "fastnn-model-v2"
_OLD_FORMATS = ("fastnn-sequential-v1",)
_NPZ_META = "__fastnn_config__"


class ModelFileError(ValueError):
    """A model file that is missing, unreadable, malformed or not a fastnn model."""


class ModelFileNotFoundError(ModelFileError, FileNotFoundError):
    """The model file does not exist (both a ValueError and a FileNotFoundError)."""


def format_of(path):
    ext = os.path.splitext(str(path))[1].lower()
    if ext in (".safetensors", ""):
        return "safetensors"
    if ext == ".npz":
        return "npz"
    raise ValueError(f"unknown model file extension {ext!r}: use .safetensors or .npz")


def save(path, config, tensors, format=FORMAT):
    """Write tensors (name -> array) and config (JSON-able dict) to path, atomically;
    ``format`` is the tag readers check (a model file's unless told)."""
    path = os.fspath(path)
    kind = format_of(path)
    meta = json.dumps({"format": format, **config})
    # (reshaped back: ascontiguousarray makes a 0-d buffer, BatchNorm's num_batches_tracked, 1-D)
    tensors = {k: np.ascontiguousarray(v).reshape(np.shape(v)) for k, v in tensors.items()}

    def write(f):
        if kind == "safetensors":
            from safetensors.numpy import save
            f.write(save(tensors, metadata={"fastnn": meta}))
        else:
            # A file object: np.savez would append ".npz" to a name like "m.NPZ".
            np.savez(f, **tensors, **{_NPZ_META: np.array(meta)})
    atomic_write(path, write)


_TEMP = re.compile(r"^\.fastnn-(\d+)-[0-9a-f]+\.tmp$")


def _temp_name(folder):
    return os.path.join(folder, f".fastnn-{os.getpid()}-{secrets.token_hex(6)}.tmp")


def _alive(pid):
    if pid <= 0:          # os.kill(0, ...) would signal our own process group
        return True
    if pid == os.getpid():
        return True       # this process: another thread may be writing it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True       # exists (another user's), or we cannot tell: keep it
    return True


def remove_stale_temporaries(folder):
    """Delete the ``.fastnn-<pid>-*.tmp`` files in folder whose writer is dead; returns their names."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _TEMP.match(name)
        if m is None or _alive(int(m.group(1))):
            continue
        try:
            os.unlink(os.path.join(folder, name))
            removed.append(name)
        except FileNotFoundError:
            pass          # another cleaner got it first
        except OSError:
            pass
    return removed


def _fsync_folder(folder):
    """Make a rename in folder durable (POSIX; a no-op where folders cannot be opened)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass              # some file systems do not fsync folders
    finally:
        os.close(fd)


def atomic_write(path, write):
    """Call write(binary file) on a temporary beside path, fsync it, rename it over path
    and fsync the folder. Leftover temporaries of dead writers in that folder go first."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    remove_stale_temporaries(folder)
    tmp = _temp_name(folder)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_folder(folder)


MODEL_FORMATS = (FORMAT,) + _OLD_FORMATS
CHECKPOINT_FORMAT = "fastnn-checkpoint-v1"


def _parse_meta(path, meta, formats):
    if meta is None:
        raise ModelFileError(f"{path} holds no fastnn architecture metadata")
    try:
        config = json.loads(meta)
    except (json.JSONDecodeError, TypeError, RecursionError) as exc:
        raise ModelFileError(f"{path}: corrupt architecture metadata: {exc}") from None
    if not isinstance(config, dict) or config.get("format") not in formats:
        found = config.get("format") if isinstance(config, dict) else None
        if found == CHECKPOINT_FORMAT:
            raise ModelFileError(f"{path} is a fastnn training checkpoint, not a model file: "
                                 "load it with fastnn.checkpoint.load_trainer")
        if found in MODEL_FORMATS:
            raise ModelFileError(f"{path} is a fastnn model file, not a training checkpoint: "
                                 "load it with fastnn.load")
        raise ModelFileError(f"{path} is not a fastnn {'checkpoint' if CHECKPOINT_FORMAT in formats else 'model'} file")
    return config


def read_header(path, formats=MODEL_FORMATS):
    """(config dict, {name: (shape tuple, dtype)}) without reading tensor data; the
    file's format tag must be one of ``formats`` (model files unless told)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelFileNotFoundError(f"model file not found: {path}")
    try:
        if format_of(path) == "safetensors":
            from safetensors import safe_open
            with safe_open(path, framework="numpy") as f:
                meta = (f.metadata() or {}).get("fastnn")
                shapes = {}
                for k in f.keys():
                    s = f.get_slice(k)
                    shapes[k] = (tuple(s.get_shape()), _safetensors_dtype(s.get_dtype()))
        else:
            shapes, meta = _npz_header(path)
    except ModelFileError:
        raise
    except Exception as exc:  # any parser failure means the file is corrupt
        raise ModelFileError(f"cannot read model file {path}: {type(exc).__name__}: {exc}") from None
    return _parse_meta(path, meta, formats), shapes


def read_tensors(path):
    """name -> numpy array, every tensor of the file (after read_header accepted it)."""
    path = os.fspath(path)
    try:
        if format_of(path) == "safetensors":
            from safetensors.numpy import load_file
            return load_file(path)
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files if k != _NPZ_META}
    except Exception as exc:
        raise ModelFileError(f"cannot read model file {path}: {type(exc).__name__}: {exc}") from None


def _safetensors_dtype(name):
    table = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
             "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
    if name not in table:
        raise ModelFileError(f"unsupported tensor dtype {name}")
    return np.dtype(table[name])


def _npz_header(path):
    """Shapes and dtypes from each member's .npy header, checked against the member's size."""
    shapes, meta = {}, None
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if not info.filename.endswith(".npy"):
                raise ModelFileError(f"{path}: unexpected member {info.filename!r}")
            name = info.filename[:-4]
            with z.open(info) as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read(f)
                header_end = f.tell()
            if dtype.hasobject:
                raise ModelFileError(f"{path}: {name} holds Python objects (pickle); refusing it")
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if info.file_size < header_end + nbytes:
                raise ModelFileError(f"{path}: {name} declares {shape} but its data is truncated")
            if name == _NPZ_META:
                with z.open(info) as f:
                    meta = str(np.lib.format.read_array(f, allow_pickle=False))
            else:
                shapes[name] = (tuple(shape), dtype)
    return shapes, meta
