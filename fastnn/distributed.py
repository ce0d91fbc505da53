"""Data-parallel training on MPI: the ranks of ``mpiexec -n N python train.py``.

``pip install "fastnn[mpi]"`` brings mpi4py and the MPICH wheel. Without mpi4py, or in a
process not started by an MPI launcher, every function acts as one rank (rank 0 of 1), so a
script written for N ranks runs unchanged in one process.

``Trainer(..., distributed=True)`` uses this module: rank 0's weights are broadcast, each rank
takes its slice of every global batch, and the gradient buffer is summed over the ranks in
buckets that start during backward (GradientSync), so communication overlaps computation.
"""
import os
import sys
import time
import traceback

import numpy as np

# Variables the usual launchers set in each rank's environment (MPICH/Hydra, Open MPI, PMIx, Slurm).
_LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")

_world = None


def launched():
    """Whether this process was started by an MPI launcher (mpiexec, srun with PMI)."""
    return any(v in os.environ for v in _LAUNCHER_VARS)


def _comm(required=False):
    """COMM_WORLD, or None for one plain process. mpi4py is imported only under a launcher
    (or when required), so that importing fastnn never initialises MPI by surprise."""
    global _world
    if _world is None and (required or launched()):
        try:
            from mpi4py import MPI
        except ImportError:
            if required or launched():
                raise ImportError("distributed training needs mpi4py and an MPI: "
                                  "pip install 'fastnn[mpi]'") from None
            return None
        _world = MPI.COMM_WORLD
    return _world


def rank():
    """This process's rank, 0 .. size() - 1 (0 outside MPI)."""
    comm = _comm()
    return 0 if comm is None else comm.Get_rank()


def size():
    """The number of ranks (1 outside MPI)."""
    comm = _comm()
    return 1 if comm is None else comm.Get_size()


def is_main():
    """True on rank 0: the rank that prints, logs and writes checkpoints."""
    return rank() == 0


def local_rank():
    """This rank's index among the ranks on its machine (picks its GPU)."""
    comm = _comm()
    if comm is None:
        return 0
    from mpi4py import MPI
    node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    try:
        return node.Get_rank()
    finally:
        node.Free()


def select_gpu():
    """Under an MPI launcher, make this rank's CUDA device the (local rank mod #GPUs)-th, so
    the ranks of a machine use its GPUs one each; returns that index (None if not done)."""
    if not launched():
        return None
    from numba import cuda
    if cuda.jit.__module__.startswith("numba.cuda.simulator"):
        return None
    count = len(cuda.gpus)
    if not count:
        return None
    index = local_rank() % count
    cuda.select_device(index)
    return index


def barrier():
    comm = _comm()
    if comm is not None:
        comm.Barrier()


def allreduce(array, op="sum"):
    """The elementwise sum (op="sum") or mean (op="mean") of array over the ranks, as a new
    float64 (or the array's float dtype) numpy array."""
    if op not in ("sum", "mean"):
        raise ValueError(f"allreduce op must be 'sum' or 'mean', got {op!r}")
    a = np.array(array, copy=True)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"allreduce needs numbers, got dtype {a.dtype}")
    if a.dtype.kind != "f":
        a = a.astype(np.float64)
    a = np.ascontiguousarray(a)
    comm = _comm()
    if comm is not None and comm.Get_size() > 1:
        from mpi4py import MPI
        comm.Allreduce(MPI.IN_PLACE, a, op=MPI.SUM)
    if op == "mean":
        a /= size()
    return a


def allgather(obj):
    """[obj of rank 0, obj of rank 1, ...] on every rank (pickled)."""
    comm = _comm()
    return [obj] if comm is None else comm.allgather(obj)


def broadcast(obj, root=0):
    """root's obj on every rank (pickled; arrays too)."""
    comm = _comm()
    return obj if comm is None else comm.bcast(obj, root=root)


def abort_on_error(exc, code=1):
    """Print exc with this rank's number and end every rank (MPI_Abort): a rank that stops
    alone would leave the others waiting in a collective forever."""
    comm = _comm()
    if comm is None or comm.Get_size() == 1:
        return
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    sys.stderr.write(f"[fastnn rank {comm.Get_rank()}/{comm.Get_size()}] {text}"
                     f"[fastnn rank {comm.Get_rank()}] aborting every rank (MPI_Abort)\n")
    sys.stderr.flush()
    comm.Abort(code)


class Comm:
    """Blocking collectives over numpy arrays for layers (BatchNorm's sync) and the trainer."""

    def __init__(self, comm):
        self.comm = comm
        self.size = comm.Get_size()
        self.rank = comm.Get_rank()

    def allreduce_sum(self, a):
        from mpi4py import MPI
        out = np.ascontiguousarray(a).copy()
        self.comm.Allreduce(MPI.IN_PLACE, out, op=MPI.SUM)
        return out

    def allgather_array(self, a):
        a = np.ascontiguousarray(a)
        out = np.empty((self.size,) + a.shape, a.dtype)
        self.comm.Allgather(a, out)
        return list(out)

    def same_on_all(self, value, what):
        """Raise ValueError on every rank if value (picklable) differs between ranks."""
        values = self.comm.allgather(value)
        bad = [r for r, v in enumerate(values) if v != values[0]]
        if bad:
            raise RanksDisagree(f"{what} differs between ranks: rank 0 has {values[0]!r}, rank {bad[0]} "
                             f"has {values[bad[0]]!r}")


