"""fastnn/_malloc.py: the glibc heap settings the compiled CPU backends apply, and the opt-out."""
import subprocess
import sys

import pytest

from fastnn import _malloc


def _run(code, env_value):
    import os
    env = dict(os.environ, FASTNN_MALLOC_TUNING=env_value)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return out.stdout.strip()


def test_tune_is_idempotent_and_boolean():
    first = _malloc.tune()
    assert isinstance(first, bool)
    assert _malloc.tune() is first


def test_opt_out_leaves_malloc_alone():
    assert _run("from fastnn import _malloc; print(_malloc.tune())", "0") == "False"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_applied_on_linux_glibc():
    import platform
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert _run("from fastnn import _malloc; print(_malloc.tune())", "1") == "True"
