"""A loss declares its targets: losses.target_kind / is_classifier, losses.custom, Loss subclasses."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn import losses

L = fnn.layers


def softmax_ce(out, y):
    """A hand-written cross-entropy on integer labels: (mean loss, gradient)."""
    z = out - out.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    n = len(y)
    loss = -np.log(p[np.arange(n), y]).mean()
    g = p.copy()
    g[np.arange(n), y] -= 1
    return loss, g / n


def half_mse(out, y):
    d = out - y
    return 0.5 * float((d * d).mean()), d / d.size


@pytest.mark.parametrize("name,kind,classifier", [
    ("cross_entropy", "labels", True), ("binary_cross_entropy", "values", True),
    ("mse", "values", False), ("huber", "values", False), ("l1", "values", False)])
def test_builtin_names_and_objects(name, kind, classifier):
    assert losses.target_kind(name) == kind and losses.is_classifier(name) is classifier
    obj = losses.Huber(delta=0.5) if name == "huber" else losses.LOSSES[name]()
    assert losses.target_kind(obj) == kind and losses.is_classifier(obj) is classifier
    fn = getattr(losses, name)   # the built-in function itself is its name, not a plain callable
    assert losses.target_kind(fn) == kind and losses.is_classifier(fn) is classifier


def test_plain_callables_are_values():
    def cross_entropy(out, y):   # the same __name__ as a built-in: no longer a way to declare labels
        return softmax_ce(out, y)
    assert losses.target_kind(cross_entropy) == "values" and not losses.is_classifier(cross_entropy)
    assert losses.target_kind(half_mse) == "values"


def test_every_loss_name_is_declared():
    undeclared = [n for n in losses.NAMES if n not in losses._FAMILY]
    assert not undeclared, f"add {undeclared} to fastnn.losses._FAMILY (targets, classifier)"
    with pytest.raises(ValueError, match="unknown loss"):
        losses.target_kind("cross_entropy_weighted")   # an option kernel, not a loss name


def test_options_keep_the_kind():
    assert losses.target_kind(losses.CrossEntropy(label_smoothing=0.1, ignore_index=-100)) == "labels"
    assert losses.is_classifier(losses.Huber(delta=2.0)) is False


def test_custom_declares_its_targets():
    ce = losses.custom(softmax_ce, targets="labels")
    assert isinstance(ce, losses.Loss) and ce.name == "softmax_ce"
    assert losses.target_kind(ce) == "labels" and losses.is_classifier(ce)
    reg = losses.custom(half_mse, targets="values", name="half")
    assert reg.name == "half" and losses.target_kind(reg) == "values" and not losses.is_classifier(reg)
    sig = losses.custom(half_mse, targets="values", classifier=True)
    assert losses.is_classifier(sig) and losses.target_kind(sig) == "values"
    rng = np.random.default_rng(0)
    out, y = rng.normal(size=(6, 3)), rng.integers(0, 3, 6)
    loss, grad = ce(out, y)
    want = losses.cross_entropy(out, y, backend="numpy")
    assert isinstance(loss, float) and abs(loss - want[0]) < 1e-12
    np.testing.assert_allclose(grad, want[1], atol=1e-12)
    fn = ce.bind("numpy")
    assert fn(out, y)[0] == loss
    _, g32 = ce(out.astype(np.float32), y)
    assert g32.dtype == np.float32


def test_loss_subclass_with_kernel():
    class Focal(losses.Loss):
        name = "focal"
        targets = "labels"

        def kernel(self, out, y):
            return softmax_ce(out, y)
    f = Focal()
    assert losses.target_kind(f) == "labels" and losses.is_classifier(f)
    out, y = np.eye(3) * 2, np.array([0, 1, 2])
    assert f(out, y)[0] == pytest.approx(softmax_ce(out, y)[0])

    class NoKind(losses.Loss):
        name = "mine"

        def kernel(self, out, y):
            return half_mse(out, y)
    assert losses.target_kind(NoKind()) == "values" and not losses.is_classifier(NoKind())


def test_sklearn_loss_declares_its_kind():
    sk = pytest.importorskip("fastnn.sklearn")
    raw = fnn.get_backend("numpy").raw
    clf = sk._Loss("cross_entropy", raw.cross_entropy, [], 0.0, "labels", True)
    reg = sk._Loss("mse", raw.mse, [], 0.0, "values", False, loss_scale=0.5, grad_scale=0.5)
    assert not hasattr(clf, "__name__") or clf.__name__ != "cross_entropy"
    assert losses.target_kind(clf) == "labels" and losses.is_classifier(clf)
    assert losses.target_kind(reg) == "values" and not losses.is_classifier(reg)


def test_bad_custom_losses():
    with pytest.raises(TypeError, match="callable"):
        losses.custom(3)
    with pytest.raises(ValueError, match="targets must be one of"):
        losses.custom(half_mse, targets="classes")
    with pytest.raises(TypeError, match="name"):
        losses.custom(half_mse, targets="values", name="")
    with pytest.raises(TypeError, match="classifier"):
        losses.custom(half_mse, targets="values", classifier="yes")
    with pytest.raises(ValueError, match="unknown loss 'crossentropy'"):
        losses.target_kind("crossentropy")
    with pytest.raises(TypeError, match="a loss is"):
        losses.is_classifier(3)
    bad = losses.custom(lambda o, y: (0.0, o[:, :1]), targets="values", name="bad")
    with pytest.raises(ValueError, match=r"loss 'bad' returned a gradient of shape \(4, 1\)"):
        bad(np.zeros((4, 2)), np.zeros((4, 2)))

    class Wrong(losses.Loss):
        name = "wrong"
        targets = "ints"

        def kernel(self, out, y):
            return half_mse(out, y)
    with pytest.raises(ValueError, match="declares targets='ints'"):
        losses.target_kind(Wrong())


def _data(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(60, 4))
    return X, (X[:, 0] + X[:, 1] > 0).astype(np.int64)


def test_custom_values_loss_trains():
    X, y = _data()
    model = fnn.Sequential(L.Dense(4, 1), backend="numpy", dtype="float64", seed=0)
    t = X[:, :1] * 2.0
    trainer = fnn.Trainer(model, loss=losses.custom(half_mse, targets="values"),
                          optimizer=fnn.optim.SGD(lr=0.1))
    history = trainer.fit(X, t, epochs=5, batch_size=20, progress=False)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert "accuracy" not in history.history


def test_custom_labels_loss_reads_labels_and_reports_accuracy():
    X, y = _data()
    model = fnn.Sequential(L.Dense(4, 2), backend="numpy", dtype="float64", seed=0)
    trainer = fnn.Trainer(model, loss=losses.custom(softmax_ce, targets="labels"),
                          optimizer=fnn.optim.SGD(lr=0.5))
    history = trainer.fit(X, y, epochs=10, batch_size=20, progress=False)
    assert history.history["accuracy"][-1] > 0.8
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\)"):
        trainer.fit(X, y + 5, epochs=1, progress=False)
