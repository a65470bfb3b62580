/* The packed GEMM: C[n, N] += A[n, K] @ W.T with W packed once into column panels.

   Why not BLAS: the per-step GEMM has only the few batch rows of one slice (n <= ~32), and
   OpenBLAS re-packs all of W (4H x H) into its panel layout on every call, which costs as
   much as the multiply itself; its dispatch also picks AVX2 kernels on CPUs it does not
   know. Here W is packed once into column panels of NR = 128 bytes of contiguous output
   columns (a blocked transpose done with vector shuffles), and a register tile of rows keeps
   its accumulators in registers while it streams each panel once. GCC/Clang vector
   extensions (portable C). On x86-64 Linux the multiply kernel exists once per instruction
   set (AVX-512, AVX2+FMA, baseline), each shaped for its registers and picked at run time;
   the packing is compiled for the same three (CLSTM_CLONES).

   Packed layout of an (N, K) matrix W: panel jb holds columns [jb*NR, (jb+1)*NR) of W.T,
   Wp[(jb*K + k)*NR + c] = W[jb*NR + c, k], zero past N; clstm_packed_size_* elements. A
   column range that starts at a multiple of NR is multiplied alone from Wp + first*K. */
#ifndef CLSTM_PGEMM_H
#define CLSTM_PGEMM_H

#include "config.h"

/* Rows of a panel chunk (clstm_pgemm multiplies K in chunks of this many): 256 rows of
   128 bytes fill 32 KB, the L1 data cache of the smallest x86-64 cores. */
#ifndef CLSTM_PGEMM_KC
#define CLSTM_PGEMM_KC 256
#endif
/* clstm_pgemm's flags: C = the product instead of C += it; the panels in descending
   order (the same sums, so the same bits: a time loop alternating the order starts each
   step with the panels the last step read last, still in L1 or L2). */
enum { CLSTM_PGEMM_OVERWRITE = 1, CLSTM_PGEMM_DESCENDING = 2 };
/* Panel rows (128 bytes each) between the row a chunk's first tile reads and the one it
   prefetches into L1: far enough to cover a load from L2 (and from L3 on the Intel cores
   it was tuned on), near enough to stay in L1. */
#ifndef CLSTM_PGEMM_PREFETCH
#define CLSTM_PGEMM_PREFETCH 16
#endif
/* And the row it prefetches into L2 only, when the call's panels (all their rows) are
   bigger than CLSTM_PGEMM_L2_BYTES, so come from L3: a second stream, far enough ahead to
   cover L3's latency on a core that multiplies a row in half the time (Zen 5's 512-bit
   FMAs), without crowding L1. On panels that L2 holds it only takes load slots, which
   short tiles miss (docs/performance.md, "Issue 19, ninth pass"). */
#ifndef CLSTM_PGEMM_PREFETCH_L2
#define CLSTM_PGEMM_PREFETCH_L2 128
#endif
#ifndef CLSTM_PGEMM_L2_BYTES
#define CLSTM_PGEMM_L2_BYTES (1 << 20)
#endif

