/* Low-precision packed GEMM for inference: int8 and bfloat16 weights, float32 in and out.

   C[n, cols] += A[n, K] @ W[col0 : col0 + cols].T, A and C float32, W packed once.

   Why: at the large sizes the float32 step is at the machine's multiply-add ceiling, and at
   B = 1 it is bound by reading w_hh from cache. `vpdpbusd` (AVX512_VNNI) does four u8 x s8
   multiply-adds per 32-bit lane and `vdpbf16ps` (AVX512_BF16) two bf16 ones, where an fp32
   FMA does one; and int8 weights are a quarter of the bytes.

   int8 ("int8"): each weight row c (an output column of C) is quantised symmetrically,
   q_w = rint(w / s_w[c]) in [-127, 127], s_w[c] = max|w[c, :]| / 127. Each row i of A is
   quantised dynamically per call (asymmetric, so x_t of any sign uses all 256 levels):
   s_a = (hi - lo) / 255 with lo = min(0, min a), hi = max(0, max a), zero point
   z = clamp(rint(-lo * inv), 0, 255), q_a = rint(clamp(a * inv + z, 0, 255)) with
   inv = 1 / s_a (float32 throughout), so a ~ s_a (q_a - z) to within s_a / 2. Then

       C[i, c] += (float)(sum_k q_a[i, k] q_w[c, k] - z_i * colsum[c]) * (s_a[i] * s_w[c])

   with colsum[c] = sum_k q_w[c, k] computed at packing. The integer sum is exact: u8 x s8
   products summed in int32 lanes (|term| <= 255 * 127, exact for K < 66000), never the
   int16 pairs of `vpmaddubsw`, which saturate on full-range values. The float epilogue is
   written without contraction into FMAs (fp-contract off below), so every kernel gives the
   same bits, and a NumPy emulation in float32 gives them too.

   bfloat16 ("bfloat16"): weights and each A row rounded to bfloat16 (nearest even), products
   accumulated in float32 in `vdpbf16ps`'s order: per 32-bit lane, the odd k of the pair
   first, then the even one (a bf16 x bf16 product is exact in float32, so each is one
   rounding). KS accumulator sets take turns over the pairs (chains enough to cover the
   latency), the same KS for every tile height, so a row's result does not depend on its
   tile or thread.

   bfloat16 on AMX tiles (amx.h; the default where the AMX kernel runs, CLSTM_AMX_BF16=0
   turns it off): tdpbf16ps is several times faster, but it does not round as a chain of
   float32 multiply-adds in any order, so no vector kernel can give its bits at a cost
   worth paying: on an AMX machine bfloat16 results are AMX's bits (the same on every
   path, tile and thread count), elsewhere the vector kernels' (the same as the NumPy
   emulation's). The two agree to float32 rounding. Probed on an AMX Xeon (a KVM
   guest): within one instruction (32 k) products are aligned in blocks of four
   consecutive k (a term far below the block's largest is lost before a cancellation
   that would have kept it, where it survives in another block), the blocks are combined
   with roundings of their own, then the chunk is added to the accumulator; bfloat16
   subnormal inputs count as zero, and subnormal sums are flushed (the caller's C is added
   afterwards, as by the other kernels). Its error stays within a few float32 roundings
   per chunk (tests: amx_bf16_bound).

   Packed layout (both formats): panel jb holds output columns [jb*NR, (jb+1)*NR), NR = 32,
   as groups of KQ consecutive k (KQ = 4 int8, 2 bf16: one 32-bit lane), so that one vector
   load gives 16 columns x KQ k (AVX-512):

       Wp[((jb * Kg + g) * NR + c) * KQ + q] = W[jb*NR + c, g*KQ + q]   (zero past N or K)

   Kg = ceil(K / KQ). Scales and column sums are stored for the padded column count.

   Kernels: one per instruction set, chosen at run time (`clstm_lowp_kernel`) consistently
   with pgemm.h's `clstm_isa_level` and CLSTM_ISA: AVX512_VNNI / AVX512_BF16 where present,
   AVX_VNNI (256-bit vpdpbusd) for int8 on CPUs with it and AVX2, and portable fallbacks
   (vector extensions at the x86-64-v4, -v3 and baseline levels, int8 widened to int32
   multiplies, bf16 widened to float32 FMAs: slower, the same bits). CLSTM_ISA=v4 forces
   the AVX-512 fallback (no VNNI/BF16), =avxvnni the 256-bit VNNI kernel (if the CPU has it),
   =v3 AVX2 and =base the baseline. */
#ifndef CLSTM_LOWP_H
#define CLSTM_LOWP_H

#include <math.h>
#include "config.h"
#include "pgemm.h"

#if CLSTM_ISA_KERNELS && !defined(__clang__)
#include <immintrin.h>
#endif

enum {
    CLSTM_LOWP_INT8 = 1,
    CLSTM_LOWP_BF16 = 2,
    CLSTM_LOWP_NR = 32,        /* output columns per panel: float32's, so work splits cut
                                  the hidden units at the same places (clstm._dispatch) */
    CLSTM_LOWP_ROW_BYTES = 65536 /* quantised rows of A kept on the stack per row block:
                                    64 rows of 1024 int8, W streamed once per 64 rows */
};

typedef struct {
    int format;          /* CLSTM_LOWP_INT8 or CLSTM_LOWP_BF16 */
    Py_ssize_t N, K;     /* W is (N, K) */
    const void* panels;  /* int8_t (int8) or uint16_t (bf16), the layout above */
    const float* scale;  /* int8: s_w per padded column */
    const int32_t* colsum;  /* int8: sum_k q_w per padded column */
} clstm_lowp_weights;

/* k values per 32-bit lane, padded sizes, bytes of the panels */
static inline Py_ssize_t clstm_lowp_kq(int format) { return format == CLSTM_LOWP_INT8 ? 4 : 2; }
static inline Py_ssize_t clstm_lowp_groups(int format, Py_ssize_t K) {
    return (K + clstm_lowp_kq(format) - 1) / clstm_lowp_kq(format);
}
static inline Py_ssize_t clstm_lowp_padded_n(Py_ssize_t N) {
    return (N + CLSTM_LOWP_NR - 1) / CLSTM_LOWP_NR * CLSTM_LOWP_NR;
}
static Py_ssize_t clstm_lowp_panel_bytes(int format, Py_ssize_t N, Py_ssize_t K) {
    return clstm_lowp_padded_n(N) * clstm_lowp_groups(format, K) * 4;
}

