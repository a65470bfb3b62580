/* Read bandwidth per thread by working-set size: whether a weight matrix of a given size
   streams from L2, L3 or memory fast enough for the time loop's products (docs/performance.md,
   "Issue 19, third pass"). Each thread sums its own array of 1-32 MB with 64-byte loads,
   best of 20 passes, on 1 thread and on 2.

       gcc -O2 -march=native -fopenmp bench/read_bandwidth.c -o /tmp/read_bandwidth \
           && /tmp/read_bandwidth */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* GB/s of the best of 20 passes over n bytes; the empty asm keeps every load */
static double passes(const float* a, size_t n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    double best = 0;
    for (int r = 0; r < 20; r++) {
        double t = now();
        for (size_t i = 0; i < n / 4; i += 64) {
            __asm__ volatile("" ::: "memory");
            s0 = _mm512_add_ps(s0, _mm512_load_ps(a + i));
            s1 = _mm512_add_ps(s1, _mm512_load_ps(a + i + 16));
            s2 = _mm512_add_ps(s2, _mm512_load_ps(a + i + 32));
            s3 = _mm512_add_ps(s3, _mm512_load_ps(a + i + 48));
        }
        __asm__ volatile("" : "+v"(s0), "+v"(s1), "+v"(s2), "+v"(s3)::"memory");
        t = now() - t;
        best = n / t / 1e9 > best ? n / t / 1e9 : best;
    }
    return best;
}

int main(void) {
    for (int mb = 1; mb <= 32; mb *= 2)
        for (int threads = 1; threads <= 2; threads++) {
            size_t n = (size_t)mb << 20;
            double worst = 1e30;
#pragma omp parallel num_threads(threads) reduction(min : worst)
            {
                float* a = aligned_alloc(64, n);
                for (size_t i = 0; i < n / 4; i++)
                    a[i] = 1;
                worst = passes(a, n);
                free(a);
            }
            printf("%2d MB per thread, %d thread%s: %6.1f GB/s per thread\n", mb, threads,
                   threads > 1 ? "s" : "", worst);
        }
    return 0;
}
