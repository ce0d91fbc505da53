"""Where fit's and evaluate's batches come from.

- Arrays in memory are checked (shape, dtype, NaN, label range) once, then indexed.
- np.memmap arrays are read, converted and checked batch by batch: never loaded whole.
- A DataLoader, or any re-iterable of (xb, yb) or (xb, yb, wb) batches, is checked batch by
  batch. A one-shot iterator (a generator) works for one epoch, or for many with
  steps_per_epoch (each epoch takes that many batches from it).

Each source yields checked (xs, ys, w) triples: lists of arrays ready for the model and the
losses, and the batch's sample weights (float64) or None. The row order of epoch e is
data.epoch_order(seed, e, n), so a resumed run draws the batches an uninterrupted one would.
"""
import numpy as np

from .data import DataLoader, _PageDropper, _rows, epoch_order, is_memmap, shard_part


def check_sample_weight(w, n, name="sample_weight", allow_all_zero=False):
    from .losses import check_sample_weight as check
    return np.ascontiguousarray(check(w, n, name, allow_all_zero=allow_all_zero))


def is_array_data(X):
    """Arrays (or a list/tuple of arrays, one per input), as opposed to a loader of batches."""
    if isinstance(X, DataLoader):
        return False
    if isinstance(X, (list, tuple)):   # a list of (xb, yb) batches, or arrays / nested lists
        return not (len(X) > 0 and all(isinstance(b, (list, tuple)) and len(b) in (2, 3)
                                       and hasattr(b[0], "shape") for b in X))
    return isinstance(X, np.ndarray) or _array_like(X)


def _array_like(a):
    return hasattr(a, "__array__") and hasattr(a, "shape") and not hasattr(a, "__next__")


def _lazy(X):
    xs = X if isinstance(X, (list, tuple)) else [X]
    return any(is_memmap(a) for a in xs)


def _take(data, idx):
    if isinstance(data, (list, tuple)):
        return [_rows(a, idx) for a in data]
    return _rows(data, idx)


def _length(data):
    return len(data[0]) if isinstance(data, (list, tuple)) else len(data)


