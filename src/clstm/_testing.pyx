"""Thin wrappers so the tests can call the C pieces directly: the packed GEMM, packing,
transposes, the activations and the cells' row functions (float32/float64 arrays)."""
from cython cimport floating
from libc.string cimport memcpy

from clstm._cells cimport (cell_backward, cell_forward, clstm_cell, clstm_sigmoid, clstm_sigmoidf,
                           clstm_tanh, clstm_tanhf)
from clstm._pgemm cimport packed_size, pgemm, transpose
from clstm._recurrent cimport cell_named
from clstm._runtime cimport check
from clstm._schedule cimport par_pack


def pack_matrix(const floating[:, ::1] w not None, bint transposed, floating[::1] out not None,
                int n_threads=1):
    """out = op(W) packed, W (N, K) given as w (N, K), or as w = W.T (K, N) if transposed,
    by `par_pack` as the drivers pack (panels shared among n_threads threads)."""
    cdef Py_ssize_t N = w.shape[1] if transposed else w.shape[0]
    cdef Py_ssize_t K = w.shape[0] if transposed else w.shape[1]
    check(out.shape[0] >= packed_size(N, K, &out[0]), "packed length")
    with nogil:
        par_pack(n_threads, &w[0, 0], N, K, transposed, &out[0])


def packed_gemm(const floating[:, :] a not None, const floating[::1] w_packed not None,
                Py_ssize_t n_out, floating[:, ::1] c not None, bint descending=False):
    """c += a @ W.T with W (n_out, K) packed by pack_matrix; a (n, K) with contiguous rows
    (their stride is the product's lda), c (n, >= n_out); ``descending``: the panels in
    descending order."""
    cdef Py_ssize_t n = a.shape[0], K = a.shape[1], item = sizeof(floating)
    check(c.shape[0] == n and c.shape[1] >= n_out and n >= 1 and K >= 1
          and a.strides[1] == item and a.strides[0] % item == 0 and a.strides[0] >= K * item
          and w_packed.shape[0] >= packed_size(n_out, K, &c[0, 0]), "packed gemm")
    with nogil:
        pgemm(n, n_out, K, &a[0, 0], a.strides[0] // item, &w_packed[0], &c[0, 0],
              c.shape[1], descending)


def transpose_matrix(const floating[:, ::1] src not None, floating[:, ::1] dst not None):
    """dst = src.T."""
    check(dst.shape[0] == src.shape[1] and dst.shape[1] == src.shape[0], "transpose")
    if src.shape[0] and src.shape[1]:
        with nogil:
            transpose(&src[0, 0], src.shape[0], src.shape[1], src.shape[1], &dst[0, 0],
                      dst.shape[1])


def activations(const floating[::1] z not None, floating[::1] sig not None,
                floating[::1] tanh_z not None):
    """The vectorised sigmoid and tanh of z as the LSTM cell computes them (z as the
    pre-activation of every gate, no bias) into sig and tanh_z; returns the largest
    difference from the scalar functions."""
    import numpy as np
    cdef Py_ssize_t k, n = z.shape[0]
    cdef double worst = 0
    check(sig.shape[0] == n and tanh_z.shape[0] == n, "activation lengths")
    if n == 0:
        return 0.0
    cdef floating[::1] gates = np.tile(np.asarray(z), 4)
    cdef floating[::1] c = np.zeros_like(np.asarray(z))
    cdef floating[::1] r = np.empty_like(np.asarray(z))
    cell_forward(cell_named("lstm"), 1, n, 0, n, &gates[0], <floating*>NULL, <floating*>NULL,
                 NULL, &c[0], &c[0], &r[0])
    memcpy(&sig[0], &gates[0], n * sizeof(floating))
    memcpy(&tanh_z[0], &gates[2 * n], n * sizeof(floating))
    for k in range(n):
        if floating is float:
            worst = max(worst, abs(clstm_sigmoidf(z[k]) - sig[k]),
                        abs(clstm_tanhf(z[k]) - tanh_z[k]))
        else:
            worst = max(worst, abs(clstm_sigmoid(z[k]) - sig[k]),
                        abs(clstm_tanh(z[k]) - tanh_z[k]))
    return worst


cdef inline floating* data_or_null(floating[:, ::1] a) noexcept:
    return NULL if a is None else &a[0, 0]


def cell_step_forward(str cell, floating[:, ::1] gates not None, const floating[::1] bias,
                      const floating[:, ::1] c_prev not None, floating[:, ::1] c_t,
                      floating[:, ::1] r_t not None, Py_ssize_t j0=0, Py_ssize_t j1=-1,
                      floating[:, ::1] hg=None):
    """The cell's fused forward on rows of one step (units [j0, j1)): gates (n, row_blocks*H),
    hg (n, n_gates*H) for a cell with a separate recurrent product, c_t None for a cell
    without a state of its own (c_prev is then h_{t-1})."""
    cdef const clstm_cell* spec = cell_named(cell)
    cdef Py_ssize_t n = gates.shape[0], H = r_t.shape[1]
    cdef const floating* b = NULL  # (typed: a conditional expression would drop the const)
    j1 = H if j1 < 0 else j1
    check(gates.shape[1] == spec.row_blocks * H and c_prev.shape[0] == n and r_t.shape[0] == n
          and c_prev.shape[1] == H and (c_t is None) == bool(spec.state_is_output)
          and (c_t is None or (c_t.shape[0] == n and c_t.shape[1] == H))
          and (hg is None) != bool(spec.separate_recurrent)
          and (hg is None or (hg.shape[0] == n and hg.shape[1] == spec.n_gates * H))
          and (bias is None or bias.shape[0] == spec.row_blocks * H) and 0 <= j0 <= j1 <= H
          and n >= 1, "cell forward")
    if bias is not None:
        b = &bias[0]
    cdef floating* pc_t = data_or_null(c_t)
    cdef floating* phg = data_or_null(hg)
    with nogil:
        cell_forward(spec, n, H, j0, j1, &gates[0, 0], phg, b, NULL, &c_prev[0, 0], pc_t,
                     &r_t[0, 0])


def cell_step_backward(str cell, floating[:, ::1] gates not None,
                       const floating[:, ::1] c_prev not None,
                       floating[:, ::1] c_t, const floating[:, ::1] dr not None,
                       floating[:, ::1] dc not None):
    """The cell's fused backward on rows of one step: gates (activations) -> dG, dc -> dc_prev
    (c_t None for a cell without a state of its own)."""
    cdef const clstm_cell* spec = cell_named(cell)
    cdef Py_ssize_t n = gates.shape[0], H = dr.shape[1]
    check(gates.shape[1] == spec.row_blocks * H and n >= 1 and c_prev.shape[0] == n
          and (c_t is None) == bool(spec.state_is_output)
          and (c_t is None or (c_t.shape[0] == n and c_t.shape[1] == H))
          and dr.shape[0] == n and dc.shape[0] == n
          and c_prev.shape[1] == H and dc.shape[1] == H, "cell backward")
    cdef floating* pc_t = data_or_null(c_t)
    with nogil:
        cell_backward(spec, n, H, 0, H, &gates[0, 0], NULL, &c_prev[0, 0], pc_t, &dr[0, 0],
                      &dc[0, 0])
