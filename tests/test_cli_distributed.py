"""`fastnn digits --distributed`: the flag, its misuse, and (where the mpi extra's mpiexec is
installed) a 2-rank run that prints once and trains as one process at the doubled batch."""
import os
import re
import shutil
import subprocess
import sys

import pytest

from fastnn import cli
from fastnn.backend import default_backend


def test_flag_parses_and_defaults_off():
    parser = cli._parser()
    assert parser.parse_args(["digits", "--distributed"]).distributed is True
    assert parser.parse_args(["digits"]).distributed is False


def test_help_mentions_it(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["digits", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--distributed" in text and "mpiexec -n N fastnn digits --distributed" in text
    assert "per rank" in text


def test_a_launched_process_without_the_flag_is_refused(monkeypatch, capsys):
    # `mpiexec -n 2 fastnn digits` would train twice, print twice and race on the plot file
    monkeypatch.setenv("PMI_SIZE", "2")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["digits", "--epochs", "1"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "one of 2 processes" in err and "--distributed" in err and len(err.splitlines()) == 1


def test_without_mpi4py_the_flag_says_what_to_install(monkeypatch, capsys):
    import importlib.util
    find_spec = importlib.util.find_spec
    for key in cli._LAUNCHER_SIZE:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mpi4py" else find_spec(name, *a))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["digits", "--distributed", "--epochs", "1"])
    assert exit_.value.code == 2
    assert "pip install 'fastnn[mpi]'" in capsys.readouterr().err


@pytest.mark.parametrize("env, size", [({}, 1), ({"PMI_SIZE": "4"}, 4), ({"OMPI_COMM_WORLD_SIZE": "3"}, 3),
                                       ({"PMI_SIZE": "junk"}, 1)])
def test_launcher_size(monkeypatch, env, size):
    for key in cli._LAUNCHER_SIZE:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cli._launcher_size() == size


def _mpiexec():
    """The mpi extra's mpiexec (beside this interpreter in a venv) or one on PATH, with mpi4py."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = here if os.access(here, os.X_OK) else shutil.which("mpiexec")
    if found is None:
        pytest.skip("no mpiexec: pip install '.[mpi]'")
    pytest.importorskip("mpi4py")
    return found


def _launch(tmp_path, ranks, *args):
    # The installed fastnn (a checkout on PYTHONPATH would lack the compiled Cython modules).
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    for key in cli._LAUNCHER_SIZE:   # a test run under a launcher must not leak its size here
        env.pop(key, None)
    cmd = [_mpiexec(), "-n", str(ranks), sys.executable, "-m", "fastnn", "digits", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def _accuracy(text, backend):
    return float(re.search(rf"^\| {backend} \| ([0-9.]+)% \|", text, re.M).group(1))


def test_two_ranks_print_once_and_match_one_process_at_twice_the_batch(tmp_path, capsys):
    backend = default_backend()
    common = ["--backends", backend, "--epochs", "2", "--dtype", "float64", "--no-progress"]
    run = _launch(tmp_path, 2, "--distributed", "--batch-size", "16", "--plot", str(tmp_path / "c.png"), *common)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("Digits MLP") == 1 and run.stdout.count("| backend |") == 1
    assert "batch 16 per rank x 2 ranks (global batch 32)" in run.stdout
    assert cli.main(["digits", "--batch-size", "32", "--plot", str(tmp_path / "one.png"), *common]) == 0
    one = capsys.readouterr().out
    # float64: the two runs differ by the order gradients are summed in, far below a flipped prediction
    assert abs(_accuracy(run.stdout, backend) - _accuracy(one, backend)) <= 100 / 450 + 1e-9


def test_a_bad_argument_exits_every_rank_with_status_2_and_one_message(tmp_path):
    run = _launch(tmp_path, 2, "--distributed", "--epochs", "1", "--backends", default_backend(),
                  "--plot", str(tmp_path / "no-such-folder" / "c.png"))
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stderr.count("does not exist") == 1, run.stderr
    assert "Digits" not in run.stdout
