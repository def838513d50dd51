# C types for pooler/core/ledger.py when Cython compiles it (setup.py); the .py stays the one source.
cdef int FUNCTION_CALL, QUERY, SYNC, TX_IDLE

cdef class Ledger:
    cdef public object pending
    cdef public int tx_status
    cdef public bint unsynced
    cdef public bint copy_in
    cdef public Py_ssize_t copy_markers
    cdef public bint desynced
    cdef public Py_ssize_t swallow

    cpdef void request_sent(self, object kind)
    cpdef void sync_sent(self, object entry)
    cpdef void extended_sent(self)
    cpdef void copy_end_sent(self)
    cpdef void internal_query_sent(self)
    cpdef bint ready_for_query(self, int status)
    cdef bint _pay_past_markers(self)
    cdef void _drop_leading_markers(self)
    cpdef object head(self)
    cpdef list copy_in_started(self)
    cpdef bint owes_anything(self)
    cpdef bint is_clean(self)
    cpdef bint in_transaction(self)
