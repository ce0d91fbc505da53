"""The auto backend (fastnn/_kernels/choice.py): per-family, per-size kernel choice, its record
file and its overrides. No assertion depends on which backend is faster here."""
import json
import math
import os
import subprocess
import tempfile
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest

import fastnn as fnn
from fastnn import backend as registry_of_backends
from fastnn import layers as L
from fastnn._kernels import choice
from conftest import assert_close
from seq_helpers import gradcheck

pytestmark = pytest.mark.skipif(not {"cython", "numba"} <= set(fnn.backends()),
                                reason="the auto backend needs the cython and numba backends")
# Child processes run outside the checkout, so they import the installed fastnn (with its compiled
# kernels), not the source tree (`python -c` puts the working folder first on sys.path).
OUTSIDE = tempfile.gettempdir()


def fresh(path):
    """An auto backend of its own (no choices yet), recording to path."""
    return choice.AutoBackend(registry_of_backends._load, record=choice.Record(str(path)))


def recurrent_args(cell, dtype, n=3, t=4, f=2, h=3, seed=0):
    g = {"rnn": 1, "lstm": 4, "gru": 3}[cell] * h
    rng = np.random.default_rng(seed)
    r = lambda *s: (rng.standard_normal(s) * 0.5).astype(dtype)
    return r(n, t, f), r(g, f), r(g, h), r(g), r(g)


def run_pair(be, cell, args):
    """Forward then backward (dh of ones) of one cell through backend be's raw kernels."""
    out = getattr(be.raw, cell)(*args)
    out = out if isinstance(out, tuple) else (out,)
    x, w_ih, w_hh = args[:3]
    grads = getattr(be.raw, cell + "_backward")(np.ones_like(out[0]), x, *out, w_ih, w_hh, True)
    return out, grads


