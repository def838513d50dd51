"""Detect SQL whose effect outlives its transaction: the session state transaction pooling loses or leaks.

Why: on a transaction- or statement-pooled endpoint, a client's next transaction may run on another
server connection, and the one it leaves serves other clients. A ``SET``, ``LISTEN``, temporary table,
SQL prepared statement, held cursor, session advisory lock or ``LOAD`` therefore silently vanishes for
its author and leaks to whoever gets the connection next. The data path asks :class:`SessionStateChecker`
about every Query and Parse message and, per ``session_state_check``, warns (a NOTICE) or refuses the
statement; this module is only the verdict, pure and without I/O.

How, cheapest first, because this runs on every query:

1. **Trigger words.** ``str.lower()`` and nine ``in`` tests (``set``, ``listen``, ``prepare``, ``execute``,
   ``deallocate``, ``declare``, ``temp``, ``advisory``, ``load``): ordinary traffic has none of them
   and costs ~0.3 µs. ``set`` also covers ``reset`` and ``set_config``; ``temp`` covers ``temporary``
   and ``pg_temp``. ``into`` is deliberately not a trigger: ``SELECT … INTO`` only makes a temporary
   table with ``TEMP``/``TEMPORARY``/``pg_temp``, all of which contain ``temp``, and as a trigger it
   would send every ``INSERT INTO`` to the parser. (A regular expression over the same words measured
   10-20x slower than ``lower()`` + ``in``.)
2. **One DML statement.** Text that starts with ``SELECT``/``INSERT``/``UPDATE``/``DELETE``/``WITH``/
   ``VALUES``/``MERGE`` and has no ``;`` before its end is a single DML statement (``;`` is the only
   statement separator). The only session state such a statement can leave is an advisory lock,
   ``set_config()`` or ``SELECT … INTO TEMP``, so unless ``advisory``, ``set_config`` or ``temp``
   appears, the answer is ``()`` without parsing. This is what keeps ``UPDATE … SET …`` cheap: pgbench
   and ORMs in simple-query mode inline literal values, so every such UPDATE is new text that a cache
   would only miss (and churn). Anything else — a leading comment, a ``;`` inside a literal — falls
   through to the parser, never to a guess.
3. **A bounded LRU cache** of verdicts keyed by ``(sql, in_transaction)``, for repeated text with a
   trigger word (``SET search_path …`` at every checkout, PostgREST's ``set_config(…)`` preamble).
   Text longer than :data:`MAX_CACHED_SQL` is analysed but not cached, to bound the memory.
4. **The verdict from Postgres's own grammar**: pglast's libpg_query. Words inside string literals,
   quoted identifiers, comments and dollar-quoted bodies are not statements, so they never count. We
   ask for the parse tree as JSON (``parse_sql_json`` + ``json.loads``, ~9-15 µs for a pgbench query)
   rather than as pglast's node objects (``parse_sql``, ~45-70 µs): same tree, same node names, a
   fifth of the cost. Text the parser rejects gives ``()``: Postgres will report the syntax error.

What is and is not detected (docs/session-state.md has the user-facing version):

- ``SET``/``SET ROLE``/``SET SESSION AUTHORIZATION``/``SET SESSION CHARACTERISTICS`` → ``set``. Not
  flagged: ``SET LOCAL``, ``SET TRANSACTION``, ``SET CONSTRAINTS``, ``SET transaction_isolation``/
  ``transaction_read_only``/``transaction_deferrable`` (Postgres resets those at every transaction
  start), and a ``SET`` (or ``set_config``) of a parameter the pooler itself carries from server to
  server (``client_encoding``/``SET NAMES``, ``DateStyle``, ``TimeZone``/``SET TIME ZONE``,
  ``standard_conforming_strings``, ``application_name``: Postgres reports them with ParameterStatus and
  the pooler re-applies the client's value wherever it lands, as PgBouncer does).
- Statements that only bring the server connection back to a fresh connection's state are not flagged,
  because that is what drivers and pools send on their own when a connection is reused, and a fresh
  state is what every other server connection has: ``RESET name``/``RESET ALL``/``RESET ROLE``/``RESET
  SESSION AUTHORIZATION``, ``DISCARD …``, ``DEALLOCATE ALL``, ``UNLISTEN``, ``CLOSE``,
  ``pg_advisory_unlock*()``. When the client did make session state first (``SET search_path`` then
  ``RESET search_path``), the statement that made it was flagged, so the pair gives one warning, which is
  the one worth having: the ``RESET`` itself cannot undo a ``SET`` that ran on another connection.
- ``set_config(name, value, is_local)`` → ``set_config`` unless ``name`` is a parameter the pooler
  carries (above) or ``is_local`` is the constant true
  (``true``, ``'on'``, ``'yes'``, ``'t'``, … or a cast of one); a ``false``/``NULL`` constant is
  session-level for sure (``NULL`` means false to Postgres), anything else (``$1``, a column) may be.
- ``LISTEN`` → ``listen``; ``UNLISTEN`` is harmless.
- SQL ``PREPARE``/``EXECUTE``/``DEALLOCATE name`` (also ``CREATE TABLE … AS EXECUTE``, ``EXPLAIN
  EXECUTE``) → ``prepare``; ``DEALLOCATE ALL`` is housekeeping (above). ``DEALLOCATE name`` stays flagged:
  it names one statement that may live on another connection, and fails there. Protocol-level prepared
  statements are handled by the pool, not here.
- ``DECLARE … WITH HOLD`` → ``cursor_with_hold``.
- ``CREATE TEMP TABLE``/``VIEW``/``SEQUENCE``, ``CREATE TEMP TABLE … AS``, ``SELECT … INTO TEMP``,
  ``CREATE TABLE pg_temp.t`` → ``temp_table``, except a table with ``ON COMMIT DROP`` that runs inside
  a transaction: ``in_transaction`` (from ReadyForQuery) or a multi-statement query string. The
  latter covers ``BEGIN; CREATE TEMP TABLE … ON COMMIT DROP; …; COMMIT`` and is wider on purpose:
  Postgres runs every statement of a multi-statement Query message in a transaction (an implicit one
  when there is no BEGIN) that ends by the end of the message, on one server connection, so such a
  table never outlives the message. Hence no BEGIN/COMMIT bookkeeping is needed. Views and sequences
  have no ``ON COMMIT`` and are always flagged.
- ``pg_advisory_lock``, ``pg_advisory_lock_shared``, ``pg_try_advisory_lock``,
  ``pg_try_advisory_lock_shared`` (bare or ``pg_catalog.``-qualified) anywhere in a statement that
  executes expressions — SELECT/INSERT/UPDATE/DELETE/MERGE (with CTEs and subqueries), CALL arguments,
  ``COPY (query)``, ``CREATE TABLE … AS``, ``DECLARE``, ``EXPLAIN ANALYZE`` → ``advisory_lock``. Not
  in definitions that do not run now (``CREATE FUNCTION``/``VIEW``/``RULE``, column defaults), nor the
  ``_xact_`` variants or ``pg_advisory_unlock*``.
- ``LOAD`` → ``load``. ``DISCARD`` is harmless and not flagged.
- Not detected: anything inside a ``DO`` block or a function body (PL/pgSQL and dynamic SQL are
  opaque to the SQL grammar, so ``DO $$ BEGIN PERFORM pg_advisory_lock(1); END $$`` passes), and
  names spelled with Unicode escapes (``U&"…"``).

The checker is not thread-safe; like the rest of the data path it belongs to one event loop.
"""

