"""Run-time services shared by every compiled module: BLAS thread control, build and ISA
queries.

BLAS thread control: clstm._threads finds OpenBLAS's C entry points and installs them here;
the kernels then hold BLAS to one thread for the duration of a call (`blas_threads_enter`)
and restore the caller's count on the way out (`blas_threads`). Other modules cimport
these from _runtime.pxd, so there is one switch for the whole process.
"""
from clstm._openmp cimport CLSTM_OPENMP_ENABLED, omp_get_max_threads
from clstm._pgemm cimport clstm_isa_level

ctypedef void (*set_threads_fn)(int) noexcept nogil
ctypedef int (*get_threads_fn)() noexcept nogil
cdef set_threads_fn _blas_set_threads = NULL
cdef get_threads_fn _blas_get_threads = NULL


def install_blas_thread_control(size_t set_threads_addr, size_t get_threads_addr):
    """Install OpenBLAS's set/get_num_threads (C function addresses; 0, 0 uninstalls)."""
    global _blas_set_threads, _blas_get_threads
    if (set_threads_addr == 0) != (get_threads_addr == 0):
        raise ValueError("install both BLAS thread functions or neither")
    _blas_set_threads = <set_threads_fn>set_threads_addr
    _blas_get_threads = <get_threads_fn>get_threads_addr


def blas_thread_control_installed():
    """True once OpenBLAS's thread switch is installed."""
    return _blas_set_threads != NULL


cdef int blas_threads_enter() noexcept nogil:
    """Hold BLAS to one thread; returns the count to restore (0: nothing installed)."""
    cdef int saved = 0
    if _blas_get_threads != NULL:
        saved = _blas_get_threads()
        if saved != 1:
            _blas_set_threads(1)
    return saved


cdef void blas_threads(int n) noexcept nogil:
    """Set BLAS to n threads (n <= 0, or nothing installed: no-op)."""
    if _blas_set_threads != NULL and n > 0 and n != _blas_get_threads():
        _blas_set_threads(n)


cdef int check(bint ok, str what) except -1:
    if not ok:
        raise ValueError(f"clstm: inconsistent arguments to a compiled kernel ({what})")
    return 0


def openmp_enabled():
    """True when the extension was compiled with OpenMP."""
    return bool(CLSTM_OPENMP_ENABLED)


def openmp_max_threads():
    """omp_get_max_threads() (1 in a serial build); honours OMP_NUM_THREADS."""
    return omp_get_max_threads()


def kernel_isa():
    """Which multiply kernel runs: "x86-64-v4" (AVX-512), "x86-64-v3" (AVX2+FMA) or "base"
    (whatever the build flags allow; the only one off x86-64 Linux with GCC)."""
    return ("base", "x86-64-v3", "x86-64-v4")[clstm_isa_level()]