def python(code, env=None, cwd=OUTSIDE):
    full = {**os.environ, **(env or {})}
    full.pop("FASTNN_BACKEND", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def auto():
    be = fnn.get_backend("auto")
    saved = dict(be._overrides)
    yield be
    be.set_overrides(saved)


# ------------------------------------------------------------ the default


def test_auto_is_the_default_and_fastnn_backend_still_overrides(monkeypatch):
    monkeypatch.delenv("FASTNN_BACKEND", raising=False)
    assert fnn.default_backend() == "auto"
    assert fnn.get_backend() is fnn.get_backend("auto")
    assert fnn.Sequential(L.Dense(2, 2)).backend.name == "auto"
    monkeypatch.setenv("FASTNN_BACKEND", "numba")
    assert fnn.default_backend() == "numba" and fnn.Sequential(L.Dense(2, 2)).backend.name == "numba"


def test_backends_lists_only_concrete_backends_and_auto_is_a_backend():
    assert "auto" not in fnn.backends()
    be = fnn.get_backend("auto")
    assert isinstance(be, registry_of_backends.Backend) and be.name == "auto"
    assert fnn.get_backend(be) is be
    with pytest.raises(ValueError, match="auto"):          # the error lists auto among the known
        fnn.get_backend("autoo")
    # families that are not measured are cython's kernels themselves
    assert be.raw.matmul is fnn.get_backend("cython").raw.matmul
    assert be.sources["matmul"].startswith("cython") and be.sources["lstm"] == "measured"


def test_bucket_is_rounded_log2():
    for n in range(1, 5000):
        assert choice.bucket(n) == math.floor(math.log2(n) + 0.5), n


def test_size_keys_ignore_what_does_not_matter():
    x, w_ih, w_hh, b_ih, b_hh = recurrent_args("lstm", np.float32, n=100, t=40, f=1, h=6)
    key = choice.FAMILIES["lstm"].key(x, w_ih, w_hh, b_ih, b_hh)
    assert choice.key_name("lstm", key) == "lstm/float32/N128,T32,F1,H8"
    h = np.zeros((100, 40, 6), np.float32)
    assert choice.FAMILIES["lstm"].backward_key(h, x, h) == key       # backward: the same key
    x2 = np.zeros((100, 1, 8, 8), np.float64)
    key2 = choice.FAMILIES["conv2d"].key(x2, np.zeros((16, 1, 3, 3)), None)
    assert choice.key_name("conv2d", key2) == "conv2d/float64/N128,C1,O16,HW64,K8"



def test_each_shape_and_dtype_gets_its_own_key_after_the_first_call(tmp_path):
    """The dispatcher remembers the size key per (shapes, dtypes): a second shape in another
    bucket, the same shape in float64, and a list for a size (unhashable) each reach their own key."""
    be = fresh(tmp_path / "k.json")
    rng = np.random.default_rng(0)
    for x in (rng.standard_normal((3, 2, 4, 4)), rng.standard_normal((3, 2, 4, 4)).astype(np.float32),
              rng.standard_normal((3, 2, 16, 16))):
        for _ in range(2):
            y, idx = be.raw.maxpool2d(x, [2, 2], [2, 2]) if x.shape[2] == 16 else be.raw.maxpool2d(x, (2, 2), (2, 2))
            want, _ = fnn.get_backend("numpy").raw.maxpool2d(x, (2, 2), (2, 2))
            assert np.array_equal(y, want)
    names = sorted(be.kernel_choices())
    assert names == ["maxpool2d/float32/N4,C2,HW16", "maxpool2d/float64/N4,C2,HW16",
                     "maxpool2d/float64/N4,C2,HW256"]


# ----------------------------------------------------------- measuring


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_measured_choice_returns_the_winners_output_and_leaves_inputs_alone(tmp_path, cell):
    be = fresh(tmp_path / "k.json")
    args = recurrent_args(cell, np.float64)
    before = [a.copy() for a in args]
    out = be.raw.__dict__[cell](*args)
    for a, b in zip(args, before):
        assert np.array_equal(a, b)                    # measuring ran on copies
    (entry,) = be.kernel_choices().values()
    assert entry["source"] == "measured" and entry["backend"] in choice.CANDIDATES
    assert set(entry["us"]) == set(choice.CANDIDATES)
    winner = fnn.get_backend(entry["backend"])
    expect = getattr(winner.raw, cell)(*args)
    for a, b in zip(out if isinstance(out, tuple) else (out,), expect if isinstance(expect, tuple) else (expect,)):
        assert np.array_equal(a, b)                    # what an unmeasured call returns
    assert getattr(be.raw, cell) is not getattr(winner.raw, cell)   # still the dispatcher ...
    assert be._chosen[(cell, choice.FAMILIES[cell].key(*args))][0] is getattr(winner.raw, cell)   # ... to it
    data = json.loads((tmp_path / "k.json").read_text())
    assert data["schema"] == choice.SCHEMA
    assert list(data["machines"][choice.machine()]) == list(be.kernel_choices())


def test_backward_first_is_measured_alone_and_matches_the_reference(tmp_path):
    be, ref = fresh(tmp_path / "k.json"), fnn.get_backend("numpy")
    args = recurrent_args("gru", np.float64)
    out = ref.raw.gru(*args)
    dh = np.random.default_rng(1).standard_normal(out[0].shape)
    got = be.raw.gru_backward(dh, args[0], *out, args[1], args[2], True)
    want = ref.raw.gru_backward(dh, args[0], *out, args[1], args[2], True)
    for a, b in zip(got, want):
        assert_close(a, b, np.float64, rtol=1e-9, atol=1e-11)
    assert [v["source"] for v in be.kernel_choices().values()] == ["measured"]


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_auto_recurrent_matches_the_reference_in_both_dtypes(tmp_path, cell):
    be, ref = fresh(tmp_path / "k.json"), fnn.get_backend("numpy")
    for dtype in (np.float32, np.float64):
        args = recurrent_args(cell, dtype, seed=2)
        for _ in range(2):                        # the measured call, then the chosen kernel
            (out, grads), (rout, rgrads) = run_pair(be, cell, args), run_pair(ref, cell, args)
            tol = (1e-4, 1e-5) if dtype == np.float32 else (1e-9, 1e-11)
            for a, b in zip(out + tuple(grads), rout + tuple(rgrads)):
                assert_close(a, b, dtype, *tol)
    assert len(be.kernel_choices()) == 2              # one key per dtype


@pytest.mark.parametrize("dims", [1, 2])
def test_auto_conv_matches_the_reference(tmp_path, dims):
    be, ref = fresh(tmp_path / "k.json"), fnn.get_backend("numpy")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3) + (7,) * dims)
    w = rng.standard_normal((4, 3) + (3,) * dims)
    b = rng.standard_normal(4)
    geo = (2, 1) if dims == 1 else ((2, 1), (1, 0))
    name = f"conv{dims}d"
    for _ in range(2):
        y, ry = getattr(be.raw, name)(x, w, b, *geo), getattr(ref.raw, name)(x, w, b, *geo)
        assert_close(y, ry, np.float64, 1e-9, 1e-11)
        dy = rng.standard_normal(y.shape)
        for g, rg in zip(getattr(be.raw, name + "_backward")(dy, x, w, *geo, True),
                         getattr(ref.raw, name + "_backward")(dy, x, w, *geo, True)):
            assert_close(g, rg, np.float64, 1e-9, 1e-11)


