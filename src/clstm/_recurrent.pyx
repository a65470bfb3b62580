"""The recurrent driver: ONE forward and ONE backward for one layer in one direction, over
a cell description (csrc/cells.h), float32 and float64.

Notation and layouts (PyTorch's, so weights interoperate):

    T steps, B batch rows, I inputs, H hidden units, P outputs (P = H without projection),
    G = n_gates * H weight rows (LSTM: 4 blocks [i | f | g | o]; GRU: 3, [r | z | n])
    R = row_blocks * H columns of a gates row (LSTM: G; GRU: 4H, csrc/cells.h)
    w_ih    (G, I)         input weights, gate blocks stacked
    w_hh    (G, P)         recurrent weights, same block order
    w_hr    (P, H)         projection (LSTMP), or None
    bias    (R,)           in the gates row's block order; b_ih + b_hh wherever the cell
                           only needs their sum (all of the LSTM's)

    LSTM: i, f, o = sigmoid(.), g = tanh(.)  of  x_t @ w_ih.T + h_{t-1} @ w_hh.T + bias
          c_t = f * c_{t-1} + i * g;  r_t = o * tanh(c_t);  h_t = r_t @ w_hr.T (or r_t)

Sequences are *packed*, as in PyTorch's PackedSequence: batch rows are sorted by length,
longest first, so the rows still running at step t are the first bs[t] rows, and the arrays
hold only real steps, step-major: step t occupies rows [offsets[t], offsets[t+1]) of

    x       (N, I)         input;   N = offsets[T] = sum of the lengths
    y       (N, P)         output h_t
    gates   (N, R)         training cache: activated gates; backward overwrites it in place
                           with dG (pre-activation gradients)
    cells   (N, H)         training cache: c_t (a cell whose state is h itself, the GRU,
                           has none, nor c0/c_n)
    r       (N, H)         training cache with projection: r_t

States h0, h_n (B, P) and c0, c_n (B, H) are in the same sorted row order. Equal lengths
are the special case bs[t] = B, offsets[t] = t*B: the plain (T, B, .) arrays (offsets None).
A reverse direction is the forward driver run on each row's steps in reverse order (the
caller permutes). clstm.functional builds all of this.

What a call is made of (no entry point takes more than a handful of arguments):
  Layer     the cell, its weights (packed once: `PackedWeights`), bias and projection
  Schedule  the packed layout (steps, offsets, lengths) and the time loop's work split:
            "serial" (one thread), "batch" (each thread carries a contiguous slice of rows
            through every step, no barrier) or "units" (the threads share the hidden units
            of every row, a barrier per step), chosen by clstm._dispatch
  LayerIO   inputs, outputs and the training cache (or the inference workspace)
  Grads, BackwardWork   backward's gradients (in/out) and its workspaces

The input projection of many steps is one GEMM; the time loop runs in one OpenMP region.
All parallel work is OpenMP: BLAS is held to one thread for the whole call (SciPy's
OpenBLAS is a pthreads build whose pool would oversubscribe the cores inside our region),
and the big GEMMs are split by rows across our threads. Arrays arrive validated by
clstm.functional; the O(1)-per-array checks here only guard memory, so nothing can fail
once the GIL is released.
"""
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.string cimport memcpy, memset

cimport numpy as cnp

from clstm._blas cimport blas_int, matmul
from clstm._cells cimport (cell_backward, cell_forward, clstm_cell, clstm_cell_config,
                           clstm_cell_gru, clstm_cell_lstm, clstm_cell_lstm_act,
                           clstm_cell_lstm_peephole)
from clstm._openmp cimport (CLSTM_OPENMP_ENABLED, clstm_barrier, clstm_current_cpu,
                            clstm_leave_master_cpu, omp_get_num_threads, omp_get_thread_num)
from clstm._packed cimport PackedWeights, operand

from clstm._packed import kernel_ready
from clstm._lowp cimport packed_mul
from clstm._pgemm cimport packed_size, pgemm_rows, pgemm_set, total, transpose
from clstm._runtime cimport blas_threads, blas_threads_enter, check
from clstm._schedule cimport PGEMM_ROW_BLOCK, gemm_parts, par_gemm, par_pack, par_pgemm

cnp.import_array()

# Ctrl-C during a long inference call: csrc/interrupt.h watches for SIGINT during the call,
# and the driver asks Python to run its handler between time chunks only after one came.
cdef extern from "csrc/interrupt.h":
    int clstm_sigint_watch_begin() noexcept
    void clstm_sigint_watch_end() noexcept
    int clstm_sigint_take() noexcept nogil

cdef extern from "Python.h":
    int PyErr_CheckSignals()  # (declared without `except`: a raised error stays set)


cdef bint interrupted() noexcept nogil:
    """Between chunks: True when a SIGINT came and Python's handler raised (the exception
    is then set, for `forward` to raise once the call has tidied up); a handler that does
    not raise lets the call go on."""
    if not clstm_sigint_take():
        return False
    with gil:
        return PyErr_CheckSignals() != 0


cdef int raise_error_set() except -1:
    """Propagate the exception an `interrupted` handler left set."""
    return -1

STRATEGIES = ("serial", "batch", "units")
CELLS = ("lstm", "gru", "lstm_act", "lstm_peephole")

cdef enum:
    SERIAL = 0
    BATCH = 1
    UNITS = 2


cdef const clstm_cell* cell_named(str name) except NULL:
    if name == "lstm":
        return &clstm_cell_lstm
    if name == "gru":
        return &clstm_cell_gru
    if name == "lstm_act":
        return &clstm_cell_lstm_act
    if name == "lstm_peephole":
        return &clstm_cell_lstm_peephole
    raise ValueError(f"unknown cell {name!r}; known: {CELLS}")


def n_gates(str cell):
    """Weight blocks of H rows (in w_ih and w_hh) for ``cell``."""
    return cell_named(cell).n_gates


def row_blocks(str cell):
    """Blocks of H columns per gates row (and in the bias) for ``cell``."""
    return cell_named(cell).row_blocks


cdef enum:
    # Rows of dG per pass of the weight gradients (a multiple of the packed GEMM's K
    # chunk), and the row stride of its transposed blocks: a cache line more, so their
    # rows are not a multiple of 4 KB apart (the rows one tile of the packed GEMM reads
    # would share L1 sets: 4K aliasing).
    WGRAD_ROWS = 1024
    WGRAD_LD = WGRAD_ROWS + 16


def dG_t_length(int n_threads):
    """Elements of BackwardWork.dG_t (independent of N: the weight gradients go through dG
    WGRAD_ROWS rows at a time)."""
    return max(n_threads, 1) * PGEMM_ROW_BLOCK * WGRAD_LD


cdef inline const Py_ssize_t* intp_data(object a, Py_ssize_t n, str name) except? NULL:
    if a is None:
        return NULL
    check(cnp.PyArray_Check(a) and cnp.PyArray_TYPE(<cnp.ndarray>a) == cnp.NPY_INTP
          and cnp.PyArray_NDIM(<cnp.ndarray>a) == 1 and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a)
          and cnp.PyArray_ISBEHAVED_RO(<cnp.ndarray>a)
          and cnp.PyArray_DIMS(<cnp.ndarray>a)[0] == n, name)
    return <const Py_ssize_t*>cnp.PyArray_DATA(<cnp.ndarray>a)


