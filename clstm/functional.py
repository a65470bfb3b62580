"""Compiled LSTM kernels (one layer, one direction) with the reference's signatures.

``lstm_forward`` / ``lstm_backward`` here and in `clstm.reference` take and return the same
things, so code and tests can switch between the compiled and the NumPy implementation.
Arrays are validated, cast to the weights' dtype (float32 or float64) and made C-contiguous;
the compiled kernels then run with the GIL released.

Internally sequences are packed (`Packing`): rows sorted by length, only real steps stored.
`clstm.LSTM` packs once per call and runs every layer and direction in that layout.
"""
import functools
import math
import threading

import numpy as np

from . import _lstm
from ._checks import (check_blas_sizes, check_lengths, check_shape, float_array, float_dtype,
                      positive_int)
from ._threads import get_num_threads, kernel_call, kernel_lock, openmp_enabled
from .reference import LSTMGrads

# The inference forward hoists the input projection of as many steps as fit in this many
# gate values (at least one step), so its scratch memory does not grow with the sequence.
# 8 MB of float32: at H = 1024 that is 16 steps of B = 32 per pass over w_ih (16 MB), which
# measured 84 -> 77 ms for T=50, B=32 at 2 threads against 4 steps per pass.
GATES_CHUNK_ELEMENTS = 1 << 21
# When the time loop shares hidden units among threads instead of batch rows (see
# Packing.unit_bounds).
UNIT_SPLIT_MIN_BYTES = 1 << 18
UNIT_SPLIT_MIN_UNITS_PER_THREAD = 64
UNIT_SPLIT_MAX_ROWS_PER_THREAD = 2

_scratch_buffers = threading.local()


def scratch(slot, shape, dtype):
    """An uninitialised array for a kernel's internal scratch (packed weights, transposes,
    inference gates), reusing this thread's buffer for ``slot``. Fresh large arrays cost
    page faults on every call (the kernel zeroes each new page: ~10% of a large training
    step); reusing them keeps up to the largest size each slot has needed per Python
    thread. Nothing outside one kernel call may hold on to the result. (Kept lean: it runs
    several times per call, and small calls are mostly Python.)"""
    flat = type(shape) is int
    n = shape if flat else math.prod(shape)
    buffers = _scratch_buffers.__dict__
    buffer = buffers.get((slot, dtype))
    if buffer is None or buffer.size < n:
        buffer = buffers[(slot, dtype)] = np.empty(max(n, 1), dtype)
    return buffer[:n] if flat else buffer[:n].reshape(shape)


@functools.lru_cache(maxsize=64)
def _zeros(n, dtype):
    """A read-only zero vector, shared between calls."""
    zeros = np.zeros(n, dtype)
    zeros.flags.writeable = False
    return zeros


@functools.lru_cache(maxsize=256)
def _even_bounds(B, n):
    """[0, B/n, 2B/n, ..., B] (n >= 1 parts; read-only, shared between calls)."""
    bounds = np.arange(max(n, 1) + 1, dtype=np.intp) * B // max(n, 1)
    bounds.flags.writeable = False
    return bounds


