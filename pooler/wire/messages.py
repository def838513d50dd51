"""The Postgres v3 wire protocol as pure functions over bytes: no sockets, no event loop.

Theory of operation: after startup every message is ``type (1 byte) | length (int32, counts itself) |
payload``. The data path never decodes a message it only forwards; it reads the five header bytes to
find message boundaries and looks inside only the few message types that change pooling state
(ReadyForQuery, ParameterStatus, CopyIn/Out responses, …). Builders here produce the messages the
pooler itself sends (errors, notices, authentication requests); parsers read the ones it must
understand (startup packets, ErrorResponse fields, ParameterStatus).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# --- Named limits ---------------------------------------------------------------------------------

#: A startup packet larger than this is refused before it is read (Postgres uses 10000).
MAX_STARTUP_PACKET = 10_000
#: The smallest meaningful message length: the int32 length itself.
MIN_MESSAGE_LENGTH = 4

# --- Protocol codes -------------------------------------------------------------------------------

PROTOCOL_3_0 = 196608  # 3 << 16
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
#: The ALPN protocol name Postgres 17 requires for direct TLS (``sslnegotiation=direct``).
ALPN_POSTGRESQL = "postgresql"
#: The ALPN protocol name of HTTP/1.1 (RFC 7301), which HTTPS and WSS clients offer on the pooled port.
ALPN_HTTP_1_1 = "http/1.1"
CANCEL_REQUEST_CODE = 80877102

# Frontend (client → server) message types that matter to pooling.
QUERY = ord("Q")
SYNC = ord("S")
FUNCTION_CALL = ord("F")
TERMINATE = ord("X")
COPY_DATA = ord("d")
COPY_DONE = ord("c")
COPY_FAIL = ord("f")
PASSWORD = ord("p")  # also SASLInitialResponse / SASLResponse
PARSE = ord("P")
BIND = ord("B")
DESCRIBE = ord("D")
EXECUTE = ord("E")
CLOSE = ord("C")
FLUSH = ord("H")

# Backend (server → client) message types that matter to pooling.
READY_FOR_QUERY = ord("Z")
PARAMETER_STATUS = ord("S")
ERROR_RESPONSE = ord("E")
NOTICE_RESPONSE = ord("N")
AUTHENTICATION = ord("R")
BACKEND_KEY_DATA = ord("K")
COPY_IN_RESPONSE = ord("G")
COPY_OUT_RESPONSE = ord("H")
COPY_BOTH_RESPONSE = ord("W")
COMMAND_COMPLETE = ord("C")
DATA_ROW = ord("D")
NOTIFICATION_RESPONSE = ord("A")
NEGOTIATE_PROTOCOL_VERSION = ord("v")

# Authentication request codes (payload of an 'R' message).
AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

# Transaction status byte of ReadyForQuery.
TX_IDLE = ord("I")
TX_IN_BLOCK = ord("T")
TX_FAILED = ord("E")

#: Every message after startup begins with a type byte and an int32 length: five bytes.
HEADER_SIZE = 5

# Type OIDs of the columns the pooler itself returns (the admin console).
TEXT_OID = 25
INT4_OID = 23
INT8_OID = 20
NUMERIC_OID = 1700

_INT16 = struct.Struct("!h")
_INT32 = struct.Struct("!i")
_HEADER = struct.Struct("!ci")
_TWO_INT32 = struct.Struct("!ii")
_FIELD = struct.Struct("!ihihih")


# --- Builders -------------------------------------------------------------------------------------


def build(msg_type: bytes, payload: bytes = b"") -> bytes:
    """Frame ``payload`` as one message of ``msg_type`` (a single byte)."""
    return _HEADER.pack(msg_type, len(payload) + 4) + payload


def cstring(text: str) -> bytes:
    """A NUL-terminated UTF-8 string, the protocol's string encoding."""
    return text.encode() + b"\x00"


def authentication(code: int, data: bytes = b"") -> bytes:
    """An Authentication* request ('R')."""
    return build(b"R", _INT32.pack(code) + data)


AUTH_OK_MESSAGE = authentication(AUTH_OK)