class GradientSync:
    """Sums the flat gradient buffer over the ranks in buckets, each started (non-blocking,
    MPI_Iallreduce in place) as soon as backward has finished every layer whose gradients
    lie in it: the last layers' bucket first, while backward goes on with the earlier ones.

    ``buckets`` are (start, stop) ranges of the flat buffer; ``ready_at[j]`` is the number of
    tape records left when bucket j is complete (backward pops records from the end)."""

    def __init__(self, comm, model, bucket_bytes):
        from mpi4py import MPI
        self.MPI, self.comm = MPI, comm
        self.model = model
        params = model._params
        itemsize = np.dtype(model.dtype).itemsize
        per_bucket = max(1, int(bucket_bytes) // itemsize)
        # Buckets from the end of the buffer (the last layers' parameters) backwards.
        self.buckets, self.layers = [], []
        stop, layers, start = None, set(), None
        for p in reversed(params):
            if stop is None:
                stop = p.offset + p.data.size
            start = p.offset
            layers.add(id(p.layer))
            if stop - start >= per_bucket:
                self.buckets.append((start, stop))
                self.layers.append(layers)
                stop, layers = None, set()
        if stop is not None:
            self.buckets.append((start, stop))
            self.layers.append(layers)
        self._ready_for = None
        self.requests = []
        self.wait_s = 0.0
        self.steps = 0
        self.bytes = 0

    def _ready_at(self, records):
        """For each bucket, the number of records left once all its layers' calls are done."""
        key = tuple(id(r[0]) for r in records)
        if self._ready_for != key:
            first = {}
            for i, r in enumerate(records):
                first.setdefault(id(r[0]), i)
            self.ready_at = [min(first.get(lid, 0) for lid in layers) for layers in self.layers]
            self._ready_for = key
        return self.ready_at

    def backprop(self, tape, grads, host_grad):
        """The model's backward with the buckets' allreduces started along the way;
        host_grad is the flat gradient on the host (the device buffer on CPU backends)."""
        ready = self._ready_at(tape.records)
        self.requests = []
        self._next = 0
        self._grad = host_grad
        if host_grad is self.model._flat_grad:
            self.model._backprop(tape, grads, after_layer=lambda left: self._start(ready, left))
        else:   # a device buffer: stage through the host after backward (no CUDA-aware MPI assumed)
            self.model._backprop(tape, grads)
            host_grad[...] = self.model.backend.to_host(self.model._flat_grad)
        self._start(ready, -1)

    def _start(self, ready, left):
        requests = self.requests
        while self._next < len(self.buckets) and (left < 0 or left <= ready[self._next]):
            a, b = self.buckets[self._next]
            requests.append(self.comm.Iallreduce(self.MPI.IN_PLACE, self._grad[a:b], op=self.MPI.SUM))
            self.bytes += (b - a) * self._grad.itemsize
            self._next += 1
        if requests and left >= 0:
            self.MPI.Request.Testall(requests)   # lets MPI move the started buckets on

    def start_empty(self, host_grad):
        """A rank without rows in this step still joins every bucket's sum, with zeros."""
        host_grad[...] = 0
        self.requests, self._next, self._grad = [], 0, host_grad
        self._start(None, -1)

    def wait(self):
        t = time.perf_counter()
        self.MPI.Request.Waitall(self.requests)
        self.requests = []
        self.wait_s += time.perf_counter() - t
        self.steps += 1


class RanksDisagree(ValueError):
    """Raised on every rank at once (so no rank is left waiting): no MPI abort needed."""
    all_ranks = True


class DataParallel:
    """A distributed Trainer's side of MPI: the model check and broadcast, each step's
    agreement, the gradient buckets and the epoch-end reductions."""

    def __init__(self, model, sync_batchnorm=False, bucket_mb=1.0):
        world = _comm(required=True)
        self.comm = Comm(world)
        self.rank, self.size = self.comm.rank, self.comm.size
        self.shard = (self.rank, self.size)
        self.model = model
        self.comm.same_on_all(_architecture(model), "the model (layers, parameter and buffer shapes, dtype)")
        self.sync_batchnorm = bool(sync_batchnorm)
        from .layers.dropout import Dropout
        from .layers.normalization import set_batchnorm_sync
        # BatchNorm's blocking collectives run during backward beside the gradient buckets'
        # non-blocking ones: on a communicator of their own, so neither can match the other's.
        set_batchnorm_sync(model.layers, Comm(world.Dup()) if self.sync_batchnorm else None)
        self.dropouts = [layer for _, layer in model._named_layers() if isinstance(layer, Dropout)]
        self._some_empty = False
        if not isinstance(bucket_mb, (int, float)) or isinstance(bucket_mb, bool) or not bucket_mb > 0:
            raise ValueError(f"bucket_mb must be a positive number of megabytes, got {bucket_mb!r}")
        self.grads = GradientSync(world, model, bucket_mb * 2 ** 20)
        on_host = model.backend.name != "cuda"
        self.host_grad = model._flat_grad if on_host else np.zeros(model._flat_grad.shape, model.dtype)
        from mpi4py import MPI
        self.MPI = MPI
        self._loss = np.zeros(1)
        self._loss_request = None
        self.agree_s = 0.0

    # ------------------------------------------------------------ fit start
    def begin_fit(self, n_batches):
        """Every rank starts from rank 0's weights and buffers; all must see as many batches."""
        self.comm.same_on_all(n_batches, "the number of batches per epoch (give every rank the same data)")
        self._from_rank0(self.model._flat_data)
        self.sync_buffers()
        self.grads.wait_s = self.agree_s = 0.0
        self.grads.steps = self.grads.bytes = 0

    def sync_buffers(self):
        """Rank 0's buffers (BatchNorm's running statistics) on every rank, as torch's DDP
        broadcasts them: each rank's own batches moved its copy."""
        if self.model._flat_buffers.size:
            self._from_rank0(self.model._flat_buffers)

    def _from_rank0(self, flat):
        """Rank 0's values of a flat model buffer (through the host on a device backend)."""
        host = np.ascontiguousarray(self.model.backend.to_host(flat))
        self.comm.comm.Bcast(host, root=0)
        if host is not flat:
            _copy_into(flat, host, self.model.backend)

    # ---------------------------------------------------------------- steps
    def agree(self, weight, rows, in_step=True):
        """The global batch's weight sum, after every rank said what it holds; RanksDisagree on
        every rank if some ranks ran out of batches while others had more, or (sync_batchnorm)
        a rank has no rows. Sets each Dropout's row offset to the rows of the ranks before."""
        t = time.perf_counter()
        mine = np.array([weight, 1.0 if in_step else 0.0, rows], dtype=np.float64)
        every = np.empty((self.size, 3))
        self.comm.comm.Allgather(mine, every)
        self.agree_s += time.perf_counter() - t
        total, ranks = float(every[:, 0].sum()), int(every[:, 1].sum())
        if 0 < ranks < self.size:
            raise RanksDisagree(f"{self.size - ranks} of {self.size} ranks ran out of batches before "
                                "the others: every rank must get the same number of batches per epoch")
        empty = ranks > 0 and (every[:, 2] == 0).any()
        if empty and self.sync_batchnorm:
            raise RanksDisagree("sync_batchnorm: a global batch has fewer rows than there are ranks, so "
                                "some rank has none; choose the data size or batch size so every rank "
                                "gets rows in every batch")
        offset = int(every[:self.rank, 2].sum())
        for layer in self.dropouts:
            layer.row_offset = offset
        self._some_empty = bool(empty)
        return total, ranks > 0

    def start_loss(self, weighted_loss):
        self._loss[0] = weighted_loss
        self._loss_request = self.comm.comm.Iallreduce(self.MPI.IN_PLACE, self._loss, op=self.MPI.SUM)

    def backprop(self, tape, grads):
        self.grads.backprop(tape, grads, self.host_grad)

    def skip_backprop(self):
        self.grads.start_empty(self.host_grad)

    def finish_step(self):
        """Waits for the loss and every bucket: (the global batch's weighted loss sum)."""
        self._loss_request.Wait()
        self.grads.wait()
        if self.host_grad is not self.model._flat_grad:
            _copy_into(self.model._flat_grad, self.host_grad, self.model.backend)
        if self._some_empty and self.dropouts:   # a rank without rows drew no masks: catch up
            calls = self.comm.comm.bcast([d.calls for d in self.dropouts], root=0)
            for layer, n in zip(self.dropouts, calls):
                layer.calls = n
        return float(self._loss[0])

    # ----------------------------------------------------------- epoch end
    def sum(self, values):
        return self.comm.allreduce_sum(np.asarray(values, dtype=np.float64))

    def merge_metrics(self, metrics):
        """Every rank's streamed metric objects folded in rank order (the same on every rank)."""
        from .metrics import merge_all
        gathered = self.comm.comm.allgather(metrics)   # [rank][output][metric]
        return [[merge_all(per_rank) for per_rank in zip(*outputs)] for outputs in zip(*gathered)]

    def end_fit(self):
        for layer in self.dropouts:   # the model used alone again draws whole-batch masks
            layer.row_offset = 0

    def stats(self):
        return {"steps": self.grads.steps, "wait_s": self.grads.wait_s + self.agree_s,
                "bytes": self.grads.bytes}


def _architecture(model):
    """What must match between ranks: layer types, parameter and buffer names and shapes, dtype."""
    layers = [type(layer).__name__ for _, layer in model._named_layers()]
    params = [(p.name, tuple(p.data.shape)) for p in model._params]
    buffers = [(name, tuple(b.shape)) for name, b in model._buffers]
    return (layers, params, buffers, str(np.dtype(model.dtype)))


def _copy_into(device_array, host, backend):
    if hasattr(device_array, "copy_to_device"):
        device_array.copy_to_device(host)
    else:
        device_array[...] = host
