"""Synchronized BatchNorm (layer.sync set, torch.nn.SyncBatchNorm's semantics) without MPI:
K "ranks" run in K Python threads, each owning a copy of the same model, joined by a fake
communicator; their outputs, dx, summed parameter gradients and running statistics must
equal one model's on the whole batch (float64, 1e-9), on the numpy, cython and numba backends.
"""
import threading

import numpy as np
import pytest

import fastnn as fnn
import fastnn.graph
from fastnn.layers import BatchNorm1D, BatchNorm2D, Conv2D, Dense, GlobalAvgPool2D, ReLU, Residual
from fastnn.layers.normalization import set_batchnorm_sync
from conftest import assert_close

CPU = [b for b in fnn.backends() if b in ("numpy", "cython", "numba")]
TOL = dict(rtol=1e-9, atol=1e-9)


def _close(got, want):
    assert_close(np.asarray(got), np.asarray(want), np.float64, **TOL)


@pytest.fixture(autouse=True)
def _no_backend_lock(monkeypatch):
    """A model holds its backend's lock (numba's) through forward: a rank waiting in a
    collective would keep it from the others. FakeComm's turn lock serialises every
    kernel call instead, so models built here go without it."""
    monkeypatch.setattr(fastnn.graph, "_LOCKS", {})


class FakeComm:
    """The two blocking collectives of the trainer's communicator over threads. One lock
    runs the ranks one at a time (a rank gives it up only inside a collective), so no two
    threads are ever inside a kernel at once; the calls are recorded per rank."""

    def __init__(self, size):
        self.size = size
        self.barrier = threading.Barrier(size, timeout=60)
        self.turn = threading.Lock()
        self.slots = [None] * size
        self.calls = [[] for _ in range(size)]
        self.local = threading.local()

    def _exchange(self, a):
        r = self.local.rank
        self.slots[r] = np.array(a, copy=True)
        self.turn.release()
        try:
            self.barrier.wait()          # every rank has written its slot
            got = list(self.slots)
            self.barrier.wait()          # every rank has read them all
        finally:
            self.turn.acquire()
        return got

    def allgather_array(self, a):
        self.calls[self.local.rank].append(("allgather_array", np.shape(a)))
        return self._exchange(a)

    def allreduce_sum(self, a):
        self.calls[self.local.rank].append(("allreduce_sum", np.shape(a)))
        return np.sum(self._exchange(a), axis=0)

    def run(self, fn, args):
        """fn(rank, *args[rank]) in one thread per rank; their results in rank order."""
        results, errors = [None] * self.size, []

        def main(r):
            self.local.rank = r
            with self.turn:
                try:
                    results[r] = fn(r, *args[r])
                except BaseException as exc:     # re-raised in the caller
                    errors.append(exc)
                    self.barrier.abort()
        threads = [threading.Thread(target=main, args=(r,)) for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0])
        return results


def _split(n, parts):
    """Uneven slice boundaries of n rows into len(parts)-many pieces of those sizes."""
    assert sum(parts) == n
    edges = np.cumsum([0] + list(parts))
    return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def _buffers(model):
    return {k: np.asarray(v).copy() for k, v in model.state_dict().items() if "running" in k or "tracked" in k}


def _check_sync(make, x, dys, parts, backend, steps=2):
    """Train-mode steps of one model on x and of len(parts) synced copies on its slices."""
    whole = make(backend)
    whole.train()
    size = len(parts)
    slices = _split(len(x), parts)
    ranks = [make(backend) for _ in range(size)]
    comm = FakeComm(size)
    for m in ranks:
        m.train()
        assert set_batchnorm_sync(m.layers, comm) >= 1

    def step(r, model, xs, dy):
        y = model.forward(xs)
        model.zero_grad()
        dx = model.backward(dy, return_input_grad=True)
        return y, dx, {p.name: np.asarray(p.grad).copy() for p in model.parameters()}

    for dy in dys[:steps]:
        y = whole.forward(x)
        whole.zero_grad()
        dx = whole.backward(dy, return_input_grad=True)
        want = {p.name: np.asarray(p.grad) for p in whole.parameters()}
        got = comm.run(step, [(ranks[r], x[s], dy[s]) for r, s in enumerate(slices)])
        _close(np.concatenate([g[0] for g in got]), y)
        _close(np.concatenate([g[1] for g in got]), dx)
        for name, g in want.items():
            _close(sum(res[2][name] for res in got), g)
        for m in ranks:
            for k, v in _buffers(whole).items():
                _close(_buffers(m)[k], v)
    return whole, ranks, comm


