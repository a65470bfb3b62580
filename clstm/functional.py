"""Compiled LSTM kernels (one layer, one direction) with the reference's signatures.

``lstm_forward`` / ``lstm_backward`` here and in `clstm.reference` take and return the same
things, so code and tests can switch between the compiled and the NumPy implementation.
Arrays are validated, cast to the weights' dtype (float32 or float64) and made C-contiguous;
the compiled kernels then run with the GIL released.
"""
import numpy as np

from . import _lstm
from ._checks import check_blas_sizes, check_shape, float_array, float_dtype, positive_int
from ._threads import get_num_threads, kernel_call
from .reference import LSTMGrads

# The inference forward hoists the input projection this many gate values at a time
# (>= one time step), so its scratch memory does not grow with the sequence length.
GATES_CHUNK_ELEMENTS = 1 << 19


class ForwardCache:
    """What ``lstm_backward`` needs from ``lstm_forward(..., train=True)``. Backward turns
    the gate activations into gate gradients in place, so it can run once per forward."""

    def __init__(self, x, w_ih, w_hh, has_bias, h0, c0, y, gates, cells, n_threads):
        self.x, self.w_ih, self.w_hh, self.has_bias = x, w_ih, w_hh, has_bias
        self.h0, self.c0, self.y, self.gates, self.cells = h0, c0, y, gates, cells
        self.n_threads = n_threads
        self.consumed = False


def _check_args(x, w_ih, w_hh, b_ih, b_hh, h0, c0):
    w_ih = float_array("w_ih", w_ih, None)
    dtype = float_dtype(w_ih.dtype, "w_ih dtype")
    w_hh = float_array("w_hh", w_hh, dtype)
    check_shape("w_hh", w_hh, ("4*H", "H"))
    H = w_hh.shape[1]
    if w_hh.shape[0] != 4 * H or H < 1:
        raise ValueError(f"w_hh must have shape (4*H, H) with H >= 1, got {w_hh.shape}")
    check_shape("w_ih", w_ih, (4 * H, "I"))
    if w_ih.shape[1] < 1:
        raise ValueError(f"w_ih must have shape (4*H, I) with I >= 1, got {w_ih.shape}")
    x = check_shape("x", float_array("x", x, dtype), ("T", "B", w_ih.shape[1]))
    B = x.shape[1]
    biases = [None if b is None else check_shape(name, float_array(name, b, dtype), (4 * H,))
              for name, b in (("b_ih", b_ih), ("b_hh", b_hh))]
    h0 = check_shape("h0", float_array("h0", h0, dtype), (B, H))
    c0 = check_shape("c0", float_array("c0", c0, dtype), (B, H))
    return x, w_ih, w_hh, biases[0], biases[1], h0, c0


def lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, *, train=False, n_threads=None):
    """Run one LSTM layer over ``x (T, B, I)`` from state ``h0, c0 (B, H)``.

    Returns ``(y, h_n, c_n, cache)`` with ``y (T, B, H)``; ``cache`` (None unless ``train``)
    is what `lstm_backward` takes. ``b_ih``/``b_hh`` may be None. ``n_threads`` defaults to
    `clstm.get_num_threads()`.
    """
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = _check_args(x, w_ih, w_hh, b_ih, b_hh, h0, c0)
    bias = np.zeros(w_hh.shape[0], w_hh.dtype)
    for b in (b_ih, b_hh):
        if b is not None:
            bias += b
    n_threads = get_num_threads() if n_threads is None else positive_int("n_threads", n_threads)
    if train:  # the cache must not see later writes to the caller's arrays
        x, w_ih, w_hh, h0, c0 = (a.copy() for a in (x, w_ih, w_hh, h0, c0))
    return _forward(x, w_ih, w_hh, bias, b_ih is not None or b_hh is not None, h0, c0, train,
                    n_threads)


