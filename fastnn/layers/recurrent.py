"""Recurrent layers: RNN (tanh), LSTM and GRU over a whole sequence, PyTorch's equations and weights.

(N, T, F) -> (N, H * dirs) (each direction's final hidden state, torch's h_n)
or, with return_sequences=True, (N, T, H * dirs) (every step, torch's output).
A bidirectional layer runs the kernel a second time on the time-reversed
sequence with its own *_reverse weights and concatenates the two, as torch does.
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

    def __init__(self, input_size, hidden_size, return_sequences=False, bidirectional=False):
        super().__init__()
        name = type(self).__name__
        self.input_size = positive_int(input_size, f"{name} input_size")
        self.hidden_size = positive_int(hidden_size, f"{name} hidden_size")
        self.return_sequences = bool(return_sequences)
        self.bidirectional = bool(bidirectional)
        self._suffixes = ("", "_reverse") if self.bidirectional else ("",)

    def param_shapes(self):
        gh, f, h = self.gates * self.hidden_size, self.input_size, self.hidden_size
        shapes = {}
        for s in self._suffixes:
            shapes.update({"weight_ih" + s: (gh, f), "weight_hh" + s: (gh, h),
                           "bias_ih" + s: (gh,), "bias_hh" + s: (gh,)})
        return shapes

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
        return {"input_size": self.input_size, "hidden_size": self.hidden_size,
                "return_sequences": self.return_sequences, "bidirectional": self.bidirectional}

    # ------------------------------------------------------------- compute
    def _weights(self, s):
        p = self.params
        return p["weight_ih" + s], p["weight_hh" + s], p["bias_ih" + s], p["bias_hh" + s]

    def forward(self, ctx, x):
        run = getattr(self.kernels, self.kernel)
        ctx.saved, outs = [], []
        for s in self._suffixes:
            xs = x if s == "" else _contiguous(x[:, ::-1])
            out = run(xs, *self._weights(s))
            out = out if isinstance(out, tuple) else (out,)
            ctx.saved.append((xs, out))
            h = out[0]                               # (N, T, H) in processing order
            if not self.return_sequences:
                outs.append(h[:, -1])                # the final state, torch's h_n
            else:
                outs.append(h if s == "" else h[:, ::-1])
        return _contiguous(np.concatenate(outs, axis=-1) if len(outs) > 1 else outs[0])

    def backward(self, ctx, dy):
        backward = getattr(self.kernels, self.kernel + "_backward")
        hid, dx, need_dx = self.hidden_size, None, ctx.need_dx
        for k, (s, (xs, out)) in enumerate(zip(self._suffixes, ctx.saved)):
            part = dy[..., k * hid:(k + 1) * hid]
            if self.return_sequences:
                dh = _contiguous(part if s == "" else part[:, ::-1])
            else:
                dh = np.zeros_like(out[0])
                dh[:, -1] = part
            w_ih, w_hh, _, _ = self._weights(s)
            d_x, dw_ih, dw_hh, db_ih, db_hh = backward(dh, xs, *out, w_ih, w_hh, need_dx)
            for name, g in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"),
                               (dw_ih, dw_hh, db_ih, db_hh)):
                self.grads[name + s] += g
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
