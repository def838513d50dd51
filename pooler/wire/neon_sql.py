"""Neon's SQL over HTTP as a sans-IO codec: a request's headers and JSON body in, Postgres messages out;
backend messages in, Neon's JSON out.

Theory of operation. ``parse_request`` validates a ``POST /sql`` (headers, body, connection string) into
a ``SqlRequest`` or raises ``SqlRequestError`` carrying the HTTP status and Neon's error JSON.
``request_messages`` turns it into one pipelined run of the extended protocol, exactly what Neon's proxy
sends: per query Parse (no parameter types), Describe, Bind (text parameters, text results), Execute,
Sync; a batch is wrapped in ``START TRANSACTION …`` and ``COMMIT``, each with its own Sync. Each Sync
answers with a ReadyForQuery, so ``ResultCollector`` counts ReadyForQuery messages to know which query
the next messages belong to. After a failure inside a batch, Postgres answers every later query with
"current transaction is aborted" and COMMIT with ROLLBACK: the batch is rolled back in the same round
trip, and the collector reports the first error only, as Neon does.

Values: with ``Neon-Raw-Text-Output: true`` (the driver always sends it) every non-NULL value is the
Postgres text as a JSON string; without it bool, int2/int4, finite float4/float8, json/jsonb and arrays
of them become JSON values and everything else stays a string (int8 and numeric too: JSON numbers would
lose precision), as in Neon's proxy.

Nothing here touches a socket; ``pooler.net.sql`` drives it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from pooler.wire import messages as pq

# --- Headers --------------------------------------------------------------------------------------

CONNECTION_STRING = "neon-connection-string"
RAW_TEXT_OUTPUT = "neon-raw-text-output"
ARRAY_MODE = "neon-array-mode"
ISOLATION_LEVEL = "neon-batch-isolation-level"
READ_ONLY = "neon-batch-read-only"
DEFERRABLE = "neon-batch-deferrable"

#: Header value -> SQL, in Neon's spelling.
ISOLATION_LEVELS = {
    "ReadUncommitted": "READ UNCOMMITTED",
    "ReadCommitted": "READ COMMITTED",
    "RepeatableRead": "REPEATABLE READ",
    "Serializable": "SERIALIZABLE",
}

#: The keys of Neon's error JSON, in its order (ErrorResponse field code, or None for always-null).
ERROR_KEYS: tuple[tuple[str, str], ...] = (
    ("message", "M"), ("code", "C"), ("detail", "D"), ("hint", "H"), ("position", "P"),
    ("internalPosition", "p"), ("internalQuery", "q"), ("severity", "S"), ("where", "W"), ("table", "t"),
    ("column", "c"), ("schema", "s"), ("dataType", "d"), ("constraint", "n"), ("file", "F"), ("line", "L"),
    ("routine", "R"),
)  # fmt: skip


class SqlRequestError(Exception):
    """A request that cannot run: ``status`` and ``fields`` (ErrorResponse-style) make the reply."""

    def __init__(self, status: int, message: str, *, code: str = "08P01", hint: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.fields = {"M": message, "C": code, "S": "ERROR"}
        if hint:
            self.fields["H"] = hint


@dataclass(frozen=True, slots=True)
class Target:
    """Who logs in where: from ``Neon-Connection-String``."""

    user: str
    password: str | None
    database: str
    startup: dict[str, str]  # extra startup parameters (application_name, options)

    @property
    def key(self) -> tuple[str, str | None, str, tuple[tuple[str, str], ...]]:
        """Two requests with equal keys may share one logged-in session."""
        return (self.user, self.password, self.database, tuple(sorted(self.startup.items())))


@dataclass(frozen=True, slots=True)
class Query:
    sql: str
    params: list[str | None]
    array_mode: bool | None = None  # per-query ``arrayMode`` of the body, else the header's


@dataclass(frozen=True, slots=True)
class SqlRequest:
    target: Target
    queries: list[Query]
    batch: bool
    raw_output: bool = False
    array_mode: bool = False
    isolation_level: str | None = None  # the header value (a key of ISOLATION_LEVELS)
    read_only: bool = False
    deferrable: bool = False
    echo_headers: list[tuple[str, str]] = field(default_factory=list)  # batch headers sent back


# --- Requests -------------------------------------------------------------------------------------


def parse_connection_string(url: str) -> Target:
    """The user, password and database of a ``postgres://`` URL; raises SqlRequestError (400)."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError as exc:
        raise SqlRequestError(400, f"invalid connection string in Neon-Connection-String: {exc}",
                              hint="send a URL like postgresql://user:password@host/dbname") from None
    if parts.scheme not in ("postgres", "postgresql"):
        raise SqlRequestError(400, "invalid connection string in Neon-Connection-String: the scheme must be "
                              "postgres:// or postgresql://",
                              hint="send a URL like postgresql://user:password@host/dbname")
    user = unquote(parts.username or "")
    database = unquote(parts.path.lstrip("/"))
    if not user:
        raise SqlRequestError(400, "missing user name in Neon-Connection-String", code="28000",
                              hint="send a URL like postgresql://user:password@host/dbname")
    if not database:
        raise SqlRequestError(400, "missing database name in Neon-Connection-String", code="3D000",
                              hint="send a URL like postgresql://user:password@host/dbname")
    password = unquote(parts.password) if parts.password is not None else None
    query = parse_qs(parts.query)
    startup = {key: values[-1] for key, values in query.items() if key in ("application_name", "options")}
    return Target(user, password, database, startup)


