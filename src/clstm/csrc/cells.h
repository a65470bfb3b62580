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

/* The LSTM's variants (one cell, two descriptions: "lstm_act" without extra weights,
   "lstm_peephole" with them): a choice of activations and peephole connections (ONNX's
   equations; clstm/_reference_variants.py is the NumPy reference):
     i = rec(z_i + p_i * c_{t-1}), f = rec(z_f + p_f * c_{t-1}), g = act(z_g),
     c_t = f * c_{t-1} + i * g,  o = rec(z_o + p_o * c_t),  r_t = o * act(c_t)
   cfg->extra: the peepholes p (3 blocks of H: i, f, o) or NULL; cfg->options: the ids of
   act and rec (CLSTM_ACT_*). The plain LSTM stays its own cell (its speed is the default
   path's); the common variant here, tanh/sigmoid with peepholes, gets its own inlined
   loops (3 multiply-adds more per unit), the other activations a few passes over the
   units with one loop per activation (slower, exact). Every derivative is taken from the activation's output, which
   is what the gates row keeps. */
enum { CLSTM_ACT_TANH = 0, CLSTM_ACT_SIGMOID = 1, CLSTM_ACT_HARD_SIGMOID = 2,
       CLSTM_ACT_RELU = 3, CLSTM_ACT_LINEAR = 4 };

#define CLSTM_DEFINE_LSTM_VARIANT_CELL(T, SFX, SIGMOID, TANH)                               \
static inline __attribute__((always_inline)) T clstm_act_##SFX(int id, T z) {           \
    switch (id) {                                                                       \
    case CLSTM_ACT_TANH: return TANH(z);                                                \
    case CLSTM_ACT_SIGMOID: return SIGMOID(z);                                          \
    case CLSTM_ACT_HARD_SIGMOID: /* Keras 2's (and ONNX's default HardSigmoid) */       \
        z = (T)0.2 * z + (T)0.5;                                                        \
        return z < 0 ? (T)0 : (z > 1 ? (T)1 : z);                                       \
    case CLSTM_ACT_RELU: return z > 0 ? z : (T)0;                                       \
    default: return z;                                                                  \
    }                                                                                   \
}                                                                                       \
                                                                                        \
/* d act / dz from y = act(z) (one-sided 0 at the kinks, as the reference) */           \
static inline __attribute__((always_inline)) T clstm_dact_##SFX(int id, T y) {          \
    switch (id) {                                                                       \
    case CLSTM_ACT_TANH: return 1 - y * y;                                              \
    case CLSTM_ACT_SIGMOID: return y * (1 - y);                                         \
    case CLSTM_ACT_HARD_SIGMOID: return (y > 0 && y < 1) ? (T)0.2 : (T)0;               \
    case CLSTM_ACT_RELU: return y > 0 ? (T)1 : (T)0;                                    \
    default: return 1;                                                                  \
    }                                                                                   \
}                                                                                       \
                                                                                        \
/* The peephole LSTM with tanh/sigmoid, in two passes over the units: i, f, g and c_t,  \
   then o (which sees c_t) and r_t. In one pass, o's sigmoid waits for c_t's, a chain of\
   three exp-and-divide stages per unit that left the loop latency-bound: 2.6x the plain\
   cell's time; in two, each pass is throughput-bound and the cell costs what the plain \
   one does (C harness, 16 rows x H=128, AVX-512: plain 4.8 us, one pass 12.6, two 3.9).\
   c_prev may be c_t (inference): the first pass reads c_prev[j] before writing c_t[j]. */\
