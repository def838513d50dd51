"""Unit tests of the pure wire layer: builders and parsers, no sockets."""

from __future__ import annotations

import struct

import pytest

from pooler.wire import messages as pq


def split_messages(data: bytes) -> list[tuple[bytes, bytes]]:
    """Independent reference splitter: (type, payload) pairs."""
    out = []
    pos = 0
    while pos < len(data):
        length = struct.unpack_from("!i", data, pos + 1)[0]
        out.append((data[pos : pos + 1], data[pos + 5 : pos + 1 + length]))
        pos += 1 + length
    return out


def test_build_frames_type_and_length_counting_itself() -> None:
    assert pq.build(b"Q", b"abc") == b"Q\x00\x00\x00\x07abc"
    assert pq.build(b"S") == b"S\x00\x00\x00\x04"


def test_error_response_carries_severity_code_message_hint() -> None:
    msg = pq.error_response("28P01", 'password authentication failed for user "x"', severity="FATAL", hint="h")
    [(kind, payload)] = split_messages(msg)
    assert kind == b"E"
    fields = pq.parse_error_fields(payload)
    assert fields == {"S": "FATAL", "V": "FATAL", "C": "28P01", "M": 'password authentication failed for user "x"',
                      "H": "h"}


def test_notice_response_is_a_notice_message() -> None:
    [(kind, payload)] = split_messages(pq.notice_response("careful", detail="d"))
    assert kind == b"N"
    assert pq.parse_error_fields(payload)["D"] == "d"


def test_ready_for_query_status_byte() -> None:
    assert pq.ready_for_query(pq.TX_IN_BLOCK) == b"Z\x00\x00\x00\x05T"


def test_parameter_status_and_backend_key_data() -> None:
    [(kind, payload)] = split_messages(pq.parameter_status("TimeZone", "UTC"))
    assert kind == b"S"
    assert pq.parse_cstrings(payload) == ["TimeZone", "UTC"]
    assert pq.backend_key_data(7, -3) == b"K\x00\x00\x00\x0c" + struct.pack("!ii", 7, -3)


def test_negotiate_protocol_version_lists_unsupported_options() -> None:
    [(kind, payload)] = split_messages(pq.negotiate_protocol_version(pq.PROTOCOL_3_0, ["_pq_.a", "_pq_.b"]))
    assert kind == b"v"
    assert struct.unpack_from("!ii", payload) == (pq.PROTOCOL_3_0, 2)
    assert payload[8:] == b"_pq_.a\x00_pq_.b\x00"


def test_startup_message_round_trips_through_the_parser() -> None:
    packet = pq.startup_message({"user": "u", "database": "d", "application_name": "x y"})
    parsed = pq.parse_startup_packet(packet)
    assert (parsed.major, parsed.minor) == (3, 0)
    assert parsed.params == {"user": "u", "database": "d", "application_name": "x y"}


def test_cancel_request_parses_to_its_key() -> None:
    parsed = pq.parse_startup_packet(pq.cancel_request(1234, -99))
    assert parsed.code == pq.CANCEL_REQUEST_CODE
    assert parsed.cancel_key == (1234, -99)


@pytest.mark.parametrize("code", [pq.SSL_REQUEST_CODE, pq.GSSENC_REQUEST_CODE])
def test_encryption_requests_are_recognised(code: int) -> None:
    assert pq.parse_startup_packet(struct.pack("!ii", 8, code)).code == code


@pytest.mark.parametrize(
    ("packet", "complaint"),
    [
        (b"\x00\x00\x00\x07abc", "too short"),
        (struct.pack("!ii", 12, pq.CANCEL_REQUEST_CODE) + b"1234", "cancel request has length 12"),
        (struct.pack("!ii", 13, pq.PROTOCOL_3_0) + b"user", "not terminated"),
        (struct.pack("!ii", 14, pq.PROTOCOL_3_0) + b"user\x00\x00", "without a value"),
        (struct.pack("!ii", 17, pq.PROTOCOL_3_0) + b"user\x00\xff\xfe\x00\x00", "UTF-8"),
    ],
)
def test_malformed_startup_packets_say_what_is_wrong(packet: bytes, complaint: str) -> None:
    with pytest.raises(pq.ProtocolViolationError, match=complaint):
        pq.parse_startup_packet(packet)