#define CLSTM_DEFINE_PACK(T, SFX, IDX)                                                  \
typedef T clstm_v_##SFX __attribute__((vector_size(64)));                               \
typedef T clstm_vu_##SFX __attribute__((vector_size(64), aligned(sizeof(T))));          \
typedef IDX clstm_idx_##SFX __attribute__((vector_size(64)));                           \
enum { CLSTM_NR_##SFX = 2 * 64 / sizeof(T) };                                           \
                                                                                        \
/* dst[c, r] = src[r, c] for a V x V block (V = one vector). A scalar transpose runs at \
   one element per cycle; this one swaps the off-diagonal b x b blocks of every 2b x 2b \
   block for b = V/2, ..., 1, two-vector shuffles throughout (the masks are constants   \
   once the loops unroll). */                                                           \
static inline __attribute__((always_inline)) void clstm_transpose_##SFX(                \
        const T* src, Py_ssize_t lds, T* dst, Py_ssize_t ldd) {                         \
    enum { V = 64 / sizeof(T) };                                                        \
    clstm_v_##SFX m[V], t[V];                                                           \
    clstm_idx_##SFX keep_lo, keep_hi;                                                   \
    int r, j, b;                                                                        \
    _Pragma("GCC unroll 16")                                                            \
    for (r = 0; r < V; r++)                                                             \
        m[r] = *(const clstm_vu_##SFX*)(src + r * lds);                                 \
    _Pragma("GCC unroll 16")                                                            \
    for (b = V / 2; b >= 1; b /= 2) {                                                   \
        _Pragma("GCC unroll 16")                                                        \
        for (j = 0; j < V; j++) {                                                       \
            keep_lo[j] = (j & b) ? V + (j ^ b) : j;                                     \
            keep_hi[j] = (j & b) ? j : V + (j ^ b);                                     \
        }                                                                               \
        _Pragma("GCC unroll 16")                                                        \
        for (r = 0; r < V; r++)                                                         \
            t[r] = (r & b) ? CLSTM_SHUFFLE(m[r], m[r ^ b], keep_hi)                     \
                           : CLSTM_SHUFFLE(m[r], m[r ^ b], keep_lo);                    \
        memcpy(m, t, sizeof(m));                                                        \
    }                                                                                   \
    _Pragma("GCC unroll 16")                                                            \
    for (r = 0; r < V; r++)                                                             \
        *(clstm_vu_##SFX*)(dst + r * ldd) = m[r];                                       \
}                                                                                       \
                                                                                        \
/* dst[c, r] = src[r, c] for a (rows, cols) matrix: vector blocks, scalar edges. */     \
CLSTM_CLONES static void clstm_transpose_matrix_##SFX(const T* src, Py_ssize_t rows,    \
                                                      Py_ssize_t cols, Py_ssize_t lds,  \
                                                      T* dst, Py_ssize_t ldd) {         \
    const Py_ssize_t V = 64 / sizeof(T);                                                \
    Py_ssize_t r, c, r_vec = 0, c_vec = 0;                                              \
    if (CLSTM_VECTOR_TRANSPOSE) {                                                       \
        r_vec = rows / V * V;                                                           \
        c_vec = cols / V * V;                                                           \
        for (r = 0; r < r_vec; r += V)                                                  \
            for (c = 0; c < c_vec; c += V)                                              \
                clstm_transpose_##SFX(src + r * lds + c, lds, dst + c * ldd + r, ldd);  \
    }                                                                                   \
    for (r = 0; r < rows; r++)                                                          \
        for (c = (r < r_vec ? c_vec : 0); c < cols; c++)                                \
            dst[c * ldd + r] = src[r * lds + c];                                        \
}                                                                                       \
                                                                                        \
/* Wp[(jb*K + k)*NR + c] = W[jb*NR + c, k], zero past N, for the panels jb in [jb0,    \
   jb1) (each depends on its own columns only: threads can pack disjoint ranges). With  \
   transposed, the source is W.T stored (K, N) instead: then each panel row is a plain  \
   copy, done for 32 rows of W.T at a time across the panels (panel by panel, every row \
   copied was on a new page; docs/performance.md, "Issue 19, sixth pass"). */            \
CLSTM_CLONES static void clstm_pack_panels_##SFX(const T* W, Py_ssize_t N, Py_ssize_t K, \
                                                 int transposed, T* Wp, Py_ssize_t jb0,  \
                                                 Py_ssize_t jb1) {                       \
    const Py_ssize_t NR = CLSTM_NR_##SFX, V = 64 / sizeof(T);                           \
    const Py_ssize_t full = N / NR < jb1 ? N / NR : jb1;  /* panels without padding */  \
    Py_ssize_t jb, k, k0, c, col, k_vec;                                                \
    if (transposed)                                                                     \
        for (k0 = 0; k0 < K; k0 += 32)                                                  \
            for (jb = jb0; jb < full; jb++)                                             \
                for (k = k0; k < K && k < k0 + 32; k++)                                 \
                    memcpy(Wp + (jb * K + k) * NR, W + k * N + jb * NR, NR * sizeof(T)); \
    for (jb = transposed && full > jb0 ? full : jb0; jb < jb1 && jb * NR < N; jb++) {   \
        T* panel = Wp + jb * K * NR;                                                    \
        k_vec = 0;                                                                      \
        if (CLSTM_VECTOR_TRANSPOSE && !transposed && jb < full) {                       \
            for (k_vec = 0; k_vec + V <= K; k_vec += V)                                 \
                for (c = 0; c < NR; c += V)                                             \
                    clstm_transpose_##SFX(W + (jb * NR + c) * K + k_vec, K,             \
                                          panel + k_vec * NR + c, NR);                  \
        }                                                                               \
        for (k = k_vec; k < K; k++)                                                     \
            for (c = 0; c < NR; c++) {                                                  \
                col = jb * NR + c;                                                      \
                panel[k * NR + c] = col >= N ? (T)0                                     \
                    : transposed ? W[k * N + col] : W[col * K + k];                     \
            }                                                                           \
    }                                                                                   \
}                                                                                       \
static Py_ssize_t clstm_panels_##SFX(Py_ssize_t N) {                                    \
    return (N + CLSTM_NR_##SFX - 1) / CLSTM_NR_##SFX;                                   \
}

