"""Recurrent layers: RNN (tanh), LSTM and GRU over a whole sequence, PyTorch's equations and weights.

(N, T, F) -> (N, H * dirs) (each direction's final hidden state, torch's h_n)
or, with return_sequences=True, (N, T, H * dirs) (every step, torch's output).
A bidirectional layer runs the kernel a second time on the time-reversed
sequence with its own *_reverse weights and concatenates the two, as torch does;
on the cython kernels the two directions run at once, one a core (_pair).
num_layers > 1 stacks layers as torch does (each reads the whole output sequence of the one
below; no dropout between them). Keys are torch's (weight_ih_l1, bias_hh_l1_reverse, ...)
except that the first layer's drop torch's "_l0" (weight_ih, weight_ih_reverse);
model.load_state_dict takes torch's names as they are.
"""
import numpy as np

from .base import Layer
from .base import positive_int


def _contiguous(a):
    """np.ascontiguousarray, except that a device array (the cuda backend's
    DeviceArray, whose contiguous() copies on the device) stays on its device."""
    contiguous = getattr(a, "contiguous", None)
    return np.ascontiguousarray(a) if contiguous is None else contiguous()


class _Recurrent(Layer):
    kernel = None
    gates = None

    def __init__(self, input_size, hidden_size, return_sequences=False, bidirectional=False, num_layers=1):
        super().__init__()
        name = type(self).__name__
        self.input_size = positive_int(input_size, f"{name} input_size")
        self.hidden_size = positive_int(hidden_size, f"{name} hidden_size")
        self.return_sequences = bool(return_sequences)
        self.bidirectional = bool(bidirectional)
        self.num_layers = positive_int(num_layers, f"{name} num_layers")
        self._suffixes = ("", "_reverse") if self.bidirectional else ("",)

    @staticmethod
    def _tag(layer):
        # torch's "_l{k}" with k = 0 left out: fastnn's keys of one layer stay "weight_ih", ...
        return "" if layer == 0 else f"_l{layer}"

    def param_shapes(self):
        gh, h = self.gates * self.hidden_size, self.hidden_size
        shapes = {}
        for k in range(self.num_layers):
            f = self.input_size if k == 0 else h * len(self._suffixes)
            for s in self._suffixes:
                t = self._tag(k) + s
                shapes.update({"weight_ih" + t: (gh, f), "weight_hh" + t: (gh, h),
                               "bias_ih" + t: (gh,), "bias_hh" + t: (gh,)})
        return shapes

    def torch_names(self):
        """fastnn name -> torch.nn.RNN/LSTM/GRU's name where they differ (the first layer's
        'weight_ih' is torch's 'weight_ih_l0'; later layers are named as in torch)."""
        return {f"{w}{s}": f"{w}_l0{s}" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                for s in self._suffixes}

    def init_params(self, rng):
        # PyTorch's default: every weight and bias U(-1/sqrt(hidden), 1/sqrt(hidden)).
        bound = 1.0 / np.sqrt(self.hidden_size)
        return {name: rng.uniform(-bound, bound, size=shape)
                for name, shape in self.param_shapes().items()}

    def output_shape(self, shape):
        name = f"{type(self).__name__}({self.input_size}, {self.hidden_size})"
        if len(shape) != 2 or shape[1] != self.input_size:
            raise ValueError(f"{name} expects inputs of shape (batch, time, {self.input_size}), "
                             f"got (batch, {', '.join(map(str, shape))})")
        if shape[0] == 0:
            raise ValueError(f"{name}: the input is a zero-length sequence (0 time steps)")
        width = self.hidden_size * len(self._suffixes)
        return (shape[0], width) if self.return_sequences else (width,)

    def config(self):
        config = {"input_size": self.input_size, "hidden_size": self.hidden_size,
                  "return_sequences": self.return_sequences, "bidirectional": self.bidirectional}
        if self.num_layers != 1:
            config["num_layers"] = self.num_layers
        return config

    # ------------------------------------------------------------- compute
    def _weights(self, k, s):
        p, t = self.params, self._tag(k) + s
        return p["weight_ih" + t], p["weight_hh" + t], p["bias_ih" + t], p["bias_hh" + t]

    def forward(self, ctx, x):
        # a stack (num_layers > 1) feeds each layer's whole output sequence to the next, as torch does
        ctx.saved = []
        for k in range(self.num_layers):
            x, saved = self._forward_layer(x, k, self.return_sequences or k < self.num_layers - 1)
            ctx.saved.append(saved)
        return x

    def build(self, backend, dtype, params, grads, buffers=None):
        super().build(backend, dtype, params, grads, buffers)
        self._backend = backend            # to find cython's both-directions entry (_pair)

    def _pair(self, kernel, x, w_ih, w_hh):
        """The backend's entry that runs both directions at once, one a core, or None:
        the directions run one after the other (Backend.concurrent_pair)."""
        backend = getattr(self, "_backend", None)
        find = getattr(backend, "concurrent_pair", None)
        return None if find is None else find(kernel, x, w_ih, w_hh)

    def _forward_layer(self, x, k, sequences):
        run = getattr(self.kernels, self.kernel)
        saved, outs = [], []
        inputs = [x if s == "" else _contiguous(x[:, ::-1]) for s in self._suffixes]
        pair = self._pair(self.kernel, x, *self._weights(k, "")[:2]) if len(inputs) == 2 else None
        if pair is not None:
            results = pair(self.kernel, (inputs[0], *self._weights(k, "")),
                           (inputs[1], *self._weights(k, "_reverse")), False)
        else:
            results = [run(xs, *self._weights(k, s)) for s, xs in zip(self._suffixes, inputs)]
        for s, xs, out in zip(self._suffixes, inputs, results):
            out = out if isinstance(out, tuple) else (out,)
            saved.append((xs, out))
            h = out[0]                               # (N, T, H) in processing order
            if not sequences:
                outs.append(h[:, -1])                # the final state, torch's h_n
            else:
                outs.append(h if s == "" else h[:, ::-1])
        return _contiguous(np.concatenate(outs, axis=-1) if len(outs) > 1 else outs[0]), saved

    def backward(self, ctx, dy):
        for k in reversed(range(self.num_layers)):
            dy = self._backward_layer(dy, k, self.return_sequences or k < self.num_layers - 1,
                                      ctx.saved[k], ctx.need_dx or k > 0)
        return dy

    def _backward_layer(self, dy, k, sequences, saved, need_dx):
        backward = getattr(self.kernels, self.kernel + "_backward")
        hid, dx = self.hidden_size, None
        calls = []
        for j, (s, (xs, out)) in enumerate(zip(self._suffixes, saved)):
            part = dy[..., j * hid:(j + 1) * hid]
            if sequences:
                dh = _contiguous(part if s == "" else part[:, ::-1])
            else:
                dh = np.zeros_like(out[0])
                dh[:, -1] = part
            w_ih, w_hh, _, _ = self._weights(k, s)
            calls.append((dh, xs, *out, w_ih, w_hh, need_dx))
        pair = self._pair(self.kernel, saved[0][0], *self._weights(k, "")[:2]) if len(calls) == 2 else None
        if pair is not None:
            results = pair(self.kernel + "_backward", calls[0], calls[1], False)
        else:
            results = [backward(*c) for c in calls]
        for s, (d_x, dw_ih, dw_hh, db_ih, db_hh) in zip(self._suffixes, results):
            t = self._tag(k) + s
            for name, g in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"),
                               (dw_ih, dw_hh, db_ih, db_hh)):
                self.grads[name + t] += g
            if need_dx:
                d_x = d_x if s == "" else d_x[:, ::-1]
                dx = d_x if dx is None else dx + d_x
        return None if dx is None else _contiguous(dx)


class RNN(_Recurrent):
    """Elman RNN: h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)."""
    kernel, gates = "rnn", 1


class LSTM(_Recurrent):
    """LSTM with PyTorch's gate order (i, f, g, o) in weight_ih / weight_hh rows."""
    kernel, gates = "lstm", 4


class GRU(_Recurrent):
    """GRU with PyTorch's gate order (r, z, n); n = tanh(W_in x + b_in + r (W_hn h + b_hn))."""
    kernel, gates = "gru", 3
