"""fastnn.losses.sample_weighted / class_weight_to_sample_weight / check_sample_weight against
torch (reduction="none", then the weighted mean; autograd for the gradient) in float64."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn import losses

torch = pytest.importorskip("torch")
F = torch.nn.functional

N, C = 9, 4


def ce_case(weight=None, label_smoothing=0.0, ignore_index=None, probs=False, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(N, C)) * 2
    if probs:
        y = rng.dirichlet(np.ones(C), N)
    else:
        y = rng.integers(0, C, N)
        if ignore_index is not None:
            y[[1, 5]] = ignore_index
    return z, y


CE_OPTIONS = [dict(), dict(weight=[0.5, 2.0, 1.0, 0.0]), dict(label_smoothing=0.2),
              dict(ignore_index=-100), dict(ignore_index=2),
              dict(weight=[0.5, 2.0, 1.0, 3.0], label_smoothing=0.3, ignore_index=-100)]


def torch_weighted(per_row, c, s):
    """sum s_i l_i / sum s_i c_i, l_i torch's reduction="none" loss."""
    s = torch.tensor(s)
    return (s * per_row).sum() / (s * torch.as_tensor(c)).sum()


def check(got, want_loss, zt):
    want_loss.backward()
    loss, grad = got
    assert abs(loss - want_loss.item()) < 1e-9
    assert grad.dtype == np.float64 and grad.shape == tuple(zt.shape)
    np.testing.assert_allclose(grad, zt.grad.numpy(), rtol=0, atol=1e-9)


@pytest.mark.parametrize("opts", CE_OPTIONS, ids=lambda o: ",".join(o) or "plain")
def test_cross_entropy_labels_against_torch(opts):
    z, y = ce_case(**opts)
    s = np.random.default_rng(1).uniform(0, 3, N)
    s[3] = 0.0
    zt = torch.tensor(z, requires_grad=True)
    w = None if "weight" not in opts else torch.tensor(opts["weight"], dtype=torch.float64)
    ii = opts.get("ignore_index")
    per = F.cross_entropy(zt, torch.tensor(y), weight=w, label_smoothing=opts.get("label_smoothing", 0.0),
                          ignore_index=-100 if ii is None else ii, reduction="none")
    kept = np.ones(N, bool) if ii is None else y != ii
    c = np.where(kept, 1.0 if w is None else np.asarray(opts["weight"])[np.where(kept, y, 0)], 0.0)
    check(losses.sample_weighted(losses.CrossEntropy(**opts), z, y, s), torch_weighted(per, c, s), zt)


@pytest.mark.parametrize("smoothing", [0.0, 0.25])
def test_cross_entropy_probabilities_against_torch(smoothing):
    z, q = ce_case(probs=True)
    s = np.random.default_rng(2).uniform(0, 3, N)
    zt = torch.tensor(z, requires_grad=True)
    per = F.cross_entropy(zt, torch.tensor(q), label_smoothing=smoothing, reduction="none")
    check(losses.sample_weighted(losses.CrossEntropy(label_smoothing=smoothing), z, q, s),
          torch_weighted(per, np.ones(N), s), zt)


VALUE_LOSSES = {
    "mse": (lambda: "mse", lambda a, b: F.mse_loss(a, b, reduction="none")),
    "l1": (lambda: "l1", lambda a, b: F.l1_loss(a, b, reduction="none")),
    "huber": (lambda: "huber", lambda a, b: F.huber_loss(a, b, reduction="none", delta=1.0)),
    "huber_0.3": (lambda: losses.Huber(delta=0.3), lambda a, b: F.huber_loss(a, b, reduction="none", delta=0.3)),
    "binary_cross_entropy": (lambda: losses.BinaryCrossEntropy(),
                             lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction="none")),
}