/* Rows of A up to this many bytes are copied for the driver (below); bigger ones are used
   where they are. */
#ifndef CLSTM_PGEMM_COPY_BYTES
#define CLSTM_PGEMM_COPY_BYTES (4 << 20)
#endif

/* This thread's scratch of at least `bytes` (64-byte aligned; NULL if there is none), kept
   for the thread's next calls and freed when it exits. */
#if CLSTM_THREAD_SCRATCH
static pthread_key_t clstm_scratch_key;
static pthread_once_t clstm_scratch_once = PTHREAD_ONCE_INIT;
static int clstm_scratch_key_ok;
static void clstm_scratch_make_key(void) {
    clstm_scratch_key_ok = pthread_key_create(&clstm_scratch_key, free) == 0;
}
static void* clstm_thread_scratch(size_t bytes) {
    size_t* block;  /* its first 64 bytes hold the capacity, the rest is the scratch */
    pthread_once(&clstm_scratch_once, clstm_scratch_make_key);
    if (!clstm_scratch_key_ok)
        return NULL;
    block = (size_t*)pthread_getspecific(clstm_scratch_key);
    if (block == NULL || block[0] < bytes) {
        free(block);
        bytes = (bytes + 4095) / 4096 * 4096;
        block = (size_t*)aligned_alloc(64, 64 + bytes);
        if (block != NULL)
            block[0] = bytes;
        if (pthread_setspecific(clstm_scratch_key, block) != 0) {
            free(block);
            return NULL;
        }
        if (block == NULL)
            return NULL;
    }
    return (char*)block + 64;
}
#else
static void* clstm_thread_scratch(size_t bytes) {
    (void)bytes;
    return NULL;
}
#endif