from __future__ import annotations

import enum
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from pglast.parser import ParseError, parse_sql_json

__all__ = ["MAX_CACHED_SQL", "TRACKED_BY_POOLER", "Finding", "SessionStateChecker", "SessionStateKind"]

#: Query text longer than this (in characters) is analysed but not cached: the cache holds the text as
#: its key, so this bounds it to about cache_size * MAX_CACHED_SQL characters (16 Mi at the default).
MAX_CACHED_SQL: Final = 4096


class SessionStateKind(enum.StrEnum):
    """What kind of session state a statement leaves. The values are stable: they are Prometheus
    label values and log keys, and the data path warns once per (client, kind)."""

    SET = "set"
    SET_CONFIG = "set_config"
    LISTEN = "listen"
    PREPARE = "prepare"
    CURSOR_WITH_HOLD = "cursor_with_hold"
    TEMP_TABLE = "temp_table"
    ADVISORY_LOCK = "advisory_lock"
    LOAD = "load"


@dataclass(frozen=True, slots=True)
class Finding:
    """One piece of session state in a query, worded for the developer who wrote it.

    The data path sends ``f"{statement} does not survive transaction pooling: {why}"`` as the message
    and ``fix`` as the hint, so ``why`` is a lowercase clause without a final period and ``fix`` is a
    whole sentence. Findings are shared constants: compare them with ``==`` or by ``kind``.
    """

    kind: SessionStateKind
    statement: str  # a short label: "SET", "LISTEN", "CREATE TEMP TABLE", "pg_advisory_lock()", ...
    why: str  # why it breaks under transaction pooling
    fix: str  # what to do instead


