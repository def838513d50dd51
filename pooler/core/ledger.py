"""What one server owes: the ledger that decides when a backend is clean enough for another client.

Theory of operation. Both directions of a linked connection write here, each through its own methods,
and nothing else does. The client side records what it sent: each Query, Sync and FunctionCall owes
exactly one ReadyForQuery; any other extended-protocol message leaves the server *unsynced* until the
next Sync; CopyDone/CopyFail end a COPY FROM STDIN. The server side records what came back:
ReadyForQuery pays the oldest debt and carries the transaction status; CopyInResponse starts a COPY.
The pooler's own queries (parameter SETs, ROLLBACK, the reset and check queries) are counted apart in
``swallow``: their answers are dropped, not forwarded.

COPY is counted from both sides because they race. A client may pipeline ``Query(COPY … FROM STDIN)``,
its CopyData and CopyDone in one write, so the CopyDone is seen before the server's CopyInResponse.
Postgres ignores Sync (and Flush) while it is in copy-in mode, so Syncs sent between the request that
started the COPY and the CopyDone owe nothing. The ledger therefore keeps a CopyDone that arrives
before its CopyInResponse as a marker in the order of requests: the CopyInResponse then drops the
Syncs before the marker and the marker itself, and the server is never left believing it is in a
COPY that already ended. A marker that no COPY claims (the COPY failed before it began, and Postgres
ignored the client's CopyDone) is dropped by the ReadyForQuery that answers the request before it.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

from pooler.wire import messages as pq
from pooler.wire.messages import FUNCTION_CALL, QUERY, SYNC, TX_IDLE

if TYPE_CHECKING:
    from pooler.core.prepared import Segment

#: A CopyDone/CopyFail that the client sent before the server's CopyInResponse arrived (see above).
COPY_END = pq.COPY_DONE


class Ledger:
    """The debts of one server connection; ``is_clean()`` is the release rule."""

    __slots__ = ("copy_in", "copy_markers", "desynced", "pending", "swallow", "tx_status", "unsynced")

    def __init__(self) -> None:
        #: Requests still owed a ReadyForQuery, oldest first: QUERY, SYNC, FUNCTION_CALL, a tracked Segment
        #: (prepared statements), or a COPY_END marker.
        self.pending: collections.deque[int | Segment] = collections.deque()
        self.tx_status = TX_IDLE
        self.unsynced = False
        self.copy_in = False
        self.copy_markers = 0  # COPY_END entries in pending: the fast path skips the marker checks when 0
        #: A Sync sent in the middle of a COPY: Postgres ignores it if the COPY still runs and answers it if the
        #: COPY already failed, and nothing here can tell which; such a server stays with its client for good.
        self.desynced = False
        self.swallow = 0

    # --- what the client sent -----------------------------------------------------------------------

    def request_sent(self, kind: int) -> None:
        """A Query or FunctionCall: one ReadyForQuery owed."""
        self.pending.append(kind)
        self.unsynced = False

    def sync_sent(self, entry: int | Segment) -> None:
        """A Sync (``entry`` is SYNC or the tracked segment it closes); ignored by Postgres in copy-in mode."""
        if not self.copy_in:
            self.pending.append(entry)
        else:
            self.desynced = True
        self.unsynced = False

    def extended_sent(self) -> None:
        """Parse, Bind, Describe, Execute, Close or Flush: nothing is owed until the Sync."""
        self.unsynced = True

    def copy_end_sent(self) -> None:
        """CopyDone or CopyFail."""
        if self.copy_in:
            self.copy_in = False
        elif self.pending or self.unsynced:
            self.pending.append(COPY_END)  # ahead of its CopyInResponse (or of a COPY that never starts)
            self.copy_markers += 1
        # else: a stray CopyDone, which Postgres ignores too

    def internal_query_sent(self) -> None:
        """The pooler's own query; send it only when nothing is pending, so its answer comes first."""
        self.swallow += 1

    # --- what the server answered -------------------------------------------------------------------

    def ready_for_query(self, status: int) -> bool:
        """A ReadyForQuery; True when it paid a client's request (False: it answered the pooler's own)."""
        self.tx_status = status
        if self.swallow:
            self.swallow -= 1
            return False
        pending = self.pending
        if not pending:
            return False
        if self.copy_markers:
            return self._pay_past_markers()
        pending.popleft()
        return True

    def _pay_past_markers(self) -> bool:
        """ReadyForQuery with COPY_END markers about: markers no COPY claimed go with the request they follow."""
        pending = self.pending
        self._drop_leading_markers()
        if not pending:
            return False
        pending.popleft()
        self._drop_leading_markers()
        return True

    def _drop_leading_markers(self) -> None:
        pending = self.pending
        while pending and pending[0] == COPY_END:
            pending.popleft()
            self.copy_markers -= 1

    def head(self) -> int | Segment | None:
        """The oldest request still owed an answer (markers skipped): what the next answers belong to."""
        for entry in self.pending:
            if entry != COPY_END:
                return entry
        return None

    def copy_in_started(self) -> list[Segment]:
        """A CopyInResponse: drop the Syncs Postgres will ignore; returns the tracked segments dropped."""
        pending = self.pending
        dropped: list[Segment] = []
        kept: collections.deque[int | Segment] = collections.deque()
        if pending and pending[0] in (QUERY, FUNCTION_CALL):
            kept.append(pending.popleft())  # a simple-protocol COPY: its Query is answered after the copy
        ended = False
        while pending:
            entry = pending[0]
            if entry == COPY_END:
                pending.popleft()
                self.copy_markers -= 1
                ended = True
                break
            if entry == SYNC:
                pending.popleft()
            elif isinstance(entry, int):
                break  # a request pipelined into the COPY: Postgres fails the COPY; leave it be
            else:
                dropped.append(entry)
                pending.popleft()
        kept.extend(pending)
        self.pending = kept
        self.copy_in = not ended
        return dropped

    # --- the release rule ---------------------------------------------------------------------------

    def owes_anything(self) -> bool:
        """Something sent is not answered yet: the server is busy, whatever its transaction status."""
        return bool(self.pending or self.swallow or self.unsynced or self.copy_in or self.desynced)

    def is_clean(self) -> bool:
        """Nothing in flight and no transaction open: safe to hand to another client."""
        return not (self.pending or self.swallow or self.unsynced or self.copy_in or self.desynced) and (
            self.tx_status == TX_IDLE)

    def in_transaction(self) -> bool:
        return self.tx_status != TX_IDLE
