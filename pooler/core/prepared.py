"""Protocol-level named prepared statements under transaction pooling.

Theory of operation. Drivers prepare a statement once per connection (``Parse`` with a name) and
then only ``Bind`` it. Under transaction pooling the next Bind may land on a server that never saw
the Parse, and two clients' ``s0`` would collide on one server. So, like PgBouncer:

* one pooler-wide cache maps a statement's body (query text + parameter types) to a server-side
  name (``pooler_<n>``): every client preparing the same query shares one server statement;
* each client maps *its* names to cache entries; each server keeps an LRU of the entries prepared
  on it (``max_prepared_statements``), closing the least recently used one to make room;
* the client's Parse/Bind/Describe/Close are rewritten to the server-side name; a Parse the
  server already has is answered by the pooler; a Bind on a server that lacks the statement gets
  a hidden Parse first.

Responses must reach the client in the order it sent requests, with the pooler's own answers in
their place and the answers to its hidden messages removed. Requests are grouped in *segments*
(everything up to a Sync). An ordinary segment is forwarded blind: only the kinds of its extended
messages are recorded, one byte each. A segment that contains a message the pooler answers
(``SYNTH``), a hidden message whose answer is dropped (``SKIP``), or a new Parse whose failure must
be undone becomes a ``Segment`` of actions, and the server's answers are matched to it message by
message. That slow path runs once per statement per server, not per query.

Names the pooler owns. Server-side names (``pooler_<n>``) live in the same namespace as SQL ``PREPARE``
names, on servers shared by every client of the pool, so one client's ``DEALLOCATE pooler_1`` would break
every other client's statement on that server (and ``PREPARE pooler_7`` would make the pooler's own
Parse fail). Three guards, cheapest first, none on ordinary traffic:

* a simple Query whose first byte is ``D``/``d``/``P``/``p`` has its first ``RESERVED_PREFIX`` bytes
  matched against ``DEALLOCATE [PREPARE] pooler_<n>`` / ``PREPARE pooler_<n>``: refused with 42939
  (``reserved_name``, as Postgres refuses ``pg_`` role names), Postgres never sees it;
* a ``DEALLOCATE`` that got through anyway (inside a multi-statement Query, after a comment, through the
  extended protocol) is seen by its CommandComplete tag: a server holding pooler statements is then
  closed instead of reused (``stale``), so nobody is handed a server whose statements may be gone;
* an error naming a pooler statement (26000 ``does not exist`` from a DEALLOCATE hidden in a function,
  42P05 ``already exists`` from a hidden PREPARE) repairs the server's record: the statement is prepared
  again on next use, or the server is closed.
"""

from __future__ import annotations

import re

from pooler.wire import messages as pq

# What happens to the answer of a request in a tracked segment.
FORWARD = 0  # the server answers, the client sees it
SKIP = 1  # the pooler added the request: the server's answer is dropped
SYNTH = 2  # the server never sees the request: the pooler answers in its place

#: Request codes recorded per segment: the message type, except Describe of a statement (which
#: answers ParameterDescription before its RowDescription/NoData) gets a code of its own.
DESCRIBE_STATEMENT = 1


#: Server-side names the pooler gives statements: ``pooler_<n>``.
RESERVED_PREFIX_TEXT = "pooler_"
#: How many bytes of a Query starting with D/P are looked at for a reserved name (and waited for).
RESERVED_PREFIX = 64
#: First bytes of a Query that may name a reserved statement (D, d, P, p: 1 in this table): only these are looked at.
RESERVED_LEAD = bytes(1 if chr(b) in "DdPp" else 0 for b in range(256))
_RESERVED_SQL = re.compile(
    rb"(?i:deallocate\s+(?:prepare\s+)?|prepare\s+)((?i:pooler_)[0-9]+|\"pooler_[0-9]+\")(?:[^0-9a-zA-Z_$\"]|$)"
)
_RESERVED_IN_ERROR = re.compile(rb"pooler_[0-9]+")


class PreparedStatement:
    """A cache entry: one query body, one name on every server it is prepared on."""

    __slots__ = ("body", "name")

    def __init__(self, body: bytes, name: bytes) -> None:
        self.body = body  # the Parse payload after the statement name: query, parameter count and types
        self.name = name

    def parse_message(self) -> bytes:
        return pq.parse(self.name, self.body)

    def close_message(self) -> bytes:
        return pq.close_statement(self.name)


