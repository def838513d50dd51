"""Cutting a byte stream into whole messages: the one framing the slow paths share.

The two fast scanners of the data path (``pooler.net.client`` and ``pooler.net.server``) only read
headers and forward bytes, and stay specialised for speed. Everything else that must see whole
messages — the startup packet, authentication on either side, the admin console, a cancel relay —
reads them through ``MessageReader``: bytes in with ``feed``, whole messages out with ``next_message``
or ``next_startup_packet``, a ``ProtocolViolationError`` naming the fault for a length no peer
should send. Its buffer never grows past one message of ``max_length`` plus what one read brought.
"""

from __future__ import annotations

import struct

from pooler.wire.messages import (
    FUNCTION_CALL,
    HEADER_SIZE,
    MAX_STARTUP_PACKET,
    MIN_MESSAGE_LENGTH,
    QUERY,
    SYNC,
    ProtocolViolationError,
)


class BadLengthError(ProtocolViolationError):
    """A message header whose length no peer should send; the caller may word it for its context."""

    def __init__(self, kind: int, length: int) -> None:
        super().__init__(f"invalid message length {length} for message type {chr(kind)!r}")
        self.kind = kind
        self.length = length

_INT32 = struct.Struct("!i")
#: The shortest startup-phase packet: its length and a request code.
_MIN_STARTUP_PACKET = 8


class MessageReader:
    """Whole messages out of a stream; ``max_length`` bounds a message (and so the buffer)."""

    __slots__ = ("_buf", "max_length")

    def __init__(self, max_length: int) -> None:
        self._buf = bytearray()
        self.max_length = max_length

    def feed(self, data: bytes) -> None:
        self._buf += data

    def __len__(self) -> int:
        return len(self._buf)

    def next_startup_packet(self) -> bytes | None:
        """A whole startup-phase packet (length prefix included), or None until one has arrived."""
        buf = self._buf
        if len(buf) < 4:
            return None
        length = _INT32.unpack_from(buf)[0]
        if length < _MIN_STARTUP_PACKET or length > MAX_STARTUP_PACKET:
            raise ProtocolViolationError(f"invalid length of startup packet ({length} bytes)")
        if len(buf) < length:
            return None
        packet = bytes(buf[:length])
        del buf[:length]
        return packet

    def peek_type(self) -> int | None:
        """The type byte of the next message, once one has begun to arrive."""
        return self._buf[0] if self._buf else None

    def peek(self, size: int) -> bytes:
        """Up to ``size`` bytes from the start, left in place."""
        return bytes(self._buf[:size])

    def next_message(self) -> tuple[int, bytes] | None:
        """``(type, payload)`` of the next whole message, or None until it has arrived."""
        buf = self._buf
        if len(buf) < HEADER_SIZE:
            return None
        kind = buf[0]
        length = _INT32.unpack_from(buf, 1)[0]
        if length < MIN_MESSAGE_LENGTH or length > self.max_length:
            raise BadLengthError(kind, length)
        end = 1 + length
        if len(buf) < end:
            return None
        payload = bytes(buf[HEADER_SIZE:end])
        del buf[:end]
        return kind, payload

    def take_rest(self) -> bytes:
        """Whatever follows the messages read so far (handed to the next owner of the stream)."""
        rest = bytes(self._buf)
        self._buf.clear()
        return rest


class PartialMessage:
    """The start of a message that a fast scanner must see whole, held until the rest has arrived.

    Why: the scanners of the data path forward bytes as they come, but a few messages must be read whole
    (on the server side a ReadyForQuery or an ErrorResponse, on the client side a Query that is checked or a
    Parse that is rewritten). Re-joining what is held with every read would copy a large message once per
    read: quadratic. Instead ``need`` says how long the held bytes must grow before a scan can progress, and
    the reads in between are appended in place. What is held is bounded by the one message (whose length
    the scanner has already accepted) plus one read.

    ``data`` stays the immutable ``bytes`` of one read as long as it is one read (``b"" + more`` is ``more``
    itself), so the common case, one whole read held and later forwarded, makes no copy.
    """

    __slots__ = ("data", "need")

    def __init__(self) -> None:
        self.data: bytes | bytearray = b""
        self.need = 0  # len(data) must reach this before a scan can make progress; 0: scan what is held now

    def __len__(self) -> int:
        return len(self.data)

    def keep(self, data: bytes, start: int) -> None:
        """Hold ``data[start:]``, the start of a message (or of its header) that is not whole yet."""
        self.data = data[start:]
        self.need = 1 + _INT32.unpack_from(data, start + 1)[0] if len(data) - start >= HEADER_SIZE else HEADER_SIZE

    def add(self, more: bytes) -> None:
        """Hold ``more`` after what is held already (bytes that came while nothing could be sent)."""
        held = self.data
        if not held:
            self.data = more
            return
        if type(held) is bytes:
            held = self.data = bytearray(held)
        held += more

    def gather(self, more: bytes) -> bytes | None:
        """What is held joined with ``more``, once that is enough for a scan to progress (nothing is held
        then); None while the message is still short, ``more`` being held with the rest."""
        held = self.data
        if len(held) + len(more) < self.need:
            if type(held) is bytes:
                held = self.data = bytearray(held)
            held += more
            return None
        self.data = b""
        self.need = 0
        if type(held) is bytes:
            return held + more
        held += more
        return bytes(held)

    def take(self) -> bytes:
        """Everything held (handed on whole); nothing is held afterwards."""
        held = self.data
        self.data = b""
        self.need = 0
        return held if type(held) is bytes else bytes(held)


def first_request_end(data: bytes) -> int | None:
    """Where the first request in ``data`` ends (a Query or FunctionCall, or the Sync closing extended messages);
    None when no request is whole yet. (A client's CancelRequest while it waits for a server cancels that much.)"""
    pos = 0
    n = len(data)
    while pos + HEADER_SIZE <= n:
        kind = data[pos]
        end: int = pos + 1 + _INT32.unpack_from(data, pos + 1)[0]
        if end > n:
            return None
        if kind in (QUERY, FUNCTION_CALL, SYNC):
            return end
        pos = end
    return None
