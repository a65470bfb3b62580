/* Fast exp, sigmoid and tanh that the compiler can vectorise (libm's are opaque calls,
   one element at a time, and dominate the LSTM step at small H). Plain C, no intrinsics.
   float32: within a few ulp over the whole range. float64: Cephes's rational
   approximations, as accurate as libm's (the tests hold sigmoid and tanh within 2 ulp of
   NumPy's). Inputs are clamped so nothing overflows, and NaN propagates. */
#ifndef CLSTM_MATH_H
#define CLSTM_MATH_H

#include "config.h"

#include <stdint.h>

/* The degree-5 polynomial of Cephes's expf: exp(r) = 1 + r + r^2 P(r) for
   |r| <= ln(2) / 2, so expm1(r) = r + r^2 P(r) with no cancellation near 0. */
static inline float clstm_expf_poly(float r) {
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    return p * r + 5.0000001201e-1f;
}

/* Round-to-nearest of y by adding and subtracting 1.5 * 2^23 (|y| < 2^22). The sum's
   bits hold the integer n in their low mantissa bits, so 2^n's bits are one integer add
   and shift away (no float-to-int conversion: one vector instruction fewer). Unsigned,
   so a NaN's bits wrap instead of overflowing (the result is NaN either way). */
#define CLSTM_EXPF_SHIFTER 12582912.0f
static inline float clstm_exp2_of_shifted(float shifted) {
    union { float f; uint32_t u; } bits;
    bits.f = shifted;
    bits.u = (bits.u - 0x4B400000u + 127u) << 23;
    return bits.f;
}

/* The reduction of exp(y) = 2^n * exp(r), n = round(y / ln 2), |r| <= ln(2) / 2, ln 2
   split in two so that r is exact (Cephes); returns the rounding sum (see above). */
static inline float clstm_expf_reduce(float y, float* r) {
    float shifted = y * 1.44269504088896341f + CLSTM_EXPF_SHIFTER;
    float n = shifted - CLSTM_EXPF_SHIFTER;
    *r = (y - n * 0.693359375f) - n * -2.12194440e-4f;
    return shifted;
}

static inline float clstm_expf(float x) {
    float shifted, r;
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    shifted = clstm_expf_reduce(x, &r);
    return (clstm_expf_poly(r) * r * r + r + 1.0f) * clstm_exp2_of_shifted(shifted);
}

static inline float clstm_sigmoidf(float x) {
    return 1.0f / (1.0f + clstm_expf(-x));
}

static inline float clstm_tanhf(float x) {
    /* tanh|x| = e / (e + 2), e = expm1(2|x|) = 2^n (expm1(r) + 1) - 1, computed as
       2^n expm1(r) + (2^n - 1): one exponential and no cancellation at small |x| (where
       1 - 2 / (e^2x + 1) loses every bit), so no second branch to compute and select.
       The sign goes back at the end; |x| is clamped where tanh rounds to 1 and NaN
       passes through. The cell is bound by its count of vector instructions, and the
       two-branch form paid for a polynomial, an exponential and a select in every lane
       (docs/performance.md, "Issue 19, tenth pass"). */
    float ax = __builtin_fabsf(x), shifted, r, expm1_r, scale, e;
    ax = ax > 10.0f ? 10.0f : ax;
    shifted = clstm_expf_reduce(ax + ax, &r);
    expm1_r = clstm_expf_poly(r) * (r * r) + r;
    scale = clstm_exp2_of_shifted(shifted);
    e = scale * expm1_r + (scale - 1.0f);
    return __builtin_copysignf(e / (e + 2.0f), x);
}

static inline double clstm_exp(double x) {
    /* Cephes exp: exp(x) = 2^n * exp(r), n = round(x / ln 2), ln 2 split in two for an
       exact reduction, exp(r) = 1 + 2r P(r^2) / (Q(r^2) - r P(r^2)). */
    const double shifter = 6755399441055744.0;  /* 1.5 * 2^52: adding it rounds */
    union { double f; int64_t i; } scale;
    double n, r, rr, p;
    x = x < -708.0 ? -708.0 : x;
    x = x > 709.0 ? 709.0 : x;
    n = (x * 1.4426950408889634073599 + shifter) - shifter;
    r = x - n * 6.93145751953125E-1;
    r = r - n * 1.42860682030941723212E-6;
    rr = r * r;
    p = r * ((1.26177193074810590878E-4 * rr + 3.02994407707441961300E-2) * rr
             + 9.99999999999999999910E-1);
    r = p / ((((3.00198505138664455042E-6 * rr + 2.52448340349684104192E-3) * rr
               + 2.27265548208155028766E-1) * rr + 2.00000000000000000009E0) - p);
    scale.i = ((int64_t)n + 1023) << 52;
    return (1.0 + 2.0 * r) * scale.f;
}

static inline double clstm_sigmoid(double x) {
    return 1.0 / (1.0 + clstm_exp(-x));
}

static inline double clstm_tanh(double x) {
    /* Cephes tanh: a rational function for |x| < 0.625, else 1 - 2 / (e^(2|x|) + 1);
       both computed, one selected, so the loop has no branch. */
    double ax = x < 0.0 ? -x : x;
    double z = x * x;
    double small = x + x * z * ((-9.64399179425052238628E-1 * z - 9.92877231001918586564E1)
                                * z - 1.61468768441708447952E3)
                   / (((z + 1.12811678491632931402E2) * z + 2.23548839060100448583E3) * z
                      + 4.84406305325125486048E3);
    double large = 1.0 - 2.0 / (clstm_exp(2.0 * ax) + 1.0);
    large = x < 0.0 ? -large : large;
    return ax < 0.625 ? small : large;
}

#endif /* CLSTM_MATH_H */
