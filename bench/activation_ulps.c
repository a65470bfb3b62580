/* How far the float32 activations of csrc/math.h are from the truth, over every float:
   the largest error in ulp of tanh (every x in [0, 10]: it is odd, and rounds to 1 beyond)
   and of sigmoid (every x in [-87, 89], where it is a normal float below 1), against libm's
   double precision, in total and per binade of x where it exceeds 1 ulp.

       gcc -O3 -march=native -fno-math-errno -fno-trapping-math -I src/clstm \
           bench/activation_ulps.c -o /tmp/activation_ulps -lm && /tmp/activation_ulps

   tests/test_kernels.py holds a dense sample of x to 4 ulp; this is the exhaustive check
   for a change to the approximations (docs/performance.md, "Issue 19, tenth pass"). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>

typedef ssize_t Py_ssize_t; /* the headers are included by Cython modules, after Python.h */
#include "csrc/math.h"

enum { CHUNK = 4096, BINADES = 256 };

static double ulps(float got, double truth) {
    float t = (float)fabs(truth);
    t = t < 1.17549435e-38f ? 1.17549435e-38f : t;
    return fabs((double)got - truth) / (nextafterf(t, INFINITY) - t);
}

/* The worst error of f over the floats with bits [lo, hi] (one sign), per binade. */
static void scan(const char* name, void (*f)(const float*, float*, int),
                   double (*truth)(double), uint32_t lo, uint32_t hi) {
    static float x[CHUNK], y[CHUNK];
    double binade[BINADES] = {0}, worst = 0, e;
    float worst_x = 0;
    uint32_t b;
    int k, m;
    for (b = lo; b <= hi && b >= lo;) {
        for (m = 0; m < CHUNK && b <= hi && b >= lo; m++, b++)
            memcpy(&x[m], &b, 4);
        f(x, y, m);
        for (k = 0; k < m; k++) {
            e = ulps(y[k], truth(x[k]));
            uint32_t bits;
            memcpy(&bits, &x[k], 4);
            int q = (bits >> 23) & 0xFF;
            binade[q] = e > binade[q] ? e : binade[q];
            if (e > worst) {
                worst = e;
                worst_x = x[k];
            }
        }
    }
    printf("%s: at most %.3f ulp (x = %.9g)\n", name, worst, worst_x);
    for (k = 0; k < BINADES; k++)
        if (binade[k] > 1.0)
            printf("  |x| in [2^%d, 2^%d): %.3f ulp\n", k - 127, k - 126, binade[k]);
}

/* Vectorised as the cells are: the compiler sees the same loop shape. */
static void tanh_loop(const float* x, float* y, int n) {
    for (int k = 0; k < n; k++)
        y[k] = clstm_tanhf(x[k]);
}
static void sigmoid_loop(const float* x, float* y, int n) {
    for (int k = 0; k < n; k++)
        y[k] = clstm_sigmoidf(x[k]);
}
static double sigmoid_truth(double x) { return 1.0 / (1.0 + exp(-x)); }

static uint32_t bits_of(float v) {
    uint32_t b;
    memcpy(&b, &v, 4);
    return b;
}

int main(void) {
    scan("tanh, x in [0, 10]", tanh_loop, tanh, 0, bits_of(10.0f));
    scan("sigmoid, x in [0, 89]", sigmoid_loop, sigmoid_truth, 0, bits_of(89.0f));
    scan("sigmoid, x in [-87, -0]", sigmoid_loop, sigmoid_truth, bits_of(-0.0f),
         bits_of(-87.0f));
    return 0;
}