@pytest.mark.parametrize("layers, shape", [
    (lambda: [L.LSTM(2, 3, bidirectional=True), L.Dense(6, 2)], (2, 3, 2)),
    (lambda: [L.GRU(2, 3, return_sequences=True)], (2, 3, 2)),
    (lambda: [L.Conv1D(2, 3, 2), L.Flatten()], (2, 2, 5)),
])
def test_gradcheck_on_auto(layers, shape):
    gradcheck(fnn.get_backend("auto"), layers(), shape)


# ----------------------------------------------------------- overrides


def test_choose_binds_the_named_backends_kernels(auto):
    nb, cy = fnn.get_backend("numba"), fnn.get_backend("cython")
    auto.choose("lstm", "numba")
    assert auto.raw.lstm is nb.raw.lstm and auto.raw.lstm_backward is nb.raw.lstm_backward
    auto.choose("lstm_backward", "cython")                 # a kernel beats its family
    assert auto.raw.lstm is nb.raw.lstm and auto.raw.lstm_backward is cy.raw.lstm_backward
    auto.choose("matmul", "numba")
    assert auto.raw.matmul is nb.raw.matmul and auto.sources["matmul"] == "override:numba"
    choices = fnn.backend.kernel_choices()
    assert {k: v["backend"] for k, v in choices.items() if v["source"] == "override"} == {
        "lstm": "numba", "lstm_backward": "cython", "matmul": "numba"}
    auto.choose("lstm", None)
    auto.choose("lstm_backward", None)
    auto.choose("matmul", None)
    assert auto.raw.lstm.__module__ == choice.__name__       # measuring again
    assert auto.raw.matmul is cy.raw.matmul


def test_mixed_override_gives_the_references_gradients(auto):
    """lstm forward from numba, its backward from cython: a model's gradients equal numpy's."""
    fnn.backend.choose("lstm", "numba")
    fnn.backend.choose("lstm_backward", "cython")
    fnn.backend.choose("gru", "cython")
    fnn.backend.choose("gru_backward", "numba")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 5, 2))
    probe = rng.standard_normal((3, 4))
    grads = {}
    for name in ("numpy", "auto"):
        model = fnn.Sequential(L.LSTM(2, 3, return_sequences=True), L.GRU(3, 2, bidirectional=True),
                               backend=name, dtype="float64", seed=4)
        out = model.forward(x)
        model.zero_grad()
        dx = model.backward(probe, return_input_grad=True)
        grads[name] = (out, dx, {p.name: p.grad.copy() for p in model.parameters()})
    (o1, d1, g1), (o2, d2, g2) = grads["numpy"], grads["auto"]
    assert_close(o2, o1, np.float64, 1e-9, 1e-11)
    assert_close(d2, d1, np.float64, 1e-9, 1e-11)
    for k in g1:
        assert_close(g2[k], g1[k], np.float64, 1e-9, 1e-11)


def test_checked_kernels_follow_overrides(auto):
    args = recurrent_args("rnn", np.float64)
    auto.choose("rnn", "numpy")
    assert auto.raw.rnn is fnn.get_backend("numpy").raw.rnn
    assert np.array_equal(auto.rnn(*args), fnn.get_backend("numpy").rnn(*args))
    with pytest.raises(ValueError):              # the check runs in front of the chosen kernel
        auto.rnn(args[0][0], *args[1:])


@pytest.mark.parametrize("name, backend, match", [
    ("lstmm", "numba", "unknown kernel or family 'lstmm'.*'conv1d'.*'lstm'"),
    ("lstm", "torch", "unknown backend 'torch'.*'cython', 'numba', 'numpy'"),
    (3, "numba", "unknown kernel or family 3"),
])
def test_invalid_choose_names_the_valid_ones(auto, name, backend, match):
    with pytest.raises(ValueError, match=match):
        fnn.backend.choose(name, backend)


