# C types for pooler/wire/framing.py when Cython compiles it (setup.py); the .py stays the one source.
cdef class PartialMessage:
    cdef public object data
    cdef public Py_ssize_t need

    cpdef void keep(self, object data, Py_ssize_t start)
    cpdef void add(self, object more)
    cpdef object gather(self, object more)
    cpdef bytes take(self)
