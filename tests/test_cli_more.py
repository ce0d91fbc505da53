"""The command line as a user meets it: --version, bare `fastnn` (help, exit 0), one clear line
and exit 2 for bad arguments (checked before any training), validation curves in `digits`,
a speed ratio against numpy even when numpy is not listed, and `fastnn warmup`'s families."""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastnn as fnn
from fastnn import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = "cython" if "cython" in fnn.backends() else "numba" if "numba" in fnn.backends() else None


def _fastnn(*args):
    """`python -m fastnn ARGS` in a fresh process, importing this checkout's fastnn."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "fastnn", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)


def test_version_bare_help_and_a_bad_argument_in_a_fresh_process():
    run = _fastnn("--version")
    assert run.returncode == 0 and run.stdout.strip() == f"fastnn {fnn.__version__}"
    run = _fastnn()
    assert run.returncode == 0 and run.stderr == ""
    assert run.stdout.startswith("usage: fastnn") and all(c in run.stdout for c in ("digits", "warmup", "backends"))
    run = _fastnn("digits", "--epochs", "0")
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.splitlines() == ["fastnn digits: error: argument --epochs: must be a positive integer, "
                                       "got 0 (see 'fastnn digits --help')"]


def _error(capsys, *argv):
    """(exit status, stderr) of cli.main(argv), which must stop with one line and no training."""
    with pytest.raises(SystemExit) as info:
        cli.main(list(argv))
    captured = capsys.readouterr()
    assert captured.out == "", f"it started working: {captured.out[:200]}"
    lines = captured.err.splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return info.value.code, lines[0]


@pytest.mark.parametrize("argv,message", [
    (["digits", "--epochs", "-3"], "argument --epochs: must be a positive integer, got -3"),
    (["digits", "--batch-size", "x"], "argument --batch-size: expected a positive integer, got 'x'"),
    (["digits", "--lr", "nan"], "argument --lr: must be a positive finite number, got nan"),
    (["digits", "--seed", "-1"], "argument --seed: must be a non-negative integer"),
    (["digits", "--validation", "1"], "argument --validation: must be in [0, 1)"),
    (["digits", "--backends", "numpyy"], "unknown backend 'numpyy'; known backends:"),
    (["digits", "--backends"], "--backends needs at least one backend name"),
    (["digits", "--model", "resnet"], "argument --model: invalid choice: 'resnet'"),
    (["warmup", "--families", "everything"], "argument --families: invalid choice: 'everything'"),
    (["warmup", "--backends", "nope"], "unknown backend 'nope'"),
    (["frobnicate"], "argument command: invalid choice: 'frobnicate'"),
])
def test_bad_arguments_get_one_line_and_exit_2(capsys, argv, message):
    code, line = _error(capsys, *argv)
    assert code == 2 and message in line, line
    assert line.startswith("fastnn"), line


def test_an_unusable_backend_is_one_line(capsys):
    if "cuda" in fnn.backends():
        pytest.skip("cuda is usable here")
    code, line = _error(capsys, "digits", "--backends", "numpy", "cuda")
    assert code == 2 and "cuda" in line and "not available here" in line


def test_an_unwritable_plot_path_is_refused_before_training(capsys, tmp_path, monkeypatch):
    def never(*a, **k):
        raise AssertionError("trained before checking --plot")
    monkeypatch.setattr(cli, "train_digits", never)
    code, line = _error(capsys, "digits", "--plot", str(tmp_path / "no" / "such" / "c.png"))
    assert code == 2 and "does not exist" in line
    code, line = _error(capsys, "digits", "--plot", str(tmp_path))
    assert code == 2 and "is a folder" in line
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    target = str(locked / "c.png") if not os.access(locked, os.W_OK) else "/proc/fastnn-c.png"  # root writes anywhere
    code, line = _error(capsys, "digits", "--plot", target)
    assert code == 2 and "cannot write there" in line
    assert not os.path.exists(tmp_path / "c.png")
    pytest.importorskip("matplotlib")
    code, line = _error(capsys, "digits", "--plot", str(tmp_path / "c.nope"))
    assert code == 2 and "must end in one of" in line and ".png" in line


@pytest.mark.skipif(FAST is None, reason="needs a compiled backend")
def test_digits_holds_out_validation_data_and_times_numpy_for_the_ratio(tmp_path, capsys):
    pytest.importorskip("sklearn")
    path = tmp_path / "curves.png"
    assert cli.main(["digits", "--backends", FAST, "--epochs", "2", "--no-progress", "--plot", str(path)]) == 0
    out = capsys.readouterr().out
    assert "1145 training / 202 validation / 450 test images" in out
    row = next(line for line in out.splitlines() if line.startswith(f"| {FAST} |"))
    ratio = row.split("|")[5].strip()
    assert ratio.endswith("x") and np.isfinite(float(ratio[:-1])) and float(ratio[:-1]) > 0, row
    assert "(speed vs numpy: the numpy reference timed on 1 epoch, scaled to 2 epochs)" in out
    assert "nan" not in out
    if "no training-curve plot" not in out:
        assert path.stat().st_size > 1000


def test_train_digits_history_has_validation_curves():
    pytest.importorskip("sklearn")
    rows = cli.train_digits(["numpy"], epochs=2, progress=False, validation_fraction=0.2)
    history = rows[0]["history"].history
    assert len(history["val_loss"]) == 2 and len(history["val_accuracy"]) == 2
    assert rows[0]["n_val"] == 269 and rows[0]["n_train"] + rows[0]["n_val"] == 1347
    assert rows[0]["speedup"] == 1.0 and rows[0]["reference"] == "numpy"
    train, val = cli._validation_split(10, 0.3, 0)
    assert len(val) == 3 and sorted(np.concatenate([train, val])) == list(range(10))
    with pytest.raises(ValueError, match="validation_fraction"):
        cli.train_digits(["numpy"], epochs=1, validation_fraction=1.5)


def test_warmup_runs_every_family(capsys):
    """Every family's models train on the reference (quick here; on numba it compiles them)."""
    assert cli.main(["warmup", "--backends", "numpy"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[1].split("(")[0].strip() for line in lines[:-1]] == list(cli.WARMUP)
    assert lines[-1].startswith("numpy: ready (")
    assert set(cli.WARMUP) >= {"dense", "conv", "recurrent", "normalization", "attention",
                               "dropout-embedding", "optimizers", "kernels"}
