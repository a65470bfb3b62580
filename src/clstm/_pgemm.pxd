# The packed GEMM (C in csrc/pgemm.h): C[n, N] += A[n, K] @ W.T with W packed once into
# column panels, one multiply kernel per instruction set; typed for `floating` here.
cdef extern from "csrc/pgemm.h":
    enum:
        CLSTM_PGEMM_OVERWRITE
        CLSTM_PGEMM_DESCENDING
    Py_ssize_t CLSTM_NR_f32, CLSTM_NR_f64
    int clstm_isa_level() noexcept nogil
    Py_ssize_t clstm_packed_size_f32(Py_ssize_t N, Py_ssize_t K) noexcept nogil
    Py_ssize_t clstm_packed_size_f64(Py_ssize_t N, Py_ssize_t K) noexcept nogil
    Py_ssize_t clstm_panels_f32(Py_ssize_t N) noexcept nogil
    Py_ssize_t clstm_panels_f64(Py_ssize_t N) noexcept nogil
    void clstm_pack_panels_f32(const float* W, Py_ssize_t N, Py_ssize_t K, int transposed,
                               float* Wp, Py_ssize_t jb0, Py_ssize_t jb1) noexcept nogil
    void clstm_pack_panels_f64(const double* W, Py_ssize_t N, Py_ssize_t K, int transposed,
                               double* Wp, Py_ssize_t jb0, Py_ssize_t jb1) noexcept nogil
    void clstm_transpose_matrix_f32(const float* src, Py_ssize_t rows, Py_ssize_t cols,
                                    Py_ssize_t lds, float* dst, Py_ssize_t ldd) noexcept nogil
    void clstm_transpose_matrix_f64(const double* src, Py_ssize_t rows, Py_ssize_t cols,
                                    Py_ssize_t lds, double* dst, Py_ssize_t ldd) noexcept nogil
    float clstm_sum_f32(const float* a, Py_ssize_t n) noexcept nogil
    double clstm_sum_f64(const double* a, Py_ssize_t n) noexcept nogil
    void clstm_pgemm_f32(Py_ssize_t n, Py_ssize_t N, Py_ssize_t K, const float* A,
                         Py_ssize_t lda, const float* Wp, Py_ssize_t ldw, float* C,
                         Py_ssize_t ldc, int flags) noexcept nogil
    void clstm_pgemm_f64(Py_ssize_t n, Py_ssize_t N, Py_ssize_t K, const double* A,
                         Py_ssize_t lda, const double* Wp, Py_ssize_t ldw, double* C,
                         Py_ssize_t ldc, int flags) noexcept nogil


from cython cimport floating


cdef inline Py_ssize_t packed_size(Py_ssize_t N, Py_ssize_t K, floating* like) noexcept nogil:
    """Elements of the packed copy of an (N, K) matrix (``like`` only selects the type)."""
    if floating is float:
        return clstm_packed_size_f32(N, K)
    else:
        return clstm_packed_size_f64(N, K)


cdef inline Py_ssize_t panel_width(floating* like) noexcept nogil:
    """Columns per packed panel: column ranges starting at a multiple of it can be
    multiplied on their own (their panels start at Wp + first_column * K)."""
    if floating is float:
        return CLSTM_NR_f32
    else:
        return CLSTM_NR_f64


cdef inline Py_ssize_t n_panels(Py_ssize_t N, const floating* like) noexcept nogil:
    """Panels of the packed copy of an (N, K) matrix."""
    if floating is float:
        return clstm_panels_f32(N)
    else:
        return clstm_panels_f64(N)


cdef inline void pack_panels(const floating* W, Py_ssize_t N, Py_ssize_t K, bint transposed,
                             floating* Wp, Py_ssize_t jb0, Py_ssize_t jb1) noexcept nogil:
    """Pack panels [jb0, jb1) of W (N, K), or of W.T given as (K, N) when ``transposed``."""
    if floating is float:
        clstm_pack_panels_f32(W, N, K, transposed, Wp, jb0, jb1)
    else:
        clstm_pack_panels_f64(W, N, K, transposed, Wp, jb0, jb1)



cdef inline void pgemm(Py_ssize_t n, Py_ssize_t N, Py_ssize_t K, const floating* A,
                       Py_ssize_t lda, const floating* Wp, floating* C,
                       Py_ssize_t ldc, bint descending=False) noexcept nogil:
    """C[n, N] += A[n, K] @ W.T, W packed by `pack_panels`; ``descending``: its panels
    in descending order, the same bits (csrc/pgemm.h)."""
    cdef int flags = CLSTM_PGEMM_DESCENDING if descending else 0
    if floating is float:
        clstm_pgemm_f32(n, N, K, A, lda, Wp, K, C, ldc, flags)
    else:
        clstm_pgemm_f64(n, N, K, A, lda, Wp, K, C, ldc, flags)


cdef inline void pgemm_set(Py_ssize_t n, Py_ssize_t N, Py_ssize_t K, const floating* A,
                           Py_ssize_t lda, const floating* Wp, floating* C,
                           Py_ssize_t ldc, bint descending=False) noexcept nogil:
    """C[n, N] = A[n, K] @ W.T (C only written), W packed by `pack_panels`;
    ``descending`` as in `pgemm`."""
    cdef int flags = CLSTM_PGEMM_OVERWRITE | (CLSTM_PGEMM_DESCENDING if descending else 0)
    if floating is float:
        clstm_pgemm_f32(n, N, K, A, lda, Wp, K, C, ldc, flags)
    else:
        clstm_pgemm_f64(n, N, K, A, lda, Wp, K, C, ldc, flags)


cdef inline void pgemm_rows(Py_ssize_t n, Py_ssize_t N, Py_ssize_t k0, Py_ssize_t K,
                            const floating* A, Py_ssize_t lda, const floating* Wp,
                            Py_ssize_t ldw, floating* C, Py_ssize_t ldc) noexcept nogil:
    """C[n, N] += A[n, K] @ W[:, k0:k0 + K].T: a range of the K = ldw of W packed by
    `pack_panels` (A holds just those K columns)."""
    if floating is float:
        clstm_pgemm_f32(n, N, K, A, lda, Wp + k0 * CLSTM_NR_f32, ldw, C, ldc, 0)
    else:
        clstm_pgemm_f64(n, N, K, A, lda, Wp + k0 * CLSTM_NR_f64, ldw, C, ldc, 0)


cdef inline void transpose(const floating* src, Py_ssize_t rows, Py_ssize_t cols,
                           Py_ssize_t lds, floating* dst, Py_ssize_t ldd) noexcept nogil:
    """dst[c, r] = src[r, c] for a (rows, cols) matrix."""
    if floating is float:
        clstm_transpose_matrix_f32(src, rows, cols, lds, dst, ldd)
    else:
        clstm_transpose_matrix_f64(src, rows, cols, lds, dst, ldd)


cdef inline floating total(const floating* a, Py_ssize_t n) noexcept nogil:
    """The sum of a[0, n), in an order that does not depend on the caller's thread."""
    if floating is float:
        return clstm_sum_f32(a, n)
    else:
        return clstm_sum_f64(a, n)