def _bn1d(features, shape_tail=()):
    def make(backend):
        return fnn.Sequential(BatchNorm1D(features, momentum=0.3), backend=backend, dtype="float64", seed=0)
    return make


def _randomized(make, seed):
    """make, with random weight/bias/running stats (the same in every copy)."""
    def build(backend):
        model = make(backend)
        rng = np.random.default_rng(seed)
        sd = {k: (rng.standard_normal(np.shape(v)) if "tracked" not in k else np.asarray(v))
              for k, v in model.state_dict().items()}
        sd = {k: (np.abs(v) + 0.5 if "running_var" in k else v) for k, v in sd.items()}
        model.load_state_dict(sd)
        return model
    return build


@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("shape,parts", [((7, 3), (2, 4, 1)), ((5, 4, 6), (3, 2))], ids=["NC-3ranks", "NCL-2ranks"])
def test_batchnorm1d_sync_equals_whole_batch(backend, shape, parts):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape) * 3 + 2
    dys = [rng.standard_normal(shape) for _ in range(2)]
    _check_sync(_randomized(_bn1d(shape[1]), 2), x, dys, parts, backend)


def _cnn(backend):
    return fnn.Sequential(Conv2D(2, 4, 3, padding=1), BatchNorm2D(4), ReLU(), GlobalAvgPool2D(), Dense(4, 3),
                          backend=backend, dtype="float64", seed=0)


@pytest.mark.parametrize("backend", CPU)
def test_cnn_sync_equals_whole_batch(backend):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 2, 5, 5))
    dys = [rng.standard_normal((6, 3)) for _ in range(2)]
    _, ranks, comm = _check_sync(_randomized(_cnn, 4), x, dys, (1, 3, 2), backend)
    # each training step: one packed allgather in forward, one packed allreduce in backward
    assert comm.calls[0] == [("allgather_array", (1 + 2 * 4,)), ("allreduce_sum", (2 * 4,))] * 2
    assert all(calls == comm.calls[0] for calls in comm.calls)


def test_batchnorm_inside_residual():
    rng = np.random.default_rng(25)
    x = rng.standard_normal((7, 4))
    dys = [rng.standard_normal(x.shape) for _ in range(2)]

    def make(backend):
        return fnn.Sequential(Dense(4, 4), Residual(BatchNorm1D(4), ReLU(), Dense(4, 4), BatchNorm1D(4)),
                              backend=backend, dtype="float64", seed=0)
    _, ranks, comm = _check_sync(_randomized(make, 26), x, dys, (4, 3), CPU[-1])
    assert [name for name, _ in comm.calls[1]] == ["allgather_array"] * 2 + ["allreduce_sum"] * 2 + \
        ["allgather_array"] * 2 + ["allreduce_sum"] * 2
    assert set_batchnorm_sync(ranks[0].layers, None) == 2
    inner = [layer for _, layer in ranks[0].layers[1].sublayers() if isinstance(layer, BatchNorm1D)]
    assert len(inner) == 2 and all(layer.sync is None for layer in inner)
    assert all(layer.sync is comm for _, layer in ranks[1].layers[1].sublayers() if isinstance(layer, BatchNorm1D))


def test_momentum_none_cumulative_average():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 3, 4))
    dys = [rng.standard_normal(x.shape) for _ in range(3)]

    def make(backend):
        return fnn.Sequential(BatchNorm1D(3, momentum=None), backend=backend, dtype="float64", seed=0)
    whole, ranks, _ = _check_sync(make, x, dys, (4, 2), "numpy", steps=3)
    assert float(_buffers(ranks[0])["0.num_batches_tracked"]) == 3


