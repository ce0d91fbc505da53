"""scikit-learn estimators trained by fastnn: MLPClassifier and MLPRegressor.

Drop-in replacements for ``sklearn.neural_network.MLPClassifier`` /
``MLPRegressor`` with the same parameters and meanings (solvers 'sgd' and
'adam'), the same fitted attributes (``coefs_`` and ``intercepts_`` in
scikit-learn's (in, out) layout, ``loss_curve_``, ``n_iter_``, ``classes_``,
``best_loss_``, ...) and the same training loop (Glorot-uniform initialisation
drawn from ``random_state`` as scikit-learn draws it, L2 penalty
``alpha / (2 * batch) * sum ||W||^2`` on the weights only, ``tol`` /
``n_iter_no_change`` stopping, early stopping on a held-out fraction, the
'invscaling' and 'adaptive' learning-rate schedules). The work is done by a
fastnn ``Sequential`` trained by ``Trainer`` with fastnn's SGD/Adam kernels, in
``dtype`` (float32 by default) on ``backend`` (fastnn's default when None).

Differences from scikit-learn: no 'lbfgs' solver, no ``sample_weight``, no
'poisson' loss; SGD and Adam follow PyTorch's update rules (the same steps for a
constant learning rate; Adam's ``epsilon`` sits outside the bias correction).

    from fastnn.sklearn import MLPClassifier
    clf = MLPClassifier(hidden_layer_sizes=(100,), max_iter=50, random_state=0).fit(X, y)
    clf.predict(X_test), clf.predict_proba(X_test), clf.score(X_test, y_test)
"""
import numbers
import warnings

import numpy as np

try:
    import scipy.sparse as _sparse
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import LabelBinarizer
    from sklearn.utils import check_random_state
    from sklearn.utils._param_validation import Interval, Options, StrOptions
    from sklearn.utils.multiclass import _check_partial_fit_first_call, type_of_target, unique_labels
    from sklearn.utils.validation import check_is_fitted, column_or_1d
except ImportError as exc:  # pragma: no cover - exercised only without scikit-learn
    raise ImportError("fastnn.sklearn needs scikit-learn: pip install 'fastnn[sklearn]'") from exc

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - older scikit-learn
    def _validate_data(estimator, *args, **kwargs):
        return estimator._validate_data(*args, **kwargs)

from . import layers, losses, optim
from .backend import BackendUnavailable, get_backend
from .model import Sequential
from .trainer import Callback, Trainer

__all__ = ["MLPClassifier", "MLPRegressor"]

_ACTIVATIONS = {"identity": None, "logistic": layers.Sigmoid, "tanh": layers.Tanh, "relu": layers.ReLU}


# ------------------------------------------------------------------ helpers
class _Loss(losses.Loss):
    """The Trainer's loss: a backend kernel scaled to scikit-learn's definition,
    plus the L2 penalty 0.5 * alpha * sum ||W||^2 / batch. It declares its targets
    (class labels for the softmax output, values for the logistic and identity ones)
    and whether it is a classifier, as every fastnn Loss does (losses.target_kind,
    losses.is_classifier); ``name`` is the family of the kernel it scales."""

    def __init__(self, name, kernel, weights, alpha, targets, classifier, loss_scale=1.0, grad_scale=1.0):
        self.name, self.targets, self.classifier = name, targets, classifier
        self.raw_kernel, self.weights, self.alpha = kernel, weights, alpha
        self.loss_scale, self.grad_scale = loss_scale, grad_scale
        self.batch = 1

    def kernel(self, out, target):
        loss, grad = self.raw_kernel(out, target)
        self.batch = n = out.shape[0]
        if self.grad_scale != 1.0:
            grad = grad * grad.dtype.type(self.grad_scale)
        loss = loss * self.loss_scale
        if self.alpha:
            loss += 0.5 * self.alpha * sum(float(np.dot(w.data.ravel(), w.data.ravel()))
                                           for w in self.weights) / n
        return loss, grad


class _Penalized(optim.Optimizer):
    """Adds alpha * W / batch to each weight's gradient (scikit-learn's L2 term:
    weights only, not intercepts), then steps the wrapped fastnn optimizer."""

    def __init__(self, inner, weights, alpha, loss):
        super().__init__()
        self.inner, self.weights, self.alpha, self.loss = inner, weights, alpha, loss

    def step(self, params):
        if self.alpha:
            coef = self.alpha / self.loss.batch
            for w in self.weights:
                w.grad += w.grad.dtype.type(coef) * w.data
        self.inner.step(params)
        self.iterations = self.inner.iterations


