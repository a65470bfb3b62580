"""Compiled kernels for one LSTM layer in one direction (float32 and float64).

Notation and layouts (PyTorch's, so weights interoperate):

    T steps, B batch rows, I inputs, H hidden units, P outputs (P = H without projection)
    w_ih    (4H, I)        input weights, row blocks stacked [i | f | g | o]
    w_hh    (4H, P)        recurrent weights, same block order
    w_hr    (P, H)         projection (LSTMP), or None
    bias    (4H,)          b_ih + b_hh (the kernels only ever need the sum)

    i, f, o = sigmoid(.), g = tanh(.)  of  x_t @ w_ih.T + h_{t-1} @ w_hh.T + bias
    c_t = f * c_{t-1} + i * g
    r_t = o * tanh(c_t)
    h_t = r_t @ w_hr.T  (h_t = r_t without projection)

Sequences are *packed*, as in PyTorch's PackedSequence: batch rows are sorted by length,
longest first, so the rows still running at step t are the first bs[t] rows, and the arrays
hold only real steps, step-major: step t occupies rows [offsets[t], offsets[t+1]) of

    x       (N, I)         input;   N = offsets[T] = sum of the lengths
    y       (N, P)         output h_t
    gates   (N, 4H)        training cache: activated gates [i | f | g | o];
                           backward overwrites it in place with dG (pre-activation grads)
    cells   (N, H)         training cache: c_t
    r       (N, H)         training cache with projection: r_t

States h0, h_n (B, P) and c0, c_n (B, H) are in the same sorted row order. Equal lengths
are the special case bs[t] = B, offsets[t] = t*B: the plain (T, B, .) arrays, unchanged
(the caller passes offsets=None for it).
A reverse direction is the forward kernel run on each row's steps in reverse order (the
caller permutes). clstm.functional builds all of this.

Work split: the input projection of many steps is one GEMM; the time loop runs in an
OpenMP region where each thread owns a contiguous slice of batch rows (slice bounds come
from the caller, balanced by total length) and carries it through every step alone: rows
never interact, so there is no barrier per step, and a row that has ended costs nothing.
Backward mirrors this; the weight gradients are whole-sequence GEMMs after the reverse loop.
All parallel work is OpenMP: BLAS is held to one thread for the whole call (SciPy's
OpenBLAS is a pthreads build whose pool would spin against ours and oversubscribe the
cores if it ran inside our region), and the big GEMMs are split by rows across our threads.

All arrays arrive validated and C-contiguous from clstm.functional, workspaces included,
so nothing in here can fail once the GIL is released.
"""
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

cimport numpy as cnp

from clstm._blas cimport blas_int, gemm, matmul
from clstm._fastmath cimport (clstm_cell_backward_f32, clstm_cell_backward_f64, clstm_cell_f32,
                              clstm_cell_f64, clstm_sigmoid, clstm_sigmoidf, clstm_tanh,
                              clstm_tanhf)
from clstm._pgemm cimport clstm_isa_level, pack, packed_size, panel_width, pgemm, transpose
from clstm._openmp cimport (CLSTM_OPENMP_ENABLED, clstm_barrier, clstm_current_cpu,
                            clstm_leave_master_cpu, omp_get_max_threads, omp_get_num_threads,
                            omp_get_thread_num)

cnp.import_array()


# ---------------------------------------------------------------------------------------------
# BLAS thread control. clstm._threads finds OpenBLAS's C entry points and installs them; the
# kernels then hold BLAS to one thread for the duration of a call and restore the caller's
# count on the way out. (Serial builds have no pool of their own, so there the big GEMMs
# get BLAS threads instead.)
ctypedef void (*set_threads_fn)(int) noexcept nogil
ctypedef int (*get_threads_fn)() noexcept nogil
cdef set_threads_fn _blas_set_threads = NULL
cdef get_threads_fn _blas_get_threads = NULL


def _install_blas_thread_control(size_t set_threads_addr, size_t get_threads_addr):
    """Install OpenBLAS's set/get_num_threads (C function addresses; 0, 0 uninstalls)."""
    global _blas_set_threads, _blas_get_threads
    if (set_threads_addr == 0) != (get_threads_addr == 0):
        raise ValueError("install both BLAS thread functions or neither")
    _blas_set_threads = <set_threads_fn>set_threads_addr
    _blas_get_threads = <get_threads_fn>get_threads_addr


def _blas_thread_control_installed():
    return _blas_set_threads != NULL


cdef inline int _blas_threads_enter() noexcept nogil:
    cdef int saved = 0
    if _blas_get_threads != NULL:
        saved = _blas_get_threads()
        if saved != 1:
            _blas_set_threads(1)
    return saved


cdef inline void _blas_threads(int n) noexcept nogil:
    if _blas_set_threads != NULL and n > 0 and n != _blas_get_threads():
        _blas_set_threads(n)


def openmp_enabled():
    """True when the extension was compiled with OpenMP."""
    return bool(CLSTM_OPENMP_ENABLED)


def kernel_isa():
    """Which multiply kernel runs: "x86-64-v4" (AVX-512), "x86-64-v3" (AVX2+FMA) or "base"
    (whatever the build flags allow; the only one off x86-64 Linux with GCC)."""
    return ("base", "x86-64-v3", "x86-64-v4")[clstm_isa_level()]


def openmp_max_threads():
    """omp_get_max_threads() (1 in a serial build); honours OMP_NUM_THREADS."""
    return omp_get_max_threads()


# ---------------------------------------------------------------------------------------------
# Element-wise gate math: the fused, vectorised cell of _fastmath.pxd (fast float32
# approximations, libm-accurate float64 ones).

cdef inline floating sigmoid(floating z) noexcept nogil:
    if floating is float:
        return clstm_sigmoidf(z)
    else:
        return clstm_sigmoid(z)


cdef inline floating tanh_(floating z) noexcept nogil:
    if floating is float:
        return clstm_tanhf(z)
    else:
        return clstm_tanh(z)