@pytest.mark.parametrize("name", sorted(VALUE_LOSSES))
@pytest.mark.parametrize("d", [1, 3])
def test_value_losses_against_torch(name, d):
    rng = np.random.default_rng(3 + d)
    z = rng.normal(size=(N, d)) * 2
    t = rng.uniform(size=(N, d)) if name == "binary_cross_entropy" else z + rng.normal(size=(N, d))
    t[0, 0] = z[0, 0]   # a zero difference: l1's gradient is 0 there, as torch's
    s = rng.uniform(0, 3, N)
    make, torch_loss = VALUE_LOSSES[name]
    zt = torch.tensor(z, requires_grad=True)
    per = torch_loss(zt, torch.tensor(t)).mean(dim=1)   # a row's loss: the mean over its columns
    check(losses.sample_weighted(make(), z, t, s), torch_weighted(per, np.ones(N), s), zt)


CASES = [("mse", None), ("l1", None), ("huber", None), ("binary_cross_entropy", None)] + \
    [("cross_entropy", o) for o in CE_OPTIONS]


@pytest.mark.parametrize("backend", fnn.backends())
@pytest.mark.parametrize("name,opts", CASES, ids=[f"{n}-{','.join(o or {}) or 'plain'}" for n, o in CASES])
def test_ones_equal_the_unweighted_loss(backend, name, opts):
    if name == "cross_entropy":
        z, y = ce_case(**opts)
    else:
        rng = np.random.default_rng(5)
        z = rng.normal(size=(N, 2))
        y = rng.uniform(size=(N, 2))
    loss = losses.get(name, **opts) if opts else name
    want = (loss(z, y, backend=backend) if opts else getattr(losses, name)(z, y, backend=backend))
    want_loss, want_grad = float(want[0]), fnn.get_backend(backend).to_host(want[1])
    for w in (None, np.ones(N)):
        got_loss, got_grad = losses.sample_weighted(loss, z, y, w)
        assert abs(got_loss - want_loss) < 1e-12
        np.testing.assert_allclose(got_grad, want_grad, rtol=0, atol=1e-12)


def test_scaling_weights_changes_nothing_and_float32_grad():
    z, y = ce_case(weight=[1, 2, 3, 4])
    s = np.random.default_rng(6).uniform(0.1, 2, N)
    lo = losses.CrossEntropy(weight=[1, 2, 3, 4])
    a, ga = losses.sample_weighted(lo, z, y, s)
    b, gb = losses.sample_weighted(lo, z, y, 7 * s)
    assert abs(a - b) < 1e-12 and np.allclose(ga, gb, atol=1e-14)
    _, g32 = losses.sample_weighted(lo, z.astype(np.float32), y, s)
    assert g32.dtype == np.float32 and np.allclose(g32, ga, atol=1e-5)


def test_a_batch_where_nothing_counts():
    z, y = ce_case(ignore_index=-100)
    loss, grad = losses.sample_weighted(losses.CrossEntropy(ignore_index=-100), z, y,
                                        np.where(y == -100, 1.0, 0.0))
    assert loss == 0.0 and not grad.any()
    loss, grad = losses.sample_weighted("mse", z, z + 1, np.zeros(N))
    assert loss == 0.0 and not grad.any()


def test_sample_weighted_bad_input():
    z, y = ce_case()
    for bad, match in [(np.ones(N - 1), r"shape \(9,\)"), (np.full(N, np.nan), "NaN"),
                       (-np.ones(N), ">= 0"), (np.ones((N, 1)), r"shape \(9,\)")]:
        with pytest.raises(ValueError, match=match):
            losses.sample_weighted("cross_entropy", z, y, bad)
    with pytest.raises(TypeError, match="booleans"):
        losses.sample_weighted("cross_entropy", z, y, np.ones(N, bool))
    with pytest.raises(ValueError, match="unknown loss 'mae'"):
        losses.sample_weighted("mae", z, y)
    with pytest.raises(TypeError, match="built-in loss"):
        losses.sample_weighted(losses.custom(lambda o, t: (0.0, o * 0)), z, y)
    with pytest.raises(TypeError, match="built-in loss"):
        losses.sample_weighted(lambda o, t: (0.0, o * 0), z, y)
    with pytest.raises(ValueError, match="targets have shape"):
        losses.sample_weighted("mse", z, z[:, :2])
    with pytest.raises(ValueError, match="NaN"):
        losses.sample_weighted("huber", z, np.full_like(z, np.nan))
    with pytest.raises(ValueError, match=r"must lie in \[0, 4\)"):
        losses.sample_weighted("cross_entropy", z, np.full(N, 4))
    with pytest.raises(ValueError, match="weight= with probability targets"):
        losses.sample_weighted(losses.CrossEntropy(weight=np.ones(C)), z, np.full((N, C), 0.25))
    with pytest.raises(ValueError, match="2-D"):
        losses.sample_weighted("mse", z.ravel(), z.ravel())
    # the plain functions fastnn.losses.<name> are accepted like their names
    assert losses.sample_weighted(losses.mse, z, z)[0] == 0.0


