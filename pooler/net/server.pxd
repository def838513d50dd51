# C types for pooler/net/server.py when Cython compiles it (setup.py); the .py stays the one source.
cimport cython
from pooler.core.ledger cimport Ledger
from pooler.core.stats cimport Histogram, PoolStats
from pooler.wire.framing cimport PartialMessage

cdef int COMMAND_COMPLETE, COPY_IN_RESPONSE, DATA_ROW, ERROR_RESPONSE, PARAMETER_STATUS, READY_FOR_QUERY, TX_IDLE
cdef object _LOGIN, _IDLE, _BUSY, _STATEMENT

cdef class ServerConnection:
    cdef public object _login_reader
    cdef public PartialMessage _partial
    cdef public Py_ssize_t _skip
    cdef public object auth
    cdef public Py_ssize_t cancels_in_flight
    cdef public object client
    cdef public str close_reason
    cdef public double connect_started
    cdef public double created_at
    cdef public bint direct
    cdef public bint fatal_seen
    cdef public object key
    cdef public double last_used
    cdef public Ledger ledger
    cdef public object login_error
    cdef public dict params
    cdef public tuple params_key
    cdef public object pool
    cdef public bint reading_paused
    cdef public double request_started
    cdef public bint stale
    cdef public dict startup_params
    cdef public object state
    cdef public object statements
    cdef public PoolStats stats
    cdef public object transport
    cdef public double xact_started

    @cython.locals(n=Py_ssize_t, pos=Py_ssize_t, end=Py_ssize_t, stop=Py_ssize_t, kind=int,
                   forward_from=Py_ssize_t, refused=Py_ssize_t, answered=Py_ssize_t, ledger=Ledger,
                   inspect=bytes)
    cpdef data_received(self, data)
    @cython.locals(now=double, elapsed=double, stats=PoolStats, hist=Histogram)
    cdef void _count_answers(self, Py_ssize_t answered)
    cpdef bint is_clean(self)