cdef void gates_forward(Py_ssize_t n_rows, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1,
                        floating* gates, const floating* bias, const floating* c_prev,
                        floating* c_t, floating* r_t) noexcept nogil:
    """For hidden units [j0, j1): activate gates in place (adding the bias) and write c_t
    and r_t = o * tanh(c_t).

    gates: (n_rows, 4H) INOUT, pre-activations without bias -> activations [i|f|g|o]
    bias: (4H,) IN, or NULL when gates already include it
    c_prev: (n_rows, H) IN (may alias c_t); c_t, r_t: (n_rows, H) OUT
    """
    cdef Py_ssize_t row
    cdef const floating* b = NULL if bias == NULL else bias + j0
    for row in range(n_rows):
        if floating is float:
            clstm_cell_f32(gates + row * 4 * H + j0, H, b, c_prev + row * H + j0,
                           c_t + row * H + j0, r_t + row * H + j0, j1 - j0)
        else:
            clstm_cell_f64(gates + row * 4 * H + j0, H, b, c_prev + row * H + j0,
                           c_t + row * H + j0, r_t + row * H + j0, j1 - j0)


cdef void gates_backward(Py_ssize_t n_rows, Py_ssize_t H, Py_ssize_t j0, Py_ssize_t j1,
                         floating* gates, const floating* c_prev, const floating* c_t,
                         const floating* dr, floating* dc) noexcept nogil:
    """One step of BPTT through the cell, for n_rows rows and hidden units [j0, j1).

    gates: (n_rows, 4H) INOUT, activations [i|f|g|o] -> dG, gradients of the pre-activations
    c_prev, c_t: (n_rows, H) IN
    dr: (n_rows, H) IN, the whole gradient reaching r_t (from step t+1 or h_n, and from y[t])
    dc: (n_rows, H) INOUT, gradient reaching c_t from step t+1 -> gradient of c_{t-1}
    """
    cdef Py_ssize_t row, k
    for row in range(n_rows):
        k = row * H + j0
        if floating is float:
            clstm_cell_backward_f32(gates + row * 4 * H + j0, H, c_prev + k, c_t + k, dr + k,
                                    dc + k, j1 - j0)
        else:
            clstm_cell_backward_f64(gates + row * 4 * H + j0, H, c_prev + k, c_t + k, dr + k,
                                    dc + k, j1 - j0)


# ---------------------------------------------------------------------------------------------
# GEMMs outside the time loop: split by rows of C across the OpenMP threads, one BLAS thread
# each. A split needs at least MIN_ROWS_PER_THREAD rows per thread and MIN_PARALLEL_MACS
# multiply-adds in all: below that, waking an idle thread costs more than it saves (on a
# virtual machine, measured: up to milliseconds after an idle gap).
cdef enum:
    MIN_ROWS_PER_THREAD = 16
    MIN_PARALLEL_MACS = 1 << 22


cdef inline int gemm_parts(int n_threads, Py_ssize_t n_units, Py_ssize_t macs) noexcept nogil:
    if macs < MIN_PARALLEL_MACS:
        return 1
    return <int>min(<Py_ssize_t>n_threads, n_units)


