/* The int8 product on Intel AMX tiles (included by lowp.h after its kernels).

   Why: `tdpbusd` multiplies a 16 x 64 u8 tile by a 64 x 16 s8 tile into 16 x 16 int32 sums
   in one instruction, several times the multiply-adds per cycle of `vpdpbusd`, so the
   int8 products with many rows (the hoisted input projection, the per-step product at
   large batch) stop being bound by the vector units.

   The same bits as every other kernel: the sums are integers, exact in any order, and the
   float epilogue below is the one of lowp.h's int8 tile (the same operations in the same
   order, uncontracted), so the AMX kernel needs no layout or emulation of its own.

   Layout: lowp.h's panels already are AMX B tiles. A panel row group g is NR columns x 4 k
   (128 bytes); sixteen consecutive groups (64 k) with a row stride of 128 bytes are the B
   tile of the panel's first 16 columns, and the same rows from byte 64 on are the B tile of
   its last 16. A tiles are 16 rows of 64 quantised bytes of A, row stride the padded row.

   Tails. K: A's rows are padded with zeros up to a multiple of 64, so a B tile may run past
   the panel's groups (into the next panel: any value times zero adds nothing); for the last
   panel of W, whose next bytes are not ours, the last chunk is first copied into a zeroed
   buffer. Rows: a product of fewer than 16 rows configures A and C tiles of that many
   rows; else the block's rows are padded with zero rows up to a multiple of 16 (their sums
   are computed and dropped). Columns: a partial panel goes through lowp.h's buffer
   path (only its columns are written).

   Tile state: the permission to use the tile registers is per process (asked once, at
   kernel selection, with arch_prctl); the tile configuration is per thread, so every call
   loads it and releases the tiles when done (a thread that does not use AMX again then
   does not carry the tile state through context switches). */
#ifndef CLSTM_AMX_H
#define CLSTM_AMX_H

#if CLSTM_ISA_KERNELS && !defined(__clang__)
#define CLSTM_HAVE_AMX 1
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

enum {
    CLSTM_AMX_KB = 64,   /* k per A tile row (bytes) and per B tile (16 groups of 4) */
    CLSTM_AMX_MR = 16,   /* rows per A / C tile */
    CLSTM_AMX_PERM = 0x1023,    /* ARCH_REQ_XCOMP_PERM */
    CLSTM_AMX_XTILEDATA = 18    /* XFEATURE_XTILEDATA */
};

/* CPUID's AMX-TILE and AMX-INT8 bits, the OS saving the tile state (XCR0 bits 17 and 18),
   and the kernel granting this process the tile data state: all three or no AMX. */
static int clstm_amx_usable(void) {
    unsigned a, b, c, d, xcr0_lo, xcr0_hi;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 24)) || !(d & (1u << 25)))
        return 0;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27)))  /* OSXSAVE: xgetbv works */
        return 0;
    __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    (void)xcr0_hi;
    if ((xcr0_lo & (3u << 17)) != (3u << 17))
        return 0;
    return syscall(SYS_arch_prctl, CLSTM_AMX_PERM, CLSTM_AMX_XTILEDATA) == 0;
}

/* The palette 1 tile configuration (64 bytes, as ldtilecfg reads it). */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((aligned(64))) clstm_amx_config;

#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4,avx512vnni,amx-tile,amx-int8,amx-bf16")
#include <immintrin.h>

/* Tiles: 0-3 the 2 x 2 C block (rows r, r + 16 by the panel's two column halves), 4-5 the
   two A tiles, 6-7 the two B tiles; C and A tiles of `rows` rows. */
static inline void clstm_amx_begin(int rows) {
    clstm_amx_config cfg;
    int t;
    memset(&cfg, 0, sizeof(cfg));
    cfg.palette = 1;
    for (t = 0; t < 8; t++) {
        cfg.rows[t] = t < 6 ? rows : CLSTM_AMX_MR;
        cfg.colsb[t] = 64;
    }
    /* GCC does not see ldtilecfg read the struct and drops the stores above without this */
    __asm__ volatile("" : : "m"(cfg) : "memory");
    _tile_loadconfig(&cfg);
}

static inline void clstm_amx_end(void) { _tile_release(); }

/* Rows [0, n) of A for the tiles: lowp.h's u8 quantiser (clstm_lowp_quantize_u8_*) in
   AVX-512 instructions, value for value: min/max and the clamps as vminps/vmaxps (which,
   like the selects there, return their second operand for a NaN, and +0 against -0), the
   rounding as a round-to-nearest-even conversion (the magic-number sum there). Fewer
   instructions per value, where the vector ports are shared with the tile unit's loads. */