def json_param(value: Any) -> str | None:
    """A JSON parameter as Postgres text: strings as they are, null as NULL, arrays as array literals,
    anything else as its JSON text (Neon's rules)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return _array_literal(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _array_literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, list):
        return "{" + ",".join(_array_literal(v) for v in value) + "}"
    if isinstance(value, dict):
        return json.dumps(json.dumps(value, separators=(",", ":"), ensure_ascii=False), ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False)  # strings quoted and escaped, numbers and booleans bare


def _query(item: Any, where: str) -> Query:
    if not isinstance(item, dict) or not isinstance(item.get("query"), str):
        raise SqlRequestError(400, f"invalid request body: {where} must be an object with a \"query\" string",
                              hint='send {"query": "SELECT $1", "params": ["x"]}')
    params = item.get("params", [])
    if params is None:
        params = []
    if not isinstance(params, list):
        raise SqlRequestError(400, f"invalid request body: {where}.params must be an array",
                              hint='send {"query": "SELECT $1", "params": ["x"]}')
    array_mode = item.get("arrayMode")
    return Query(item["query"], [json_param(p) for p in params],
                 array_mode if isinstance(array_mode, bool) else None)


def parse_request(headers: Mapping[str, str], body: bytes) -> SqlRequest:
    """Validate a ``POST /sql``; ``headers`` keyed by lower-case name. Raises SqlRequestError."""
    url = headers.get(CONNECTION_STRING)
    if not url:
        raise SqlRequestError(400, "missing Neon-Connection-String header",
                              hint="send the database URL (postgresql://user:password@host/dbname) in it")
    target = parse_connection_string(url)
    if target.password is None and headers.get("authorization", "").lower().startswith("bearer "):
        raise SqlRequestError(400, "JWT authentication (Authorization: Bearer) is not supported by the pooler",
                              code="28000", hint="put the role's password in the connection string")
    level = headers.get(ISOLATION_LEVEL)
    if level is not None and level not in ISOLATION_LEVELS:
        raise SqlRequestError(400, "invalid isolation level", code="22023",
                              hint=f"Neon-Batch-Isolation-Level is one of {', '.join(ISOLATION_LEVELS)}")
    try:
        payload = json.loads(body)  # the driver sends text/plain: the body is JSON whatever its type says
    except (ValueError, UnicodeDecodeError) as exc:
        raise SqlRequestError(400, f"invalid request body: not JSON ({exc})",
                              hint='send {"query": "...", "params": [...]} or {"queries": [...]}') from None
    read_only = headers.get(READ_ONLY) == "true"
    deferrable = headers.get(DEFERRABLE) == "true"
    common: dict[str, Any] = {
        "raw_output": headers.get(RAW_TEXT_OUTPUT) == "true",
        "array_mode": headers.get(ARRAY_MODE) == "true",
        "isolation_level": level,
        "read_only": read_only,
        "deferrable": deferrable,
    }
    if isinstance(payload, dict) and "queries" in payload:
        items = payload["queries"]
        if not isinstance(items, list):
            raise SqlRequestError(400, "invalid request body: \"queries\" must be an array",
                                  hint='send {"queries": [{"query": "...", "params": [...]}, ...]}')
        echo = []
        if read_only:
            echo.append(("Neon-Batch-Read-Only", "true"))
        if deferrable:
            echo.append(("Neon-Batch-Deferrable", "true"))
        if level is not None:
            echo.append(("Neon-Batch-Isolation-Level", level))
        queries = [_query(item, f"queries[{i}]") for i, item in enumerate(items)]
        return SqlRequest(target, queries, batch=True, echo_headers=echo, **common)
    return SqlRequest(target, [_query(payload, "the body")], batch=False, **common)


def begin_statement(request: SqlRequest) -> str:
    """The START TRANSACTION a batch runs first, with the header's isolation level and access modes."""
    modes = []
    if request.isolation_level:
        modes.append("ISOLATION LEVEL " + ISOLATION_LEVELS[request.isolation_level])
    if request.read_only:
        modes.append("READ ONLY")
    if request.deferrable:
        modes.append("DEFERRABLE")
    return "START TRANSACTION" + (" " + ", ".join(modes) if modes else "")


