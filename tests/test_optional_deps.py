"""fastnn imports and trains without scikit-learn, onnx and matplotlib; the features
that need them say what to install."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)

SCRIPT = textwrap.dedent("""
    import sys
    for name in ("sklearn", "onnx", "onnxruntime", "matplotlib", "scipy"):
        sys.modules[name] = None          # any import of them raises ImportError
    import numpy as np
    import fastnn as fnn
    X = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    model = fnn.Sequential(fnn.layers.Dense(4, 3), seed=0)
    history = fnn.Trainer(model).fit(X, np.arange(32) % 3, epochs=1, batch_size=8, progress=False)
    for call, hint in ((lambda: history.plot("x.png"), "fastnn[plot]"),
                       (lambda: model.export_onnx("x.onnx"), "fastnn[onnx]"),
                       (lambda: __import__("fastnn.sklearn"), "fastnn[sklearn]")):
        try:
            call()
        except ImportError as exc:
            assert hint in str(exc), exc
        else:
            raise AssertionError("no ImportError")
    assert not any(m in sys.modules and sys.modules[m] is not None
                   for m in ("sklearn", "onnx", "matplotlib"))
    print("ok")
""")


def test_import_without_optional_packages(tmp_path):
    path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         cwd=tmp_path, env=dict(os.environ, PYTHONPATH=path))
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