cdef class Schedule:
    """The packed layout of one layer call and its time loop's work split.

    Parameters
    ----------
    n_steps : int
        T, the steps of the longest row.
    offsets : ndarray of intp (T + 1,) or None
        Step t is packed rows [offsets[t], offsets[t+1]); None when every row runs all T
        steps (then N = T * B and nothing here grows with T).
    lengths : ndarray of intp (B,)
        Each row's steps, sorted in decreasing order.
    strategy : {"serial", "batch", "units"}
        The time loop's work split.
    bounds : ndarray of intp or None
        "batch": row slice bounds [0, ..., B], one slice per thread; "units": hidden-unit
        bounds [0, ..., H], multiples of the packed panel width; "serial": None.
    n_threads : int
        Threads for the GEMMs outside the time loop (and at most this many parts).
    step_dx : bool
        Backward multiplies dx = dG @ w_ih step by step inside the time loop, each step's
        rows while their dG_t is in cache, instead of over all rows after it (the same sums
        either way, so the same bits); `clstm._dispatch.schedule` decides. Only the batch
        and serial splits and a cell whose input side is dG's first G columns; ignored
        otherwise.
    """
    cdef readonly Py_ssize_t n_steps, n_batch, n_rows, first_step_rows
    cdef readonly object offsets, lengths, bounds
    cdef readonly str strategy
    cdef readonly int n_threads, n_parts
    cdef readonly bint step_dx
    cdef int kind
    cdef const Py_ssize_t* off
    cdef const Py_ssize_t* len_p
    cdef const Py_ssize_t* bnd

    def __init__(self, Py_ssize_t n_steps, offsets, lengths not None, str strategy, bounds,
                 int n_threads, bint step_dx=False):
        cdef Py_ssize_t t, b, B, n
        check(n_steps >= 1 and n_threads >= 1 and strategy in STRATEGIES, "schedule")
        self.n_steps, self.strategy, self.n_threads = n_steps, strategy, n_threads
        self.kind = STRATEGIES.index(strategy)
        self.step_dx = step_dx and self.kind != UNITS
        check(cnp.PyArray_Check(lengths) and cnp.PyArray_NDIM(<cnp.ndarray>lengths) == 1,
              "lengths")
        B = self.n_batch = cnp.PyArray_DIMS(<cnp.ndarray>lengths)[0]
        self.len_p = intp_data(lengths, B, "lengths")
        self.off = intp_data(offsets, n_steps + 1, "offsets")
        self.offsets, self.lengths = offsets, lengths
        check(B >= 1, "batch")
        for b in range(B):  # sorted, in [0, T]
            check(0 <= self.len_p[b] <= n_steps and (b == 0 or self.len_p[b] <= self.len_p[b - 1])
                  and (self.off != NULL or self.len_p[b] == n_steps), "lengths")
        if self.off != NULL:
            check(self.off[0] == 0, "offsets")
            for t in range(n_steps):  # bs[t] = the rows whose length exceeds t
                n = 0
                while n < B and self.len_p[n] > t:
                    n += 1
                check(self.off[t + 1] - self.off[t] == n and n >= 1, "offsets")
        self.n_rows = step_row(self.off, B, n_steps)
        self.first_step_rows = step_row(self.off, B, 1)
        self.n_parts = 1
        if self.kind != SERIAL:
            check(cnp.PyArray_Check(bounds) and cnp.PyArray_NDIM(<cnp.ndarray>bounds) == 1,
                  "bounds")
            n = cnp.PyArray_DIMS(<cnp.ndarray>bounds)[0] - 1
            self.bnd = intp_data(bounds, n + 1, "bounds")
            check(n >= 1 and self.bnd[0] == 0 and n <= n_threads
                  and (n == 1 or CLSTM_OPENMP_ENABLED), "bounds")
            for t in range(n):
                check(self.bnd[t] <= self.bnd[t + 1] if self.kind == BATCH
                      else self.bnd[t] < self.bnd[t + 1], "bounds")
            check(self.kind != BATCH or self.bnd[n] == B, "bounds")
            self.n_parts = <int>n
        self.bounds = bounds

    def __repr__(self):
        return (f"Schedule(n_steps={self.n_steps}, n_batch={self.n_batch}, "
                f"strategy={self.strategy!r}, n_parts={self.n_parts})")


