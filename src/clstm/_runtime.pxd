# What every compiled module shares at run time: BLAS's thread count (OpenBLAS's switch,
# installed by clstm._threads), and the O(1) consistency check of compiled entry points.

cdef int blas_threads_enter() noexcept nogil
cdef void blas_threads(int n) noexcept nogil
cdef int check(bint ok, str what) except -1