class StatementCache:
    """The pooler-wide map from statement body to server-side name."""

    __slots__ = ("_by_body", "_next")

    def __init__(self) -> None:
        self._by_body: dict[bytes, PreparedStatement] = {}
        self._next = 0

    def get(self, body: bytes) -> PreparedStatement:
        statement = self._by_body.get(body)
        if statement is None:
            self._next += 1
            statement = PreparedStatement(body, b"pooler_%d" % self._next)
            self._by_body[body] = statement
        return statement

    def __len__(self) -> int:
        return len(self._by_body)


class Action:
    """One request of a tracked segment and what to do with its answer."""

    __slots__ = ("client_name", "code", "mode", "payload", "statement")

    def __init__(
        self,
        code: int,
        mode: int,
        payload: bytes = b"",
        statement: PreparedStatement | None = None,
        client_name: bytes | None = None,
    ) -> None:
        self.code = code
        self.mode = mode
        self.payload = payload  # what the pooler sends the client, for SYNTH
        self.statement = statement  # for Parse: undone if Postgres refuses or skips it
        self.client_name = client_name  # for a client's Parse: its name, forgotten on failure


class Segment:
    """The requests of one Sync-terminated segment, tracked because the pooler answers some of them."""

    __slots__ = ("actions", "dropping", "failed", "head")

    def __init__(self, codes: bytes | bytearray) -> None:
        self.actions = [Action(code, FORWARD) for code in codes]
        self.head = 0  # the first request whose answer is not complete yet
        self.failed = False  # Postgres reported an error: it skips the rest until Sync
        self.dropping = False  # the pooler refused a message: the client's rest until Sync is dropped


class ServerStatements:
    """One server's prepared statements and the segment its client is sending: the tracking half of the
    scheme above, beside the cache it serves. The client side records and rewrites through it; the
    server side's slow scanner matches answers to its tracked segments."""

    __slots__ = ("inflight", "kinds", "open", "pinned", "prepared")

    def __init__(self) -> None:
        #: The statements this server has, least recently used first (an insertion-ordered dict as LRU).
        self.prepared: dict[PreparedStatement, None] = {}
        #: The kinds of the extended messages of the open segment while it is not tracked (one byte each).
        self.kinds = bytearray()
        #: The open segment once it is tracked.
        self.open: Segment | None = None
        #: Statements the open segment uses: never evicted under it.
        self.pinned: set[PreparedStatement] = set()
        #: Tracked segments not answered yet (the open one included): while any is, the slow scanner runs.
        self.inflight = 0

    def tracked(self) -> Segment:
        """The open segment as a tracked one (its earlier requests all forwarded as they are)."""
        segment = self.open
        if segment is None:
            segment = self.open = Segment(self.kinds)
            self.kinds.clear()
            self.inflight += 1
        return segment

    def record(self, code: int) -> None:
        """A request of the open segment whose answer goes to the client unchanged."""
        segment = self.open
        if segment is None:
            self.kinds.append(code)
        else:
            segment.actions.append(Action(code, FORWARD))

    def end_segment(self) -> int | Segment:
        """The client sent Sync: what the ReadyForQuery it owes will answer (SYNC, or the tracked segment)."""
        if self.pinned:
            self.pinned.clear()
        segment = self.open
        if segment is None:
            if self.kinds:
                self.kinds.clear()
            return pq.SYNC
        self.open = None
        return segment

    def add_synthesized(self, code: int, payload: bytes, *, refuse: bool) -> Segment:
        """The pooler answers a request in the server's place; ``refuse``: the answer is an error, and like
        Postgres after an error the rest of the client's segment is dropped until Sync."""
        segment = self.tracked()
        segment.actions.append(Action(code, SYNTH, payload))
        if refuse:
            segment.dropping = True
        return segment

    def prepare(self, statement: PreparedStatement, mode: int, client_name: bytes | None, limit: int) -> list[bytes]:
        """Messages that prepare ``statement`` here: Close of least recently used ones over ``limit``, then Parse."""
        out: list[bytes] = []
        segment = self.tracked()
        prepared = self.prepared
        if limit:
            for old in list(prepared):
                if len(prepared) < limit:
                    break
                if old in self.pinned:
                    continue
                del prepared[old]
                out.append(old.close_message())
                segment.actions.append(Action(pq.CLOSE, SKIP))
        prepared[statement] = None
        self.pinned.add(statement)
        segment.actions.append(Action(pq.PARSE, mode, statement=statement, client_name=client_name))
        out.append(statement.parse_message())
        return out

    def use(self, statement: PreparedStatement) -> None:
        """The open segment uses a statement this server has: most recently used, not evictable for now."""
        prepared = self.prepared
        del prepared[statement]
        prepared[statement] = None
        self.pinned.add(statement)

    def repair(self, error_body: bytes) -> bool:
        """Postgres named a pooler statement in an error: the statements it holds are not what we recorded (a
        DEALLOCATE or PREPARE ran where the front check could not see it). Fix the record so the next use
        recovers; True when the server cannot be trusted any more and must be retired."""
        fields = pq.parse_error_fields(error_body)
        code = fields.get("C")
        if code == "26000":  # one of ours is gone: prepare it again on next use
            gone = set(reserved_names_in(fields.get("M", "").encode()))
            for statement in [s for s in self.prepared if s.name in gone]:
                del self.prepared[statement]
            return False
        return code == "42P05"  # a pooler name taken by someone's PREPARE

    @staticmethod
    def emit_synthesized(segment: Segment, out: list[bytes]) -> None:
        """The pooler's answers now due (those at the segment's head), unless the segment failed."""
        actions = segment.actions
        while segment.head < len(actions) and actions[segment.head].mode == SYNTH:
            if not segment.failed:
                out.append(actions[segment.head].payload)
            segment.head += 1

    def segment_failed(self, segment: Segment, client_statements: dict[bytes, PreparedStatement] | None) -> None:
        """Postgres reported an error: it skips the segment's remaining requests until Sync, so the Parses
        among them (and the failing one) left no statement behind, and the pooler's answers are void."""
        segment.failed = True
        for action in segment.actions[segment.head :]:
            statement = action.statement
            if action.code == pq.PARSE and statement is not None and action.mode != SYNTH:
                self.prepared.pop(statement, None)
                name = action.client_name
                if name is not None and client_statements is not None and client_statements.get(name) is statement:
                    del client_statements[name]
        segment.head = len(segment.actions)