cdef class Layer:
    """One layer in one direction, as the driver runs it.

    Parameters
    ----------
    cell : str
        The cell (`CELLS`).
    w_ih_packed, w_hh_packed : PackedWeights
        w_ih (G, I) and w_hh (G, P) packed; with ``w_ih``/``w_hh`` given they are packed
        from those at the start of every forward (a live model's weights may change in
        place between calls), otherwise they are used as they are (a frozen model).
    bias : ndarray (R,)
        The bias in the gates row's block order (LSTM: b_ih + b_hh).
    w_hr : ndarray (P, H) or None
        The projection (cells with a state of their own only).
    w_ih, w_hh : ndarray or None
        The unpacked weights.
    w_ih_t, w_hh_t : PackedWeights or None
        A training layer's: w_ih.T (I, G) and w_hh.T (P, G) packed as backward multiplies
        by them, from w_ih and w_hh at the training forward (`pack_backward`): they are
        backward's snapshot of the weights, so an optimiser step taken in place before
        backward does not reach it. w_ih_t only for a cell whose dx is one packed product
        (`dx_from_packed`; otherwise backward multiplies on w_ih itself, which must then
        be a snapshot), and only if backward is to compute dx: a training layer without
        w_ih_t (whose dx would be packed) takes no dx (`Grads`).
    extra : ndarray or None
        The cell's extra per-unit weights (n_extra blocks of H, e.g. peepholes), if it has.
    options : tuple of two ints
        The cell's options (0: its defaults), handed to its row functions.
    """
    cdef readonly PackedWeights w_ih_packed, w_hh_packed, w_ih_t, w_hh_t
    cdef readonly object bias, w_hr, w_ih, w_hh, extra
    cdef readonly str cell
    cdef readonly Py_ssize_t n_input, n_hidden, n_out
    cdef readonly int typenum
    cdef const clstm_cell* spec
    cdef clstm_cell_config cfg
    cdef const void* p_bias
    cdef const void* p_w_hr
    cdef const void* p_w_ih
    cdef const void* p_w_hh

    def __init__(self, str cell, PackedWeights w_ih_packed not None,
                 PackedWeights w_hh_packed not None, bias, w_hr=None, w_ih=None, w_hh=None,
                 extra=None, tuple options=(0, 0), PackedWeights w_ih_t=None,
                 PackedWeights w_hh_t=None):
        cdef const clstm_cell* spec = cell_named(cell)
        cdef Py_ssize_t G = w_hh_packed.n_out, P = w_hh_packed.n_in, I = w_ih_packed.n_in
        cdef Py_ssize_t H = G // spec.n_gates
        cdef int typenum = w_ih_packed.typenum
        self.spec, self.cell, self.typenum = spec, cell, typenum
        check(G == H * spec.n_gates and w_ih_packed.n_out == G
              and w_hh_packed.typenum == typenum and (w_hr is not None or P == H)
              and not (spec.state_is_output and w_hr is not None)
              and w_hh_packed.format == w_ih_packed.format, "weights")
        # int8/bfloat16 packed weights: inference on frozen weights only (no unpacked copy
        # to repack or to train with)
        check(not w_ih_packed.lowp or w_ih is None, "low-precision weights with unpacked ones")
        self.p_bias = operand(bias, typenum, spec.row_blocks * H, -1, "bias", False, False)
        self.p_w_hr = operand(w_hr, typenum, P, H, "w_hr", True, False)
        self.p_w_ih = operand(w_ih, typenum, G, I, "w_ih", True, False)
        self.p_w_hh = operand(w_hh, typenum, G, P, "w_hh", True, False)
        check((w_ih is None) == (w_hh is None), "unpacked weights")
        check(w_hh_t is None or (w_ih is not None and w_hh_t.typenum == typenum
                                 and not w_hh_t.lowp and w_hh_t.n_out == P
                                 and w_hh_t.n_in == G), "backward's packed w_hh")
        check((w_ih_t is None or (w_hh_t is not None and input_side_contiguous(spec)))
              and (w_ih_t is None or (w_ih_t.typenum == typenum and w_ih_t.n_out == I
                                      and w_ih_t.n_in == G)), "backward's packed w_ih")
        self.w_ih_t, self.w_hh_t = w_ih_t, w_hh_t
        self.cfg.extra = operand(extra, typenum, spec.n_extra, H, "extra cell weights",
                                 spec.n_extra == 0, False)
        check(len(options) == 2, "cell options")
        self.cfg.options[0], self.cfg.options[1] = options
        self.w_ih_packed, self.w_hh_packed = w_ih_packed, w_hh_packed
        self.bias, self.w_hr, self.w_ih, self.w_hh = bias, w_hr, w_ih, w_hh
        self.extra = extra
        self.n_input, self.n_hidden, self.n_out = I, H, P

    @property
    def options(self):
        return (self.cfg.options[0], self.cfg.options[1])

    cdef int pack_backward_nogil(self, int n_threads) except -1 nogil:
        self.w_hh_t.pack_nogil(self.p_w_hh, True, n_threads)
        if self.w_ih_t is not None:
            self.w_ih_t.pack_nogil(self.p_w_ih, True, n_threads)
        return 0

    def pack_backward(self, int n_threads=1):
        """Pack w_ih_t and w_hh_t now (a training forward run by `forward` packs them
        itself; one taken some other way, e.g. the one-step kernel, calls this)."""
        check(self.w_hh_t is not None, "a training layer (backward's packed weights)")
        with nogil:
            self.pack_backward_nogil(n_threads)

    def __reduce__(self):
        return (_restore_layer, (self.cell, self.w_ih_packed, self.w_hh_packed, self.options,
                                 self.w_ih_t, self.w_hh_t, self.bias, self.w_hr, self.w_ih,
                                 self.w_hh, self.extra))


def _restore_layer(cell, w_ih_packed, w_hh_packed, options, w_ih_t, w_hh_t, *arrays):
    """Unpickle a Layer: its arrays may arrive unaligned (pickle protocol 5 buffers)."""
    return Layer(cell, w_ih_packed, w_hh_packed, *(kernel_ready(a) for a in arrays),
                 options=options, w_ih_t=w_ih_t, w_hh_t=w_hh_t)


def dx_from_packed(str cell):
    """Whether the cell's dx is one packed product on w_ih.T (`Layer`'s w_ih_t): its input
    side's gradient is dG's first G columns."""
    return input_side_contiguous(cell_named(cell))


cdef class LayerIO:
    """A forward call's arrays: x (N, I), h0 (B, P), c0 (B, H) in; y (N, P), h_n (B, P),
    c_n (B, H) out (c0, c_n None for a cell without a state of its own). Training (train
    true; default: cells given): gates (N, R), cells (N, H) (stateful cells) and with
    projection r (N, H) are filled for backward. Inference: gates is a (rows, R) workspace
    with rows >= the rows of one step, and the input projection is hoisted as many steps
    at a time as fit; r is a (B, H) workspace with projection. hg (B, G): the recurrent
    product's workspace of a cell that keeps it separate (else None). Recurrent dropout
    (training, the batch or serial split): mask (B, P) multiplies h_{t-1} before the
    recurrent product at every step (backward uses the same), hm (B, P) is its workspace."""
    cdef readonly object x, h0, c0, y, h_n, c_n, gates, cells, r, hg, mask, hm
    cdef readonly bint train

    def __init__(self, x, h0, c0, y, h_n, c_n, gates, cells=None, r=None, hg=None,
                 train=None, mask=None, hm=None):
        self.x, self.h0, self.c0, self.y, self.h_n, self.c_n = x, h0, c0, y, h_n, c_n
        self.gates, self.cells, self.r, self.hg = gates, cells, r, hg
        self.mask, self.hm = mask, hm
        self.train = cells is not None if train is None else train


cdef class Grads:
    """Backward's gradients. dy (N, P) in, or None; dh (B, P), dc (B, H): dh_n, dc_n in
    -> dh0, dc0 out; dx (N, I) out, or None (not computed: the input needs no gradient);
    dw_ih, dw_hh, dbias, dw_hr (None without projection)
    accumulated (+=)."""
    cdef readonly object dy, dh, dc, dx, dw_ih, dw_hh, dbias, dw_hr

    def __init__(self, dy, dh, dc, dx, dw_ih, dw_hh, dbias, dw_hr=None):
        self.dy, self.dh, self.dc, self.dx = dy, dh, dc, dx
        self.dw_ih, self.dw_hh, self.dbias, self.dw_hr = dw_ih, dw_hh, dbias, dw_hr


cdef class BackwardWork:
    """Backward's workspaces: rows (at least `rows_length` elements) for x and the recurrent
    inputs packed; dG_t (at least dG_t_length(n_threads)) for row blocks of dG.T;
    h_prev (N - bs[0], P), the recurrent inputs of steps >= 1 when rows end early (else
    None: they are y's rows as they stand); with projection dh_all (N, P) and dr (B, H);
    with recurrent dropout h_masked (N, P), every step's masked recurrent input (for
    dw_hh)."""
    cdef readonly object rows, dG_t, h_prev, dh_all, dr, h_masked

    def __init__(self, rows, dG_t, h_prev=None, dh_all=None, dr=None, h_masked=None):
        self.rows, self.dG_t = rows, dG_t
        self.h_prev, self.dh_all, self.dr, self.h_masked = h_prev, dh_all, dr, h_masked


# ---------------------------------------------------------------------------------------------
# A call, as the nogil code sees it.

cdef struct Dims:
    Py_ssize_t T, B, n_in, H, P, N, G, R  # (I is a macro of complex.h)
    Py_ssize_t cap         # rows of the gates array
    bint train
    bint lowp              # the weights are int8/bfloat16 (csrc/lowp.h), inference only