def _forward(x, w_ih, w_hh, bias, has_bias, h0, c0, train, n_threads):
    """`lstm_forward` on arrays that are already validated, contiguous and of one dtype.
    With ``train``, ``x``, ``w_ih``, ``w_hh``, ``h0`` and ``c0`` must not be written to until
    backward has run (callers pass copies), and the returned ``y`` is read-only for the same
    reason."""
    T, B, _ = x.shape
    check_blas_sizes(x.shape, w_hh.shape[1])
    H = w_hh.shape[1]
    dtype = w_hh.dtype
    y = np.empty((T, B, H), dtype)
    h_n = np.empty((B, H), dtype)
    c_n = np.empty((B, H), dtype)
    if T == 0 or B == 0:  # nothing to run: the state passes through unchanged
        h_n[...] = h0
        c_n[...] = c0
        cache = ForwardCache(x, w_ih, w_hh, has_bias, h0, c0, y, None, None, n_threads)
        return y, h_n, c_n, cache if train else None
    with kernel_call(n_threads):
        if train:
            gates = np.empty((T, B, 4 * H), dtype)
            cells = np.empty((T, B, H), dtype)
            _lstm.forward_training(x, w_ih, w_hh, bias, h0, c0, y, h_n, c_n, gates, cells,
                                   n_threads)
            cache = ForwardCache(x, w_ih, w_hh, has_bias, h0, c0, y, gates, cells, n_threads)
            y = y.view()
            y.flags.writeable = False
            return y, h_n, c_n, cache
        t_chunk = max(1, min(T, GATES_CHUNK_ELEMENTS // (B * 4 * H)))
        gates_ws = np.empty((t_chunk, B, 4 * H), dtype)
        _lstm.forward_inference(x, w_ih, w_hh, bias, h0, c0, y, h_n, c_n, gates_ws, n_threads)
    return y, h_n, c_n, None


def lstm_backward(cache, dy=None, dh_n=None, dc_n=None):
    """Backpropagation through time for one ``lstm_forward(..., train=True)`` call.

    ``dy (T, B, H)``, ``dh_n``, ``dc_n (B, H)``: gradients of the loss w.r.t. the outputs;
    each may be None (zero). Returns `clstm.reference.LSTMGrads`. Runs once per forward.
    """
    if not isinstance(cache, ForwardCache):
        raise TypeError("cache must come from clstm.functional.lstm_forward(..., train=True), "
                        f"got {type(cache).__name__}")
    dtype = cache.w_hh.dtype
    T, B, _ = cache.x.shape
    H = cache.w_hh.shape[1]
    if dy is not None:
        dy = check_shape("dy", float_array("dy", dy, dtype), (T, B, H))
    dh = np.zeros((B, H), dtype)
    dc = np.zeros((B, H), dtype)
    if dh_n is not None:
        dh[...] = check_shape("dh_n", float_array("dh_n", dh_n, dtype), (B, H))
    if dc_n is not None:
        dc[...] = check_shape("dc_n", float_array("dc_n", dc_n, dtype), (B, H))
    return _backward(cache, dy, dh, dc)


def _backward(cache, dy, dh, dc):
    """`lstm_backward` on validated arrays; ``dh``, ``dc`` (B, H) are consumed as workspace."""
    if cache.consumed:
        raise RuntimeError("backward has already run for this forward pass (the cache is "
                           "consumed in place); run forward again")
    cache.consumed = True
    x, w_ih, w_hh = cache.x, cache.w_ih, cache.w_hh
    T, B, _ = x.shape
    dtype = w_hh.dtype
    dx = np.zeros_like(x)
    dw_ih = np.zeros_like(w_ih)
    dw_hh = np.zeros_like(w_hh)
    db = np.zeros(w_hh.shape[0], dtype)
    if T > 0 and B > 0:
        with kernel_call(cache.n_threads):
            _lstm.backward(x, w_ih, w_hh, cache.h0, cache.c0, cache.y, cache.gates,
                           cache.cells, dy, dh, dc, dx, dw_ih, dw_hh, db,
                           np.ones(T * B, dtype), cache.n_threads)
    cache.gates = None
    db_ih = db if cache.has_bias else None
    db_hh = db.copy() if cache.has_bias else None
    return LSTMGrads(dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh)
