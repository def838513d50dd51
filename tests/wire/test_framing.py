"""``pooler.wire.framing``: whole messages out of arbitrary splits, bad lengths named, nothing kept past a message."""

from __future__ import annotations

import struct

import pytest

from pooler.wire import messages as pq
from pooler.wire.framing import BadLengthError, MessageReader, PartialMessage


def _stream() -> bytes:
    return pq.query("select 1") + pq.SYNC_MESSAGE + pq.build(b"p", b"secret\x00")


@pytest.mark.parametrize("chunk", [1, 2, 5, 7, 1000])
def test_messages_come_out_whole_whatever_the_split(chunk: int) -> None:
    reader = MessageReader(1024)
    data = _stream()
    got: list[tuple[int, bytes]] = []
    for i in range(0, len(data), chunk):
        reader.feed(data[i : i + chunk])
        while (message := reader.next_message()) is not None:
            got.append(message)
    assert got == [(pq.QUERY, b"select 1\x00"), (pq.SYNC, b""), (pq.PASSWORD, b"secret\x00")]
    assert len(reader) == 0


def test_a_length_under_four_or_over_the_limit_is_named() -> None:
    reader = MessageReader(100)
    reader.feed(b"Q" + struct.pack("!i", 2))
    with pytest.raises(BadLengthError, match="invalid message length 2 for message type 'Q'"):
        reader.next_message()
    reader = MessageReader(100)
    reader.feed(b"p" + struct.pack("!i", 101))
    with pytest.raises(BadLengthError) as caught:
        reader.next_message()
    assert (caught.value.kind, caught.value.length) == (pq.PASSWORD, 101)


def test_startup_packets_and_what_follows_them() -> None:
    startup = pq.startup_message({"user": "app", "database": "db"})
    reader = MessageReader(100)
    reader.feed(startup[:3])
    assert reader.next_startup_packet() is None
    reader.feed(startup[3:] + pq.query("x"))
    assert reader.next_startup_packet() == startup
    assert reader.take_rest() == pq.query("x")
    assert len(reader) == 0


@pytest.mark.parametrize("length", [3, 7, pq.MAX_STARTUP_PACKET + 1, 2**31 - 1])
def test_a_startup_length_out_of_range_is_refused_before_it_is_read(length: int) -> None:
    reader = MessageReader(100)
    reader.feed(struct.pack("!i", length))
    with pytest.raises(pq.ProtocolViolationError, match=rf"invalid length of startup packet \({length} bytes\)"):
        reader.next_startup_packet()


def test_builders_round_trip_through_the_parsers() -> None:
    assert pq.parse_parameter_status(pq.parameter_status("TimeZone", "UTC")[5:]) == ("TimeZone", "UTC")
    row = pq.data_row([b"1", None, b""])
    assert row == b"D" + struct.pack("!ihi1sii", 4 + 2 + 5 + 4 + 4, 3, 1, b"1", -1, 0)
    assert pq.close_statement(b"s1") == b"C" + struct.pack("!i", 8) + b"Ss1\x00"
    body = b"select 1\x00\x00\x00"
    assert pq.parse(b"s1", body) == b"P" + struct.pack("!i", 4 + 3 + len(body)) + b"s1\x00" + body


# --- PartialMessage: what the fast scanners hold until a message is whole ----------------------------


@pytest.mark.parametrize("chunk", [5, 6, 64, 1000])
def test_a_held_message_comes_back_whole_once_and_only_once_it_has_arrived(chunk: int) -> None:
    message = pq.error_response("22000", "x" * 1000)
    before = pq.ready_for_query(pq.TX_IDLE)
    partial = PartialMessage()
    first = before + message[:chunk]
    partial.keep(first, len(before))  # the scanner stopped at the message that is not whole
    assert partial.data == message[:chunk]
    whole: bytes | None = None
    for at in range(chunk, len(message), chunk):
        assert whole is None
        whole = partial.gather(message[at : at + chunk])
    assert whole == message
    assert partial.data == b"" and partial.need == 0


def test_half_a_header_asks_only_for_the_rest_of_the_header() -> None:
    partial = PartialMessage()
    partial.keep(b"E\x00", 0)
    assert partial.need == pq.HEADER_SIZE
    assert partial.gather(b"\x00") is None
    whole = partial.gather(b"\x00\x05x")  # the header is whole: the scan can progress (it streams the rest)
    assert whole == b"E\x00\x00\x00\x05x"


def test_reads_in_between_are_appended_in_place_not_re_joined() -> None:
    """Gathering a large message read by read copies each read once: the held buffer is grown in place."""
    message = pq.error_response("22000", "x" * 100_000)
    partial = PartialMessage()
    partial.keep(message[:10], 0)
    partial.gather(message[10:20])
    buffer = partial.data
    assert isinstance(buffer, bytearray)
    last = len(message) - 10
    for at in range(20, last, 10):
        assert partial.gather(message[at : min(at + 10, last)]) is None
        assert partial.data is buffer  # the same buffer, grown: no copy of what was held
    assert partial.gather(message[last:]) == message


def test_one_whole_read_is_held_and_handed_back_without_a_copy() -> None:
    read = pq.query("select 1")
    partial = PartialMessage()
    partial.add(read)  # nothing linked yet: held as is
    assert partial.data is read
    assert partial.gather(b"") is read  # need 0: whatever is held is scanned at once
    partial.add(read)
    assert partial.take() is read and partial.data == b""