/* The multiply kernel, defined once per instruction set (see the dispatch below) with its
   own vector width VB (bytes), tile height MR (rows) and accumulator budget ACC. A panel
   row (NR columns, 128 bytes) is NV = 128 / VB vectors. C[mr, columns of np panels] +=
   A[mr, K] @ those panels: each accumulator adds up its k in order, one chain, so a row's
   sum has one order whichever tile it lands in, and results do not depend on the thread
   count. A chain waits on the FMA's latency and a tile needs about 8 of them (2 FMA ports
   x 4 cycles): a tile of 1-3 rows therefore spans np panels side by side (ACC accumulators
   at most), a taller one (or one whose rows fill ACC on a single panel) a single panel.
   MR * NV accumulators plus the panel row fit the registers: AVX-512 12 * 2 = 24 of 32;
   AVX2 3 * 4 = 12 of 16, the broadcast of A and 3 vectors of the panel row in the rest
   (GCC reads the fourth from memory in the multiply-add). 64-byte vectors there spilled
   everything to the stack (docs/design.md); 2 rows (8 chains, no slack over the FMA
   latency) ran slower (docs/performance.md, "Issue 19, eighth pass"). Why 12 rows: the
   first tile of a panel chunk is the one that reads it from L2 or L3 (a w_hh bigger
   than L2 comes from L3 at every step), at 64 / MR bytes per vector multiply-add, and
   the fewer bytes the less that tile waits (docs/performance.md, "Issue 19", fifth and
   sixth passes). That tile also prefetches CLSTM_PGEMM_PREFETCH panel rows ahead (and,
   with prefetch 2, CLSTM_PGEMM_PREFETCH_L2 into L2), which the hardware's prefetcher,
   starting anew at every page, does not (docs/performance.md, "Issue 19"). */
