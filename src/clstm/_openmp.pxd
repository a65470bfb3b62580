# The one OpenMP shim: every omp_* call goes through here, so a serial build (no -fopenmp)
# still compiles; `prange` itself degrades to a plain loop on its own.
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define CLSTM_OPENMP_ENABLED 1
    #else
    #define CLSTM_OPENMP_ENABLED 0
    static int omp_get_max_threads(void) { return 1; }
    #endif
    """
    const bint CLSTM_OPENMP_ENABLED
    int omp_get_max_threads() noexcept nogil
