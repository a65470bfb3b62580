/* Recurrent cells: the fused element-wise part of one time step, forward and backward,
   and the description the recurrent driver (_recurrent.pyx) runs a cell by.

   A cell sees, per row of a step, its gate pre-activations (n_gates blocks of H columns:
   x_t @ w_ih.T + h_{t-1} @ w_hh.T, the bias added here), its carried state and its output.
   Adding a cell means: its forward/backward row functions here (one macro, both dtypes),
   a clstm_cell entry, its description in clstm/_cells.py and its NumPy reference
   (docs/design.md, "How to add a cell"). */
#ifndef CLSTM_CELLS_H
#define CLSTM_CELLS_H

#include "config.h"
#include "math.h"

/* Forward: gates (n_rows, n_gates*H) pre-activations -> activations in place (bias (n_gates*H)
   added, or NULL); c_prev -> c_t (may alias: inference keeps one running state);
   r_t the step's output before any projection. Backward: gates activations -> gradients of
   the pre-activations (dG); dr the whole gradient reaching r_t; dc the gradient reaching c_t
   -> that of c_{t-1}. Only hidden units [j0, j1) of each block (the unit split). */
typedef void (*clstm_forward_f32)(Py_ssize_t n_rows, Py_ssize_t H, Py_ssize_t j0,
                                  Py_ssize_t j1, float* gates, const float* bias,
                                  const float* c_prev, float* c_t, float* r_t);
typedef void (*clstm_forward_f64)(Py_ssize_t n_rows, Py_ssize_t H, Py_ssize_t j0,
                                  Py_ssize_t j1, double* gates, const double* bias,
                                  const double* c_prev, double* c_t, double* r_t);
typedef void (*clstm_backward_f32)(Py_ssize_t n_rows, Py_ssize_t H, Py_ssize_t j0,
                                   Py_ssize_t j1, float* gates, const float* c_prev,
                                   const float* c_t, const float* dr, float* dc);
typedef void (*clstm_backward_f64)(Py_ssize_t n_rows, Py_ssize_t H, Py_ssize_t j0,
                                   Py_ssize_t j1, double* gates, const double* c_prev,
                                   const double* c_t, const double* dr, double* dc);

typedef struct {
    const char* name;
    int n_gates;            /* gate blocks of H columns per row */
    clstm_forward_f32 forward_f32;
    clstm_forward_f64 forward_f64;
    clstm_backward_f32 backward_f32;
    clstm_backward_f64 backward_f64;
} clstm_cell;

/* LSTM (gates i, f, g, o; PyTorch's order):
     i, f, o = sigmoid(.), g = tanh(.);  c_t = f * c_{t-1} + i * g;  r_t = o * tanh(c_t) */
#define CLSTM_DEFINE_LSTM_CELL(T, SFX, SIGMOID, TANH)                                        \
/* The whole cell for n units of one row, in one pass: gates a[q*H + j] (q = i, f, g, o)\
   plus bias (or NULL) -> activations in place; c_t = f * c_prev + i * g,               \
   r_t = o * tanh(c_t). At small H this is a large part of a step, so clstm_cell is     \
   compiled for AVX-512, AVX2 and baseline x86-64 (CLSTM_CLONES). c_prev may be c_t   \
   itself (inference keeps one running state): every value is read before it is written \
   at the same index, so no iteration depends on another, which ivdep tells GCC (its    \
   run-time overlap test would send the loop to scalar code). */                        \
static inline __attribute__((always_inline)) void clstm_cell_row_##SFX(                 \
        T* a, Py_ssize_t H, const T* bias, const int has_bias, const T* c_prev, T* c_t, \
        T* r_t, Py_ssize_t n) {                                                         \
    Py_ssize_t j;                                                                       \
    CLSTM_IVDEP                                                                         \
    for (j = 0; j < n; j++) {                                                           \
        T i = a[j], f = a[H + j], g = a[2 * H + j], o = a[3 * H + j], c;                \
        if (has_bias) {                                                                 \
            i += bias[j];                                                               \
            f += bias[H + j];                                                           \
            g += bias[2 * H + j];                                                       \
            o += bias[3 * H + j];                                                       \
        }                                                                               \
        i = SIGMOID(i);                                                                 \
        f = SIGMOID(f);                                                                 \
        g = TANH(g);                                                                    \
        o = SIGMOID(o);                                                                 \
        a[j] = i;                                                                       \
        a[H + j] = f;                                                                   \
        a[2 * H + j] = g;                                                               \
        a[3 * H + j] = o;                                                               \
        c = f * c_prev[j] + i * g;                                                      \
        c_t[j] = c;                                                                     \
        r_t[j] = o * TANH(c);                                                           \
    }                                                                                   \
}                                                                                       \
                                                                                        \