cdef void par_gemm(int n_threads, bint trans_a, bint trans_b, Py_ssize_t m, Py_ssize_t n,
                   Py_ssize_t k, const floating* A, Py_ssize_t lda, const floating* B,
                   Py_ssize_t ldb, floating beta, floating* C, Py_ssize_t ldc) noexcept nogil:
    """C[m, n] = op(A) @ op(B) + beta * C (row-major), rows of C shared among threads."""
    cdef Py_ssize_t parts = gemm_parts(n_threads, m // MIN_ROWS_PER_THREAD, m * n * k)
    cdef Py_ssize_t s, r0, r1
    if m == 0 or n == 0:
        return
    if not CLSTM_OPENMP_ENABLED or parts < 2:
        if not CLSTM_OPENMP_ENABLED:
            _blas_threads(n_threads)
        gemm(trans_a, trans_b, <blas_int>m, <blas_int>n, <blas_int>k, <floating>1, A,
             <blas_int>lda, B, <blas_int>ldb, beta, C, <blas_int>ldc)
        if not CLSTM_OPENMP_ENABLED:
            _blas_threads(1)
        return
    cdef int master_cpu = clstm_current_cpu()
    for s in prange(parts, num_threads=parts, schedule='static'):
        clstm_leave_master_cpu(master_cpu)
        r0 = s * m // parts
        r1 = (s + 1) * m // parts
        # Row r of op(A) starts at A + r*lda, or at column r of A when A is transposed.
        gemm(trans_a, trans_b, <blas_int>(r1 - r0), <blas_int>n, <blas_int>k, <floating>1,
             A + (r0 if trans_a else r0 * lda), <blas_int>lda, B, <blas_int>ldb, beta,
             C + r0 * ldc, <blas_int>ldc)


cdef enum:
    # Rows per task of par_pgemm: 64 rows of A stay in cache while every weight panel
    # streams past them once.
    PGEMM_ROW_BLOCK = 64


cdef void par_pgemm(int n_threads, Py_ssize_t m, Py_ssize_t N, Py_ssize_t K,
                    const floating* A, Py_ssize_t lda, const floating* Wp, floating* C,
                    Py_ssize_t ldc, floating* a_t_ws=NULL) noexcept nogil:
    """C[m, N] = A[m, K] @ W.T (W packed by _pgemm.pack), row blocks shared among threads.

    With a_t_ws: C[m, N] += A.T @ W.T for A stored (K, m); each thread copies its row
    block of A.T into a_t_ws (PGEMM_ROW_BLOCK * K elements per thread) first, as the
    kernel wants the rows of its left operand contiguous."""
    cdef Py_ssize_t n_blocks = (m + PGEMM_ROW_BLOCK - 1) // PGEMM_ROW_BLOCK, blk, r0, r1, r
    cdef int parts = gemm_parts(n_threads, n_blocks, m * N * K)
    cdef floating* a_block
    if n_blocks < 1:
        return
    cdef int master_cpu = clstm_current_cpu()
    for blk in prange(n_blocks, num_threads=parts, schedule='static'):
        clstm_leave_master_cpu(master_cpu)
        r0 = blk * PGEMM_ROW_BLOCK
        r1 = min(r0 + PGEMM_ROW_BLOCK, m)
        if a_t_ws == NULL:
            for r in range(r0, r1):
                memset(C + r * ldc, 0, N * sizeof(floating))
            pgemm(r1 - r0, N, K, A + r0 * lda, lda, Wp, C + r0 * ldc, ldc)
        else:
            a_block = a_t_ws + omp_get_thread_num() * PGEMM_ROW_BLOCK * K
            transpose(A + r0, K, r1 - r0, lda, a_block, K)
            pgemm(r1 - r0, N, K, a_block, K, Wp, C + r0 * ldc, ldc)


# ---------------------------------------------------------------------------------------------
# The time loops, one batch slice each.

cdef inline Py_ssize_t step_row(const Py_ssize_t* offsets, Py_ssize_t B,
                                Py_ssize_t t) noexcept nogil:
    """First packed row of step t. offsets NULL means every row runs every step, and then
    no O(T) index array exists at all (inference memory stays independent of T)."""
    return t * B if offsets == NULL else offsets[t]


cdef void forward_slice(Py_ssize_t t_begin, Py_ssize_t t_end, Py_ssize_t b0, Py_ssize_t b1,
                        const Py_ssize_t* offsets, Py_ssize_t B, Py_ssize_t H, Py_ssize_t P,
                        floating* gates, Py_ssize_t gates_row0, const floating* w_hh_p,
                        const floating* bias, const floating* w_hr, const floating* h0,
                        floating* y, const floating* c0, floating* cells, bint keep_cells,
                        floating* r, Py_ssize_t j0, Py_ssize_t j1, bint barrier) noexcept nogil:
    """Run rows [b0, b1) through steps [t_begin, t_end), computing hidden units [j0, j1).

    A share of the hidden units (j0 > 0 or j1 < H) needs every unit of h_{t-1}: the
    threads sharing the rows then meet at a barrier after each step (barrier true; every
    thread of the team runs the same steps). j0 and j1 are multiples of
    _pgemm.panel_width, or 0 and H.

    gates holds the input projection of packed rows [gates_row0, ...) and is activated in
    place; w_hh_p is w_hh packed by _pgemm.pack. With keep_cells, cells and r are (N, H)
    caches written at each step's rows; without, cells is the running (B, H) cell state
    (initialised from c0 by the caller) and r a (B, H) scratch. r is unused without
    projection (w_hr NULL): r_t is y's row itself.
    """
    cdef Py_ssize_t t, n, p, q
    cdef const floating* h_prev
    cdef const floating* c_prev
    cdef floating* c_out
    cdef floating* r_t
    cdef floating* g_t
    for t in range(t_begin, t_end):
        n = min(b1, step_row(offsets, B, t + 1) - step_row(offsets, B, t)) - b0
        if n <= 0:
            break  # lengths are sorted: every row of this slice has ended
        p = step_row(offsets, B, t) + b0
        h_prev = (h0 + b0 * P) if t == 0 else (y + (step_row(offsets, B, t - 1) + b0) * P)
        if keep_cells:
            c_prev = (c0 + b0 * H) if t == 0 else (cells + (step_row(offsets, B, t - 1) + b0) * H)
            c_out = cells + p * H
        else:
            c_prev = cells + b0 * H
            c_out = cells + b0 * H
        if w_hr == NULL:
            r_t = y + p * P
        else:
            r_t = (r + p * H) if keep_cells else (r + b0 * H)
        g_t = gates + (p - gates_row0) * 4 * H
        if j0 == 0 and j1 == H:
            pgemm(n, 4 * H, P, h_prev, P, w_hh_p, g_t, 4 * H)
        else:
            for q in range(4):  # the [j0, j1) columns of each gate block
                pgemm(n, j1 - j0, P, h_prev, P, w_hh_p + (q * H + j0) * P, g_t + q * H + j0,
                      4 * H)
        gates_forward(n, H, j0, j1, g_t, bias, c_prev, c_out, r_t)
        if w_hr != NULL:
            matmul(<blas_int>n, <blas_int>P, <blas_int>H, r_t, <blas_int>H, w_hr,
                   <blas_int>H, True, <floating>0, y + p * P, <blas_int>P)
        if barrier:
            clstm_barrier()  # h_t complete before anyone multiplies it


cdef void backward_slice(Py_ssize_t T, Py_ssize_t b0, Py_ssize_t b1, const Py_ssize_t* offsets,
                         Py_ssize_t B, Py_ssize_t H, Py_ssize_t P, floating* gates,
                         const floating* cells, const floating* c0, const floating* w_hh_tp,
                         const floating* w_hr,
                         const floating* dy, floating* dh, floating* dc, floating* dh_all,
                         floating* dr, Py_ssize_t j0, Py_ssize_t j1,
                         bint barrier) noexcept nogil:
    """Reverse time loop for rows [b0, b1): gates -> dG; dh (B, P), dc (B, H) carried in
    place; w_hh_tp is w_hh.T packed by _pgemm.pack. With projection, dh_all (N, P) receives
    each step's total dh_t (for dW_hr) and dr (B, H) is scratch.

    Hidden units [j0, j1) only, as forward_slice (no projection then): this thread's
    columns of dG_t, and of dh_{t-1} = dG_t @ w_hh, which needs every column of dG_t, so
    the threads meet at a barrier between the two."""
    cdef Py_ssize_t t, n, p, k, row
    cdef const floating* c_prev
    cdef floating* dG_t
    cdef floating* dh_t
    for t in range(T - 1, -1, -1):
        n = min(b1, step_row(offsets, B, t + 1) - step_row(offsets, B, t)) - b0
        if n <= 0:
            continue  # these rows have not started yet, walking backwards
        p = step_row(offsets, B, t) + b0
        dG_t = gates + p * 4 * H
        c_prev = (c0 + b0 * H) if t == 0 else (cells + (step_row(offsets, B, t - 1) + b0) * H)
        if w_hr == NULL:
            if dy != NULL:
                for row in range(n):
                    for k in range(j0, j1):
                        dh[(b0 + row) * P + k] += dy[(p + row) * P + k]
            gates_backward(n, H, j0, j1, dG_t, c_prev, cells + p * H, dh + b0 * P, dc + b0 * H)
        else:
            dh_t = dh_all + p * P
            for k in range(n * P):
                dh_t[k] = dh[b0 * P + k]
            if dy != NULL:
                for k in range(n * P):
                    dh_t[k] += dy[p * P + k]
            matmul(<blas_int>n, <blas_int>H, <blas_int>P, dh_t, <blas_int>P, w_hr,
                   <blas_int>H, False, <floating>0, dr + b0 * H, <blas_int>H)
            gates_backward(n, H, 0, H, dG_t, c_prev, cells + p * H, dr + b0 * H, dc + b0 * H)
        if barrier:
            clstm_barrier()  # dG_t complete before anyone multiplies it
        for row in range(n):
            memset(dh + (b0 + row) * P + j0, 0, (j1 - j0) * sizeof(floating))
        # dh_{t-1}[:, j0:j1] = dG_t @ w_hh[:, j0:j1]
        pgemm(n, j1 - j0, 4 * H, dG_t, 4 * H, w_hh_tp + j0 * 4 * H, dh + b0 * P + j0, P)


cdef void final_states(Py_ssize_t B, Py_ssize_t H, Py_ssize_t P, const Py_ssize_t* lengths,
                       const Py_ssize_t* offsets, const floating* y, const floating* h0,
                       floating* h_n, const floating* cells, const floating* c0,
                       floating* c_n) noexcept nogil:
    """Each row's state after its own last step (its initial state if it has no steps).
    cells NULL: c_n already holds the running cell state."""
    cdef Py_ssize_t b, last
    for b in range(B):
        if lengths[b] == 0:
            memcpy(h_n + b * P, h0 + b * P, P * sizeof(floating))
            if cells != NULL:
                memcpy(c_n + b * H, c0 + b * H, H * sizeof(floating))
        else:
            last = step_row(offsets, B, lengths[b] - 1) + b
            memcpy(h_n + b * P, y + last * P, P * sizeof(floating))
            if cells != NULL:
                memcpy(c_n + b * H, cells + last * H, H * sizeof(floating))


# ---------------------------------------------------------------------------------------------
# Entry points. Checks here are O(1) consistency checks against memory errors; the full
# validation (shapes against the model, lengths) is clstm.functional's.

cdef check(bint ok, str what):
    if not ok:
        raise ValueError(f"clstm._lstm: inconsistent arguments ({what})")


cdef int n_slices_of(const Py_ssize_t[::1] bounds, int n_threads) except -1:
    cdef Py_ssize_t s, n = bounds.shape[0] - 1
    check(n >= 1 and bounds[0] == 0, "slice bounds")
    for s in range(n):
        check(bounds[s] <= bounds[s + 1], "slice bounds")
    check(n == 1 or (CLSTM_OPENMP_ENABLED and n <= n_threads), "slice count")
    return <int>n


cdef int n_parts_of(const Py_ssize_t[::1] unit_bounds, int n_slices, bint proj, Py_ssize_t H,
                    int n_threads, Py_ssize_t width) except -1:
    """Parts of a hidden-unit split (1 without one), after checking its bounds."""
    if unit_bounds is None:
        return 1
    cdef Py_ssize_t s, n = unit_bounds.shape[0] - 1
    check(n >= 1 and n_slices == 1 and not proj and unit_bounds[0] == 0 and unit_bounds[n] == H
          and (n == 1 or (CLSTM_OPENMP_ENABLED and n <= n_threads and H % width == 0)),
          "unit bounds")
    for s in range(n):
        check(unit_bounds[s] < unit_bounds[s + 1] and unit_bounds[s] % width == 0, "unit bounds")
    return <int>n


def forward(const floating[:, ::1] x not None, const floating[:, ::1] w_ih not None,
            const floating[:, ::1] w_hh not None, const floating[::1] bias not None,
            const floating[:, ::1] w_hr, const floating[:, ::1] h0 not None,
            const floating[:, ::1] c0 not None, Py_ssize_t n_steps,
            const Py_ssize_t[::1] offsets,
            const Py_ssize_t[::1] lengths not None, const Py_ssize_t[::1] bounds not None,
            floating[:, ::1] y not None, floating[:, ::1] h_n not None,
            floating[:, ::1] c_n not None, floating[:, ::1] gates not None,
            floating[:, ::1] cells, floating[:, ::1] r, floating[::1] w_ih_packed not None,
            floating[::1] w_hh_packed not None, int n_threads,
            const Py_ssize_t[::1] unit_bounds=None):
    """Forward over packed x (N, I): y (N, P), h_n (B, P), c_n (B, H) OUT.

    The time loop's threads share the batch rows (bounds, one slice each) or, with
    unit_bounds (one slice of rows, no projection), the hidden units: part s computes units
    [unit_bounds[s], unit_bounds[s + 1]), cut at multiples of _pgemm.panel_width.

    Training (cells given): gates (N, 4H), cells (N, H) and, with projection, r (N, H) are
    filled for backward. Inference (cells None): gates is a (rows, 4H) workspace with
    rows >= B; the input projection is hoisted as many steps at a time as fit, so memory
    beyond y does not grow with T; r is a (B, H) workspace with projection.
    """
    cdef Py_ssize_t T = n_steps, B = h0.shape[0], I = x.shape[1]
    cdef const Py_ssize_t* off = NULL if offsets is None else &offsets[0]
    cdef Py_ssize_t H = c0.shape[1], P = h0.shape[1], N = x.shape[0]
    cdef bint train = cells is not None, proj = w_hr is not None
    cdef Py_ssize_t cap = gates.shape[0], t0, t1, row0
    cdef int n_slices = n_slices_of(bounds, n_threads)
    cdef int s, blas_saved, master_cpu, team, part0, part1
    cdef int n_parts
    cdef const floating* w_hr_p = &w_hr[0, 0] if proj else NULL
    cdef floating* cells_p = &cells[0, 0] if train else &c_n[0, 0]
    cdef floating* r_p = &r[0, 0] if proj else NULL
    check(T >= 1 and N >= 1 and (offsets is None or (offsets.shape[0] == T + 1
                                                    and offsets[0] == 0 and offsets[T] == N))
          and step_row(off, B, T) == N, "offsets")
    check(step_row(off, B, 1) <= B and bounds[n_slices] == B and lengths.shape[0] == B, "batch")
    for t0 in range(B):
        check(0 <= lengths[t0] <= T, "lengths")
    check(w_ih.shape[0] == 4 * H and w_ih.shape[1] == I and w_hh.shape[0] == 4 * H
          and w_hh.shape[1] == P and bias.shape[0] == 4 * H and c0.shape[0] == B, "weights")
    check(y.shape[0] == N and y.shape[1] == P and h_n.shape[0] == B and h_n.shape[1] == P
          and c_n.shape[0] == B and c_n.shape[1] == H and gates.shape[1] == 4 * H, "outputs")
    check(not proj or (w_hr.shape[0] == P and w_hr.shape[1] == H and r.shape[1] == H
                       and r.shape[0] == (N if train else B)), "projection")
    check(proj or P == H, "projection")
    check(w_hh_packed.shape[0] == packed_size(4 * H, P, &w_hh_packed[0])
          and w_ih_packed.shape[0] == packed_size(4 * H, I, &w_ih_packed[0]), "packed weights")
    check((train and cap == N and cells.shape[0] == N and cells.shape[1] == H)
          or (not train and cap >= step_row(off, B, 1)), "caches")
    n_parts = n_parts_of(unit_bounds, n_slices, proj, H, n_threads, panel_width(&y[0, 0]))
    with nogil:
        blas_saved = _blas_threads_enter()
        pack(&w_ih[0, 0], 4 * H, I, False, &w_ih_packed[0])
        pack(&w_hh[0, 0], 4 * H, P, False, &w_hh_packed[0])
        if not train:
            memcpy(&c_n[0, 0], &c0[0, 0], B * H * sizeof(floating))
        t0 = 0
        while t0 < T:
            # hoist the input projection of steps [t0, t1): as many as fit in gates
            t1 = t0 + 1
            while t1 < T and step_row(off, B, t1 + 1) - step_row(off, B, t0) <= cap:
                t1 = t1 + 1
            row0 = 0 if train else step_row(off, B, t0)
            par_pgemm(n_threads, step_row(off, B, t1) - step_row(off, B, t0), 4 * H, I,
                      &x[step_row(off, B, t0), 0], I, &w_ih_packed[0],
                      &gates[step_row(off, B, t0) - row0, 0], 4 * H)
            if n_parts > 1:
                master_cpu = clstm_current_cpu()
                with parallel(num_threads=n_parts):
                    # The team may be smaller than asked for: each thread then takes a run
                    # of parts, and the barriers still see every thread.
                    team = omp_get_num_threads()
                    part0 = omp_get_thread_num() * n_parts // team
                    part1 = (omp_get_thread_num() + 1) * n_parts // team
                    clstm_leave_master_cpu(master_cpu)
                    forward_slice(t0, t1, 0, B, off, B, H, P, &gates[0, 0], row0,
                                  &w_hh_packed[0], &bias[0], w_hr_p, &h0[0, 0], &y[0, 0],
                                  &c0[0, 0], cells_p, train, r_p, unit_bounds[part0],
                                  unit_bounds[part1], team > 1)
            elif n_slices == 1:
                forward_slice(t0, t1, 0, B, off, B, H, P, &gates[0, 0], row0, &w_hh_packed[0],
                              &bias[0], w_hr_p, &h0[0, 0], &y[0, 0], &c0[0, 0], cells_p, train,
                              r_p, 0, H, False)
            else:
                master_cpu = clstm_current_cpu()
                for s in prange(n_slices, num_threads=n_slices, schedule='static'):
                    clstm_leave_master_cpu(master_cpu)
                    forward_slice(t0, t1, bounds[s], bounds[s + 1], off, B, H, P, &gates[0, 0],
                                  row0, &w_hh_packed[0], &bias[0], w_hr_p, &h0[0, 0], &y[0, 0],
                                  &c0[0, 0], cells_p, train, r_p, 0, H, False)
            t0 = t1
        final_states(B, H, P, &lengths[0], off, &y[0, 0], &h0[0, 0], &h_n[0, 0],
                     cells_p if train else NULL, &c0[0, 0], &c_n[0, 0])
        _blas_threads(blas_saved)


def backward(const floating[:, ::1] x not None, const floating[:, ::1] w_ih not None,
             const floating[:, ::1] w_hh not None, const floating[:, ::1] w_hr,
             const floating[:, ::1] h0 not None, const floating[:, ::1] c0 not None,
             const floating[:, ::1] y not None, floating[:, ::1] gates not None,
             const floating[:, ::1] cells not None, const floating[:, ::1] r,
             Py_ssize_t n_steps, const Py_ssize_t[::1] offsets,
             const Py_ssize_t[::1] bounds not None,
             const floating[:, ::1] dy, floating[:, ::1] dh not None,
             floating[:, ::1] dc not None, floating[:, ::1] dx not None,
             floating[:, ::1] dw_ih not None, floating[:, ::1] dw_hh not None,
             floating[::1] dbias not None, floating[:, ::1] dw_hr,
             const floating[::1] ones not None, floating[:, ::1] h_prev_ws,
             floating[:, ::1] dh_all, floating[:, ::1] dr,
             floating[::1] w_ih_packed not None, floating[::1] w_hh_packed not None,
             floating[::1] rows_packed not None, floating[::1] dG_t_ws not None,
             int n_threads,
             const Py_ssize_t[::1] unit_bounds=None):
    """BPTT through a training forward (same packing and the same work split).

    dy (N, P) IN or None. dh (B, P), dc (B, H) INOUT: dh_n, dc_n in -> dh0, dc0 out.
    gates INOUT: activations in, dG out (so backward runs once per forward).
    dx (N, I) OUT. dw_ih, dw_hh, dbias, dw_hr INOUT: accumulated (+=).
    Workspaces: ones (N,) of ones; h_prev_ws (N - bs[0], P), the recurrent inputs of steps
    >= 1, unless every row has length T (then None: they are y's rows as they stand);
    with projection dh_all (N, P) and dr (B, H); w_ih_packed, w_hh_packed for w_ih.T and
    w_hh.T packed (packed_length(I, 4H), packed_length(P, 4H)); rows_packed for x and
    the recurrent inputs packed (at least packed_length(max(I, P), N)); dG_t_ws for row
    blocks of dG.T (at least dG_t_length(N, n_threads)).
    """
    cdef Py_ssize_t T = n_steps, B = h0.shape[0], I = x.shape[1]
    cdef const Py_ssize_t* off = NULL if offsets is None else &offsets[0]
    cdef Py_ssize_t H = c0.shape[1], P = h0.shape[1], N = x.shape[0], t
    cdef bint proj = w_hr is not None
    cdef Py_ssize_t bs0 = step_row(off, B, 1)  # rows running at step 0
    cdef bint uniform = offsets is None
    cdef int n_slices = n_slices_of(bounds, n_threads)
    cdef int s, blas_saved, master_cpu, team, part0, part1
    cdef int n_parts = n_parts_of(unit_bounds, n_slices, proj, H, n_threads,
                                  panel_width(&dh[0, 0]))
    cdef const floating* dy_p = NULL if dy is None else &dy[0, 0]
    cdef const floating* w_hr_p = &w_hr[0, 0] if proj else NULL
    cdef floating* dh_all_p = &dh_all[0, 0] if proj else NULL
    cdef floating* dr_p = &dr[0, 0] if proj else NULL
    cdef floating* dG = &gates[0, 0]
    cdef const floating* h_prev = &y[0, 0]
    check(T >= 1 and N >= 1 and (offsets is None or (offsets.shape[0] == T + 1
                                                    and offsets[0] == 0 and offsets[T] == N))
          and step_row(off, B, T) == N, "offsets")
    check(step_row(off, B, 1) <= B and bounds[n_slices] == B and c0.shape[0] == B, "batch")
    check(w_ih.shape[0] == 4 * H and w_ih.shape[1] == I and w_hh.shape[0] == 4 * H
          and w_hh.shape[1] == P and y.shape[0] == N and y.shape[1] == P, "weights")
    check(gates.shape[0] == N and gates.shape[1] == 4 * H and cells.shape[0] == N
          and cells.shape[1] == H, "caches")
    check(dh.shape[0] == B and dh.shape[1] == P and dc.shape[0] == B and dc.shape[1] == H
          and dx.shape[0] == N and dx.shape[1] == I and ones.shape[0] == N, "gradients")
    check(dw_ih.shape[0] == 4 * H and dw_ih.shape[1] == I and dw_hh.shape[0] == 4 * H
          and dw_hh.shape[1] == P and dbias.shape[0] == 4 * H, "weight gradients")
    check(dy is None or (dy.shape[0] == N and dy.shape[1] == P), "dy")
    check(uniform or (h_prev_ws is not None and h_prev_ws.shape[0] == N - bs0
                      and h_prev_ws.shape[1] == P), "h_prev workspace")
    check(not proj or (w_hr.shape[0] == P and w_hr.shape[1] == H and r is not None
                       and r.shape[0] == N and r.shape[1] == H and dw_hr is not None
                       and dw_hr.shape[0] == P and dw_hr.shape[1] == H and dh_all is not None
                       and dh_all.shape[0] == N and dh_all.shape[1] == P and dr is not None
                       and dr.shape[0] == B and dr.shape[1] == H), "projection")
    check(proj or P == H, "projection")
    check(w_hh_packed.shape[0] == packed_size(P, 4 * H, &w_hh_packed[0])
          and w_ih_packed.shape[0] == packed_size(I, 4 * H, &w_ih_packed[0])
          and rows_packed.shape[0] >= packed_size(max(I, P), N, &rows_packed[0])
          and dG_t_ws.shape[0] >= dG_t_length(N, n_threads), "packed weights")
    with nogil:
        blas_saved = _blas_threads_enter()
        pack(&w_hh[0, 0], P, 4 * H, True, &w_hh_packed[0])
        if n_parts > 1:
            master_cpu = clstm_current_cpu()
            with parallel(num_threads=n_parts):
                team = omp_get_num_threads()  # as in forward
                part0 = omp_get_thread_num() * n_parts // team
                part1 = (omp_get_thread_num() + 1) * n_parts // team
                clstm_leave_master_cpu(master_cpu)
                backward_slice(T, 0, B, off, B, H, P, dG, &cells[0, 0], &c0[0, 0],
                               &w_hh_packed[0], w_hr_p, dy_p, &dh[0, 0], &dc[0, 0], dh_all_p,
                               dr_p, unit_bounds[part0], unit_bounds[part1], team > 1)
        elif n_slices == 1:
            backward_slice(T, 0, B, off, B, H, P, dG, &cells[0, 0], &c0[0, 0],
                           &w_hh_packed[0], w_hr_p, dy_p, &dh[0, 0], &dc[0, 0], dh_all_p, dr_p,
                           0, P, False)
        else:
            master_cpu = clstm_current_cpu()
            for s in prange(n_slices, num_threads=n_slices, schedule='static'):
                clstm_leave_master_cpu(master_cpu)
                backward_slice(T, bounds[s], bounds[s + 1], off, B, H, P, dG,
                               &cells[0, 0], &c0[0, 0], &w_hh_packed[0], w_hr_p, dy_p, &dh[0, 0],
                               &dc[0, 0], dh_all_p, dr_p, 0, P, False)
        # Whole-sequence GEMMs over the N packed rows: dW += dG.T @ rows, with the rows'
        # matrix packed as the right operand (a copy, its rows being K). The recurrent
        # input of step t >= 1 is y's block t-1 cut to the bs[t] rows still running:
        # contiguous only when no row ends early, otherwise gathered into h_prev_ws first.
        pack(&x[0, 0], I, N, True, &rows_packed[0])
        par_pgemm(n_threads, 4 * H, I, N, dG, 4 * H, &rows_packed[0], &dw_ih[0, 0], I,
                  &dG_t_ws[0])
        pack(&h0[0, 0], P, bs0, True, &rows_packed[0])
        par_pgemm(n_threads, 4 * H, P, bs0, dG, 4 * H, &rows_packed[0], &dw_hh[0, 0], P,
                  &dG_t_ws[0])
        if T > 1:
            if not uniform:
                for t in range(1, T):
                    memcpy(&h_prev_ws[step_row(off, B, t) - bs0, 0],
                           &y[step_row(off, B, t - 1), 0],
                           (step_row(off, B, t + 1) - step_row(off, B, t)) * P * sizeof(floating))
                h_prev = &h_prev_ws[0, 0]
            pack(h_prev, P, N - bs0, True, &rows_packed[0])
            par_pgemm(n_threads, 4 * H, P, N - bs0, dG + bs0 * 4 * H, 4 * H, &rows_packed[0],
                      &dw_hh[0, 0], P, &dG_t_ws[0])
        if proj:
            par_gemm(n_threads, True, False, P, H, N, dh_all_p, P, &r[0, 0], H, <floating>1,
                     &dw_hr[0, 0], H)
        par_gemm(n_threads, True, False, 4 * H, 1, N, dG, 4 * H, &ones[0], 1, <floating>1,
                 &dbias[0], 1)
        pack(&w_ih[0, 0], I, 4 * H, True, &w_ih_packed[0])  # w_ih.T, for dx = dG @ w_ih
        par_pgemm(n_threads, N, I, 4 * H, dG, 4 * H, &w_ih_packed[0], &dx[0, 0], I)
        _blas_threads(blas_saved)


# ---------------------------------------------------------------------------------------------
# Streaming steps (LSTMCell): a few rows, one step, on one thread. At B=1 the multiply takes
# ~3 us, so the call itself must cost far less: these take plain objects and check them
# through NumPy's C API (a fused-type memoryview signature cost ~0.25 us per argument).

cdef enum:
    STEP_MAX_ROWS = 8  # beyond this many rows LSTMCell runs the threaded layer kernel
CELL_STEP_MAX_ROWS = STEP_MAX_ROWS


cdef inline bint is_operand(object a, int typenum, int ndim, bint exact=True) noexcept:
    """a is an ndarray (exact: not a subclass) of typenum and rank ndim, C-contiguous,
    aligned, in native byte order: an array the kernels can read as it is."""
    return ((cnp.PyArray_CheckExact(a) if exact else cnp.PyArray_Check(a))
            and cnp.PyArray_TYPE(<cnp.ndarray>a) == typenum
            and cnp.PyArray_NDIM(<cnp.ndarray>a) == ndim
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a)
            and cnp.PyArray_ISBEHAVED_RO(<cnp.ndarray>a))


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
    return cnp.PyArray_DATA(<cnp.ndarray>a)


