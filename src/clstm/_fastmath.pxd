# Fast float32 exp, sigmoid and tanh that the compiler can vectorise (libm's expf/tanhf are
# opaque calls, one element at a time, and dominate the LSTM step at small H). Plain C with
# no intrinsics: at the default -O3 GCC turns loops over them into SSE2 code, so they need
# no -march flag to be correct or fast. Accuracy: within a few float32 ulp over the whole
# range (tests compare against float64 libm); inputs are clamped so nothing overflows, and
# NaN propagates.
cdef extern from *:
    """
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

    #ifndef CLSTM_CLONES
    #if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) \\
        && !defined(CLSTM_NO_TARGET_CLONES)
    #define CLSTM_CLONES \\
        __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
    #else
    #define CLSTM_CLONES
    #endif
    #endif

    /* In-place activations over n contiguous values, compiled for AVX-512, AVX2 and
       baseline x86-64 (see _pgemm.pxd): at small H these passes are a large part of a step. */
    CLSTM_CLONES static void clstm_sigmoid_inplace_f32(float* a, Py_ssize_t n) {
        Py_ssize_t j;
        for (j = 0; j < n; j++) a[j] = clstm_sigmoidf(a[j]);
    }

    CLSTM_CLONES static void clstm_tanh_inplace_f32(float* a, Py_ssize_t n) {
        Py_ssize_t j;
        for (j = 0; j < n; j++) a[j] = clstm_tanhf(a[j]);
    }
    """
    float clstm_expf(float x) noexcept nogil
    float clstm_sigmoidf(float x) noexcept nogil
    float clstm_tanhf(float x) noexcept nogil
    void clstm_sigmoid_inplace_f32(float* a, Py_ssize_t n) noexcept nogil
    void clstm_tanh_inplace_f32(float* a, Py_ssize_t n) noexcept nogil