class Packing:
    """The packed layout of a (T, B, .) batch whose row b has ``lengths[b]`` real steps.

    Rows are sorted by length, longest first (``order[j]`` is the original row at sorted
    position j), and only real steps are stored, step-major: step t is rows
    ``[offsets[t], offsets[t+1])`` of an (N, .) array, holding the sorted rows still running.
    With no lengths (or all equal to T) this is the plain layout: packing is a reshape and
    ``offsets`` is None (the kernels then compute t*B, so nothing here grows with T).
    """

    def __init__(self, T, B, lengths=None):
        self.T, self.B = T, B
        self.uniform = lengths is None or bool(np.all(lengths == T))
        if self.uniform:
            self.order = None
            self.sorted_lengths = np.full(B, T, np.intp)
            self.offsets = None
            self.steps, self.n_rows, self.first_step_rows = T, T * B, B
            return
        self.order = np.argsort(-lengths, kind="stable")
        lengths = self.sorted_lengths = lengths[self.order].astype(np.intp)
        steps = int(lengths[0]) if B else 0
        # rows still running at step t: the sorted lengths greater than t
        batch_sizes = np.searchsorted(-lengths, -np.arange(steps), side="left")
        self.offsets = np.concatenate([[0], np.cumsum(batch_sizes)]).astype(np.intp)
        self.steps, self.n_rows = steps, int(self.offsets[-1])
        self.first_step_rows = int(batch_sizes[0]) if steps else 0
        t = np.repeat(np.arange(steps), batch_sizes)
        j = np.arange(self.offsets[-1]) - self.offsets[t]
        self._src = t * B + self.order[j]                    # packed row -> padded row
        self._rev = self.offsets[lengths[j] - 1 - t] + j     # (t, j) <-> (len_j - 1 - t, j)

    def pack(self, a):
        """(T, B, F) -> (N, F)."""
        flat = a.reshape(self.T * self.B, a.shape[-1])
        return flat if self.uniform else flat[self._src]

    def unpack(self, p):
        """(N, F) -> (T, B, F), zeros past each row's length."""
        if self.uniform:
            return p.reshape(self.T, self.B, p.shape[-1])
        out = np.zeros((self.T * self.B, p.shape[-1]), p.dtype)
        out[self._src] = p
        return out.reshape(self.T, self.B, p.shape[-1])

    def reverse(self, p, out=None):
        """Each row's steps in reverse order (into ``out``, else a new array): the reverse
        direction's view."""
        if out is None:
            out = np.empty(p.shape, p.dtype)
        if self.uniform:  # (splitting the row axis of a row-strided view is still a view)
            np.copyto(out.reshape(self.T, self.B, -1), p.reshape(self.T, self.B, -1)[::-1])
        else:
            np.take(p, self._rev, axis=0, out=out)
        return out

    def sort_rows(self, s):
        """(..., B, F) states in sorted row order (a new C-contiguous array)."""
        return s.copy() if self.uniform else np.ascontiguousarray(s[..., self.order, :])

    def unsort_rows(self, s):
        if self.uniform:
            return s
        out = np.empty_like(s)
        out[..., self.order, :] = s
        return out

    def unit_bounds(self, n_threads, H, projection, dtype):
        """Hidden-unit split for the time loop, or None for the batch split (`bounds`).

        Each thread then computes its share of the hidden units for every row, and the
        threads meet at a barrier after each step; each reads only its share of w_hh per
        step instead of all of it. Measured at 2 threads, T = 100, B = 1 (docs/performance.md):
        1.4-1.7x faster than the batch split once w_hh is >= 512 KB (H >= 256 in float32),
        even at B = 4 rows per thread; 1.13x inference and training at H = 128 (256 KB);
        slower with a smaller w_hh or fewer units per thread (float32 H = 96, float64
        H = 96: 0.75x inference), where a barrier per step outweighs the saving. Results
        are identical either way.
        """
        width = _lstm.packed_panel_width(dtype == np.float64)
        n = min(n_threads if openmp_enabled() else 1, H // width)
        w_hh_bytes = 4 * H * H * np.dtype(dtype).itemsize
        if (n < 2 or projection or H % width or w_hh_bytes < UNIT_SPLIT_MIN_BYTES
                or H < UNIT_SPLIT_MIN_UNITS_PER_THREAD * n
                or self.B > UNIT_SPLIT_MAX_ROWS_PER_THREAD * n):
            return None
        panels = H // width
        return (np.arange(n + 1) * panels // n * width).astype(np.intp)

    def bounds(self, n_threads):
        """Batch slice bounds for the kernels' time loop: one slice per thread, contiguous
        in sorted order, cut where each slice has an equal share of the steps."""
        if self.uniform:
            return _even_bounds(self.B, min(n_threads if openmp_enabled() else 1, self.B))
        running = int(np.count_nonzero(self.sorted_lengths))
        n = min(n_threads if openmp_enabled() else 1, running)
        if n <= 1:
            return _even_bounds(self.B, 1)
        work = np.cumsum(self.sorted_lengths)
        cuts = np.searchsorted(work, work[-1] * np.arange(1, n) / n, side="left") + 1
        return np.concatenate([[0], np.minimum(cuts, self.B), [self.B]]).astype(np.intp)


class LayerCache:
    """What `layer_backward` needs from a training `layer_forward`. Backward turns the gate
    activations into gate gradients in place, so it can run once per forward."""

    def __init__(self, **arrays):
        self.__dict__.update(arrays)
        self.consumed = False


def layer_forward(x, packing, w_ih, w_hh, bias, w_hr, h0, c0, train, n_threads, y=None):
    """One layer, one direction, on packed x (N, I) and sorted states h0 (B, P), c0 (B, H).

    Arrays must be validated, C-contiguous and of one dtype. With ``train`` the cache keeps
    references to x, the weights and h0/c0: callers pass arrays nobody writes to until
    backward has run. Returns ``y (N, P), h_n, c_n, cache`` (cache None without train);
    inference writes y into the given C-contiguous array if there is one.
    """
    N, B = packing.n_rows, packing.B
    H, P = c0.shape[1], h0.shape[1]
    dtype = w_hh.dtype
    if not train and N == B == packing.first_step_rows and w_hr is None:
        # One step of a few rows (a layer stepped token by token): LSTMCell's step, on the
        # weights as they are. Packing them would cost more than the step (T=1, B=1,
        # I=H=128: 43 -> 15 us per call).
        with kernel_lock():
            out = _lstm.cell_step(x, h0, c0, w_ih, w_hh, bias, _zeros(4 * H, dtype),
                                  dtype == np.float64)
        if out is not None:
            return out[0], out[0].copy(), out[1], None
    if y is None or train:
        y = np.empty((N, P), dtype)
    units = packing.unit_bounds(n_threads, H, w_hr is not None, dtype)
    if N == 0:  # nothing to run: the state passes through unchanged
        h_n, c_n, gates, cells, r = h0.copy(), c0.copy(), None, None, None
    else:
        h_n = np.empty((B, P), dtype)
        c_n = np.empty((B, H), dtype)
        check_blas_sizes(N, x.shape[1], H)
        if train:
            gates = np.empty((N, 4 * H), dtype)
            cells = np.empty((N, H), dtype)
            r = np.empty((N, H), dtype) if w_hr is not None else None
        else:
            rows = min(N, max(packing.first_step_rows, GATES_CHUNK_ELEMENTS // (4 * H)))
            gates = scratch("gates", (rows, 4 * H), dtype)
            cells = None
            r = scratch("r", (B, H), dtype) if w_hr is not None else None
        with kernel_call(n_threads):
            double = dtype == np.float64
            w_ih_packed = scratch("w_ih", _lstm.packed_length(4 * H, x.shape[1], double), dtype)
            w_hh_packed = scratch("w_hh", _lstm.packed_length(4 * H, P, double), dtype)
            _lstm.forward(x, w_ih, w_hh, bias, w_hr, h0, c0, packing.steps, packing.offsets,
                          packing.sorted_lengths,
                          packing.bounds(1 if units is not None else n_threads), y, h_n, c_n,
                          gates, cells, r, w_ih_packed, w_hh_packed, n_threads, units)
    if not train:
        return y, h_n, c_n, None
    cache = LayerCache(x=x, packing=packing, w_ih=w_ih, w_hh=w_hh, w_hr=w_hr, h0=h0, c0=c0,
                       y=y, gates=gates, cells=cells, r=r, n_threads=n_threads, units=units)
    return y, h_n, c_n, cache


def _accumulator(into, like):
    """``into`` if the kernels can add a gradient shaped like ``like`` straight into it, else
    a new zero array (fresh multi-megabyte arrays cost page faults, and adding them in
    afterwards another pass over memory)."""
    if (isinstance(into, np.ndarray) and into.dtype == like.dtype and into.shape == like.shape
            and into.flags.c_contiguous and into.flags.writeable and into.flags.aligned):
        return into
    return np.zeros_like(like)


def layer_backward(cache, dy, dh, dc, dw_into=(None, None, None)):
    """BPTT for one `layer_forward(train=True)`: ``dy`` (N, P) or None; ``dh`` (B, P) and
    ``dc`` (B, H) hold dh_n, dc_n and are overwritten with dh0, dc0.
    Returns ``dx, dh, dc, dw_ih, dw_hh, dbias, dw_hr`` (dw_hr None without projection). The
    weight gradients are added into the arrays of ``dw_into`` (for w_ih, w_hh, w_hr) that can
    take them, which are then the ones returned; the others are new arrays."""
    if cache.consumed:
        raise RuntimeError("backward has already run for this forward pass (the cache is "
                           "consumed in place); run forward again")
    cache.consumed = True
    x, w_hh, w_hr, packing = cache.x, cache.w_hh, cache.w_hr, cache.packing
    N = packing.n_rows
    H, P = cache.c0.shape[1], cache.h0.shape[1]
    dtype = w_hh.dtype
    dx = np.zeros_like(x)
    dw_ih = _accumulator(dw_into[0], cache.w_ih)
    dw_hh = _accumulator(dw_into[1], w_hh)
    dbias = np.zeros(4 * H, dtype)
    dw_hr = None if w_hr is None else _accumulator(dw_into[2], w_hr)
    if N > 0:
        double = dtype == np.float64
        h_prev_ws = (None if packing.uniform
                     else scratch("h_prev", (N - packing.first_step_rows, P), dtype))
        dh_all = scratch("dh_all", (N, P), dtype) if w_hr is not None else None
        dr = scratch("r", (packing.B, H), dtype) if w_hr is not None else None
        with kernel_call(cache.n_threads):
            _lstm.backward(x, cache.w_ih, w_hh, w_hr, cache.h0, cache.c0, cache.y, cache.gates,
                           cache.cells, cache.r, packing.steps, packing.offsets,
                           packing.bounds(1 if cache.units is not None else cache.n_threads),
                           dy, dh, dc, dx, dw_ih, dw_hh,
                           dbias, dw_hr, np.ones(N, dtype), h_prev_ws, dh_all, dr,
                           scratch("w_ih", _lstm.packed_length(x.shape[1], 4 * H, double), dtype),
                           scratch("w_hh", _lstm.packed_length(P, 4 * H, double), dtype),
                           scratch("rows", _lstm.packed_length(max(x.shape[1], P), N, double),
                                   dtype),
                           scratch("dG_t", _lstm.dG_t_length(N, cache.n_threads), dtype),
                           cache.n_threads, cache.units)
    cache.gates = None
    return dx, dh, dc, dw_ih, dw_hh, dbias, dw_hr


# ---------------------------------------------------------------------------------------------
# The public single-layer API, padded (T, B, .) in and out, like clstm.reference.

class ForwardCache:
    """What ``lstm_backward`` needs from ``lstm_forward(..., train=True)``."""

    def __init__(self, layer, reverse, has_bias, shape):
        self.layer, self.reverse, self.has_bias, self.shape = layer, reverse, has_bias, shape


def _check_args(x, w_ih, w_hh, b_ih, b_hh, h0, c0, w_hr):
    w_ih = float_array("w_ih", w_ih, None)
    dtype = float_dtype(w_ih.dtype, "w_ih dtype")
    w_hh = check_shape("w_hh", float_array("w_hh", w_hh, dtype), ("4*H", "P"))
    H, P = w_hh.shape[0] // 4, w_hh.shape[1]
    if w_hh.shape[0] != 4 * H or H < 1 or P < 1:
        raise ValueError(f"w_hh must have shape (4*H, P) with H, P >= 1, got {w_hh.shape}")
    if w_hr is None:
        if P != H:
            raise ValueError(f"w_hh must have shape (4*H, H) = ({4 * H}, {H}) without w_hr, "
                             f"got {w_hh.shape}")
    else:
        w_hr = check_shape("w_hr", float_array("w_hr", w_hr, dtype), (P, H))
    check_shape("w_ih", w_ih, (4 * H, "I"))
    if w_ih.shape[1] < 1:
        raise ValueError(f"w_ih must have shape (4*H, I) with I >= 1, got {w_ih.shape}")
    x = check_shape("x", float_array("x", x, dtype), ("T", "B", w_ih.shape[1]))
    B = x.shape[1]
    biases = [None if b is None else check_shape(name, float_array(name, b, dtype), (4 * H,))
              for name, b in (("b_ih", b_ih), ("b_hh", b_hh))]
    h0 = check_shape("h0", float_array("h0", h0, dtype), (B, P))
    c0 = check_shape("c0", float_array("c0", c0, dtype), (B, H))
    return x, w_ih, w_hh, biases[0], biases[1], h0, c0, w_hr


def lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, *, w_hr=None, lengths=None, reverse=False,
                 train=False, n_threads=None):
    """Run one LSTM layer over ``x (T, B, I)`` from state ``h0 (B, P)``, ``c0 (B, H)``.

    ``w_hr (P, H)`` adds a projection (``P = H`` without it); ``lengths (B,)`` gives each
    row's number of real steps (outputs past it are zero, the final state is the state at
    the row's own last step); ``reverse`` runs each row from its last step back to step 0.
    Returns ``(y, h_n, c_n, cache)`` with ``y (T, B, P)``; ``cache`` (None unless ``train``)
    is what `lstm_backward` takes. ``b_ih``/``b_hh`` may be None. ``n_threads`` defaults to
    `clstm.get_num_threads()`.
    """
    x, w_ih, w_hh, b_ih, b_hh, h0, c0, w_hr = _check_args(x, w_ih, w_hh, b_ih, b_hh, h0, c0,
                                                          w_hr)
    T, B, _ = x.shape
    if lengths is not None:
        lengths = check_lengths(lengths, T, B)
    n_threads = get_num_threads() if n_threads is None else positive_int("n_threads", n_threads)
    bias = np.zeros(w_hh.shape[0], w_hh.dtype)
    for b in (b_ih, b_hh):
        if b is not None:
            bias += b
    packing = Packing(T, B, lengths)
    xp = packing.pack(x)
    xp = packing.reverse(xp) if reverse else xp
    if train:  # the cache must not see later writes to the caller's arrays
        xp = xp.copy() if np.may_share_memory(xp, x) else xp
        w_ih, w_hh = w_ih.copy(), w_hh.copy()
        w_hr = None if w_hr is None else w_hr.copy()
    y, h_n, c_n, layer = layer_forward(xp, packing, w_ih, w_hh, bias, w_hr,
                                       packing.sort_rows(h0), packing.sort_rows(c0), train,
                                       n_threads)
    y = packing.unpack(packing.reverse(y) if reverse else y)
    h_n, c_n = packing.unsort_rows(h_n), packing.unsort_rows(c_n)
    if not train:
        return y, h_n, c_n, None
    y = y.view()
    y.flags.writeable = False  # it may be the cache's own y
    has_bias = b_ih is not None or b_hh is not None
    return y, h_n, c_n, ForwardCache(layer, reverse, has_bias, x.shape)


def lstm_backward(cache, dy=None, dh_n=None, dc_n=None):
    """Backpropagation through time for one ``lstm_forward(..., train=True)`` call.

    ``dy (T, B, P)``, ``dh_n (B, P)``, ``dc_n (B, H)``: gradients of the loss w.r.t. the
    outputs; each may be None (zero); ``dy`` past a row's length is ignored. Returns
    `clstm.reference.LSTMGrads`. Runs once per forward.
    """
    if not isinstance(cache, ForwardCache):
        raise TypeError("cache must come from clstm.functional.lstm_forward(..., train=True), "
                        f"got {type(cache).__name__}")
    layer = cache.layer
    packing = layer.packing
    dtype = layer.w_hh.dtype
    T, B, _ = cache.shape
    H, P = layer.c0.shape[1], layer.h0.shape[1]
    if dy is not None:
        dy = packing.pack(check_shape("dy", float_array("dy", dy, dtype), (T, B, P)))
        dy = packing.reverse(dy) if cache.reverse else np.ascontiguousarray(dy)
    dh = np.zeros((B, P), dtype)
    dc = np.zeros((B, H), dtype)
    if dh_n is not None:
        dh[...] = check_shape("dh_n", float_array("dh_n", dh_n, dtype), (B, P))
    if dc_n is not None:
        dc[...] = check_shape("dc_n", float_array("dc_n", dc_n, dtype), (B, H))
    dx, dh, dc, dw_ih, dw_hh, db, dw_hr = layer_backward(
        layer, dy, packing.sort_rows(dh), packing.sort_rows(dc))
    dx = packing.unpack(packing.reverse(dx) if cache.reverse else dx)
    db_ih = db if cache.has_bias else None
    db_hh = db.copy() if cache.has_bias else None
    return LSTMGrads(dx, packing.unsort_rows(dh), packing.unsort_rows(dc), dw_ih, dw_hh,
                     db_ih, db_hh, dw_hr)
