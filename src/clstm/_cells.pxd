# Recurrent cells (C in csrc/cells.h): the fused element-wise step, forward and backward,
# and the description (gate and row blocks, per-dtype functions) the driver runs by.
cdef extern from "csrc/cells.h":
    float clstm_sigmoidf(float x) noexcept nogil
    float clstm_tanhf(float x) noexcept nogil
    double clstm_sigmoid(double x) noexcept nogil
    double clstm_tanh(double x) noexcept nogil

    ctypedef struct clstm_cell_config:
        const void* extra
        int options[2]

    ctypedef void (*clstm_forward_f32)(Py_ssize_t n_rows, Py_ssize_t H, Py_ssize_t j0,
                                       Py_ssize_t j1, float* gates, const float* hg,
                                       const float* bias, const clstm_cell_config* cfg,
                                       const float* c_prev, float* c_t,
                                       float* r_t) noexcept nogil
    ctypedef void (*clstm_forward_f64)(Py_ssize_t n_rows, Py_ssize_t H, Py_ssize_t j0,
                                       Py_ssize_t j1, double* gates, const double* hg,
                                       const double* bias, const clstm_cell_config* cfg,
                                       const double* c_prev, double* c_t,
                                       double* r_t) noexcept nogil
    ctypedef void (*clstm_backward_f32)(Py_ssize_t n_rows, Py_ssize_t H, Py_ssize_t j0,
                                        Py_ssize_t j1, float* gates,
                                        const clstm_cell_config* cfg, const float* c_prev,
                                        const float* c_t, const float* dr,
                                        float* dc) noexcept nogil
    ctypedef void (*clstm_backward_f64)(Py_ssize_t n_rows, Py_ssize_t H, Py_ssize_t j0,
                                        Py_ssize_t j1, double* gates,
                                        const clstm_cell_config* cfg, const double* c_prev,
                                        const double* c_t, const double* dr,
                                        double* dc) noexcept nogil

    ctypedef struct clstm_cell:
        const char* name
        int n_gates
        int row_blocks
        int x_block[4]
        int separate_recurrent
        int state_is_output
        int n_extra
        clstm_forward_f32 forward_f32
        clstm_forward_f64 forward_f64
        clstm_backward_f32 backward_f32
        clstm_backward_f64 backward_f64

    const clstm_cell clstm_cell_lstm
    const clstm_cell clstm_cell_gru


from cython cimport floating


cdef inline void cell_forward(const clstm_cell* cell, Py_ssize_t n_rows, Py_ssize_t H,
                              Py_ssize_t j0, Py_ssize_t j1, floating* gates,
                              const floating* hg, const floating* bias,
                              const clstm_cell_config* cfg, const floating* c_prev,
                              floating* c_t, floating* r_t) noexcept nogil:
    if floating is float:
        cell.forward_f32(n_rows, H, j0, j1, gates, hg, bias, cfg, c_prev, c_t, r_t)
    else:
        cell.forward_f64(n_rows, H, j0, j1, gates, hg, bias, cfg, c_prev, c_t, r_t)


cdef inline void cell_backward(const clstm_cell* cell, Py_ssize_t n_rows, Py_ssize_t H,
                               Py_ssize_t j0, Py_ssize_t j1, floating* gates,
                               const clstm_cell_config* cfg, const floating* c_prev,
                               const floating* c_t, const floating* dr,
                               floating* dc) noexcept nogil:
    if floating is float:
        cell.backward_f32(n_rows, H, j0, j1, gates, cfg, c_prev, c_t, dr, dc)
    else:
        cell.backward_f64(n_rows, H, j0, j1, gates, cfg, c_prev, c_t, dr, dc)
