"""Small real datasets that work offline, and batches: DataLoader, epoch_order, memmap reading."""
import os

import numpy as np


def load_digits(test_fraction=0.25, seed=0, dtype="float32"):
    """scikit-learn's 8x8 handwritten digits (1,797 images, shipped with it), scaled
    to [0, 1] and split once by a seeded permutation, stratified by class.

    Returns (X_train, y_train, X_test, y_test); X rows have 64 features.
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise ImportError("the digits dataset needs scikit-learn: pip install 'fastnn[data]'") from None
    digits = sk_load_digits()
    X = (digits.data / 16.0).astype(dtype)
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        test[members[:int(round(len(members) * test_fraction))]] = True
    return X[~test], y[~test], X[test], y[test]


# ------------------------------------------------------------------ batches
def epoch_order(seed, epoch, n):
    """The row order of epoch ``epoch``: a permutation that depends only on (seed, epoch),
    so a run resumed at epoch e draws the batches an uninterrupted run would."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def is_memmap(x):
    return isinstance(x, np.memmap) or isinstance(getattr(x, "base", None), np.memmap)


class _PageDropper:
    """Keeps a read-only pass over np.memmaps that pread cannot read (non-contiguous views) from
    growing the process's resident memory:
    after every ``every`` bytes read it tells the kernel (madvise DONTNEED) that this process
    no longer needs the mapped pages. The data stays in the page cache; only RSS drops."""

    def __init__(self, arrays, every=64 << 20):
        self.maps = []
        for a in arrays:
            if _file_position(a) is not None:   # read with pread (_rows): never mapped in
                continue
            mm = getattr(a, "_mmap", None)
            if mm is None and isinstance(getattr(a, "base", None), np.memmap):
                mm = getattr(a.base, "_mmap", None)
            if mm is not None and hasattr(mm, "madvise") and hasattr(__import__("mmap"), "MADV_DONTNEED"):
                self.maps.append(mm)
        self.every, self.read = every, 0

    def account(self, nbytes, scattered=False):
        """Count a batch read; scattered rows (a shuffled batch) drop at once: the kernel maps
        up to 64 KiB around each row it faults in, so they touch far more than nbytes."""
        if not self.maps:
            return
        self.read += nbytes
        if scattered or self.read >= self.every:
            import mmap
            for mm in self.maps:
                try:
                    mm.madvise(mmap.MADV_DONTNEED)
                except (OSError, ValueError):
                    pass
            self.read = 0


def _rows(x, idx):
    """Rows idx (a slice or sorted index array) of x as an in-memory array."""
    if is_memmap(x):
        rows = _pread_rows(x, idx)
        if rows is not None:
            return rows
    return np.asarray(x[idx])


def _file_position(x):
    """(file name, byte position of x[0]) of a C-contiguous memmap (or a row slice of one), or None."""
    import mmap
    mm = getattr(x, "_mmap", None)
    name = getattr(x, "filename", None)
    if mm is None or name is None or not x.flags.c_contiguous or getattr(mm, "closed", False):
        return None
    base = np.frombuffer(mm, dtype=np.uint8).ctypes.data
    start = x.offset - x.offset % mmap.ALLOCATIONGRANULARITY   # where np.memmap's mapping begins
    return name, start + (x.ctypes.data - base)


def _pread_rows(x, idx):
    """Rows of a memmap read with pread, one call per run of consecutive rows: a page fault
    would map up to 64 KiB around each scattered row (fault-around) and swell the RSS."""
    found = _file_position(x)
    if found is None:
        return None
    name, pos = found
    n = len(x)
    rows = np.arange(n)[idx]          # (raises IndexError as x[idx] would)
    out = np.empty((len(rows),) + x.shape[1:], dtype=x.dtype)
    if not len(rows):
        return out
    row_bytes = out[0].nbytes if out.ndim > 1 else x.dtype.itemsize
    view = memoryview(out.reshape(-1).view(np.uint8))
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(rows)]])
    fd = os.open(name, os.O_RDONLY)
    try:
        for a, b in zip(starts.tolist(), stops.tolist()):
            want = (b - a) * row_bytes
            got = os.preadv(fd, [view[a * row_bytes:b * row_bytes]], pos + int(rows[a]) * row_bytes)
            if got != want:
                raise OSError(f"short read from {name}: {got} of {want} bytes")
    finally:
        os.close(fd)
    return out


def shard_part(idx, rank, size):
    """Rank's part of the global batch idx (a slice or an index array): the rank-th of size
    nearly equal consecutive parts (np.array_split's), so that a full global batch of
    b * size rows gives rank r its r-th b rows. Empty when the batch has fewer rows than ranks."""
    if isinstance(idx, slice):
        lo, hi = idx.start, idx.stop
    else:
        lo, hi = 0, len(idx)
    m = hi - lo
    base, extra = divmod(m, size)
    start = lo + rank * base + min(rank, extra)
    stop = start + base + (1 if rank < extra else 0)
    return slice(start, stop) if isinstance(idx, slice) else idx[start - lo:stop - lo]