#: What the parse step is: SQL text in, libpg_query's JSON parse tree out. Injectable for tests.
ParseFunction = Callable[[str], str]

_DML_HEADS: Final = ("select", "insert", "update", "delete", "with", "values", "merge")
_PG_SPACE: Final = " \t\n\r\f\v"  # what Postgres's scanner treats as whitespace
_DIRECT: Final = "connect to the direct (unpooled) URL"

# --- the findings, as constants -------------------------------------------------------------------------

_K = SessionStateKind


_SET_WHY = (
    "the next transaction may run on another server connection, which does not have this setting, "
    "while this one keeps it for the next client"
)
_SET_FIX = f"Use SET LOCAL inside a transaction, or {_DIRECT} for session state."
_ROLE_WHY = (
    "the role stays on this server connection, so the next client there runs as that role, while your next "
    "transaction may run on another connection as the login role"
)
_SET_FINDINGS: Final = {
    "SET": Finding(_K.SET, "SET", _SET_WHY, _SET_FIX),
    "SET ROLE": Finding(_K.SET, "SET ROLE", _ROLE_WHY, f"Use SET LOCAL ROLE inside a transaction, or {_DIRECT}."),
    "SET SESSION AUTHORIZATION": Finding(_K.SET, "SET SESSION AUTHORIZATION", _ROLE_WHY,
                                    f"Use SET LOCAL SESSION AUTHORIZATION inside a transaction, or {_DIRECT}."),
    "SET SESSION CHARACTERISTICS": Finding(
        _K.SET, "SET SESSION CHARACTERISTICS",
        "it changes the transaction defaults of this server connection only, so your next transaction may "
        "run on another one without them, while the next client here inherits them",
        f"Use SET TRANSACTION or BEGIN ISOLATION LEVEL … in each transaction, or {_DIRECT}.",
    ),
}

_SET_CONFIG_FIX = f"Pass true as the third argument (is_local) inside a transaction, or {_DIRECT} for session state."
_SET_CONFIG: Final = Finding(
    _K.SET_CONFIG, "set_config()",
    "with is_local = false the setting stays on this server connection for the next client, while your "
    "next transaction may run on another one without it",
    _SET_CONFIG_FIX,
)
_SET_CONFIG_MAYBE: Final = Finding(
    _K.SET_CONFIG, "set_config()",
    "its third argument (is_local) is not the constant true, so the setting may stay on this server "
    "connection for the next client, while your next transaction may run on another one without it",
    _SET_CONFIG_FIX,
)

_LISTEN: Final = Finding(
    _K.LISTEN, "LISTEN",
    "notifications are delivered to the server connection that ran LISTEN, which serves other clients "
    "once this transaction ends, so you will not receive them",
    "Run LISTEN on a dedicated connection to the direct (unpooled) URL.",
)