def test_sync_matches_torch_batchnorm2d():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 3, 4, 4)) * 2 - 1
    dy = rng.standard_normal(x.shape)
    tbn = torch.nn.BatchNorm2d(3, momentum=0.2).double()
    with torch.no_grad():
        tbn.weight.copy_(torch.from_numpy(rng.standard_normal(3)))
        tbn.bias.copy_(torch.from_numpy(rng.standard_normal(3)))
    sd = {f"0.{k}": v.detach().numpy().copy() for k, v in tbn.state_dict().items()}
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = tbn(xt)
    yt.backward(torch.from_numpy(dy))

    comm = FakeComm(2)
    models = []
    for _ in range(2):
        m = fnn.Sequential(BatchNorm2D(3, momentum=0.2), backend=CPU[-1], dtype="float64", seed=0)
        m.load_state_dict(sd)
        m.layers[0].sync = comm
        m.train()
        models.append(m)

    def step(r, model, xs, dys):
        y = model.forward(xs)
        model.zero_grad()
        return y, model.backward(dys, return_input_grad=True), [np.asarray(p.grad).copy() for p in model.parameters()]
    s = _split(5, (2, 3))
    got = comm.run(step, [(models[r], x[s[r]], dy[s[r]]) for r in range(2)])
    _close(np.concatenate([g[0] for g in got]), yt.detach().numpy())
    _close(np.concatenate([g[1] for g in got]), xt.grad.numpy())
    _close(got[0][2][0] + got[1][2][0], tbn.weight.grad.numpy())
    _close(got[0][2][1] + got[1][2][1], tbn.bias.grad.numpy())
    for k, v in tbn.state_dict().items():
        for m in models:
            _close(np.asarray(m.state_dict()[f"0.{k}"]), v.numpy())


@pytest.mark.parametrize("backend", CPU)
def test_eval_mode_and_unsynced_are_unchanged(backend):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 3, 3, 3))
    make = _randomized(lambda b: fnn.Sequential(BatchNorm2D(3), backend=b, dtype="float64", seed=0), 11)
    plain, synced = make(backend), make(backend)
    comm = FakeComm(1)
    comm.local.rank = 0
    synced.layers[0].sync = comm
    # eval: bit-identical, no collective
    assert np.array_equal(np.asarray(synced.predict(x)), np.asarray(plain.predict(x)))
    synced.eval(), plain.eval()
    assert np.array_equal(np.asarray(synced.forward(x)), np.asarray(plain.forward(x)))
    assert comm.calls[0] == []
    # the default is None, and sync is no part of config or the state
    assert BatchNorm2D(3).sync is None
    assert "sync" not in synced.layers[0].config()
    assert not any("sync" in k for k in synced.state_dict())
    # one rank synced == unsynced (up to rounding) in training
    for m in (plain, synced):
        m.train()
    dy = rng.standard_normal(x.shape)
    plain.zero_grad(), synced.zero_grad()
    ya = plain.forward(x)
    dxa = plain.backward(dy, return_input_grad=True)
    yb, dxb = comm.run(lambda r: (synced.forward(x), synced.backward(dy, return_input_grad=True)), [()])[0]
    _close(yb, ya)
    _close(dxb, dxa)
    for p, q in zip(synced.parameters(), plain.parameters()):
        _close(p.grad, q.grad)
    for k, v in _buffers(plain).items():
        _close(_buffers(synced)[k], v)


def test_rank_with_one_row_is_fine():
    rng = np.random.default_rng(13)
    x = rng.standard_normal((4, 5))
    dys = [rng.standard_normal(x.shape)]
    for backend in CPU:
        _check_sync(_randomized(_bn1d(5), 14), x, dys, (1, 3), backend, steps=1)