static inline __attribute__((always_inline)) void clstm_peep_row_##SFX(                 \
        T* a, Py_ssize_t H, const T* bias, const int has_bias, const T* p,              \
        const T* c_prev, T* c_t, T* r_t, Py_ssize_t n) {                                \
    Py_ssize_t j;                                                                       \
    CLSTM_IVDEP                                                                         \
    for (j = 0; j < n; j++) {                                                           \
        T i = a[j], f = a[H + j], g = a[2 * H + j], c;                                  \
        if (has_bias) {                                                                 \
            i += bias[j];                                                               \
            f += bias[H + j];                                                           \
            g += bias[2 * H + j];                                                       \
        }                                                                               \
        i = SIGMOID(i + p[j] * c_prev[j]);                                              \
        f = SIGMOID(f + p[H + j] * c_prev[j]);                                          \
        g = TANH(g);                                                                    \
        a[j] = i;                                                                       \
        a[H + j] = f;                                                                   \
        a[2 * H + j] = g;                                                               \
        c = f * c_prev[j] + i * g;                                                      \
        c_t[j] = c;                                                                     \
    }                                                                                   \
    CLSTM_IVDEP                                                                         \
    for (j = 0; j < n; j++) {                                                           \
        T o = a[3 * H + j], c = c_t[j];                                                 \
        if (has_bias)                                                                   \
            o += bias[3 * H + j];                                                       \
        o = SIGMOID(o + p[2 * H + j] * c);  /* o sees the new cell state */             \
        a[3 * H + j] = o;                                                               \
        r_t[j] = o * TANH(c);                                                           \
    }                                                                                   \
}                                                                                       \
                                                                                        \
/* x = act(x) in place, one loop per activation: a switch inside the loop (per element) \
   kept GCC from vectorising it, 10x slower than the plain cell with tanh/sigmoid. */   \
static inline __attribute__((always_inline)) void clstm_act_inplace_##SFX(              \
        int id, T* x, Py_ssize_t n) {                                                   \
    Py_ssize_t j;                                                                       \
    switch (id) {                                                                       \
    case CLSTM_ACT_TANH:                                                                \
        for (j = 0; j < n; j++)                                                         \
            x[j] = TANH(x[j]);                                                          \
        break;                                                                          \
    case CLSTM_ACT_SIGMOID:                                                             \
        for (j = 0; j < n; j++)                                                         \
            x[j] = SIGMOID(x[j]);                                                       \
        break;                                                                          \
    case CLSTM_ACT_HARD_SIGMOID:                                                        \
        for (j = 0; j < n; j++)                                                         \
            x[j] = clstm_act_##SFX(CLSTM_ACT_HARD_SIGMOID, x[j]);                       \
        break;                                                                          \
    case CLSTM_ACT_RELU:                                                                \
        for (j = 0; j < n; j++)                                                         \
            x[j] = x[j] > 0 ? x[j] : (T)0;                                              \
        break;                                                                          \
    default:  /* linear */                                                              \
        break;                                                                          \
    }                                                                                   \
}                                                                                       \
                                                                                        \
/* Any activations, peepholes or not, in passes: the pre-activations of i, f, g (bias,  \
   peepholes on c_{t-1}), each block's activation, then c_t and o's pre-activation      \
   (its peephole sees c_t), then o and r_t = o * act(c_t) (act(c_t) made in r_t). c_prev\
   may be c_t (inference): each pass reads c_prev[j] before writing c_t[j]. */          \
static inline __attribute__((always_inline)) void clstm_lstmv_row_##SFX(                \
        T* a, Py_ssize_t H, const T* bias, const int has_bias, const T* p,              \
        const int has_peep, const T* c_prev, T* c_t, T* r_t, Py_ssize_t n, const int act,\
        const int rec) {                                                                \
    Py_ssize_t j;                                                                       \
    CLSTM_IVDEP                                                                         \
    for (j = 0; j < n; j++) {                                                           \
        if (has_bias) {                                                                 \
            a[j] += bias[j];                                                            \
            a[H + j] += bias[H + j];                                                    \
            a[2 * H + j] += bias[2 * H + j];                                            \
        }                                                                               \
        if (has_peep) {                                                                 \
            a[j] += p[j] * c_prev[j];                                                   \
            a[H + j] += p[H + j] * c_prev[j];                                           \
        }                                                                               \
    }                                                                                   \
    clstm_act_inplace_##SFX(rec, a, n);                                                 \
    clstm_act_inplace_##SFX(rec, a + H, n);                                             \
    clstm_act_inplace_##SFX(act, a + 2 * H, n);                                         \
    CLSTM_IVDEP                                                                         \
    for (j = 0; j < n; j++) {                                                           \
        T c = a[H + j] * c_prev[j] + a[j] * a[2 * H + j], o = a[3 * H + j];             \
        if (has_bias)                                                                   \
            o += bias[3 * H + j];                                                       \
        if (has_peep)                                                                   \
            o += p[2 * H + j] * c;  /* o sees the new cell state */                     \
        a[3 * H + j] = o;                                                               \
        c_t[j] = c;                                                                     \
        r_t[j] = c;                                                                     \
    }                                                                                   \
    clstm_act_inplace_##SFX(rec, a + 3 * H, n);                                         \
    clstm_act_inplace_##SFX(act, r_t, n);                                               \
    CLSTM_IVDEP                                                                         \
    for (j = 0; j < n; j++)                                                             \
        r_t[j] *= a[3 * H + j];                                                         \
}                                                                                       \
                                                                                        \