class _SklearnLoop(Callback):
    """scikit-learn's per-iteration bookkeeping, run at the end of each epoch."""

    def __init__(self, est, trainer, n_samples, X_val, y_val):
        self.est, self.trainer, self.n_samples = est, trainer, n_samples
        self.X_val, self.y_val = X_val, y_val
        self.stopped = False

    def on_epoch_end(self, epoch, logs):
        est = self.est
        est.n_iter_ += 1
        est.loss_ = float(logs["loss"])
        est.t_ += self.n_samples
        est.loss_curve_.append(est.loss_)
        if est.verbose:
            print("Iteration %d, loss = %.8f" % (est.n_iter_, est.loss_))
        est._update_no_improvement_count(self.X_val, self.y_val)
        inner = est._optimizer
        if est.solver == "sgd" and est.learning_rate == "invscaling":
            inner.lr = float(est.learning_rate_init) / (est.t_ + 1) ** est.power_t
        if est._no_improvement_count > est.n_iter_no_change:
            what = "Validation score" if est.early_stopping else "Training loss"
            msg = ("%s did not improve more than tol=%f for %d consecutive epochs."
                   % (what, est.tol, est.n_iter_no_change))
            if est.solver == "sgd" and est.learning_rate == "adaptive" and inner.lr > 1e-6:
                inner.lr /= 5.0
                if est.verbose:
                    print(msg + " Setting learning rate to %f" % inner.lr)
                est._no_improvement_count = 0
            else:
                if est.verbose:
                    extra = " Learning rate too small." if est.learning_rate == "adaptive" and est.solver == "sgd" else ""
                    print(msg + extra + " Stopping.")
                self.stopped = True
                self.trainer.stop_training = True


def _rebind_optimizer_state(optimizer, flat):
    """Point an optimizer's state (kept per parameter buffer) at a rebuilt model's buffer."""
    if optimizer is None:
        return
    entries = list(optimizer._state.values())
    optimizer._state = {}
    if entries:
        optimizer._state[id(flat)] = (flat, entries[0][1])


