# The low-precision packed GEMM (C in csrc/lowp.h): int8 and bfloat16 weights for inference,
# float32 activations in and out; one kernel per instruction set, chosen at run time.
from cython cimport floating
from libc.stdint cimport int32_t


from clstm._pgemm cimport pgemm, pgemm_set

cdef extern from "csrc/lowp.h":
    enum:
        CLSTM_LOWP_INT8
        CLSTM_LOWP_BF16
        CLSTM_LOWP_NR
    ctypedef struct clstm_lowp_weights:
        int format
        Py_ssize_t N, K
        const void* panels
        const float* scale
        const int32_t* colsum
    Py_ssize_t clstm_lowp_panel_bytes(int format, Py_ssize_t N, Py_ssize_t K) noexcept nogil
    Py_ssize_t clstm_lowp_padded_n(Py_ssize_t N) noexcept nogil
    void clstm_lowp_pack(int format, const float* W, Py_ssize_t N, Py_ssize_t K,
                         void* panels, float* scale, int32_t* colsum) noexcept nogil
    int clstm_lowp_gemm(const clstm_lowp_weights* W, Py_ssize_t n, Py_ssize_t col0,
                        Py_ssize_t ncols, const float* A, Py_ssize_t lda, float* C,
                        Py_ssize_t ldc, int overwrite) noexcept nogil
    const char* clstm_lowp_kernel_name() noexcept nogil


cdef inline void lowp_gemm(Py_ssize_t n, Py_ssize_t N, const float* A, Py_ssize_t lda,
                           const void* Wp, Py_ssize_t col0, float* C,
                           Py_ssize_t ldc, bint overwrite=False) noexcept nogil:
    """C[n, N] += A[n, K] @ W[col0 : col0 + N].T for low-precision packed weights (Wp a
    clstm_lowp_weights, as PackedWeights.ptr of an "int8" or "bfloat16" format; col0 a
    multiple of CLSTM_LOWP_NR). A's rows are quantised on the stack; only rows of more
    than 64 KB quantised (K > 16384 for bfloat16, 65536 for int8) take malloc, whose
    failure (never seen) makes C NaN. ``overwrite``: C = the product (the bits of zeroing C
    first; the AMX kernel then never reads C)."""
    clstm_lowp_gemm(<const clstm_lowp_weights*>Wp, n, col0, N, A, lda, C, ldc, overwrite)


cdef inline void packed_mul(bint lowp, Py_ssize_t n, Py_ssize_t N, Py_ssize_t K,
                            const floating* A, Py_ssize_t lda, const void* Wp,
                            Py_ssize_t col0, floating* C, Py_ssize_t ldc,
                            bint overwrite=False, bint descending=False) noexcept nogil:
    """C[n, N] += A[n, K] @ W[col0 : col0 + N].T for W packed in any format (PackedWeights'
    ptr): the float packed GEMM, or with ``lowp`` the int8/bfloat16 one (float32 only).
    col0 is a multiple of the format's panel width. ``overwrite``: C = the product (the
    float GEMM then never reads C). ``descending``: the float GEMM's `pgemm` flag (the
    low-precision GEMM keeps its order)."""
    if floating is float:
        if lowp:
            lowp_gemm(n, N, A, lda, Wp, col0, C, ldc, overwrite)
            return
    if overwrite:
        pgemm_set(n, N, K, A, lda, (<const floating*>Wp) + col0 * K, C, ldc, descending)
    else:
        pgemm(n, N, K, A, lda, (<const floating*>Wp) + col0 * K, C, ldc, descending)