cdef tuple new_state(object x, int typenum, Py_ssize_t B, Py_ssize_t H):
    """Empty h1, c1 shaped like the state that goes with x."""
    cdef int nd = cnp.PyArray_NDIM(<cnp.ndarray>x)
    cdef cnp.npy_intp dims[2]
    dims[0], dims[1] = B, H
    return (cnp.PyArray_EMPTY(nd, &dims[2 - nd], typenum, 0),
            cnp.PyArray_EMPTY(nd, &dims[2 - nd], typenum, 0))


cdef void step(bint packed, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H, const floating* x,
               const floating* w_ih, const floating* w_hh, const floating* b_ih,
               const floating* b_hh, const floating* h0, const floating* c0, floating* h1,
               floating* c1, floating* gates) noexcept nogil:
    """One step of B rows: gates = x @ w_ih.T + h0 @ w_hh.T + b_ih + b_hh (a NULL bias
    counts as zero), then the cell. packed: the weights are in pack_weights' layout, for
    our kernel; else plain (4H, K) arrays, multiplied by BLAS on one thread."""
    cdef Py_ssize_t row, k
    cdef int blas_saved
    cdef floating* g
    for row in range(B):  # (a per-element NULL test here cost the frozen step ~0.4 us)
        g = gates + row * 4 * H
        if b_ih != NULL:
            memcpy(g, b_ih, 4 * H * sizeof(floating))
        else:
            memset(g, 0, 4 * H * sizeof(floating))
        if b_hh != NULL:
            for k in range(4 * H):
                g[k] += b_hh[k]
    if packed:
        pgemm(B, 4 * H, I, x, I, w_ih, gates, 4 * H)
        pgemm(B, 4 * H, H, h0, H, w_hh, gates, 4 * H)
    else:
        blas_saved = _blas_threads_enter()
        matmul(<blas_int>B, <blas_int>(4 * H), <blas_int>I, x, <blas_int>I, w_ih, <blas_int>I,
               True, <floating>1, gates, <blas_int>(4 * H))
        matmul(<blas_int>B, <blas_int>(4 * H), <blas_int>H, h0, <blas_int>H, w_hh, <blas_int>H,
               True, <floating>1, gates, <blas_int>(4 * H))
        _blas_threads(blas_saved)
    gates_forward(B, H, 0, H, gates, NULL, c0, c1, h1)


