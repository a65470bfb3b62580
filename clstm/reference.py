"""Pure-NumPy reference LSTM: one layer, one direction, forward and BPTT.

Written to be read: one time step at a time, one line per equation, gradients accumulated
step by step. It is the ground truth the compiled kernels (`clstm.functional`) are tested
against, with the same function signatures, and is itself checked against central finite
differences in the test suite.

Layout is PyTorch's: ``w_ih (4H, I)``, ``w_hh (4H, H)``, ``b_ih, b_hh (4H,)``, gate blocks
stacked in the order i, f, g, o; ``x (T, B, I)``, ``h0, c0 (B, H)``, ``y (T, B, H)``::

    z_t = x_t @ w_ih.T + b_ih + h_{t-1} @ w_hh.T + b_hh        (B, 4H)
    i, f, g, o = sigmoid(z_i), sigmoid(z_f), tanh(z_g), sigmoid(z_o)
    c_t = f * c_{t-1} + i * g
    h_t = o * tanh(c_t)                                         y[t] = h_t
"""
from collections import namedtuple

import numpy as np

#: Gradients returned by ``lstm_backward`` (``db_ih``/``db_hh`` are None without biases).
LSTMGrads = namedtuple("LSTMGrads", "dx dh0 dc0 dw_ih dw_hh db_ih db_hh")


def sigmoid(z):
    """Logistic function that never overflows: exp is only taken of -|z|."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


class _Cache:
    """What backward needs from a training forward pass."""

    def __init__(self, x, w_ih, w_hh, has_bias, h0, c0):
        self.x, self.w_ih, self.w_hh, self.has_bias = x, w_ih, w_hh, has_bias
        self.h0, self.c0 = h0, c0
        self.i, self.f, self.g, self.o, self.c, self.tanh_c, self.h = ([] for _ in range(7))


def lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, *, train=False):
    """Run the layer over a whole sequence.

    Returns ``(y, h_n, c_n, cache)``; ``cache`` is None unless ``train`` is true, and is what
    ``lstm_backward`` takes. ``b_ih``/``b_hh`` may be None (no bias).
    """
    x, w_ih, w_hh, h0, c0 = (np.asarray(a) for a in (x, w_ih, w_hh, h0, c0))
    n_steps, n_batch, _ = x.shape
    H = w_hh.shape[1]
    dtype = x.dtype
    bias = np.zeros(4 * H, dtype)
    if b_ih is not None:
        bias = bias + b_ih
    if b_hh is not None:
        bias = bias + b_hh
    cache = _Cache(x, w_ih, w_hh, b_ih is not None or b_hh is not None, h0, c0) if train else None
    y = np.zeros((n_steps, n_batch, H), dtype)
    h, c = h0, c0
    for t in range(n_steps):
        z = x[t] @ w_ih.T + h @ w_hh.T + bias
        i = sigmoid(z[:, :H])
        f = sigmoid(z[:, H:2 * H])
        g = np.tanh(z[:, 2 * H:3 * H])
        o = sigmoid(z[:, 3 * H:])
        c = f * c + i * g
        tanh_c = np.tanh(c)
        h = o * tanh_c
        y[t] = h
        if train:
            for store, value in zip((cache.i, cache.f, cache.g, cache.o, cache.c, cache.tanh_c,
                                     cache.h), (i, f, g, o, c, tanh_c, h)):
                store.append(value)
    return y, np.array(h, dtype), np.array(c, dtype), cache


def lstm_backward(cache, dy=None, dh_n=None, dc_n=None):
    """Backpropagation through time for one ``lstm_forward(..., train=True)`` call.

    ``dy`` is the gradient of the loss w.r.t. ``y``; ``dh_n``, ``dc_n`` w.r.t. the final
    state. Any of them may be None (zero). Returns `LSTMGrads`.
    """
    x, w_ih, w_hh = cache.x, cache.w_ih, cache.w_hh
    n_steps, n_batch, _ = x.shape
    H = w_hh.shape[1]
    dtype = x.dtype
    dx = np.zeros_like(x)
    dw_ih, dw_hh = np.zeros_like(w_ih), np.zeros_like(w_hh)
    db = np.zeros(4 * H, dtype)
    dh = np.zeros((n_batch, H), dtype) if dh_n is None else np.array(dh_n, dtype)
    dc = np.zeros((n_batch, H), dtype) if dc_n is None else np.array(dc_n, dtype)
    for t in reversed(range(n_steps)):
        i, f, g, o = cache.i[t], cache.f[t], cache.g[t], cache.o[t]
        tanh_c = cache.tanh_c[t]
        c_prev = cache.c[t - 1] if t > 0 else cache.c0
        h_prev = cache.h[t - 1] if t > 0 else cache.h0
        if dy is not None:
            dh = dh + dy[t]
        do = dh * tanh_c
        dc = dc + dh * o * (1 - tanh_c ** 2)
        di, df, dg = dc * g, dc * c_prev, dc * i
        dz = np.concatenate([di * i * (1 - i), df * f * (1 - f), dg * (1 - g ** 2),
                             do * o * (1 - o)], axis=1)
        dw_ih += dz.T @ x[t]
        dw_hh += dz.T @ h_prev
        db += dz.sum(axis=0)
        dx[t] = dz @ w_ih
        dh = dz @ w_hh
        dc = dc * f
    db_ih = db if cache.has_bias else None
    db_hh = db.copy() if cache.has_bias else None
    return LSTMGrads(dx, dh.astype(dtype), dc.astype(dtype), dw_ih, dw_hh, db_ih, db_hh)
