# C types for pooler/net/stream.py when Cython compiles it (setup.py); the .py stays the one source.

cdef class SocketTransport:
    cdef object _loop
    cdef object _sock
    cdef int _fd
    cdef object _protocol
    cdef list _pending
    cdef Py_ssize_t _pending_size
    cdef Py_ssize_t _offset
    cdef Py_ssize_t _high
    cdef Py_ssize_t _low
    cdef bint _closing
    cdef bint _reading
    cdef bint _writing_paused
    cdef bint _eof_pending
    cdef bint _lost
    cdef object _successor

    cdef Py_ssize_t _send(self, bytes data, Py_ssize_t offset) except -2
    cdef void _check_high_water(self) except *
    cdef void _stop_reading(self) except *
