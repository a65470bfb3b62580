from clstm._cells cimport clstm_cell

cdef const clstm_cell* cell_named(str name) except NULL