static void clstm_amx_quantize_u8(Py_ssize_t n, Py_ssize_t K, const float* A, Py_ssize_t lda,
                                  uint8_t* qa, Py_ssize_t ldq, float* sa, int32_t* za) {
    enum { V = 16 };
    Py_ssize_t i, k;
    int l;
    for (i = 0; i < n; i++) {
        const float* a = A + i * lda;
        uint8_t* q = qa + i * ldq;
        __m512 vlo[4], vhi[4], x, vinv, vz;
        float lo = 0, hi = 0, s, inv, zf;
        for (l = 0; l < 4; l++)
            vlo[l] = vhi[l] = _mm512_setzero_ps();
        for (k = 0; k + 4 * V <= K; k += 4 * V)
            for (l = 0; l < 4; l++) {
                x = _mm512_loadu_ps(a + k + l * V);
                vlo[l] = _mm512_min_ps(x, vlo[l]);
                vhi[l] = _mm512_max_ps(x, vhi[l]);
            }
        for (; k + V <= K; k += V) {
            x = _mm512_loadu_ps(a + k);
            vlo[0] = _mm512_min_ps(x, vlo[0]);
            vhi[0] = _mm512_max_ps(x, vhi[0]);
        }
        vlo[0] = _mm512_min_ps(_mm512_min_ps(vlo[1], vlo[0]), _mm512_min_ps(vlo[3], vlo[2]));
        vhi[0] = _mm512_max_ps(_mm512_max_ps(vhi[1], vhi[0]), _mm512_max_ps(vhi[3], vhi[2]));
        lo = _mm512_reduce_min_ps(vlo[0]);  /* no NaN in the lanes: any order */
        hi = _mm512_reduce_max_ps(vhi[0]);
        lo = lo < 0 ? lo : 0;  /* a -0 lane: the generic code keeps its +0 start */
        hi = hi > 0 ? hi : 0;
        for (; k < K; k++) {
            lo = a[k] < lo ? a[k] : lo;
            hi = a[k] > hi ? a[k] : hi;
        }
        s = (hi - lo) / 255.0f;
        if (!(s > 0) || s > 3.0e38f)  /* all zero, or not finite: any scale will do */
            s = 1.0f;
        inv = 1.0f / s;
        zf = (-lo * inv + CLSTM_RNE_MAGIC) - CLSTM_RNE_MAGIC;
        zf = zf > 0 ? (zf < 255.0f ? zf : 255.0f) : 0.0f;
        vinv = _mm512_set1_ps(inv);
        vz = _mm512_set1_ps(zf);
        for (k = 0; k + V <= K; k += V) {
            x = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(a + k), vinv), vz);
            x = _mm512_min_ps(_mm512_max_ps(x, _mm512_setzero_ps()), _mm512_set1_ps(255.0f));
            _mm_storeu_si128((__m128i*)(q + k), _mm512_cvtepi32_epi8(_mm512_cvt_roundps_epi32(
                x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)));
        }
        for (; k < K; k++) {
            float y = a[k] * inv + zf;
            y = y > 0 ? (y < 255.0f ? y : 255.0f) : 0.0f;
            q[k] = (uint8_t)(int)((y + CLSTM_RNE_MAGIC) - CLSTM_RNE_MAGIC);
        }
        memset(q + K, 0, ldq - K);
        sa[i] = s;
        za[i] = (int32_t)zf;
    }
}

/* A strip's sums waiting for their epilogue: rows of acc (row stride NR) with scales sa
   and zero points za, against the columns [0, ncols) of C with scales sw and column sums
   colsum; overwrite: C = 0 + the epilogue (the bits of zeroing C first, -0 becoming +0)
   without reading C. rows 0: nothing waits. */
typedef struct {
    int rows, overwrite, bf16;  /* bf16: acc holds float sums, C (+)= acc, nothing else */
    const int32_t* acc;
    const float *sa, *sw;
    const int32_t *za, *colsum;
    float* C;
    Py_ssize_t ldc, ncols;
} clstm_amx_pending;

/* One row of the epilogue: v0, v1 (the panel's two halves) from the int32 sums at acc. */
#define CLSTM_AMX_ROW_VALUES(r)                                                          \
    __m512 s = _mm512_set1_ps(p->sa[r]);                                                \
    __m512i z = _mm512_set1_epi32(p->za[r]);                                            \
    __m512 v0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(                      \
        _mm512_load_si512(p->acc + (r) * NR), _mm512_mullo_epi32(z, cs0))),             \
        _mm512_mul_ps(s, sw0));                                                         \
    __m512 v1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(                      \
        _mm512_load_si512(p->acc + (r) * NR + 16), _mm512_mullo_epi32(z, cs1))),        \
        _mm512_mul_ps(s, sw1));

