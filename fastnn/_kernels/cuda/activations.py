"""numba.cuda activations and their backwards: step, sigmoid, tanh, relu, leaky_relu, softmax (reference.py's).

Elementwise kernels run a grid-stride loop over the flat array; softmax and its
backward give one thread a row. Kernels are built per dtype so that every
constant has the array's type (float32 math stays float32 on the GPU).
"""
import functools
import math

import numpy as np
from numba import cuda

from ._device import Call, as_device, empty, launch


@functools.lru_cache(maxsize=None)
def _kernels(dtype):
    t = np.dtype(dtype).type
    zero, one = t(0), t(1)

    @cuda.jit
    def step(x, y):
        s, d = cuda.grid(1), cuda.gridsize(1)
        for i in range(s, x.shape[0], d):
            y[i] = one if x[i] > zero else zero

    @cuda.jit
    def zeros(y):
        s, d = cuda.grid(1), cuda.gridsize(1)
        for i in range(s, y.shape[0], d):
            y[i] = zero

    @cuda.jit
    def sigmoid(x, y):
        s, d = cuda.grid(1), cuda.gridsize(1)
        for i in range(s, x.shape[0], d):
            v = x[i]
            e = math.exp(-abs(v))       # never overflows
            y[i] = one / (one + e) if v >= zero else e / (one + e)

    @cuda.jit
    def sigmoid_backward(dy, y, dx):
        s, d = cuda.grid(1), cuda.gridsize(1)
        for i in range(s, dy.shape[0], d):
            dx[i] = dy[i] * y[i] * (one - y[i])

    @cuda.jit
    def tanh(x, y):
        s, d = cuda.grid(1), cuda.gridsize(1)
        for i in range(s, x.shape[0], d):
            y[i] = math.tanh(x[i])

    @cuda.jit
    def tanh_backward(dy, y, dx):
        s, d = cuda.grid(1), cuda.gridsize(1)
        for i in range(s, dy.shape[0], d):
            dx[i] = dy[i] * (one - y[i] * y[i])

    @cuda.jit
    def relu(x, y):
        s, d = cuda.grid(1), cuda.gridsize(1)
        for i in range(s, x.shape[0], d):
            v = x[i]
            y[i] = v if v > zero else zero

    @cuda.jit
    def relu_backward(dy, x, dx):
        s, d = cuda.grid(1), cuda.gridsize(1)
        for i in range(s, dy.shape[0], d):
            dx[i] = dy[i] if x[i] > zero else zero

    @cuda.jit
    def leaky_relu(x, alpha, y):
        s, d = cuda.grid(1), cuda.gridsize(1)
        for i in range(s, x.shape[0], d):
            v = x[i]
            y[i] = v if v > zero else v * alpha

    @cuda.jit
    def leaky_relu_backward(dy, x, alpha, dx):
        s, d = cuda.grid(1), cuda.gridsize(1)
        for i in range(s, dy.shape[0], d):
            dx[i] = dy[i] if x[i] > zero else dy[i] * alpha

    @cuda.jit
    def softmax(x, y):
        n, f = x.shape
        s, d = cuda.grid(1), cuda.gridsize(1)
        for r in range(s, n, d):
            top = x[r, 0]
            for j in range(1, f):
                top = max(top, x[r, j])
            total = zero
            for j in range(f):
                e = math.exp(x[r, j] - top)
                y[r, j] = e
                total += e
            inv = one / total
            for j in range(f):
                y[r, j] = y[r, j] * inv

    @cuda.jit
    def softmax_backward(dy, y, dx):
        n, f = dy.shape
        s, d = cuda.grid(1), cuda.gridsize(1)
        for r in range(s, n, d):
            dot = zero
            for j in range(f):
                dot += dy[r, j] * y[r, j]
            for j in range(f):
                dx[r, j] = y[r, j] * (dy[r, j] - dot)

    return dict(step=step, zeros=zeros, sigmoid=sigmoid, sigmoid_backward=sigmoid_backward,
                tanh=tanh, tanh_backward=tanh_backward, relu=relu, relu_backward=relu_backward,
                leaky_relu=leaky_relu, leaky_relu_backward=leaky_relu_backward,
                softmax=softmax, softmax_backward=softmax_backward)


def _flat(a):
    return a.arr.reshape(a.size)


def _forward(name, x, *scalars):
    call = Call(x)
    x = as_device(x)
    y = empty(x.shape, x.dtype)
    if x.size:
        kernel = _kernels(x.dtype)[name]
        args = tuple(x.dtype.type(s) for s in scalars)
        kernel[launch(x.size)](_flat(x), *args, _flat(y))
    return call.out(y)


def _backward(name, dy, saved, *scalars):
    """dx from dy and the one saved array (x or y) the derivative needs."""
    call = Call(dy, saved)
    dy, saved = as_device(dy), as_device(saved)
    dx = empty(dy.shape, dy.dtype)
    if dy.size:
        kernel = _kernels(dy.dtype)[name]
        args = tuple(dy.dtype.type(s) for s in scalars)
        kernel[launch(dy.size)](_flat(dy), _flat(saved), *args, _flat(dx))
    return call.out(dx)


def step(x):
    """Heaviside step: 1 where x > 0, else 0."""
    return _forward("step", x)


def step_backward(dy, x, y):
    """Zero almost everywhere (see reference.step_backward)."""
    call = Call(dy, x, y)
    dy = as_device(dy)
    dx = empty(dy.shape, dy.dtype)
    if dx.size:
        _kernels(dy.dtype)["zeros"][launch(dx.size)](_flat(dx))
    return call.out(dx)


def sigmoid(x):
    return _forward("sigmoid", x)


def sigmoid_backward(dy, x, y):
    return _backward("sigmoid_backward", dy, y)


def tanh(x):
    return _forward("tanh", x)


def tanh_backward(dy, x, y):
    return _backward("tanh_backward", dy, y)


def relu(x):
    return _forward("relu", x)


def relu_backward(dy, x, y):
    return _backward("relu_backward", dy, x)


def leaky_relu(x, alpha=0.01):
    return _forward("leaky_relu", x, alpha)


def leaky_relu_backward(dy, x, y, alpha=0.01):
    return _backward("leaky_relu_backward", dy, x, alpha)


def _rows(name, *arrays):
    call = Call(*arrays)
    arrays = [as_device(a) for a in arrays]
    out = empty(arrays[0].shape, arrays[0].dtype)
    if out.size:
        _kernels(out.dtype)[name][launch(out.shape[0])](*(a.arr for a in arrays), out.arr)
    return call.out(out)


def softmax(x):
    """Softmax along the last axis of a 2-D x (one thread a row)."""
    return _rows("softmax", x)


def softmax_backward(dy, x, y):
    call = Call(dy, x, y)
    return call.out(_rows("softmax_backward", as_device(dy), as_device(y)))