cdef tuple run_step(bint packed, int typenum, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H, x,
                    w_ih, w_hh, b_ih, b_hh, h0, c0):
    """(h1, c1) from step() on arrays already checked (either bias may be None), with the
    GIL released."""
    h1, c1 = new_state(x, typenum, B, H)
    cdef void* px = data(x)
    cdef void* pw_ih = data(w_ih)
    cdef void* pw_hh = data(w_hh)
    cdef void* pb_ih = NULL if b_ih is None else data(b_ih)
    cdef void* pb_hh = NULL if b_hh is None else data(b_hh)
    cdef void* ph0 = data(h0)
    cdef void* pc0 = data(c0)
    cdef void* ph1 = data(h1)
    cdef void* pc1 = data(c1)
    cdef void* gates = malloc(B * 4 * H * cnp.PyArray_ITEMSIZE(<cnp.ndarray>h1))
    if gates == NULL:
        raise MemoryError()
    with nogil:
        if typenum == cnp.NPY_FLOAT:
            step(packed, B, I, H, <float*>px, <float*>pw_ih, <float*>pw_hh, <float*>pb_ih,
                 <float*>pb_hh, <float*>ph0, <float*>pc0, <float*>ph1, <float*>pc1,
                 <float*>gates)
        else:
            step(packed, B, I, H, <double*>px, <double*>pw_ih, <double*>pw_hh,
                 <double*>pb_ih, <double*>pb_hh, <double*>ph0, <double*>pc0, <double*>ph1,
                 <double*>pc1, <double*>gates)
        free(gates)
    return h1, c1


