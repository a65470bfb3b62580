/* Fast exp, sigmoid and tanh that the compiler can vectorise (libm's are opaque calls,
   one element at a time, and dominate the LSTM step at small H). Plain C, no intrinsics.
   float32: within a few ulp over the whole range. float64: Cephes's rational
   approximations, as accurate as libm's (the tests hold sigmoid and tanh within 2 ulp of
   NumPy's). Inputs are clamped so nothing overflows, and NaN propagates. */
#ifndef CLSTM_MATH_H
#define CLSTM_MATH_H

#include "config.h"

#include <stdint.h>

static inline float clstm_expf(float x) {
    /* Cephes expf: exp(x) = 2^n * exp(r), n = round(x / ln 2), |r| <= ln(2) / 2, with
       ln 2 split in two for an exact reduction and a degree-6 polynomial for exp(r). */
    const float shifter = 12582912.0f;            /* 1.5 * 2^23: adding it rounds */
    union { float f; int32_t i; } scale;
    float n, r, p;
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    n = (x * 1.44269504088896341f + shifter) - shifter;
    r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    scale.i = ((int32_t)n + 127) << 23;
    return p * scale.f;
}

static inline float clstm_sigmoidf(float x) {
    return 1.0f / (1.0f + clstm_expf(-x));
}

static inline float clstm_tanhf(float x) {
    /* Small |x|: Cephes's odd polynomial (1 - 2/(e^2x + 1) would cancel badly there);
       otherwise 1 - 2/(e^(2|x|) + 1) with the sign put back. Both are computed and one
       is selected, so the loop has no branch to stop vectorisation. */
    float ax = x < 0.0f ? -x : x;
    float z = x * x;
    float small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z
                     - 5.37397155531e-2f) * z + 1.33314422036e-1f) * z
                   - 3.33332819422e-1f) * z * x + x;
    float large = 1.0f - 2.0f / (clstm_expf(2.0f * ax) + 1.0f);
    large = x < 0.0f ? -large : large;
    return ax < 0.625f ? small : large;
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