CLSTM_CLONES static void clstm_peep_cell_##SFX(T* a, Py_ssize_t H, const T* bias,       \
                                              const T* p, const T* c_prev, T* c_t,      \
                                              T* r_t, Py_ssize_t n) {                   \
    if (bias != NULL)                                                                   \
        clstm_peep_row_##SFX(a, H, bias, 1, p, c_prev, c_t, r_t, n);                    \
    else                                                                                \
        clstm_peep_row_##SFX(a, H, bias, 0, p, c_prev, c_t, r_t, n);                    \
}                                                                                       \
                                                                                        \
CLSTM_CLONES static void clstm_lstmv_cell_##SFX(T* a, Py_ssize_t H, const T* bias,      \
                                               const T* p, const T* c_prev, T* c_t,     \
                                               T* r_t, Py_ssize_t n, int act, int rec) {\
    clstm_lstmv_row_##SFX(a, H, bias, bias != NULL, p, p != NULL, c_prev, c_t, r_t, n,  \
                          act, rec);                                                    \
}                                                                                       \
                                                                                        \
static inline __attribute__((always_inline)) void clstm_lstmv_back_row_##SFX(           \
        T* a, Py_ssize_t H, const T* p, const int has_peep, const T* c_prev,            \
        const T* c_t, const T* dr, T* dc, Py_ssize_t n, const int act, const int rec) { \
    Py_ssize_t j;                                                                       \
    CLSTM_IVDEP                                                                         \
    for (j = 0; j < n; j++) {                                                           \
        T i = a[j], f = a[H + j], g = a[2 * H + j], o = a[3 * H + j];                   \
        T hc = clstm_act_##SFX(act, c_t[j]);                                            \
        T dzo = dr[j] * hc * clstm_dact_##SFX(rec, o);                                  \
        /* c_t reaches the loss through the next step, r_t and o's peephole */          \
        T dct = dc[j] + dr[j] * o * clstm_dact_##SFX(act, hc);                          \
        T dzi, dzf;                                                                     \
        if (has_peep)                                                                   \
            dct += dzo * p[2 * H + j];                                                  \
        dzi = dct * g * clstm_dact_##SFX(rec, i);                                       \
        dzf = dct * c_prev[j] * clstm_dact_##SFX(rec, f);                               \
        a[j] = dzi;                                                                     \
        a[H + j] = dzf;                                                                 \
        a[2 * H + j] = dct * i * clstm_dact_##SFX(act, g);                              \
        a[3 * H + j] = dzo;                                                             \
        dc[j] = has_peep ? dct * f + dzi * p[j] + dzf * p[H + j] : dct * f;             \
    }                                                                                   \
}                                                                                       \
                                                                                        \