def parameter_status(name: str, value: str) -> bytes:
    """ParameterStatus ('S'): tells the client a GUC's current value."""
    return build(b"S", cstring(name) + cstring(value))


def backend_key_data(pid: int, secret: int) -> bytes:
    """BackendKeyData ('K'): the key a client quotes in a CancelRequest."""
    return build(b"K", _TWO_INT32.pack(pid, secret))


def pack_cancel_key(pid: int, secret: int) -> int:
    """A BackendKeyData's two int32s as one int: what the pooler keeps per client (one small object, not a
    tuple of two ints: a tenth of an idle client's own memory)."""
    return (pid << 32) | (secret & 0xFFFFFFFF)


def unpack_cancel_key(key: int) -> tuple[int, int]:
    """(pid, secret) of a key made by pack_cancel_key."""
    return key >> 32, key & 0xFFFFFFFF


def ready_for_query(status: int = TX_IDLE) -> bytes:
    """ReadyForQuery ('Z') with a transaction status byte."""
    return build(b"Z", bytes((status,)))


READY_FOR_QUERY_IDLE = ready_for_query(TX_IDLE)


def query(sql: str) -> bytes:
    """A simple-protocol Query ('Q')."""
    return build(b"Q", cstring(sql))


TERMINATE_MESSAGE = build(b"X")
SYNC_MESSAGE = build(b"S")
PARSE_COMPLETE = build(b"1")
CLOSE_COMPLETE = build(b"3")
EMPTY_QUERY_RESPONSE = build(b"I")
SSL_REQUEST = _TWO_INT32.pack(8, SSL_REQUEST_CODE)


def parse(name: bytes, body: bytes) -> bytes:
    """Parse ('P') of statement ``name``; ``body`` is the rest of a Parse payload (query, parameter types)."""
    return build(b"P", name + b"\x00" + body)


def close_statement(name: bytes) -> bytes:
    """Close ('C') of the prepared statement ``name``."""
    return build(b"C", b"S" + name + b"\x00")


def row_description(columns: list[tuple[str, int, int]]) -> bytes:
    """RowDescription ('T') of text-format columns, each ``(name, type OID, type size)``."""
    parts = [_INT16.pack(len(columns))]
    for name, oid, size in columns:
        parts.append(cstring(name) + _FIELD.pack(0, 0, oid, size, -1, 0))
    return build(b"T", b"".join(parts))


def data_row(values: list[bytes | None]) -> bytes:
    """DataRow ('D'): None is SQL NULL."""
    parts = [_INT16.pack(len(values))]
    for raw in values:
        if raw is None:
            parts.append(_INT32.pack(-1))
        else:
            parts.append(_INT32.pack(len(raw)) + raw)
    return build(b"D", b"".join(parts))


def command_complete(tag: str) -> bytes:
    """CommandComplete ('C') with its command tag."""
    return build(b"C", cstring(tag))


def _fields(severity: str, sqlstate: str, message: str, detail: str | None, hint: str | None) -> bytes:
    parts = [b"S", cstring(severity), b"V", cstring(severity), b"C", cstring(sqlstate), b"M", cstring(message)]
    if detail:
        parts += [b"D", cstring(detail)]
    if hint:
        parts += [b"H", cstring(hint)]
    parts.append(b"\x00")
    return b"".join(parts)


