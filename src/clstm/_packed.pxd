# Packed weights as an object (see _packed.pyx).
from clstm._lowp cimport clstm_lowp_weights

cdef class PackedWeights:
    cdef readonly object data
    cdef readonly Py_ssize_t n_out, n_in
    cdef readonly str format
    cdef readonly int typenum
    cdef readonly object scales, colsums
    cdef readonly int lowp  # 0 (float32/float64) or csrc/lowp.h's format code
    cdef clstm_lowp_weights lowp_w  # what ptr points to for a low-precision format
    cdef void* ptr
    cdef int pack_nogil(self, const void* w, bint transposed, int n_threads=*) except -1 nogil


cdef object new_array(int nd, Py_ssize_t rows, Py_ssize_t cols, int typenum)
cdef void* operand(object a, int typenum, Py_ssize_t rows, Py_ssize_t cols, str name,
                   bint optional, bint writable) except? NULL
