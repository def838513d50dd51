"""``pooler.core.ledger``: what a server owes, driven from both directions, without sockets.

The COPY cases are the ones a pipelining client produces (issue 10, item 2): the client's CopyDone
can be recorded before the server's CopyInResponse, and the ledger must still end clean.
"""

from __future__ import annotations

from pooler.core.ledger import Ledger
from pooler.wire import messages as pq


def test_each_request_is_paid_by_one_ready_for_query() -> None:
    ledger = Ledger()
    ledger.request_sent(pq.QUERY)
    ledger.extended_sent()
    ledger.sync_sent(pq.SYNC)
    assert not ledger.is_clean() and ledger.owes_anything()
    assert ledger.ready_for_query(pq.TX_IN_BLOCK)
    assert ledger.ready_for_query(pq.TX_IN_BLOCK)
    assert ledger.owes_anything() is False and not ledger.is_clean()  # a transaction is open
    ledger.request_sent(pq.QUERY)
    assert ledger.ready_for_query(pq.TX_IDLE)
    assert ledger.is_clean()


def test_extended_messages_owe_nothing_until_sync_but_keep_the_server() -> None:
    ledger = Ledger()
    ledger.extended_sent()
    assert not ledger.pending and ledger.unsynced and not ledger.is_clean()


def test_the_poolers_own_answers_are_counted_apart() -> None:
    ledger = Ledger()
    ledger.internal_query_sent()
    ledger.request_sent(pq.QUERY)
    assert not ledger.ready_for_query(pq.TX_IDLE)  # the internal query's
    assert ledger.ready_for_query(pq.TX_IDLE)  # the client's
    assert ledger.is_clean()


def test_simple_copy_in_order() -> None:
    ledger = Ledger()
    ledger.request_sent(pq.QUERY)
    ledger.copy_in_started()
    assert ledger.copy_in
    ledger.copy_end_sent()
    assert ledger.ready_for_query(pq.TX_IDLE)
    assert ledger.is_clean()


def test_simple_copy_pipelined_copy_done_before_copy_in_response() -> None:
    ledger = Ledger()
    ledger.request_sent(pq.QUERY)  # Query + CopyData + CopyDone in one write
    ledger.copy_end_sent()
    ledger.copy_in_started()  # CopyInResponse arrives after the CopyDone was forwarded
    assert not ledger.copy_in
    assert ledger.ready_for_query(pq.TX_IDLE)
    assert ledger.is_clean()


def test_extended_copy_pipelined_drops_only_the_syncs_postgres_ignores() -> None:
    ledger = Ledger()
    ledger.extended_sent()  # Parse, Bind, Execute
    ledger.sync_sent(pq.SYNC)  # ignored by Postgres: it arrives in copy-in mode
    ledger.copy_end_sent()
    ledger.sync_sent(pq.SYNC)  # answered
    ledger.copy_in_started()
    assert not ledger.copy_in and list(ledger.pending) == [pq.SYNC]
    assert ledger.ready_for_query(pq.TX_IDLE)
    assert ledger.is_clean()


def test_extended_copy_with_the_sync_only_after_copy_done() -> None:
    ledger = Ledger()
    ledger.extended_sent()
    ledger.copy_end_sent()
    ledger.sync_sent(pq.SYNC)
    ledger.copy_in_started()
    assert list(ledger.pending) == [pq.SYNC] and not ledger.copy_in
    assert ledger.ready_for_query(pq.TX_IDLE)
    assert ledger.is_clean()


def test_a_copy_that_never_starts_leaves_no_marker_behind() -> None:
    ledger = Ledger()
    ledger.request_sent(pq.QUERY)  # COPY into a missing table, data pipelined behind it
    ledger.copy_end_sent()
    assert ledger.ready_for_query(pq.TX_IDLE)  # ErrorResponse, ReadyForQuery: no CopyInResponse ever
    assert not ledger.pending and ledger.is_clean()


def test_a_stray_copy_done_owes_nothing() -> None:
    ledger = Ledger()
    ledger.copy_end_sent()
    assert ledger.is_clean()


def test_a_sync_sent_during_copy_in_is_not_owed_but_the_server_is_never_reused() -> None:
    """Postgres ignores a Sync in copy-in mode but answers it if the COPY already failed, and the ledger cannot
    tell which: its answer could pay a later request while that one still runs (found in review). The server
    stays with its client, and is closed when the client leaves."""
    ledger = Ledger()
    ledger.extended_sent()
    ledger.sync_sent(pq.SYNC)
    ledger.copy_in_started()
    assert ledger.copy_in and not ledger.pending
    ledger.sync_sent(pq.SYNC)  # ignored by Postgres in copy-in mode... or answered, if the COPY failed
    assert not ledger.pending
    ledger.copy_end_sent()
    ledger.request_sent(pq.QUERY)  # SELECT pg_sleep(10)
    assert ledger.ready_for_query(pq.TX_IDLE)  # perhaps the answer to the Sync, not to the query
    assert not ledger.is_clean() and ledger.owes_anything()
