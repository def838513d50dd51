"""A minimal Postgres client for the benchmarks that need thousands of connections at once.

Why not asyncpg or psycopg: the launch-day and idle-client scenarios open 500 and 10,000 connections
from one process, and what they measure is the pooler, so the client must cost next to nothing per
connection. This speaks just enough of the protocol: startup, cleartext / md5 / SCRAM-SHA-256 login
(SCRAM's salted password is cached per salt, so a server that keeps one salt per role, as Postgres
does, costs one PBKDF2 per run, not per connection), simple Query, Terminate.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import os
import socket
import struct
from dataclasses import dataclass, field

AUTH_OK, AUTH_CLEARTEXT, AUTH_MD5, AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL = 0, 3, 5, 10, 11, 12


class PgError(Exception):
    """An ErrorResponse (``fields`` by one-letter code) or a protocol failure (empty ``fields``)."""

    def __init__(self, message: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.fields = fields or {}


def _message(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("!I", len(payload) + 4) + payload


def startup_packet(user: str, database: str) -> bytes:
    body = struct.pack("!I", 196608)
    for key, value in (("user", user), ("database", database)):
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def query_message(sql: str) -> bytes:
    return _message(b"Q", sql.encode() + b"\0")


TERMINATE = _message(b"X", b"")


def error_fields(payload: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in payload.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return fields


@functools.lru_cache(maxsize=64)
def _salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)


@dataclass
class Login:
    """The client side of authentication, sans I/O: feed it each Authentication* message's code and
    data, send back what it returns (if anything)."""

    user: str
    password: str
    _nonce: str = field(default_factory=lambda: base64.b64encode(os.urandom(18)).decode())
    _first_bare: str = ""

    def answer(self, code: int, data: bytes) -> bytes | None:
        if code == AUTH_OK:
            return None
        if code == AUTH_CLEARTEXT:
            return _message(b"p", self.password.encode() + b"\0")
        if code == AUTH_MD5:
            inner = hashlib.md5((self.password + self.user).encode()).hexdigest()
            return _message(b"p", b"md5" + hashlib.md5(inner.encode() + data[:4]).hexdigest().encode() + b"\0")
        if code == AUTH_SASL:
            if b"SCRAM-SHA-256\0" not in data:
                raise PgError(f"no supported SASL mechanism in {data!r}")
            self._first_bare = f"n=,r={self._nonce}"
            first = ("n,," + self._first_bare).encode()
            return _message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first)
        if code == AUTH_SASL_CONTINUE:
            server_first = data.decode()
            attrs = dict(item.split("=", 1) for item in server_first.split(","))
            if not attrs["r"].startswith(self._nonce):
                raise PgError("SCRAM server nonce does not extend ours")
            salted = _salted_password(self.password, base64.b64decode(attrs["s"]), int(attrs["i"]))
            client_key = hmac.digest(salted, b"Client Key", "sha256")
            stored_key = hashlib.sha256(client_key).digest()
            without_proof = f"c=biws,r={attrs['r']}"
            auth_message = f"{self._first_bare},{server_first},{without_proof}".encode()
            signature = hmac.digest(stored_key, auth_message, "sha256")
            proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
            return _message(b"p", f"{without_proof},p={base64.b64encode(proof).decode()}".encode())
        if code == AUTH_SASL_FINAL:
            return None
        raise PgError(f"unsupported authentication request {code}")


class AsyncConn:
    """One connection on asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, host: str, port: int, user: str, password: str, database: str) -> AsyncConn:
        reader, writer = await asyncio.open_connection(host, port)
        conn = cls(reader, writer)
        try:
            writer.write(startup_packet(user, database))
            login = Login(user, password)
            while True:
                kind, payload = await conn.read_message()
                if kind == b"R":
                    code = struct.unpack_from("!I", payload)[0]
                    reply = login.answer(code, payload[4:])
                    if reply:
                        writer.write(reply)
                elif kind == b"E":
                    fields = error_fields(payload)
                    raise PgError(fields.get("M", "error"), fields)
                elif kind == b"Z":
                    return conn
        except BaseException:
            conn.abort()
            raise

    async def read_message(self) -> tuple[bytes, bytes]:
        try:
            header = await self.reader.readexactly(5)
            length = struct.unpack_from("!I", header, 1)[0]
            payload = await self.reader.readexactly(length - 4)
        except asyncio.IncompleteReadError:
            raise PgError("server closed the connection") from None
        return header[:1], payload

    async def query(self, sql: str) -> list[list[bytes | None]]:
        """Run ``sql`` (simple protocol); the rows of its last result, as raw text values."""
        self.writer.write(query_message(sql))
        reply = _Reply()
        while True:
            try:
                kind, payload = await self.read_message()
            except PgError:
                if reply.error:  # an ErrorResponse, then the connection closed (a FATAL)
                    raise reply.error from None
                raise
            if reply.add(kind, payload):
                return reply.rows

    async def close(self) -> None:
        try:
            self.writer.write(TERMINATE)
            self.writer.close()
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass

    def abort(self) -> None:
        transport = self.writer.transport
        if transport is not None:
            transport.abort()


def _data_row(payload: bytes) -> list[bytes | None]:
    count = struct.unpack_from("!H", payload)[0]
    offset = 2
    values: list[bytes | None] = []
    for _ in range(count):
        size = struct.unpack_from("!i", payload, offset)[0]
        offset += 4
        if size < 0:
            values.append(None)
        else:
            values.append(payload[offset:offset + size])
            offset += size
    return values


def blocking_login(sock: socket.socket, user: str, password: str, database: str, timeout: float = 30.0) -> None:
    """Log in on a connected blocking socket, reading one message at a time (so nothing past
    ReadyForQuery is consumed)."""
    sock.settimeout(timeout)
    sock.sendall(startup_packet(user, database))
    login = Login(user, password)
    while True:
        header = _recv_exactly(sock, 5)
        payload = _recv_exactly(sock, struct.unpack_from("!I", header, 1)[0] - 4)
        kind = header[:1]
        if kind == b"R":
            reply = login.answer(struct.unpack_from("!I", payload)[0], payload[4:])
            if reply:
                sock.sendall(reply)
        elif kind == b"E":
            fields = error_fields(payload)
            raise PgError(fields.get("M", "error"), fields)
        elif kind == b"Z":
            return


def blocking_query(sock: socket.socket, sql: str) -> list[list[bytes | None]]:
    """Run ``sql`` on a logged-in blocking socket; the rows of its last result."""
    sock.sendall(query_message(sql))
    reply = _Reply()
    while True:
        header = _recv_exactly(sock, 5)
        payload = _recv_exactly(sock, struct.unpack_from("!I", header, 1)[0] - 4)
        if reply.add(header[:1], payload):
            return reply.rows


class _Reply:
    """The answer to one simple Query, message by message: the rows of its last result, or its error."""

    def __init__(self) -> None:
        self.rows: list[list[bytes | None]] = []
        self.error: PgError | None = None

    def add(self, kind: bytes, payload: bytes) -> bool:
        """Take one message; True at ReadyForQuery (raising the ErrorResponse, if one came)."""
        if kind == b"D":
            self.rows.append(_data_row(payload))
        elif kind == b"T":
            self.rows = []
        elif kind == b"E":
            fields = error_fields(payload)
            self.error = PgError(fields.get("M", "error"), fields)
        elif kind == b"Z":
            if self.error:
                raise self.error
            return True
        return False


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(left)
        if not chunk:
            raise PgError("server closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
