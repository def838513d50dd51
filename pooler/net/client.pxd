# C types for pooler/net/client.py when Cython compiles it (setup.py); the .py stays the one source.
cimport cython
from pooler.core.ledger cimport Ledger
from pooler.core.stats cimport Histogram, PoolStats
from pooler.net.server cimport ServerConnection
from pooler.wire.framing cimport PartialMessage

cdef int COPY_DATA, COPY_DONE, COPY_FAIL, DESCRIBE, EXECUTE, FLUSH, FUNCTION_CALL, PARSE, QUERY, SYNC, TERMINATE, TX_IDLE
cdef object _READY, _CLOSED, _SESSION, _STATEMENT

cdef class ClientConnection:
    cdef public PartialMessage _held
    cdef public bint _reading_paused
    cdef public Py_ssize_t _skip
    cdef public bint cleartext
    cdef public double connected_at
    cdef public str database
    cdef public object db
    cdef public bint direct
    cdef public double held_since
    cdef public bint http_ok
    cdef public long long id
    cdef public long long key
    cdef public double last_active
    cdef public object login
    cdef public Py_ssize_t max_packet
    cdef public dict params
    cdef public tuple params_key
    cdef public object pool
    cdef public object pooler
    cdef public str remote
    cdef public ServerConnection server
    cdef public dict startup_params
    cdef public object state
    cdef public object state_checker
    cdef public bint state_refuse
    cdef public object state_warned
    cdef public dict statements
    cdef public PoolStats stats
    cdef public object tls
    cdef public bint track_statements
    cdef public object transport
    cdef public str user
    cdef public double wait_started
    cdef public bint waiting

    cpdef data_received(self, data)
    @cython.locals(n=Py_ssize_t, pos=Py_ssize_t, end=Py_ssize_t, stop=Py_ssize_t, kind=int, length=Py_ssize_t,
                   max_packet=Py_ssize_t, sent_from=Py_ssize_t, ledger=Ledger, was_idle=bint, track=bint,
                   now=double)
    cpdef forward(self, data, ServerConnection server)
    @cython.locals(waited=double, stats=PoolStats, hist=Histogram)
    cpdef linked(self, ServerConnection server, double now)
    @cython.locals(now=double, handed_to=ClientConnection)
    cpdef server_ready_for_query(self, ServerConnection server)
    cpdef _hold(self, data)