/* The epilogue of rows [r0, r1) of p: the arithmetic of lowp.h's int8 tile, operation for
   operation (each case its own loop, so the whole-panel ones stay in registers). */
static inline __attribute__((always_inline)) void clstm_amx_epilogue(
        const clstm_amx_pending* p, int r0, int r1) {
    enum { NR = CLSTM_LOWP_NR };
    const __m512i cs0 = _mm512_loadu_si512(p->colsum), cs1 = _mm512_loadu_si512(p->colsum + 16);
    const __m512 sw0 = _mm512_loadu_ps(p->sw), sw1 = _mm512_loadu_ps(p->sw + 16);
    float* C = p->C;
    const Py_ssize_t ldc = p->ldc, ncols = p->ncols;
    float out[NR];
    Py_ssize_t k;
    int r;
    if (ncols == NR && p->overwrite) {
        for (r = r0; r < r1; r++) {
            CLSTM_AMX_ROW_VALUES(r)
            _mm512_storeu_ps(C + r * ldc, _mm512_add_ps(_mm512_setzero_ps(), v0));
            _mm512_storeu_ps(C + r * ldc + 16, _mm512_add_ps(_mm512_setzero_ps(), v1));
        }
    } else if (ncols == NR) {
        for (r = r0; r < r1; r++) {
            CLSTM_AMX_ROW_VALUES(r)
            _mm512_storeu_ps(C + r * ldc, _mm512_add_ps(_mm512_loadu_ps(C + r * ldc), v0));
            _mm512_storeu_ps(C + r * ldc + 16,
                             _mm512_add_ps(_mm512_loadu_ps(C + r * ldc + 16), v1));
        }
    } else {
        for (r = r0; r < r1; r++) {
            CLSTM_AMX_ROW_VALUES(r)
            _mm512_storeu_ps(out, v0);
            _mm512_storeu_ps(out + 16, v1);
            for (k = 0; k < ncols; k++)
                C[r * ldc + k] = (p->overwrite ? 0.0f : C[r * ldc + k]) + out[k];
        }
    }
}

/* The bfloat16 epilogue of rows [r0, r1) of p: C + the float sums (overwrite: 0 + them,
   the bits of zeroing C first), as lowp.h's bfloat16 tile ends. */
static inline __attribute__((always_inline)) void clstm_amx_epilogue_bf16(
        const clstm_amx_pending* p, int r0, int r1) {
    enum { NR = CLSTM_LOWP_NR };
    const float* acc = (const float*)p->acc;
    float* C = p->C;
    const Py_ssize_t ldc = p->ldc, ncols = p->ncols;
    const __m512 base = _mm512_setzero_ps();
    Py_ssize_t k;
    int r;
    if (ncols == NR) {
        for (r = r0; r < r1; r++) {
            float* c = C + r * ldc;
            __m512 c0 = p->overwrite ? base : _mm512_loadu_ps(c);
            __m512 c1 = p->overwrite ? base : _mm512_loadu_ps(c + 16);
            _mm512_storeu_ps(c, _mm512_add_ps(c0, _mm512_load_ps(acc + r * NR)));
            _mm512_storeu_ps(c + 16, _mm512_add_ps(c1, _mm512_load_ps(acc + r * NR + 16)));
        }
    } else {
        for (r = r0; r < r1; r++)
            for (k = 0; k < ncols; k++)
                C[r * ldc + k] = (p->overwrite ? 0.0f : C[r * ldc + k]) + acc[r * NR + k];
    }
}

/* C tile c += A tile a @ B tile b: bfloat16 pairs or uint8 x int8 quads (the tile numbers
   are immediates, hence a macro) */
#define CLSTM_AMX_DOT(bf16, c, a, b) \
    do { if (bf16) _tile_dpbf16ps(c, a, b); else _tile_dpbusd(c, a, b); } while (0)

/* One 16- or 32-row strip of quantised A (two: two A tiles) against one panel: the sums of
   all K chunks in the C tiles. The epilogue of the previous strip (p) is done in slices
   between the chunks, so that part of it overlaps the tile multiply (done right after its
   own strip, it overlaps nothing: measured at many rows). */