# ------------------------------------------------------------------ base
class _BaseMLP(BaseEstimator):
    _parameter_constraints: dict = {
        "hidden_layer_sizes": ["array-like", Interval(numbers.Integral, 1, None, closed="left")],
        "activation": [StrOptions({"identity", "logistic", "tanh", "relu"})],
        "solver": [StrOptions({"sgd", "adam"})],
        "alpha": [Interval(numbers.Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(numbers.Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
        "learning_rate_init": [Interval(numbers.Real, 0, None, closed="neither")],
        "power_t": [Interval(numbers.Real, 0, None, closed="left")],
        "max_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(numbers.Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(numbers.Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(numbers.Real, 0, 1, closed="left")],
        "beta_1": [Interval(numbers.Real, 0, 1, closed="left")],
        "beta_2": [Interval(numbers.Real, 0, 1, closed="left")],
        "epsilon": [Interval(numbers.Real, 0, None, closed="neither")],
        "n_iter_no_change": [Interval(numbers.Integral, 1, None, closed="left"), Options(numbers.Real, {np.inf})],
        "backend": [None, str],
        "dtype": [StrOptions({"float32", "float64"}), type, np.dtype],
    }

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
                 backend=None, dtype="float32"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.backend = backend
        self.dtype = dtype

    # ------------------------------------------------------- fitted parameters
    def __sklearn_is_fitted__(self):
        return hasattr(self, "_model")

    def _dense_layers(self):
        return [layer for layer in self._model.layers if isinstance(layer, layers.Dense)]

    @property
    def coefs_(self):
        """Weight matrices in scikit-learn's (n_in, n_out) layout: views of the model's weights."""
        if not hasattr(self, "_model"):
            raise AttributeError("coefs_: the estimator is not fitted yet")
        return [layer.params["weight"].T for layer in self._dense_layers()]

    @coefs_.setter
    def coefs_(self, values):
        for layer, value in zip(self._dense_layers(), values, strict=True):
            layer.params["weight"][...] = np.asarray(value).T

    @property
    def intercepts_(self):
        """Bias vectors, one per layer: views of the model's biases."""
        if not hasattr(self, "_model"):
            raise AttributeError("intercepts_: the estimator is not fitted yet")
        return [layer.params["bias"] for layer in self._dense_layers()]

    @intercepts_.setter
    def intercepts_(self, values):
        for layer, value in zip(self._dense_layers(), values, strict=True):
            layer.params["bias"][...] = np.asarray(value)

    @property
    def model_(self):
        """The fastnn Sequential that holds the weights (outputs: logits / raw values)."""
        if not hasattr(self, "_model"):
            raise AttributeError("model_: the estimator is not fitted yet")
        return self._model

    # ----------------------------------------------------------- building
    def _build_model(self, layer_units, activation, backend, dtype):
        act = _ACTIVATIONS[activation]
        stack = []
        for i in range(len(layer_units) - 1):
            stack.append(layers.Dense(layer_units[i], layer_units[i + 1]))
            if act is not None and i < len(layer_units) - 2:
                stack.append(act())
        return Sequential(*stack, backend=backend, dtype=dtype, seed=0)

    def _initialize(self, Y, layer_units):
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = Y.shape[1]
        self.n_layers_ = len(layer_units)
        if not is_classifier(self):
            self.out_activation_ = "identity"
        elif self._label_binarizer.y_type_ == "multiclass":
            self.out_activation_ = "softmax"
        else:
            self.out_activation_ = "logistic"
        self._layer_units = list(layer_units)
        self._activation = self.activation
        self._model = self._build_model(layer_units, self.activation, self.backend, self.dtype)
        if not isinstance(self._model.parameters().flat_data, np.ndarray):
            raise ValueError(f"fastnn.sklearn estimators train on the CPU backends; backend "
                             f"{self._model.backend.name!r} keeps its weights on a device")
        # Glorot uniform, drawn in scikit-learn's order from its random state.
        factor = 2.0 if self.activation == "logistic" else 6.0
        for layer, fan_in, fan_out in zip(self._dense_layers(), layer_units[:-1], layer_units[1:]):
            bound = np.sqrt(factor / (fan_in + fan_out))
            layer.params["weight"][...] = self._random_state.uniform(-bound, bound, (fan_in, fan_out)).T
            layer.params["bias"][...] = self._random_state.uniform(-bound, bound, fan_out)
        self._best_params = self._model.parameters().flat_data.copy()
        self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
        else:
            self.best_loss_ = np.inf
            self.validation_scores_ = None
            self.best_validation_score_ = None

    def _make_optimizer(self):
        if self.solver == "sgd":
            momentum = float(self.momentum)
            return optim.SGD(lr=self.learning_rate_init, momentum=momentum,
                             nesterov=bool(self.nesterovs_momentum) and momentum > 0)
        return optim.Adam(lr=self.learning_rate_init, betas=(self.beta_1, self.beta_2), eps=self.epsilon)

    def _make_loss(self, weights):
        raw = self._model.backend.raw
        n_out = self.n_outputs_
        if self.out_activation_ == "softmax":
            return _Loss("cross_entropy", raw.cross_entropy, weights, self.alpha, "labels", True)
        if self.out_activation_ == "logistic":
            # scikit-learn sums over the outputs and averages over the samples.
            return _Loss("binary_cross_entropy", raw.binary_cross_entropy, weights, self.alpha,
                         "values", True, loss_scale=n_out, grad_scale=n_out)
        # Half the mean squared error; its gradient (pred - y) / n_samples.
        return _Loss("mse", raw.mse, weights, self.alpha, "values", False,
                     loss_scale=0.5, grad_scale=0.5 * n_out)

    def _train_targets(self, Y):
        """What the Trainer takes as targets for the encoded (N, n_outputs) Y."""
        if self.out_activation_ == "softmax":
            return Y.argmax(axis=1)
        return np.asarray(Y, dtype=self._model.dtype)

    # --------------------------------------------------------------- fit
    def _fit(self, X, y, incremental=False):
        self._validate_params()
        hidden = self.hidden_layer_sizes
        if not hasattr(hidden, "__iter__"):
            hidden = [hidden]
        hidden = list(hidden)
        if np.any(np.array(hidden) <= 0):
            raise ValueError("hidden_layer_sizes must be > 0, got %s." % hidden)
        first_pass = not hasattr(self, "_model") or (not self.warm_start and not incremental)
        X, Y = self._validate_input(X, y, incremental, reset=first_pass)
        if _sparse.issparse(X):
            X = X.toarray()
        if Y.ndim == 1:
            Y = Y.reshape(-1, 1)
        n_features = X.shape[1]
        layer_units = [n_features] + hidden + [Y.shape[1]]
        self._random_state = check_random_state(self.random_state)
        if first_pass:
            self._initialize(Y, layer_units)
        elif layer_units != self._layer_units:
            raise ValueError(f"the network has layer sizes {self._layer_units}; this data and "
                             f"hidden_layer_sizes need {layer_units}: refit with warm_start=False")
        self.n_outputs_ = Y.shape[1]
        if not incremental or not hasattr(self, "_optimizer"):
            self._optimizer = self._make_optimizer()
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        self._fit_stochastic(X, Y, incremental)
        if not np.isfinite(self._model.parameters().flat_data).all():
            raise ValueError("Solver produced non-finite parameter weights. The input data may"
                             " contain large values and need to be preprocessed.")
        return self

    def _fit_stochastic(self, X, Y, incremental):
        if self.early_stopping:
            stratify = Y if is_classifier(self) and self.n_outputs_ == 1 else None
            X_train, X_val, Y_train, y_val = train_test_split(
                X, Y, random_state=self._random_state, test_size=self.validation_fraction,
                stratify=stratify)
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase 'validation_fraction' "
                                 "or the size of your dataset.")
            if is_classifier(self):
                y_val = self._label_binarizer.inverse_transform(y_val)
            X_val = np.ascontiguousarray(X_val, dtype=self._model.dtype)
        else:
            X_train, Y_train, X_val, y_val = X, Y, None, None
        n_samples = X_train.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n_samples)
        else:
            if self.batch_size > n_samples:
                warnings.warn("Got `batch_size` less than 1 or larger than "
                              "sample size. It is going to be clipped")
            batch_size = int(np.clip(self.batch_size, 1, n_samples))
        model = self._model
        weights = [p for p in model.parameters() if p.name.endswith(".weight")]
        loss = self._make_loss(weights)
        optimizer = _Penalized(self._optimizer, weights, float(self.alpha), loss)
        seed = int(self._random_state.randint(np.iinfo(np.int32).max))
        # metrics=[]: scikit-learn keeps no training accuracy, so fit does not compute it per batch
        trainer = Trainer(model, loss=loss, optimizer=optimizer, seed=seed, metrics=[])
        loop = _SklearnLoop(self, trainer, n_samples, X_val, y_val)
        self.n_iter_ = 0
        epochs = 1 if incremental else int(self.max_iter)
        try:
            trainer.fit(X_train, self._train_targets(Y_train), epochs=epochs, batch_size=batch_size,
                        shuffle=bool(self.shuffle), progress=False, callbacks=[loop])
        except FloatingPointError:
            raise ValueError("Solver produced non-finite parameter weights. The input data may"
                             " contain large values and need to be preprocessed.") from None
        if not incremental and not loop.stopped and self.n_iter_ == self.max_iter:
            warnings.warn("Stochastic Optimizer: Maximum iterations (%d) reached and the "
                          "optimization hasn't converged yet." % self.max_iter, ConvergenceWarning)
        if self.early_stopping:
            model.parameters().flat_data[...] = self._best_params

    def _update_no_improvement_count(self, X_val, y_val):
        if self.early_stopping:
            score = self._score(X_val, y_val)
            self.validation_scores_.append(score)
            if self.verbose:
                print("Validation score: %f" % score)
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_params = self._model.parameters().flat_data.copy()
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]

    def fit(self, X, y):
        """Fit the network to X (n_samples, n_features) and y; returns self."""
        return self._fit(X, y, incremental=False)

    # ----------------------------------------------------------- predict
    def _forward(self, X, check_input=True):
        """Outputs after the output activation, float64, shape (n_samples, n_outputs)."""
        if check_input:
            X = _validate_data(self, X, accept_sparse=["csr", "csc"],
                               dtype=(np.float64, np.float32), reset=False)
        if _sparse.issparse(X):
            X = X.toarray()
        out = self._model.predict(X).astype(np.float64)
        if self.out_activation_ == "softmax":
            out -= out.max(axis=1, keepdims=True)
            np.exp(out, out=out)
            out /= out.sum(axis=1, keepdims=True)
        elif self.out_activation_ == "logistic":
            # 1 / (1 + exp(-z)), without overflow warnings for large |z|
            out = np.exp(-np.logaddexp(0.0, -out))
        return out

    def _score_with(self, X, y, score_function):
        y_pred = self._predict(X, check_input=False)
        if np.issubdtype(y_pred.dtype, np.floating) and not np.isfinite(y_pred).all():
            return np.nan
        return score_function(y, y_pred)

    # ------------------------------------------------------ pickling
    def __getstate__(self):
        state = dict(super().__getstate__())
        model = state.pop("_model", None)
        if model is not None:
            state["_model_state"] = (model.backend.name, model.dtype.name, model.state_dict())
        return state

    def __setstate__(self, state):
        saved = state.pop("_model_state", None)
        super().__setstate__(state)
        if saved is not None:
            backend, dtype, weights = saved
            try:
                get_backend(backend)
            except (BackendUnavailable, ValueError):
                backend = None
            self._model = self._build_model(self._layer_units, self._activation, backend, dtype)
            self._model.load_state_dict(weights)
            _rebind_optimizer_state(getattr(self, "_optimizer", None),
                                    self._model.parameters().flat_data)

    # ------------------------------------------------------------ tags
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

