# C types for pooler/core/pool.py when Cython compiles it (setup.py); the .py stays the one source.
from pooler.core.stats cimport PoolStats

cdef class Pool:
    cdef public Py_ssize_t capacity
    cdef public double check_delay
    cdef public object check_query
    cdef public bint connect_failed
    cdef public Py_ssize_t connecting
    cdef public object credentials
    cdef public object db
    cdef public set direct_servers
    cdef public object host
    cdef public object hosts
    cdef public list idle
    cdef public double lifetime
    cdef public object login_error
    cdef public double login_error_until
    cdef public Py_ssize_t min_size
    cdef public Py_ssize_t max_db_connections
    cdef public Py_ssize_t max_user_connections
    cdef public object mode
    cdef public bint paused
    cdef public bint reserve_active
    cdef public Py_ssize_t reserve_size
    cdef public bint round_robin
    cdef public set servers
    cdef public Py_ssize_t size
    cdef public PoolStats stats
    cdef public str user
    cdef public object waiting
    cdef public object welcome
    cdef public list welcome_waiters

cdef object _LOGIN, _IDLE, _ACTIVE, _BUSY, _CLOSED, _BEING_CANCELED
