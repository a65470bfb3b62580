/* Build configuration shared by every C header of the compiled core: one copy of each
   macro. Included (through the other headers) by Cython modules, after Python.h. */
#ifndef CLSTM_CONFIG_H
#define CLSTM_CONFIG_H

#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>

/* Multi-versioning: functions marked CLSTM_CLONES are compiled for baseline x86-64,
   x86-64-v3 (AVX2+FMA) and x86-64-v4 (AVX-512) and picked at load time, so the build needs
   no -march flag to be fast. CLSTM_NO_TARGET_CLONES (a CFLAGS define) turns it off. */
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) \
    && !defined(CLSTM_NO_TARGET_CLONES)
#define CLSTM_CLONES \
    __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#define CLSTM_ISA_KERNELS 1
#else
#define CLSTM_CLONES
#define CLSTM_ISA_KERNELS 0
#endif

/* A loop whose iterations are independent though its pointers may alias (see cells.h). */
#if defined(__GNUC__) && !defined(__clang__)
#define CLSTM_IVDEP _Pragma("GCC ivdep")
#else
#define CLSTM_IVDEP
#endif

/* GCC's __builtin_shuffle takes a mask vector (Clang's takes constant indices only);
   without it the pack stays scalar and CLSTM_SHUFFLE is never reached. */
#if defined(__GNUC__) && !defined(__clang__)
#define CLSTM_VECTOR_TRANSPOSE 1
#define CLSTM_SHUFFLE(a, b, mask) __builtin_shuffle(a, b, mask)
#else
#define CLSTM_VECTOR_TRANSPOSE 0
#define CLSTM_SHUFFLE(a, b, mask) (a)
#endif

/* A per-thread scratch buffer that the thread's exit frees (POSIX thread keys): where
   there are none, CLSTM_THREAD_SCRATCH is 0 and the code that would use one does without. */
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#define CLSTM_THREAD_SCRATCH 1
#else
#define CLSTM_THREAD_SCRATCH 0
#endif

#endif /* CLSTM_CONFIG_H */
