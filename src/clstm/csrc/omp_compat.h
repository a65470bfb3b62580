/* The one OpenMP shim: every omp_* call goes through here, so a serial build (no
   -fopenmp) still compiles; Cython's prange degrades to a plain loop on its own. */
#ifndef CLSTM_OMP_COMPAT_H
#define CLSTM_OMP_COMPAT_H

#ifdef _OPENMP
#include <omp.h>
#define CLSTM_OPENMP_ENABLED 1
#else
#define CLSTM_OPENMP_ENABLED 0
static inline int omp_get_max_threads(void) { return 1; }
static inline int omp_get_thread_num(void) { return 0; }
static inline int omp_get_num_threads(void) { return 1; }
#endif

/* An orphaned barrier: binds to the parallel region of the caller (a no-op outside one
   and in a serial build). Every thread of the team must reach it equally often. */
static inline void clstm_barrier(void) {
#ifdef _OPENMP
    _Pragma("omp barrier")
#endif
}

#if defined(__linux__) && defined(_OPENMP)
#include <sched.h>
#include <unistd.h>
static inline int clstm_current_cpu(void) { return sched_getcpu(); }

/* Called by every thread at the start of its share of a parallel region. A worker that
   has slept may be woken onto the CPU its master is running on: Linux prefers the
   waker's CPU when the other CPUs do not look idle, which on a virtual machine is what
   a halted idle vCPU looks like. The two then spin against each other for whole time
   slices (measured in docs/design.md, "Threads and BLAS"). Such a
   worker moves itself to the other CPUs the process may use. */
static inline void clstm_leave_master_cpu(int master_cpu) {
    cpu_set_t allowed;
    if (master_cpu < 0 || omp_get_thread_num() == 0 || sched_getcpu() != master_cpu)
        return;
    if (sched_getaffinity(getpid(), sizeof allowed, &allowed) != 0)
        return;
    CPU_CLR(master_cpu, &allowed);
    if (CPU_COUNT(&allowed) > 0)
        sched_setaffinity(0, sizeof allowed, &allowed);
}
#else
static inline int clstm_current_cpu(void) { return -1; }
static inline void clstm_leave_master_cpu(int master_cpu) { (void)master_cpu; }
#endif

#endif /* CLSTM_OMP_COMPAT_H */