def error_response(
    sqlstate: str,
    message: str,
    *,
    severity: str = "ERROR",
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    """ErrorResponse ('E'). Severity FATAL tells the client the connection is about to close."""
    return build(b"E", _fields(severity, sqlstate, message, detail, hint))


def notice_response(
    message: str, *, sqlstate: str = "00000", severity: str = "NOTICE", detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    """NoticeResponse ('N'): a message the client shows but that does not fail anything."""
    return build(b"N", _fields(severity, sqlstate, message, detail, hint))


def error_query(sqlstate: str, message: str, *, detail: str | None = None, hint: str | None = None) -> bytes:
    """A Query that makes Postgres raise this error, sent in place of a Query the pooler refuses.

    Postgres then answers with the error and a ReadyForQuery whose transaction status is right (a refused
    statement inside a transaction block fails the block, as the statement itself would have).
    """
    using = [f"ERRCODE = {literal(sqlstate)}", f"MESSAGE = {literal(message)}"]
    if detail:
        using.append(f"DETAIL = {literal(detail)}")
    if hint:
        using.append(f"HINT = {literal(hint)}")
    return query(f"DO $pooler$ BEGIN RAISE EXCEPTION USING {', '.join(using)}; END $pooler$")


def literal(text: str) -> str:
    """``text`` as an SQL string literal (standard_conforming_strings on, as the pooler's own queries assume)."""
    return "'" + text.replace("'", "''") + "'"


def negotiate_protocol_version(newest_minor: int, unsupported: list[str]) -> bytes:
    """NegotiateProtocolVersion ('v'): the newest minor we speak and the ``_pq_`` options we ignored."""
    payload = _TWO_INT32.pack(newest_minor, len(unsupported)) + b"".join(cstring(o) for o in unsupported)
    return build(b"v", payload)


def startup_message(params: dict[str, str], protocol: int = PROTOCOL_3_0) -> bytes:
    """StartupMessage, as the pooler sends it to Postgres."""
    body = _INT32.pack(protocol) + b"".join(cstring(k) + cstring(v) for k, v in params.items()) + b"\x00"
    return _INT32.pack(len(body) + 4) + body


def cancel_request(pid: int, secret: int) -> bytes:
    """CancelRequest, sent on a fresh connection."""
    return struct.pack("!iiii", 16, CANCEL_REQUEST_CODE, pid, secret)


# --- Parsers --------------------------------------------------------------------------------------


class ProtocolViolationError(Exception):
    """The peer sent bytes that are not the Postgres protocol; ``str()`` says what was wrong."""


@dataclass(frozen=True, slots=True)
class StartupPacket:
    """The first packet of a connection, decoded. Exactly one of the shapes below."""

    code: int  # PROTOCOL_3_0-ish version, or SSL/GSSENC/CANCEL request code
    params: dict[str, str]
    cancel_key: tuple[int, int] | None = None

    @property
    def major(self) -> int:
        return self.code >> 16

    @property
    def minor(self) -> int:
        return self.code & 0xFFFF


def read_int32(data: bytes | bytearray | memoryview, offset: int = 0) -> int:
    """A big-endian signed int32 at ``offset``."""
    return int(_INT32.unpack_from(data, offset)[0])


def parse_startup_packet(packet: bytes) -> StartupPacket:
    """Decode a whole startup-phase packet (its length prefix included).

    Raises ProtocolViolationError naming what is malformed, so the caller can answer with a clear FATAL.
    """
    if len(packet) < 8:
        raise ProtocolViolationError(f"startup packet too short ({len(packet)} bytes)")
    code = read_int32(packet, 4)
    if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
        return StartupPacket(code, {})
    if code == CANCEL_REQUEST_CODE:
        if len(packet) != 16:
            raise ProtocolViolationError(f"cancel request has length {len(packet)}, expected 16")
        pid, secret = _TWO_INT32.unpack_from(packet, 8)
        return StartupPacket(code, {}, (pid, secret))
    body = packet[8:]
    if not body.endswith(b"\x00"):
        raise ProtocolViolationError("startup packet is not terminated by a NUL byte")
    items = body[:-1].split(b"\x00")
    if items and items[-1] == b"":
        items.pop()
    if len(items) % 2:
        raise ProtocolViolationError("startup packet has a parameter name without a value")
    params: dict[str, str] = {}
    try:
        for i in range(0, len(items), 2):
            params[items[i].decode()] = items[i + 1].decode()
    except UnicodeDecodeError as exc:
        raise ProtocolViolationError("startup packet is not valid UTF-8") from exc
    return StartupPacket(code, params)


def parse_parameter_status(payload: bytes | memoryview) -> tuple[str, str]:
    """The name and value of a ParameterStatus payload."""
    name, _, value = bytes(payload).rstrip(b"\x00").partition(b"\x00")
    return name.decode("utf-8", "replace"), value.decode("utf-8", "replace")


def parse_cstrings(payload: bytes | memoryview) -> list[str]:
    """Split a payload of NUL-terminated strings (ParameterStatus and the like)."""
    raw = bytes(payload)
    if raw.endswith(b"\x00"):
        raw = raw[:-1]
    return [part.decode("utf-8", "replace") for part in raw.split(b"\x00")]


def parse_error_fields(payload: bytes | memoryview) -> dict[str, str]:
    """The fields of an ErrorResponse / NoticeResponse payload, keyed by their one-letter code.

    Never raises: a last field without its NUL (a truncated or hostile message) runs to the end of the payload.
    """
    fields: dict[str, str] = {}
    raw = bytes(payload)
    pos = 0
    while pos < len(raw) and raw[pos] != 0:
        end = raw.find(b"\x00", pos + 1)
        if end < 0:
            end = len(raw)
        fields[chr(raw[pos])] = raw[pos + 1 : end].decode("utf-8", "replace")
        pos = end + 1
    return fields


# --- The extended query protocol (what the pooler's own HTTP client sends) -------------------------

ROW_DESCRIPTION = ord("T")


def password_message(password: str) -> bytes:
    """PasswordMessage ('p') carrying a cleartext password."""
    return build(b"p", cstring(password))


def parse_message(sql: str, statement: str = "") -> bytes:
    """Parse ('P') with no parameter types: Postgres infers them, as for an untyped ``$1``."""
    return build(b"P", cstring(statement) + cstring(sql) + _INT16.pack(0))


def describe_statement(statement: str = "") -> bytes:
    """Describe ('D') of a prepared statement: ParameterDescription, then RowDescription or NoData."""
    return build(b"D", b"S" + cstring(statement))


def bind_message(params: list[str | None], portal: str = "", statement: str = "") -> bytes:
    """Bind ('B') with every parameter in text format (None is NULL) and text results."""
    parts = [cstring(portal), cstring(statement), _INT16.pack(0), _INT16.pack(len(params))]
    for value in params:
        if value is None:
            parts.append(_INT32.pack(-1))
        else:
            raw = value.encode()
            parts.append(_INT32.pack(len(raw)))
            parts.append(raw)
    parts.append(_INT16.pack(0))
    return build(b"B", b"".join(parts))


def execute_message(portal: str = "", max_rows: int = 0) -> bytes:
    """Execute ('E') of a portal; ``max_rows`` 0 means all rows."""
    return build(b"E", cstring(portal) + _INT32.pack(max_rows))


@dataclass(frozen=True, slots=True)
class FieldDescription:
    """One column of a RowDescription ('T'), with the names node-postgres gives them."""

    name: str
    table_oid: int
    column_id: int
    type_oid: int
    type_size: int
    type_modifier: int
    format: int


def parse_row_description(payload: bytes | memoryview) -> list[FieldDescription]:
    """The columns of a RowDescription payload; raises ProtocolViolationError if it is malformed."""
    raw = bytes(payload)
    try:
        (count,) = _INT16.unpack_from(raw)
        pos = 2
        fields: list[FieldDescription] = []
        for _ in range(count):
            end = raw.index(b"\x00", pos)
            name = raw[pos:end].decode("utf-8", "replace")
            table, column, oid, size, modifier, fmt = _FIELD.unpack_from(raw, end + 1)
            fields.append(FieldDescription(name, table, column, oid, size, modifier, fmt))
            pos = end + 1 + _FIELD.size
    except (ValueError, struct.error) as exc:
        raise ProtocolViolationError(f"malformed RowDescription: {exc}") from exc
    return fields


def parse_data_row(payload: bytes | memoryview) -> list[bytes | None]:
    """The column values of a DataRow payload (None for NULL); raises ProtocolViolationError if malformed."""
    raw = bytes(payload)
    try:
        (count,) = _INT16.unpack_from(raw)
        pos = 2
        values: list[bytes | None] = []
        for _ in range(count):
            (length,) = _INT32.unpack_from(raw, pos)
            pos += 4
            if length < 0:
                values.append(None)
                continue
            if pos + length > len(raw):
                raise ValueError("value runs past the message")
            values.append(raw[pos : pos + length])
            pos += length
    except (ValueError, struct.error) as exc:
        raise ProtocolViolationError(f"malformed DataRow: {exc}") from exc
    return values
