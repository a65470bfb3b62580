"""Packed weights as an object, and the one-step kernel that streaming cells run.

`PackedWeights` holds a weight matrix W (n_out, n_in) in the packed GEMM's panel layout
(csrc/pgemm.h), so C[n, n_out] += A[n, n_in] @ W.T costs no re-packing: a frozen model packs
once, a live layer call packs into reused scratch. Its `format` names the element type; a
new weight format (bfloat16, int8 with scales) is a new format of this object with its own
multiply, not a new code path in the drivers.

The step (`step`, LSTMCell and frozen cells): a few rows, one step, one thread. At B=1 the
multiply takes microseconds, so the call itself must cost far less: the entry points take
plain objects and check them through NumPy's C API (a fused-type memoryview signature costs
more than the multiply; docs/design.md); anything they refuse goes back to the Python
validation.
"""
cimport cython
from cython cimport floating
from libc.stdlib cimport free, malloc
from libc.stdint cimport int32_t
from libc.string cimport memcpy, memset

cimport numpy as cnp

from clstm._blas cimport blas_int, matmul
from clstm._cells cimport cell_forward, clstm_cell, clstm_cell_lstm
from clstm._lowp cimport (CLSTM_LOWP_BF16, CLSTM_LOWP_INT8, CLSTM_LOWP_NR, clstm_lowp_pack,
                          clstm_lowp_kernel_name, clstm_lowp_padded_n,
                          clstm_lowp_panel_bytes)
from clstm._lowp cimport lowp_gemm as lowp_gemm_c, packed_mul
from clstm._pgemm cimport packed_size, panel_width
from clstm._schedule cimport par_pack
from clstm._runtime cimport blas_threads, blas_threads_enter, check

cnp.import_array()

FORMATS = {"float32": cnp.NPY_FLOAT, "float64": cnp.NPY_DOUBLE,
           # low precision: weights quantised at packing, float32 activations (csrc/lowp.h)
           "int8": cnp.NPY_FLOAT, "bfloat16": cnp.NPY_FLOAT}
LOWP_FORMATS = {"int8": CLSTM_LOWP_INT8, "bfloat16": CLSTM_LOWP_BF16}
STEP_MAX_ROWS = 8  # beyond this many rows a step is worth the threaded layer driver

cdef enum:
    PACKED_LOWP = 2  # step()'s ``packed`` for int8/bfloat16 PackedWeights


cdef object new_array(int nd, Py_ssize_t rows, Py_ssize_t cols, int typenum):
    """An uninitialised C-contiguous (rows, cols) array, or (cols,) when nd == 1."""
    cdef cnp.npy_intp dims[2]
    dims[0], dims[1] = rows, cols
    return cnp.PyArray_EMPTY(nd, &dims[2 - nd], typenum, 0)


cdef inline bint is_operand(object a, int typenum, int ndim, bint exact=True) noexcept:
    """a is an ndarray (exact: not a subclass) of typenum and rank ndim, C-contiguous,
    aligned, in native byte order: an array the kernels can read as it is."""
    return ((cnp.PyArray_CheckExact(a) if exact else cnp.PyArray_Check(a))
            and cnp.PyArray_TYPE(<cnp.ndarray>a) == typenum
            and cnp.PyArray_NDIM(<cnp.ndarray>a) == ndim
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a)
            and cnp.PyArray_ISBEHAVED_RO(<cnp.ndarray>a))


cdef void* operand(object a, int typenum, Py_ssize_t rows, Py_ssize_t cols, str name,
                   bint optional, bint writable) except? NULL:
    """The data of a (rows, cols) array (cols < 0: 1-D (rows,); rows < 0: any row count)
    of typenum that the kernels can use as it is; NULL for an optional None. Anything else
    is a ValueError: callers validate first, so this only guards memory."""
    if a is None:
        check(optional, name)
        return NULL
    cdef int nd = 1 if cols < 0 else 2
    check(is_operand(a, typenum, nd, False), name)
    cdef cnp.npy_intp* dims = cnp.PyArray_DIMS(<cnp.ndarray>a)
    check((rows < 0 or dims[0] == rows) and (nd == 1 or dims[1] == cols), name)
    check(not writable or cnp.PyArray_ISWRITEABLE(<cnp.ndarray>a), name)
    return cnp.PyArray_DATA(<cnp.ndarray>a)