def test_global_count_of_one_raises_on_every_rank():
    comm = FakeComm(2)
    models = [fnn.Sequential(BatchNorm1D(3), backend="numpy", dtype="float64", seed=0) for _ in range(2)]
    for m in models:
        m.layers[0].sync = comm
        m.train()
    # one row on one rank, none on the other: 1 value per channel in all
    xs = [np.ones((1, 3)), np.ones((0, 3))]
    raised = []

    def step(r, model, xr):
        with pytest.raises(ValueError, match="more than 1 value per channel over all 2 ranks"):
            model.layers[0].forward(fnn.layers.Context(training=True), xr)
        raised.append(r)
        assert float(np.asarray(model.state_dict()["0.num_batches_tracked"])) == 0
    comm.run(step, [(models[r], xs[r]) for r in range(2)])
    assert sorted(raised) == [0, 1]
    # the local path's error is the same one, without the ranks
    with pytest.raises(ValueError, match="more than 1 value per channel, got input shape"):
        m = fnn.Sequential(BatchNorm1D(3), backend="numpy", dtype="float64", seed=0)
        m.train()
        m.forward(np.ones((1, 3)))


def test_sync_must_be_a_communicator():
    bn = BatchNorm1D(3)
    with pytest.raises(TypeError, match="allgather_array and allreduce_sum"):
        bn.sync = object()
    with pytest.raises(TypeError, match="communicator"):
        bn.sync = "mpi"
    bn.sync = FakeComm(1)
    bn.sync = None
    assert bn.sync is None
    with pytest.raises(TypeError, match="communicator"):
        set_batchnorm_sync([BatchNorm1D(2), bn], 42)
    assert bn.sync is None


@pytest.mark.parametrize("backend", CPU)
def test_rank_with_no_rows(backend):
    """A model refuses an empty batch, but the layer's sync path takes one (count 0)."""
    rng = np.random.default_rng(17)
    x, dy = rng.standard_normal((4, 3, 2)), rng.standard_normal((4, 3, 2))
    make = _randomized(lambda b: fnn.Sequential(BatchNorm1D(3), backend=b, dtype="float64", seed=0), 18)
    whole = make(backend)
    whole.train()
    y, dx = whole.forward(x), whole.backward(dy, return_input_grad=True)
    comm, ranks = FakeComm(2), [make(backend) for _ in range(2)]
    for m in ranks:
        m.layers[0].sync = comm

    def step(r, model, xs, dys):
        layer, ctx = model.layers[0], fnn.layers.Context(training=True, need_dx=True)
        return layer.forward(ctx, xs), layer.backward(ctx, dys)
    got = comm.run(step, [(ranks[0], x[:0], dy[:0]), (ranks[1], x, dy)])
    assert got[0][0].shape == got[0][1].shape == (0, 3, 2)
    _close(got[1][0], y)
    _close(got[1][1], dx)
    for m in ranks:
        for k, v in _buffers(whole).items():
            _close(_buffers(m)[k], v)


@pytest.mark.parametrize("backend", CPU)
def test_first_layer_without_dx_and_float32(backend):
    """BatchNorm first (its dx unused): no allreduce, the summed gradients still the whole
    batch's; in float32 to float32's tolerance."""
    rng = np.random.default_rng(19)
    x = (rng.standard_normal((9, 4)) * 2 + 3).astype(np.float32)
    dy = rng.standard_normal((9, 2)).astype(np.float32)

    def make(b):
        return fnn.Sequential(BatchNorm1D(4), Dense(4, 2), backend=b, dtype="float32", seed=0)
    whole = make(backend)
    whole.train()
    y = whole.forward(x)
    whole.backward(dy)
    comm, ranks = FakeComm(2), [make(backend) for _ in range(2)]
    for m in ranks:
        m.train()
        m.layers[0].sync = comm

    def step(r, model, xs, dys):
        out = model.forward(xs)
        model.zero_grad()
        model.backward(dys)
        return out, {p.name: np.asarray(p.grad).copy() for p in model.parameters()}
    got = comm.run(step, [(ranks[0], x[:5], dy[:5]), (ranks[1], x[5:], dy[5:])])
    assert comm.calls[0] == [("allgather_array", (1 + 2 * 4,))]
    tol = dict(rtol=1e-5, atol=1e-5)
    assert_close(np.concatenate([g[0] for g in got]), y, np.float32, **tol)
    for p in whole.parameters():
        assert_close(got[0][1][p.name] + got[1][1][p.name], p.grad, np.float32, **tol)
    for k, v in _buffers(whole).items():
        assert_close(_buffers(ranks[0])[k], v, np.float32, **tol)