#define CLSTM_DEFINE_KERNEL(T, SFX, VB, MR, ACC)                                        \
typedef T clstm_kv_##SFX __attribute__((vector_size(VB)));                              \
typedef T clstm_kvu_##SFX __attribute__((vector_size(VB), aligned(sizeof(T))));         \
/* panels a tile of 1-3 rows may span: ACC accumulators of NV vectors each, 4 at most */ \
enum { CLSTM_WIDE_##SFX = ACC / (128 / VB) > 4 ? 4 : ACC / (128 / VB) };                \
static inline __attribute__((always_inline)) void clstm_tile_##SFX(                     \
        const int mr, const int np, Py_ssize_t K, const T* A, Py_ssize_t lda,           \
        const T* Wp, Py_ssize_t panel_stride, T* C, Py_ssize_t ldc,                     \
        Py_ssize_t last_cols, int overwrite, int prefetch) {                            \
    enum { NR = 128 / sizeof(T), V = VB / sizeof(T), NV = 128 / VB,                     \
           WIDE = CLSTM_WIDE_##SFX };                                                   \
    clstm_kv_##SFX acc[MR][WIDE * NV], w[WIDE * NV];                                    \
    T out[NR];                                                                          \
    Py_ssize_t k, c, ncols;                                                             \
    int i, j, p, q;                                                                     \
    for (i = 0; i < mr; i++)                                                            \
        for (j = 0; j < np * NV; j++)                                                   \
            acc[i][j] = (clstm_kv_##SFX){0};                                            \
    /* The tile's block of C is written at the end: fetch it for writing while the    \
       sums run. Rows ldc apart, where no hardware prefetcher looks; in the time loop   \
       it is the input projection, written long before, and a product that overwrites  \
       C (the input projection) would wait for each line to come from memory. */         \
    for (i = 0; i < mr; i++)                                                            \
        for (p = 0; p < np; p++) {                                                      \
            __builtin_prefetch(C + i * ldc + p * NR, 1);                                \
            __builtin_prefetch(C + i * ldc + p * NR + NR / 2, 1);                       \
        }                                                                               \
    for (k = 0; k < K; k++) {                                                           \
        if (prefetch) {                                                                 \
            __builtin_prefetch(Wp + (k + CLSTM_PGEMM_PREFETCH) * NR);                   \
            __builtin_prefetch(Wp + (k + CLSTM_PGEMM_PREFETCH) * NR + NR / 2);          \
        }                                                                               \
        if (prefetch > 1) {                                                             \
            __builtin_prefetch(Wp + (k + CLSTM_PGEMM_PREFETCH_L2) * NR, 0, 2);          \
            __builtin_prefetch(Wp + (k + CLSTM_PGEMM_PREFETCH_L2) * NR + NR / 2, 0, 2); \
        }                                                                               \
        for (p = 0; p < np; p++)                                                        \
            for (q = 0; q < NV; q++)                                                    \
                w[p * NV + q] = *(const clstm_kvu_##SFX*)(Wp + p * panel_stride         \
                                                           + k * NR + q * V);           \
        for (i = 0; i < mr; i++) {                                                      \
            T a = A[i * lda + k];                                                       \
            for (j = 0; j < np * NV; j++)                                               \
                acc[i][j] += a * w[j];                                                  \
        }                                                                               \
    }                                                                                   \
    for (p = 0; p < np; p++) {                                                          \
        ncols = p == np - 1 ? last_cols : NR;                                           \
        for (i = 0; i < mr; i++) {                                                      \
            T* Ci = C + i * ldc + p * NR;                                               \
            if (ncols == NR && overwrite) {                                             \
                for (q = 0; q < NV; q++)                                                \
                    *(clstm_kvu_##SFX*)(Ci + q * V) = acc[i][p * NV + q];               \
            } else if (ncols == NR) {                                                   \
                for (q = 0; q < NV; q++)                                                \
                    *(clstm_kvu_##SFX*)(Ci + q * V) += acc[i][p * NV + q];              \
            } else {                                                                    \
                memcpy(out, &acc[i][p * NV], sizeof(out));                              \
                for (c = 0; c < ncols; c++)                                             \
                    Ci[c] = overwrite ? out[c] : Ci[c] + out[c];                        \
            }                                                                           \
        }                                                                               \
    }                                                                                   \
}                                                                                       \
                                                                                        \
CLSTM_HEIGHTS(CLSTM_DEFINE_DRIVER, T, SFX, MR, ACC, VB)                                 \
                                                                                        \
/* C[n, N] += A[n, K] @ W.T with W packed by clstm_pack_panels, its panels ldw rows     \
   apart (the K of the packed matrix; a K range starting at k0 starts at Wp + k0 *      \
   NR); flags: CLSTM_PGEMM_OVERWRITE, C = A @ W.T (C is only written: no pass to        \
   zero it first, no read of what it held); CLSTM_PGEMM_DESCENDING. Panel by panel,     \
   K cut into chunks of KC: the chunk every row tile streams (KC * 128 bytes) stays     \
   in L1 for all the tiles (unchunked, a panel of a long K comes from L2 or memory      \
   once per tile of rows), and so does the panel's block of C (n * 128 bytes),          \
   finished before the next panel (chunks outermost sent all of C through L2 once       \
   per chunk; docs/performance.md, "Issue 19"). The rows are cut into the fewest        \
   tiles of at most MR rows (6 when K < KC and n > 64, measured faster only there:      \
   docs/performance.md, "Issue 19, sixth pass"), of even heights (13 rows: 7 and 6,     \
   not 12 and 1, whose one row would wait on its two chains); 1-3 rows are one tile     \
   over np panels. A tile of more than 8 rows whose rows of A are a multiple of 4 KB    \
   apart reads them from one set of an 8-way L1 (Zen 4's), which cannot keep them all:  \
   then A is copied, a cache line more apart, to this thread's scratch                  \
   (docs/performance.md, "Issue 19, twelfth pass"). */                                  \
static void clstm_pgemm_##SFX(Py_ssize_t n, Py_ssize_t N, Py_ssize_t K, const T* A,     \
                             Py_ssize_t lda, const T* Wp, Py_ssize_t ldw, T* C,         \
                             Py_ssize_t ldc, int flags) {                               \
    const Py_ssize_t rows = MR > 6 && K < CLSTM_PGEMM_KC && n > 64 ? 6 : MR;            \
    const Py_ssize_t tiles = (n + rows - 1) / rows;                                     \
    const Py_ssize_t ld = K + 64 / sizeof(T);                                           \
    const size_t bytes = (size_t)n * ld * sizeof(T);                                    \
    T* copy;                                                                            \
    Py_ssize_t i;                                                                       \
    if (n <= 0)                                                                         \
        return;                                                                         \
    if ((n + tiles - 1) / tiles > 8 && lda * sizeof(T) % 4096 == 0                      \
            && bytes <= CLSTM_PGEMM_COPY_BYTES                                          \
            && (copy = (T*)clstm_thread_scratch(bytes)) != NULL) {                      \
        for (i = 0; i < n; i++)                                                         \
            memcpy(copy + i * ld, A + i * lda, K * sizeof(T));                          \
        A = copy;                                                                       \
        lda = ld;                                                                       \
    }                                                                                   \
    switch ((n + tiles - 1) / tiles) {  /* the tallest tile */                          \
    CLSTM_HEIGHTS(CLSTM_DRIVER_CASE, SFX, (n, N, K, A, lda, Wp, ldw, C, ldc, flags,     \
                                           tiles))                                      \
    }                                                                                   \
}

/* Tile heights, for X-macros: each has its own driver (below). */
#define CLSTM_HEIGHTS(X, ...)                                                           \
    X(1, __VA_ARGS__) X(2, __VA_ARGS__) X(3, __VA_ARGS__) X(4, __VA_ARGS__)             \
    X(5, __VA_ARGS__) X(6, __VA_ARGS__) X(7, __VA_ARGS__) X(8, __VA_ARGS__)             \
    X(9, __VA_ARGS__) X(10, __VA_ARGS__) X(11, __VA_ARGS__) X(12, __VA_ARGS__)
#define CLSTM_DRIVER_CASE(H, SFX, ARGS)                                                 \
    case H:                                                                             \
        clstm_pgemm_##SFX##_##H ARGS;                                                   \
        break;
/* The loops of clstm_pgemm for products whose tiles have H rows, the last of them H - 1
   (the even cut), on one panel; or one tile of H <= 3 rows on np panels. One function per
   H, its tiles inlined with their sizes as constants (accumulators in registers) and no
   call per tile: with all heights in one function GCC kept every height's row offsets
   live at once and spilled them inside the 12-row tiles' inner loops, and a call per
   tile cost up to 10% at B = 1 (docs/performance.md, "Issue 19, sixth pass"). A height
   a kernel of MR rows never reaches is still defined (as 1 row), never called. */
#define CLSTM_DEFINE_DRIVER(H, T, SFX, MR, ACC, VB)                                     \
static __attribute__((noinline)) void clstm_pgemm_##SFX##_##H(                          \
        Py_ssize_t n, Py_ssize_t N, Py_ssize_t K, const T* A, Py_ssize_t lda,           \
        const T* Wp, Py_ssize_t ldw, T* C, Py_ssize_t ldc, int flags,                   \
        Py_ssize_t tiles) {                                                             \
    enum { NR = 128 / sizeof(T), HI = (H) <= (MR) ? (H) : 1, LO = HI > 1 ? HI - 1 : 1,  \
           FIT = ACC / (HI * (128 / VB)),  /* panels within the accumulator budget */   \
           NPMAX = HI >= 4 || FIT < 1 ? 1 : CLSTM_WIDE_##SFX < FIT ? CLSTM_WIDE_##SFX   \
                                                                     : FIT };           \
    const Py_ssize_t KC = CLSTM_PGEMM_KC, panels = (N + NR - 1) / NR;                   \
    const int np = tiles == 1 ? NPMAX : 1;  /* panels per tile */                       \
    const Py_ssize_t groups = (panels + np - 1) / np;                                   \
    const int overwrite = flags & CLSTM_PGEMM_OVERWRITE;                                \
    /* the first tile's prefetch: 1 into L1, 2 into L2 as well (from L3) */              \
    const int fetch = (double)ldw * panels * 128 > CLSTM_PGEMM_L2_BYTES ? 2 : 1;        \
    Py_ssize_t g, jb, i, t, h, k0, kc, cols;                                            \
    int set, group;                                                                     \
    for (g = 0; g < groups; g++) {                                                      \
        jb = (flags & CLSTM_PGEMM_DESCENDING ? groups - 1 - g : g) * np;                \
        group = panels - jb < np ? (int)(panels - jb) : np;                             \
        cols = N - (jb + group - 1) * NR < NR ? N - (jb + group - 1) * NR : NR;         \
        for (k0 = 0; k0 < K; k0 += KC) {                                                \
            const T* panel = Wp + (jb * ldw + k0) * NR;                                 \
            kc = K - k0 < KC ? K - k0 : KC;                                             \
            set = overwrite && k0 == 0;                                                 \
            for (t = 0, i = 0; t < tiles; t++, i += h) {                                \
                const T* a = A + k0 + i * lda;                                          \
                T* c = C + jb * NR + i * ldc;                                           \
                h = n / tiles + (t < n % tiles);                                        \
                if (h != HI)                                                            \
                    clstm_tile_##SFX(LO, 1, kc, a, lda, panel, ldw * NR, c, ldc, cols,  \
                                     set, t == 0 && LO >= 4 ? fetch : 0);               \
                else if (NPMAX >= 4 && group == 4)                                      \
                    clstm_tile_##SFX(HI, NPMAX >= 4 ? 4 : 1, kc, a, lda, panel,         \
                                     ldw * NR, c, ldc, cols, set, 0);                   \
                else if (NPMAX >= 3 && group == 3)                                      \
                    clstm_tile_##SFX(HI, NPMAX >= 3 ? 3 : 1, kc, a, lda, panel,         \
                                     ldw * NR, c, ldc, cols, set, 0);                   \
                else if (NPMAX >= 2 && group == 2)                                      \
                    clstm_tile_##SFX(HI, NPMAX >= 2 ? 2 : 1, kc, a, lda, panel,         \
                                     ldw * NR, c, ldc, cols, set, 0);                   \
                else                                                                    \
                    clstm_tile_##SFX(HI, 1, kc, a, lda, panel, ldw * NR, c, ldc, cols,  \
                                     set, t == 0 && HI >= 4 ? fetch : 0);               \
            }                                                                           \
        }                                                                               \
    }                                                                                   \
}