static inline __attribute__((always_inline)) void clstm_amx_strip(
        int bf16, int two, const uint8_t* qi, Py_ssize_t ldq, const int8_t* panel,
        Py_ssize_t nkc, const int8_t* tail_b, const clstm_amx_pending* p) {
    enum { NR = CLSTM_LOWP_NR, GB = CLSTM_AMX_KB / 4 };
    const int slice = (int)((p->rows + nkc - 1) / nkc);
    Py_ssize_t kc;
    int done = 0;
    _tile_zero(0);
    _tile_zero(1);
    if (two) {
        _tile_zero(2);
        _tile_zero(3);
    }
    for (kc = 0; kc < nkc; kc++) {
        const int8_t* b = kc == nkc - 1 && tail_b != NULL ? tail_b : panel + kc * GB * NR * 4;
        const uint8_t* a = qi + kc * CLSTM_AMX_KB;
        _tile_loadd(4, a, ldq);
        _tile_loadd(6, b, NR * 4);
        _tile_loadd(7, b + 64, NR * 4);
        CLSTM_AMX_DOT(bf16, 0, 4, 6);
        CLSTM_AMX_DOT(bf16, 1, 4, 7);
        if (two) {
            _tile_loadd(5, a + CLSTM_AMX_MR * ldq, ldq);
            CLSTM_AMX_DOT(bf16, 2, 5, 6);
            CLSTM_AMX_DOT(bf16, 3, 5, 7);
        }
        if (done < p->rows) {
            int end = done + slice < p->rows ? done + slice : p->rows;
            if (bf16)
                clstm_amx_epilogue_bf16(p, done, end);
            else
                clstm_amx_epilogue(p, done, end);
            done = end;
        }
    }
}

/* The C tiles to acc (32 x NR int32; rows 16-31 only for two A tiles). */
static inline __attribute__((always_inline)) void clstm_amx_store(int two, int32_t* acc) {
    enum { NR = CLSTM_LOWP_NR };
    _tile_stored(0, acc, NR * 4);
    _tile_stored(1, acc + 16, NR * 4);
    if (two) {
        _tile_stored(2, acc + CLSTM_AMX_MR * NR, NR * 4);
        _tile_stored(3, acc + CLSTM_AMX_MR * NR + 16, NR * 4);
    }
}

/* Rows [0, n) of quantised A, qa (rows padded with zero rows to a multiple of 16, each
   padded with zeros to ldq bytes, a multiple of 64), against the columns [col0, col0 +
   ncols) of W (overwrite: C = the product). The caller has loaded the tile configuration.
   Panels outside, strips of 32 rows inside (as lowp.h's kernels): a panel is read from
   memory once per block and its strips find it in L1. A strip's epilogue runs during the
   next strip's multiply. */
static void clstm_amx_block_i8(const clstm_lowp_weights* W, Py_ssize_t n, Py_ssize_t col0,
                               Py_ssize_t ncols, const uint8_t* qa, Py_ssize_t ldq,
                               const float* sa, const int32_t* za, float* C, Py_ssize_t ldc,
                               int overwrite) {
    enum { NR = CLSTM_LOWP_NR, GB = CLSTM_AMX_KB / 4, SR = 2 * CLSTM_AMX_MR };
    const Py_ssize_t Kg = clstm_lowp_groups(CLSTM_LOWP_INT8, W->K), nkc = ldq / CLSTM_AMX_KB;
    const Py_ssize_t last = clstm_lowp_padded_n(W->N) / NR - 1;
    int32_t acc[2][SR * NR] __attribute__((aligned(64)));
    int8_t tail[GB * NR * 4] __attribute__((aligned(64)));
    const int8_t* tail_b = NULL;
    clstm_amx_pending p = {0, overwrite, 0, NULL, NULL, NULL, NULL, NULL, NULL, ldc, 0};
    Py_ssize_t i, j;
    int cur = 0;
    if (Kg % GB != 0) {  /* the last panel's last chunk, zero past its groups */
        memset(tail, 0, sizeof(tail));
        memcpy(tail, (const int8_t*)W->panels + (last * Kg + (nkc - 1) * GB) * NR * 4,
               (Kg % GB) * NR * 4);
        tail_b = tail;
    }
    for (j = 0; j < ncols; j += NR) {
        const Py_ssize_t col = col0 + j;
        const int8_t* panel = (const int8_t*)W->panels + (col / NR) * Kg * NR * 4;
        for (i = 0; i < n; i += SR) {
            const int two = n - i > CLSTM_AMX_MR;
            clstm_amx_strip(0, two, qa + i * ldq, ldq, panel, nkc,
                            col / NR == last ? tail_b : NULL, &p);
            clstm_amx_store(two, acc[cur]);
            p.rows = n - i < SR ? (int)(n - i) : SR;
            p.acc = acc[cur];
            p.sa = sa + i;
            p.za = za + i;
            p.sw = W->scale + col;
            p.colsum = W->colsum + col;
            p.C = C + i * ldc + j;
            p.ncols = ncols - j < NR ? ncols - j : NR;
            cur ^= 1;
        }
    }
    if (p.rows)
        clstm_amx_epilogue(&p, 0, p.rows);
}