@pytest.mark.parametrize("text, match", [
    ("lstm", "expected name=backend"), ("lstm=", "expected name=backend"),
    ("lstm=numba,foo=cython", "unknown kernel or family 'foo'"), ("gru=jax", "unknown backend 'jax'"),
])
def test_bad_fastnn_kernels_is_a_clear_error(text, match):
    with pytest.raises(ValueError, match="FASTNN_KERNELS: " + match):
        choice.parse_overrides(text)


def test_fastnn_kernels_is_obeyed_in_a_new_process(tmp_path):
    run = python("""
        import fastnn as fnn
        be, nb, cy = fnn.get_backend(), fnn.get_backend("numba"), fnn.get_backend("cython")
        assert be.name == "auto"
        assert be.raw.lstm is nb.raw.lstm and be.raw.lstm_backward is nb.raw.lstm_backward
        assert be.raw.conv2d is cy.raw.conv2d and be.raw.gru_backward is cy.raw.gru_backward
        print(sorted(k for k, v in fnn.backend.kernel_choices().items() if v["source"] == "override"))
    """, {"FASTNN_KERNELS": " lstm=numba, conv2d=cython,gru_backward=cython ", "FASTNN_CACHE_DIR": str(tmp_path)})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "['conv2d', 'gru_backward', 'lstm']"
    bad = python("import fastnn as fnn; fnn.get_backend()", {"FASTNN_KERNELS": "lstm=nunba"})
    assert bad.returncode == 1 and "unknown backend 'nunba'" in bad.stderr


# -------------------------------------------------------------- record

READ_BACK = """
    import json, numpy as np, fastnn as fnn
    from fastnn._kernels import choice
    be = fnn.get_backend("auto")
    def refuse(*a, **k):
        raise AssertionError("measured although recorded")
    be._measure = refuse
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 2)); w_ih = rng.standard_normal((12, 2)); w_hh = rng.standard_normal((12, 4))
    out = be.raw.gru(x, w_ih, w_hh, np.zeros(12), np.zeros(12))
    be.raw.gru_backward(np.ones_like(out[0]), x, *out, w_ih, w_hh, True)
    (name, entry), = be.kernel_choices().items()
    print(json.dumps([name, entry["backend"], entry["source"], be._chosen[next(iter(be._chosen))][2]]))
"""


def test_the_record_is_read_in_a_new_process_without_measuring(tmp_path):
    first = python(READ_BACK.replace("be._measure = refuse", ""), {"FASTNN_CACHE_DIR": str(tmp_path)})
    assert first.returncode == 0, first.stderr
    name, backend, source, _ = json.loads(first.stdout)
    assert source == "measured" and (tmp_path / "kernel_choice.json").exists()
    for forced in choice.CANDIDATES:     # whatever the file says is used, not re-measured
        data = json.loads((tmp_path / "kernel_choice.json").read_text())
        data["machines"][choice.machine()][name]["backend"] = forced
        (tmp_path / "kernel_choice.json").write_text(json.dumps(data))
        again = python(READ_BACK, {"FASTNN_CACHE_DIR": str(tmp_path)})
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout) == [name, forced, "recorded", forced]


def test_another_machines_entries_are_kept_and_not_used(tmp_path):
    path = tmp_path / "k.json"
    other = {"lstm/float64/N4,T4,F2,H4": {"backend": "numba", "us": None}}
    path.write_text(json.dumps({"schema": choice.SCHEMA, "machines": {"another machine": other}}))
    be = fresh(path)
    run_pair(be, "lstm", recurrent_args("lstm", np.float64))
    assert [v["source"] for v in be.kernel_choices().values()] == ["measured"]
    data = json.loads(path.read_text())
    assert data["machines"]["another machine"] == other and choice.machine() in data["machines"]


@pytest.mark.parametrize("content", ["{not json", json.dumps({"schema": "someone else's", "machines": {}}),
                                     json.dumps([1, 2]), json.dumps({"schema": choice.SCHEMA, "machines": [1]}),
                                     json.dumps({"schema": choice.SCHEMA, "machines": {choice.machine(): 3}})])
