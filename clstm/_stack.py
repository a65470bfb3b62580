"""Layers x directions x dropout x lengths, once, for any stack of recurrent layers.

The input is packed once (`clstm._packing.Packing`) and every layer and direction runs in
the packed layout: a layer's input is the previous layer's ``[forward | reverse]`` outputs
(times the dropout mask in training), the reverse direction is the forward kernel on each
row's steps reversed, and the result is unpacked once by the caller. `clstm.LSTM` and the
frozen models run through here; they differ only in the `LayerWeights` they pass.
"""
import numpy as np

from . import _dispatch, _packing, _recurrent
from ._checks import check_blas_sizes
from .functional import bias_grads, layer_backward, layer_forward, layer_infer, pooled_empty, \
    scratch


class Tape:
    """What `backward` needs from a training `forward`."""
    __slots__ = ("packing", "caches", "masks", "n_directions")

    def __init__(self, packing, caches, masks, n_directions):
        self.packing, self.caches, self.masks = packing, caches, masks
        self.n_directions = n_directions


def forward(weights, packing, x, h0, c0, *, train, n_threads, dropout=0.0, rng=None,
            strategy=None, recurrent_dropout=0.0):
    """Run the stack on packed ``x (N, I)`` from sorted states ``h0 (L*D, B, P)``,
    ``c0 (L*D, B, H)`` (None for a cell whose state is h alone: c_n is then None).

    ``weights[layer][direction]`` are `clstm.functional.LayerWeights` (with ``train``, ones
    nobody changes until backward). Dropout (training only, on every layer's output but
    the last) draws ``rng.random((T, B, D*P)) >= dropout`` once per layer, in order.
    Recurrent dropout (training only) draws ``rng.random((B, P)) >= recurrent_dropout``
    for each layer-direction just before it runs (before that layer's output mask): one
    mask per sequence on h_{t-1} at every step, shared by the four gates, scaled by
    ``1/(1-recurrent_dropout)``.
    Returns packed ``y (N, D*P)``, sorted ``h_n``, ``c_n`` and a `Tape` (None without
    ``train``).
    """
    L, D = len(weights), len(weights[0])
    dtype, P, N = h0.dtype, h0.shape[-1], packing.n_rows
    h_n, c_n = np.empty_like(h0), None if c0 is None else np.empty_like(c0)
    caches, masks = [], []
    layer_in = x
    for layer in range(L):
        outputs = []
        for d in range(D):
            k = layer * D + d
            # (training caches keep their input: a reversed copy of their own)
            xin = layer_in if d == 0 else packing.reverse(
                layer_in, None if train else scratch("reversed_input", layer_in.shape, dtype))
            mask = None
            if train and recurrent_dropout > 0:
                keep = rng.random((packing.B, P)) >= recurrent_dropout
                mask = packing.sort_rows(keep.astype(dtype) / dtype.type(1 - recurrent_dropout))
            y, h_n[k], c_k, cache = layer_forward(
                xin, packing, weights[layer][d], h0[k], None if c0 is None else c0[k], train,
                n_threads, None if D == 1 else scratch(f"y{d}", (N, P), dtype), strategy, mask)
            if c_n is not None:
                c_n[k] = c_k
            outputs.append(y)
            caches.append(cache)
        if D == 1:
            layer_in = outputs[0]
        else:  # [forward | reverse], the reverse direction's steps put back in order
            layer_in = pooled_empty((N, 2 * P), dtype)
            layer_in[:, :P] = outputs[0]
            packing.reverse(outputs[1], layer_in[:, P:])
        if train and dropout > 0 and layer < L - 1:
            keep = rng.random((packing.T, packing.B, D * P)) >= dropout
            mask = packing.pack(keep.astype(dtype) / dtype.type(1 - dropout))
            layer_in = layer_in * mask
            masks.append(mask)
    return layer_in, h_n, c_n, (Tape(packing, caches, masks, D) if train else None)