def statement_name(kind: int, data: bytes, pos: int, limit: int) -> tuple[int, int] | None:
    """Where the statement name of a Parse/Bind/Describe/Close at ``pos`` lies in ``data``.

    ``(start, stop)``, empty for the unnamed statement and for portal operations; None when the
    bytes up to ``limit`` do not reach the end of the name yet.
    """
    body = pos + 5
    if kind == pq.PARSE:
        start = body
    elif kind == pq.BIND:
        portal_end = data.find(b"\x00", body, limit)
        if portal_end < 0:
            return None
        start = portal_end + 1
    else:  # Describe / Close: 'S' statement or 'P' portal, then the name
        if body >= limit:
            return None
        if data[body] != ord("S"):
            return (body, body)
        start = body + 1
    stop = data.find(b"\x00", start, limit)
    if stop < 0:
        return None
    return (start, stop)


def name_in_use(name: bytes) -> bytes:
    return pq.error_response(
        "42P05", "prepared statement name is already in use",
        detail=f'"{name.decode(errors="replace")}" is already prepared on this connection',
        hint="Close (deallocate) it first, or prepare under another name")


def did_not_exist(name: bytes) -> bytes:
    return pq.error_response(
        "26000", "prepared statement did not exist",
        detail=f'this connection never prepared "{name.decode(errors="replace")}", or closed it')


def reserved_name_refusal(prefix: bytes) -> bytes | None:
    """The Query to send in place of one whose text (``prefix``: its first bytes) deallocates or prepares a
    name the pooler owns, or None. Postgres raises the refusal, so the transaction status stays right."""
    match = _RESERVED_SQL.match(prefix)
    if match is None:
        return None
    name = match.group(1).strip(b'"').lower().decode()
    return pq.error_query(
        "42939", f'prepared statement name "{name}" is reserved',
        detail=f'Names starting with "{RESERVED_PREFIX_TEXT}" belong to the pooler: it gives them to the '
               "statements clients prepare with the protocol (Parse), shared by every client of a server.",
        hint="PREPARE and DEALLOCATE statements under names of your own; a driver's prepared statement is "
             "dropped by closing it in the driver (protocol Close), which the pooler handles",
    )


def reserved_names_in(message: bytes) -> list[bytes]:
    """The pooler statement names an error message mentions (in any lc_messages language: names are not translated)."""
    return _RESERVED_IN_ERROR.findall(message)
