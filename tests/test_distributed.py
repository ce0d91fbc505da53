"""Data-parallel training on MPI (issue 12): `mpiexec -n 2` runs of tests/mpi_worker.py compared
with one process at the global batch, a rank that fails, and a checkpoint resumed on one rank.
Needs the mpi extra (mpi4py + the mpich wheel), which CI installs."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fastnn as fnn

sys.path.insert(0, str(Path(__file__).parent))
import mpi_worker as W  # noqa: E402

WORKER = str(Path(__file__).parent / "mpi_worker.py")
MPIEXEC = next((str(p) for p in (Path(sys.executable).parent / "mpiexec", shutil.which("mpiexec") or "")
                if p and os.path.exists(p)), None)
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not installed: pip install '.[mpi]'")


def mpirun(case, out, n=2, timeout=240, **env):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1", **env)
    start = time.perf_counter()
    proc = subprocess.run([MPIEXEC, "-n", str(n), sys.executable, WORKER, case, str(out)],
                          capture_output=True, text=True, timeout=timeout, env=env)
    return proc, time.perf_counter() - start


def results(out):
    r = np.load(out)
    return r, json.loads(str(r["meta"]))


@pytest.fixture(scope="module")
def equal_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dp") / "equal.npz"
    proc, _ = mpirun("equal", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return results(out)


@needs_mpi
@pytest.mark.parametrize("kind", ["mlp", "cnn", "lstm", "mlp_tail"])
def test_two_ranks_equal_one_process_at_the_global_batch(equal_run, kind):
    """The MLP has Dropout: each rank's masks are its slice of the global batch's."""
    r, meta = equal_run
    assert meta["size"] == 2
    w, hist, _ = W.train(kind, 16) if kind != "mlp_tail" else W.train("mlp", 16, n=82)
    np.testing.assert_allclose(r[kind + ".w"], w, rtol=0, atol=1e-9)
    got = meta["history"][kind]
    for key in ("loss", "accuracy", "f1", "val_loss", "val_accuracy", "val_f1"):
        np.testing.assert_allclose(got[key], hist[key], rtol=0, atol=1e-9, err_msg=key)


@needs_mpi
def test_a_data_loader_and_evaluate_on_two_ranks_equal_one_process(equal_run):
    r, meta = equal_run
    w, hist = W.loader_fit(16)
    np.testing.assert_allclose(r["mlp_loader.w"], w, rtol=0, atol=1e-9)
    got = meta["history"]["mlp_loader"]
    for key in ("loss", "accuracy", "f1", "eval_loss", "eval_accuracy", "eval_f1"):
        np.testing.assert_allclose(got[key], hist[key], rtol=0, atol=1e-9, err_msg=key)


@needs_mpi
def test_sync_batchnorm_equals_one_process_and_local_statistics_differ(equal_run):
    r, meta = equal_run
    w, hist, _ = W.train("bn", 16)
    np.testing.assert_allclose(r["bn_sync.w"], w, rtol=0, atol=1e-9)
    np.testing.assert_allclose(meta["history"]["bn_sync"]["loss"], hist["loss"], rtol=0, atol=1e-9)
    # per-rank statistics normalise each half-batch on its own: another (valid) run
    assert np.abs(r["bn_local.w"] - w).max() > 1e-6
    assert np.isfinite(meta["history"]["bn_local"]["loss"]).all()


@needs_mpi
def test_cuda_ranks_stage_the_allreduce_through_the_host(tmp_path):
    """numba.cuda's simulator (no GPU here): 2 ranks on the cuda backend == numpy at batch 16."""
    out = tmp_path / "cuda.npz"
    proc, _ = mpirun("cuda", out, NUMBA_ENABLE_CUDASIM="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r, meta = results(out)
    np.testing.assert_allclose(r["cuda.w"], r["numpy.w"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(meta["history"]["cuda"]["loss"], meta["history"]["numpy"]["loss"],
                               rtol=0, atol=1e-9)


@needs_mpi
def test_the_nan_guard_stops_every_rank_alike(tmp_path):
    out = tmp_path / "nan.npz"
    proc, _ = mpirun("nan", out, timeout=120)
    assert proc.returncode != 0
    for rank in (0, 1):   # both ranks, the same check (each wrote its own error's text)
        assert open(f"{out}.rank{rank}").read().startswith("FloatingPointError: the "), proc.stderr
    assert "MPI_Abort" not in proc.stderr


@needs_mpi
def test_a_failing_rank_ends_every_rank_quickly(tmp_path):
    proc, seconds = mpirun("fail", tmp_path / "fail.npz", timeout=120)
    assert proc.returncode != 0
    assert "boom on rank 1" in proc.stderr and "[fastnn rank 1/2]" in proc.stderr
    assert "MPI_Abort" in proc.stderr
    assert seconds < 60   # rank 0, blocked in the next allreduce, is ended too (not a hang)


@needs_mpi
@pytest.mark.parametrize("case, message", [
    ("mismatch", "the model (layers, parameter and buffer shapes, dtype) differs between ranks"),
    ("uneven", "the number of batches per epoch (give every rank the same data) differs"),
])
def test_ranks_that_disagree_get_a_clear_error(tmp_path, case, message):
    proc, _ = mpirun(case, tmp_path / f"{case}.npz", timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.count(message) == 2   # raised on both ranks, before any step


@needs_mpi
def test_checkpoint_of_two_ranks_resumes_on_one(tmp_path):
    out = tmp_path / "ckpt.npz"
    proc, _ = mpirun("checkpoint", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    t = fnn.Trainer.load_checkpoint(str(out) + ".ckpt.safetensors", backend="cython")
    assert t.epoch == 2
    X, y = W.data("mlp")
    t.fit(X, y, epochs=4, initial_epoch=t.epoch, batch_size=16, verbose=0)
    straight = W.model("mlp")
    s = fnn.Trainer(straight, "cross_entropy", fnn.optim.Adam(lr=0.01))
    s.fit(X, y, epochs=4, batch_size=16, verbose=0)
    np.testing.assert_allclose(np.asarray(t.model._flat_data), np.asarray(straight._flat_data),
                               rtol=0, atol=1e-9)
    assert t.history.history["loss"][:2] == pytest.approx(s.history.history["loss"][:2], abs=1e-9)
    lines = (tmp_path / "ckpt.npz.log.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("epoch")   # rank 0 alone wrote the CSV


def test_one_process_without_a_launcher_is_rank_0_of_1():
    assert (fnn.distributed.rank(), fnn.distributed.size(), fnn.distributed.is_main()) == (0, 1, True)
    np.testing.assert_array_equal(fnn.distributed.allreduce([1, 2], op="mean"), [1.0, 2.0])
    assert fnn.distributed.allgather("x") == ["x"]
    with pytest.raises(ValueError, match="op must be"):
        fnn.distributed.allreduce([1.0], op="max")


def test_sync_batchnorm_needs_distributed():
    with pytest.raises(ValueError, match="sync_batchnorm=True goes with distributed=True"):
        fnn.Trainer(W.model("bn"), "cross_entropy", sync_batchnorm=True)


def test_shard_parts_cover_a_batch_once():
    from fastnn.data import shard_part
    idx = np.arange(100, 111)
    parts = [shard_part(idx, r, 3) for r in range(3)]
    assert [len(p) for p in parts] == [4, 4, 3]
    np.testing.assert_array_equal(np.concatenate(parts), idx)
    assert [shard_part(slice(8, 16), r, 2) for r in range(2)] == [slice(8, 12), slice(12, 16)]
    assert len(shard_part(np.arange(1), 1, 2)) == 0


def test_gradient_buckets_start_during_backward_last_layers_first():
    pytest.importorskip("mpi4py")
    from fastnn.distributed import DataParallel
    from fastnn.layers import Dense, ReLU
    model = fnn.Sequential(Dense(6, 32), ReLU(), Dense(32, 32), ReLU(), Dense(32, 32), ReLU(),
                           Dense(32, 4), dtype="float64", seed=0)
    dp = DataParallel(model, bucket_mb=600 * 8 / 2 ** 20)   # 600 float64s: about a Dense(32, 32) each
    sync = dp.grads
    spans = sorted(sync.buckets)
    assert len(spans) >= 3 and spans[0][0] == 0 and spans[-1][1] == model._flat_grad.size
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))   # each gradient in one bucket
    assert sync.buckets[0][1] == model._flat_grad.size          # the last layers' bucket first
    started = []
    real_start = sync._start

    def spy(ready, left):
        before = sync._next
        real_start(ready, left)
        started.extend([left] * (sync._next - before))

    sync._start = spy
    x = np.random.default_rng(0).normal(size=(5, 6))
    outs, tape = model._train_forward([x])
    records = len(tape.records)
    model.zero_grad()
    dp.backprop(tape, [np.ones_like(outs[0])])
    dp.start_loss(0.0)
    dp.finish_step()
    assert len(started) == len(sync.buckets)
    assert 0 < started[0] < records   # the first bucket went out while backward still ran
    got = np.asarray(model._flat_grad).copy()
    outs, tape = model._train_forward([x])
    model.zero_grad()
    model._backprop(tape, [np.ones_like(outs[0])])
    np.testing.assert_array_equal(got, np.asarray(model._flat_grad))   # one rank: the sum is itself