cdef struct Ptrs:
    void* x
    void* y
    void* h0
    void* c0
    void* h_n
    void* c_n
    void* gates
    void* cells
    void* r
    void* w_ih_p
    void* w_ih
    void* w_hh_p
    void* bias
    void* w_hr
    void* hg
    void* mask
    void* hm
    const clstm_cell_config* cfg
    # backward
    void* dy
    void* dh
    void* dc
    void* dx
    void* dw_ih
    void* dw_hh
    void* dbias
    void* dw_hr
    void* w_ih_t
    void* w_hh_t
    void* rows
    void* dG_t
    void* h_prev
    void* h_masked
    void* dh_all
    void* dr
    bint step_dx           # dx's rows multiplied in the time loop (Schedule.step_dx)


cdef struct Split:
    int kind, n_parts, n_threads
    const Py_ssize_t* bounds
    const Py_ssize_t* offsets
    const Py_ssize_t* lengths


cdef inline Py_ssize_t step_row(const Py_ssize_t* offsets, Py_ssize_t B,
                                Py_ssize_t t) noexcept nogil:
    """First packed row of step t. offsets NULL means every row runs every step, and then
    no O(T) index array exists at all (inference memory stays independent of T)."""
    return t * B if offsets == NULL else offsets[t]


# ---------------------------------------------------------------------------------------------
# The time loop, once: the three work splits, each running the forward or the backward
# body over its share (rows [b0, b1), hidden units [j0, j1)).

cdef void forward_slice(floating* gates, const Dims* d, const Ptrs* p, const Split* s,
                        const clstm_cell* cell, Py_ssize_t t_begin, Py_ssize_t t_end,
                        Py_ssize_t gates_row0, Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t j0,
                        Py_ssize_t j1, bint barrier) noexcept nogil:
    """Run rows [b0, b1) through steps [t_begin, t_end), computing hidden units [j0, j1).

    A share of the hidden units (j0 > 0 or j1 < H) needs every unit of h_{t-1}: the
    threads sharing the rows then meet at a barrier after each step (barrier true; every
    thread of the team runs the same steps).

    gates holds the input projection of packed rows [gates_row0, ...) and is activated in
    place. Training: cells and r are (N, H) caches written at each step's rows; inference:
    c_n is the running (B, H) cell state (initialised from c0) and r a (B, H) scratch. r is
    unused without projection: r_t is y's row itself. A cell whose state is h itself gets
    h_{t-1} as its previous state; one that keeps the recurrent product apart gets it in
    hg's rows [b0, b1).
    """
    cdef Py_ssize_t B = d.B, H = d.H, P = d.P, G = d.G, R = d.R, t, n, row, q, i
    cdef bint stateless = cell.state_is_output, separate = cell.separate_recurrent, descending
    cdef const Py_ssize_t* off = s.offsets
    cdef const floating* y = <const floating*>p.y
    cdef const floating* w_hr = <const floating*>p.w_hr
    cdef floating* cells = <floating*>(p.cells if d.train else p.c_n)
    cdef floating* r = <floating*>p.r
    cdef const floating* h_prev
    cdef const floating* h_rec
    cdef const floating* c_prev
    cdef floating* c_out
    cdef floating* r_t
    cdef floating* g_t
    cdef floating* hg_t = (<floating*>p.hg) + b0 * G if separate else NULL
    cdef floating* product
    # (rows [b0, b1) of the mask and its workspace: the unit split never runs with a mask)
    cdef const floating* mask = (<const floating*>p.mask) + b0 * P if p.mask != NULL else NULL
    cdef floating* hm = (<floating*>p.hm) + b0 * P if p.mask != NULL else NULL
    for t in range(t_begin, t_end):
        n = min(b1, step_row(off, B, t + 1) - step_row(off, B, t)) - b0
        if n <= 0:
            break  # lengths are sorted: every row of this slice has ended
        row = step_row(off, B, t) + b0
        h_prev = ((<const floating*>p.h0) + b0 * P if t == 0
                  else y + (step_row(off, B, t - 1) + b0) * P)
        h_rec = h_prev  # the recurrent product's input
        if mask != NULL:  # recurrent dropout: the product sees mask * h_{t-1}
            for i in range(n * P):
                hm[i] = h_prev[i] * mask[i]
            h_rec = hm
        if stateless:  # (the cell's own h_{t-1} is never masked)
            c_prev, c_out = h_prev, NULL
        elif d.train:
            c_prev = ((<const floating*>p.c0) + b0 * H if t == 0
                      else cells + (step_row(off, B, t - 1) + b0) * H)
            c_out = cells + row * H
        else:
            c_prev = cells + b0 * H
            c_out = cells + b0 * H
        if w_hr == NULL:
            r_t = (<floating*>p.y) + row * P
        else:
            r_t = (r + row * H) if d.train else (r + b0 * H)
        g_t = gates + (row - gates_row0) * R
        # h_{t-1} @ w_hh.T: added to the input projection, or into hg for the cell to add
        product = hg_t if separate else g_t
        # Odd steps walk w_hh backwards: they start with what the last step read last,
        # still in L1 (or L2) when w_hh is a little bigger than it.
        descending = t & 1
        if j0 == 0 and j1 == H:
            packed_mul(d.lowp, n, G, P, h_rec, P, p.w_hh_p, 0, product,
                       G if separate else R, separate, descending)
        else:
            for i in range(cell.n_gates):  # the [j0, j1) columns of each gate block
                q = cell.n_gates - 1 - i if descending else i
                packed_mul(d.lowp, n, j1 - j0, P, h_rec, P, p.w_hh_p, q * H + j0,
                           product + q * H + j0, G if separate else R, separate,
                           descending)
        cell_forward(cell, n, H, j0, j1, g_t, hg_t, <const floating*>p.bias, p.cfg, c_prev,
                     c_out, r_t)
        if w_hr != NULL:
            matmul(<blas_int>n, <blas_int>P, <blas_int>H, r_t, <blas_int>H, w_hr,
                   <blas_int>H, True, <floating>0, (<floating*>p.y) + row * P, <blas_int>P)
        if barrier:
            clstm_barrier()  # h_t complete before anyone multiplies it