def infer(weights, x, h0, c0, *, n_threads, strategy=None):
    """Inference of a one-direction stack (``weights[layer]``: `LayerWeights`) on
    full-length rows, ``x (T, B, I)`` time-major and C-contiguous, states as `forward`'s:
    `forward`'s results bit for bit, without its packing and sorting, which cost a short
    call more than its steps. Returns ``y (T, B, P)``, ``h_n``, ``c_n``; None when a layer
    would take the step path (then `forward`)."""
    T, B, I = x.shape
    N, P, dtype = T * B, h0.shape[-1], h0.dtype
    H = P if c0 is None else c0.shape[-1]
    packing = _packing.packing(T, B)
    y = np.empty((T, B, P), dtype)
    h_n, c_n = np.empty_like(h0), None if c0 is None else np.empty_like(c0)
    layer_in = x.reshape(N, I)
    for k, w in enumerate(weights):
        cell = w.cell
        _, schedule = _dispatch.plan(
            packing, n_threads, H, w.w_hr is not None, dtype, strategy,
            allow_step=w.packed is None, cell=cell, n_input=layer_in.shape[1],
            G=_recurrent.n_gates(cell) * H, R=_recurrent.row_blocks(cell) * H)
        if schedule is None:
            return None
        check_blas_sizes(N, layer_in.shape[1], H)
        # (the layers between write alternate scratch buffers: one reads, the next writes)
        out = y.reshape(N, P) if k == len(weights) - 1 else scratch(f"y{k % 2}", (N, P), dtype)
        layer_infer(layer_in, w, h0[k], None if c0 is None else c0[k], out, h_n[k],
                    None if c0 is None else c_n[k], schedule)
        layer_in = out
    return y, h_n, c_n


def backward(tape, dy, dh, dc, grads_into):
    """BPTT through a training `forward`: packed ``dy (N, D*P)`` or None; sorted ``dh``,
    ``dc`` hold dh_n, dc_n and become dh0, dc0 (in place; dc None for a stateless cell).

    ``grads_into[k]`` (k = layer*D + direction) is ``(dw_ih, dw_hh, dw_hr)``: arrays the
    kernels add the weight gradients into where they can. Returns packed ``dx`` (None if
    the first layer's weights had ``input_grad=False``) and, per k,
    ``(dw_ih, dw_hh, dbias, dw_hr, dextra)`` as `layer_backward` returns them (see
    `add_grads`).
    """
    packing, caches, masks, D = tape.packing, tape.caches, tape.masks, tape.n_directions
    L = len(caches) // D
    dtype = dh.dtype
    P = dh.shape[-1]
    d_out = dy
    layer_grads = [None] * len(caches)
    for layer in reversed(range(L)):
        for d in range(D):
            k = layer * D + d
            # reversed copies into reused buffers: fresh ones cost page faults (backward
            # keeps neither; d_in is the forward direction's own new dx)
            if d_out is None:
                dy_d = None
            elif d == 0:
                dy_d = np.ascontiguousarray(d_out[:, :P])
            else:
                dy_d = packing.reverse(d_out[:, P:], scratch("reversed_dy", (packing.n_rows, P),
                                                             dtype))
            dx, dh[k], dc_k, *layer_grads[k] = layer_backward(
                caches[k], dy_d, dh[k].copy(), None if dc is None else dc[k].copy(),
                grads_into[k])
            if dc is not None:
                dc[k] = dc_k
            if d == 0 or dx is None:
                d_in = dx
            else:
                d_in += packing.reverse(dx, scratch("reversed_dx", dx.shape, dtype))
        d_out = d_in * masks[layer - 1] if layer > 0 and masks else d_in
    return d_out, layer_grads


def add_grads(grads, names, layer_grads, into, cell="lstm"):
    """Add one layer-direction's gradients into the module's ``grads``: ``names`` are
    (w_ih, w_hh, w_hr, b_ih, b_hh[, extra]) parameter names (None where absent),
    ``layer_grads`` ``(dw_ih, dw_hh, dbias, dw_hr, dextra)``; a weight gradient the kernels
    already added into its target (``into``) is not added again. The biases' gradients come
    from the cell's row bias (`clstm.functional.bias_grads`); ``extra`` (the peepholes) gets
    dextra."""
    dw_ih, dw_hh, dbias, dw_hr, dextra = layer_grads
    for name, dw, target in zip(names[:3], (dw_ih, dw_hh, dw_hr), into):
        if name is not None and dw is not None and dw is not target:
            grads[name] += dw
    for name, db in zip(names[3:5], bias_grads(cell, dbias)):
        if name is not None:
            grads[name] += db
    if len(names) > 5 and names[5] is not None:
        grads[names[5]] += dextra