_PREPARE_FIX = (
    "Use protocol-level prepared statements (what drivers do by default), which pooler tracks across "
    f"server connections, or {_DIRECT}."
)
_PREPARE: Final = Finding(
    _K.PREPARE, "PREPARE",
    "the prepared statement exists only on this server connection, so an EXECUTE in a later transaction "
    'may run on another one and fail with "prepared statement does not exist"',
    _PREPARE_FIX,
)
_EXECUTE: Final = Finding(
    _K.PREPARE, "EXECUTE",
    "an SQL prepared statement exists only on the server connection that ran PREPARE, and this "
    "transaction may run on another one",
    _PREPARE_FIX,
)
_DEALLOCATE: Final = Finding(
    _K.PREPARE, "DEALLOCATE",
    "it acts on this server connection only, which may not be the one that ran PREPARE, and may remove "
    "statements another client prepared there",
    _PREPARE_FIX,
)

_WITH_HOLD: Final = Finding(
    _K.CURSOR_WITH_HOLD, "DECLARE … WITH HOLD",
    "the held cursor stays open on this server connection after COMMIT, so a FETCH in a later "
    "transaction may run on another one where it does not exist",
    f"Declare the cursor without WITH HOLD and FETCH from it inside one transaction, or {_DIRECT}.",
)

_TEMP_FIX = f"Create it with ON COMMIT DROP inside BEGIN … COMMIT and use it there, or {_DIRECT}."


def _temp_why(what: str) -> str:
    return (
        f"the temporary {what} lives as long as this server connection, so your next transaction may run on "
        "another one without it, while the next client here sees it"
    )


_TEMP_TABLE: Final = Finding(_K.TEMP_TABLE, "CREATE TEMP TABLE", _temp_why("table"), _TEMP_FIX)
_TEMP_TABLE_AS: Final = Finding(_K.TEMP_TABLE, "CREATE TEMP TABLE … AS", _temp_why("table"), _TEMP_FIX)
_SELECT_INTO_TEMP: Final = Finding(
    _K.TEMP_TABLE, "SELECT … INTO TEMP", _temp_why("table"),
    f"Use CREATE TEMP TABLE … ON COMMIT DROP AS SELECT … inside BEGIN … COMMIT, or {_DIRECT}.",
)
_TEMP_DROP_OUTSIDE: Final = Finding(
    _K.TEMP_TABLE, "CREATE TEMP TABLE … ON COMMIT DROP",
    "outside a transaction block ON COMMIT DROP drops the table as soon as this statement commits, so "
    "no later statement can use it",
    "Run it and the statements that use the table inside one BEGIN … COMMIT.",
)
_TEMP_VIEW: Final = Finding(
    _K.TEMP_TABLE, "CREATE TEMP VIEW", _temp_why("view"),
    f"Create a regular view (temporary views have no ON COMMIT DROP), or {_DIRECT}.",
)
_TEMP_SEQUENCE: Final = Finding(
    _K.TEMP_TABLE, "CREATE TEMP SEQUENCE", _temp_why("sequence"),
    f"Create a regular sequence (temporary sequences have no ON COMMIT DROP), or {_DIRECT}.",
)

_ADVISORY_FUNCTIONS: Final = (
    "pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared",
)
_ADVISORY: Final = {
    name: Finding(
        _K.ADVISORY_LOCK, f"{name}()",
        "a session-level advisory lock stays held by this server connection after your transaction ends, "
        "so your unlock may run on another connection and fail while the lock blocks everyone else",
        f"Use {name.replace('advisory_lock', 'advisory_xact_lock')}() inside a transaction; it is released "
        "at COMMIT or ROLLBACK.",
    )
    for name in _ADVISORY_FUNCTIONS
}

_LOAD: Final = Finding(
    _K.LOAD, "LOAD",
    "the library is loaded into this server connection only, so your next transaction may run on another "
    "one without it",
    f"Preload it on every connection with session_preload_libraries, or {_DIRECT}.",
)

# --- the analysis -------------------------------------------------------------------------------------