def cell_step(x, h0, c0, w_ih, w_hh, b_ih, b_hh, bint double, bint strict=False):
    """LSTMCell's step on its own weights, read afresh: (h1, c1) for x (B, I) with
    B <= CELL_STEP_MAX_ROWS or (I,), h0 and c0 of the matching shape, w_ih (4H, I),
    w_hh (4H, H) and b_ih, b_hh (4H,) (or both None), all float64 if double else float32,
    as is_operand describes (the weights may be subclasses). Anything else: None (strict:
    ValueError), and the caller validates and comes back with conforming arrays. Call it
    holding clstm._threads' kernel lock (it sets BLAS's thread count)."""
    cdef int typenum = cnp.NPY_DOUBLE if double else cnp.NPY_FLOAT
    cdef Py_ssize_t B = 0, I, H
    cdef bint has_bias = b_ih is not None
    if is_operand(w_ih, typenum, 2, False) and is_operand(w_hh, typenum, 2, False):
        I = cnp.PyArray_DIMS(<cnp.ndarray>w_ih)[1]
        H = cnp.PyArray_DIMS(<cnp.ndarray>w_hh)[1]
        if (cnp.PyArray_DIMS(<cnp.ndarray>w_ih)[0] == 4 * H
                and cnp.PyArray_DIMS(<cnp.ndarray>w_hh)[0] == 4 * H
                and has_bias == (b_hh is not None)
                and (not has_bias or (is_operand(b_ih, typenum, 1, False)
                                      and is_operand(b_hh, typenum, 1, False)
                                      and cnp.PyArray_DIMS(<cnp.ndarray>b_ih)[0] == 4 * H
                                      and cnp.PyArray_DIMS(<cnp.ndarray>b_hh)[0] == 4 * H))):
            B = step_rows(x, h0, c0, typenum, I, H)
    if B == 0 or B > STEP_MAX_ROWS:
        check(not strict, "cell step operands")
        return None
    return run_step(False, typenum, B, I, H, x, w_ih, w_hh, b_ih, b_hh, h0, c0)


