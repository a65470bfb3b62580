"""Pure-NumPy reference LSTM and GRU: one layer, one direction, forward and BPTT.

Written to be read: one time step at a time, one line per equation, gradients accumulated
step by step. It is the ground truth the compiled kernels (`clstm.functional`) are tested
against, with the same function signatures, and is itself checked against central finite
differences in the test suite.

Layout is PyTorch's: ``w_ih (4H, I)``, ``w_hh (4H, P)``, ``b_ih, b_hh (4H,)``, optional
projection ``w_hr (P, H)`` (``P = H`` without it), gate blocks stacked in the order
i, f, g, o; ``x (T, B, I)``, ``h0 (B, P)``, ``c0 (B, H)``, ``y (T, B, P)``::

    z_t = x_t @ w_ih.T + b_ih + h_{t-1} @ w_hh.T + b_hh        (B, 4H)
    i, f, g, o = sigmoid(z_i), sigmoid(z_f), tanh(z_g), sigmoid(z_o)
    c_t = f * c_{t-1} + i * g
    r_t = o * tanh(c_t)
    h_t = r_t @ w_hr.T  (or h_t = r_t)                          y[t] = h_t

Variable lengths use the padded layout with masks: row b takes steps while ``k < len_b``
and keeps its state afterwards; the reverse direction visits row b's times
``len_b - 1, ..., 0``. ``lstm_stack_forward``/``lstm_stack_backward`` compose single-layer
calls into PyTorch's multi-layer, bidirectional ``nn.LSTM``.
"""
from collections import namedtuple

import numpy as np

#: Gradients returned by ``lstm_backward`` (``db_ih``/``db_hh`` are None without biases,
#: ``dw_hr`` without a projection).
LSTMGrads = namedtuple("LSTMGrads", "dx dh0 dc0 dw_ih dw_hh db_ih db_hh dw_hr",
                       defaults=(None,))