/* Rows [0, n) of A rounded to bfloat16 for the tiles: clstm_to_bf16 value for value (the
   integer rounding of lowp.h's bfloat16 quantisers, NaN kept quiet), rows padded with
   zeros to ldq halves (a multiple of 32). */
static void clstm_amx_quantize_bf16(Py_ssize_t n, Py_ssize_t K, const float* A,
                                    Py_ssize_t lda, uint16_t* qa, Py_ssize_t ldq) {
    Py_ssize_t i, k;
    const __m512i one = _mm512_set1_epi32(1), round = _mm512_set1_epi32(0x7fff);
    const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
    const __m512i quiet = _mm512_set1_epi32(0x40);
    for (i = 0; i < n; i++) {
        const float* a = A + i * lda;
        uint16_t* q = qa + i * ldq;
        for (k = 0; k + 16 <= K; k += 16) {
            __m512i u = _mm512_loadu_si512(a + k);
            __m512i hi = _mm512_srli_epi32(u, 16);
            __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, round),
                                                           _mm512_and_si512(hi, one)), 16);
            __mmask16 nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(u, abs_mask), inf);
            r = _mm512_mask_or_epi32(r, nan, hi, quiet);
            _mm256_storeu_si256((__m256i*)(q + k), _mm512_cvtepi32_epi16(r));
        }
        for (; k < K; k++)
            q[k] = clstm_to_bf16(a[k]);
        memset(q + K, 0, (ldq - K) * 2);
    }
}

/* Rows [0, n) of bfloat16 A, qa (rows padded with zero rows to a multiple of 16, each
   padded with zeros to ldq halves, a multiple of 32), against the columns [col0, col0 +
   ncols) of W (overwrite: C = the product): the tiles of clstm_amx_block_i8 with
   tdpbf16ps (a chunk is 32 k: 16 groups of 2). Each panel's last chunk, when the panel
   ends inside it, is read from a zero-padded copy: past the panel lie other columns'
   weights, and zero times an infinite or NaN weight would not add nothing. */
static void clstm_amx_block_bf16(const clstm_lowp_weights* W, Py_ssize_t n, Py_ssize_t col0,
                                 Py_ssize_t ncols, const uint16_t* qa, Py_ssize_t ldq,
                                 float* C, Py_ssize_t ldc, int overwrite) {
    enum { NR = CLSTM_LOWP_NR, GB = CLSTM_AMX_KB / 4, SR = 2 * CLSTM_AMX_MR };
    const Py_ssize_t Kg = clstm_lowp_groups(CLSTM_LOWP_BF16, W->K);
    const Py_ssize_t ldb = ldq * 2, nkc = ldb / CLSTM_AMX_KB;
    float acc[2][SR * NR] __attribute__((aligned(64)));
    int8_t tail[GB * NR * 4] __attribute__((aligned(64)));
    clstm_amx_pending p = {0, overwrite, 1, NULL, NULL, NULL, NULL, NULL, NULL, ldc, 0};
    Py_ssize_t i, j;
    int cur = 0;
    if (Kg % GB != 0)
        memset(tail, 0, sizeof(tail));
    for (j = 0; j < ncols; j += NR) {
        const Py_ssize_t col = col0 + j;
        const int8_t* panel = (const int8_t*)W->panels + (col / NR) * Kg * NR * 4;
        const int8_t* tail_b = NULL;
        if (Kg % GB != 0) {  /* the previous strip's epilogue reads acc, never tail */
            memcpy(tail, panel + (nkc - 1) * GB * NR * 4, (Kg % GB) * NR * 4);
            tail_b = tail;
        }
        for (i = 0; i < n; i += SR) {
            const int two = n - i > CLSTM_AMX_MR;
            clstm_amx_strip(1, two, (const uint8_t*)(qa + i * ldq), ldb, panel, nkc, tail_b,
                            &p);
            clstm_amx_store(two, (int32_t*)acc[cur]);
            p.rows = n - i < SR ? (int)(n - i) : SR;
            p.acc = (const int32_t*)acc[cur];
            p.C = C + i * ldc + j;
            p.ncols = ncols - j < NR ? ncols - j : NR;
            cur ^= 1;
        }
    }
    if (p.rows)
        clstm_amx_epilogue_bf16(&p, 0, p.rows);
}

#pragma GCC pop_options
#else
#define CLSTM_HAVE_AMX 0
#endif

#endif /* CLSTM_AMX_H */
