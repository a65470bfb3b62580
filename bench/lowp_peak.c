/* The machine's multiply-add ceilings for the low-precision kernels (csrc/lowp.h), as
   bench/fma_peak.c measures float32's: independent chains on registers only, one thread and
   all, best of five. MAC/s (multiply-adds per second) for each form:

       gcc -O2 -march=native -fopenmp bench/lowp_peak.c -o /tmp/lowp_peak && /tmp/lowp_peak

   float32 FMA (vfmadd, 16 MACs per 64-byte vector), int8 vpdpbusd (AVX512_VNNI, 64 MACs),
   bfloat16 vdpbf16ps (AVX512_BF16, 32 MACs); and where the compiler targets AMX (-march
   on a CPU with it) and the OS grants the tile state, AMX tdpbusd and tdpbf16ps. Needs a
   CPU with both AVX-512 extensions. */
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

#if defined(__AMX_INT8__) && defined(__AMX_BF16__)
#include <sys/syscall.h>
#include <unistd.h>
#define AMX 1

/* AMX (csrc/amx.h): tdpbusd (16 x 64 u8 by 64 x 16 s8 into 16 x 16 int32, 16384 MACs) and
   tdpbf16ps (8192), on four independent C tiles from two A and two B tiles that stay
   loaded: the tile unit's own rate, per instruction 'macs' below; chains = 4. */
static float run_amx(long rounds, int bf16) {
    struct {
        unsigned char palette, start_row, reserved[14];
        unsigned short colsb[16];
        unsigned char rows[16];
    } __attribute__((aligned(64))) cfg = {1, 0, {0}, {0}, {0}};
    static unsigned char ab[4][16][64];
    int32_t out[16][16];
    for (int t = 0; t < 8; t++) {
        cfg.rows[t] = 16;
        cfg.colsb[t] = 64;
    }
    __asm__ volatile("" : : "m"(cfg) : "memory");  /* GCC does not see ldtilecfg read it */
    _tile_loadconfig(&cfg);
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    _tile_loadd(4, ab[0], 64); _tile_loadd(5, ab[1], 64);
    _tile_loadd(6, ab[2], 64); _tile_loadd(7, ab[3], 64);
    for (long k = 0; k < rounds; k++)
        if (bf16) {
            _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
        } else {
            _tile_dpbusd(0, 4, 6); _tile_dpbusd(1, 4, 7);
            _tile_dpbusd(2, 5, 6); _tile_dpbusd(3, 5, 7);
        }
    _tile_stored(0, out, 64);
    _tile_release();
    return (float)out[0][0];
}
#else
#define AMX 0
static float run_amx(long rounds, int bf16) { return (float)(rounds + bf16); }
#endif

int main(void) {
    const long rounds = 10000000;
    const char* names[5] = {"float32 FMA", "int8 vpdpbusd", "bfloat16 vdpbf16ps",
                            "int8 AMX tdpbusd", "bfloat16 AMX tdpbf16ps"};
    /* per instruction, times chains: CHAINS vector chains, or 4 C tiles (rounds / 64) */
    const double macs[5] = {16.0 * CHAINS, 64.0 * CHAINS, 32.0 * CHAINS,
                            16384.0 * 4 / 64, 8192.0 * 4 / 64};
    int forms = 3;
#if AMX
    /* the tile data permission is per process (ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) */
    if (syscall(SYS_arch_prctl, 0x1023, 18) == 0)
        forms = 5;
#endif
    int max_threads = omp_get_max_threads(), counts[2] = {1, max_threads};
    float sink = 0;
    for (int f = 0; f < forms; f++)
        for (int c = 0; c < (max_threads > 1 ? 2 : 1); c++) {
            double best = 0;
            for (int run = 0; run < 5; run++) {
                double t0 = now();
#pragma omp parallel num_threads(counts[c]) reduction(+ : sink)
                sink += f == 0 ? run_fp32(rounds) : f == 1 ? run_int8(rounds)
                        : f == 2 ? run_bf16(rounds) : run_amx(rounds / 64, f == 4);
                double g = counts[c] * macs[f] * rounds / (now() - t0) / 1e9;
                best = g > best ? g : best;
            }
            printf("%-20s %d thread%s: %6.1f GMAC/s\n", names[f], counts[c],
                   counts[c] > 1 ? "s" : "", best);
        }
    return sink == 12345.0f;
}
