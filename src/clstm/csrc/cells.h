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

/* What a cell sees of its layer beyond the gates: extra per-unit weights in the layer's
   dtype (n_extra blocks of H, e.g. peepholes; NULL for none) and cell options (0: the
   defaults). One per layer; the row functions get it as it is. */
typedef struct {
    const void* extra;
    int options[2];
} clstm_cell_config;

/* Forward, per row of a step: gates (row_blocks*H columns) holds the input projection of
   the n_gates weight blocks, and, unless the cell keeps the recurrent product separate, the
   recurrent product h_{t-1} @ w_hh.T added to it; then hg is NULL. A separate cell gets
   that product in hg (n_gates*H columns). bias (row_blocks*H, in the gates row's block
   order) or NULL. The cell leaves in gates whatever its backward needs (activations), and
   writes c_t (may alias c_prev: inference keeps one running state) and r_t, the output
   before any projection. A cell without a state of its own (state_is_output) gets
   c_prev = h_{t-1}, c_t NULL, and writes h_t to r_t.
   Backward: gates -> the gradients of the pre-activations: the first n_gates blocks are the
   recurrent side's (dh_{t-1} = dG[:, :n_gates*H] @ w_hh), x_block[q] the block of the
   input side's weight block q; dr the whole gradient reaching r_t; dc the gradient reaching
   c_t -> that of c_{t-1} (of h_{t-1} through the cell, for a stateless cell, which then
   also sees dr as r_t's and h_t's). Only hidden units [j0, j1) of each block (the unit
   split). */
#define CLSTM_CELL_FN_TYPES(T, SFX)                                                         \
typedef void (*clstm_forward_##SFX)(Py_ssize_t n_rows, Py_ssize_t H, Py_ssize_t j0,         \
                                    Py_ssize_t j1, T* gates, const T* hg, const T* bias,    \
                                    const clstm_cell_config* cfg, const T* c_prev, T* c_t, \
                                    T* r_t);                                                \
typedef void (*clstm_backward_##SFX)(Py_ssize_t n_rows, Py_ssize_t H, Py_ssize_t j0,        \
                                     Py_ssize_t j1, T* gates, const clstm_cell_config* cfg, \
                                     const T* c_prev, const T* c_t, const T* dr, T* dc);
CLSTM_CELL_FN_TYPES(float, f32)
CLSTM_CELL_FN_TYPES(double, f64)

typedef struct {
    const char* name;
    int n_gates;            /* weight blocks of H rows in w_ih and w_hh */
    int row_blocks;         /* blocks of H per gates row (and bias): >= n_gates */
    int x_block[4];         /* the gates-row block of weight block q's input-side gradient */
    int separate_recurrent; /* the recurrent product goes to hg, not into gates */
    int state_is_output;    /* no cell state: the carried state is h itself */
    int n_extra;            /* blocks of H in clstm_cell_config.extra */
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
                                     Py_ssize_t j1, T* gates, const T* hg,              \
                                     const T* bias, const clstm_cell_config* cfg,       \
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
                                      Py_ssize_t j1, T* gates,                          \
                                      const clstm_cell_config* cfg, const T* c_prev,    \
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
    "lstm", 4, 4, {0, 1, 2, 3}, 0, 0, 0, clstm_lstm_forward_f32, clstm_lstm_forward_f64,
    clstm_lstm_backward_f32, clstm_lstm_backward_f64};

/* GRU (PyTorch's, "reset after": weight blocks r, z, n):
     r, z = sigmoid(x W_i. + h W_h. + b), hn = h_{t-1} W_hn + b_hn,
     n = tanh(x W_in + b_in + r * hn),  h_t = (1 - z) * n + z * h_{t-1}
   hn must stay apart from x's part, so the recurrent product comes separately (hg). A
   gates row is [r | z | hn | n] after forward and [dr | dz | dhn | dn] (pre-activation
   gradients) after backward: the recurrent side's blocks r, z, hn come first, so
   dh_{t-1} is one product with w_hh; the input side's n is block 3. The bias, in the same
   block order: [b_ir + b_hr | b_iz + b_hz | b_hn | b_in]. No cell state: c_prev is h_{t-1}
   and dc carries the gradient reaching h_{t-1} through z. */
