/* The machine's float32 multiply-add ceiling, to put the benchmark's GFLOP/s in proportion:
   independent FMA chains on registers only (no memory traffic), on 1 thread and on all.

       gcc -O2 -march=native -fopenmp bench/fma_peak.c -o /tmp/fma_peak && /tmp/fma_peak

   Twelve chains of one register each cover the FMA latency of every current x86 core. The
   vector is the widest the target has registers for: 64 bytes with AVX-512, 32 otherwise
   (twelve 64-byte chains are 24 halves on an AVX2 core, more than its 16 registers, and
   the spills measured a tenth of the ceiling). Prints the best of five runs per thread
   count. */
#include <omp.h>
#include <stdio.h>
#include <time.h>

#ifdef __AVX512F__
enum { VECTOR_BYTES = 64 };
#else
enum { VECTOR_BYTES = 32 };
#endif
typedef float vec __attribute__((vector_size(VECTOR_BYTES)));
enum { CHAINS = 12, LANES = VECTOR_BYTES / 4 };

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static float chains(long rounds) {
    vec acc[CHAINS], mul, add;
    float sum = 0;
    for (int l = 0; l < LANES; l++) {
        mul[l] = 1.0000001f;
        add[l] = 1e-7f;
    }
    for (int i = 0; i < CHAINS; i++)
        for (int l = 0; l < LANES; l++)
            acc[i][l] = (float)i;
    for (long k = 0; k < rounds; k++) {
#pragma GCC unroll 12
        for (int i = 0; i < CHAINS; i++)
            acc[i] = acc[i] * mul + add;  /* contracted to one FMA (GCC's default) */
    }
    for (int i = 0; i < CHAINS; i++)
        for (int l = 0; l < LANES; l++)
            sum += acc[i][l];
    return sum;
}

int main(void) {
    const long rounds = 20000000;
    int max_threads = omp_get_max_threads();
    float sink = 0;
    int counts[2] = {1, max_threads};
    for (int c = 0; c < (max_threads > 1 ? 2 : 1); c++) {
        int threads = counts[c];
        double best = 0;
        for (int run = 0; run < 5; run++) {
            double t0 = now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
            sink += chains(rounds);
            double gflops = threads * 2.0 * CHAINS * LANES * rounds / (now() - t0) / 1e9;
            best = gflops > best ? gflops : best;
        }
        printf("%d thread%s: %.1f GFLOP/s float32 FMA peak\n", threads, threads > 1 ? "s" : "",
               best);
    }
    return sink == 12345.0f;  /* keeps the chains live */
}
