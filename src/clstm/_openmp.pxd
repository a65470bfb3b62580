# The one OpenMP shim (C in csrc/omp_compat.h): every omp_* call goes through here, so a
# serial build (no -fopenmp) still compiles.
cdef extern from "csrc/omp_compat.h":
    const bint CLSTM_OPENMP_ENABLED
    int omp_get_max_threads() noexcept nogil
    int omp_get_num_threads() noexcept nogil
    int omp_get_thread_num() noexcept nogil
    void clstm_barrier() noexcept nogil
    int clstm_current_cpu() noexcept nogil
    void clstm_leave_master_cpu(int master_cpu) noexcept nogil