def _one(sql: str, params: list[str | None], *, describe: bool) -> bytes:
    parts = [pq.parse_message(sql)]
    if describe:
        parts.append(pq.describe_statement())
    parts += [pq.bind_message(params), pq.execute_message(), pq.SYNC_MESSAGE]
    return b"".join(parts)


def request_messages(request: SqlRequest) -> bytes:
    """Every message of the request, to be sent at once (one round trip)."""
    out = [_one(begin_statement(request), [], describe=False)] if request.batch else []
    out += [_one(q.sql, q.params, describe=True) for q in request.queries]
    if request.batch:
        out.append(_one("COMMIT", [], describe=False))
    return b"".join(out)


def startup_parameters(target: Target) -> dict[str, str]:
    """What the in-process client puts in its StartupMessage (JSON is UTF-8, so the session is too)."""
    return {"user": target.user, "database": target.database, "client_encoding": "UTF8", **target.startup}


# --- Errors ---------------------------------------------------------------------------------------


def error_json(fields: Mapping[str, str]) -> dict[str, str | None]:
    """Neon's error body from ErrorResponse fields: every key, absent ones null, position/line as strings."""
    return {key: fields.get(code) for key, code in ERROR_KEYS}


# --- Results --------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Result:
    array_mode: bool
    fields: list[pq.FieldDescription] = field(default_factory=list)
    rows: list[Any] = field(default_factory=list)
    tag: str = ""


class ResponseTooLargeError(Exception):
    """The rows collected so far exceed the response size limit (HTTP 507)."""


