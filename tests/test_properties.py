"""Property test: random shapes and dtypes at every public kernel entry point of
every backend give the reference's result or a clean ValueError/TypeError."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastnn as fnn
from fastnn._kernels import reference

DTYPES = ["float32", "float64", "int64", "int32", "bool", "complex128", "str", "object", "float16"]
# The conv, pooling and recurrent kernels have their own: tests/test_seq_properties.py.
_SEQ = {n for k in reference.CONV + reference.RECURRENT for n in (k, k + "_backward")}
KERNELS = tuple(k for k in reference.KERNELS if k not in _SEQ)


def _shapes(kernel, m, k, n):
    """Argument shapes that a kernel accepts, plus its scalar arguments."""
    act = {a: ([(m, n)], {}) for a in reference.ACTIVATIONS}
    act.update({a + "_backward": ([(m, n)] * 3, {}) for a in reference.ACTIVATIONS})
    table = {
        "matmul": ([(m, k), (k, n)], {}), "bias_add": ([(m, n), (n,)], {}), "bias_grad": ([(m, n)], {}),
        "linear": ([(m, k), (n, k), (n,)], {}), "linear_backward": ([(m, n), (m, k), (n, k)], {}),
        "linear_act": ([(m, k), (n, k), (n,)], {"activation": "tanh"}),
        "linear_backward_into": ([(m, n), (m, k), (n, k), (n, k), (n,)], {}),
        "mse": ([(m, n)] * 2, {}), "binary_cross_entropy": ([(m, n)] * 2, {}),
        "cross_entropy": ([(m, n), "labels"], {}),
        "sgd_step": ([(k,)] * 3, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
        "adam_step": ([(k,)] * 4, {"lr": 0.1, "beta1": 0.9, "beta2": 0.99, "eps": 1e-8,
                                   "weight_decay": 0.0, "t": 3}),
        # issue 10 (optim): more losses and optimizers
        "huber": ([(m, n)] * 2, {"delta": 0.7}), "l1": ([(m, n)] * 2, {}),
        "cross_entropy_weighted": ([(m, n), "labels", (n,)], {"label_smoothing": 0.1, "ignore_index": -100}),
        "adamw_step": ([(k,)] * 4, {"lr": 0.1, "beta1": 0.9, "beta2": 0.99, "eps": 1e-8,
                                    "weight_decay": 0.01, "t": 3}),
        "rmsprop_step": ([(k,)] * 5, {"lr": 0.01, "alpha": 0.9, "eps": 1e-8, "weight_decay": 0.01,
                                      "momentum": 0.9, "centered": False}),
        "adagrad_step": ([(k,)] * 3, {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.0, "eps": 1e-10, "t": 2}),
        "grad_norm": ([(k,)], {"norm_type": 2.0}), "grad_scale": ([(k,)], {"factor": 0.5}),
    }
    table.update(act)
    table.update({   # issue 10 (acts): dropout and embedding
        "dropout": ([(m, n)], {"p": 0.3, "seed": 7}), "dropout_backward": ([(m, n), ("mask", (m, n))], {"p": 0.3}),
        "embedding": ([(n, k), ("indices", m, n)], {}),
        "embedding_backward_into": ([(m, k), ("indices", m, n), (n, k)], {"padding_idx": -1})})
    table.update({   # issue 10: normalization and attention ((N, C, S) layouts; one head keeps any width)
        "layer_norm": ([(m, n), (n,), (n,)], {"eps": 1e-5}),
        "layer_norm_backward": ([(m, n), (m, n), (m,), ("positive", (m,)), (n,)], {}),
        "batch_norm": ([(m, k, n), (k,), (k,), (k,), ("positive", (k,))], {"momentum": 0.1, "training": True}),
        "batch_norm_backward": ([(m, k, n), (m, k, n), (k,), ("positive", (k,)), (k,)], {"training": True}),
        "batch_norm_relu": ([(m, k, n), (k,), (k,), (k,), ("positive", (k,))], {"momentum": 0.1, "training": True}),
        "batch_norm_relu_backward": ([(m, k, n), (m, k, n), (m, k, n), (k,), ("positive", (k,)), (k,)],
                                     {"training": True}),
        "global_avgpool": ([(m, k, n)], {}), "global_avgpool_backward": ([(m, k), (m, k, n)], {}),
        "attention": ([(m, k, n), (m, k, n), (m, k, n), None], {"num_heads": 1, "causal": True}),
        "attention_backward": ([(m, k, n), (m, k, n), (m, k, n), (m, k, n), ("positive", (m, 1, k, k))],
                               {"num_heads": 1})})
    return table[kernel]


@st.composite
def kernel_calls(draw):
    kernel = draw(st.sampled_from(KERNELS))
    m, k, n = (draw(st.integers(1, 9)) for _ in range(3))
    shapes, scalars = _shapes(kernel, m, k, n)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    args = []
    for shape in shapes:
        if shape is None:   # an optional array left out (attention's mask)
            args.append(None)
            continue
        if shape[0] == "positive":   # variances, probabilities, reciprocal deviations
            args.append(rng.uniform(0.1, 2.0, shape[1]).astype(draw(st.sampled_from(DTYPES[:2]))))
            continue
        if shape == "labels":
            args.append(rng.integers(0, n, m))
            continue
        if shape[0] == "mask":
            args.append(rng.integers(0, 2, shape[1]).astype(np.uint8))
            continue
        if shape[0] == "indices":
            args.append(rng.integers(0, shape[2], shape[1]))
            continue
        if draw(st.integers(0, 4)) == 0:   # now and then, a wrong shape
            shape = tuple(draw(st.lists(st.integers(0, 9), min_size=0, max_size=3)))
        value = np.asarray(rng.standard_normal(shape) * 3)
        dtype = draw(st.sampled_from(DTYPES[:2] * 4 + DTYPES[2:]))   # mostly floats
        if (kernel in ("adam_step", "adamw_step") and len(args) == 3) or (
                kernel in ("rmsprop_step", "adagrad_step", "cross_entropy_weighted") and len(args) == 2):
            value = np.abs(value)   # second moments, squared sums and class weights are never negative
        value = np.asarray(value.astype(dtype))   # a 0-d cast may give a scalar
        if value.ndim == 2 and draw(st.booleans()):
            value = np.asfortranarray(value)    # non-contiguous / transposed layouts
        args.append(value)
    if kernel in ("cross_entropy", "cross_entropy_weighted") and draw(st.booleans()):
        args[1] = args[1] + draw(st.sampled_from([-1, n, 0]))   # maybe out of range
    return kernel, args, scalars


def _call(backend, kernel, args, scalars):
    args = [a.copy() if isinstance(a, np.ndarray) else a for a in args]   # in-place kernels
    try:
        result = getattr(backend, kernel)(*args, **scalars)
    except (ValueError, TypeError) as exc:
        assert str(exc), "exceptions must say what is wrong"
        return "error", type(exc)
    return "ok", (result, args)


def _as_list(result):
    if result is None:
        return []
    if isinstance(result, tuple):
        return [r for r in result if r is not None]
    return [result]


@pytest.mark.parametrize("name", fnn.backends())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(call=kernel_calls())
def test_kernel_entry_points(name, call):
    kernel, args, scalars = call
    backend, numpy_backend = fnn.get_backend(name), fnn.get_backend("numpy")
    got, want = _call(backend, kernel, args, scalars), _call(numpy_backend, kernel, args, scalars)
    assert got[0] == want[0], f"{name} {kernel}: {got} but the reference gave {want}"
    if got[0] == "error":
        assert got[1] is want[1]
        return
    (result, mutated), (ref_result, ref_mutated) = got[1], want[1]
    outputs = _as_list(result) + [a for a in mutated if isinstance(a, np.ndarray)]
    expected = _as_list(ref_result) + [a for a in ref_mutated if isinstance(a, np.ndarray)]
    for out, exp in zip(outputs, expected):
        out, exp = np.asarray(out, dtype=np.float64), np.asarray(exp, dtype=np.float64)
        assert out.shape == exp.shape
        np.testing.assert_allclose(out, exp, rtol=2e-3, atol=2e-3, err_msg=f"{name} {kernel}")