/* Round-to-nearest-even float32 -> bfloat16 bits (NaN stays a quiet NaN). */
static inline uint16_t clstm_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* rint(x) clamped to [lo, hi], as an int; NaN gives lo (never undefined conversion). */
static inline int clstm_clamp_rint(float x, float lo, float hi) {
    float r = nearbyintf(x);
    r = r > lo ? r : lo;  /* NaN compares false: lo */
    r = r < hi ? r : hi;
    return (int)r;
}

/* Quantise and pack W (N, K) row-major float32. int8: scale, colsum (padded N each). */
static void clstm_lowp_pack(int format, const float* W, Py_ssize_t N, Py_ssize_t K,
                            void* panels, float* scale, int32_t* colsum) {
    const Py_ssize_t NR = CLSTM_LOWP_NR, KQ = clstm_lowp_kq(format);
    const Py_ssize_t Kg = clstm_lowp_groups(format, K), Np = clstm_lowp_padded_n(N);
    Py_ssize_t c, k, g, q, jb;
    memset(panels, 0, clstm_lowp_panel_bytes(format, N, K));
    for (c = 0; c < Np; c++) {
        const float* w = W + c * K;
        float s = 0, amax = 0;
        int32_t sum = 0;
        jb = c / NR;
        if (format == CLSTM_LOWP_INT8) {
            if (c < N)
                for (k = 0; k < K; k++)
                    amax = fabsf(w[k]) > amax ? fabsf(w[k]) : amax;
            s = amax / 127.0f;
            scale[c] = s;
        }
        if (c >= N) {
            if (format == CLSTM_LOWP_INT8)
                colsum[c] = 0;
            continue;
        }
        for (g = 0; g < Kg; g++)
            for (q = 0; q < KQ && g * KQ + q < K; q++) {
                Py_ssize_t at = ((jb * Kg + g) * NR + c % NR) * KQ + q;
                k = g * KQ + q;
                if (format == CLSTM_LOWP_INT8) {
                    int v = s > 0 ? clstm_clamp_rint(w[k] / s, -127.0f, 127.0f) : 0;
                    ((int8_t*)panels)[at] = (int8_t)v;
                    sum += v;
                } else {
                    ((uint16_t*)panels)[at] = clstm_to_bf16(w[k]);
                }
            }
        if (format == CLSTM_LOWP_INT8)
            colsum[c] = sum;
    }
}

/* Round to nearest even for |x| < 2^22 (the quantiser's range after clamping): adding and
   subtracting 1.5 * 2^23 leaves x's integer part, rounded in the current (nearest even)
   mode. Vector code, unlike rintf, which the baseline cannot vectorise; np.rint agrees. */
#define CLSTM_RNE_MAGIC 12582912.0f

/* The multiply-add of one 32-bit lane group: acc (VB bytes of int32 or float lanes) +=
   the KQ products of a (one 32-bit lane of A, broadcast) with w (VB bytes of W lanes).
   Portable forms widen each byte/half to 32 bits (exact); the instruction forms are the
   same arithmetic in one instruction. */
#define CLSTM_DOT_I8_PORTABLE(VI, acc, a32, w)                                          \
    do {                                                                                \
        VI w32_ = (VI)(w);                                                              \
        acc += (int32_t)((a32) & 0xff) * ((w32_ << 24) >> 24)                           \
             + (int32_t)(((a32) >> 8) & 0xff) * ((w32_ << 16) >> 24)                    \
             + (int32_t)(((a32) >> 16) & 0xff) * ((w32_ << 8) >> 24)                    \
             + (int32_t)((a32) >> 24) * (w32_ >> 24);                                   \
    } while (0)
#define CLSTM_DOT_I8_VNNI512(VI, acc, a32, w)                                           \
    acc = (VI)_mm512_dpbusd_epi32((__m512i)acc, _mm512_set1_epi32((int)(a32)), (__m512i)(w))
#define CLSTM_DOT_I8_AVXVNNI(VI, acc, a32, w)                                           \
    acc = (VI)_mm256_dpbusd_avx_epi32((__m256i)acc, _mm256_set1_epi32((int)(a32)),      \
                                      (__m256i)(w))

/* bf16 pair: odd k first, then even (vdpbf16ps's order). A bf16 as float is its bits
   shifted up 16; the products are exact, so the portable FMA or multiply-add agree. */
#define CLSTM_DOT_BF16_PORTABLE(VF, VI, acc, a32, w)                                    \
    do {                                                                                \
        VI w32_ = (VI)(w);                                                              \
        VI w_hi_ = w32_ & (int32_t)0xffff0000u, w_lo_ = w32_ << 16;                    \
        uint32_t a_hi_bits_ = (a32) & 0xffff0000u, a_lo_bits_ = (a32) << 16;           \
        float a_hi_, a_lo_;                                                             \
        memcpy(&a_hi_, &a_hi_bits_, 4);                                                 \
        memcpy(&a_lo_, &a_lo_bits_, 4);                                                 \
        acc = acc + a_hi_ * (VF)w_hi_;                                                  \
        acc = acc + a_lo_ * (VF)w_lo_;                                                  \
    } while (0)
/* acc + a * w (a scalar broadcast): one FMA where the kernel has them (a product of two
   bfloat16 values is exact, so it rounds as the multiply-add does), else both. */
#define CLSTM_FMA_PLAIN(VF, acc, a, w) ((acc) + (a) * (w))
#define CLSTM_FMA_512(VF, acc, a, w)                                                    \
    ((VF)_mm512_fmadd_ps(_mm512_set1_ps(a), (__m512)(w), (__m512)(acc)))
#define CLSTM_DOT_BF16_512(VF, VI, acc, a32, w)                                         \
    acc = (VF)_mm512_dpbf16_ps((__m512)acc, (__m512bh)_mm512_set1_epi32((int)(a32)),    \
                               (__m512bh)(w))

/* One group (k pair) G of the float-A bfloat16 tile into accumulator set S: W widened
   once, then every row's two FMAs per vector. */