class ResultCollector:
    """Backend messages of one request (after login) in; Neon's JSON out.

    ``feed`` takes one message and returns bytes to send back to the server (a CopyFail for COPY FROM
    STDIN, which HTTP cannot feed), usually b""; ``done`` turns true at the last ReadyForQuery. Then
    ``error`` holds the first ErrorResponse's fields, or ``body()`` the JSON. Raises
    ResponseTooLargeError once the values collected pass ``max_bytes``.
    """

    def __init__(self, request: SqlRequest, max_bytes: int) -> None:
        self.request = request
        self.max_bytes = max_bytes
        self.size = 0
        self.error: dict[str, str] | None = None
        self.done = False
        self._offset = 1 if request.batch else 0  # the START TRANSACTION's ReadyForQuery comes first
        self._expected = len(request.queries) + (2 if request.batch else 0)
        self._seen = 0
        self._results = [
            _Result(q.array_mode if q.array_mode is not None else request.array_mode) for q in request.queries
        ]

    def _current(self) -> _Result | None:
        index = self._seen - self._offset
        return self._results[index] if 0 <= index < len(self._results) else None

    def feed(self, kind: int, payload: bytes) -> bytes:
        if kind == pq.DATA_ROW:
            result = self._current()
            if result is not None and self.error is None:
                values = pq.parse_data_row(payload)
                self.size += len(payload) + 2 * len(values)
                if self.size > self.max_bytes:
                    raise ResponseTooLargeError(f"response is too large (max is {self.max_bytes} bytes)")
                result.rows.append(self._row(result, values))
        elif kind == pq.ROW_DESCRIPTION:
            result = self._current()
            if result is not None:
                result.fields = pq.parse_row_description(payload)
        elif kind == pq.COMMAND_COMPLETE:
            result = self._current()
            if result is not None:
                result.tag = payload.rstrip(b"\x00").decode("utf-8", "replace")
        elif kind == pq.ERROR_RESPONSE:
            if self.error is None:
                self.error = pq.parse_error_fields(payload)
        elif kind == pq.READY_FOR_QUERY:
            self._seen += 1
            self.done = self._seen >= self._expected
        elif kind == pq.COPY_IN_RESPONSE:
            return pq.build(b"f", pq.cstring("COPY FROM STDIN is not supported over HTTP"))
        return b""

    def _row(self, result: _Result, values: list[bytes | None]) -> Any:
        raw = self.request.raw_output
        fields = result.fields
        out: list[Any] = []
        for i, value in enumerate(values):
            if value is None:
                out.append(None)
                continue
            text = value.decode("utf-8", "replace")
            out.append(text if raw or i >= len(fields) else text_to_json(text, fields[i].type_oid))
        if result.array_mode:
            return out
        return {fields[i].name if i < len(fields) else str(i): v for i, v in enumerate(out)}

    def body(self) -> bytes:
        """The 200 response body (only when ``done`` without ``error``)."""
        results = [self._result_json(r) for r in self._results]
        payload: Any = {"results": results} if self.request.batch else results[0]
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()

    @staticmethod
    def _result_json(result: _Result) -> dict[str, Any]:
        command, row_count = command_tag(result.tag)
        return {
            "fields": [
                {"name": f.name, "dataTypeID": f.type_oid, "tableID": f.table_oid, "columnID": f.column_id,
                 "dataTypeSize": f.type_size, "dataTypeModifier": f.type_modifier, "format": "text"}
                for f in result.fields
            ],
            "rows": result.rows,
            "command": command,
            "rowCount": row_count,
            "rowAsArray": result.array_mode,
        }


def command_tag(tag: str) -> tuple[str, int | None]:
    """``("INSERT", 3)`` from ``INSERT 0 3``, ``("SELECT", 1)`` from ``SELECT 1``, ``("BEGIN", None)``."""
    name, _, rest = tag.partition(" ")
    if not rest:
        return name, None
    if name == "INSERT":
        rest = rest.partition(" ")[2]
    try:
        return name, int(rest)
    except ValueError:
        return name, None


# --- Postgres text -> JSON ------------------------------------------------------------------------

BOOL, INT2, INT4, FLOAT4, FLOAT8, JSON_OID, JSONB = 16, 21, 23, 700, 701, 114, 3802

#: Built-in array types -> element type (what Neon's proxy learns from the catalog; a user-defined array
#: type is not listed and stays a string, a difference only without Neon-Raw-Text-Output).
ARRAY_ELEMENTS = {
    1000: BOOL, 1005: INT2, 1007: INT4, 1021: FLOAT4, 1022: FLOAT8, 199: JSON_OID, 3807: JSONB,
    1001: 17, 1002: 18, 1003: 19, 1009: 25, 1014: 1042, 1015: 1043, 1016: 20, 1028: 26, 1231: 1700,
    1115: 1114, 1185: 1184, 1182: 1082, 1183: 1083, 1270: 1266, 1187: 1186, 2951: 2950, 1041: 869,
    651: 650, 1040: 829, 1561: 1560, 1563: 1562, 791: 790, 1017: 600, 1018: 601, 1019: 602, 1020: 603,
    1027: 604, 629: 628, 719: 718, 3643: 3614, 3645: 3615, 1006: 22, 1008: 24, 1010: 27, 1011: 28,
    1012: 29, 3221: 3220, 2949: 2970, 4073: 4072, 1263: 2275,
}  # fmt: skip