/* d = act'(z) from y = act(z), one loop per activation (vectorisable, as above). */    \
static inline __attribute__((always_inline)) void clstm_dact_into_##SFX(                \
        int id, const T* y, T* d, Py_ssize_t n) {                                       \
    Py_ssize_t j;                                                                       \
    switch (id) {                                                                       \
    case CLSTM_ACT_TANH:                                                                \
        for (j = 0; j < n; j++)                                                         \
            d[j] = 1 - y[j] * y[j];                                                     \
        break;                                                                          \
    case CLSTM_ACT_SIGMOID:                                                             \
        for (j = 0; j < n; j++)                                                         \
            d[j] = y[j] * (1 - y[j]);                                                   \
        break;                                                                          \
    case CLSTM_ACT_HARD_SIGMOID:                                                        \
        for (j = 0; j < n; j++)                                                         \
            d[j] = (y[j] > 0 && y[j] < 1) ? (T)0.2 : (T)0;                              \
        break;                                                                          \
    case CLSTM_ACT_RELU:                                                                \
        for (j = 0; j < n; j++)                                                         \
            d[j] = y[j] > 0 ? (T)1 : (T)0;                                              \
        break;                                                                          \
    default:  /* linear */                                                              \
        for (j = 0; j < n; j++)                                                         \
            d[j] = 1;                                                                   \
        break;                                                                          \
    }                                                                                   \
}                                                                                       \
                                                                                        \
/* The backward of any activations: the derivatives of a chunk of units first, each in a\
   loop of its own (into stack buffers), then the fused pass without a switch in it. */ \
static inline __attribute__((always_inline)) void clstm_lstmv_back_any_##SFX(           \
        T* a, Py_ssize_t H, const T* p, const int has_peep, const T* c_prev,            \
        const T* c_t, const T* dr, T* dc, Py_ssize_t n, const int act, const int rec) { \
    enum { CHUNK = 64 };                                                                \
    T hc[CHUNK], dhc[CHUNK], di[CHUNK], df[CHUNK], dg[CHUNK], dout[CHUNK];              \
    Py_ssize_t j0, k, m;                                                                \
    for (j0 = 0; j0 < n; j0 += CHUNK) {                                                 \
        m = n - j0 < CHUNK ? n - j0 : CHUNK;                                            \
        for (k = 0; k < m; k++)                                                         \
            hc[k] = c_t[j0 + k];                                                        \
        clstm_act_inplace_##SFX(act, hc, m);                                            \
        clstm_dact_into_##SFX(act, hc, dhc, m);                                         \
        clstm_dact_into_##SFX(rec, a + j0, di, m);                                      \
        clstm_dact_into_##SFX(rec, a + H + j0, df, m);                                  \
        clstm_dact_into_##SFX(act, a + 2 * H + j0, dg, m);                              \
        clstm_dact_into_##SFX(rec, a + 3 * H + j0, dout, m);                            \
        CLSTM_IVDEP                                                                     \
        for (k = 0; k < m; k++) {                                                       \
            Py_ssize_t j = j0 + k;                                                      \
            T i = a[j], f = a[H + j], g = a[2 * H + j], o = a[3 * H + j];               \
            T dzo = dr[j] * hc[k] * dout[k];                                            \
            T dct = dc[j] + dr[j] * o * dhc[k], dzi, dzf;                               \
            if (has_peep)                                                               \
                dct += dzo * p[2 * H + j];                                              \
            dzi = dct * g * di[k];                                                      \
            dzf = dct * c_prev[j] * df[k];                                              \
            a[j] = dzi;                                                                 \
            a[H + j] = dzf;                                                             \
            a[2 * H + j] = dct * i * dg[k];                                             \
            a[3 * H + j] = dzo;                                                         \
            dc[j] = has_peep ? dct * f + dzi * p[j] + dzf * p[H + j] : dct * f;         \
        }                                                                               \
    }                                                                                   \
}                                                                                       \
                                                                                        \
CLSTM_CLONES static void clstm_peep_cell_backward_##SFX(                                \
        T* a, Py_ssize_t H, const T* p, const T* c_prev, const T* c_t, const T* dr,     \
        T* dc, Py_ssize_t n) {                                                          \
    clstm_lstmv_back_row_##SFX(a, H, p, 1, c_prev, c_t, dr, dc, n, CLSTM_ACT_TANH,      \
                               CLSTM_ACT_SIGMOID);                                      \
}                                                                                       \
                                                                                        \