def test_a_corrupt_or_foreign_record_warns_and_is_replaced(tmp_path, content):
    path = tmp_path / "k.json"
    path.write_text(content)
    be = fresh(path)
    with pytest.warns(RuntimeWarning, match="kernel choice: ignoring"):
        out, _ = run_pair(be, "rnn", recurrent_args("rnn", np.float64))
    assert np.isfinite(out[0]).all()
    assert json.loads(path.read_text())["schema"] == choice.SCHEMA       # the next write repairs it


def test_a_bad_entry_of_this_machine_is_skipped(tmp_path):
    path = tmp_path / "k.json"
    args = recurrent_args("rnn", np.float64)
    name = choice.key_name("rnn", choice.FAMILIES["rnn"].key(*args))
    path.write_text(json.dumps({"schema": choice.SCHEMA, "machines": {choice.machine(): {
        name: {"backend": "torch"}, "x": 5}}}))
    be = fresh(path)
    be.raw.rnn(*args)
    assert be.kernel_choices()[name]["source"] == "measured"


def test_an_unwritable_record_warns_once_and_still_works(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    be = fresh(blocker / "sub" / "k.json")        # a folder under a regular file: cannot be made
    with pytest.warns(RuntimeWarning, match="cannot write"):
        run_pair(be, "rnn", recurrent_args("rnn", np.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_pair(be, "rnn", recurrent_args("rnn", np.float32))          # no second warning
    assert len(be.kernel_choices()) == 2


def test_two_processes_writing_at_once_leave_a_valid_file(tmp_path):
    code = """
        import sys
        from fastnn._kernels import choice
        record = choice.Record(sys.argv[1])
        for i in range(40):
            assert record.add({f"{sys.argv[2]}/{i}": {"backend": "cython", "us": None}})
    """
    path = tmp_path / "k.json"
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(path), tag], cwd=OUTSIDE)
             for tag in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    entries = json.loads(path.read_text())["machines"][choice.machine()]
    assert set(entries) == {f"{t}/{i}" for t in "ab" for i in range(40)}   # merged under the lock
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_record_path_follows_fastnn_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTNN_CACHE_DIR", str(tmp_path))
    assert choice.record_path() == str(tmp_path / "kernel_choice.json")
    monkeypatch.delenv("FASTNN_CACHE_DIR")
    assert choice.record_path() == os.path.join(os.path.expanduser("~"), ".cache", "fastnn", "kernel_choice.json")


# ---------------------------------------------------- auto in the rest


def test_a_model_saved_on_auto_loads_on_auto(tmp_path):
    model = fnn.Sequential(L.GRU(2, 3), L.Dense(3, 2), backend="auto", seed=0)
    x = np.random.default_rng(0).standard_normal((4, 5, 2)).astype(np.float32)
    model.save(str(tmp_path / "m.safetensors"))
    back = fnn.load(str(tmp_path / "m.safetensors"))
    assert back.backend.name == "auto"
    assert np.array_equal(back.predict(x), model.predict(x))


def test_auto_trains_and_sets_threads():
    be = fnn.get_backend("auto")
    n = be.module.get_num_threads()
    be.module.set_num_threads(1)
    try:
        assert fnn.get_backend("cython").module.get_num_threads() == 1
        import numba
        assert numba.get_num_threads() == 1
        rng = np.random.default_rng(0)
        X, y = rng.standard_normal((64, 6, 1)).astype(np.float32), rng.integers(0, 2, 64)
        model = fnn.Sequential(L.LSTM(1, 4), L.Dense(4, 2), backend="auto", seed=0)
        history = fnn.Trainer(model, loss="cross_entropy", optimizer=fnn.optim.Adam(lr=1e-2)).fit(
            X, y, epochs=2, batch_size=16, progress=False)
        assert np.isfinite(history.history["loss"]).all()
    finally:
        be.module.set_num_threads(n)


def test_fastnn_tune_measures_the_benchmark_sizes_even_where_recorded(capsys):
    from fastnn import cli
    assert cli.main(["tune", "--batch-sizes", "2", "--dtypes", "float64"]) == 0
    first = capsys.readouterr().out
    assert "lstm/float64/N2,T32,F1,H128" in first and "conv2d/float64/N2,C16,O32,HW16,K8" in first
    assert first.strip().endswith(choice.record_path())
    assert cli.main(["tune", "--batch-sizes", "2", "--dtypes", "float64"]) == 0    # measured again
    choices = fnn.backend.kernel_choices()
    assert choices["gru/float64/N2,T32,F1,H8"]["source"] == "measured"
    with pytest.raises(SystemExit) as exc:
        cli.main(["tune", "--batch-sizes", "0"])
    assert exc.value.code == 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_while_the_parent_measures_can_measure():
    import threading
    be = fnn.get_backend("auto")
    args = recurrent_args("rnn", np.float64, n=5, t=3, f=3, h=5)
    held, release = threading.Event(), threading.Event()

    def measuring():                     # another thread holds the lock at the fork, as a measurement does
        with be._lock:
            held.set()
            release.wait(60)
    thread = threading.Thread(target=measuring)
    thread.start()
    held.wait(60)
    try:
        pid = os.fork()
        if pid == 0:                     # the child: its first use of a new key must not hang
            try:
                be.raw.rnn(*args)
                os._exit(0)
            except BaseException:
                os._exit(1)
    finally:
        release.set()
        thread.join()
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            pytest.fail("the forked child hung on the measuring lock")
        time.sleep(0.05)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


@pytest.mark.parametrize("family", sorted(choice.FAMILIES))
def test_every_family_on_auto_matches_the_reference_on_the_registry_examples(tmp_path, family):
    """Forward (measured, then chosen) and backward of each family through a fresh auto, on the
    registry's test examples in float64; in-place updates (batch_norm's running statistics)
    happen once, as the reference's."""
    from fastnn._kernels import registry
    fam, ref = choice.FAMILIES[family], fnn.get_backend("numpy")
    be = fresh(tmp_path / "k.json")
    for example in registry.KERNELS[fam.forward].examples.tests[:3]:
        for _ in range(2):
            check = registry.KERNELS[fam.forward].check                # raw kernels take checked arguments
            a, k = example.make(np.random.default_rng(7), np.float64)
            args, kwargs = check(*a, **k)
            a, k = example.make(np.random.default_rng(7), np.float64)
            ref_args, ref_kwargs = check(*a, **k)
            got = getattr(be.raw, fam.forward)(*args, **kwargs)
            want = getattr(ref.raw, fam.forward)(*ref_args, **ref_kwargs)
            got_t, want_t = (got if isinstance(got, tuple) else (got,)), (want if isinstance(want, tuple) else (want,))
            for a, b in zip(got_t, want_t):
                assert_close(a, b, np.float64, 1e-9, 1e-11)
            for a, b in zip(args, ref_args):                          # in-place updates: the same
                if isinstance(a, np.ndarray):
                    assert_close(a, b, np.float64, 1e-9, 1e-11)
            import inspect
            bound = inspect.signature(getattr(choice.reference, fam.forward)).bind(*ref_args, **ref_kwargs)
            bound.apply_defaults()
            b_args = fam.backward_args(bound, want)
            got_b = getattr(be.raw, fam.backward)(*b_args)           # raw: backward_args are positional
            want_b = getattr(ref.raw, fam.backward)(*b_args)
            for a, b in zip(got_b if isinstance(got_b, tuple) else (got_b,),
                            want_b if isinstance(want_b, tuple) else (want_b,)):
                if a is not None or b is not None:
                    assert_close(a, b, np.float64, 1e-9, 1e-11)
    assert {v["source"] for v in be.kernel_choices().values()} == {"measured"}


def test_a_near_tie_keeps_the_base_backend():
    """Numba replaces cython only under MARGIN (0.9) of its time, after SWITCH_US a call."""
    assert (choice.MARGIN, choice.SWITCH_US) == (0.9, 15.0)
    assert choice.pick({"cython": [500.0, 500.0], "numba": [460.0, 460.0]}) == "cython"
    assert choice.pick({"cython": [500.0, 500.0], "numba": [430.0, 430.0]}) == "numba"
    assert choice.pick({"cython": [500.0, 500.0], "numba": [600.0, 310.0]}) == "cython"   # the sum decides
    assert choice.pick({"numba": [5.0, 5.0]}) == "numba"          # cython failed while measuring


def test_a_small_kernel_pays_the_switch():
    """Tens of microseconds: numba's measured lead must cover SWITCH_US for each call it makes
    (the BatchNorm CNN's 8-step batch_norm, 17% faster alone, made the step slower)."""
    assert choice.pick({"cython": [21.5, 23.0], "numba": [17.1, 19.6]}) == "cython"
    assert choice.pick({"cython": [50.0, 50.0], "numba": [20.0, 20.0]}) == "numba"      # 70 < 90
    assert choice.pick({"cython": [50.0, 50.0], "numba": [32.0, 32.0]}) == "cython"     # 94 >= 90
    # a backward timed alone (no forward: 0) is one call: 20 + 15 < 36, 22 + 15 >= 36
    assert choice.pick({"cython": [0.0, 40.0], "numba": [0.0, 20.0]}) == "numba"
    assert choice.pick({"cython": [0.0, 40.0], "numba": [0.0, 22.0]}) == "cython"


def test_a_switch_must_win_a_second_measurement(tmp_path, monkeypatch):
    """One noisy measurement of cython does not hand a family to numba for good: the switch is
    measured again, and kept only if numba wins that too (the record has the best of both)."""
    turns = iter([{"cython": [50.0, 367.0], "numba": [130.0, 190.0]},     # cython's backward hit noise
                  {"cython": [52.0, 105.0], "numba": [131.0, 193.0]},
                  {"cython": [50.0, 50.0], "numba": [20.0, 20.0]},         # a real win, twice
                  {"cython": [51.0, 49.0], "numba": [21.0, 19.0]}])
    monkeypatch.setattr(choice, "_timed_turns", lambda runs, outs: next(turns))
    be = fresh(tmp_path / "k.json")
    be.raw.gru(*recurrent_args("gru", np.float64))
    be.raw.lstm(*recurrent_args("lstm", np.float64))
    picks = {v["family"]: (v["backend"], v["us"]) for v in be.kernel_choices().values()}
    assert picks["gru"] == ("cython", {"cython": [50.0, 105.0], "numba": [130.0, 190.0]})
    assert picks["lstm"] == ("numba", {"cython": [50.0, 49.0], "numba": [20.0, 19.0]})
    with pytest.raises(StopIteration):
        next(turns)                                     # each family was measured twice


def test_a_rebuilt_kernel_module_is_another_machine(tmp_path):
    """The record's key names the compiled module's build, so a rebuild measures again."""
    so = tmp_path / "_kernels.so"
    so.write_bytes(b"x" * 10)
    module = type("M", (), {"__file__": str(so)})
    first = choice._build_id(module)
    so.write_bytes(b"x" * 11)
    assert choice._build_id(module) != first
    assert choice._build_id(type("M", (), {})) == "unknown"
    assert "| build " in choice.machine()


def test_the_remembered_kernel_follows_a_new_choice(tmp_path, monkeypatch):
    """Repeated calls of one signature go straight to the kernel chosen for it; when the choice
    is dropped and measured again (as `fastnn tune` does), the next call uses the new winner,
    and a call of another signature or with keywords still finds its own choice."""
    turns = iter([{"cython": [50.0, 50.0], "numba": [90.0, 90.0]},
                  {"cython": [50.0, 50.0], "numba": [20.0, 20.0]},
                  {"cython": [51.0, 49.0], "numba": [21.0, 19.0]}])
    monkeypatch.setattr(choice, "_timed_turns", lambda runs, outs: next(turns))
    be = fresh(tmp_path / "k.json")
    args = recurrent_args("lstm", np.float64)
    want = be.base.raw.lstm(*args)
    for _ in range(3):
        got = be.raw.lstm(*args)
        assert all(np.array_equal(g, w) for g, w in zip(got, want))
    (key,) = be._chosen
    assert be._chosen[key][2] == "cython"
    called = []
    numba_lstm = be._load("numba").raw.lstm
    monkeypatch.setattr(be._load("numba").raw, "lstm", lambda *a, **k: called.append(1) or numba_lstm(*a, **k))
    be._chosen.pop(key)
    be._forget_fast()
    be.raw.lstm(*args)                       # measured again: numba wins twice
    assert be._chosen[key][2] == "numba"
    n = len(called)
    be.raw.lstm(*args)
    be.raw.lstm(*args)
    assert len(called) == n + 2              # the remembered kernel is numba's now
    kw = be.raw.lstm(args[0], args[1], w_hh=args[2], b_ih=args[3], b_hh=args[4])
    assert len(called) == n + 3 and all(np.allclose(g, w) for g, w in zip(kw, want))
    other = recurrent_args("lstm", np.float64, n=40, h=20)
    with pytest.raises(StopIteration):       # a new size key: measured (no turns left)
        be.raw.lstm(*other)