def sigmoid(z):
    """Logistic function that never overflows: exp is only taken of -|z|."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


def _schedule(T, B, lengths, reverse):
    """time[k, b]: the time step row b visits at its k-th step; active[k, b]: k < len_b."""
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths).astype(int)
    k = np.arange(T)[:, None]
    active = k < lengths[None, :]
    time = (lengths[None, :] - 1 - k) if reverse else np.broadcast_to(k, (T, B))
    return np.where(active, time, 0), active


class _Cache:
    """What backward needs from a training forward pass: per step k, what it saw."""

    def __init__(self, **kw):
        self.__dict__.update(kw)
        self.steps = []


def lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, *, w_hr=None, lengths=None, reverse=False,
                 train=False):
    """Run the layer over a whole sequence.

    Returns ``(y, h_n, c_n, cache)``; ``cache`` is None unless ``train`` is true, and is what
    ``lstm_backward`` takes. ``b_ih``/``b_hh`` may be None (no bias), ``w_hr`` None (no
    projection). ``lengths`` (B,) gives each row's real steps: y is zero past them, and
    h_n/c_n are each row's state after its own last step. ``reverse`` runs each row from
    its last step back to step 0.
    """
    x, w_ih, w_hh, h0, c0 = (np.asarray(a) for a in (x, w_ih, w_hh, h0, c0))
    n_steps, n_batch, _ = x.shape
    H = w_hh.shape[0] // 4
    P = w_hh.shape[1]
    dtype = x.dtype
    bias = np.zeros(4 * H, dtype)
    if b_ih is not None:
        bias = bias + b_ih
    if b_hh is not None:
        bias = bias + b_hh
    time, active = _schedule(n_steps, n_batch, lengths, reverse)
    rows = np.arange(n_batch)
    cache = _Cache(x=x, w_ih=w_ih, w_hh=w_hh, w_hr=w_hr, h0=h0, c0=c0, time=time,
                   active=active, has_bias=b_ih is not None or b_hh is not None)
    y = np.zeros((n_steps, n_batch, P), dtype)
    h, c = h0, c0
    for k in range(n_steps):
        on = active[k]
        x_k = x[time[k], rows]
        z = x_k @ w_ih.T + h @ w_hh.T + bias
        i = sigmoid(z[:, :H])
        f = sigmoid(z[:, H:2 * H])
        g = np.tanh(z[:, 2 * H:3 * H])
        o = sigmoid(z[:, 3 * H:])
        c_new = f * c + i * g
        tanh_c = np.tanh(c_new)
        r = o * tanh_c
        h_new = r if w_hr is None else r @ w_hr.T
        if train:
            cache.steps.append(dict(x=x_k, h_prev=h, c_prev=c, i=i, f=f, g=g, o=o,
                                    tanh_c=tanh_c, r=r))
        y[time[k][on], rows[on]] = h_new[on]
        h = np.where(on[:, None], h_new, h)  # ended rows keep their state
        c = np.where(on[:, None], c_new, c)
    return y, np.array(h, dtype), np.array(c, dtype), cache if train else None


def lstm_backward(cache, dy=None, dh_n=None, dc_n=None):
    """Backpropagation through time for one ``lstm_forward(..., train=True)`` call.

    ``dy`` is the gradient of the loss w.r.t. ``y`` (ignored past each row's length);
    ``dh_n``, ``dc_n`` w.r.t. the final state. Any of them may be None (zero). Returns
    `LSTMGrads`.
    """
    x, w_ih, w_hh, w_hr = cache.x, cache.w_ih, cache.w_hh, cache.w_hr
    n_steps, n_batch, _ = x.shape
    H, P = w_hh.shape[0] // 4, w_hh.shape[1]
    dtype = x.dtype
    rows = np.arange(n_batch)
    dx = np.zeros_like(x)
    dw_ih, dw_hh = np.zeros_like(w_ih), np.zeros_like(w_hh)
    dw_hr = None if w_hr is None else np.zeros_like(w_hr)
    db = np.zeros(4 * H, dtype)
    dh = np.zeros((n_batch, P), dtype) if dh_n is None else np.array(dh_n, dtype)
    dc = np.zeros((n_batch, H), dtype) if dc_n is None else np.array(dc_n, dtype)
    for k in reversed(range(n_steps)):
        s = cache.steps[k]
        on = cache.active[k][:, None]
        t = cache.time[k]
        dh_k = dh if dy is None else dh + dy[t, rows]
        dh_k = np.where(on, dh_k, 0)  # rows past their end take no gradient at this step
        dc_k = np.where(on, dc, 0)
        if w_hr is None:
            dr = dh_k
        else:
            dw_hr += dh_k.T @ s["r"]
            dr = dh_k @ w_hr
        i, f, g, o, tanh_c = s["i"], s["f"], s["g"], s["o"], s["tanh_c"]
        do = dr * tanh_c
        dc_k = dc_k + dr * o * (1 - tanh_c ** 2)
        di, df, dg = dc_k * g, dc_k * s["c_prev"], dc_k * i
        dz = np.concatenate([di * i * (1 - i), df * f * (1 - f), dg * (1 - g ** 2),
                             do * o * (1 - o)], axis=1)
        dw_ih += dz.T @ s["x"]
        dw_hh += dz.T @ s["h_prev"]
        db += dz.sum(axis=0)
        ran = cache.active[k]
        dx[t[ran], rows[ran]] = (dz @ w_ih)[ran]
        dh = np.where(on, dz @ w_hh, dh)
        dc = np.where(on, dc_k * f, dc)
    db_ih = db if cache.has_bias else None
    db_hh = db.copy() if cache.has_bias else None
    return LSTMGrads(dx, dh.astype(dtype), dc.astype(dtype), dw_ih, dw_hh, db_ih, db_hh,
                     dw_hr)


#: Gradients returned by ``gru_backward`` (``db_ih``/``db_hh`` None without biases).
GRUGrads = namedtuple("GRUGrads", "dx dh0 dw_ih dw_hh db_ih db_hh")


def gru_forward(x, w_ih, w_hh, b_ih, b_hh, h0, *, lengths=None, reverse=False, train=False):
    """One GRU layer (PyTorch's ``nn.GRU``, "reset after") over a whole sequence.

    ``w_ih (3H, I)``, ``w_hh (3H, H)``, ``b_ih, b_hh (3H,)`` or None, blocks r, z, n;
    ``x (T, B, I)``, ``h0 (B, H)``::

        r = sigmoid(x_t W_ir.T + b_ir + h W_hr.T + b_hr)
        z = sigmoid(x_t W_iz.T + b_iz + h W_hz.T + b_hz)
        n = tanh(x_t W_in.T + b_in + r * (h W_hn.T + b_hn))
        h_t = (1 - z) * n + z * h

    ``lengths`` and ``reverse`` as `lstm_forward`. Returns ``(y, h_n, cache)``; ``cache``
    (None unless ``train``) is what `gru_backward` takes.
    """
    x, w_ih, w_hh, h0 = (np.asarray(a) for a in (x, w_ih, w_hh, h0))
    n_steps, n_batch, _ = x.shape
    H = w_hh.shape[0] // 3
    dtype = x.dtype
    b_ih = np.zeros(3 * H, dtype) if b_ih is None else np.asarray(b_ih)
    b_hh_given = b_hh is not None
    b_hh = np.zeros(3 * H, dtype) if b_hh is None else np.asarray(b_hh)
    time, active = _schedule(n_steps, n_batch, lengths, reverse)
    rows = np.arange(n_batch)
    cache = _Cache(x=x, w_ih=w_ih, w_hh=w_hh, h0=h0, time=time, active=active,
                   has_bias=b_hh_given)
    y = np.zeros((n_steps, n_batch, H), dtype)
    h = h0
    for k in range(n_steps):
        on = active[k]
        x_k = x[time[k], rows]
        a = x_k @ w_ih.T + b_ih        # input side, (B, 3H)
        b = h @ w_hh.T + b_hh          # recurrent side
        r = sigmoid(a[:, :H] + b[:, :H])
        z = sigmoid(a[:, H:2 * H] + b[:, H:2 * H])
        hn = b[:, 2 * H:]
        n = np.tanh(a[:, 2 * H:] + r * hn)
        h_new = (1 - z) * n + z * h
        if train:
            cache.steps.append(dict(x=x_k, h_prev=h, r=r, z=z, n=n, hn=hn))
        y[time[k][on], rows[on]] = h_new[on]
        h = np.where(on[:, None], h_new, h)
    return y, np.array(h, dtype), cache if train else None


def gru_backward(cache, dy=None, dh_n=None):
    """Backpropagation through time for one ``gru_forward(..., train=True)`` call: ``dy``
    w.r.t. ``y`` (ignored past each row's length), ``dh_n`` w.r.t. the final state (either
    may be None). Returns `GRUGrads`."""
    x, w_ih, w_hh = cache.x, cache.w_ih, cache.w_hh
    n_steps, n_batch, _ = x.shape
    H = w_hh.shape[0] // 3
    dtype = x.dtype
    rows = np.arange(n_batch)
    dx = np.zeros_like(x)
    dw_ih, dw_hh = np.zeros_like(w_ih), np.zeros_like(w_hh)
    db_ih, db_hh = np.zeros(3 * H, dtype), np.zeros(3 * H, dtype)
    dh = np.zeros((n_batch, H), dtype) if dh_n is None else np.array(dh_n, dtype)
    for k in reversed(range(n_steps)):
        s = cache.steps[k]
        on = cache.active[k][:, None]
        t = cache.time[k]
        dh_k = dh if dy is None else dh + dy[t, rows]
        dh_k = np.where(on, dh_k, 0)
        r, z, n, hn, h_prev = s["r"], s["z"], s["n"], s["hn"], s["h_prev"]
        dn = dh_k * (1 - z) * (1 - n ** 2)          # through tanh
        dz = dh_k * (h_prev - n) * z * (1 - z)
        dr = dn * hn * r * (1 - r)
        da = np.concatenate([dr, dz, dn], axis=1)       # input side pre-activations
        db = np.concatenate([dr, dz, dn * r], axis=1)   # recurrent side
        dw_ih += da.T @ s["x"]
        dw_hh += db.T @ h_prev
        db_ih += da.sum(axis=0)
        db_hh += db.sum(axis=0)
        ran = cache.active[k]
        dx[t[ran], rows[ran]] = (da @ w_ih)[ran]
        dh = np.where(on, db @ w_hh + dh_k * z, dh)
    has_bias = cache.has_bias
    return GRUGrads(dx, dh.astype(dtype), dw_ih, dw_hh, db_ih if has_bias else None,
                    db_hh if has_bias else None)


def _layer_names(num_layers, bidirectional):
    """[(layer, direction, suffix)] in PyTorch's order: layer-major, direction-minor."""
    return [(k, d, f"_l{k}" + ("_reverse" if d else ""))
            for k in range(num_layers) for d in range(2 if bidirectional else 1)]


def lstm_stack_forward(x, params, h0, c0, *, num_layers, bidirectional=False, lengths=None,
                       dropout_masks=None, train=False):
    """PyTorch's ``nn.LSTM`` as a composition of ``lstm_forward`` calls.

    ``params``: PyTorch ``state_dict`` names -> arrays. ``x (T, B, I)``, ``h0 (L*D, B, P)``,
    ``c0 (L*D, B, H)`` indexed layer * D + direction. ``dropout_masks``: None or one
    ``(T, B, D*P)`` array per layer but the last, multiplied into that layer's output.
    Returns ``(y (T, B, D*P), h_n, c_n, cache)``.
    """
    D = 2 if bidirectional else 1
    layer_in = np.asarray(x)
    h_n, c_n, caches = [], [], []
    for k in range(num_layers):
        outputs = []
        for _, d, sfx in _layer_names(num_layers, bidirectional)[k * D:(k + 1) * D]:
            y, h, c, cache = lstm_forward(
                layer_in, params[f"weight_ih{sfx}"], params[f"weight_hh{sfx}"],
                params.get(f"bias_ih{sfx}"), params.get(f"bias_hh{sfx}"), h0[k * D + d],
                c0[k * D + d], w_hr=params.get(f"weight_hr{sfx}"), lengths=lengths,
                reverse=d == 1, train=train)
            outputs.append(y)
            h_n.append(h)
            c_n.append(c)
            caches.append(cache)
        layer_in = np.concatenate(outputs, axis=2)
        if dropout_masks is not None and k < num_layers - 1:
            layer_in = layer_in * dropout_masks[k]
    cache = dict(caches=caches, num_layers=num_layers, bidirectional=bidirectional,
                 masks=dropout_masks, P=h_n[0].shape[-1]) if train else None
    return layer_in, np.stack(h_n), np.stack(c_n), cache


def lstm_stack_backward(cache, dy=None, dh_n=None, dc_n=None):
    """Backward of ``lstm_stack_forward(..., train=True)``: a dict with ``"x"``, ``"h0"``,
    ``"c0"`` and one gradient per parameter name (both biases get the bias gradient)."""
    L, bidirectional, P = cache["num_layers"], cache["bidirectional"], cache["P"]
    D = 2 if bidirectional else 1
    names = _layer_names(L, bidirectional)
    grads, dh0, dc0 = {}, [None] * (L * D), [None] * (L * D)
    d_out = dy
    for k in reversed(range(L)):
        d_in = 0
        for _, d, sfx in names[k * D:(k + 1) * D]:
            j = k * D + d
            g = lstm_backward(cache["caches"][j],
                              None if d_out is None else d_out[..., d * P:(d + 1) * P],
                              None if dh_n is None else dh_n[j],
                              None if dc_n is None else dc_n[j])
            d_in = d_in + g.dx
            dh0[j], dc0[j] = g.dh0, g.dc0
            grads[f"weight_ih{sfx}"], grads[f"weight_hh{sfx}"] = g.dw_ih, g.dw_hh
            if g.db_ih is not None:
                grads[f"bias_ih{sfx}"], grads[f"bias_hh{sfx}"] = g.db_ih, g.db_hh
            if g.dw_hr is not None:
                grads[f"weight_hr{sfx}"] = g.dw_hr
        masks = cache["masks"]
        d_out = d_in * masks[k - 1] if masks is not None and k > 0 else d_in
    grads.update(x=d_out, h0=np.stack(dh0), c0=np.stack(dc0))
    return grads
