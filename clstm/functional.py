"""Compiled LSTM kernels (one layer, one direction) with the reference's signatures.

``lstm_forward`` / ``lstm_backward`` here and in `clstm.reference` take and return the same
things, so code and tests can switch between the compiled and the NumPy implementation.
Arrays are validated, cast to the weights' dtype (float32 or float64) and made C-contiguous;
the compiled kernels then run with the GIL released.

Internally sequences are packed (`clstm._packing.Packing`): rows sorted by length, only real
steps stored. `layer_forward` / `layer_backward` run one layer-direction in that layout on
the path `clstm._dispatch` picks; `clstm._stack` runs whole stacks through them.
"""
import itertools
import math
import os
import sys
import threading
import weakref

import numpy as np

from . import _dispatch, _packed, _recurrent
from ._checks import check_blas_sizes, check_lengths, check_shape, float_array, float_dtype, \
    private_copy
from ._packing import Packing
from ._threads import forward_call, kernel_call, kernel_lock, team_size
from .reference import LSTMGrads

__all__ = ["lstm_forward", "lstm_backward", "Packing", "LayerWeights", "release_memory"]

# The inference forward hoists the input projection of as many steps as fit in this many
# gate values (at least one step), so its scratch memory does not grow with the sequence.
GATES_CHUNK_ELEMENTS = 1 << 21

class _ThreadBuffers(dict):
    """One Python thread's scratch buffers, (slot, dtype) -> array (a dict subclass, so
    `release_memory` reaches every live thread's through a weak reference)."""


_live_buffers = weakref.WeakValueDictionary()  # a number per thread -> its buffers
_thread_numbers = itertools.count()


class _Scratch(threading.local):
    def __init__(self):  # (runs once in each thread that uses it)
        self.buffers = _ThreadBuffers()
        _live_buffers[next(_thread_numbers)] = self.buffers


_scratch = _Scratch()


class _Pool:
    """Large arrays a call hands on (a training cache's gates and weight snapshot, the
    gradients) come from here: memory of earlier ones that nothing references any more.
    A new multi-megabyte array costs page faults on every call (the kernel zeroes each
    page at first touch), worth 5-7% of a training step at large weights
    (docs/performance.md). Whether a buffer is free is read off its reference count: the
    pool's own reference is its only one once every view of it has gone, so a result the
    caller keeps is never handed out again. Sizes are rounded up to a class (a quarter of
    their power of two) so sequences of varying length reuse the same buffers."""

    MIN_BYTES = 1 << 20  # below this, malloc's own free lists serve as well
    FREE_BYTES = 1 << 28  # free memory kept for reuse at most (release_memory drops it)

    def __init__(self):
        self.lock = threading.Lock()
        self.buffers = [np.empty(1, np.uint8)]  # raw uint8 arrays, least recently used first
        self.free_refs = 0
        self.free_refs = self._refs(0)  # what the same call reads of a buffer held by no one
        self.buffers = []

    def _refs(self, i):
        return sys.getrefcount(self.buffers[i])

    @staticmethod
    def size_class(nbytes):
        quarter = 1 << max(0, nbytes.bit_length() - 3)
        return -(-nbytes // quarter) * quarter

    def empty(self, shape, dtype):
        """An uninitialised array of ``shape`` (a tuple) and ``dtype`` (an np.dtype)."""
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes < self.MIN_BYTES:
            return np.empty(shape, dtype)
        size = self.size_class(nbytes) + CACHE_LINE
        with self.lock:
            found = None
            for i in range(len(self.buffers) - 1, -1, -1):
                if self.buffers[i].shape[0] == size and self._refs(i) == self.free_refs:
                    found = self.buffers.pop(i)
                    break
            if found is None:
                found = np.empty(size, np.uint8)
                self._trim(self.FREE_BYTES - size)
            self.buffers.append(found)
            start = -found.ctypes.data % CACHE_LINE
            return found[start:start + nbytes].view(dtype).reshape(shape)

    def _free(self):
        return [i for i in range(len(self.buffers)) if self._refs(i) == self.free_refs]

    def free_bytes(self):
        """Bytes of the buffers nothing but the pool references."""
        with self.lock:
            return sum(self.buffers[i].shape[0] for i in self._free())

    def _trim(self, keep):
        """Drop the least recently used free buffers beyond ``keep`` free bytes."""
        free = self._free()
        total = sum(self.buffers[i].shape[0] for i in free)
        drop = set()
        for i in free:
            if total <= keep:
                break
            total -= self.buffers[i].shape[0]
            drop.add(i)
        self.buffers = [b for i, b in enumerate(self.buffers) if i not in drop]

    def release(self):
        """Drop every free buffer; returns their bytes."""
        with self.lock:
            before = sum(b.shape[0] for b in self.buffers)
            self._trim(0)
            return before - sum(b.shape[0] for b in self.buffers)


_pool = _Pool()


def _pool_after_fork_in_child():
    _pool.lock = threading.Lock()  # a thread of the parent may have held it


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_pool_after_fork_in_child)


