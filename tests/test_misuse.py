"""Random sequences of the stateful API (forward, backward, predict, zero_grad, step,
layers called alone, wrong shapes and dtypes) run in a subprocess on each backend,
beside a numpy-backend twin that gets the same calls. None may end by a signal or a
hang; every call either works or raises ValueError/TypeError, the same on both;
and the weights end equal to the twin's (no silent wrong number)."""
import json
import os
import subprocess
import sys
import tempfile
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import fastnn as fnn

OPS = ["forward", "forward_small", "forward_wide", "forward_f32", "forward_int", "forward_nan",
       "forward_1d", "backward", "backward_wide", "backward_long", "backward_f32", "backward_str",
       "backward_list", "predict", "predict_bad", "zero_grad", "sgd", "adam", "step_bad",
       "layer_alone", "layer_alone_f32", "layer_forward_no_ctx", "eval", "train", "evaluate",
       "evaluate_bad_batch", "predict_thread"]

SCRIPT = textwrap.dedent(r"""
    import json, sys, threading
    import numpy as np
    import fastnn as fnn
    L = fnn.layers
    backend, sequences = sys.argv[1], json.loads(sys.argv[2])

    def build(name):
        return fnn.Sequential(L.Dense(4, 8), L.ReLU(), L.Residual(L.Dense(8, 8), L.Tanh()), L.Dense(8, 3),
                              backend=name, dtype="float64", seed=0)

    def run(model, opts, op, rng_seed):
        rng = np.random.default_rng(rng_seed)
        x = rng.standard_normal((6, 4))
        if op == "forward": return model.forward(x)
        if op == "forward_small": return model.forward(x[:1])
        if op == "forward_wide": return model.forward(rng.standard_normal((6, 5)))
        if op == "forward_f32": return model.forward(x.astype(np.float32))
        if op == "forward_int": return model.forward((x * 3).astype(np.int64))
        if op == "forward_nan": x[2, 1] = np.nan; return model.forward(x)
        if op == "forward_1d": return model.forward(x[0])
        if op == "backward": return model.backward(rng.standard_normal((6, 3)))
        if op == "backward_wide": return model.backward(np.ones((6, 50000)))
        if op == "backward_long": return model.backward(np.ones((40000, 3)))
        if op == "backward_f32": return model.backward(rng.standard_normal((6, 3)).astype(np.float32))
        if op == "backward_str": return model.backward(np.full((6, 3), "x"))
        if op == "backward_list": return model.backward([[1.0, 2.0, 3.0]] * 6)
        if op == "predict": return model.predict(x)
        if op == "predict_bad": return model.predict(np.ones((3, 7)))
        if op == "zero_grad": return model.zero_grad()
        if op == "sgd": return opts["sgd"].step(model.parameters())
        if op == "adam": return opts["adam"].step(model.parameters())
        if op == "step_bad":
            return opts["sgd"].step([fnn.Parameter("w", np.ones(4_000_000), np.ones(10))])
        if op == "layer_alone": return model.layers[0](x)
        if op == "layer_alone_f32": return model.layers[0](x.astype(np.float32))
        if op == "layer_forward_no_ctx": return model.layers[0].forward(x)
        if op == "eval": return model.eval()
        if op == "train": return model.train()
        if op == "evaluate":
            return fnn.Trainer(model, optimizer=opts["sgd"]).evaluate(x, rng.integers(0, 3, 6))
        if op == "evaluate_bad_batch":
            return fnn.Trainer(model, optimizer=opts["sgd"]).evaluate(x, rng.integers(0, 3, 6), batch_size=-1)
        if op == "predict_thread":
            out = []
            t = threading.Thread(target=lambda: out.append(model.predict(x)))
            t.start(); t.join(30)
            assert out and out[0].shape == (6, 3), "predict in a thread failed"
            return out[0]
        raise AssertionError(op)

    for sequence in sequences:
        model, twin = build(backend), build("numpy")
        opts = {m: {"sgd": fnn.optim.SGD(lr=0.01, momentum=0.9), "adam": fnn.optim.Adam(lr=0.01)}
                for m in ("model", "twin")}
        for step, op in enumerate(sequence):
            outcome = []
            for m, key in ((model, "model"), (twin, "twin")):
                try:
                    result = run(m, opts[key], op, step)
                    outcome.append(("ok", result))
                except (ValueError, TypeError) as exc:
                    outcome.append((type(exc).__name__, str(exc)))
            (a, ra), (b, rb) = outcome
            assert a == b, f"{op}: {backend} gave {a} ({ra}), numpy gave {b} ({rb})"
            if a == "ok" and isinstance(ra, np.ndarray):
                assert np.allclose(ra, rb, rtol=1e-7, atol=1e-9), f"{op}: outputs differ"
        wa, wb = model.parameters().flat_data, twin.parameters().flat_data
        assert np.isfinite(wa).all(), "weights became non-finite"
        assert np.allclose(wa, wb, rtol=1e-7, atol=1e-9), f"{sequence}: weights differ from numpy's"
    print("OK", len(sequences))
""")

BACKENDS = [b for b in fnn.backends() if b in ("numpy", "numba", "cython")]
# The children import the fastnn under test (not a source tree without built modules).
HERE = tempfile.gettempdir()
ENV = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(fnn.__file__))))
sequences = st.lists(st.lists(st.sampled_from(OPS), min_size=1, max_size=14), min_size=1, max_size=8)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seqs=sequences)
def test_random_api_sequences_never_crash(backend, seqs):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, backend, json.dumps(seqs)],
                          capture_output=True, text=True, timeout=180, cwd=HERE, env=ENV)
    assert proc.returncode >= 0, f"killed by signal {-proc.returncode}: {proc.stderr[-2000:]}"
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_the_harness_catches_a_crash():
    """The check above can fail: a subprocess killed by a signal is reported as one."""
    proc = subprocess.run([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"],
                          capture_output=True, timeout=60)
    assert proc.returncode < 0
