"""Compiled kernels for one LSTM layer in one direction (float32 and float64).

Notation and layouts (PyTorch's, so weights interoperate):

    n_steps T, n_batch B, n_input I, n_hidden H
    x       (T, B, I)      input sequence, time-major
    w_ih    (4H, I)        input weights, row blocks stacked [i | f | g | o]
    w_hh    (4H, H)        recurrent weights, same block order
    bias    (4H,)          b_ih + b_hh (the kernels only ever need the sum)
    h0, c0  (B, H)         initial state
    y       (T, B, H)      output sequence: y[t] = h_t
    gates   (T, B, 4H)     training cache: activated gates [i | f | g | o] per step;
                           backward overwrites it in place with dG (pre-activation grads)
    cells   (T, B, H)      training cache: c_t per step

    i, f, o = sigmoid(.), g = tanh(.)  of  x_t @ w_ih.T + h_{t-1} @ w_hh.T + bias
    c_t = f * c_{t-1} + i * g
    h_t = o * tanh(c_t)

Work split: the input projection of many steps is one big GEMM (BLAS-threaded); the time loop
runs in an OpenMP region where each thread owns a contiguous slice of batch rows and carries
it through every step alone (rows never interact, so there is no barrier per step), with BLAS
held to one thread so OpenBLAS's own pool does not oversubscribe the cores. Backward mirrors
this, and the weight gradients are whole-sequence GEMMs after the reverse loop.

All arrays arrive validated and C-contiguous from `clstm.functional`, workspaces included,
so nothing in here can fail once the GIL is released.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport exp, expf, tanh, tanhf
from libc.string cimport memcpy

from clstm._blas cimport blas_int, gemm, gemv
from clstm._openmp cimport CLSTM_OPENMP_ENABLED, omp_get_max_threads


# ---------------------------------------------------------------------------------------------
# BLAS thread control. SciPy's OpenBLAS is usually a pthreads build that cannot see it is
# called from inside an OpenMP region, so the kernels set its thread count themselves: many
# threads for the hoisted GEMMs, one inside the batch-parallel time loop, and the caller's
# count restored on the way out. clstm._threads finds the two C entry points and installs them.
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
    return _blas_get_threads() if _blas_get_threads != NULL else 0


cdef inline void _blas_threads(int n) noexcept nogil:
    if _blas_set_threads != NULL and n > 0:
        _blas_set_threads(n)


def openmp_enabled():
    """True when the extension was compiled with OpenMP."""
    return bool(CLSTM_OPENMP_ENABLED)


def openmp_max_threads():
    """omp_get_max_threads() (1 in a serial build); honours OMP_NUM_THREADS."""
    return omp_get_max_threads()


# ---------------------------------------------------------------------------------------------
# Element-wise gate math. float64 stays libm-accurate; float32 uses the float libm calls.

cdef inline floating sigmoid(floating z) noexcept nogil:
    # exp(-z) overflows to +inf for very negative z and 1/inf == 0: no NaN, no branch.
    # (<float>1 keeps float32 math in float32: a bare 1.0 literal is a double.)
    if floating is float:
        return (<float>1) / ((<float>1) + expf(-z))
    else:
        return 1.0 / (1.0 + exp(-z))


cdef inline floating tanh_(floating z) noexcept nogil:
    if floating is float:
        return tanhf(z)
    else:
        return tanh(z)


cdef void gates_forward(Py_ssize_t n_rows, Py_ssize_t H, floating* gates,
                        const floating* bias, const floating* c_prev, floating* c_t,
                        floating* h_t) noexcept nogil:
    """Activate gates rows in place (adding the bias) and write c_t, h_t.

    gates: (n_rows, 4H) INOUT, pre-activations without bias -> activations [i|f|g|o]
    c_prev: (n_rows, H) IN (may alias c_t); c_t, h_t: (n_rows, H) OUT
    """
    cdef Py_ssize_t r, j
    cdef floating* a
    cdef floating i, f, g, o, c
    for r in range(n_rows):
        a = gates + r * 4 * H
        for j in range(H):
            i = sigmoid(a[j] + bias[j])
            f = sigmoid(a[H + j] + bias[H + j])
            g = tanh_(a[2 * H + j] + bias[2 * H + j])
            o = sigmoid(a[3 * H + j] + bias[3 * H + j])
            a[j] = i
            a[H + j] = f
            a[2 * H + j] = g
            a[3 * H + j] = o
            c = f * c_prev[r * H + j] + i * g
            c_t[r * H + j] = c
            h_t[r * H + j] = o * tanh_(c)


cdef void gates_backward(Py_ssize_t n_rows, Py_ssize_t H, floating* gates,
                         const floating* c_prev, const floating* c_t,
                         const floating* dh, const floating* dy, floating* dc) noexcept nogil:
    """One step of BPTT through the cell, for n_rows rows.

    gates: (n_rows, 4H) INOUT, activations [i|f|g|o] -> dG, gradients of the pre-activations
    c_prev, c_t: (n_rows, H) IN
    dh: (n_rows, H) IN, gradient reaching h_t from step t+1 (or from dh_n)
    dy: (n_rows, H) IN, gradient of the output y[t], or NULL
    dc: (n_rows, H) INOUT, gradient reaching c_t from step t+1 -> gradient of c_{t-1}
    """
    cdef Py_ssize_t r, j, k
    cdef floating* a
    cdef floating i, f, g, o, tc, dh_t, dc_t
    for r in range(n_rows):
        a = gates + r * 4 * H
        for j in range(H):
            k = r * H + j
            i = a[j]
            f = a[H + j]
            g = a[2 * H + j]
            o = a[3 * H + j]
            tc = tanh_(c_t[k])
            dh_t = dh[k]
            if dy != NULL:
                dh_t = dh_t + dy[k]
            dc_t = dc[k] + dh_t * o * (1 - tc * tc)
            a[j] = dc_t * g * i * (1 - i)
            a[H + j] = dc_t * c_prev[k] * f * (1 - f)
            a[2 * H + j] = dc_t * i * (1 - g * g)
            a[3 * H + j] = dh_t * tc * o * (1 - o)
            dc[k] = dc_t * f


# ---------------------------------------------------------------------------------------------
# Recurrent products for a slice of rows: one 4H-wide GEMM per step, GEMV for a single row.

cdef inline void add_recurrent(Py_ssize_t n_rows, Py_ssize_t H, const floating* h_prev,
                               const floating* w_hh, floating* gates) noexcept nogil:
    """gates[n_rows, 4H] += h_prev[n_rows, H] @ w_hh.T"""
    if n_rows == 1:
        gemv(False, <blas_int>(4 * H), <blas_int>H, <floating>1, w_hh, <blas_int>H, h_prev,
             <floating>1, gates)
    else:
        gemm(False, True, <blas_int>n_rows, <blas_int>(4 * H), <blas_int>H, <floating>1,
             h_prev, <blas_int>H, w_hh, <blas_int>H, <floating>1, gates, <blas_int>(4 * H))


cdef inline void back_recurrent(Py_ssize_t n_rows, Py_ssize_t H, const floating* dG,
                                const floating* w_hh, floating* dh_prev) noexcept nogil:
    """dh_prev[n_rows, H] = dG[n_rows, 4H] @ w_hh"""
    if n_rows == 1:
        gemv(True, <blas_int>(4 * H), <blas_int>H, <floating>1, w_hh, <blas_int>H, dG,
             <floating>0, dh_prev)
    else:
        gemm(False, False, <blas_int>n_rows, <blas_int>H, <blas_int>(4 * H), <floating>1,
             dG, <blas_int>(4 * H), w_hh, <blas_int>H, <floating>0, dh_prev, <blas_int>H)


cdef void forward_slice(Py_ssize_t t_begin, Py_ssize_t t_end, Py_ssize_t b_begin,
                        Py_ssize_t b_end, Py_ssize_t B, Py_ssize_t H,
                        floating* gates, Py_ssize_t gates_t0, const floating* w_hh,
                        const floating* bias, const floating* h0, floating* y,
                        const floating* c0, floating* cells, bint keep_cells) noexcept nogil:
    """Run rows [b_begin, b_end) through steps [t_begin, t_end).

    gates holds the hoisted input projection for steps [gates_t0, ...) and is activated in
    place. With keep_cells, cells is (T, B, H) and c_t goes to cells[t]; without, cells is
    the (B, H) running state (initialised from c0 by the caller) and is updated in place.
    """
    cdef Py_ssize_t t, n = b_end - b_begin
    cdef const floating* h_prev
    cdef const floating* c_prev
    cdef floating* c_out
    cdef floating* g_t
    for t in range(t_begin, t_end):
        g_t = gates + ((t - gates_t0) * B + b_begin) * 4 * H
        h_prev = (h0 + b_begin * H) if t == 0 else (y + ((t - 1) * B + b_begin) * H)
        if keep_cells:
            c_prev = (c0 + b_begin * H) if t == 0 else (cells + ((t - 1) * B + b_begin) * H)
            c_out = cells + (t * B + b_begin) * H
        else:
            c_prev = cells + b_begin * H
            c_out = cells + b_begin * H
        add_recurrent(n, H, h_prev, w_hh, g_t)
        gates_forward(n, H, g_t, bias, c_prev, c_out, y + (t * B + b_begin) * H)


cdef void run_forward(Py_ssize_t t_begin, Py_ssize_t t_end, Py_ssize_t B, Py_ssize_t H,
                      floating* gates, Py_ssize_t gates_t0, const floating* w_hh,
                      const floating* bias, const floating* h0, floating* y,
                      const floating* c0, floating* cells, bint keep_cells,
                      int n_slices) noexcept nogil:
    """forward_slice over every batch slice, one OpenMP thread per slice."""
    cdef int s
    if n_slices <= 1:
        forward_slice(t_begin, t_end, 0, B, B, H, gates, gates_t0, w_hh, bias, h0, y,
                      c0, cells, keep_cells)
        return
    _blas_threads(1)
    for s in prange(n_slices, num_threads=n_slices, schedule='static'):
        forward_slice(t_begin, t_end, (s * B) // n_slices, ((s + 1) * B) // n_slices, B, H,
                      gates, gates_t0, w_hh, bias, h0, y, c0, cells, keep_cells)


cdef inline void input_projection(Py_ssize_t n_rows, Py_ssize_t I, Py_ssize_t H,
                                  const floating* x, const floating* w_ih,
                                  floating* gates) noexcept nogil:
    """gates[n_rows, 4H] = x[n_rows, I] @ w_ih.T  (the bias is added in gates_forward)"""
    gemm(False, True, <blas_int>n_rows, <blas_int>(4 * H), <blas_int>I, <floating>1,
         x, <blas_int>I, w_ih, <blas_int>I, <floating>0, gates, <blas_int>(4 * H))


cdef inline int n_slices_for(Py_ssize_t B, int n_threads) noexcept nogil:
    if not CLSTM_OPENMP_ENABLED or n_threads < 2:
        return 1
    return <int>(B if B < n_threads else n_threads)


# ---------------------------------------------------------------------------------------------
# Entry points. Shapes are as in the module docstring; T, B, I, H >= 1 (callers handle empty).

def forward_inference(const floating[:, :, ::1] x not None,
                      const floating[:, ::1] w_ih not None, const floating[:, ::1] w_hh not None,
                      const floating[::1] bias not None, const floating[:, ::1] h0 not None,
                      const floating[:, ::1] c0 not None, floating[:, :, ::1] y not None,
                      floating[:, ::1] h_n not None, floating[:, ::1] c_n not None,
                      floating[:, :, ::1] gates_ws not None, int n_threads):
    """Forward without caches: y (T, B, H), h_n, c_n OUT.

    gates_ws (T_chunk, B, 4H) is the only scratch: the input projection is hoisted T_chunk
    steps at a time, so memory beyond y does not grow with T.
    """
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = w_hh.shape[1]
    cdef Py_ssize_t T_chunk = gates_ws.shape[0], t0, t1
    cdef int n_slices = n_slices_for(B, n_threads)
    cdef int blas_saved
    with nogil:
        blas_saved = _blas_threads_enter()
        memcpy(&c_n[0, 0], &c0[0, 0], B * H * sizeof(floating))
        t0 = 0
        while t0 < T:
            t1 = min(t0 + T_chunk, T)
            _blas_threads(n_threads)
            input_projection((t1 - t0) * B, I, H, &x[t0, 0, 0], &w_ih[0, 0], &gates_ws[0, 0, 0])
            run_forward(t0, t1, B, H, &gates_ws[0, 0, 0], t0, &w_hh[0, 0], &bias[0],
                        &h0[0, 0], &y[0, 0, 0], &c0[0, 0], &c_n[0, 0], False, n_slices)
            t0 = t1
        memcpy(&h_n[0, 0], &y[T - 1, 0, 0], B * H * sizeof(floating))
        _blas_threads(blas_saved)


def forward_training(const floating[:, :, ::1] x not None,
                     const floating[:, ::1] w_ih not None, const floating[:, ::1] w_hh not None,
                     const floating[::1] bias not None, const floating[:, ::1] h0 not None,
                     const floating[:, ::1] c0 not None, floating[:, :, ::1] y not None,
                     floating[:, ::1] h_n not None, floating[:, ::1] c_n not None,
                     floating[:, :, ::1] gates not None, floating[:, :, ::1] cells not None,
                     int n_threads):
    """Forward keeping what backward needs: y, h_n, c_n, gates (T, B, 4H), cells (T, B, H) OUT."""
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = w_hh.shape[1]
    cdef int n_slices = n_slices_for(B, n_threads)
    cdef int blas_saved
    with nogil:
        blas_saved = _blas_threads_enter()
        _blas_threads(n_threads)
        input_projection(T * B, I, H, &x[0, 0, 0], &w_ih[0, 0], &gates[0, 0, 0])
        run_forward(0, T, B, H, &gates[0, 0, 0], 0, &w_hh[0, 0], &bias[0], &h0[0, 0],
                    &y[0, 0, 0], &c0[0, 0], &cells[0, 0, 0], True, n_slices)
        memcpy(&h_n[0, 0], &y[T - 1, 0, 0], B * H * sizeof(floating))
        memcpy(&c_n[0, 0], &cells[T - 1, 0, 0], B * H * sizeof(floating))
        _blas_threads(blas_saved)


cdef void backward_slice(Py_ssize_t T, Py_ssize_t b_begin, Py_ssize_t b_end, Py_ssize_t B,
                         Py_ssize_t H, floating* gates, const floating* cells,
                         const floating* c0, const floating* w_hh, const floating* dy,
                         floating* dh, floating* dc) noexcept nogil:
    """Reverse time loop for rows [b_begin, b_end): gates -> dG; dh, dc carried in place."""
    cdef Py_ssize_t t, n = b_end - b_begin
    cdef const floating* c_prev
    cdef floating* dG_t
    for t in range(T - 1, -1, -1):
        dG_t = gates + (t * B + b_begin) * 4 * H
        c_prev = (c0 + b_begin * H) if t == 0 else (cells + ((t - 1) * B + b_begin) * H)
        gates_backward(n, H, dG_t, c_prev, cells + (t * B + b_begin) * H,
                       dh + b_begin * H, NULL if dy == NULL else dy + (t * B + b_begin) * H,
                       dc + b_begin * H)
        back_recurrent(n, H, dG_t, w_hh, dh + b_begin * H)


def backward(const floating[:, :, ::1] x not None, const floating[:, ::1] w_ih not None,
             const floating[:, ::1] w_hh not None, const floating[:, ::1] h0 not None,
             const floating[:, ::1] c0 not None, const floating[:, :, ::1] y not None,
             floating[:, :, ::1] gates not None, const floating[:, :, ::1] cells not None,
             const floating[:, :, ::1] dy, floating[:, ::1] dh not None,
             floating[:, ::1] dc not None, floating[:, :, ::1] dx not None,
             floating[:, ::1] dw_ih not None, floating[:, ::1] dw_hh not None,
             floating[::1] dbias not None, const floating[::1] ones not None, int n_threads):
    """BPTT through a forward_training call.

    dy (T, B, H) IN or None. dh, dc (B, H) INOUT: dh_n, dc_n in -> dh0, dc0 out.
    gates INOUT: activations in, dG out (so backward runs once per forward).
    dx (T, B, I) OUT. dw_ih, dw_hh, dbias INOUT: accumulated (+=).
    ones (T*B,) IN: all ones, for the bias gradient as one GEMV.
    """
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = w_hh.shape[1]
    cdef int n_slices = n_slices_for(B, n_threads)
    cdef int s, blas_saved
    cdef const floating* dy_p = NULL if dy is None else &dy[0, 0, 0]
    cdef floating* dG = &gates[0, 0, 0]
    with nogil:
        blas_saved = _blas_threads_enter()
        if n_slices <= 1:
            _blas_threads(n_threads)
            backward_slice(T, 0, B, B, H, dG, &cells[0, 0, 0], &c0[0, 0], &w_hh[0, 0], dy_p,
                           &dh[0, 0], &dc[0, 0])
        else:
            _blas_threads(1)
            for s in prange(n_slices, num_threads=n_slices, schedule='static'):
                backward_slice(T, (s * B) // n_slices, ((s + 1) * B) // n_slices, B, H, dG,
                               &cells[0, 0, 0], &c0[0, 0], &w_hh[0, 0], dy_p, &dh[0, 0],
                               &dc[0, 0])
        _blas_threads(n_threads)
        # Whole-sequence GEMMs over K = T*B rows: dW_ih += dG^T x, dW_hh += dG^T [h0, y[:-1]].
        gemm(True, False, <blas_int>(4 * H), <blas_int>I, <blas_int>(T * B), <floating>1,
             dG, <blas_int>(4 * H), &x[0, 0, 0], <blas_int>I, <floating>1, &dw_ih[0, 0],
             <blas_int>I)
        gemm(True, False, <blas_int>(4 * H), <blas_int>H, <blas_int>B, <floating>1,
             dG, <blas_int>(4 * H), &h0[0, 0], <blas_int>H, <floating>1, &dw_hh[0, 0],
             <blas_int>H)
        if T > 1:
            gemm(True, False, <blas_int>(4 * H), <blas_int>H, <blas_int>((T - 1) * B),
                 <floating>1, dG + B * 4 * H, <blas_int>(4 * H), &y[0, 0, 0], <blas_int>H,
                 <floating>1, &dw_hh[0, 0], <blas_int>H)
        gemv(True, <blas_int>(T * B), <blas_int>(4 * H), <floating>1, dG, <blas_int>(4 * H),
             &ones[0], <floating>1, &dbias[0])
        gemm(False, False, <blas_int>(T * B), <blas_int>I, <blas_int>(4 * H), <floating>1,
             dG, <blas_int>(4 * H), &w_ih[0, 0], <blas_int>I, <floating>0, &dx[0, 0, 0],
             <blas_int>I)
        _blas_threads(blas_saved)