#: SET forms that are transaction-scoped: SET TRANSACTION …, SET TRANSACTION SNAPSHOT …, and the GUCs
#: Postgres re-initialises at every transaction start.
_TRANSACTION_SCOPED: Final = frozenset({
    "TRANSACTION", "TRANSACTION SNAPSHOT", "transaction_isolation", "transaction_read_only",
    "transaction_deferrable",
})
_CURSOR_OPT_HOLD: Final = 0x0020  # src/include/nodes/parsenodes.h
#: Statements that evaluate the expressions in them now (so a function call in them runs).
_EXECUTING: Final = frozenset({
    "SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "CallStmt", "CopyStmt",
    "CreateTableAsStmt", "DeclareCursorStmt", "ExecuteStmt",
})
#: Parameters the pooler carries from server to server for each client (Postgres reports them with
#: ParameterStatus; the data path re-applies the client's value with one SET): a session-level SET of one
#: of these follows the client. Lower case, as GUC names compare. ``track_extra_parameters`` are not read
#: here (the checker is shared by every pool): a SET of one of those still warns.
TRACKED_BY_POOLER: Final = frozenset({
    "client_encoding", "datestyle", "timezone", "standard_conforming_strings", "application_name",
})
_TRUE_WORDS: Final = ("true", "yes")
_FALSE_WORDS: Final = ("false", "no")


def _parse_bool(text: str) -> bool | None:
    """Postgres's ``parse_bool``: unique prefixes of true/false/yes/no, on/off, 1/0; None if invalid."""
    s = text.strip(_PG_SPACE).lower()
    if not s:
        return None
    if any(w.startswith(s) for w in _TRUE_WORDS) or s in ("on", "1"):
        return True
    if any(w.startswith(s) for w in _FALSE_WORDS) or s in ("of", "off", "0"):
        return False
    return None


def _constant_bool(node: Any) -> bool | None:
    """The value of a boolean constant argument (``true``, ``'off'``, ``'t'::bool``, ``NULL``), else None.

    ``NULL`` reads as False: ``set_config`` treats a null ``is_local`` as false.
    """
    if not isinstance(node, dict):
        return None
    cast = node.get("TypeCast")
    if cast is not None:
        names = cast.get("typeName", {}).get("names", ())
        if names and names[-1].get("String", {}).get("sval") in ("bool", "boolean"):
            return _constant_bool(cast.get("arg"))
        return None
    const = node.get("A_Const")
    if const is None:
        return None
    if const.get("isnull"):
        return False
    if "boolval" in const:
        return bool(const["boolval"].get("boolval", False))
    if "sval" in const:
        return _parse_bool(str(const["sval"].get("sval", "")))
    return None


def _constant_text(node: Any) -> str:
    """The value of a string constant argument (``'TimeZone'``), else ``""``."""
    if isinstance(node, dict):
        const = node.get("A_Const")
        if isinstance(const, dict) and "sval" in const:
            return str(const["sval"].get("sval", ""))
    return ""


def _function_name(call: dict[str, Any]) -> str | None:
    """The name of a called function if it is a pg_catalog one (bare, or qualified with pg_catalog)."""
    parts = [p.get("String", {}).get("sval") for p in call.get("funcname", ())]
    if len(parts) == 1 or (len(parts) == 2 and parts[0] == "pg_catalog"):
        name = parts[-1]
        return name if isinstance(name, str) else None
    return None


def _is_temp(rangevar: Any) -> bool:
    """A relation that will be temporary: TEMP/TEMPORARY, or created in the pg_temp schema."""
    if not isinstance(rangevar, dict):
        return False
    if rangevar.get("relpersistence") == "t":
        return True
    schema = rangevar.get("schemaname")
    return isinstance(schema, str) and schema.startswith("pg_temp")


def _explain_analyzes(explain: dict[str, Any]) -> bool:
    for option in explain.get("options", ()):
        elem = option.get("DefElem", {})
        if elem.get("defname") == "analyze":
            arg = elem.get("arg")
            if arg is None:
                return True
            value = arg.get("String", {}).get("sval") if isinstance(arg, dict) else None
            return value is not None and _parse_bool(value) is not False
    return False