CLSTM_DEFINE_PACK(float, f32, int)
CLSTM_DEFINE_PACK(double, f64, long long)

/* The sum of a[0, n) (a bias gradient: a column of dG, transposed into a row), in vector
   partial sums and then lanes: a fixed order, whichever thread adds it up. */
#define CLSTM_DEFINE_SUM(T, SFX)                                                        \
CLSTM_CLONES static T clstm_sum_##SFX(const T* a, Py_ssize_t n) {                       \
    enum { V = 64 / sizeof(T) };                                                        \
    clstm_v_##SFX acc[4] = {{0}};                                                       \
    Py_ssize_t k = 0;                                                                   \
    T total = 0;                                                                        \
    int q;                                                                              \
    for (; k + 4 * V <= n; k += 4 * V)                                                  \
        for (q = 0; q < 4; q++)                                                         \
            acc[q] += *(const clstm_vu_##SFX*)(a + k + q * V);                          \
    acc[0] += acc[1];                                                                   \
    acc[2] += acc[3];                                                                   \
    acc[0] += acc[2];                                                                   \
    for (q = 0; q < V; q++)                                                             \
        total += acc[0][q];                                                             \
    for (; k < n; k++)                                                                  \
        total += a[k];                                                                  \
    return total;                                                                       \
}