def pooled_empty(shape, dtype):
    """An uninitialised C-contiguous array from the pool (`_Pool`)."""
    return _pool.empty(shape, dtype)


def pooled_zeros(shape, dtype):
    """A zeroed C-contiguous array from the pool."""
    a = _pool.empty(shape, dtype)
    a.fill(0)
    return a


def pooled_copy(a):
    """A C-contiguous copy of ``a`` in pooled memory."""
    out = _pool.empty(a.shape, a.dtype)
    np.copyto(out, a)
    return out


def release_memory() -> int:
    """Free the scratch buffers clstm keeps between calls, in every Python thread.

    Each thread that ran clstm keeps, per kind of buffer, the largest one its calls have
    needed (fresh memory on every call costs page faults worth more than the arithmetic of
    a small call). They are bounded by that thread's largest calls: for inference the gate
    chunk (``GATES_CHUNK_ELEMENTS`` values, 8 MB in float32) plus, for a bidirectional model,
    a layer's outputs and reversed input (``T*B`` rows each); for training, ``T*B`` rows of
    ``max(I, H_out)`` packed inputs, ``64 * n_threads * T*B`` transposed gradient values
    and, with a projection or bidirectional, a few ``(T*B, H)`` arrays; and the packed
    weights of the last few layer shapes (4 per kind). A thread's buffers also go when the
    thread ends. A buffer in use by a call running in another thread lives on until that
    call returns. Also freed: the large arrays of earlier calls that nothing references
    any more (training caches, weight snapshots, gradients, up to 256 MB), kept so the
    next call of the same size reuses their memory.

    Returns
    -------
    int
        The bytes released (the process returns them to the system as its allocator
        does: large buffers at once).
    """
    released = 0
    for buffers in list(_live_buffers.values()):
        for value in list(buffers.values()):
            released += value.nbytes if isinstance(value, np.ndarray) else value.data.nbytes
        buffers.clear()
    return released + _pool.release()


def scratch(slot, shape, dtype):
    """An uninitialised array for a kernel's internal scratch (packed weights, transposes,
    inference gates), reusing this thread's buffer for ``slot``. Fresh large arrays cost
    page faults on every call; reusing them keeps up to the largest size each slot has
    needed per Python thread. Nothing outside one kernel call may hold on to the result.
    (Kept lean: it runs several times per call, and small calls are mostly Python.)"""
    flat = type(shape) is int
    n = shape if flat else math.prod(shape)
    buffers = _scratch.buffers
    buffer = buffers.get((slot, dtype))
    if buffer is None or buffer.size < n:
        buffer = buffers[(slot, dtype)] = aligned_empty(max(n, 1), dtype)
    return buffer[:n] if flat else buffer[:n].reshape(shape)


CACHE_LINE = 64