cdef class PackedWeights:
    """W (n_out, n_in) packed for ``C[n, n_out] += A[n, n_in] @ W.T``.

    Parameters
    ----------
    n_out, n_in : int
        The shape of W.
    format : {"float32", "float64", "int8", "bfloat16"}
        The element type. "int8" and "bfloat16" (inference only) quantise float32 weights
        at packing (csrc/lowp.h: int8 with one symmetric scale per row of W, in
        ``scales``, and the rows' sums in ``colsums``; bfloat16 rounded to nearest even)
        and multiply float32 activations quantised per row on the fly.
    buffer : ndarray, optional
        Memory to pack into (a 1-D array of the format's dtype with at least
        ``packed_length(n_out, n_in, format)`` elements), e.g. a reused scratch buffer;
        a new array by default. Float formats only.
    """

    def __init__(self, Py_ssize_t n_out, Py_ssize_t n_in, str format, buffer=None):
        check(n_out >= 1 and n_in >= 1 and format in FORMATS, "packed weights shape/format")
        # int8 sums stay exact in int32 lanes for up to 2^31 / (255 * 127) inputs
        check(format != "int8" or n_in <= 65536, "int8 packed weights: n_in <= 65536")
        self.n_out, self.n_in, self.format = n_out, n_in, format
        self.typenum = FORMATS[format]
        self.lowp = LOWP_FORMATS.get(format, 0)
        cdef Py_ssize_t n = packed_length(n_out, n_in, format)
        cdef int data_type = cnp.NPY_UINT8 if self.lowp else self.typenum
        cdef Py_ssize_t item = 1 if self.lowp else 4 if self.typenum == cnp.NPY_FLOAT else 8
        cdef Py_ssize_t start
        check(buffer is None or not self.lowp, "packed weights buffer")
        if buffer is None:  # on a cache line: the kernel loads whole 64-byte vectors
            buffer = new_array(1, 0, n + 64 // item, data_type)
            start = (64 - <size_t>cnp.PyArray_DATA(<cnp.ndarray>buffer) % 64) % 64 // item
            buffer = buffer[start:start + n]
        check(is_operand(buffer, data_type, 1, False)
              and cnp.PyArray_DIMS(<cnp.ndarray>buffer)[0] >= n
              and cnp.PyArray_ISWRITEABLE(<cnp.ndarray>buffer), "packed weights buffer")
        self.data = buffer
        self.ptr = cnp.PyArray_DATA(<cnp.ndarray>buffer)
        if self.lowp:
            self.scales = new_array(1, 0, clstm_lowp_padded_n(n_out), cnp.NPY_FLOAT)
            self.colsums = new_array(1, 0, clstm_lowp_padded_n(n_out), cnp.NPY_INT32)
            self.scales[:] = 0
            self.colsums[:] = 0
            self.lowp_w.format, self.lowp_w.N, self.lowp_w.K = self.lowp, n_out, n_in
            self.lowp_w.panels = self.ptr
            self.lowp_w.scale = <const float*>cnp.PyArray_DATA(<cnp.ndarray>self.scales)
            self.lowp_w.colsum = <const int32_t*>cnp.PyArray_DATA(<cnp.ndarray>self.colsums)
            self.ptr = &self.lowp_w  # the driver hands this to lowp_gemm

    cdef int pack_nogil(self, const void* w, bint transposed, int n_threads=1) except -1 nogil:
        if self.lowp:  # (transposed is refused by pack, the only caller for these)
            clstm_lowp_pack(self.lowp, <const float*>w, self.n_out, self.n_in,
                            <void*>self.lowp_w.panels, <float*>self.lowp_w.scale,
                            <int32_t*>self.lowp_w.colsum)
        elif self.typenum == cnp.NPY_FLOAT:
            par_pack(n_threads, <const float*>w, self.n_out, self.n_in, transposed,
                     <float*>self.ptr)
        else:
            par_pack(n_threads, <const double*>w, self.n_out, self.n_in, transposed,
                     <double*>self.ptr)
        return 0

    def copy_from(self, data, scales=None, colsums=None):
        """Take already packed data (this object's layout and length; int8 also its
        ``scales`` and ``colsums``); returns self."""
        import numpy as np
        cdef Py_ssize_t n = packed_length(self.n_out, self.n_in, self.format)
        src = np.asarray(data)
        check(src.ndim == 1 and src.shape[0] == n and src.dtype == self.data.dtype,
              "packed data")
        if self.lowp == CLSTM_LOWP_INT8:
            scales, colsums = np.asarray(scales), np.asarray(colsums)
            check(scales.shape == self.scales.shape and scales.dtype == self.scales.dtype
                  and colsums.shape == self.colsums.shape
                  and colsums.dtype == self.colsums.dtype, "packed scales")
            self.scales[:] = scales
            self.colsums[:] = colsums
        self.data[:n] = src
        return self

    def pack(self, w, bint transposed=False):
        """Pack W (n_out, n_in), or W.T given as (n_in, n_out) when ``transposed``; returns
        self."""
        check(not (transposed and self.lowp), "transposed low-precision packing")
        cdef const void* p = operand(w, self.typenum, self.n_in if transposed else self.n_out,
                                     self.n_out if transposed else self.n_in, "packed source",
                                     False, False)
        with nogil:
            self.pack_nogil(p, transposed)
        return self

    @property
    def panel_width(self):
        """Output columns per panel: a column range starting at a multiple of it can be
        multiplied on its own."""
        return packed_panel_width(self.format)

    @property
    def nbytes(self):
        """Bytes of the packed weights (with their scales and sums)."""
        return (self.data.nbytes + (0 if self.scales is None else self.scales.nbytes)
                + (0 if self.colsums is None else self.colsums.nbytes))

    def __reduce__(self):
        n = packed_length(self.n_out, self.n_in, self.format)
        extra = () if self.lowp != CLSTM_LOWP_INT8 else (self.scales.copy(),
                                                          self.colsums.copy())
        return (_restore, (self.n_out, self.n_in, self.format, self.data[:n].copy()) + extra)

    def __repr__(self):
        return f"PackedWeights(n_out={self.n_out}, n_in={self.n_in}, format={self.format!r})"


def _restore(n_out, n_in, format, data, scales=None, colsums=None):
    return PackedWeights(n_out, n_in, format, None).copy_from(data, scales, colsums)


def kernel_ready(a):
    """``a`` (or None) as an array the kernels take as it is: C-contiguous, aligned, native
    byte order (unpickled arrays may be none of these: they are copied)."""
    import numpy as np
    return None if a is None else np.require(a, a.dtype.newbyteorder("="), ["C", "A"])


def packed_length(Py_ssize_t n_out, Py_ssize_t n_in, format):
    """Elements of the packed copy of an (n_out, n_in) weight matrix (bytes for the
    low-precision formats)."""
    cdef float f
    cdef double d
    if format in LOWP_FORMATS:
        return clstm_lowp_panel_bytes(LOWP_FORMATS[format], n_out, n_in)
    return packed_size(n_out, n_in, &f) if format == "float32" else packed_size(n_out, n_in, &d)


def packed_panel_width(format):
    """Output columns per packed panel for ``format``."""
    cdef float f
    cdef double d
    if format in LOWP_FORMATS:
        return CLSTM_LOWP_NR
    return panel_width(&f) if format == "float32" else panel_width(&d)


# ---------------------------------------------------------------------------------------------
# The step.

cdef Py_ssize_t step_rows(object x, object h0, object c0, int typenum, Py_ssize_t I,
                          Py_ssize_t H) noexcept:
    """B if x (B, I) and h0, c0 (B, H), or x (I,) and h0, c0 (H,) (B = 1), are operands of
    typenum; else 0."""
    if not cnp.PyArray_CheckExact(x):
        return 0
    cdef int nd = cnp.PyArray_NDIM(<cnp.ndarray>x)
    if not (nd in (1, 2) and is_operand(x, typenum, nd) and is_operand(h0, typenum, nd)
            and is_operand(c0, typenum, nd)):
        return 0
    cdef cnp.npy_intp* x_dims = cnp.PyArray_DIMS(<cnp.ndarray>x)
    cdef cnp.npy_intp* h_dims = cnp.PyArray_DIMS(<cnp.ndarray>h0)
    cdef cnp.npy_intp* c_dims = cnp.PyArray_DIMS(<cnp.ndarray>c0)
    cdef Py_ssize_t B = x_dims[0] if nd == 2 else 1
    if not (x_dims[nd - 1] == I and h_dims[nd - 1] == H and c_dims[nd - 1] == H and B >= 1
            and (nd == 1 or (h_dims[0] == B and c_dims[0] == B))):
        return 0
    return B


cdef inline void* data(object a) noexcept:
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


cdef void step(const clstm_cell* cell, int packed, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
               const floating* x, const floating* w_ih, const floating* w_hh,
               const floating* b_ih, const floating* b_hh, const floating* h0,
               const floating* c0, floating* h1, floating* c1, floating* gates,
               floating* bias) noexcept nogil:
    """One step of B rows in the layer driver's order: gates = x @ w_ih.T, += h0 @ w_hh.T,
    then the cell adds the bias b_ih + b_hh (summed into ``bias`` (G,) scratch when both are
    given; NULL biases count as zero). packed: the weights are packed (PackedWeights), for
    the packed kernel, so the result is bit for bit the driver's (PACKED_LOWP: w_ih and
    w_hh are the ptr of int8/bfloat16 PackedWeights); else plain (G, K) arrays,
    multiplied by BLAS on one thread (a different summation order: rounding differs)."""
    cdef Py_ssize_t G = cell.n_gates * H, k
    cdef const floating* b = b_ih
    cdef int blas_saved
    if b_hh != NULL:
        if b_ih == NULL:
            b = b_hh
        else:
            for k in range(G):
                bias[k] = b_ih[k] + b_hh[k]
            b = bias
    if packed:
        memset(gates, 0, B * G * sizeof(floating))
        packed_mul(packed == PACKED_LOWP, B, G, I, x, I, w_ih, 0, gates, G)
        packed_mul(packed == PACKED_LOWP, B, G, H, h0, H, w_hh, 0, gates, G)
    else:
        blas_saved = blas_threads_enter()
        matmul(<blas_int>B, <blas_int>G, <blas_int>I, x, <blas_int>I, w_ih, <blas_int>I,
               True, <floating>0, gates, <blas_int>G)
        matmul(<blas_int>B, <blas_int>G, <blas_int>H, h0, <blas_int>H, w_hh, <blas_int>H,
               True, <floating>1, gates, <blas_int>G)
        blas_threads(blas_saved)
    cell_forward(cell, B, H, 0, H, gates, <const floating*>NULL, b, NULL, c0, c1, h1)


cdef inline void* weights_data(object w) noexcept:
    """A step's weights: a PackedWeights' ptr, or an array's data."""
    return (<PackedWeights>w).ptr if isinstance(w, PackedWeights) else data(w)


cdef inline int packed_kind(object w, bint packed) noexcept:
    """step()'s ``packed`` for weights w: PACKED_LOWP for low-precision PackedWeights."""
    if isinstance(w, PackedWeights) and (<PackedWeights>w).lowp:
        return PACKED_LOWP
    return 1 if packed else 0


cdef tuple run_step(const clstm_cell* cell, bint packed, int typenum, Py_ssize_t B,
                    Py_ssize_t I, Py_ssize_t H, x, w_ih, w_hh, b_ih, b_hh, h0, c0,
                    gates=None):
    """(h1, c1) from step() on arrays already checked (either bias may be None), with the
    GIL released. ``gates`` (B, G) receives the activated gates when given (a training
    cache); else they go to malloc'd scratch."""
    cdef int nd = cnp.PyArray_NDIM(<cnp.ndarray>x)
    h1, c1 = new_array(nd, B, H, typenum), new_array(nd, B, H, typenum)
    cdef Py_ssize_t G = cell.n_gates * H
    cdef size_t item = 4 if typenum == cnp.NPY_FLOAT else 8
    cdef void* scratch = malloc((B * G + G) * item)
    if scratch == NULL:
        raise MemoryError()
    cdef void* g = scratch if gates is None else data(gates)
    cdef void* bias = <char*>scratch + B * G * item
    cdef void* px = data(x)
    cdef void* pw_ih = weights_data(w_ih)
    cdef void* pw_hh = weights_data(w_hh)
    cdef int kind = packed_kind(w_ih, packed)
    cdef void* pb_ih = data(b_ih)
    cdef void* pb_hh = data(b_hh)
    cdef void* ph0 = data(h0)
    cdef void* pc0 = data(c0)
    cdef void* ph1 = data(h1)
    cdef void* pc1 = data(c1)
    with nogil:
        if typenum == cnp.NPY_FLOAT:
            step(cell, kind, B, I, H, <float*>px, <float*>pw_ih, <float*>pw_hh,
                 <float*>pb_ih, <float*>pb_hh, <float*>ph0, <float*>pc0, <float*>ph1,
                 <float*>pc1, <float*>g, <float*>bias)
        else:
            step(cell, kind, B, I, H, <double*>px, <double*>pw_ih, <double*>pw_hh,
                 <double*>pb_ih, <double*>pb_hh, <double*>ph0, <double*>pc0, <double*>ph1,
                 <double*>pc1, <double*>g, <double*>bias)
        free(scratch)
    return h1, c1


def cell_step(x, h0, c0, w_ih, w_hh, b_ih, b_hh, bint double, bint strict=False,
              gates=None):
    """One LSTM step on weights as they are (BLAS, one thread): (h1, c1) for x (B, I) with
    B <= STEP_MAX_ROWS or (I,), h0 and c0 of the matching shape, w_ih (4H, I),
    w_hh (4H, H), b_ih and b_hh (4H,) or None, all float64 if double else float32, as
    is_operand describes (the weights may be subclasses). Anything else: None (strict:
    ValueError), and the caller validates and comes back with conforming arrays. ``gates``
    (B, 4H), if given, receives the activated gates. Call it holding clstm._threads'
    kernel lock (it sets BLAS's thread count)."""
    cdef int typenum = cnp.NPY_DOUBLE if double else cnp.NPY_FLOAT
    cdef Py_ssize_t B = 0, I, H, G
    if is_operand(w_ih, typenum, 2, False) and is_operand(w_hh, typenum, 2, False):
        I = cnp.PyArray_DIMS(<cnp.ndarray>w_ih)[1]
        H = cnp.PyArray_DIMS(<cnp.ndarray>w_hh)[1]
        G = 4 * H
        if (cnp.PyArray_DIMS(<cnp.ndarray>w_ih)[0] == G
                and cnp.PyArray_DIMS(<cnp.ndarray>w_hh)[0] == G
                and (b_ih is None or (is_operand(b_ih, typenum, 1, False)
                                      and cnp.PyArray_DIMS(<cnp.ndarray>b_ih)[0] == G))
                and (b_hh is None or (is_operand(b_hh, typenum, 1, False)
                                      and cnp.PyArray_DIMS(<cnp.ndarray>b_hh)[0] == G))):
            B = step_rows(x, h0, c0, typenum, I, H)
    if B == 0 or B > STEP_MAX_ROWS:
        check(not strict, "cell step operands")
        return None
    if gates is not None:
        operand(gates, typenum, B, 4 * H, "step gates", False, True)
    return run_step(&clstm_cell_lstm, False, typenum, B, I, H, x, w_ih, w_hh, b_ih, b_hh,
                    h0, c0, gates)


@cython.auto_pickle(False)
cdef class PackedCell:
    """The compiled part of a frozen cell: one inference step on packed weights (no BLAS,
    no lock, nothing shared: Python threads may step it concurrently, and the GIL is
    released while it runs), bit for bit the layer driver's step.

    A streaming call (a state tuple, and arrays that step_rows accepts, at most
    STEP_MAX_ROWS rows) runs from here without a Python frame; any other goes to
    self._general_call, the subclass's full validation and threaded path."""
    cdef readonly PackedWeights w_ih_packed, w_hh_packed
    cdef readonly object bias
    cdef Py_ssize_t n_in, n_hidden
    cdef int typenum

    def _set_weights(self, PackedWeights w_ih not None, PackedWeights w_hh not None,
                     bias not None):
        """Use packed w_ih (4H, I), w_hh (4H, H) and the summed bias (4H,)."""
        H, I = w_hh.n_in, w_ih.n_in
        check(w_ih.format == w_hh.format and w_ih.n_out == w_hh.n_out == 4 * H, "cell weights")
        bias = kernel_ready(bias)
        operand(bias, w_ih.typenum, 4 * H, -1, "cell bias", False, False)
        self.w_ih_packed, self.w_hh_packed, self.bias = w_ih, w_hh, bias
        self.n_in, self.n_hidden, self.typenum = I, H, w_ih.typenum

    def __call__(self, x, state=None):
        """One step: ``h, c``."""
        if type(state) is tuple and len(state) == 2 and self.w_ih_packed is not None:
            result = self._step(x, state[0], state[1], False)
            if result is not None:
                return result
        return self._general_call(x, state)

    def _step(self, x, h0, c0, bint strict):
        """(h1, c1); None if step_rows refuses the arrays or they are more than
        STEP_MAX_ROWS rows (strict: raise instead)."""
        if self.w_ih_packed is None:
            raise ValueError("PackedCell has no weights yet: call _set_weights first")
        cdef Py_ssize_t I = self.n_in, H = self.n_hidden
        cdef Py_ssize_t B = step_rows(x, h0, c0, self.typenum, I, H)
        if B == 0 or B > STEP_MAX_ROWS:
            check(not strict, "packed cell operands")
            return None
        if self.w_ih_packed.lowp:
            return run_step(&clstm_cell_lstm, True, self.typenum, B, I, H, x,
                            self.w_ih_packed, self.w_hh_packed, self.bias, None, h0, c0)
        return run_step(&clstm_cell_lstm, True, self.typenum, B, I, H, x,
                        self.w_ih_packed.data, self.w_hh_packed.data, self.bias, None, h0, c0)


cdef int check_step_weights(tuple w, bint packed, int typenum, Py_ssize_t n_in,
                            Py_ssize_t H) except -1:
    """w = (w_ih, w_hh, b_ih, b_hh) for one step: packed (PackedWeights data, or the
    int8/bfloat16 PackedWeights themselves, summed bias, None) or plain arrays (either bias
    may be None)."""
    cdef Py_ssize_t G = 4 * H
    check(len(w) == 4, "step weights")
    if packed and isinstance(w[0], PackedWeights):
        check(isinstance(w[1], PackedWeights) and typenum == cnp.NPY_FLOAT
              and (<PackedWeights>w[0]).lowp and (<PackedWeights>w[1]).lowp
              and w[0].n_out == G and w[0].n_in == n_in and w[1].n_out == G
              and w[1].n_in == H, "w_ih")
    elif packed:
        operand(w[0], typenum, packed_length(G, n_in, FORMAT_OF[typenum]), -1, "w_ih", False,
                False)
        operand(w[1], typenum, packed_length(G, H, FORMAT_OF[typenum]), -1, "w_hh", False,
                False)
    else:
        operand(w[0], typenum, G, n_in, "w_ih", False, False)
        operand(w[1], typenum, G, H, "w_hh", False, False)
    operand(w[2], typenum, G, -1, "b_ih", True, False)
    operand(w[3], typenum, G, -1, "b_hh", True, False)
    return 0


FORMAT_OF = {cnp.NPY_FLOAT: "float32", cnp.NPY_DOUBLE: "float64"}


def stack_step(list weights not None, bint packed, int n_directions, bint batch_first, x, h0,
               c0):
    """One time step of a stack without projection, in one call: ``weights[layer * D + d]``
    = (w_ih, w_hh, b_ih, b_hh) as `check_step_weights` describes (layer 0's input size I,
    the others' D*H); x (1, B, I) ((B, 1, I) with batch_first), h0 and c0 (L*D, B, H).
    Returns y (like x, D*H features), (h_n, c_n): each cell is `step` (packed: bit for bit
    the driver's; plain: BLAS, hold the kernel lock), and a reverse direction of one step is
    the forward one. None when x, h0, c0 do not conform or B > STEP_MAX_ROWS (the caller
    takes the general path)."""
    cdef Py_ssize_t n_cells = len(weights), D = n_directions, L, B, I, H, k, G, row
    if n_cells < 1 or D < 1 or n_cells % D or not cnp.PyArray_CheckExact(h0):
        return None
    if cnp.PyArray_NDIM(<cnp.ndarray>h0) != 3:
        return None
    cdef int typenum = cnp.PyArray_TYPE(<cnp.ndarray>h0)
    if typenum != cnp.NPY_FLOAT and typenum != cnp.NPY_DOUBLE:
        return None
    H, L = cnp.PyArray_DIMS(<cnp.ndarray>h0)[2], n_cells // D
    if not (is_operand(x, typenum, 3) and is_operand(h0, typenum, 3)
            and is_operand(c0, typenum, 3)):
        return None
    cdef cnp.npy_intp* xd = cnp.PyArray_DIMS(<cnp.ndarray>x)
    B = xd[0] if batch_first else xd[1]
    I = xd[2]
    if not ((xd[1] if batch_first else xd[0]) == 1 and 1 <= B <= STEP_MAX_ROWS):
        return None
    for a in (h0, c0):
        if not (cnp.PyArray_DIMS(<cnp.ndarray>a)[0] == n_cells
                and cnp.PyArray_DIMS(<cnp.ndarray>a)[1] == B
                and cnp.PyArray_DIMS(<cnp.ndarray>a)[2] == H):
            return None
    for k in range(n_cells):
        if k < D:  # x's size against the weights': a mismatch is bad input, for the caller
            try:
                check_step_weights(weights[k], packed, typenum, I, H)
            except ValueError:
                return None
        else:
            check_step_weights(weights[k], packed, typenum, D * H, H)
    cdef cnp.npy_intp dims[3]
    dims[0], dims[1], dims[2] = 1, B, D * H
    if batch_first:
        dims[0], dims[1] = B, 1
    y = cnp.PyArray_EMPTY(3, dims, typenum, 0)
    dims[0], dims[1], dims[2] = n_cells, B, H
    h_n = cnp.PyArray_EMPTY(3, dims, typenum, 0)
    c_n = cnp.PyArray_EMPTY(3, dims, typenum, 0)
    cdef size_t item = 4 if typenum == cnp.NPY_FLOAT else 8
    G = 4 * H
    cdef void** ptrs = <void**>malloc(4 * n_cells * sizeof(void*))
    cdef char* scratch = <char*>malloc((B * G + G + 2 * B * D * H) * item)
    if ptrs == NULL or scratch == NULL:
        free(ptrs)
        free(scratch)
        raise MemoryError()
    for k in range(n_cells):
        for row in range(4):
            ptrs[4 * k + row] = weights_data(weights[k][row])
    cdef int kind = packed_kind(weights[0][0], packed)
    cdef char* gates = scratch
    cdef char* bias = scratch + B * G * item
    cdef char* layer_out = bias + G * item   # (B, D*H): the next layer's input
    cdef char* spare = layer_out + B * D * H * item
    cdef char* x_l = <char*>data(x)
    cdef char* p_h0 = <char*>data(h0)
    cdef char* p_c0 = <char*>data(c0)
    cdef char* p_hn = <char*>data(h_n)
    cdef char* p_cn = <char*>data(c_n)
    cdef void* p_y = data(y)
    cdef Py_ssize_t n_in = I, d, layer, state = B * H * item
    with nogil:
        for layer in range(L):
            for d in range(D):
                k = layer * D + d
                if typenum == cnp.NPY_FLOAT:
                    step(&clstm_cell_lstm, kind, B, n_in, H, <float*>x_l,
                         <float*>ptrs[4 * k], <float*>ptrs[4 * k + 1], <float*>ptrs[4 * k + 2],
                         <float*>ptrs[4 * k + 3], <float*>(p_h0 + k * state),
                         <float*>(p_c0 + k * state), <float*>(p_hn + k * state),
                         <float*>(p_cn + k * state), <float*>gates, <float*>bias)
                else:
                    step(&clstm_cell_lstm, kind, B, n_in, H, <double*>x_l,
                         <double*>ptrs[4 * k], <double*>ptrs[4 * k + 1],
                         <double*>ptrs[4 * k + 2], <double*>ptrs[4 * k + 3],
                         <double*>(p_h0 + k * state), <double*>(p_c0 + k * state),
                         <double*>(p_hn + k * state), <double*>(p_cn + k * state),
                         <double*>gates, <double*>bias)
                for row in range(B):  # [forward | reverse] per row
                    memcpy(layer_out + (row * D + d) * H * item,
                           p_hn + k * state + row * H * item, H * item)
            # the next layer reads this layer's output; swap the two buffers
            x_l = layer_out
            layer_out, spare = spare, layer_out
            n_in = D * H
        memcpy(p_y, x_l, B * D * H * item)
        free(ptrs)
        free(scratch)
    return y, (h_n, c_n)


# ---------------------------------------------------------------------------------------------
# The low-precision multiply on its own (tests, micro-benchmarks).

def lowp_gemm(PackedWeights w not None, a, c, Py_ssize_t col0=0, Py_ssize_t n_cols=-1):
    """``c[:, :n_cols] += a @ W[col0 : col0 + n_cols].T`` for W packed in a low-precision
    format; a (n, n_in) and c (n, >= n_cols) float32, C-contiguous; col0 a multiple of
    the panel width; n_cols defaults to the rest of W. Returns c."""
    check(w.lowp != 0, "lowp_gemm weights format")
    if n_cols < 0:
        n_cols = w.n_out - col0
    check(0 <= col0 and col0 % CLSTM_LOWP_NR == 0 and col0 + n_cols <= w.n_out,
          "lowp_gemm columns")
    cdef const float* pa = <const float*>operand(a, cnp.NPY_FLOAT, -1, w.n_in, "a", False, False)
    cdef Py_ssize_t n = cnp.PyArray_DIMS(<cnp.ndarray>a)[0]
    check(cnp.PyArray_Check(c) and cnp.PyArray_NDIM(<cnp.ndarray>c) == 2, "c")
    cdef Py_ssize_t ldc = cnp.PyArray_DIMS(<cnp.ndarray>c)[1]
    cdef float* pc = <float*>operand(c, cnp.NPY_FLOAT, n, ldc, "c", False, True)
    check(ldc >= n_cols, "c")
    with nogil:
        lowp_gemm_c(n, n_cols, pa, w.n_in, w.ptr, col0, pc, ldc)
    return c


def lowp_kernel():
    """The low-precision kernel this process runs ("amx", "vnni512", "v4", "avxvnni", "v3"
    or "base"; CLSTM_ISA chooses a lower one, csrc/lowp.h). "amx" multiplies int8 products
    of two rows or more and every bfloat16 product (unless CLSTM_AMX_BF16=0) on AMX tiles
    (csrc/amx.h), and the rest with "vnni512"."""
    return clstm_lowp_kernel_name().decode()
