# Work splits shared by the drivers: the big GEMMs outside the time loop, split by rows of
# the result across the OpenMP threads, one BLAS thread each. A split needs at least
# MIN_ROWS_PER_THREAD rows per thread and MIN_PARALLEL_MACS multiply-adds in all: below
# that, waking an idle thread costs more than it saves (on a virtual machine: up to
# milliseconds after an idle gap).
from cython cimport floating
from cython.parallel cimport prange

from clstm._blas cimport blas_int, gemm
from clstm._lowp cimport packed_mul
from clstm._pgemm cimport n_panels, pack_panels
from clstm._openmp cimport CLSTM_OPENMP_ENABLED, clstm_current_cpu, clstm_leave_master_cpu
from clstm._runtime cimport blas_threads

cdef enum:
    MIN_ROWS_PER_THREAD = 16
    MIN_PARALLEL_MACS = 1 << 22
    # Rows per task of par_pgemm: 64 rows of A stay in cache while every weight panel
    # streams past them once.
    PGEMM_ROW_BLOCK = 64
    # Elements of a matrix worth packing on several threads (a copy: cheaper per element
    # than a multiply-add, so the bar is lower than MIN_PARALLEL_MACS).
    MIN_PARALLEL_PACK = 1 << 18


cdef inline int gemm_parts(int n_threads, Py_ssize_t n_units, Py_ssize_t macs) noexcept nogil:
    if macs < MIN_PARALLEL_MACS:
        return 1
    return <int>min(<Py_ssize_t>n_threads, n_units)


cdef inline void par_gemm(int n_threads, bint trans_a, bint trans_b, Py_ssize_t m,
                          Py_ssize_t n, Py_ssize_t k, const floating* A, Py_ssize_t lda,
                          const floating* B, Py_ssize_t ldb, floating beta, floating* C,
                          Py_ssize_t ldc) noexcept nogil:
    """C[m, n] = op(A) @ op(B) + beta * C (row-major, BLAS), rows of C shared among threads."""
    cdef Py_ssize_t parts = gemm_parts(n_threads, m // MIN_ROWS_PER_THREAD, m * n * k)
    cdef Py_ssize_t s, r0, r1
    cdef int master_cpu
    if m == 0 or n == 0:
        return
    if not CLSTM_OPENMP_ENABLED or parts < 2:
        if not CLSTM_OPENMP_ENABLED:
            blas_threads(n_threads)  # a serial build's only parallelism
        gemm(trans_a, trans_b, <blas_int>m, <blas_int>n, <blas_int>k, <floating>1, A,
             <blas_int>lda, B, <blas_int>ldb, beta, C, <blas_int>ldc)
        if not CLSTM_OPENMP_ENABLED:
            blas_threads(1)
        return
    master_cpu = clstm_current_cpu()
    for s in prange(parts, num_threads=parts, schedule='static'):
        clstm_leave_master_cpu(master_cpu)
        r0 = s * m // parts
        r1 = (s + 1) * m // parts
        # Row r of op(A) starts at A + r*lda, or at column r of A when A is transposed.
        gemm(trans_a, trans_b, <blas_int>(r1 - r0), <blas_int>n, <blas_int>k, <floating>1,
             A + (r0 if trans_a else r0 * lda), <blas_int>lda, B, <blas_int>ldb, beta,
             C + r0 * ldc, <blas_int>ldc)


cdef inline void par_pgemm(int n_threads, Py_ssize_t m, Py_ssize_t N, Py_ssize_t K,
                           const floating* A, Py_ssize_t lda, const floating* Wp, floating* C,
                           Py_ssize_t ldc, bint lowp=False) noexcept nogil:
    """C[m, N] = A[m, K] @ W.T (W packed), the rows shared evenly among threads, each
    thread's in blocks of PGEMM_ROW_BLOCK (dealing out whole blocks left up to a block's
    worth of rows more on one thread). ``lowp``: W is packed in a
    low-precision format (Wp a clstm_lowp_weights; csrc/lowp.h). A row's sum does not
    depend on where its block starts (pgemm.h), so neither does C on the thread count."""
    cdef Py_ssize_t n_blocks = (m + PGEMM_ROW_BLOCK - 1) // PGEMM_ROW_BLOCK, r, r0, r1
    cdef int parts = gemm_parts(n_threads, n_blocks, m * N * K), part
    cdef int master_cpu
    if n_blocks < 1:
        return
    master_cpu = clstm_current_cpu()
    for part in prange(parts, num_threads=parts, schedule='static'):
        clstm_leave_master_cpu(master_cpu)
        r0 = part * m // parts
        r1 = (part + 1) * m // parts
        r = r0
        while r < r1:
            packed_mul(lowp, min(PGEMM_ROW_BLOCK, r1 - r), N, K, A + r * lda, lda, Wp, 0,
                       C + r * ldc, ldc, True)
            r = r + PGEMM_ROW_BLOCK


cdef inline void par_pack(int n_threads, const floating* W, Py_ssize_t N, Py_ssize_t K,
                          bint transposed, floating* Wp) noexcept nogil:
    """Pack W (N, K), or W.T given as (K, N) when ``transposed`` (pgemm.h), the panels
    shared among threads: a live model packs its weights on every call."""
    cdef Py_ssize_t panels = n_panels(N, W), jb0, jb1
    cdef int parts = <int>min(<Py_ssize_t>n_threads, panels), part, master_cpu
    if parts < 2 or N * K < MIN_PARALLEL_PACK:
        pack_panels(W, N, K, transposed, Wp, 0, panels)
        return
    master_cpu = clstm_current_cpu()
    for part in prange(parts, num_threads=parts, schedule='static'):
        clstm_leave_master_cpu(master_cpu)
        jb0 = part * panels // parts
        jb1 = (part + 1) * panels // parts
        pack_panels(W, N, K, transposed, Wp, jb0, jb1)
