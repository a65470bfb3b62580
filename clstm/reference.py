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

The LSTM variants: peephole connections, a choice of activations and recurrent
(variational) dropout are options of the same `lstm_forward` (the plain LSTM is peepholes
of zero, tanh/sigmoid and no mask).

With ``act = activation`` (Keras's ``activation``: the cell input and the cell output) and
``rec = recurrent_activation`` (Keras's: the three gates), peephole weights ``p (3, H)``
(rows i, f, o; zero without peepholes) and a recurrent dropout mask ``m (B, P)`` (ones
without dropout)::

    z_t = x_t @ w_ih.T + b_ih + (m * h_{t-1}) @ w_hh.T + b_hh     (B, 4H)
    i = rec(z_i + p_i * c_{t-1})
    f = rec(z_f + p_f * c_{t-1})
    g = act(z_g)
    c_t = f * c_{t-1} + i * g
    o = rec(z_o + p_o * c_t)                                     (the *new* cell state)
    r_t = o * act(c_t)
    h_t = r_t @ w_hr.T  (or h_t = r_t)

These are ONNX's ``LSTM`` equations (input ``P``, there ordered i, o, f; activations
``f, g, h`` = ``rec, act, act``), TensorFlow 1's ``LSTMCell(use_peepholes=True)`` and Gers &
Schmidhuber's.

Activations, by Keras's names: ``"tanh"``, ``"sigmoid"``, ``"hard_sigmoid"``, ``"relu"``,
``"linear"``. ``hard_sigmoid`` is Keras 2's ``clip(0.2 z + 0.5, 0, 1)`` (the recurrent
default of Keras < 2.3 models, and ONNX's ``HardSigmoid`` with its defaults alpha=0.2,
beta=0.5), not Keras 3's ``relu6(z + 3) / 6`` (slope 1/6): weights of the older models
give their numbers only with the former. Every derivative is a function of the
activation's *output* (``hard_sigmoid``: 0.2 where ``0 < y < 1``; ``relu``: 1 where
``y > 0``), so backward needs only the activated gates, as the plain cell's does. At the
kinks (``z = ±2.5``, ``z = 0``) the derivative taken is the one-sided 0.