#define CLSTM_LOWP_BF16F_GROUP(SFX, FMA, G, S)                                          \
    {                                                                                   \
        for (q = 0; q < NV; q++) {                                                      \
            w = *(const clstm_lvu_##SFX*)(panel + (G) * NR + q * V);                    \
            w_hi[q] = (clstm_lvf_##SFX)(w & (int32_t)0xffff0000u);                      \
            w_lo[q] = (clstm_lvf_##SFX)(w << 16);                                       \
        }                                                                               \
        for (i = 0; i < mr; i++) {                                                      \
            float a_hi = qf[i * ldf + 2 * (G) + 1], a_lo = qf[i * ldf + 2 * (G)];       \
            for (q = 0; q < NV; q++) {                                                  \
                acc[S][i][q] = FMA(clstm_lvf_##SFX, acc[S][i][q], a_hi, w_hi[q]);       \
                acc[S][i][q] = FMA(clstm_lvf_##SFX, acc[S][i][q], a_lo, w_lo[q]);       \
            }                                                                           \
        }                                                                               \
    }

/* The end of a bfloat16 tile (float accumulators, KS sets): the sets summed in one order,
   then added into C (a partial panel through a buffer). */
#define CLSTM_LOWP_BF16_TILE_ADD(SFX, KS)                                               \
    for (s = 1; s < KS; s++)                                                            \
        for (i = 0; i < mr; i++)                                                        \
            for (q = 0; q < NV; q++)                                                    \
                acc[0][i][q] += acc[s][i][q];                                           \
    for (i = 0; i < mr; i++) {                                                          \
        if (ncols == NR) {                                                              \
            for (q = 0; q < NV; q++)                                                    \
                *(clstm_lvfu_##SFX*)(C + i * ldc + q * V) += acc[0][i][q];              \
        } else {                                                                        \
            memcpy(out, &acc[0][i][0], sizeof(out));                                    \
            for (c = 0; c < ncols; c++)                                                 \
                C[i * ldc + c] += out[c];                                               \
        }                                                                               \
    }

/* A tile of constant height H (a literal, so its accumulators stay in registers) at row i
   of the block, the tail of a block as one tile (as pgemm.h). int8 sums are exact in any
   order, so its tiles of 1-2 rows take 4 accumulator sets (chains enough to cover the
   vpdpbusd latency); bfloat16 keeps KS for every height (the same bits in every tile). */
#define CLSTM_LOWP_TILE_I8(SFX, H) clstm_lowp_tile_i8_##SFX(H, H <= 2 ? 4 : 2, Kg, qi, ldq, \
    sa + i, za + i, panel, W->scale + col, W->colsum + col, Cj + i * ldc, ldc, nc)
#define CLSTM_LOWP_TILE_BF16(SFX, H) clstm_lowp_tile_bf16_##SFX(H, Kg, qi, ldq, panel,      \
    Cj + i * ldc, ldc, nc)
#define CLSTM_LOWP_TILE_BF16F(SFX, H) clstm_lowp_tile_bf16f_##SFX(H, Kg, qi, ldf, panel,    \
    Cj + i * ldc, ldc, nc)
#define CLSTM_LOWP_BY_HEIGHT(MR, m, TILE, SFX)                                          \
    if (m == MR) TILE(SFX, MR);                                                         \
    else if (MR > 5 && m == 5) TILE(SFX, 5);                                            \
    else if (MR > 4 && m == 4) TILE(SFX, 4);                                            \
    else if (MR > 3 && m == 3) TILE(SFX, 3);                                            \
    else if (MR > 2 && m == 2) TILE(SFX, 2);                                            \
    else TILE(SFX, 1);

/* One kernel per instruction set: SFX names it, VB is its vector width in bytes, MR its
   tile height, KS its accumulator sets. NV = NR * 4 / VB vectors per panel
   row group. Rows of A arrive quantised: qa (n, ldq) as 32-bit lanes. The quantisers are
   per instruction set too (vector code: at B = 1 they are a step's only work besides the
   multiply). */
#define CLSTM_DEFINE_LOWP_KERNEL(SFX, VB, MR, KS, DOT_I8, DOT_BF16, FMA, FMA_ROWS)      \
typedef int32_t clstm_lvi_##SFX __attribute__((vector_size(VB)));                       \
typedef int32_t clstm_lvu_##SFX __attribute__((vector_size(VB), aligned(4)));           \
typedef uint32_t clstm_lvw_##SFX __attribute__((vector_size(VB)));                      \
typedef float clstm_lvf_##SFX __attribute__((vector_size(VB)));                         \
typedef float clstm_lvfu_##SFX __attribute__((vector_size(VB), aligned(4)));            \
typedef uint8_t clstm_lvb_##SFX __attribute__((vector_size(VB / 4), aligned(1)));       \
typedef uint16_t clstm_lvh_##SFX __attribute__((vector_size(VB / 2), aligned(2)));      \
                                                                                        \
/* Select by mask (all ones / zeros per lane): portable vector code for min, max, clamp. */ \
static inline __attribute__((always_inline)) clstm_lvf_##SFX clstm_lsel_##SFX(          \
        clstm_lvi_##SFX m, clstm_lvf_##SFX a, clstm_lvf_##SFX b) {                     \
    return (clstm_lvf_##SFX)((m & (clstm_lvi_##SFX)a) | (~m & (clstm_lvi_##SFX)b));     \
}                                                                                       \
                                                                                        \
/* Rows [0, n) of A (n, K) for the int8 kernel: qa (n, ldq bytes) u8, sa[i], za[i] (see  \
   the top of the file). The padding is zero, not the zero point: the AMX kernel's B     \
   tiles may run past a panel's groups into weights that are not zero. */               \
static void clstm_lowp_quantize_u8_##SFX(Py_ssize_t n, Py_ssize_t K, const float* A,    \
        Py_ssize_t lda, uint8_t* qa, Py_ssize_t ldq, float* sa, int32_t* za) {          \
    enum { V = VB / 4 };                                                                \
    Py_ssize_t i, k, l;                                                                 \
    for (i = 0; i < n; i++) {                                                           \
        const float* a = A + i * lda;                                                   \
        uint8_t* q = qa + i * ldq;                                                      \
        clstm_lvf_##SFX vlo[4] = {{0}}, vhi[4] = {{0}}, x, r;                           \
        float lo = 0, hi = 0, los[4] = {0}, his[4] = {0}, s, inv, zf;                   \
        /* min and max are the same in any order (NaN never taken, no -0 from the +0    \
           start), so four chains, the lanes too, cover the compare-select latency */   \
        for (k = 0; k + 4 * V <= K; k += 4 * V)                                         \
            for (l = 0; l < 4; l++) {                                                   \
                x = *(const clstm_lvfu_##SFX*)(a + k + l * V);                          \
                vlo[l] = clstm_lsel_##SFX(x < vlo[l], x, vlo[l]);                       \
                vhi[l] = clstm_lsel_##SFX(x > vhi[l], x, vhi[l]);                       \
            }                                                                           \
        for (; k + V <= K; k += V) {                                                    \
            x = *(const clstm_lvfu_##SFX*)(a + k);                                      \
            vlo[0] = clstm_lsel_##SFX(x < vlo[0], x, vlo[0]);                           \
            vhi[0] = clstm_lsel_##SFX(x > vhi[0], x, vhi[0]);                           \
        }                                                                               \
        for (l = 1; l < 4; l++) {                                                       \
            vlo[0] = clstm_lsel_##SFX(vlo[l] < vlo[0], vlo[l], vlo[0]);                 \
            vhi[0] = clstm_lsel_##SFX(vhi[l] > vhi[0], vhi[l], vhi[0]);                 \
        }                                                                               \
        for (l = 0; l < V; l++) {                                                       \
            los[l % 4] = vlo[0][l] < los[l % 4] ? vlo[0][l] : los[l % 4];               \
            his[l % 4] = vhi[0][l] > his[l % 4] ? vhi[0][l] : his[l % 4];               \
        }                                                                               \
        for (l = 0; l < 4; l++) {                                                       \
            lo = los[l] < lo ? los[l] : lo;                                             \
            hi = his[l] > hi ? his[l] : hi;                                             \
        }                                                                               \
        for (; k < K; k++) {                                                            \
            lo = a[k] < lo ? a[k] : lo;                                                 \
            hi = a[k] > hi ? a[k] : hi;                                                 \
        }                                                                               \
        s = (hi - lo) / 255.0f;                                                         \
        if (!(s > 0) || s > 3.0e38f)  /* all zero, or not finite: any scale will do */  \
            s = 1.0f;                                                                   \
        inv = 1.0f / s;                                                                 \
        zf = (-lo * inv + CLSTM_RNE_MAGIC) - CLSTM_RNE_MAGIC;                           \
        zf = zf > 0 ? (zf < 255.0f ? zf : 255.0f) : 0.0f;                               \
        for (k = 0; k + V <= K; k += V) {                                               \
            x = *(const clstm_lvfu_##SFX*)(a + k) * inv + zf;                           \
            /* clamp first (NaN -> 0), then round: values stay where the trick holds */ \
            x = clstm_lsel_##SFX(x > 0.0f, x, (clstm_lvf_##SFX){0});                    \
            x = clstm_lsel_##SFX(x < 255.0f, x, (clstm_lvf_##SFX){0} + 255.0f);         \
            r = (x + CLSTM_RNE_MAGIC) - CLSTM_RNE_MAGIC;                                \
            *(clstm_lvb_##SFX*)(q + k) = __builtin_convertvector(                       \
                __builtin_convertvector(r, clstm_lvi_##SFX), clstm_lvb_##SFX);          \
        }                                                                               \
        for (; k < K; k++) {                                                            \
            float y = a[k] * inv + zf;                                                  \
            y = y > 0 ? (y < 255.0f ? y : 255.0f) : 0.0f;                               \
            q[k] = (uint8_t)(int)((y + CLSTM_RNE_MAGIC) - CLSTM_RNE_MAGIC);             \
        }                                                                               \
        for (; k < ldq; k++)                                                            \
            q[k] = 0;                                                                   \
        sa[i] = s;                                                                      \
        za[i] = (int32_t)zf;                                                            \
    }                                                                                   \
}                                                                                       \
                                                                                        \
/* Rows [0, n) of A rounded to bfloat16 (nearest even; NaN stays NaN): qa (n, ldq      \
   halves), padded with zeros. */                                                       \
static void clstm_lowp_quantize_bf16_##SFX(Py_ssize_t n, Py_ssize_t K, const float* A,  \
        Py_ssize_t lda, uint16_t* qa, Py_ssize_t ldq) {                                 \
    enum { V = VB / 4 };                                                                \
    Py_ssize_t i, k;                                                                    \
    for (i = 0; i < n; i++) {                                                           \
        const float* a = A + i * lda;                                                   \
        uint16_t* q = qa + i * ldq;                                                     \
        for (k = 0; k + V <= K; k += V) {                                               \
            clstm_lvw_##SFX u;                                                          \
            memcpy(&u, a + k, VB);                                                      \
            clstm_lvw_##SFX nan = (clstm_lvw_##SFX)((u & 0x7fffffffu) > 0x7f800000u);   \
            clstm_lvw_##SFX r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;                 \
            r = (nan & ((u >> 16) | 0x40u)) | (~nan & r);                               \
            *(clstm_lvh_##SFX*)(q + k) = __builtin_convertvector(r, clstm_lvh_##SFX);   \
        }                                                                               \
        for (; k < K; k++)                                                              \
            q[k] = clstm_to_bf16(a[k]);                                                 \
        for (; k < ldq; k++)                                                            \
            q[k] = 0;                                                                   \
    }                                                                                   \
}                                                                                       \
                                                                                        \
static inline __attribute__((always_inline)) void clstm_lowp_tile_i8_##SFX(             \
        const int mr, const int ks, Py_ssize_t Kg, const uint32_t* qa, Py_ssize_t ldq,                \
        const float* sa, const int32_t* za, const int32_t* panel, const float* sw,      \
        const int32_t* colsum, float* C, Py_ssize_t ldc, Py_ssize_t ncols) {            \
    enum { NR = CLSTM_LOWP_NR, V = VB / 4, NV = NR / V };                              \
    clstm_lvi_##SFX acc[4][8][NV], w[NV];                                             \
    float out[NR];                                                                      \
    Py_ssize_t g, c;                                                                    \
    int i, s, q;                                                                        \
    for (s = 0; s < ks; s++)                                                            \
        for (i = 0; i < mr; i++)                                                        \
            for (q = 0; q < NV; q++)                                                    \
                acc[s][i][q] = (clstm_lvi_##SFX){0};                                    \
    for (g = 0; g + ks <= Kg; g += ks)                                                  \
        for (s = 0; s < ks; s++) {                                                      \
            for (q = 0; q < NV; q++)                                                    \
                w[q] = *(const clstm_lvu_##SFX*)(panel + (g + s) * NR + q * V);         \
            for (i = 0; i < mr; i++) {                                                  \
                uint32_t a = qa[i * ldq + g + s];                                       \
                for (q = 0; q < NV; q++)                                                \
                    DOT_I8(clstm_lvi_##SFX, acc[s][i][q], a, w[q]);                     \
            }                                                                           \
        }                                                                               \
    for (; g < Kg; g++) {                                                               \
        for (q = 0; q < NV; q++)                                                        \
            w[q] = *(const clstm_lvu_##SFX*)(panel + g * NR + q * V);                   \
        for (i = 0; i < mr; i++) {                                                      \
            uint32_t a = qa[i * ldq + g];                                               \
            for (q = 0; q < NV; q++)                                                    \
                DOT_I8(clstm_lvi_##SFX, acc[0][i][q], a, w[q]);                         \
        }                                                                               \
    }                                                                                   \
    for (s = 1; s < ks; s++)                                                            \
        for (i = 0; i < mr; i++)                                                        \
            for (q = 0; q < NV; q++)                                                    \
                acc[0][i][q] += acc[s][i][q];                                           \
    for (i = 0; i < mr; i++) {                                                          \
        for (q = 0; q < NV; q++) {                                                      \
            clstm_lvi_##SFX cs = *(const clstm_lvu_##SFX*)(colsum + q * V);             \
            clstm_lvf_##SFX scl = sa[i] * *(const clstm_lvfu_##SFX*)(sw + q * V);       \
            clstm_lvf_##SFX v = __builtin_convertvector(acc[0][i][q] - za[i] * cs,      \
                                                        clstm_lvf_##SFX) * scl;         \
            if (ncols == NR)                                                            \
                *(clstm_lvfu_##SFX*)(C + i * ldc + q * V) += v;                         \
            else                                                                        \
                memcpy(out + q * V, &v, VB);                                            \
        }                                                                               \
        if (ncols != NR)                                                                \
            for (c = 0; c < ncols; c++)                                                 \
                C[i * ldc + c] += out[c];                                               \
    }                                                                                   \
}                                                                                       \
                                                                                        \
static inline __attribute__((always_inline)) void clstm_lowp_tile_bf16_##SFX(           \
        const int mr, Py_ssize_t Kg, const uint32_t* qa, Py_ssize_t ldq,                \
        const int32_t* panel, float* C, Py_ssize_t ldc, Py_ssize_t ncols) {             \
    enum { NR = CLSTM_LOWP_NR, V = VB / 4, NV = NR / V };                              \
    clstm_lvf_##SFX acc[KS][8][NV];                                                    \
    clstm_lvi_##SFX w[NV];                                                              \
    float out[NR];                                                                      \
    Py_ssize_t g, c;                                                                    \
    int i, s, q;                                                                        \
    for (s = 0; s < KS; s++)                                                            \
        for (i = 0; i < mr; i++)                                                        \
            for (q = 0; q < NV; q++)                                                    \
                acc[s][i][q] = (clstm_lvf_##SFX){0};                                    \
    for (g = 0; g + KS <= Kg; g += KS)                                                  \
        for (s = 0; s < KS; s++) {                                                      \
            for (q = 0; q < NV; q++)                                                    \
                w[q] = *(const clstm_lvu_##SFX*)(panel + (g + s) * NR + q * V);         \
            for (i = 0; i < mr; i++) {                                                  \
                uint32_t a = qa[i * ldq + g + s];                                       \
                for (q = 0; q < NV; q++)                                                \
                    DOT_BF16(clstm_lvf_##SFX, clstm_lvi_##SFX, acc[s][i][q], a, w[q]);  \
            }                                                                           \
        }                                                                               \
    for (; g < Kg; g++) {                                                               \
        for (q = 0; q < NV; q++)                                                        \
            w[q] = *(const clstm_lvu_##SFX*)(panel + g * NR + q * V);                   \
        for (i = 0; i < mr; i++) {                                                      \
            uint32_t a = qa[i * ldq + g];                                               \
            for (q = 0; q < NV; q++)                                                    \
                DOT_BF16(clstm_lvf_##SFX, clstm_lvi_##SFX, acc[0][i][q], a, w[q]);      \
        }                                                                               \
    }                                                                                   \
    CLSTM_LOWP_BF16_TILE_ADD(SFX, KS)                                                   \
}                                                                                       \
                                                                                        \
/* bfloat16 with A as float32 (its values rounded to bfloat16, so the products are the    \
   same exact ones): W widened to float32 in registers (once per panel row, for all the  \
   tile's rows) and FMAs in vdpbf16ps's order, odd k then even: the same bits as         \
   DOT_BF16. Where vdpbf16ps runs at half the FMA rate (Intel cores: bench/lowp_peak.c)  \
   this is the faster form once a tile has a few rows; FMA_ROWS says from how many. */   \
enum { clstm_lowp_fma_rows_##SFX = FMA_ROWS };                                          \
static inline __attribute__((always_inline)) void clstm_lowp_tile_bf16f_##SFX(          \
        const int mr, Py_ssize_t Kg, const float* qf, Py_ssize_t ldf,                   \
        const int32_t* panel, float* C, Py_ssize_t ldc, Py_ssize_t ncols) {             \
    enum { NR = CLSTM_LOWP_NR, V = VB / 4, NV = NR / V };                              \
    clstm_lvf_##SFX acc[KS][8][NV], w_hi[NV], w_lo[NV];                                 \
    clstm_lvi_##SFX w;                                                                  \
    float out[NR];                                                                      \
    Py_ssize_t g, c;                                                                    \
    int i, s, q;                                                                        \
    for (s = 0; s < KS; s++)                                                            \
        for (i = 0; i < mr; i++)                                                        \
            for (q = 0; q < NV; q++)                                                    \
                acc[s][i][q] = (clstm_lvf_##SFX){0};                                    \
    /* group g + s takes accumulator set s, the trailing groups set 0 (as DOT_BF16) */  \
    for (g = 0; g + KS <= Kg; g += KS)                                                  \
        for (s = 0; s < KS; s++)                                                        \
            CLSTM_LOWP_BF16F_GROUP(SFX, FMA, g + s, s)                                  \
    for (; g < Kg; g++)                                                                 \
        CLSTM_LOWP_BF16F_GROUP(SFX, FMA, g, 0)                                          \
    CLSTM_LOWP_BF16_TILE_ADD(SFX, KS)                                                   \
}                                                                                       \
                                                                                        \
/* Rows [0, n) of A rounded to bfloat16, kept as float32: qf (n, ldf), zero padded. */  \
static void clstm_lowp_quantize_bf16f_##SFX(Py_ssize_t n, Py_ssize_t K, const float* A, \
        Py_ssize_t lda, float* qf, Py_ssize_t ldf) {                                    \
    enum { V = VB / 4 };                                                                \
    Py_ssize_t i, k;                                                                    \
    for (i = 0; i < n; i++) {                                                           \
        const float* a = A + i * lda;                                                   \
        float* q = qf + i * ldf;                                                        \
        for (k = 0; k + V <= K; k += V) {                                               \
            clstm_lvw_##SFX u;                                                          \
            memcpy(&u, a + k, VB);                                                      \
            clstm_lvw_##SFX nan = (clstm_lvw_##SFX)((u & 0x7fffffffu) > 0x7f800000u);   \
            clstm_lvw_##SFX r = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;         \
            r = (nan & (u | 0x400000u)) | (~nan & r);                                   \
            memcpy(q + k, &r, VB);                                                      \
        }                                                                               \
        for (; k < K; k++) {                                                            \
            uint32_t bits = (uint32_t)clstm_to_bf16(a[k]) << 16;                        \
            memcpy(q + k, &bits, 4);                                                    \
        }                                                                               \
        for (; k < ldf; k++)                                                            \
            q[k] = 0;                                                                   \
    }                                                                                   \
}                                                                                       \
                                                                                        \
static void clstm_lowp_block_bf16f_##SFX(const clstm_lowp_weights* W, Py_ssize_t n,     \
        Py_ssize_t col0, Py_ssize_t ncols_all, const float* qf, Py_ssize_t Kg,          \
        float* C, Py_ssize_t ldc) {                                                     \
    const Py_ssize_t NR = CLSTM_LOWP_NR, ldf = 2 * Kg;                                  \
    Py_ssize_t j, i, nc;                                                                \
    for (j = 0; j < ncols_all; j += NR) {                                               \
        Py_ssize_t col = col0 + j;                                                      \
        const int32_t* panel = (const int32_t*)W->panels + (col / NR) * Kg * NR;        \
        float* Cj = C + j;                                                              \
        nc = ncols_all - j < NR ? ncols_all - j : NR;                                   \
        for (i = 0; i < n; i += MR) {                                                   \
            Py_ssize_t m = n - i < MR ? n - i : MR;                                     \
            const float* qi = qf + i * ldf;                                             \
            CLSTM_LOWP_BY_HEIGHT(MR, m, CLSTM_LOWP_TILE_BF16F, SFX)                     \
        }                                                                               \
    }                                                                                   \
}                                                                                       \
                                                                                        \
/* Rows [0, n) of quantised A against panels [jb0, jb1): tiles of MR rows, then the     \
   tail as one constant-height tile (registers, as pgemm.h). */                        \
static void clstm_lowp_block_##SFX(const clstm_lowp_weights* W, Py_ssize_t n,           \
        Py_ssize_t col0, Py_ssize_t ncols_all, const uint32_t* qa, Py_ssize_t ldq,      \
        const float* sa, const int32_t* za, float* C, Py_ssize_t ldc) {                 \
    const Py_ssize_t NR = CLSTM_LOWP_NR, Kg = ldq;                                      \
    const int i8 = W->format == CLSTM_LOWP_INT8;                                        \
    Py_ssize_t j, i, nc;                                                                \
    for (j = 0; j < ncols_all; j += NR) {                                               \
        Py_ssize_t col = col0 + j;                                                      \
        const int32_t* panel = (const int32_t*)W->panels + (col / NR) * Kg * NR;        \
        float* Cj = C + j;                                                              \
        nc = ncols_all - j < NR ? ncols_all - j : NR;                                   \
        for (i = 0; i < n; i += MR) {                                                   \
            Py_ssize_t m = n - i < MR ? n - i : MR;                                     \
            const uint32_t* qi = qa + i * ldq;                                          \
            /* constant heights, so each tile keeps its accumulators in registers */    \
            if (i8) {                                                                   \
                CLSTM_LOWP_BY_HEIGHT(MR, m, CLSTM_LOWP_TILE_I8, SFX)                    \
            } else {                                                                    \
                CLSTM_LOWP_BY_HEIGHT(MR, m, CLSTM_LOWP_TILE_BF16, SFX)                  \
            }                                                                           \
        }                                                                               \
    }                                                                                   \
}

/* Every kernel is compiled without FMA contraction: the int8 epilogue then gives the same
   bits everywhere (and the bf16 products are exact, so nothing is lost). */
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#if defined(__AVX512F__)
CLSTM_DEFINE_LOWP_KERNEL(base, 64, 4, 2, CLSTM_DOT_I8_PORTABLE, CLSTM_DOT_BF16_PORTABLE,
                         CLSTM_FMA_PLAIN, 1 << 30)
#elif defined(__AVX2__) || defined(__aarch64__)
CLSTM_DEFINE_LOWP_KERNEL(base, 32, 2, 2, CLSTM_DOT_I8_PORTABLE, CLSTM_DOT_BF16_PORTABLE,
                         CLSTM_FMA_PLAIN, 1 << 30)
#else
CLSTM_DEFINE_LOWP_KERNEL(base, 16, 1, 2, CLSTM_DOT_I8_PORTABLE, CLSTM_DOT_BF16_PORTABLE,
                         CLSTM_FMA_PLAIN, 1 << 30)
#endif

#if CLSTM_ISA_KERNELS && !defined(__clang__)
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
CLSTM_DEFINE_LOWP_KERNEL(v4, 64, 6, 2, CLSTM_DOT_I8_PORTABLE, CLSTM_DOT_BF16_PORTABLE,
                         CLSTM_FMA_512, 1)
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4,avx512vnni,avx512bf16")
CLSTM_DEFINE_LOWP_KERNEL(vnni512, 64, 6, 2, CLSTM_DOT_I8_VNNI512, CLSTM_DOT_BF16_512,
                         CLSTM_FMA_512, 3)
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3,avxvnni")
CLSTM_DEFINE_LOWP_KERNEL(avxvnni, 32, 1, 2, CLSTM_DOT_I8_AVXVNNI, CLSTM_DOT_BF16_PORTABLE,
                         CLSTM_FMA_PLAIN, 1 << 30)
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
CLSTM_DEFINE_LOWP_KERNEL(v3, 32, 1, 2, CLSTM_DOT_I8_PORTABLE, CLSTM_DOT_BF16_PORTABLE,
                         CLSTM_FMA_PLAIN, 1 << 30)
#pragma GCC pop_options
#endif
#include "amx.h"
#pragma GCC pop_options

enum { CLSTM_LK_BASE = 0, CLSTM_LK_V3 = 1, CLSTM_LK_AVXVNNI = 2, CLSTM_LK_V4 = 3,
       CLSTM_LK_VNNI512 = 4, CLSTM_LK_AMX = 5 };

/* The low-precision kernel for this CPU and CLSTM_ISA (see the top of the file): the
   level of pgemm.h, refined by the VNNI/BF16 extensions x86-64-v4 does not include.
   The VNNI512 kernel needs both AVX512_VNNI and AVX512_BF16 (its bf16 half uses the
   latter); a CPU with only one runs the portable AVX-512 kernel. AMX (amx.h) comes on top
   of VNNI512, by default or with CLSTM_ISA=amx, never with another CLSTM_ISA (so =vnni512
   forces the vector kernel on an AMX machine); it serves int8 products of enough rows, the
   VNNI512 kernel the rest. */
static int clstm_lowp_kernel(void) {
#if CLSTM_ISA_KERNELS && !defined(__clang__)
    static int kernel = -1;  /* a benign race, as clstm_isa_level */
    const char* forced;
    int level;
    if (kernel < 0) {
        level = clstm_isa_level();
        forced = getenv("CLSTM_ISA");
        __builtin_cpu_init();
        if (level == 2)
            kernel = (forced == NULL || strcmp(forced, "v4") != 0)
                     && __builtin_cpu_supports("avx512vnni")
                     && __builtin_cpu_supports("avx512bf16") ? CLSTM_LK_VNNI512 : CLSTM_LK_V4;
        else if (level == 1)
            kernel = CLSTM_LK_V3;
        else
            kernel = CLSTM_LK_BASE;
#if CLSTM_HAVE_AMX
        if (kernel == CLSTM_LK_VNNI512 && (forced == NULL || strcmp(forced, "amx") == 0)
                && clstm_amx_usable())
            kernel = CLSTM_LK_AMX;
#endif
        if (forced != NULL && strcmp(forced, "avxvnni") == 0
                && __builtin_cpu_supports("avxvnni") && __builtin_cpu_supports("avx2"))
            kernel = CLSTM_LK_AVXVNNI;
    }
    return kernel;
#else
    return CLSTM_LK_BASE;
#endif
}

static const char* clstm_lowp_kernel_name(void) {
    static const char* names[] = {"base", "v3", "avxvnni", "v4", "vnni512", "amx"};
    return names[clstm_lowp_kernel()];
}

/* Quantise the block's rows, then multiply them, with kernel SFX. */
#define CLSTM_LOWP_RUN(SFX)                                                             \
    if (W->format == CLSTM_LOWP_INT8) {                                                 \
        clstm_lowp_quantize_u8_##SFX(m, W->K, A + i * lda, lda, (uint8_t*)qa, Kg * 4,    \
                                     sa, za);                                           \
        clstm_lowp_block_##SFX(W, m, col0, ncols, qa, Kg, sa, za, C + i * ldc, ldc);    \
    } else if (m >= clstm_lowp_fma_rows_##SFX) {                                        \
        clstm_lowp_quantize_bf16f_##SFX(m, W->K, A + i * lda, lda, (float*)qa, Kg * 2); \
        clstm_lowp_block_bf16f_##SFX(W, m, col0, ncols, (float*)qa, Kg, C + i * ldc,    \
                                     ldc);                                              \
    } else {                                                                            \
        clstm_lowp_quantize_bf16_##SFX(m, W->K, A + i * lda, lda, (uint16_t*)qa, Kg * 2);\
        clstm_lowp_block_##SFX(W, m, col0, ncols, qa, Kg, sa, za, C + i * ldc, ldc);    \
    }

#if CLSTM_HAVE_AMX
/* The int8 product on AMX tiles (amx.h), for products of at least CLSTM_AMX_MIN_ROWS rows
   whose padded rows fit 16 to a block on the stack; 0 if it did not run (the caller then
   runs the VNNI512 kernel), qa the caller's 64-byte aligned stack block. Rows are quantised
   (amx.h: the same bits as the other kernels' quantiser) into rows padded to whole A
   tiles, blocks padded with zero rows to whole tiles. From two rows on the tiles beat
   vpdpbusd at every K measured (bench_lowp.py --micro); one row is a tie, left to the
   vector kernel. */
enum { CLSTM_AMX_MIN_ROWS = 2 };

/* bfloat16 products on AMX tiles: on wherever the AMX kernel runs, unless
   CLSTM_AMX_BF16=0 in the environment (read once). tdpbf16ps does not round like a chain
   of float32 multiply-adds (it sums the products of each instruction's chunk of k in its
   own wider, aligned datapath), so its bits differ from the other kernels' and the NumPy
   emulation's, within float32 rounding (the top of this file); =0 keeps the vector
   kernels' bits on an AMX machine. When on, it serves every bfloat16 product (one row too,
   any K), so the results still do not depend on the path, tile or thread count; only a
   failed allocation (K > 2048) leaves a product to the vector kernel. */
static int clstm_amx_bf16_enabled(void) {
    static int on = -1;  /* a benign race, as clstm_lowp_kernel */
    if (on < 0) {
        const char* v = getenv("CLSTM_AMX_BF16");
        on = !(v != NULL && strcmp(v, "0") == 0);
    }
    return on;
}

static int clstm_lowp_gemm_amx(const clstm_lowp_weights* W, Py_ssize_t n, Py_ssize_t col0,
                               Py_ssize_t ncols, const float* A, Py_ssize_t lda, float* C,
                               Py_ssize_t ldc, int overwrite, uint8_t* qa) {
    enum { MAX_ROWS = 64 };
    float sa[MAX_ROWS];
    int32_t za[MAX_ROWS];
    const int bf16 = W->format == CLSTM_LOWP_BF16;
    const Py_ssize_t Kg = clstm_lowp_groups(W->format, W->K);
    const Py_ssize_t ldq = (Kg * 4 + CLSTM_AMX_KB - 1) / CLSTM_AMX_KB * CLSTM_AMX_KB;
    Py_ssize_t rb = CLSTM_LOWP_ROW_BYTES / ldq, i, m, m16;
    void* heap = NULL;
    if (rb > MAX_ROWS)
        rb = MAX_ROWS;
    rb -= rb % CLSTM_AMX_MR;
    if (n < (bf16 ? 1 : CLSTM_AMX_MIN_ROWS))
        return 0;
    /* rows too long for one tile of them on the stack: bfloat16 takes one such block from
       the heap (so that, opted in, every K runs on the tiles: the same bits at any K);
       int8 leaves them to VNNI512 (the same bits either way) */
    if (rb == 0) {
        if (!bf16 || (heap = malloc(CLSTM_AMX_MR * ldq + 63)) == NULL)
            return 0;
        qa = (uint8_t*)(((uintptr_t)heap + 63) & ~(uintptr_t)63);
        rb = CLSTM_AMX_MR;
    }
    clstm_amx_begin(n < CLSTM_AMX_MR ? (int)n : CLSTM_AMX_MR);
    for (i = 0; i < n; i += rb) {
        m = n - i < rb ? n - i : rb;
        m16 = (m + CLSTM_AMX_MR - 1) / CLSTM_AMX_MR * CLSTM_AMX_MR;
        if (bf16) {
            clstm_amx_quantize_bf16(m, W->K, A + i * lda, lda, (uint16_t*)qa, ldq / 2);
            memset(qa + m * ldq, 0, (m16 - m) * ldq);
            clstm_amx_block_bf16(W, m, col0, ncols, (const uint16_t*)qa, ldq / 2,
                                 C + i * ldc, ldc, overwrite);
        } else {
            clstm_amx_quantize_u8(m, W->K, A + i * lda, lda, qa, ldq, sa, za);
            memset(qa + m * ldq, 0, (m16 - m) * ldq);
            clstm_amx_block_i8(W, m, col0, ncols, qa, ldq, sa, za, C + i * ldc, ldc,
                               overwrite);
        }
    }
    clstm_amx_end();
    free(heap);
    return 1;
}
#endif

/* C[n, ncols] += A[n, K] @ W[col0 : col0 + ncols].T (col0 a multiple of CLSTM_LOWP_NR);
   overwrite: C = the product, bit for bit C zeroed first (the AMX kernel never reads C,
   the others zero it first). Rows of A are quantised in blocks that fit
   CLSTM_LOWP_ROW_BYTES on the stack (each block streams the weight panels once); rows of
   more than that take malloc. Returns -1
   only if that malloc fails (C is then NaN: the driver cannot raise, and must not be
   silently wrong). */
static int clstm_lowp_gemm(const clstm_lowp_weights* W, Py_ssize_t n, Py_ssize_t col0,
                           Py_ssize_t ncols, const float* A, Py_ssize_t lda, float* C,
                           Py_ssize_t ldc, int overwrite) {
    enum { MAX_ROWS = 64 };
    uint32_t stack_rows[CLSTM_LOWP_ROW_BYTES / 4] __attribute__((aligned(64)));
    float sa[MAX_ROWS];
    int32_t za[MAX_ROWS];
    const Py_ssize_t Kg = clstm_lowp_groups(W->format, W->K);
    /* bytes per quantised row: int8 4 per group; bf16 room for its float32 form, 8 */
    const Py_ssize_t row_bytes = Kg * (W->format == CLSTM_LOWP_INT8 ? 4 : 8);
    Py_ssize_t rb = CLSTM_LOWP_ROW_BYTES / row_bytes, i, m;
    uint32_t* qa = stack_rows;
    int kernel = clstm_lowp_kernel();
    if (n <= 0 || ncols <= 0)
        return 0;
#if CLSTM_HAVE_AMX
    if (kernel == CLSTM_LK_AMX) {
        if ((W->format == CLSTM_LOWP_INT8 || clstm_amx_bf16_enabled())
                && clstm_lowp_gemm_amx(W, n, col0, ncols, A, lda, C, ldc, overwrite,
                                       (uint8_t*)stack_rows))
            return 0;
        kernel = CLSTM_LK_VNNI512;
    }
#endif
    if (overwrite)
        for (i = 0; i < n; i++)
            memset(C + i * ldc, 0, ncols * sizeof(float));
    if (rb > MAX_ROWS)
        rb = MAX_ROWS;
    if (rb < 1) {
        rb = 1;
        qa = (uint32_t*)malloc(row_bytes);
        if (qa == NULL) {  /* never silently wrong: the outputs say it (NaN) */
            for (i = 0; i < n; i++)
                for (m = 0; m < ncols; m++)
                    C[i * ldc + m] = NAN;
            return -1;
        }
    }
    for (i = 0; i < n; i += rb) {
        m = n - i < rb ? n - i : rb;
        switch (kernel) {
#if CLSTM_ISA_KERNELS && !defined(__clang__)
        case CLSTM_LK_VNNI512: CLSTM_LOWP_RUN(vnni512) break;
        case CLSTM_LK_V4: CLSTM_LOWP_RUN(v4) break;
        case CLSTM_LK_AVXVNNI: CLSTM_LOWP_RUN(avxvnni) break;
        case CLSTM_LK_V3: CLSTM_LOWP_RUN(v3) break;
#endif
        default: CLSTM_LOWP_RUN(base)
        }
    }
    if (qa != stack_rows)
        free(qa);
    return 0;
}

#endif /* CLSTM_LOWP_H */
