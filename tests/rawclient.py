"""A raw-socket Postgres client for tests that must send what no real driver would.

It frames messages with ``pooler.wire.messages``'s builders, reads whole backend messages back, and can log
in with cleartext, md5 or SCRAM-SHA-256 (via scramp), so a test can put a malformed packet exactly where
it wants: before the startup packet, during authentication, or after login. Every read has a timeout,
so a pooler that goes silent fails the test instead of hanging it.
"""

from __future__ import annotations

import hashlib
import socket
import struct
from dataclasses import dataclass
from types import TracebackType

from scramp import ScramClient  # type: ignore[import-untyped]

from pooler.wire import messages as pq

DEFAULT_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Message:
    """One backend message: its type letter and payload (the length field stripped)."""

    kind: str
    payload: bytes

    @property
    def fields(self) -> dict[str, str]:
        """ErrorResponse / NoticeResponse fields keyed by their one-letter code (``C``, ``M``, ``S``…)."""
        return pq.parse_error_fields(self.payload)

    def __repr__(self) -> str:
        shown = self.fields if self.kind in "EN" else self.payload[:60]
        return f"Message({self.kind!r}, {shown!r})"


class LoginFailedError(Exception):
    """Login ended with an ErrorResponse; ``fields`` are its fields, ``messages`` all that came before it."""

    def __init__(self, fields: dict[str, str], messages: list[Message]) -> None:
        super().__init__(f"login failed: {fields}")
        self.fields = fields
        self.messages = messages


class ConnectionClosedError(Exception):
    """The pooler closed the connection; ``messages`` holds what it sent before closing."""

    def __init__(self, messages: list[Message]) -> None:
        super().__init__(f"connection closed after {messages!r}")
        self.messages = messages


def startup_packet(params: dict[str, str], protocol: int = pq.PROTOCOL_3_0) -> bytes:
    return pq.startup_message(params, protocol)


def ssl_request() -> bytes:
    return struct.pack("!ii", 8, pq.SSL_REQUEST_CODE)


def gssenc_request() -> bytes:
    return struct.pack("!ii", 8, pq.GSSENC_REQUEST_CODE)


def function_call(oid: int, args: list[bytes | None], *, result_format: int = 0) -> bytes:
    """FunctionCall ('F') with every argument in text format."""
    body = struct.pack("!ihh", oid, 1, 0) + struct.pack("!h", len(args))
    for arg in args:
        body += struct.pack("!i", -1) if arg is None else struct.pack("!i", len(arg)) + arg
    return pq.build(b"F", body + struct.pack("!h", result_format))


def parse(sql: str, name: str = "") -> bytes:
    return pq.build(b"P", pq.cstring(name) + pq.cstring(sql) + struct.pack("!h", 0))


def bind(params: list[bytes | None], statement: str = "", portal: str = "") -> bytes:
    body = pq.cstring(portal) + pq.cstring(statement) + struct.pack("!h", 0) + struct.pack("!h", len(params))
    for value in params:
        body += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
    return pq.build(b"B", body + struct.pack("!h", 0))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return pq.build(b"E", pq.cstring(portal) + struct.pack("!i", max_rows))


def describe_portal(portal: str = "") -> bytes:
    return pq.build(b"D", b"P" + pq.cstring(portal))


def describe_statement(name: str = "") -> bytes:
    return pq.build(b"D", b"S" + pq.cstring(name))


FLUSH_MESSAGE = pq.build(b"H")


def data_row_values(message: Message) -> list[str | None]:
    """The columns of a DataRow ('D'), decoded as text."""
    assert message.kind == "D", message
    payload = message.payload
    (count,) = struct.unpack_from("!h", payload)
    pos = 2
    values: list[str | None] = []
    for _ in range(count):
        (length,) = struct.unpack_from("!i", payload, pos)
        pos += 4
        if length < 0:
            values.append(None)
        else:
            values.append(payload[pos : pos + length].decode())
            pos += length
    return values