def aligned_empty(n, dtype):
    """An uninitialised 1-D array of n elements starting on a cache line: the kernels load
    whole 64-byte vectors, and one that straddles two lines costs two (malloc's large
    blocks start 16 bytes past a page)."""
    dtype = np.dtype(dtype)
    raw = np.empty(n + CACHE_LINE // dtype.itemsize, dtype)
    start = (-raw.ctypes.data % CACHE_LINE) // dtype.itemsize
    return raw[start:start + n]


# The packed weights' format per dtype (np.dtype.name is slow enough to matter per call).
FORMATS = {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64"}
_SCRATCH_PACKED_SHAPES = 4  # per slot and Python thread: a few layer shapes in turn


def _scratch_packed(slot, n_out, n_in, dtype):
    """PackedWeights of (n_out, n_in) to pack into, reused per Python thread: a layer call
    repacks a live model's weights into them (a fresh buffer would cost page faults)."""
    buffers = _scratch.buffers
    key = ("packed", slot, n_out, n_in, dtype)
    packed = buffers.get(key)
    if packed is None:
        same_slot = [k for k in buffers if k[:2] == ("packed", slot)]
        for k in same_slot[:max(0, len(same_slot) + 1 - _SCRATCH_PACKED_SHAPES)]:
            del buffers[k]
        packed = buffers[key] = _packed.PackedWeights(n_out, n_in, FORMATS[dtype])
    return packed


def _pooled_packed(n_out, n_in, dtype):
    """A `PackedWeights` (n_out, n_in) of dtype, not yet packed: in pooled memory when
    large, else in its own array (which starts on a cache line, as the pool's buffers do
    and a small np.empty need not: vector loads across two lines cost two)."""
    fmt = FORMATS[dtype]
    n = _packed.packed_length(n_out, n_in, fmt)
    large = n * dtype.itemsize >= _Pool.MIN_BYTES
    return _packed.PackedWeights(n_out, n_in, fmt, pooled_empty((n,), dtype) if large else None)


# The LSTM variants' activations, by Keras's names, as the cells know them (the CLSTM_ACT_*
# ids of csrc/cells.h; clstm/reference.py has their NumPy definitions).
ACTIVATION_IDS = {"tanh": 0, "sigmoid": 1, "hard_sigmoid": 2, "relu": 3, "linear": 4}


def lstm_cell_variant(peephole=False, activation="tanh", recurrent_activation="sigmoid"):
    """``(cell, options)``: the compiled cell running an LSTM with these options. The plain
    LSTM keeps its own cell (the default path's speed); peepholes or other activations run
    "lstm_peephole" / "lstm_act" with the activations' ids as the cell's options."""
    if not peephole and (activation, recurrent_activation) == ("tanh", "sigmoid"):
        return "lstm", (0, 0)
    return ("lstm_peephole" if peephole else "lstm_act",
            (ACTIVATION_IDS[activation], ACTIVATION_IDS[recurrent_activation]))


class LayerWeights:
    """One layer-direction's weights as the kernels take them: ``w_ih (G, I)``,
    ``w_hh (G, P)``, ``bias (R,)`` (`cell_bias`), ``w_hr (P, H)`` or None.

    The one home of the cell's bias and of the training snapshot: with ``copy=True`` a
    training cache does not see an optimiser step taken before backward. w_ih and w_hh
    are then not copied: the layer `driver_layer` builds packs them at the forward as
    backward multiplies by them (`clstm._recurrent.Layer`'s w_ih_t, w_hh_t), which is
    their snapshot, and only a cell whose dx multiplies on w_ih itself keeps a copy of it.
    ``packed`` is a prepacked `clstm._recurrent.Layer` (a frozen model's), else the weights
    are packed into scratch on every call (they may change in place between calls).
    ``cell`` names the compiled cell (`clstm._recurrent.CELLS`), ``extra`` its extra
    per-unit weights (the peepholes ``(3, H)``) or None, ``options`` its option ids
    (`lstm_cell_variant`). ``input_grad=False`` (training): backward computes no dx, so
    nothing of w_ih is kept or packed for it.
    """
    __slots__ = ("w_ih", "w_hh", "bias", "w_hr", "packed", "cell", "extra", "options",
                 "training", "input_grad")

    def __init__(self, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, *, copy=False,
                 cell="lstm", extra=None, options=(0, 0), input_grad=True):
        self.training = copy
        self.input_grad = input_grad
        if copy:
            w_ih = w_ih if _recurrent.dx_from_packed(cell) or not input_grad \
                else pooled_copy(w_ih)
            w_hr = None if w_hr is None else pooled_copy(w_hr)
            extra = None if extra is None else extra.copy()
        self.w_ih, self.w_hh, self.w_hr = w_ih, w_hh, w_hr
        self.extra, self.options = extra, tuple(options)
        self.bias = cell_bias(cell, b_ih, b_hh, w_hh.shape[0], w_hh.dtype)
        self.packed = None
        self.cell = cell

    def driver_layer(self):
        """The `_recurrent.Layer` to run: the prepacked one, or one packing into scratch."""
        if self.packed is not None:
            return self.packed
        G, I = self.w_ih.shape
        P = self.w_hh.shape[1]
        dtype = self.w_hh.dtype
        w_ih_t = w_hh_t = None
        if self.training:  # (pooled: the cache holds them until backward)
            w_hh_t = _pooled_packed(P, G, dtype)
            w_ih_t = _pooled_packed(I, G, dtype) \
                if self.input_grad and _recurrent.dx_from_packed(self.cell) else None
        return _recurrent.Layer(self.cell, _scratch_packed("w_ih", G, I, dtype),
                                _scratch_packed("w_hh", G, P, dtype),
                                self.bias, self.w_hr, self.w_ih, self.w_hh, self.extra,
                                self.options, w_ih_t, w_hh_t)

    def freeze(self, weights=None):
        """Pack once: later calls use the packed copies (and a copy of the projection), not
        the arrays given, which the caller may go on changing. ``weights``: None keeps the
        dtype; "int8" or "bfloat16" quantises w_ih and w_hh for inference (float32 only;
        `check_weights_format`)."""
        G, I = self.w_ih.shape
        fmt = FORMATS[self.w_hh.dtype] if weights is None else weights
        if self.w_hr is not None:
            self.w_hr = self.w_hr.copy()
        if self.extra is not None:
            self.extra = self.extra.copy()
        self.packed = _recurrent.Layer(
            self.cell, _packed.PackedWeights(G, I, fmt).pack(self.w_ih),
            _packed.PackedWeights(G, self.w_hh.shape[1], fmt).pack(self.w_hh), self.bias,
            self.w_hr, extra=self.extra, options=self.options)
        self.w_ih = self.w_hh = None
        return self


LOW_PRECISION = ("int8", "bfloat16")


def check_weights_format(weights, dtype):
    """``weights`` of ``freeze(weights=...)``: None (the model's dtype), "int8" or
    "bfloat16" (float32 models: activations, states and outputs stay float32)."""
    if weights is None:
        return None
    if not isinstance(weights, str) or weights not in LOW_PRECISION:
        raise ValueError(f"weights must be None, 'int8' or 'bfloat16', got {weights!r}")
    if np.dtype(dtype) != np.float32:
        raise ValueError(f"weights={weights!r} needs a float32 model (its activations stay "
                         f"float32), got dtype {np.dtype(dtype).name}")
    return weights


def bias_sum(b_ih, b_hh, n, dtype):
    """b_ih + b_hh (n,) as one new array; a missing bias counts as zeros."""
    if b_ih is None and b_hh is None:
        return np.zeros(n, dtype)
    if b_ih is None or b_hh is None:
        return np.array(b_ih if b_hh is None else b_hh, dtype, order="C")
    return np.add(b_ih, b_hh, dtype=dtype)


def cell_bias(cell, b_ih, b_hh, G, dtype):
    """The bias (R,) of a gates row of ``cell`` from b_ih, b_hh (G,) (csrc/cells.h): the
    LSTM needs only their sum; the GRU keeps b_hn (inside r * (...)) and b_in apart:
    ``[b_ir + b_hr | b_iz + b_hz | b_hn | b_in]``. A missing bias counts as zeros."""
    summed = bias_sum(b_ih, b_hh, G, dtype)
    if cell != "gru":
        return summed
    H = G // 3
    bias = np.empty(4 * H, dtype)
    bias[:2 * H] = summed[:2 * H]
    bias[2 * H:3 * H] = 0 if b_hh is None else b_hh[2 * H:]
    bias[3 * H:] = 0 if b_ih is None else b_ih[2 * H:]
    return bias


def bias_grads(cell, dbias):
    """``(d b_ih, d b_hh)`` from the gradient of `cell_bias`'s row bias."""
    if cell != "gru":
        return dbias, dbias
    H = dbias.shape[0] // 4
    return np.concatenate([dbias[:2 * H], dbias[3 * H:]]), dbias[:3 * H]


class LayerCache:
    """What `layer_backward` needs from a training `layer_forward`. Backward turns the gate
    activations into gate gradients in place, so it can run once per forward;
    ``input_grad``: whether it computes dx (`LayerWeights`)."""
    __slots__ = ("io", "layer", "schedule", "consumed", "input_grad")

    def __init__(self, io, layer, schedule, input_grad=True):
        self.io, self.layer, self.schedule = io, layer, schedule
        self.consumed = False
        self.input_grad = input_grad

    @property
    def x(self):
        return self.io.x


def layer_forward(x, packing, weights, h0, c0, train, n_threads, y=None, strategy=None,
                  mask=None):
    """One layer, one direction, on packed x (N, I) and sorted states h0 (B, P), c0 (B, H)
    (None for a cell whose state is h alone, the GRU: then c_n is None too).

    Arrays must be validated, C-contiguous and of one dtype; ``weights`` a `LayerWeights`
    (with ``train``, one nobody writes to until backward has run: the cache keeps it, x
    and h0/c0). ``strategy`` forces a path of `clstm._dispatch` (default: its choice).
    ``mask`` (B, P), sorted rows, training only: recurrent dropout's mask on h_{t-1}
    (`clstm.reference`), run on the batch or serial split.
    Returns ``y (N, P), h_n, c_n, cache`` (cache None without train); inference writes y
    into the given C-contiguous array if there is one.
    """
    N, B = packing.n_rows, packing.B
    P = h0.shape[1]
    H = P if c0 is None else c0.shape[1]
    dtype = h0.dtype
    projection = weights.w_hr is not None
    cell = weights.cell
    G, R = _recurrent.n_gates(cell) * H, _recurrent.row_blocks(cell) * H
    # (a frozen layer has only its packed weights: the step on plain ones is not for it)
    path, schedule = _dispatch.plan(packing, n_threads, H, projection, dtype, strategy,
                                    allow_step=weights.packed is None and mask is None,
                                    cell=cell, allow_units=mask is None, n_input=x.shape[1],
                                    G=G, R=R)
    if path == "step":
        # One step of a few rows (a layer stepped token by token): the step on the weights
        # as they are, since packing them would cost more than the step. Training takes
        # the same step, so forward_train gives inference's numbers bit for bit.
        gates = np.empty((B, 4 * H), dtype) if train else None
        with kernel_lock():
            h_n, c_n = _packed.cell_step(x, h0, c0, weights.w_ih, weights.w_hh, weights.bias,
                                         None, dtype == np.float64, True, gates)
        if not train:
            return h_n, h_n.copy(), c_n, None
        io = _recurrent.LayerIO(x, h0, c0, h_n, h_n.copy(), c_n, gates, c_n.copy())
        path, schedule = _dispatch.plan(packing, n_threads, H, projection, dtype,
                                        allow_step=False, allow_units=False)
        layer = weights.driver_layer()
        with kernel_call(schedule.n_threads):
            layer.pack_backward(schedule.n_threads)
        return io.y, io.h_n, io.c_n, LayerCache(io, layer, schedule, weights.input_grad)
    if y is None or train:
        y = pooled_empty((N, P), dtype)
    c_n = None if c0 is None else np.empty((B, H), dtype)
    if N == 0:  # nothing to run: the state passes through unchanged (and back)
        io = _recurrent.LayerIO(x, h0, c0, y, h0.copy(), None if c0 is None else c0.copy(),
                                None)
        return y, io.h_n, io.c_n, \
            LayerCache(io, weights.driver_layer(), None, weights.input_grad) if train else None
    check_blas_sizes(N, x.shape[1], H)
    if not train:
        h_n = np.empty((B, P), dtype)
        layer_infer(x, weights, h0, c0, y, h_n, c_n, schedule)
        return y, h_n, c_n, None
    gates = pooled_empty((N, R), dtype)
    cells = None if c0 is None else pooled_empty((N, H), dtype)
    r = pooled_empty((N, H), dtype) if projection else None
    hg = scratch("hg", (B, G), dtype) if G != R else None
    io = _recurrent.LayerIO(x, h0, c0, y, np.empty((B, P), dtype), c_n, gates, cells, r, hg,
                            train, mask, None if mask is None else np.empty((B, P), dtype))
    layer = weights.driver_layer()
    with forward_call(schedule.n_threads, projection):
        _recurrent.forward(layer, schedule, io, _interruptible(gates, N))
    return y, io.h_n, io.c_n, LayerCache(io, layer, schedule, weights.input_grad)


def _interruptible(gates, N):
    """A call of several chunks can take seconds: Ctrl-C may end it between chunks (Python
    runs signal handlers in the main thread only, so only a call from there)."""
    return gates.shape[0] < N and threading.current_thread() is threading.main_thread()


def layer_infer(x, weights, h0, c0, y, h_n, c_n, schedule):
    """Inference through one layer (the driver's time loop): `layer_forward`'s arguments,
    checked as there, its outputs given (``y (N, P)``, ``h_n (B, P)``, ``c_n (B, H)`` or
    None, C-contiguous) and its `_dispatch.plan` schedule."""
    B, P = h0.shape
    H = P if c0 is None else c0.shape[1]
    dtype, cell, projection = h0.dtype, weights.cell, weights.w_hr is not None
    G, R = _recurrent.n_gates(cell) * H, _recurrent.row_blocks(cell) * H
    N = x.shape[0]
    gates = scratch("gates", (min(N, max(schedule.first_step_rows, GATES_CHUNK_ELEMENTS // R)),
                              R), dtype)
    io = _recurrent.LayerIO(x, h0, c0, y, h_n, c_n, gates, None,
                            scratch("r", (B, H), dtype) if projection else None,
                            scratch("hg", (B, G), dtype) if G != R else None, False)
    with forward_call(schedule.n_threads, projection):
        _recurrent.forward(weights.driver_layer(), schedule, io, _interruptible(gates, N))


def _accumulator(into, like):
    """``into`` if the kernels can add a gradient shaped like ``like`` straight into it, else
    a new zero array (from the pool: fresh multi-megabyte arrays cost page faults; and
    adding them in afterwards would be another pass over memory)."""
    if (isinstance(into, np.ndarray) and into.dtype == like.dtype and into.shape == like.shape
            and into.flags.c_contiguous and into.flags.writeable and into.flags.aligned):
        return into
    return pooled_zeros(like.shape, like.dtype)


def layer_backward(cache, dy, dh, dc, dw_into=(None, None, None)):
    """BPTT for one `layer_forward(train=True)`: ``dy`` (N, P) or None; ``dh`` (B, P) and
    ``dc`` (B, H) hold dh_n, dc_n and are overwritten with dh0, dc0 (a GRU's dc: None in,
    None out).
    Returns ``dx, dh, dc, dw_ih, dw_hh, dbias, dw_hr, dextra`` (dx None if the forward's
    weights had ``input_grad=False``, dw_hr None without projection, dextra None without
    extra cell weights: the peepholes' gradient). The
    weight gradients are added into the arrays of ``dw_into`` (for w_ih, w_hh, w_hr) that can
    take them, which are then the ones returned; the others are new arrays."""
    if cache.consumed:
        raise RuntimeError("backward has already run for this forward pass (the cache is "
                           "consumed in place); run forward again")
    cache.consumed = True
    io, layer, schedule = cache.io, cache.layer, cache.schedule
    I, H, P = layer.n_input, layer.n_hidden, layer.n_out
    G, R = layer.w_ih.shape[0], layer.bias.shape[0]
    dtype = io.x.dtype
    dx = pooled_empty(io.x.shape, dtype) if cache.input_grad else None
    dw_ih = _accumulator(dw_into[0], layer.w_ih)
    dw_hh = _accumulator(dw_into[1], layer.w_hh)
    dbias = np.zeros(R, dtype)
    dw_hr = None if layer.w_hr is None else _accumulator(dw_into[2], layer.w_hr)
    dextra = None if layer.extra is None else np.zeros_like(layer.extra)
    if schedule is None:  # a forward that ran no steps
        cache.io = cache.layer = None
        return dx, dh, dc, dw_ih, dw_hh, dbias, dw_hr, dextra
    N, B = schedule.n_rows, schedule.n_batch
    projection = layer.w_hr is not None
    work = _recurrent.BackwardWork(
        scratch("rows", _recurrent.rows_length(N, schedule.first_step_rows, I, P,
                                               _packed.FORMATS[FORMATS[dtype]]), dtype),
        scratch("dG_t", _recurrent.dG_t_length(schedule.n_threads), dtype),
        None if schedule.offsets is None else scratch("h_prev", (N - schedule.first_step_rows,
                                                                 P), dtype),
        scratch("dh_all", (N, P), dtype) if projection else None,
        scratch("r", (B, H), dtype) if projection else None,
        None if io.mask is None else scratch("h_masked", (N, P), dtype))
    stateless = io.c0 is None  # (the driver carries h's gradient through the cell in dc)
    grads = _recurrent.Grads(dy, dh, np.zeros((B, H), dtype) if stateless else dc, dx, dw_ih,
                             dw_hh, dbias, dw_hr)
    with kernel_call(schedule.n_threads):
        _recurrent.backward(layer, schedule, io, grads, work)
    if dextra is not None:
        dextra = _peephole_gradient(io.gates, io.cells, io.c0, schedule)
    cache.io = cache.layer = None  # the caches are consumed: let them go
    return dx, dh, dc, dw_ih, dw_hh, dbias, dw_hr, dextra


def _peephole_gradient(dG, cells, c0, schedule):
    """The peepholes' gradient (3, H) after backward: sum over every packed row of dG_i and
    dG_f times c_{t-1}, of dG_o times c_t. One NumPy reduction after the time loop (not a
    per-thread sum inside it), so it does not depend on the threads or the split."""
    N, H = cells.shape
    off, bs0 = schedule.offsets, schedule.first_step_rows
    d_if = dG[:, :2 * H].reshape(N, 2, H)
    grad = np.empty((3, H), dG.dtype)
    grad[2] = np.einsum("nh,nh->h", dG[:, 3 * H:], cells)
    if off is None:  # every row runs every step: c_{t-1} is the block before (views)
        grad[:2] = np.einsum("nkh,nh->kh", d_if[:bs0], c0) + \
            np.einsum("nkh,nh->kh", d_if[bs0:], cells[:N - bs0])
        return grad
    c_prev = np.empty_like(cells)  # step t's rows are the first bs[t] of step t-1's
    c_prev[:bs0] = c0[:bs0]
    for t in range(1, schedule.n_steps):
        n = off[t + 1] - off[t]
        c_prev[off[t]:off[t] + n] = cells[off[t - 1]:off[t - 1] + n]
    grad[:2] = np.einsum("nkh,nh->kh", d_if, c_prev)
    return grad


# ---------------------------------------------------------------------------------------------
# The public single-layer API, padded (T, B, .) in and out, like clstm.reference.

class ForwardCache:
    """What ``lstm_backward`` needs from ``lstm_forward(..., train=True)``."""

    def __init__(self, layer, packing, reverse, has_bias, shape, state_sizes, dtype):
        self.layer, self.packing, self.reverse, self.has_bias = layer, packing, reverse, has_bias
        self.shape, self.state_sizes, self.dtype = shape, state_sizes, dtype


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
        w_hr = float_array("w_hr", w_hr, dtype)
        if w_hr.shape != (P, H):  # (either may be the wrong one: name both)
            raise ValueError(f"w_hr must have shape (P, H) = ({P}, {H}) for w_hh of shape "
                             f"(4*H, P) = {w_hh.shape}, got {w_hr.shape}")
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
                 train=False, n_threads=None, strategy=None):
    """Run one LSTM layer over ``x (T, B, I)`` from state ``h0 (B, P)``, ``c0 (B, H)``.

    Parameters
    ----------
    x : array_like (T, B, I)
    w_ih, w_hh : array_like (4H, I), (4H, P)
        Weights, gates stacked i, f, g, o (float32 or float64: the dtype of the call).
    b_ih, b_hh : array_like (4H,) or None
    h0, c0 : array_like (B, P), (B, H)
    w_hr : array_like (P, H), optional
        A projection (``P = H`` without it).
    lengths : array_like of int (B,), optional
        Each row's number of real steps: outputs past it are zero, the final state is the
        state at the row's own last step.
    reverse : bool
        Run each row from its last step back to step 0.
    train : bool
        Keep what `lstm_backward` needs.
    n_threads : int, optional
        Default `clstm.get_num_threads()`; capped as `clstm.set_num_threads` says (at the
        CPUs available, at 1 in a forked child).
    strategy : {"step", "serial", "batch", "units"}, optional
        Force a path (`clstm._dispatch`); default automatic. Results do not depend on it,
        bit for bit, except for "step" and a projection's products (BLAS's summation
        order: equal to rounding; docs/design.md, "Bit-for-bit guarantees").

    Returns
    -------
    y, h_n, c_n, cache
        ``y (T, B, P)``; ``cache`` (None unless ``train``) is what `lstm_backward` takes.

    Raises
    ------
    TypeError, ValueError
        Bad dtypes, shapes or lengths (the message names the argument).
    """
    x, w_ih, w_hh, b_ih, b_hh, h0, c0, w_hr = _check_args(x, w_ih, w_hh, b_ih, b_hh, h0, c0,
                                                          w_hr)
    T, B, _ = x.shape
    if lengths is not None:
        lengths = check_lengths(lengths, T, B)
    n_threads = team_size(n_threads)
    packing = Packing(T, B, lengths)
    xp = packing.pack(x)
    xp = packing.reverse(xp) if reverse else xp
    if train:  # the cache must not see later writes to the caller's arrays
        xp = private_copy(xp, x)
    weights = LayerWeights(w_ih, w_hh, b_ih, b_hh, w_hr, copy=train)
    y, h_n, c_n, layer = layer_forward(xp, packing, weights, packing.sort_rows(h0),
                                       packing.sort_rows(c0), train, n_threads,
                                       strategy=strategy)
    y = packing.unpack(packing.reverse(y) if reverse else y)
    h_n, c_n = packing.unsort_rows(h_n), packing.unsort_rows(c_n)
    if not train:
        return y, h_n, c_n, None
    y = y.view()
    y.flags.writeable = False  # it may be the cache's own y
    has_bias = b_ih is not None or b_hh is not None
    return y, h_n, c_n, ForwardCache(layer, packing, reverse, has_bias, x.shape,
                                     (h0.shape[1], c0.shape[1]), w_hh.dtype)


def lstm_backward(cache, dy=None, dh_n=None, dc_n=None):
    """Backpropagation through time for one ``lstm_forward(..., train=True)`` call.

    Parameters
    ----------
    cache : ForwardCache
        From ``lstm_forward(..., train=True)``; consumed (backward runs once per forward).
    dy : array_like (T, B, P), optional
        Gradient of the loss w.r.t. ``y`` (past a row's length it is ignored).
    dh_n, dc_n : array_like (B, P), (B, H), optional
        Gradients w.r.t. the final states. A missing gradient counts as zeros.

    Returns
    -------
    clstm.reference.LSTMGrads
        ``dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr`` (None where the forward had no
        such parameter).

    Raises
    ------
    TypeError
        ``cache`` is not a training forward's.
    RuntimeError
        Backward already ran for this forward.
    ValueError
        A gradient of the wrong shape (named).
    """
    if not isinstance(cache, ForwardCache):
        raise TypeError("cache must come from clstm.functional.lstm_forward(..., train=True), "
                        f"got {type(cache).__name__}")
    packing, dtype = cache.packing, cache.dtype
    T, B, _ = cache.shape
    P, H = cache.state_sizes
    if dy is not None:
        dy = packing.pack(check_shape("dy", float_array("dy", dy, dtype), (T, B, P)))
        dy = packing.reverse(dy) if cache.reverse else np.ascontiguousarray(dy)
    dh = np.zeros((B, P), dtype)
    dc = np.zeros((B, H), dtype)
    if dh_n is not None:
        dh[...] = check_shape("dh_n", float_array("dh_n", dh_n, dtype), (B, P))
    if dc_n is not None:
        dc[...] = check_shape("dc_n", float_array("dc_n", dc_n, dtype), (B, H))
    dx, dh, dc, dw_ih, dw_hh, db, dw_hr, _ = layer_backward(
        cache.layer, dy, packing.sort_rows(dh), packing.sort_rows(dc))
    dx = packing.unpack(packing.reverse(dx) if cache.reverse else dx)
    db_ih = db if cache.has_bias else None
    db_hh = db.copy() if cache.has_bias else None
    return LSTMGrads(dx, packing.unsort_rows(dh), packing.unsort_rows(dc), dw_ih, dw_hh,
                     db_ih, db_hh, dw_hr)
