# C types for pooler/core/stats.py when Cython compiles it (setup.py); the .py stays the one source.
cdef class Histogram:
    cdef public list counts
    cdef public double total

cdef class PoolStats:
    cdef public long long bind_count
    cdef public long long client_parse_count
    cdef public long long query_count
    cdef public Histogram query_hist
    cdef public long long received
    cdef public long long sent
    cdef public long long server_assignment_count
    cdef public long long server_parse_count
    cdef public dict session_state
    cdef public Histogram wait_hist
    cdef public long long xact_count
    cdef public Histogram xact_hist
