/* The packed GEMM alone at the time loop's shapes: each step's C[B, 4H] += h[B, H] @ w_hh.T,
   w_hh packed once (csrc/pgemm.h), C a fresh block of a T-step buffer at every step (as the
   time loop adds into the input projection, written long before), on 1 thread and as the
   driver's two 2-thread splits: "batch" (each thread half the rows, all of w_hh) and
   "units" (each thread all the rows, half of each gate block's columns).

       gcc -O3 -fopenmp -I src/clstm bench/pgemm_micro.c -o /tmp/pgemm_micro && /tmp/pgemm_micro

   Prints GFLOP/s, the best of five passes over the T steps. docs/performance.md ("Issue 19")
   has what it measured and what each change to pgemm.h did to it. */
#include <omp.h>
#include <stdio.h>
#include <sys/types.h>
#include <time.h>

typedef ssize_t Py_ssize_t; /* pgemm.h is included by Cython modules, after Python.h */
#include "csrc/pgemm.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

enum { SERIAL, BATCH, UNITS };

/* One step of the split on row block [b0, b1) and hidden units [j0, j1) of each gate. */
static void step(Py_ssize_t B, Py_ssize_t H, const float* h, const float* Wp, float* C,
                 int split, int part) {
    Py_ssize_t G = 4 * H, b0 = 0, b1 = B, j0 = 0, j1 = H, q;
    if (split == BATCH) {
        b0 = part * B / 2;
        b1 = (part + 1) * B / 2;
    }
    if (split == UNITS) {
        j0 = part * H / 64 * 32;  /* whole panels: multiples of 32 columns */
        j1 = part ? H : H / 64 * 32;
        for (q = 0; q < 4; q++)
            clstm_pgemm_f32(B, j1 - j0, H, h, H, Wp + (q * H + j0) * H, H, C + q * H + j0, G,
                            0);
        return;
    }
    clstm_pgemm_f32(b1 - b0, G, H, h + b0 * H, H, Wp, H, C + b0 * G, G, 0);
}

/* The operands of C[m_c, N] (+)= A[m_a, K] @ W.T: W packed (then dropped), A and C
   filled with fixed values. */
typedef struct {
    float *Wp, *A, *C;
} operands;

static operands make_operands(Py_ssize_t m_a, Py_ssize_t m_c, Py_ssize_t N, Py_ssize_t K) {
    float* w = aligned_alloc(64, N * K * sizeof(float));
    operands o = {aligned_alloc(64, clstm_packed_size_f32(N, K) * sizeof(float)),
                  aligned_alloc(64, m_a * K * sizeof(float)),
                  aligned_alloc(64, m_c * N * sizeof(float))};
    Py_ssize_t i;
    for (i = 0; i < N * K; i++)
        w[i] = (float)(i % 13) * 0.01f;
    for (i = 0; i < m_a * K; i++)
        o.A[i] = (float)(i % 11) * 0.01f;
    for (i = 0; i < m_c * N; i++)
        o.C[i] = 0.5f;
    clstm_pack_panels_f32(w, N, K, 0, o.Wp, 0, clstm_panels_f32(N));
    free(w);
    return o;
}

static void free_operands(operands o) {
    free(o.Wp);
    free(o.A);
    free(o.C);
}

static double gflops(Py_ssize_t B, Py_ssize_t H, Py_ssize_t T, int split) {
    Py_ssize_t G = 4 * H, i;
    operands o = make_operands(B, T * B, G, H);  /* A: h, C: T steps' gates */
    double best = 1e30, t0;
    int pass;
    for (pass = 0; pass < 5; pass++) {
        t0 = now();
        if (split == SERIAL) {
            for (i = 0; i < T; i++)
                step(B, H, o.A, o.Wp, o.C + i * B * G, SERIAL, 0);
        } else {
#pragma omp parallel num_threads(2) private(i)
            for (i = 0; i < T; i++) {
                step(B, H, o.A, o.Wp, o.C + i * B * G, split, omp_get_thread_num());
#pragma omp barrier
            }
        }
        t0 = now() - t0;
        best = t0 < best ? t0 : best;
    }
    free_operands(o);
    return 2.0 * B * G * H * T / best / 1e9;
}

/* A big product as par_pgemm runs it on one thread: C[M, N] = A[M, K] @ W.T in blocks of
   64 rows (the input projection, dx and the weight gradients). */
static double blocks_gflops(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K) {
    operands o = make_operands(M, M, N, K);
    double best = 1e30, t0;
    Py_ssize_t r;
    int pass;
    for (pass = 0; pass < 5; pass++) {
        t0 = now();
        for (r = 0; r < M; r += 64)
            clstm_pgemm_f32(M - r < 64 ? M - r : 64, N, K, o.A + r * K, K, o.Wp, K,
                            o.C + r * N, N, CLSTM_PGEMM_OVERWRITE);
        t0 = now() - t0;
        best = t0 < best ? t0 : best;
    }
    free_operands(o);
    return 2.0 * M * N * K / best / 1e9;
}

int main(void) {
    static const Py_ssize_t big[][3] = {  /* M, N, K */
        {3200, 2048, 512}, {3200, 512, 2048}, {800, 4096, 1024}, {800, 1024, 4096},
        {6400, 1024, 256}, {51200, 512, 128}};
    static const Py_ssize_t shapes[][3] = {  /* B, H, T */
        {16, 1024, 25}, {32, 1024, 25}, {64, 1024, 25}, {32, 512, 50},
        {64, 512, 50},  {64, 256, 100}, {256, 128, 200}};
    size_t s;
    printf("GFLOP/s of the per-step product (best of 5 passes over T steps)\n");
    printf("%5s %5s %4s  %8s  %8s  %8s\n", "B", "H", "T", "1 thread", "batch@2", "units@2");
    for (s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
        Py_ssize_t B = shapes[s][0], H = shapes[s][1], T = shapes[s][2];
        printf("%5zd %5zd %4zd  %8.1f  %8.1f  %8.1f\n", B, H, T, gflops(B, H, T, SERIAL),
               gflops(B, H, T, BATCH), gflops(B, H, T, UNITS));
    }
    printf("GFLOP/s of a big product in 64-row blocks, 1 thread (best of 5)\n");
    printf("%6s %5s %5s  %8s\n", "M", "N", "K", "1 thread");
    for (s = 0; s < sizeof(big) / sizeof(big[0]); s++)
        printf("%6zd %5zd %5zd  %8.1f\n", big[s][0], big[s][1], big[s][2],
               blocks_gflops(big[s][0], big[s][1], big[s][2]));
    return 0;
}
