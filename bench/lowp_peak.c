/* The machine's multiply-add ceilings for the low-precision kernels (csrc/lowp.h), as
   bench/fma_peak.c measures float32's: independent chains on registers only, one thread and
   all, best of five. MAC/s (multiply-adds per second) for each form:

       gcc -O2 -march=native -fopenmp bench/lowp_peak.c -o /tmp/lowp_peak && /tmp/lowp_peak

   float32 FMA (vfmadd, 16 MACs per 64-byte vector), int8 vpdpbusd (AVX512_VNNI, 64 MACs),
   bfloat16 vdpbf16ps (AVX512_BF16, 32 MACs). Needs a CPU with both extensions. */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <time.h>

enum { CHAINS = 12 };

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static float run_fp32(long rounds) {
    __m512 acc[CHAINS], m = _mm512_set1_ps(1.0000001f), a = _mm512_set1_ps(1e-7f);
    float s = 0;
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_set1_ps((float)i);
    for (long k = 0; k < rounds; k++)
#pragma GCC unroll 12
        for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_fmadd_ps(acc[i], m, a);
    for (int i = 0; i < CHAINS; i++) s += _mm512_reduce_add_ps(acc[i]);
    return s;
}

static float run_int8(long rounds) {
    __m512i acc[CHAINS], a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-2);
    long long s = 0;
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_set1_epi32(i);
    for (long k = 0; k < rounds; k++)
#pragma GCC unroll 12
        for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_dpbusd_epi32(acc[i], a, b);
    for (int i = 0; i < CHAINS; i++) s += _mm512_reduce_add_epi32(acc[i]);
    return (float)s;
}

static float run_bf16(long rounds) {
    __m512 acc[CHAINS];
    __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3380);
    float s = 0;
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_set1_ps((float)i);
    for (long k = 0; k < rounds; k++)
#pragma GCC unroll 12
        for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
    for (int i = 0; i < CHAINS; i++) s += _mm512_reduce_add_ps(acc[i]);
    return s;
}

int main(void) {
    const long rounds = 10000000;
    const char* names[3] = {"float32 FMA", "int8 vpdpbusd", "bfloat16 vdpbf16ps"};
    const int macs[3] = {16, 64, 32};
    int max_threads = omp_get_max_threads(), counts[2] = {1, max_threads};
    float sink = 0;
    for (int f = 0; f < 3; f++)
        for (int c = 0; c < (max_threads > 1 ? 2 : 1); c++) {
            double best = 0;
            for (int run = 0; run < 5; run++) {
                double t0 = now();
#pragma omp parallel num_threads(counts[c]) reduction(+ : sink)
                sink += f == 0 ? run_fp32(rounds) : f == 1 ? run_int8(rounds) : run_bf16(rounds);
                double g = counts[c] * (double)CHAINS * macs[f] * rounds / (now() - t0) / 1e9;
                best = g > best ? g : best;
            }
            printf("%-20s %d thread%s: %6.1f GMAC/s\n", names[f], counts[c],
                   counts[c] > 1 ? "s" : "", best);
        }
    return sink == 12345.0f;
}