class _Analysis:
    """The findings of one query string, in order of appearance and without repeats."""

    __slots__ = ("found", "in_block", "want_calls")

    def __init__(self, in_block: bool, want_calls: bool) -> None:
        self.found: dict[Finding, None] = {}
        self.in_block = in_block  # the statements run inside a transaction that ends by the end of the text
        self.want_calls = want_calls  # the text mentions a function we look for, so walk expressions

    def add(self, finding: Finding) -> None:
        self.found.setdefault(finding)

    def statement(self, node_type: str, node: dict[str, Any]) -> None:
        """Judge one statement (top-level, or the one inside EXPLAIN ANALYZE)."""
        if node_type == "VariableSetStmt":
            self._variable_set(node)
        elif node_type == "ListenStmt":
            self.add(_LISTEN)
        elif node_type == "PrepareStmt":
            self.add(_PREPARE)  # its query runs at EXECUTE, which is flagged in its own right
        elif node_type == "DeallocateStmt":
            if not node.get("isall"):
                self.add(_DEALLOCATE)  # DEALLOCATE ALL only empties this connection: housekeeping
        elif node_type == "LoadStmt":
            self.add(_LOAD)
        elif node_type == "CreateStmt":
            if _is_temp(node.get("relation")):
                self._temp_table(_TEMP_TABLE, node.get("oncommit"))
        elif node_type == "ViewStmt":
            if _is_temp(node.get("view")):
                self.add(_TEMP_VIEW)
        elif node_type == "CreateSeqStmt":
            if _is_temp(node.get("sequence")):
                self.add(_TEMP_SEQUENCE)
        elif node_type == "ExplainStmt":
            query = node.get("query", {})
            if _explain_analyzes(node):
                for inner_type, inner in query.items():
                    self.statement(inner_type, inner)
            elif "ExecuteStmt" in query:
                self.add(_EXECUTE)  # EXPLAIN EXECUTE needs the prepared statement on this connection
        elif node_type in _EXECUTING:
            if node_type == "ExecuteStmt":
                self.add(_EXECUTE)
            elif node_type == "DeclareCursorStmt":
                if int(node.get("options", 0)) & _CURSOR_OPT_HOLD:
                    self.add(_WITH_HOLD)
            elif node_type == "CreateTableAsStmt":
                into = node.get("into", {})
                if _is_temp(into.get("rel")):
                    self._temp_table(_TEMP_TABLE_AS, into.get("onCommit"))
                if "ExecuteStmt" in node.get("query", {}):
                    self.add(_EXECUTE)
            elif node_type == "SelectStmt" and _is_temp(node.get("intoClause", {}).get("rel")):
                self.add(_SELECT_INTO_TEMP)  # SELECT … INTO has no ON COMMIT clause
            if self.want_calls:
                self._calls(node)

    def _variable_set(self, node: dict[str, Any]) -> None:
        if node.get("is_local"):
            return  # SET LOCAL: ends with the transaction (and outside one, Postgres ignores it)
        kind = node.get("kind")
        name = node.get("name", "")
        if name in _TRANSACTION_SCOPED or name.lower() in TRACKED_BY_POOLER:
            return
        if kind in ("VAR_RESET", "VAR_RESET_ALL"):
            return  # back to the default, as on a fresh connection: housekeeping (the SET before it warned)
        if kind == "VAR_SET_MULTI":
            if name != "SESSION CHARACTERISTICS":
                return  # an unknown multi-form: only the ones above exist in Postgres 18
            label = "SET SESSION CHARACTERISTICS"
        elif name == "role":
            label = "SET ROLE"
        elif name == "session_authorization":
            label = "SET SESSION AUTHORIZATION"
        else:
            label = "SET"
        self.add(_SET_FINDINGS[label])

    def _temp_table(self, finding: Finding, on_commit: object) -> None:
        if on_commit != "ONCOMMIT_DROP":
            self.add(finding)
        elif not self.in_block:
            self.add(_TEMP_DROP_OUTSIDE)

    def _calls(self, tree: dict[str, Any]) -> None:
        """Flag the advisory-lock and set_config calls anywhere in a statement's tree, in source order.

        Iterative, so a deeply nested expression cannot hit Python's recursion limit.
        """
        stack: list[Any] = [tree]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                call = node.get("FuncCall")
                if call is not None:
                    self._call(call)
                stack.extend(reversed(node.values()))
            elif isinstance(node, list):
                stack.extend(reversed(node))

    def _call(self, call: dict[str, Any]) -> None:
        name = _function_name(call)
        if name is None:
            return
        advisory = _ADVISORY.get(name)
        if advisory is not None:
            self.add(advisory)
        elif name == "set_config":
            args = call.get("args", ())
            if len(args) == 3 and _constant_text(args[0]).lower() not in TRACKED_BY_POOLER:
                # (any other arity is not pg_catalog.set_config and fails anyway)
                is_local = _constant_bool(args[2])
                if is_local is None:
                    self.add(_SET_CONFIG_MAYBE)
                elif not is_local:
                    self.add(_SET_CONFIG)


