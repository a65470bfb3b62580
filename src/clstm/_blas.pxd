# The one BLAS shim: row-major GEMM/GEMV over `floating`, calling SciPy's Fortran BLAS.
#
# A row-major C = op(A) op(B) is the column-major C^T = op(B)^T op(A)^T, so the operands,
# their transpose flags and m/n are swapped here, once; callers think in row-major only.
# SciPy's pxd is not const-qualified, hence the casts on read-only operands.
from cython cimport floating
cimport scipy.linalg.cython_blas as fblas

# Every BLAS integer goes through this typedef (ready for ILP64 SciPy builds).
ctypedef int blas_int


cdef inline void gemm(bint trans_a, bint trans_b, blas_int m, blas_int n, blas_int k,
                      floating alpha, const floating* A, blas_int lda,
                      const floating* B, blas_int ldb,
                      floating beta, floating* C, blas_int ldc) noexcept nogil:
    """C[m, n] = alpha * op(A)[m, k] @ op(B)[k, n] + beta * C  (row-major, ld = row stride)."""
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if floating is float:
        fblas.sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*>B, &ldb, <float*>A, &lda,
                    &beta, C, &ldc)
    else:
        fblas.dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*>B, &ldb, <double*>A, &lda,
                    &beta, C, &ldc)


cdef inline void gemv(bint trans_a, blas_int m, blas_int n, floating alpha,
                      const floating* A, blas_int lda, const floating* x,
                      floating beta, floating* y) noexcept nogil:
    """y = alpha * op(A) @ x + beta * y  for a row-major A[m, n]; x and y unit-stride."""
    # Row-major A is column-major A^T, so the flag flips and m/n swap.
    cdef char ta = b'N' if trans_a else b'T'
    cdef blas_int one = 1
    if floating is float:
        fblas.sgemv(&ta, &n, &m, &alpha, <float*>A, &lda, <float*>x, &one, &beta, y, &one)
    else:
        fblas.dgemv(&ta, &n, &m, &alpha, <double*>A, &lda, <double*>x, &one, &beta, y, &one)


cdef inline void matmul(blas_int m, blas_int n, blas_int k, const floating* A, blas_int lda,
                        const floating* B, blas_int ldb, bint trans_b, floating beta,
                        floating* C, blas_int ldc) noexcept nogil:
    """C[m, n] = A[m, k] @ op(B) + beta * C, op(B) = B.T if trans_b (B stored (n, k)) else B
    (stored (k, n)). One row is a GEMV: OpenBLAS's GEMM would pack all of B for it."""
    if m == 1:
        if trans_b:
            gemv(False, n, k, <floating>1, B, ldb, A, beta, C)
        else:
            gemv(True, k, n, <floating>1, B, ldb, A, beta, C)
    else:
        gemm(False, trans_b, m, n, k, <floating>1, A, lda, B, ldb, beta, C, ldc)