class ArrayBatches:
    """Batches of arrays; ``check(X, y, what)`` -> (xs, ys) is the trainer's validation."""
    replayable = True

    def __init__(self, check, X, y, w, batch_size, shuffle, seed, what="X", shard=None, take=None):
        self.check, self.batch_size, self.shuffle, self.seed = check, batch_size, shuffle, seed
        # take(x, idx): x[idx] for a checked input array and an index array (the trainer's
        # threaded row gather), used for the inputs of shuffled in-memory batches
        self.take = take
        self.what = what
        # Distributed: (rank, size); batches are global (batch_size rows per rank) and this
        # rank reads its part of each (shard_part); a rank whose part is empty gets None.
        self.shard = shard
        self.global_batch = batch_size * (shard[1] if shard else 1)
        self.lazy = _lazy(X) or _lazy(y if isinstance(y, (list, tuple)) else [y])
        self.n = _length(X)
        if self.lazy:   # check one row now (shapes, dtypes), every batch when it is read
            self.first_xs = check(_take(X, slice(0, 1)), _take(y, slice(0, 1)), what)[0]
            self.X, self.y = X, y
            self.dropper = _PageDropper([a for a in (X if isinstance(X, (list, tuple)) else [X])
                                         + (y if isinstance(y, (list, tuple)) else [y]) if is_memmap(a)])
        else:
            self.xs, self.ys = check(X, y, what)
        self.w = None if w is None else check_sample_weight(w, self.n)

    def __len__(self):
        return -(-self.n // self.global_batch)

    def index(self, epoch, k):
        """The rows of batch k of epoch ``epoch`` (a slice, or an index array), this rank's
        part of them when distributed."""
        size = self.global_batch
        lo = k * size
        if not self.shuffle:
            idx = slice(lo, min(lo + size, self.n))
        else:
            idx = self._order(epoch)[lo:lo + size]
            if self.lazy:
                idx = np.sort(idx)   # a memmap is read front to back
        return idx if self.shard is None else shard_part(idx, *self.shard)

    def _order(self, epoch):
        if getattr(self, "_order_of", None) != epoch:
            self._order_of, self._perm = epoch, epoch_order(self.seed, epoch, self.n)
        return self._perm

    def batch(self, epoch, k):
        idx = self.index(epoch, k)
        if self.shard is not None and _empty(idx):
            return None
        w = None if self.w is None else self.w[idx]
        if not self.lazy:
            take = self.take
            if take is None or isinstance(idx, slice):
                return [x[idx] for x in self.xs], [t[idx] for t in self.ys], w
            return [take(x, idx) for x in self.xs], [t[idx] for t in self.ys], w
        xb, yb = _take(self.X, idx), _take(self.y, idx)
        xs, ys = self.check(xb, yb, f"{self.what} rows {_rows_text(idx)}")
        self.dropper.account(sum(a.nbytes for a in (xb if isinstance(xb, list) else [xb])),
                             scattered=not isinstance(idx, slice))
        return xs, ys, w

    def epoch(self, epoch, start=0):
        for k in range(start, len(self)):
            yield self.batch(epoch, k)


def _empty(idx):
    return idx.stop <= idx.start if isinstance(idx, slice) else len(idx) == 0


def _rows_text(idx):
    if isinstance(idx, slice):
        return f"{idx.start}:{idx.stop}"
    return f"{idx.min()}..{idx.max()}"


class IterBatches:
    """Batches from a DataLoader or any iterable of (xb, yb[, wb]) tuples, checked one by one."""
    replayable = False

    def __init__(self, check, data, steps_per_epoch=None, what="X", allow_empty=False):
        if isinstance(data, (str, bytes, dict)) or not hasattr(data, "__iter__"):
            raise TypeError(f"fit takes arrays, a fastnn.data.DataLoader or an iterable of (x, y) "
                            f"batches; got {type(data).__name__}")
        self.check, self.data, self.what = check, data, what
        self.steps = steps_per_epoch
        self.one_shot = iter(data) is data
        self._it = None
        self.allow_empty = allow_empty   # distributed: a rank's empty part of a batch is None

    def __len__(self):
        if self.steps is not None:
            return self.steps
        try:
            return len(self.data)
        except TypeError:
            return None

    def _items(self, epoch):
        if hasattr(self.data, "set_epoch"):
            self.data.set_epoch(epoch)
        if self.steps is None:
            yield from self.data
            return
        taken = 0
        while taken < self.steps:
            if self._it is None:
                self._it = iter(self.data)
            try:
                item = next(self._it)
            except StopIteration:
                self._it = None
                if self.one_shot or taken == 0:
                    break
                continue
            taken += 1
            yield item

    def epoch(self, epoch, start=0):
        count = 0
        for k, item in enumerate(self._items(epoch)):
            count += 1
            if k < start:
                continue
            yield self._unpack(item, k)
        if count == 0:
            raise ValueError(f"the data gave no batches in epoch {epoch}"
                             + (": a generator can be consumed once; pass a DataLoader, a list of "
                                "batches or steps_per_epoch with an endless generator" if self.one_shot else ""))

    def _unpack(self, item, k):
        if not isinstance(item, (list, tuple)) or len(item) not in (2, 3):
            raise TypeError(f"batch {k} must be a tuple (x, y) or (x, y, sample_weight), "
                            f"got {type(item).__name__}")
        if self.allow_empty and _length(item[0]) == 0:
            return None
        xs, ys = self.check(item[0], item[1], f"{self.what} batch {k}")
        w = None
        if len(item) == 3 and item[2] is not None:
            w = check_sample_weight(item[2], len(xs[0]), f"sample_weight of batch {k}", allow_all_zero=True)
        return xs, ys, w


def source(check, X, y, w, batch_size, shuffle, seed, steps_per_epoch=None, what="X", shard=None, take=None):
    """The batch source for fit/evaluate's data; shard=(rank, size) splits every global batch
    of arrays (and of a fastnn DataLoader) between the ranks."""
    if is_array_data(X):
        if y is None:
            raise ValueError(f"{what} is an array: give its targets y too")
        if steps_per_epoch is not None:
            raise ValueError("steps_per_epoch goes with a generator or a loader, not with arrays")
        return ArrayBatches(check, X, y, w, batch_size, shuffle, seed, what, shard=shard, take=take)
    if y is not None:
        raise ValueError(f"{what} is a loader of (x, y) batches: y must be None (the batches carry it)")
    if w is not None:
        raise ValueError("sample_weight goes with arrays; a loader's batches carry their own as (x, y, w)")
    if shard is not None and isinstance(X, DataLoader):
        X = X.sharded(*shard)
    return IterBatches(check, X, steps_per_epoch, what, allow_empty=shard is not None)