class RawClient:
    """One TCP connection to the pooler, driven message by message."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = DEFAULT_TIMEOUT) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self._buf = bytearray()
        self.parameters: dict[str, str] = {}

    def __enter__(self) -> RawClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    # --- bytes ------------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def shutdown_write(self) -> None:
        """Half-close: the pooler sees EOF while we can still read what it says."""
        self.sock.shutdown(socket.SHUT_WR)

    def _fill(self, need: int) -> bool:
        """Read until ``need`` bytes are buffered; False on EOF (or a reset) before that."""
        while len(self._buf) < need:
            try:
                chunk = self.sock.recv(max(65536, need - len(self._buf)))
            except ConnectionResetError:
                return False
            if not chunk:
                return False
            self._buf += chunk
        return True

    def read_byte(self) -> bytes:
        """One raw byte (the answer to an SSLRequest / GSSENCRequest)."""
        if not self._fill(1):
            raise ConnectionClosedError([])
        byte = bytes(self._buf[:1])
        del self._buf[:1]
        return byte

    # --- messages ---------------------------------------------------------------------------------

    def read_message(self) -> Message | None:
        """The next whole message, or None at EOF."""
        if not self._fill(5):
            return None
        length = pq.read_int32(self._buf, 1)
        if not self._fill(1 + length):
            return None
        message = Message(chr(self._buf[0]), bytes(self._buf[5 : 1 + length]))
        del self._buf[: 1 + length]
        if message.kind == "S":
            name, value = pq.parse_cstrings(message.payload)
            self.parameters[name] = value
        return message

    def expect(self, kind: str) -> Message:
        """The next message, which must be of ``kind``; an ErrorResponse instead fails with its text."""
        message = self.read_message()
        if message is None:
            raise ConnectionClosedError([])
        assert message.kind == kind, f"expected {kind!r}, got {message!r}"
        return message

    def read_until(self, kind: str = "Z") -> list[Message]:
        """Messages up to and including the first one of ``kind``; raises ConnectionClosedError at EOF."""
        messages: list[Message] = []
        while True:
            message = self.read_message()
            if message is None:
                raise ConnectionClosedError(messages)
            messages.append(message)
            if message.kind == kind:
                return messages

    def read_to_eof(self) -> list[Message]:
        """Everything the pooler sends until it closes the connection."""
        messages: list[Message] = []
        while (message := self.read_message()) is not None:
            messages.append(message)
        return messages

    def expect_fatal(self) -> dict[str, str]:
        """The connection must end with exactly one FATAL ErrorResponse and then EOF: its fields."""
        messages = self.read_to_eof()
        errors = [m for m in messages if m.kind == "E"]
        assert errors, f"expected a FATAL ErrorResponse before EOF, got {messages!r}"
        assert errors[-1] is messages[-1], f"the error must be the last message, got {messages!r}"
        fields = errors[-1].fields
        assert fields.get("S") == "FATAL", fields
        return fields

    def simple_query(self, sql: str) -> list[Message]:
        self.send(pq.query(sql))
        return self.read_until("Z")

    # --- login ------------------------------------------------------------------------------------

    def startup(self, params: dict[str, str], protocol: int = pq.PROTOCOL_3_0) -> None:
        self.send(startup_packet(params, protocol))

    def authenticate(self, user: str, password: str | None) -> list[Message]:
        """Answer authentication requests until ReadyForQuery; returns every message seen on the way.

        Raises LoginFailedError on an ErrorResponse.
        """
        seen: list[Message] = []
        scram: ScramClient | None = None
        while True:
            message = self.read_message()
            if message is None:
                raise ConnectionClosedError(seen)
            seen.append(message)
            if message.kind == "E":
                raise LoginFailedError(message.fields, seen)
            if message.kind == "Z":
                return seen
            if message.kind != "R":
                continue
            code = pq.read_int32(message.payload)
            data = message.payload[4:]
            if code == pq.AUTH_OK:
                continue
            assert password is not None, f"authentication {code} requested but no password given"
            if code == pq.AUTH_CLEARTEXT:
                self.send(pq.build(b"p", pq.cstring(password)))
            elif code == pq.AUTH_MD5:
                inner = hashlib.md5((password + user).encode()).hexdigest()
                outer = "md5" + hashlib.md5(inner.encode() + data).hexdigest()
                self.send(pq.build(b"p", pq.cstring(outer)))
            elif code == pq.AUTH_SASL:
                scram = ScramClient(["SCRAM-SHA-256"], user, password)
                first = scram.get_client_first().encode()
                self.send(pq.build(b"p", pq.cstring("SCRAM-SHA-256") + struct.pack("!i", len(first)) + first))
            elif code == pq.AUTH_SASL_CONTINUE:
                assert scram is not None
                scram.set_server_first(data.decode())
                self.send(pq.build(b"p", scram.get_client_final().encode()))
            elif code == pq.AUTH_SASL_FINAL:
                assert scram is not None
                scram.set_server_final(data.decode())
            else:
                raise AssertionError(f"unexpected authentication request {code}")

    def login(
        self, user: str, password: str | None, database: str, *, protocol: int = pq.PROTOCOL_3_0, **params: str
    ) -> list[Message]:
        """Send a startup packet and authenticate; returns the messages up to the first ReadyForQuery."""
        self.startup({"user": user, "database": database, **params}, protocol)
        return self.authenticate(user, password)