#define CLSTM_DEFINE_GRU_CELL(T, SFX, SIGMOID, TANH)                                        \
static inline __attribute__((always_inline)) void clstm_gru_row_##SFX(                  \
        T* a, const T* hg, Py_ssize_t H, const T* bias, const int has_bias,             \
        const T* h_prev, T* h_t, Py_ssize_t n) {                                        \
    Py_ssize_t j;                                                                       \
    CLSTM_IVDEP                                                                         \
    for (j = 0; j < n; j++) {                                                           \
        T r = a[j] + hg[j], z = a[H + j] + hg[H + j], hn = hg[2 * H + j];               \
        T xn = a[2 * H + j], g;                                                         \
        if (has_bias) {                                                                 \
            r += bias[j];                                                               \
            z += bias[H + j];                                                           \
            hn += bias[2 * H + j];                                                      \
            xn += bias[3 * H + j];                                                      \
        }                                                                               \
        r = SIGMOID(r);                                                                 \
        z = SIGMOID(z);                                                                 \
        g = TANH(xn + r * hn);                                                          \
        a[j] = r;                                                                       \
        a[H + j] = z;                                                                   \
        a[2 * H + j] = hn;                                                              \
        a[3 * H + j] = g;                                                               \
        h_t[j] = g + z * (h_prev[j] - g);                                               \
    }                                                                                   \
}                                                                                       \
                                                                                        \
CLSTM_CLONES static void clstm_gru_cell_##SFX(T* a, const T* hg, Py_ssize_t H,          \
                                             const T* bias, const T* h_prev, T* h_t,    \
                                             Py_ssize_t n) {                            \
    if (bias != NULL)                                                                   \
        clstm_gru_row_##SFX(a, hg, H, bias, 1, h_prev, h_t, n);                         \
    else                                                                                \
        clstm_gru_row_##SFX(a, hg, H, bias, 0, h_prev, h_t, n);                         \
}                                                                                       \
                                                                                        \
CLSTM_CLONES static void clstm_gru_cell_backward_##SFX(T* a, Py_ssize_t H,              \
                                                      const T* h_prev, const T* dr,     \
                                                      T* dc, Py_ssize_t n) {            \
    Py_ssize_t j;                                                                       \
    CLSTM_IVDEP                                                                         \
    for (j = 0; j < n; j++) {                                                           \
        T r = a[j], z = a[H + j], hn = a[2 * H + j], g = a[3 * H + j];                  \
        T dh = dr[j] + dc[j];                                                           \
        T dg = dh * (1 - z) * (1 - g * g);                                              \
        a[j] = dg * hn * r * (1 - r);                                                   \
        a[H + j] = dh * (h_prev[j] - g) * z * (1 - z);                                  \
        a[2 * H + j] = dg * r;                                                          \
        a[3 * H + j] = dg;                                                              \
        dc[j] = dh * z;                                                                 \
    }                                                                                   \
}                                                                                       \
                                                                                        \
static void clstm_gru_forward_##SFX(Py_ssize_t n_rows, Py_ssize_t H, Py_ssize_t j0,     \
                                    Py_ssize_t j1, T* gates, const T* hg,               \
                                    const T* bias, const clstm_cell_config* cfg,        \
                                    const T* c_prev, T* c_t, T* r_t) {                  \
    Py_ssize_t row, k;                                                                  \
    const T* b = bias == NULL ? NULL : bias + j0;                                       \
    for (row = 0; row < n_rows; row++) {                                                \
        k = row * H + j0;                                                               \
        clstm_gru_cell_##SFX(gates + row * 4 * H + j0, hg + row * 3 * H + j0, H, b,     \
                             c_prev + k, r_t + k, j1 - j0);                             \
    }                                                                                   \
}                                                                                       \
                                                                                        \
static void clstm_gru_backward_##SFX(Py_ssize_t n_rows, Py_ssize_t H, Py_ssize_t j0,    \
                                     Py_ssize_t j1, T* gates,                           \
                                     const clstm_cell_config* cfg, const T* c_prev,     \
                                     const T* c_t, const T* dr, T* dc) {                \
    Py_ssize_t row, k;                                                                  \
    for (row = 0; row < n_rows; row++) {                                                \
        k = row * H + j0;                                                               \
        clstm_gru_cell_backward_##SFX(gates + row * 4 * H + j0, H, c_prev + k, dr + k,  \
                                      dc + k, j1 - j0);                                 \
    }                                                                                   \
}

CLSTM_DEFINE_GRU_CELL(float, f32, clstm_sigmoidf, clstm_tanhf)
CLSTM_DEFINE_GRU_CELL(double, f64, clstm_sigmoid, clstm_tanh)

static const clstm_cell clstm_cell_gru = {
    "gru", 3, 4, {0, 1, 3, 0}, 1, 1, 0, clstm_gru_forward_f32, clstm_gru_forward_f64,
    clstm_gru_backward_f32, clstm_gru_backward_f64};

#endif /* CLSTM_CELLS_H */