class DataLoader:
    """Batches (xb, yb) of arrays, like torch.utils.data.DataLoader over a TensorDataset.

    X is an array (or a list of arrays, one per model input), y an array (or a list, one per
    output) or None; ``sample_weight`` (N,) makes each batch (xb, yb, wb). With shuffle the order
    of epoch e is ``epoch_order(seed, e, n)``: the Trainer calls ``set_epoch(e)`` before each
    epoch (as torch's DistributedSampler expects); iterating without it counts epochs from 0.
    np.memmap arrays are read batch by batch and never loaded whole. ``prefetch=True`` prepares
    the next batch on a background thread while the current one trains.
    """

    def __init__(self, X, y=None, batch_size=32, shuffle=False, seed=0, drop_last=False,
                 sample_weight=None, prefetch=False):
        from .layers.base import positive_int
        self.xs = list(X) if isinstance(X, (list, tuple)) else [X]
        self.multi_x = isinstance(X, (list, tuple))
        self.ys = None if y is None else (list(y) if isinstance(y, (list, tuple)) else [y])
        self.multi_y = isinstance(y, (list, tuple))
        for i, a in enumerate(self.xs + (self.ys or [])):
            if not hasattr(a, "shape") or not hasattr(a, "__getitem__") or len(a.shape) == 0:
                raise TypeError(f"DataLoader takes arrays; argument {i} is {type(a).__name__}")
        n = {len(a) for a in self.xs + (self.ys or [])}
        if len(n) != 1:
            raise ValueError(f"DataLoader: the arrays have different numbers of rows {sorted(n)}")
        self.n = n.pop()
        if self.n == 0:
            raise ValueError("DataLoader: the arrays are empty")
        self.sample_weight = None
        if sample_weight is not None:
            w = np.asarray(sample_weight, dtype=np.float64)
            if w.shape != (self.n,):
                raise ValueError(f"sample_weight must have shape ({self.n},), got {w.shape}")
            self.sample_weight = w
        self.batch_size = positive_int(batch_size, "batch_size")
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.prefetch = bool(prefetch)
        self._lazy = any(is_memmap(a) for a in self.xs + (self.ys or []))
        self._epoch = None
        self._auto_epoch = 0
        self._shard = None

    def sharded(self, rank, size):
        """A copy that yields rank's part of every global batch of batch_size * size rows
        (what Trainer(distributed=True) iterates; batch_size is per rank)."""
        import copy
        other = copy.copy(self)
        other._shard = (int(rank), int(size))
        return other

    def _global_batch(self):
        return self.batch_size * (self._shard[1] if self._shard else 1)

    def __len__(self):
        full, rest = divmod(self.n, self._global_batch())
        return full if (self.drop_last or not rest) else full + 1

    def set_epoch(self, epoch):
        self._epoch = int(epoch)

    def _index_batches(self, epoch):
        order = epoch_order(self.seed, epoch, self.n) if self.shuffle else None
        size = self._global_batch()
        stop = self.n - self.n % size if self.drop_last else self.n
        for lo in range(0, stop, size):
            if order is None:
                idx = slice(lo, min(lo + size, self.n))
            elif self._lazy:   # sorted rows read a memmap front to back; the set is the batch
                idx = np.sort(order[lo:lo + size])
            else:
                idx = order[lo:lo + size]
            if self._shard is not None:
                idx = shard_part(idx, *self._shard)
            yield idx

    def _make(self, idx, dropper):
        xb = [_rows(x, idx) for x in self.xs]
        yb = None if self.ys is None else [_rows(t, idx) for t in self.ys]
        dropper.account(sum(a.nbytes for a in xb), scattered=not isinstance(idx, slice))
        batch = (xb if self.multi_x else xb[0], None if yb is None else (yb if self.multi_y else yb[0]))
        if self.sample_weight is not None:
            batch = batch + (self.sample_weight[idx],)
        return batch

    def __iter__(self):
        if self._epoch is None:
            epoch, self._auto_epoch = self._auto_epoch, self._auto_epoch + 1
        else:
            epoch = self._epoch
        dropper = _PageDropper([a for a in self.xs + (self.ys or []) if is_memmap(a)])
        batches = (self._make(idx, dropper) for idx in self._index_batches(epoch))
        return _prefetched(batches) if self.prefetch else batches

    def __repr__(self):
        return (f"DataLoader(n={self.n}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"seed={self.seed}, drop_last={self.drop_last})")


def _prefetched(batches, depth=1):
    """Iterate batches with the next one prepared on a background thread."""
    import queue
    import threading
    q = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work():
        try:
            for b in batches:
                if stop.is_set():
                    return
                q.put((True, b))
            q.put((True, done))
        except BaseException as exc:     # re-raised in the consumer's thread
            q.put((False, exc))

    thread = threading.Thread(target=work, name="fastnn-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():         # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.01)