def text_to_json(text: str, oid: int) -> Any:
    """A Postgres text value as Neon's JSON value for a column of type ``oid``."""
    element = ARRAY_ELEMENTS.get(oid)
    if element is not None:
        try:
            return _parse_array(text, element)
        except ValueError:
            return text
    return _scalar(text, oid)


def _scalar(text: str, oid: int) -> Any:
    try:
        if oid == BOOL:
            return text == "t"
        if oid in (INT2, INT4):
            return int(text)
        if oid in (FLOAT4, FLOAT8):
            number = float(text)
            return number if math.isfinite(number) else text
        if oid in (JSON_OID, JSONB):
            return json.loads(text)
    except ValueError:
        return text
    return text


def _parse_array(text: str, element: int) -> list[Any]:
    """Postgres array text (``{1,2,"a b",NULL}``, nested, with optional bounds) to a list."""
    if text.startswith("["):  # bounds decoration: [1:2]={...}
        text = text.partition("=")[2]
    items, rest = _array_items(text.lstrip(), element)
    if rest.strip():
        raise ValueError("unbalanced array")
    return items


def _array_items(text: str, element: int) -> tuple[list[Any], str]:
    if not text.startswith("{"):
        raise ValueError("array does not start with {")
    text = text[1:]
    items: list[Any] = []
    if text.startswith("}"):
        return items, text[1:].lstrip()
    while True:
        text = text.lstrip()
        if text.startswith("{"):
            nested, text = _array_items(text, element)
            items.append(nested)
        elif text.startswith('"'):
            chars: list[str] = []
            i = 1
            while True:
                if i >= len(text):
                    raise ValueError("unbalanced quoted string")
                c = text[i]
                if c == "\\":
                    if i + 1 >= len(text):
                        raise ValueError("unbalanced quoted string")
                    chars.append(text[i + 1])
                    i += 2
                elif c == '"':
                    break
                else:
                    chars.append(c)
                    i += 1
            items.append(_scalar("".join(chars), element))
            text = text[i + 1 :].lstrip()
        else:
            end = min((i for i in (text.find(","), text.find("}")) if i >= 0), default=-1)
            if end < 0:
                raise ValueError("unbalanced array")
            item = text[:end].rstrip()
            items.append(None if item == "NULL" else _scalar(item, element))
            text = text[end:]
        if text.startswith(","):
            text = text[1:]
            continue
        if text.startswith("}"):
            return items, text[1:].lstrip()
        raise ValueError("unbalanced array")


# --- The driver's configuration -------------------------------------------------------------------


def driver_config(host: str, port: int, *, tls: bool = False) -> str:
    """The ``neonConfig`` lines that point ``@neondatabase/serverless`` at a local endpoint (what ``pooler
    up`` prints; the README explains each): HTTPS and WSS when ``tls`` (the pooled port does TLS), else
    HTTP and WS. Node.js < 22 also needs ``neonConfig.webSocketConstructor = ws`` from the ``ws`` package."""
    scheme = "https" if tls else "http"
    return (
        "// @neondatabase/serverless: SQL over HTTP and WebSocket on the pooled port\n"
        f"neonConfig.fetchEndpoint = '{scheme}://{host}:{port}/sql';\n"
        f"neonConfig.wsProxy = (host) => `${{host}}:{port}/v2`;\n"
        f"neonConfig.useSecureWebSocket = {'true' if tls else 'false'};\n"
        "neonConfig.pipelineTLS = false;\n"
    )
