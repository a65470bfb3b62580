# Fast exp, sigmoid and tanh that the compiler can vectorise (libm's are opaque calls, one
# element at a time, and dominate the LSTM step at small H), and the whole cell built on
# them. Plain C with no intrinsics: at the default -O3 GCC turns loops over them into SSE2
# code, so they need no -march flag to be correct or fast. float32: within a few ulp over
# the whole range. float64: Cephes's rational approximations, as accurate as libm's (the
# tests hold sigmoid and tanh within 2 ulp of NumPy's). Inputs are clamped so nothing
# overflows, and NaN propagates.
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

    #ifndef CLSTM_CLONES
    #if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) \\
        && !defined(CLSTM_NO_TARGET_CLONES)
    #define CLSTM_CLONES \\
        __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
    #else
    #define CLSTM_CLONES
    #endif
    #endif

    #if defined(__GNUC__) && !defined(__clang__)
    #define CLSTM_IVDEP _Pragma("GCC ivdep")
    #else
    #define CLSTM_IVDEP
    #endif

    #define CLSTM_DEFINE_CELL(T, SFX, SIGMOID, TANH)                                        \\
    /* The whole cell for n units of one row, in one pass: gates a[q*H + j] (q = i, f, g, o)\\
       plus bias (or NULL) -> activations in place; c_t = f * c_prev + i * g,               \\
       r_t = o * tanh(c_t). At small H this is a large part of a step, so clstm_cell is     \\
       compiled for AVX-512, AVX2 and baseline x86-64 (see _pgemm.pxd). c_prev may be c_t   \\
       itself (inference keeps one running state): every value is read before it is written \\
       at the same index, so no iteration depends on another, which ivdep tells GCC (its    \\
       run-time overlap test would send the loop to scalar code). */                        \\
    static inline __attribute__((always_inline)) void clstm_cell_row_##SFX(                 \\
            T* a, Py_ssize_t H, const T* bias, const int has_bias, const T* c_prev, T* c_t, \\
            T* r_t, Py_ssize_t n) {                                                         \\
        Py_ssize_t j;                                                                       \\
        CLSTM_IVDEP                                                                         \\
        for (j = 0; j < n; j++) {                                                           \\
            T i = a[j], f = a[H + j], g = a[2 * H + j], o = a[3 * H + j], c;                \\
            if (has_bias) {                                                                 \\
                i += bias[j];                                                               \\
                f += bias[H + j];                                                           \\
                g += bias[2 * H + j];                                                       \\
                o += bias[3 * H + j];                                                       \\
            }                                                                               \\
            i = SIGMOID(i);                                                                 \\
            f = SIGMOID(f);                                                                 \\
            g = TANH(g);                                                                    \\
            o = SIGMOID(o);                                                                 \\
            a[j] = i;                                                                       \\
            a[H + j] = f;                                                                   \\
            a[2 * H + j] = g;                                                               \\
            a[3 * H + j] = o;                                                               \\
            c = f * c_prev[j] + i * g;                                                      \\
            c_t[j] = c;                                                                     \\
            r_t[j] = o * TANH(c);                                                           \\
        }                                                                                   \\
    }                                                                                       \\
                                                                                            \\
    CLSTM_CLONES static void clstm_cell_##SFX(T* a, Py_ssize_t H, const T* bias,            \\
                                             const T* c_prev, T* c_t, T* r_t, Py_ssize_t n) {\\
        if (bias != NULL)                                                                   \\
            clstm_cell_row_##SFX(a, H, bias, 1, c_prev, c_t, r_t, n);                       \\
        else                                                                                \\
            clstm_cell_row_##SFX(a, H, bias, 0, c_prev, c_t, r_t, n);                       \\
    }                                                                                       \\
                                                                                            \\
    /* One step of BPTT through the cell for n units of one row: activations a[q*H + j] ->  \\
       gradients of the pre-activations; dc (the gradient reaching c_t) -> dc_{t-1}; dr is  \\
       the whole gradient reaching r_t. */                                                  \\
    CLSTM_CLONES static void clstm_cell_backward_##SFX(T* a, Py_ssize_t H, const T* c_prev, \\
                                                      const T* c_t, const T* dr, T* dc,     \\
                                                      Py_ssize_t n) {                       \\
        Py_ssize_t j;                                                                       \\
        CLSTM_IVDEP                                                                         \\
        for (j = 0; j < n; j++) {                                                           \\
            T i = a[j], f = a[H + j], g = a[2 * H + j], o = a[3 * H + j];                   \\
            T tc = TANH(c_t[j]);                                                            \\
            T dc_t = dc[j] + dr[j] * o * (1 - tc * tc);                                     \\
            a[j] = dc_t * g * i * (1 - i);                                                  \\
            a[H + j] = dc_t * c_prev[j] * f * (1 - f);                                      \\
            a[2 * H + j] = dc_t * i * (1 - g * g);                                          \\
            a[3 * H + j] = dr[j] * tc * o * (1 - o);                                        \\
            dc[j] = dc_t * f;                                                               \\
        }                                                                                   \\
    }

    CLSTM_DEFINE_CELL(float, f32, clstm_sigmoidf, clstm_tanhf)
    CLSTM_DEFINE_CELL(double, f64, clstm_sigmoid, clstm_tanh)
    """
    float clstm_expf(float x) noexcept nogil
    float clstm_sigmoidf(float x) noexcept nogil
    float clstm_tanhf(float x) noexcept nogil
    double clstm_exp(double x) noexcept nogil
    double clstm_sigmoid(double x) noexcept nogil
    double clstm_tanh(double x) noexcept nogil
    void clstm_cell_f32(float* a, Py_ssize_t H, const float* bias, const float* c_prev,
                        float* c_t, float* r_t, Py_ssize_t n) noexcept nogil
    void clstm_cell_backward_f32(float* a, Py_ssize_t H, const float* c_prev, const float* c_t,
                                 const float* dr, float* dc, Py_ssize_t n) noexcept nogil
    void clstm_cell_f64(double* a, Py_ssize_t H, const double* bias, const double* c_prev,
                        double* c_t, double* r_t, Py_ssize_t n) noexcept nogil
    void clstm_cell_backward_f64(double* a, Py_ssize_t H, const double* c_prev,
                                 const double* c_t, const double* dr, double* dc,
                                 Py_ssize_t n) noexcept nogil