def pack_weights(const floating[:, ::1] w not None, floating[::1] out not None):
    """out = w (N, K) in the packed layout of _pgemm.pack (length packed_length(N, K))."""
    check(out.shape[0] == packed_size(w.shape[0], w.shape[1], &out[0]), "packed length")
    with nogil:
        pack(&w[0, 0], w.shape[0], w.shape[1], False, &out[0])


cdef class PackedCell:
    """The compiled part of clstm.FrozenLSTMCell: one inference step on weights packed once
    (pack_weights' layout, so no BLAS, no lock, nothing shared: Python threads may step it
    concurrently, and the GIL is released while it runs).

    A streaming call (a state tuple, and arrays that step_rows accepts) runs from here
    without a Python frame; any other goes to self._general_call, the subclass's full
    validation, which comes back through _step with conforming arrays."""
    cdef object w_ih_packed, w_hh_packed, bias
    cdef Py_ssize_t n_in, n_hidden
    cdef int typenum

    def _pack(self, w_ih not None, w_hh not None, bias not None):
        """Snapshot the weights: w_ih (4H, I), w_hh (4H, H), bias (4H,) = b_ih + b_hh, one
        float dtype, C-contiguous."""
        import numpy as np
        double = w_ih.dtype == np.float64
        H, I = w_hh.shape[1], w_ih.shape[1]
        check(w_ih.dtype == w_hh.dtype == bias.dtype and w_ih.shape[0] == w_hh.shape[0] == 4 * H
              and bias.shape == (4 * H,), "cell weights")
        packed = [np.empty(packed_length(4 * H, k, double), w_ih.dtype) for k in (I, H)]
        pack_weights(w_ih, packed[0])
        pack_weights(w_hh, packed[1])
        self.w_ih_packed, self.w_hh_packed = packed
        self.bias = np.array(bias, order="C")
        self.n_in, self.n_hidden = I, H
        self.typenum = cnp.NPY_DOUBLE if double else cnp.NPY_FLOAT

    def __call__(self, x, state=None):
        """One step: ``h, c``."""
        if type(state) is tuple and len(state) == 2 and self.w_ih_packed is not None:
            result = self._step(x, state[0], state[1], False)
            if result is not None:
                return result
        return self._general_call(x, state)

    def _step(self, x, h0, c0, bint strict):
        """(h1, c1); None if step_rows refuses the arrays (strict: raise instead)."""
        if self.w_ih_packed is None:
            raise ValueError("PackedCell has no weights yet: call _pack first")
        cdef Py_ssize_t I = self.n_in, H = self.n_hidden
        cdef Py_ssize_t B = step_rows(x, h0, c0, self.typenum, I, H)
        if B == 0:
            check(not strict, "packed cell operands")
            return None
        return run_step(True, self.typenum, B, I, H, x, self.w_ih_packed, self.w_hh_packed,
                        self.bias, None, h0, c0)