CLSTM_DEFINE_SUM(float, f32)
CLSTM_DEFINE_SUM(double, f64)

/* One kernel per instruction set, chosen once at run time (target_clones would compile
   one source for all, and the register budget differs). Without multi-versioning
   (another compiler or OS, or CLSTM_NO_TARGET_CLONES) only the base kernel exists,
   shaped for what the build flags enable. */
#if defined(__AVX512F__)
CLSTM_DEFINE_KERNEL(float, base_f32, 64, 12, 16)
CLSTM_DEFINE_KERNEL(double, base_f64, 64, 12, 16)
#elif defined(__AVX2__)
CLSTM_DEFINE_KERNEL(float, base_f32, 32, 3, 8)
CLSTM_DEFINE_KERNEL(double, base_f64, 32, 3, 8)
#elif defined(__aarch64__)
/* AVX2's shape before it had 3 rows: 3 rows were measured on x86 only (NEON has no
   32-byte vectors, and GCC moves these through the stack there with 2 rows or 3). */
CLSTM_DEFINE_KERNEL(float, base_f32, 32, 2, 8)
CLSTM_DEFINE_KERNEL(double, base_f64, 32, 2, 8)
#else
CLSTM_DEFINE_KERNEL(float, base_f32, 16, 1, 8)
CLSTM_DEFINE_KERNEL(double, base_f64, 16, 1, 8)
#endif