# ------------------------------------------------------------ classifier
class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier with scikit-learn's API, trained by fastnn.

    Parameters are scikit-learn's ``MLPClassifier``'s (without ``max_fun`` and
    the 'lbfgs' solver), plus ``backend`` (a fastnn backend name, None for the
    default) and ``dtype`` ('float32' or 'float64', the precision of training).
    """

    def _validate_input(self, X, y, incremental, reset):
        X, y = _validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                              dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if (not hasattr(self, "classes_")) or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError(
                        "warm_start can only be used where `y` has the same classes as in the "
                        f"previous call to fit. Previously got {self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError("`y` has classes not in `self.classes_`. "
                                 f"`self.classes_` has {self.classes_}. 'y' has {classes}.")
        return X, self._label_binarizer.transform(y).astype(bool)

    def _predict(self, X, check_input=True):
        out = self._forward(X, check_input=check_input)
        if self.n_outputs_ == 1:
            out = out.ravel()
        return self._label_binarizer.inverse_transform(out)

    def _score(self, X, y):
        return self._score_with(X, y, accuracy_score)

    def predict(self, X):
        """Predicted class labels (n_samples,), or (n_samples, n_labels) for multilabel y."""
        check_is_fitted(self)
        return self._predict(X)

    def predict_proba(self, X):
        """Class probabilities (n_samples, n_classes), columns ordered as ``classes_``."""
        check_is_fitted(self)
        out = self._forward(X)
        if self.n_outputs_ == 1:
            p = out.ravel()
            return np.vstack([1 - p, p]).T
        return out

    def predict_log_proba(self, X):
        """log(predict_proba(X))."""
        p = self.predict_proba(X)
        return np.log(p, out=p)

    def partial_fit(self, X, y, classes=None):
        """One epoch over (X, y), continuing from the current weights and optimizer
        state; the first call needs ``classes`` (every label that may appear)."""
        if _check_partial_fit_first_call(self, classes):
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, incremental=True)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags

    def _more_tags(self):  # scikit-learn < 1.6
        return {"multilabel": True}


# ------------------------------------------------------------- regressor
class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor (half squared error) with scikit-learn's
    API, trained by fastnn. ``loss`` is 'squared_error' (the only one supported);
    ``backend`` and ``dtype`` as for MLPClassifier."""

    _parameter_constraints: dict = {**_BaseMLP._parameter_constraints,
                                    "loss": [StrOptions({"squared_error"})]}

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *,
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
                 backend=None, dtype="float32"):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver,
            alpha=alpha, batch_size=batch_size, learning_rate=learning_rate,
            learning_rate_init=learning_rate_init, power_t=power_t, max_iter=max_iter,
            shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose,
            warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping, validation_fraction=validation_fraction,
            beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change,
            backend=backend, dtype=dtype)
        self.loss = loss

    def _validate_input(self, X, y, incremental, reset):
        X, y = _validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                              y_numeric=True, dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y

    def _predict(self, X, check_input=True):
        out = self._forward(X, check_input=check_input)
        return out.ravel() if out.shape[1] == 1 else out

    def _score(self, X, y):
        return self._score_with(X, y, r2_score)

    def predict(self, X):
        """Predicted values, (n_samples,) or (n_samples, n_outputs)."""
        check_is_fitted(self)
        return self._predict(X)

    def partial_fit(self, X, y):
        """One epoch over (X, y), continuing from the current weights and optimizer state."""
        return self._fit(X, y, incremental=True)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags

    def _more_tags(self):  # scikit-learn < 1.6
        return {"multioutput": True}