cdef void backward_slice(floating* gates, const Dims* d, const Ptrs* p, const Split* s,
                         const clstm_cell* cell, Py_ssize_t t_begin, Py_ssize_t t_end,
                         Py_ssize_t gates_row0, Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t j0,
                         Py_ssize_t j1, bint barrier) noexcept nogil:
    """Reverse time loop over steps [t_begin, t_end) for rows [b0, b1): gates -> dG; dh
    (B, P), dc (B, H) carried in place; w_hh_t is w_hh.T packed. With projection, dh_all
    (N, P) receives each step's total dh_t (for dW_hr) and dr (B, H) is scratch.

    Columns [j0, j1) of dh (hidden units, as forward_slice; no projection then): this
    thread's columns of dG_t, and of dh_{t-1} = dG_t @ w_hh, which needs every column of
    dG_t, so the threads meet at a barrier between the two. (dG_t's recurrent side is its
    first G columns, csrc/cells.h.) A cell whose state is h itself reads h_{t-1} as its
    previous state and carries the gradient reaching h_{t-1} through the cell in dc."""
    cdef Py_ssize_t B = d.B, H = d.H, P = d.P, G = d.G, R = d.R, t, n, row, k, i
    cdef const Py_ssize_t* off = s.offsets
    cdef const floating* cells = <const floating*>p.cells
    cdef const floating* dy = <const floating*>p.dy
    cdef const floating* w_hr = <const floating*>p.w_hr
    cdef floating* dh = <floating*>p.dh
    cdef floating* dc = <floating*>p.dc
    cdef floating* dr = <floating*>p.dr
    cdef const floating* c_prev
    cdef floating* dG_t
    cdef floating* dh_t
    cdef const floating* c_t = NULL
    cdef const floating* mask = <const floating*>p.mask
    for t in range(t_end - 1, t_begin - 1, -1):
        n = min(b1, step_row(off, B, t + 1) - step_row(off, B, t)) - b0
        if n <= 0:
            continue  # these rows have not started yet, walking backwards
        row = step_row(off, B, t) + b0
        dG_t = gates + (row - gates_row0) * R
        if cell.state_is_output:
            c_prev = ((<const floating*>p.h0) + b0 * P if t == 0
                      else (<const floating*>p.y) + (step_row(off, B, t - 1) + b0) * P)
        else:
            c_prev = ((<const floating*>p.c0) + b0 * H if t == 0
                      else cells + (step_row(off, B, t - 1) + b0) * H)
            c_t = cells + row * H
        if w_hr == NULL:
            if dy != NULL:
                for i in range(n):
                    for k in range(j0, j1):
                        dh[(b0 + i) * P + k] += dy[(row + i) * P + k]
            cell_backward(cell, n, H, j0, j1, dG_t, p.cfg, c_prev, c_t, dh + b0 * P,
                          dc + b0 * H)
        else:
            dh_t = (<floating*>p.dh_all) + row * P
            for k in range(n * P):
                dh_t[k] = dh[b0 * P + k]
            if dy != NULL:
                for k in range(n * P):
                    dh_t[k] += dy[row * P + k]
            matmul(<blas_int>n, <blas_int>H, <blas_int>P, dh_t, <blas_int>P, w_hr,
                   <blas_int>H, False, <floating>0, dr + b0 * H, <blas_int>H)
            cell_backward(cell, n, H, 0, H, dG_t, p.cfg, c_prev, c_t, dr + b0 * H,
                          dc + b0 * H)
        if barrier:
            clstm_barrier()  # dG_t complete before anyone multiplies it
        # dh_{t-1}[:, j0:j1] = dG_t @ w_hh[:, j0:j1], and with step_dx dx's rows of this
        # step while dG_t is in cache (not the units split). Odd steps walk the weights
        # backwards (as forward_slice) and take the two products in the other order: each
        # product then starts with what its last run read last.
        for k in range(2):
            if k == (t & 1):
                pgemm_set(n, j1 - j0, G, dG_t, R, (<const floating*>p.w_hh_t) + j0 * G,
                          dh + b0 * P + j0, P, t & 1)
            elif p.step_dx:
                pgemm_set(n, d.n_in, G, dG_t, R, <const floating*>p.w_ih_t,
                          (<floating*>p.dx) + row * d.n_in, d.n_in, t & 1)
        if mask != NULL:  # recurrent dropout: h_{t-1} entered the product masked
            for i in range(n):
                for k in range(j0, j1):
                    dh[(b0 + i) * P + k] *= mask[(b0 + i) * P + k]


cdef void run_time_loop(floating* gates, const Dims* d, const Ptrs* p, const Split* s,
                        const clstm_cell* cell, bint reverse_pass, Py_ssize_t t0,
                        Py_ssize_t t1, Py_ssize_t gates_row0) noexcept nogil:
    """Steps [t0, t1) (backward: walked in reverse) under the schedule's work split."""
    cdef int k, team = 1, part0 = 0, part1 = 0, master_cpu  # (set: GCC cannot see that
    # the parallel block assigns them before use, and warned)
    cdef Py_ssize_t width = d.P if reverse_pass else d.H  # dh's columns, or hidden units
    if s.kind == UNITS and s.n_parts > 1:
        master_cpu = clstm_current_cpu()
        with parallel(num_threads=s.n_parts):
            # The team may be smaller than asked for: each thread then takes a run of
            # parts, and the barriers still see every thread.
            team = omp_get_num_threads()
            part0 = omp_get_thread_num() * s.n_parts // team
            part1 = (omp_get_thread_num() + 1) * s.n_parts // team
            clstm_leave_master_cpu(master_cpu)
            if reverse_pass:
                backward_slice(gates, d, p, s, cell, t0, t1, gates_row0, 0, d.B,
                               s.bounds[part0], s.bounds[part1], team > 1)
            else:
                forward_slice(gates, d, p, s, cell, t0, t1, gates_row0, 0, d.B,
                              s.bounds[part0], s.bounds[part1], team > 1)
    elif s.kind == BATCH and s.n_parts > 1:
        master_cpu = clstm_current_cpu()
        for k in prange(s.n_parts, num_threads=s.n_parts, schedule='static'):
            clstm_leave_master_cpu(master_cpu)
            if reverse_pass:
                backward_slice(gates, d, p, s, cell, t0, t1, gates_row0, s.bounds[k],
                               s.bounds[k + 1], 0, width, False)
            else:
                forward_slice(gates, d, p, s, cell, t0, t1, gates_row0, s.bounds[k],
                              s.bounds[k + 1], 0, width, False)
    elif reverse_pass:
        backward_slice(gates, d, p, s, cell, t0, t1, gates_row0, 0, d.B, 0, width, False)
    else:
        forward_slice(gates, d, p, s, cell, t0, t1, gates_row0, 0, d.B, 0, width, False)


cdef void final_states(floating* y, const Dims* d, const Ptrs* p, const Split* s) noexcept nogil:
    """Each row's state after its own last step (its initial state if it has no steps).
    Inference: c_n already holds the running cell state (a stateless cell has none)."""
    cdef Py_ssize_t b, last, H = d.H, P = d.P
    cdef bint copy_c = d.train and p.c_n != NULL
    for b in range(d.B):
        if s.lengths[b] == 0:
            memcpy((<floating*>p.h_n) + b * P, (<floating*>p.h0) + b * P, P * sizeof(floating))
            if copy_c:
                memcpy((<floating*>p.c_n) + b * H, (<floating*>p.c0) + b * H,
                       H * sizeof(floating))
        else:
            last = step_row(s.offsets, d.B, s.lengths[b] - 1) + b
            memcpy((<floating*>p.h_n) + b * P, y + last * P, P * sizeof(floating))
            if copy_c:
                memcpy((<floating*>p.c_n) + b * H, (<floating*>p.cells) + last * H,
                       H * sizeof(floating))


cdef inline Py_ssize_t chunk_end(const Py_ssize_t* off, Py_ssize_t B, Py_ssize_t T,
                                 Py_ssize_t t0, Py_ssize_t rows) noexcept nogil:
    """The end of the run of steps from t0 that fits in ``rows`` rows (one step at least)."""
    cdef Py_ssize_t t1 = t0 + 1
    while t1 < T and step_row(off, B, t1 + 1) - step_row(off, B, t0) <= rows:
        t1 = t1 + 1
    return t1