def packed_length(Py_ssize_t N, Py_ssize_t K, bint double):
    """Elements of the packed copy of an (N, K) weight matrix (see _pgemm.pxd)."""
    cdef float f
    cdef double d
    return packed_size(N, K, &d) if double else packed_size(N, K, &f)


def dG_t_length(Py_ssize_t N, int n_threads):
    """Elements of backward's dG_t_ws for N packed rows."""
    return max(n_threads, 1) * PGEMM_ROW_BLOCK * N


def packed_panel_width(bint double):
    """Columns per packed panel (see _pgemm.pxd): forward's unit_bounds are multiples."""
    cdef float f
    cdef double d
    return panel_width(&d) if double else panel_width(&f)


def _activations(const floating[::1] z not None, floating[::1] sig not None,
                 floating[::1] tanh_z not None):
    """The kernels' sigmoid and tanh of z, as the forward cell computes them (z as the
    pre-activation of every gate, no bias), and the scalar ones, for the accuracy tests:
    returns the largest difference between the two."""
    import numpy as np
    cdef Py_ssize_t k, n = z.shape[0]
    cdef double worst = 0
    if sig.shape[0] != n or tanh_z.shape[0] != n:
        raise ValueError("z, sig and tanh_z must have the same length")
    if n == 0:
        return 0.0
    cdef floating[::1] gates = np.tile(np.asarray(z), 4)
    cdef floating[::1] c = np.zeros_like(np.asarray(z))
    cdef floating[::1] r = np.empty_like(np.asarray(z))
    gates_forward(1, n, 0, n, &gates[0], <floating*>NULL, &c[0], &c[0], &r[0])
    memcpy(&sig[0], &gates[0], n * sizeof(floating))
    memcpy(&tanh_z[0], &gates[2 * n], n * sizeof(floating))
    for k in range(n):
        worst = max(worst, abs(sigmoid(z[k]) - sig[k]), abs(tanh_(z[k]) - tanh_z[k]))
    return worst