Recurrent dropout (Gal & Ghahramani 2016): ONE mask per sequence and layer-direction,
``m = (u >= p) / (1 - p)`` with ``u`` uniform of shape ``(B, P)``, multiplies ``h_{t-1}``
at every step (``h0`` included) before the recurrent product, and the same mask serves
all four gates. Keras 3 draws one mask per gate; one shared mask keeps the recurrent
product a single ``(m * h) @ w_hh.T`` GEMM per step, where four masks would need four
products of a quarter the width (or a 4x wider ``h``) — the variational property (same
mask at every step) is what the method asks for, and the per-gate choice is not in Gal &
Ghahramani's derivation, which drops *units* of ``h``. Backward: ``dh_{t-1} = (dz @ w_hh) *
m`` and ``dw_hh += dz.T @ (m * h_{t-1})``.
"""
from collections import namedtuple

import numpy as np

#: Gradients returned by ``lstm_backward`` (``db_ih``/``db_hh`` are None without biases,
#: ``dw_hr`` without a projection, ``dw_peephole`` (3, H) without peepholes).
LSTMGrads = namedtuple("LSTMGrads", "dx dh0 dc0 dw_ih dw_hh db_ih db_hh dw_hr dw_peephole",
                       defaults=(None, None))


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


#: Activation names (Keras's) the variants take.
ACTIVATIONS = ("tanh", "sigmoid", "hard_sigmoid", "relu", "linear")

def check_activation(argument, name):
    """``name`` if it is one of `ACTIVATIONS`, else a ValueError naming ``argument``."""
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(f"{argument} must be one of {', '.join(map(repr, ACTIVATIONS))}, "
                         f"got {name!r}")
    return name


def activate(name, z):
    """The activation ``name`` of ``z``."""
    if name == "tanh":
        return np.tanh(z)
    if name == "sigmoid":
        return sigmoid(z)
    if name == "hard_sigmoid":
        return np.clip(0.2 * z + 0.5, 0, 1).astype(z.dtype)
    if name == "relu":
        return np.maximum(z, 0)
    if name == "linear":
        return z.copy()
    raise ValueError(check_activation("activation", name))


def derivative(name, y):
    """d act(z) / dz as a function of the output ``y = act(z)``."""
    if name == "tanh":
        return 1 - y * y
    if name == "sigmoid":
        return y * (1 - y)
    if name == "hard_sigmoid":
        return np.where((y > 0) & (y < 1), 0.2, 0).astype(y.dtype)
    if name == "relu":
        return (y > 0).astype(y.dtype)
    if name == "linear":
        return np.ones_like(y)
    raise ValueError(check_activation("activation", name))


def recurrent_dropout_mask(rng, p, shape, dtype):
    """One variational dropout mask: ``(rng.random(shape) >= p) / (1 - p)``."""
    return ((rng.random(shape) >= p) / (1 - p)).astype(dtype)


def lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, *, w_hr=None, w_peephole=None,
                 activation="tanh", recurrent_activation="sigmoid", recurrent_mask=None,
                 lengths=None, reverse=False, train=False):
    """Run the layer over a whole sequence (the module docstring has the equations).

    ``w_peephole (3, H)`` rows i, f, o, or None; ``recurrent_mask (B, P)`` multiplies
    ``h_{t-1}`` before the recurrent product, or None. Returns ``(y, h_n, c_n, cache)``.
    """
    x, w_ih, w_hh, h0, c0 = (np.asarray(a) for a in (x, w_ih, w_hh, h0, c0))
    act = check_activation("activation", activation)
    rec = check_activation("recurrent_activation", recurrent_activation)
    n_steps, n_batch, _ = x.shape
    H, P = w_hh.shape[0] // 4, w_hh.shape[1]
    dtype = x.dtype
    p = np.zeros((3, H), dtype) if w_peephole is None else np.asarray(w_peephole)
    m = np.ones((n_batch, P), dtype) if recurrent_mask is None else np.asarray(recurrent_mask)
    bias = np.zeros(4 * H, dtype)
    for b in (b_ih, b_hh):
        if b is not None:
            bias = bias + b
    time, active = _schedule(n_steps, n_batch, lengths, reverse)
    rows = np.arange(n_batch)
    cache = _Cache(x=x, w_ih=w_ih, w_hh=w_hh, w_hr=w_hr, p=p, m=m, act=act, rec=rec,
                   peephole=w_peephole is not None, time=time, active=active,
                   has_bias=b_ih is not None or b_hh is not None)
    y = np.zeros((n_steps, n_batch, P), dtype)
    h, c = h0, c0
    for k in range(n_steps):
        on = active[k]
        x_k = x[time[k], rows]
        h_in = m * h
        z = x_k @ w_ih.T + h_in @ w_hh.T + bias
        i = activate(rec, z[:, :H] + p[0] * c)
        f = activate(rec, z[:, H:2 * H] + p[1] * c)
        g = activate(act, z[:, 2 * H:3 * H])
        c_new = f * c + i * g
        o = activate(rec, z[:, 3 * H:] + p[2] * c_new)
        act_c = activate(act, c_new)
        r = o * act_c
        h_new = r if w_hr is None else r @ w_hr.T
        if train:
            cache.steps.append(dict(x=x_k, h_in=h_in, c_prev=c, c=c_new, i=i, f=f, g=g, o=o,
                                    act_c=act_c, r=r))
        y[time[k][on], rows[on]] = h_new[on]
        h = np.where(on[:, None], h_new, h)  # ended rows keep their state
        c = np.where(on[:, None], c_new, c)
    return y, np.array(h, dtype), np.array(c, dtype), cache if train else None


def lstm_backward(cache, dy=None, dh_n=None, dc_n=None):
    """BPTT for one ``lstm_forward(..., train=True)`` call (the masks are the forward's).
    ``dy``, ``dh_n``, ``dc_n`` may be None (zero). Returns `LSTMGrads`."""
    x, w_ih, w_hh, w_hr, p, m = cache.x, cache.w_ih, cache.w_hh, cache.w_hr, cache.p, cache.m
    act, rec = cache.act, cache.rec
    n_steps, n_batch, _ = x.shape
    H, P = w_hh.shape[0] // 4, w_hh.shape[1]
    dtype = x.dtype
    rows = np.arange(n_batch)
    dx = np.zeros_like(x)
    dw_ih, dw_hh, dp = np.zeros_like(w_ih), np.zeros_like(w_hh), np.zeros_like(p)
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
        i, f, g, o, act_c, c_prev = s["i"], s["f"], s["g"], s["o"], s["act_c"], s["c_prev"]
        dz_o = dr * act_c * derivative(rec, o)
        # c_t reaches the loss through the next step, r_t = o * act(c_t) and o's peephole
        dc_k = dc_k + dr * o * derivative(act, act_c) + dz_o * p[2]
        dz_i = dc_k * g * derivative(rec, i)
        dz_f = dc_k * c_prev * derivative(rec, f)
        dz_g = dc_k * i * derivative(act, g)
        dz = np.concatenate([dz_i, dz_f, dz_g, dz_o], axis=1)
        dp += np.stack([(dz_i * c_prev).sum(0), (dz_f * c_prev).sum(0),
                        (dz_o * s["c"]).sum(0)])
        dw_ih += dz.T @ s["x"]
        dw_hh += dz.T @ s["h_in"]
        db += dz.sum(axis=0)
        ran = cache.active[k]
        dx[t[ran], rows[ran]] = (dz @ w_ih)[ran]
        dh = np.where(on, (dz @ w_hh) * m, dh)
        dc = np.where(on, dc_k * f + dz_i * p[0] + dz_f * p[1], dc)
    db_ih = db if cache.has_bias else None
    db_hh = db.copy() if cache.has_bias else None
    return LSTMGrads(dx, dh.astype(dtype), dc.astype(dtype), dw_ih, dw_hh, db_ih, db_hh,
                        dw_hr, dp if cache.peephole else None)


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
                       dropout_masks=None, recurrent_masks=None, activation="tanh",
                       recurrent_activation="sigmoid", train=False):
    """PyTorch's ``nn.LSTM`` (with the variants) as a composition of `lstm_forward` calls.

    ``params``: PyTorch ``state_dict`` names -> arrays (peepholes where it has
    ``weight_peephole{sfx}`` ``(3, H)``). ``x (T, B, I)``, ``h0 (L*D, B, P)``,
    ``c0 (L*D, B, H)`` indexed layer * D + direction. ``dropout_masks``: None or one
    ``(T, B, D*P)`` array per layer but the last, multiplied into that layer's output;
    ``recurrent_masks`` None or one ``(B, P)`` mask per layer-direction. Returns
    ``(y (T, B, D*P), h_n, c_n, cache)``.
    """
    D = 2 if bidirectional else 1
    layer_in = np.asarray(x)
    h_n, c_n, caches = [], [], []
    for k in range(num_layers):
        outputs = []
        for _, d, sfx in _layer_names(num_layers, bidirectional)[k * D:(k + 1) * D]:
            j = k * D + d
            y, h, c, cache = lstm_forward(
                layer_in, params[f"weight_ih{sfx}"], params[f"weight_hh{sfx}"],
                params.get(f"bias_ih{sfx}"), params.get(f"bias_hh{sfx}"), h0[j], c0[j],
                w_hr=params.get(f"weight_hr{sfx}"), w_peephole=params.get(f"weight_peephole{sfx}"),
                activation=activation, recurrent_activation=recurrent_activation,
                recurrent_mask=None if recurrent_masks is None else recurrent_masks[j],
                lengths=lengths, reverse=d == 1, train=train)
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
    """Backward of `lstm_stack_forward`: ``"x"``, ``"h0"``, ``"c0"`` and one gradient per
    parameter name (peepholes included)."""
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
            if g.dw_peephole is not None:
                grads[f"weight_peephole{sfx}"] = g.dw_peephole
        masks = cache["masks"]
        d_out = d_in * masks[k - 1] if masks is not None and k > 0 else d_in
    grads.update(x=d_out, h0=np.stack(dh0), c0=np.stack(dc0))
    return grads
