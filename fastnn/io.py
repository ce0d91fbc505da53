"""Saving and loading models: safetensors (weights keyed like a state_dict, the
architecture as JSON in its metadata) or npz (the same JSON as a string array).
Never pickle: npz files are read with allow_pickle=False."""
import json
import os

import numpy as np

FORMAT = "fastnn-sequential-v1"
_NPZ_META = "__fastnn_config__"


class ModelFileError(ValueError):
    """A model file that is missing, unreadable or not a fastnn model."""


class ModelFileNotFoundError(ModelFileError, FileNotFoundError):
    """The model file does not exist (both a ValueError and a FileNotFoundError)."""


def _format_of(path):
    ext = os.path.splitext(str(path))[1].lower()
    if ext in (".safetensors", ""):
        return "safetensors"
    if ext == ".npz":
        return "npz"
    raise ValueError(f"unknown model file extension {ext!r}: use .safetensors or .npz")


def save(model, path):
    path = os.fspath(path)
    config = json.dumps({"format": FORMAT, **model.config()})
    weights = model.state_dict()
    if _format_of(path) == "safetensors":
        from safetensors.numpy import save_file
        save_file(weights, path, metadata={"fastnn": config})
    else:
        np.savez(path, **weights, **{_NPZ_META: np.array(config)})


def _read(path):
    if not os.path.exists(path):
        raise ModelFileNotFoundError(f"model file not found: {path}")
    try:
        if _format_of(path) == "safetensors":
            from safetensors import safe_open
            with safe_open(path, framework="numpy") as f:
                meta = (f.metadata() or {}).get("fastnn")
                weights = {k: f.get_tensor(k) for k in f.keys()}
        else:
            with np.load(path, allow_pickle=False) as f:
                weights = {k: f[k] for k in f.files if k != _NPZ_META}
                meta = str(f[_NPZ_META]) if _NPZ_META in f.files else None
    except ModelFileError:
        raise
    except Exception as exc:  # any parser failure means the file is corrupt
        raise ModelFileError(f"cannot read model file {path}: {exc}") from None
    if meta is None:
        raise ModelFileError(f"{path} holds no fastnn architecture metadata")
    try:
        config = json.loads(meta)
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: corrupt architecture metadata: {exc}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a {FORMAT} file")
    return config, weights


def load(path, backend=None):
    """Rebuild the saved Sequential (on its saved backend unless one is given)."""
    from .backend import BackendUnavailable, get_backend
    from .layers import layer_class
    from .model import Sequential

    path = os.fspath(path)
    config, weights = _read(path)
    try:
        layers = [layer_class(spec["type"])(**spec["config"]) for spec in config["layers"]]
    except (KeyError, TypeError) as exc:
        raise ModelFileError(f"{path}: corrupt layer description: {exc}") from None
    if backend is None:
        try:
            backend = get_backend(config.get("backend")).name
        except (BackendUnavailable, ValueError):
            backend = None  # saved on a backend this machine lacks: use the default
    model = Sequential(*layers, backend=backend, dtype=config["dtype"], seed=config.get("seed", 0))
    try:
        model.load_state_dict(weights)
    except ValueError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    return model
