# The recurrent product of one time step, C[n, N] += A[n, K] @ W.T, with W packed once per
# kernel call instead of on every step.
#
# Why not BLAS: the per-step GEMM has only the few batch rows of one slice (n <= ~32), and
# OpenBLAS re-packs all of W (4H x H) into its panel layout on every call, which costs as
# much as the multiply itself; its dispatch also picks AVX2 kernels on CPUs it does not know.
# Here W is packed once into column panels of NR = 64 bytes * 2 of contiguous output columns,
# and a 4-row micro-kernel keeps its 4 x NR accumulators in registers while it streams the
# panel once. The code uses GCC/Clang vector extensions (portable C: a 64-byte vector is
# split into whatever the target has), and on x86-64 Linux the function is compiled for
# AVX-512, AVX2+FMA and baseline x86-64, picked at load time by the loader (target_clones):
# correct everywhere without -march flags, fast where the CPU allows it.
cdef extern from *:
    """
    #include <string.h>

    #ifndef CLSTM_CLONES
    #if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) \\
        && !defined(CLSTM_NO_TARGET_CLONES)
    #define CLSTM_CLONES \\
        __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
    #else
    #define CLSTM_CLONES
    #endif
    #endif

    #define CLSTM_MR 4

    #define CLSTM_DEFINE_PGEMM(T, SFX)                                                      \\
    typedef T clstm_v_##SFX __attribute__((vector_size(64)));                              \\
    typedef T clstm_vu_##SFX __attribute__((vector_size(64), aligned(sizeof(T))));         \\
    enum { CLSTM_NR_##SFX = 2 * 64 / sizeof(T) };                                           \\
                                                                                            \\
    /* Wp[(jb*K + k)*NR + c] = W[jb*NR + c, k], zero past N. With transposed, the source  \\
       is W.T stored (K, N) instead. */                                                     \\
    static void clstm_pack_##SFX(const T* W, Py_ssize_t N, Py_ssize_t K, int transposed,   \\
                                 T* Wp) {                                                   \\
        const Py_ssize_t NR = CLSTM_NR_##SFX;                                               \\
        Py_ssize_t jb, k, c, col;                                                           \\
        for (jb = 0; jb * NR < N; jb++)                                                     \\
            for (k = 0; k < K; k++)                                                         \\
                for (c = 0; c < NR; c++) {                                                  \\
                    col = jb * NR + c;                                                      \\
                    Wp[(jb * K + k) * NR + c] = col >= N ? (T)0                             \\
                        : transposed ? W[k * N + col] : W[col * K + k];                     \\
                }                                                                           \\
    }                                                                                       \\
                                                                                            \\
    static inline __attribute__((always_inline)) void clstm_tile_##SFX(                     \\
            const int mr, Py_ssize_t K, const T* A, Py_ssize_t lda, const T* Wp,            \\
            T* C, Py_ssize_t ldc, Py_ssize_t ncols) {                                       \\
        const Py_ssize_t NR = CLSTM_NR_##SFX, V = 64 / sizeof(T);                           \\
        clstm_v_##SFX acc[CLSTM_MR][2];                                                     \\
        clstm_v_##SFX w0, w1;                                                               \\
        T out[2 * 64 / sizeof(T)];                                                          \\
        Py_ssize_t k, c;                                                                    \\
        int i;                                                                              \\
        for (i = 0; i < mr; i++) {                                                          \\
            acc[i][0] = (clstm_v_##SFX){0};                                                 \\
            acc[i][1] = (clstm_v_##SFX){0};                                                 \\
        }                                                                                   \\
        for (k = 0; k < K; k++) {                                                           \\
            w0 = *(const clstm_vu_##SFX*)(Wp + k * NR);                                     \\
            w1 = *(const clstm_vu_##SFX*)(Wp + k * NR + V);                                 \\
            for (i = 0; i < mr; i++) {                                                      \\
                T a = A[i * lda + k];                                                       \\
                acc[i][0] += a * w0;                                                        \\
                acc[i][1] += a * w1;                                                        \\
            }                                                                               \\
        }                                                                                   \\
        for (i = 0; i < mr; i++) {                                                          \\
            if (ncols == NR) {                                                              \\
                *(clstm_vu_##SFX*)(C + i * ldc) += acc[i][0];                               \\
                *(clstm_vu_##SFX*)(C + i * ldc + V) += acc[i][1];                           \\
            } else {                                                                        \\
                memcpy(out, &acc[i][0], sizeof(acc[i][0]));                                 \\
                memcpy(out + V, &acc[i][1], sizeof(acc[i][1]));                             \\
                for (c = 0; c < ncols; c++)                                                 \\
                    C[i * ldc + c] += out[c];                                               \\
            }                                                                               \\
        }                                                                                   \\
    }                                                                                       \\
                                                                                            \\
    /* C[n, N] += A[n, K] @ W.T with W packed by clstm_pack. */                              \\
    CLSTM_CLONES static void clstm_pgemm_##SFX(Py_ssize_t n, Py_ssize_t N, Py_ssize_t K,   \\
                                              const T* A, Py_ssize_t lda, const T* Wp,      \\
                                              T* C, Py_ssize_t ldc) {                       \\
        const Py_ssize_t NR = CLSTM_NR_##SFX;                                               \\
        Py_ssize_t jb, i, ncols;                                                            \\
        for (jb = 0; jb * NR < N; jb++) {                                                   \\
            ncols = N - jb * NR < NR ? N - jb * NR : NR;                                    \\
            for (i = 0; i + CLSTM_MR <= n; i += CLSTM_MR)                                   \\
                clstm_tile_##SFX(CLSTM_MR, K, A + i * lda, lda, Wp + jb * K * NR,           \\
                                 C + i * ldc + jb * NR, ldc, ncols);                        \\
            switch (n - i) {  /* constant row counts, so each tile keeps acc in registers */\\
            case 3: clstm_tile_##SFX(3, K, A + i * lda, lda, Wp + jb * K * NR,              \\
                                     C + i * ldc + jb * NR, ldc, ncols); break;             \\
            case 2: clstm_tile_##SFX(2, K, A + i * lda, lda, Wp + jb * K * NR,              \\
                                     C + i * ldc + jb * NR, ldc, ncols); break;             \\
            case 1: clstm_tile_##SFX(1, K, A + i * lda, lda, Wp + jb * K * NR,              \\
                                     C + i * ldc + jb * NR, ldc, ncols); break;             \\
            default: break;                                                                 \\
            }                                                                               \\
        }                                                                                   \\
    }

    CLSTM_DEFINE_PGEMM(float, f32)
    CLSTM_DEFINE_PGEMM(double, f64)

    static Py_ssize_t clstm_packed_size_f32(Py_ssize_t N, Py_ssize_t K) {
        return (N + CLSTM_NR_f32 - 1) / CLSTM_NR_f32 * CLSTM_NR_f32 * K;
    }
    static Py_ssize_t clstm_packed_size_f64(Py_ssize_t N, Py_ssize_t K) {
        return (N + CLSTM_NR_f64 - 1) / CLSTM_NR_f64 * CLSTM_NR_f64 * K;
    }
    """
    Py_ssize_t clstm_packed_size_f32(Py_ssize_t N, Py_ssize_t K) noexcept nogil
    Py_ssize_t clstm_packed_size_f64(Py_ssize_t N, Py_ssize_t K) noexcept nogil
    void clstm_pack_f32(const float* W, Py_ssize_t N, Py_ssize_t K, int transposed,
                        float* Wp) noexcept nogil
    void clstm_pack_f64(const double* W, Py_ssize_t N, Py_ssize_t K, int transposed,
                        double* Wp) noexcept nogil
    void clstm_pgemm_f32(Py_ssize_t n, Py_ssize_t N, Py_ssize_t K, const float* A,
                         Py_ssize_t lda, const float* Wp, float* C,
                         Py_ssize_t ldc) noexcept nogil
    void clstm_pgemm_f64(Py_ssize_t n, Py_ssize_t N, Py_ssize_t K, const double* A,
                         Py_ssize_t lda, const double* Wp, double* C,
                         Py_ssize_t ldc) noexcept nogil


from cython cimport floating


cdef inline Py_ssize_t packed_size(Py_ssize_t N, Py_ssize_t K, floating* like) noexcept nogil:
    """Elements of the packed copy of an (N, K) matrix (``like`` only selects the type)."""
    if floating is float:
        return clstm_packed_size_f32(N, K)
    else:
        return clstm_packed_size_f64(N, K)


cdef inline void pack(const floating* W, Py_ssize_t N, Py_ssize_t K, bint transposed,
                      floating* Wp) noexcept nogil:
    if floating is float:
        clstm_pack_f32(W, N, K, transposed, Wp)
    else:
        clstm_pack_f64(W, N, K, transposed, Wp)


cdef inline void pgemm(Py_ssize_t n, Py_ssize_t N, Py_ssize_t K, const floating* A,
                       Py_ssize_t lda, const floating* Wp, floating* C,
                       Py_ssize_t ldc) noexcept nogil:
    """C[n, N] += A[n, K] @ W.T, W packed by `pack`."""
    if floating is float:
        clstm_pgemm_f32(n, N, K, A, lda, Wp, C, ldc)
    else:
        clstm_pgemm_f64(n, N, K, A, lda, Wp, C, ldc)