cdef bint forward_impl(floating* gates, const Dims* d, const Ptrs* p, const Split* s,
                       const clstm_cell* cell, bint watching) noexcept nogil:
    """The forward pass, hoisting the input projection in chunks of steps; True if it
    stopped early for an interrupt (`interrupted`, read only by the ``watching`` call: the
    flag is process-wide, and a call from another thread must not take it)."""
    cdef Py_ssize_t B = d.B, G = d.G, t0 = 0, t1, row0, chunks = 0, rows
    cdef const Py_ssize_t* off = s.offsets
    if not d.train and p.c_n != NULL:
        memcpy(p.c_n, p.c0, B * d.H * sizeof(floating))
    # The input projection is hoisted in chunks of steps that fit in gates: as few chunks
    # as filling each would make, their steps shared out evenly (a last chunk of a few
    # steps would stream all of w_ih for a few rows).
    while t0 < d.T:
        t0 = chunk_end(off, B, d.T, t0, d.cap)
        chunks = chunks + 1
    t0 = 0
    while t0 < d.T:
        rows = step_row(off, B, d.T) - step_row(off, B, t0)
        t1 = chunk_end(off, B, d.T, t0, min(d.cap, (rows + chunks - 1) // chunks))
        chunks = max(chunks - 1, 1)
        row0 = 0 if d.train else step_row(off, B, t0)
        par_pgemm(s.n_threads, step_row(off, B, t1) - step_row(off, B, t0), G, d.n_in,
                  (<const floating*>p.x) + step_row(off, B, t0) * d.n_in, d.n_in,
                  <const floating*>p.w_ih_p, gates + (step_row(off, B, t0) - row0) * d.R, d.R,
                  d.lowp)
        run_time_loop(gates, d, p, s, cell, False, t0, t1, row0)
        t0 = t1
        if t0 < d.T and watching and interrupted():
            return True
    final_states(<floating*>p.y, d, p, s)
    return False


cdef inline bint input_side_contiguous(const clstm_cell* cell) noexcept nogil:
    """The input side's gradient is dG's first G columns (then dx is one packed GEMM)."""
    cdef int q
    for q in range(cell.n_gates):
        if cell.x_block[q] != q:
            return False
    return True


cdef void weight_grads_part(const floating* dG, const Dims* d, const clstm_cell* cell,
                            const Ptrs* p, const floating* x_rows, const floating* h0_rows,
                            const floating* h_rows, Py_ssize_t bs0, Py_ssize_t task0,
                            Py_ssize_t task1, floating* a_block) noexcept nogil:
    """Tasks [task0, task1) of `weight_grads`, WGRAD_ROWS rows of dG at a time: the rows'
    chunk of x_rows and h_rows then stays in cache for all the tasks, and each task's block
    of dG columns, transposed into a_block, for its three sums."""
    cdef Py_ssize_t H = d.H, N = d.N, P = d.P, n_in = d.n_in
    cdef Py_ssize_t per_block = (H + PGEMM_ROW_BLOCK - 1) // PGEMM_ROW_BLOCK
    cdef Py_ssize_t task, b, j0, c0, n, i, k0, k1, kh
    cdef floating* dbias = <floating*>p.dbias
    cdef floating* dw_ih = <floating*>p.dw_ih
    cdef floating* dw_hh = <floating*>p.dw_hh
    cdef int q
    k0 = 0
    while k0 < N:
        k1 = min(k0 + <Py_ssize_t>WGRAD_ROWS, N)
        for task in range(task0, task1):
            b = task // per_block
            j0 = (task % per_block) * PGEMM_ROW_BLOCK
            n = min(<Py_ssize_t>PGEMM_ROW_BLOCK, H - j0)
            c0 = b * H + j0
            transpose(dG + k0 * d.R + c0, k1 - k0, n, d.R, a_block, WGRAD_LD)
            for i in range(n):
                dbias[c0 + i] += total(a_block + i * WGRAD_LD, k1 - k0)
            if b < cell.n_gates:  # the recurrent side: h0 for rows < bs0, then h_prev
                if k0 < bs0:
                    kh = min(k1, bs0)
                    pgemm_rows(n, P, k0, kh - k0, a_block, WGRAD_LD, h0_rows, bs0,
                               dw_hh + c0 * P, P)
                kh = max(k0, bs0)
                if k1 > kh:
                    pgemm_rows(n, P, kh - bs0, k1 - kh, a_block + (kh - k0), WGRAD_LD, h_rows,
                               N - bs0, dw_hh + c0 * P, P)
            for q in range(cell.n_gates):
                if cell.x_block[q] == b:
                    pgemm_rows(n, n_in, k0, k1 - k0, a_block, WGRAD_LD, x_rows, N,
                               dw_ih + (q * H + j0) * n_in, n_in)
        k0 = k1


cdef void weight_grads(const floating* dG, const Dims* d, const Ptrs* p, const Split* s,
                       const clstm_cell* cell, const floating* x_rows,
                       const floating* h0_rows, const floating* h_rows,
                       Py_ssize_t bs0) noexcept nogil:
    """dW_ih, dW_hh and dbias += their sums over the N rows of dG (N, R).

    One task per run of up to PGEMM_ROW_BLOCK columns of dG inside one block of H: its
    columns are transposed (the left operand of the K = N sums wants its rows contiguous)
    and serve the bias (their sums), w_hh's rows (the recurrent side: the first G columns)
    and w_ih's rows (the input side: block x_block[q] is weight block q's, csrc/cells.h).
    Each thread takes a run of tasks. The tasks write disjoint rows, each summing over the
    N rows in one order whichever thread runs it: the gradients do not depend on the
    thread count."""
    cdef Py_ssize_t per_block = (d.H + PGEMM_ROW_BLOCK - 1) // PGEMM_ROW_BLOCK
    cdef Py_ssize_t n_tasks = cell.row_blocks * per_block
    cdef int parts = gemm_parts(s.n_threads, n_tasks, 2 * d.G * (d.n_in + d.P) * d.N)
    cdef int part, master_cpu = clstm_current_cpu()
    for part in prange(parts, num_threads=parts, schedule='static'):
        clstm_leave_master_cpu(master_cpu)
        weight_grads_part(dG, d, cell, p, x_rows, h0_rows, h_rows, bs0,
                          part * n_tasks // parts, (part + 1) * n_tasks // parts,
                          (<floating*>p.dG_t) + omp_get_thread_num() * PGEMM_ROW_BLOCK * WGRAD_LD)


cdef void backward_impl(floating* dG, const Dims* d, const Ptrs* p, const Split* s,
                        const clstm_cell* cell) noexcept nogil:
    cdef Py_ssize_t B = d.B, G = d.G, R = d.R, H = d.H, I = d.n_in, P = d.P, N = d.N, t, k
    cdef const Py_ssize_t* off = s.offsets
    cdef Py_ssize_t bs0 = step_row(off, B, 1)  # rows running at step 0
    cdef const floating* h_prev = <const floating*>p.y
    cdef floating* rows = <floating*>p.rows
    cdef floating* dG_t = <floating*>p.dG_t
    cdef floating* dh = <floating*>p.dh
    cdef int q0, q1
    cdef bint x_contiguous = input_side_contiguous(cell)
    cdef floating* x_rows
    cdef floating* h0_rows
    cdef floating* h_rows
    cdef floating* hm
    cdef floating* dst
    cdef const floating* src
    run_time_loop(dG, d, p, s, cell, True, 0, d.T, 0)
    if cell.state_is_output:  # dh0: through the recurrent product and through the cell
        for k in range(B * P):
            dh[k] += (<const floating*>p.dc)[k]
    # The weight gradients: dW += dG.T @ rows over the N packed rows, each rows' matrix
    # packed as the right operand (a copy, its rows being K): x; h0 for step 0's rows; and
    # the recurrent inputs of steps >= 1, y's block t-1 cut to the bs[t] rows still running
    # (contiguous only when no row ends early, otherwise gathered into h_prev first).
    x_rows = rows
    h0_rows = x_rows + packed_size(I, N, rows)
    h_rows = h0_rows + packed_size(P, bs0, rows)
    par_pack(s.n_threads, <const floating*>p.x, I, N, True, x_rows)
    if p.mask != NULL:
        # recurrent dropout: dw_hh from mask * h_{t-1}; step t's rows are the first bs[t]
        # sorted rows, so its mask is the mask's first bs[t] rows
        hm = <floating*>p.h_masked
        for t in range(d.T):
            src = ((<const floating*>p.h0) if t == 0
                   else (<const floating*>p.y) + step_row(off, B, t - 1) * P)
            dst = hm + step_row(off, B, t) * P
            for k in range((step_row(off, B, t + 1) - step_row(off, B, t)) * P):
                dst[k] = src[k] * (<const floating*>p.mask)[k]
        par_pack(s.n_threads, hm, P, bs0, True, h0_rows)
        if d.T > 1:
            par_pack(s.n_threads, hm + bs0 * P, P, N - bs0, True, h_rows)
    else:
        par_pack(s.n_threads, <const floating*>p.h0, P, bs0, True, h0_rows)
    if d.T > 1 and p.mask == NULL:
        if off != NULL:
            for t in range(1, d.T):
                memcpy((<floating*>p.h_prev) + (step_row(off, B, t) - bs0) * P,
                       (<const floating*>p.y) + step_row(off, B, t - 1) * P,
                       (step_row(off, B, t + 1) - step_row(off, B, t)) * P * sizeof(floating))
            h_prev = <const floating*>p.h_prev
        par_pack(s.n_threads, h_prev, P, N - bs0, True, h_rows)
    weight_grads(dG, d, p, s, cell, x_rows, h0_rows, h_rows, bs0)
    if p.w_hr != NULL:
        par_gemm(s.n_threads, True, False, P, d.H, N, <const floating*>p.dh_all, P,
                 <const floating*>p.r, d.H, <floating>1, <floating*>p.dw_hr, d.H)
    if p.dx == NULL:
        return
    if x_contiguous:
        if not p.step_dx:
            par_pgemm(s.n_threads, N, I, G, dG, R, <const floating*>p.w_ih_t, <floating*>p.dx,
                      I)
        return
    # dx = the sum over the input side's runs of blocks of dG[:, run] @ w_ih[run], on the
    # unpacked weights (their K ranges are not whole packed panels)
    q0 = 0
    while q0 < cell.n_gates:
        q1 = q0 + 1
        while q1 < cell.n_gates and cell.x_block[q1] == cell.x_block[q1 - 1] + 1:
            q1 = q1 + 1
        par_gemm(s.n_threads, False, False, N, I, (q1 - q0) * H, dG + cell.x_block[q0] * H, R,
                 (<const floating*>p.w_ih) + q0 * H * I, I, <floating>(0 if q0 == 0 else 1),
                 <floating*>p.dx, I)
        q0 = q1


cdef inline void fill_split(Split* split, Schedule sched) noexcept:
    split.kind, split.n_parts, split.n_threads = sched.kind, sched.n_parts, sched.n_threads
    split.bounds, split.offsets, split.lengths = sched.bnd, sched.off, sched.len_p


cdef int check_units(Schedule sched, Layer layer) except -1:
    """A hidden-unit split needs whole panels and no projection."""
    cdef Py_ssize_t k, width = layer.w_hh_packed.panel_width
    if sched.kind == UNITS:
        check(layer.w_hr is None and sched.bnd[sched.n_parts] == layer.n_hidden
              and (sched.n_parts == 1 or layer.n_hidden % width == 0), "unit bounds")
        for k in range(sched.n_parts):
            check(sched.bnd[k] % width == 0, "unit bounds")
    return 0


def forward(Layer layer not None, Schedule sched not None, LayerIO io not None,
            bint interruptible=False):
    """Run the layer over the packed input: fills io's outputs (and training cache).

    ``interruptible`` (for a call from the main thread): a SIGINT during the call runs
    Python's handler between time chunks, and the KeyboardInterrupt it raises ends the
    call there (the outputs are then incomplete).

    A call on one thread without a projection calls no BLAS (only the packed GEMM), so it
    leaves BLAS's process-wide thread count alone: such calls may overlap any other call
    (`clstm._threads.forward_call`)."""
    cdef Dims d
    cdef Ptrs p
    cdef Split split
    cdef int typenum = layer.typenum, blas_saved
    cdef bint watching, stopped
    cdef bint uses_blas = layer.w_hr is not None or sched.n_threads > 1
    cdef Py_ssize_t B = sched.n_batch, N = sched.n_rows
    d.T, d.B, d.N = sched.n_steps, B, N
    d.n_in, d.H, d.P = layer.n_input, layer.n_hidden, layer.n_out
    d.G = layer.w_hh_packed.n_out
    d.R = layer.spec.row_blocks * d.H
    d.train = io.train
    d.lowp = layer.w_hh_packed.lowp != 0
    check(not (d.lowp and d.train), "low-precision weights (inference only)")
    memset(&p, 0, sizeof(p))
    check_units(sched, layer)
    cdef bint stateless = layer.spec.state_is_output
    p.x = operand(io.x, typenum, N, d.n_in, "x", False, False)
    p.h0 = operand(io.h0, typenum, B, d.P, "h0", False, False)
    p.c0 = operand(io.c0, typenum, B, d.H, "c0", stateless, False)
    p.y = operand(io.y, typenum, N, d.P, "y", False, True)
    p.h_n = operand(io.h_n, typenum, B, d.P, "h_n", False, True)
    p.c_n = operand(io.c_n, typenum, B, d.H, "c_n", stateless, True)
    check(not stateless or (io.c0 is None and io.c_n is None and io.cells is None),
          "cell state of a stateless cell")
    p.gates = operand(io.gates, typenum, N if d.train else -1, d.R, "gates", False, True)
    d.cap = cnp.PyArray_DIMS(<cnp.ndarray>io.gates)[0]
    check(d.cap >= sched.first_step_rows, "gates workspace")
    p.cells = operand(io.cells, typenum, N, d.H, "cells", not d.train or stateless, True)
    check(d.train or io.cells is None, "cells")
    p.r = operand(io.r, typenum, N if d.train else B, d.H, "r", layer.w_hr is None, True)
    p.hg = operand(io.hg, typenum, B, d.G, "hg", not layer.spec.separate_recurrent, True)
    p.mask = operand(io.mask, typenum, B, d.P, "mask", True, False)
    p.hm = operand(io.hm, typenum, B, d.P, "hm", io.mask is None, True)
    check(io.mask is None or (d.train and sched.kind != UNITS), "recurrent mask "
          "(training, batch or serial split)")
    p.w_ih_p, p.w_hh_p = layer.w_ih_packed.ptr, layer.w_hh_packed.ptr
    p.bias, p.w_hr = <void*>layer.p_bias, <void*>layer.p_w_hr
    p.cfg = &layer.cfg
    fill_split(&split, sched)
    watching = interruptible and clstm_sigint_watch_begin()
    with nogil:
        blas_saved = blas_threads_enter() if uses_blas else 0
        if layer.p_w_ih != NULL:
            layer.w_ih_packed.pack_nogil(layer.p_w_ih, False, sched.n_threads)
            layer.w_hh_packed.pack_nogil(layer.p_w_hh, False, sched.n_threads)
        if d.train and layer.w_hh_t is not None:
            layer.pack_backward_nogil(sched.n_threads)
        if typenum == cnp.NPY_FLOAT:
            stopped = forward_impl(<float*>p.gates, &d, &p, &split, layer.spec, watching)
        else:
            stopped = forward_impl(<double*>p.gates, &d, &p, &split, layer.spec, watching)
        blas_threads(blas_saved)
    if watching:
        clstm_sigint_watch_end()
    if stopped:
        raise_error_set()


def backward(Layer layer not None, Schedule sched not None, LayerIO io not None,
             Grads grads not None, BackwardWork work not None):
    """BPTT through a training forward (same layout and work split): io.gates becomes dG
    (so backward runs once per forward); fills and accumulates into ``grads``."""
    cdef Dims d
    cdef Ptrs p
    cdef Split split
    cdef int typenum = layer.typenum, blas_saved
    cdef Py_ssize_t B = sched.n_batch, N = sched.n_rows, I = layer.n_input, P = layer.n_out
    cdef Py_ssize_t H = layer.n_hidden, G = layer.w_hh_packed.n_out
    cdef Py_ssize_t R = layer.spec.row_blocks * H
    cdef bint proj = layer.w_hr is not None, stateless = layer.spec.state_is_output
    d.T, d.B, d.N, d.n_in, d.H, d.P, d.G, d.cap, d.train = sched.n_steps, B, N, I, H, P, G, N, True
    d.R = R
    memset(&p, 0, sizeof(p))
    check(layer.p_w_ih != NULL and io.train, "training forward")
    check_units(sched, layer)
    p.x = operand(io.x, typenum, N, I, "x", False, False)
    p.h0 = operand(io.h0, typenum, B, P, "h0", False, False)
    p.c0 = operand(io.c0, typenum, B, H, "c0", stateless, False)
    p.y = operand(io.y, typenum, N, P, "y", False, False)
    p.gates = operand(io.gates, typenum, N, R, "gates", False, True)
    p.cells = operand(io.cells, typenum, N, H, "cells", stateless, False)
    p.cfg = &layer.cfg
    p.w_ih = <void*>layer.p_w_ih
    p.r = operand(io.r, typenum, N, H, "r", not proj, False)
    p.w_hr = <void*>layer.p_w_hr
    p.dy = operand(grads.dy, typenum, N, P, "dy", True, False)
    p.dh = operand(grads.dh, typenum, B, P, "dh", False, True)
    p.dc = operand(grads.dc, typenum, B, H, "dc", False, True)
    p.dx = operand(grads.dx, typenum, N, I, "dx", True, True)
    check(grads.dx is None or layer.w_ih_t is not None or not input_side_contiguous(layer.spec),
          "dx without backward's packed w_ih")
    p.dw_ih = operand(grads.dw_ih, typenum, G, I, "dw_ih", False, True)
    p.dw_hh = operand(grads.dw_hh, typenum, G, P, "dw_hh", False, True)
    p.dbias = operand(grads.dbias, typenum, R, -1, "dbias", False, True)
    p.dw_hr = operand(grads.dw_hr, typenum, P, H, "dw_hr", not proj, True)
    check(layer.w_hh_t is not None, "a training layer (backward's packed weights)")
    p.w_hh_t = layer.w_hh_t.ptr
    p.w_ih_t = layer.w_ih_t.ptr if layer.w_ih_t is not None else NULL
    p.rows = operand(work.rows, typenum, -1, -1, "rows", False, True)
    check(cnp.PyArray_DIMS(<cnp.ndarray>work.rows)[0]
          >= rows_length(N, sched.first_step_rows, I, P, typenum), "rows workspace")
    p.dG_t = operand(work.dG_t, typenum, -1, -1, "dG_t", False, True)
    check(cnp.PyArray_DIMS(<cnp.ndarray>work.dG_t)[0] >= dG_t_length(sched.n_threads),
          "dG_t workspace")
    p.h_prev = operand(work.h_prev, typenum, N - sched.first_step_rows, P, "h_prev",
                       sched.off == NULL, True)
    p.dh_all = operand(work.dh_all, typenum, N, P, "dh_all", not proj, True)
    p.dr = operand(work.dr, typenum, B, H, "dr", not proj, True)
    p.mask = operand(io.mask, typenum, B, P, "mask", True, False)
    p.h_masked = operand(work.h_masked, typenum, N, P, "h_masked", io.mask is None, True)
    check(io.mask is None or sched.kind != UNITS, "recurrent mask (batch or serial split)")
    p.step_dx = sched.step_dx and input_side_contiguous(layer.spec) and p.dx != NULL
    fill_split(&split, sched)
    with nogil:
        blas_saved = blas_threads_enter()
        if typenum == cnp.NPY_FLOAT:
            backward_impl(<float*>p.gates, &d, &p, &split, layer.spec)
        else:
            backward_impl(<double*>p.gates, &d, &p, &split, layer.spec)
        blas_threads(blas_saved)


cpdef Py_ssize_t rows_length(Py_ssize_t N, Py_ssize_t first_step_rows, Py_ssize_t n_input,
                             Py_ssize_t n_out, int typenum) noexcept:
    """Elements of BackwardWork.rows: x (N, I), h0's first_step_rows rows and the N -
    first_step_rows recurrent inputs of the later steps (P columns), each packed as the
    right operand of the weight gradients' sums."""
    cdef float* f32 = NULL
    cdef double* f64 = NULL
    if typenum == cnp.NPY_FLOAT:
        return (packed_size(n_input, N, f32) + packed_size(n_out, first_step_rows, f32)
                + packed_size(n_out, N - first_step_rows, f32))
    return (packed_size(n_input, N, f64) + packed_size(n_out, first_step_rows, f64)
            + packed_size(n_out, N - first_step_rows, f64))