def test_check_sample_weight():
    assert losses.check_sample_weight([1, 0, 2], 3).dtype == np.float64
    with pytest.raises(ValueError, match="all zero"):
        losses.check_sample_weight(np.zeros(3), 3)
    assert not losses.check_sample_weight(np.zeros(3), 3, allow_all_zero=True).any()
    with pytest.raises(ValueError, match="inf"):
        losses.check_sample_weight([1, np.inf, 1], 3)
    with pytest.raises(TypeError, match="real numbers"):
        losses.check_sample_weight(["a", "b", "c"], 3)


# ---------------------------------------------------------------------- class_weight
def test_class_weight_dict_and_missing_classes():
    y = np.array([0, 1, 2, 2, 1, 0, 3])
    sw = losses.class_weight_to_sample_weight({0: 2.0, 2: 0.5}, y, 4)
    np.testing.assert_array_equal(sw, [2, 1, 0.5, 0.5, 1, 2, 1])
    np.testing.assert_array_equal(losses.class_weight_to_sample_weight({0: 2.0, 2: 0.5}, np.eye(4)[y], 4), sw)
    sw = losses.class_weight_to_sample_weight({1: 3}, np.array([[0.0], [1.0], [1.0]]), 1)   # one logit
    np.testing.assert_array_equal(sw, [1, 3, 3])
    sw = losses.class_weight_to_sample_weight({1: 3}, np.array([-100, 1, 0]), 2, ignore_index=-100)
    np.testing.assert_array_equal(sw, [1, 3, 1])


def test_class_weight_balanced_is_sklearn():
    utils = pytest.importorskip("sklearn.utils.class_weight")
    y = np.random.default_rng(0).choice(5, 50, p=[0.5, 0.3, 0.2, 0.0, 0.0])
    want = utils.compute_sample_weight("balanced", y)
    np.testing.assert_allclose(losses.class_weight_to_sample_weight("balanced", y, 5), want, rtol=1e-15)
    yi = np.concatenate([y, [-1, -1]])
    got = losses.class_weight_to_sample_weight("balanced", yi, 5, ignore_index=-1)
    np.testing.assert_allclose(got[:-2], want, rtol=1e-15)


def test_class_weight_bad_input():
    y = np.array([0, 1, 2])
    with pytest.raises(ValueError, match="class 3, but there are 3 classes"):
        losses.class_weight_to_sample_weight({3: 1.0}, y, 3)
    with pytest.raises(ValueError, match="finite and >= 0"):
        losses.class_weight_to_sample_weight({0: -1.0}, y, 3)
    with pytest.raises(ValueError, match="finite and >= 0"):
        losses.class_weight_to_sample_weight({0: np.nan}, y, 3)
    with pytest.raises(TypeError, match="integer classes"):
        losses.class_weight_to_sample_weight({"a": 1.0}, y, 3)
    with pytest.raises(TypeError, match="must be a number"):
        losses.class_weight_to_sample_weight({0: "x"}, y, 3)
    with pytest.raises(ValueError, match="'balanced'"):
        losses.class_weight_to_sample_weight("balance", y, 3)
    with pytest.raises(TypeError, match="dict"):
        losses.class_weight_to_sample_weight([1, 2, 3], y, 3)
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        losses.class_weight_to_sample_weight({0: 1.0}, np.array([0, 5]), 3)
    with pytest.raises(TypeError, match="n_classes"):
        losses.class_weight_to_sample_weight({0: 1.0}, y, 3.0)