#if CLSTM_ISA_KERNELS && !defined(__clang__)
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
CLSTM_DEFINE_KERNEL(float, v4_f32, 64, 12, 16)
CLSTM_DEFINE_KERNEL(double, v4_f64, 64, 12, 16)
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
CLSTM_DEFINE_KERNEL(float, v3_f32, 32, 3, 8)
CLSTM_DEFINE_KERNEL(double, v3_f64, 32, 3, 8)
#pragma GCC pop_options

/* 2: x86-64-v4, 1: x86-64-v3, 0: older. CLSTM_ISA=v3 or =base picks a lower kernel
   (the tests run every kernel this way on one machine). */
static int clstm_isa_level(void) {
    static int level = -1;  /* every thread computes the same value: a benign race */
    const char* forced;
    int cpu;
    if (level < 0) {
        __builtin_cpu_init();
        cpu = __builtin_cpu_supports("x86-64-v4") ? 2
              : __builtin_cpu_supports("x86-64-v3") ? 1 : 0;
        forced = getenv("CLSTM_ISA");
        level = forced == NULL ? cpu : strcmp(forced, "base") == 0 ? 0
                : strcmp(forced, "v3") == 0 && cpu >= 1 ? 1 : cpu;
    }
    return level;
}
#define CLSTM_DISPATCH(SFX, ARGS) \
    switch (clstm_isa_level()) { \
    case 2: clstm_pgemm_v4_##SFX ARGS; break; \
    case 1: clstm_pgemm_v3_##SFX ARGS; break; \
    default: clstm_pgemm_base_##SFX ARGS; }
#else
static int clstm_isa_level(void) { return 0; }
#define CLSTM_DISPATCH(SFX, ARGS) clstm_pgemm_base_##SFX ARGS;
#endif

static void clstm_pgemm_f32(Py_ssize_t n, Py_ssize_t N, Py_ssize_t K, const float* A,
                            Py_ssize_t lda, const float* Wp, Py_ssize_t ldw, float* C,
                            Py_ssize_t ldc, int flags) {
    CLSTM_DISPATCH(f32, (n, N, K, A, lda, Wp, ldw, C, ldc, flags))
}
static void clstm_pgemm_f64(Py_ssize_t n, Py_ssize_t N, Py_ssize_t K, const double* A,
                            Py_ssize_t lda, const double* Wp, Py_ssize_t ldw, double* C,
                            Py_ssize_t ldc, int flags) {
    CLSTM_DISPATCH(f64, (n, N, K, A, lda, Wp, ldw, C, ldc, flags))
}

static Py_ssize_t clstm_packed_size_f32(Py_ssize_t N, Py_ssize_t K) {
    return (N + CLSTM_NR_f32 - 1) / CLSTM_NR_f32 * CLSTM_NR_f32 * K;
}
static Py_ssize_t clstm_packed_size_f64(Py_ssize_t N, Py_ssize_t K) {
    return (N + CLSTM_NR_f64 - 1) / CLSTM_NR_f64 * CLSTM_NR_f64 * K;
}

#endif /* CLSTM_PGEMM_H */