CLSTM_CLONES static void clstm_lstmv_cell_backward_##SFX(                               \
        T* a, Py_ssize_t H, const T* p, const T* c_prev, const T* c_t, const T* dr,     \
        T* dc, Py_ssize_t n, int act, int rec) {                                        \
    clstm_lstmv_back_any_##SFX(a, H, p, p != NULL, c_prev, c_t, dr, dc, n, act, rec);   \
}                                                                                       \
                                                                                        \
static void clstm_lstmv_forward_##SFX(Py_ssize_t n_rows, Py_ssize_t H, Py_ssize_t j0,   \
                                      Py_ssize_t j1, T* gates, const T* hg,             \
                                      const T* bias, const clstm_cell_config* cfg,      \
                                      const T* c_prev, T* c_t, T* r_t) {                \
    Py_ssize_t row, k;                                                                  \
    const T* b = bias == NULL ? NULL : bias + j0;                                       \
    const T* p = cfg->extra == NULL ? NULL : (const T*)cfg->extra + j0;                 \
    const int fast = p != NULL && cfg->options[0] == CLSTM_ACT_TANH                     \
        && cfg->options[1] == CLSTM_ACT_SIGMOID;                                        \
    for (row = 0; row < n_rows; row++) {                                                \
        k = row * H + j0;                                                               \
        if (fast)                                                                       \
            clstm_peep_cell_##SFX(gates + row * 4 * H + j0, H, b, p, c_prev + k,        \
                                  c_t + k, r_t + k, j1 - j0);                           \
        else                                                                            \
            clstm_lstmv_cell_##SFX(gates + row * 4 * H + j0, H, b, p, c_prev + k,       \
                                   c_t + k, r_t + k, j1 - j0, cfg->options[0],          \
                                   cfg->options[1]);                                    \
    }                                                                                   \
}                                                                                       \
                                                                                        \
static void clstm_lstmv_backward_##SFX(Py_ssize_t n_rows, Py_ssize_t H, Py_ssize_t j0,  \
                                       Py_ssize_t j1, T* gates,                         \
                                       const clstm_cell_config* cfg, const T* c_prev,   \
                                       const T* c_t, const T* dr, T* dc) {              \
    Py_ssize_t row, k;                                                                  \
    const T* p = cfg->extra == NULL ? NULL : (const T*)cfg->extra + j0;                 \
    const int fast = p != NULL && cfg->options[0] == CLSTM_ACT_TANH                     \
        && cfg->options[1] == CLSTM_ACT_SIGMOID;                                        \
    for (row = 0; row < n_rows; row++) {                                                \
        k = row * H + j0;                                                               \
        if (fast)                                                                       \
            clstm_peep_cell_backward_##SFX(gates + row * 4 * H + j0, H, p, c_prev + k,  \
                                           c_t + k, dr + k, dc + k, j1 - j0);           \
        else                                                                            \
            clstm_lstmv_cell_backward_##SFX(gates + row * 4 * H + j0, H, p, c_prev + k, \
                                            c_t + k, dr + k, dc + k, j1 - j0,           \
                                            cfg->options[0], cfg->options[1]);          \
    }                                                                                   \
}

CLSTM_DEFINE_LSTM_VARIANT_CELL(float, f32, clstm_sigmoidf, clstm_tanhf)
CLSTM_DEFINE_LSTM_VARIANT_CELL(double, f64, clstm_sigmoid, clstm_tanh)

static const clstm_cell clstm_cell_lstm_act = {
    "lstm_act", 4, 4, {0, 1, 2, 3}, 0, 0, 0, clstm_lstmv_forward_f32, clstm_lstmv_forward_f64,
    clstm_lstmv_backward_f32, clstm_lstmv_backward_f64};
static const clstm_cell clstm_cell_lstm_peephole = {
    "lstm_peephole", 4, 4, {0, 1, 2, 3}, 0, 0, 3, clstm_lstmv_forward_f32,
    clstm_lstmv_forward_f64, clstm_lstmv_backward_f32, clstm_lstmv_backward_f64};

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
