"""Shared by the issue-10 activation, dropout and embedding tests (and their CUDA-simulator
twins): torch comparison of a one-layer model, and a float64 central-difference gradient check
that takes a backend name or a Backend object (the simulated cuda backend is private to its file)."""
import numpy as np

import fastnn as fnn
from seq_helpers import numeric_grad


def to_host(x):
    return x if isinstance(x, np.ndarray) else x.copy_to_host() if hasattr(x, "copy_to_host") else np.asarray(x)


def forward_backward(model, x, probe):
    """(y, dx, {param name: grad}) of sum(model(x) * probe)."""
    y = to_host(model.forward(x))
    model.zero_grad()
    dx = model.backward(probe, return_input_grad=True)
    return y, (None if dx is None else to_host(dx)), {p.name: to_host(p.grad).copy() for p in model.parameters()}


def gradcheck_model(model, x, probe, tol=1e-6, input_grad=True, eps=1e-6, before=None):
    """Every parameter's gradient (and the input's) of sum(model(x) * probe) against
    central differences in float64. Parameters are perturbed through state_dict /
    load_state_dict, so device-resident parameters (cuda) are checked the same way.
    before() runs before every forward (Dropout: rewind its RNG to fix the mask)."""
    before = before or (lambda: None)
    before()
    _, dx, grads = forward_backward(model, x, probe)

    def f():
        before()
        return float((to_host(model.forward(x)) * probe).sum())
    state = model.state_dict()
    cases = [(p.name, grads[p.name]) for p in model.parameters()]
    for name, analytic in cases:
        value, numeric = state[name], np.zeros_like(state[name])
        for i in range(value.size):
            old = value.flat[i]
            for sign in (1, -1):
                value.flat[i] = old + sign * eps
                model.load_state_dict(state)
                numeric.flat[i] += sign * f() / (2 * eps)
            value.flat[i] = old
        model.load_state_dict(state)
        _assert_close(name, analytic, numeric, tol)
    if input_grad:
        _assert_close("x", dx, numeric_grad(f, x), tol)
    assert cases or input_grad


def _assert_close(name, analytic, numeric, tol):
    err = np.abs(analytic - numeric) / np.maximum(1.0, np.abs(numeric))
    assert err.max() <= tol, f"{name}: max relative error {err.max():.3g}"