CLSTM_CLONES static void clstm_cell_##SFX(T* a, Py_ssize_t H, const T* bias,            \
                                         const T* c_prev, T* c_t, T* r_t, Py_ssize_t n) {\
    if (bias != NULL)                                                                   \
        clstm_cell_row_##SFX(a, H, bias, 1, c_prev, c_t, r_t, n);                       \
    else                                                                                \
        clstm_cell_row_##SFX(a, H, bias, 0, c_prev, c_t, r_t, n);                       \
}                                                                                       \
                                                                                        \
/* One step of BPTT through the cell for n units of one row: activations a[q*H + j] ->  \
   gradients of the pre-activations; dc (the gradient reaching c_t) -> dc_{t-1}; dr is  \
   the whole gradient reaching r_t. */                                                  \
CLSTM_CLONES static void clstm_cell_backward_##SFX(T* a, Py_ssize_t H, const T* c_prev, \
                                                  const T* c_t, const T* dr, T* dc,     \
                                                  Py_ssize_t n) {                       \
    Py_ssize_t j;                                                                       \
    CLSTM_IVDEP                                                                         \
    for (j = 0; j < n; j++) {                                                           \
        T i = a[j], f = a[H + j], g = a[2 * H + j], o = a[3 * H + j];                   \
        T tc = TANH(c_t[j]);                                                            \
        T dc_t = dc[j] + dr[j] * o * (1 - tc * tc);                                     \
        a[j] = dc_t * g * i * (1 - i);                                                  \
        a[H + j] = dc_t * c_prev[j] * f * (1 - f);                                      \
        a[2 * H + j] = dc_t * i * (1 - g * g);                                          \
        a[3 * H + j] = dr[j] * tc * o * (1 - o);                                        \
        dc[j] = dc_t * f;                                                               \
    }                                                                                   \
}                                                                                       \
                                                                                        \
/* The driver's entry points: rows of one step, hidden units [j0, j1) of each gate block \
   (row strides: 4H for gates, H for the states). */                                    \
static void clstm_lstm_forward_##SFX(Py_ssize_t n_rows, Py_ssize_t H, Py_ssize_t j0,    \
                                     Py_ssize_t j1, T* gates, const T* bias,            \
                                     const T* c_prev, T* c_t, T* r_t) {                 \
    Py_ssize_t row, k;                                                                  \
    const T* b = bias == NULL ? NULL : bias + j0;                                       \
    for (row = 0; row < n_rows; row++) {                                                \
        k = row * H + j0;                                                               \
        clstm_cell_##SFX(gates + row * 4 * H + j0, H, b, c_prev + k, c_t + k, r_t + k,  \
                         j1 - j0);                                                      \
    }                                                                                   \
}                                                                                       \
                                                                                        \
static void clstm_lstm_backward_##SFX(Py_ssize_t n_rows, Py_ssize_t H, Py_ssize_t j0,   \
                                      Py_ssize_t j1, T* gates, const T* c_prev,         \
                                      const T* c_t, const T* dr, T* dc) {               \
    Py_ssize_t row, k;                                                                  \
    for (row = 0; row < n_rows; row++) {                                                \
        k = row * H + j0;                                                               \
        clstm_cell_backward_##SFX(gates + row * 4 * H + j0, H, c_prev + k, c_t + k,     \
                                  dr + k, dc + k, j1 - j0);                             \
    }                                                                                   \
}


CLSTM_DEFINE_LSTM_CELL(float, f32, clstm_sigmoidf, clstm_tanhf)
CLSTM_DEFINE_LSTM_CELL(double, f64, clstm_sigmoid, clstm_tanh)

static const clstm_cell clstm_cell_lstm = {
    "lstm", 4, clstm_lstm_forward_f32, clstm_lstm_forward_f64,
    clstm_lstm_backward_f32, clstm_lstm_backward_f64};

#endif /* CLSTM_CELLS_H */