def _single_dml(low: str) -> bool:
    """True if the (lowercased) text is one DML statement: a DML keyword first and no ``;`` before the end.

    A statement starting with one of these words is DML or a syntax error, and without a ``;`` there is
    no second statement. A leading comment or parenthesis makes this False (the parser decides).
    """
    if not low.lstrip(_PG_SPACE).startswith(_DML_HEADS):
        return False
    semicolon = low.find(";")
    return semicolon < 0 or not low[semicolon:].strip(_PG_SPACE + ";")


class SessionStateChecker:
    """Says which session state a query string leaves behind; ``()`` for ordinary traffic.

    One per pooler (the cache is shared by all clients). ``parse`` is the parse step — text in,
    libpg_query JSON out — and exists so tests can count or replace it.
    """

    __slots__ = ("_cache", "_cache_size", "_parse")

    def __init__(self, cache_size: int = 4096, *, parse: ParseFunction = parse_sql_json) -> None:
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self._cache_size = cache_size
        self._cache: OrderedDict[tuple[str, bool], tuple[Finding, ...]] = OrderedDict()
        self._parse = parse

    def check(self, sql: str, in_transaction: bool) -> tuple[Finding, ...]:
        """The session state ``sql`` leaves, one Finding per distinct issue, in order of appearance.

        ``in_transaction``: whether the client is inside a transaction block as the statement starts
        (ReadyForQuery status ``T`` or ``E``); it decides whether ``ON COMMIT DROP`` makes a temporary
        table safe. Never raises on bad SQL: text the parser rejects gives ``()``.
        """
        low = sql.lower()
        if not (
            "set" in low or "temp" in low or "listen" in low or "prepare" in low or "execute" in low
            or "declare" in low or "advisory" in low or "load" in low or "deallocate" in low
        ):
            return ()
        if _single_dml(low) and not ("advisory" in low or "set_config" in low or "temp" in low):
            return ()
        key = (sql, in_transaction)
        cache = self._cache
        findings = cache.get(key)
        if findings is not None:
            cache.move_to_end(key)
            return findings
        findings = self._analyze(sql, low, in_transaction)
        if self._cache_size and len(sql) <= MAX_CACHED_SQL:
            cache[key] = findings
            if len(cache) > self._cache_size:
                cache.popitem(last=False)
        return findings

    def _analyze(self, sql: str, low: str, in_transaction: bool) -> tuple[Finding, ...]:
        try:
            tree = json.loads(self._parse(sql))
        except (ParseError, ValueError, RecursionError):
            # A syntax error (Postgres will report it), text the parser cannot encode (lone surrogates,
            # a UnicodeEncodeError), or a tree too deep to load: no verdict rather than an exception.
            return ()
        statements = tree.get("stmts", ()) if isinstance(tree, dict) else ()
        analysis = _Analysis(
            in_block=in_transaction or len(statements) > 1,
            want_calls="advisory" in low or "set_config" in low,
        )
        for raw in statements:
            for node_type, node in raw.get("stmt", {}).items():
                analysis.statement(node_type, node)
        return tuple(analysis.found)
