"""Fuzzing the sans-IO layers with hypothesis (issue 10, item 9c): whatever bytes arrive, the parsers and the
authentication exchanges either decode them or refuse them the documented way; they never raise anything
else, never loop, and a refusal is a Postgres-shaped message.
"""

from __future__ import annotations

import struct

from adversity import Counter, budget
from hypothesis import given
from hypothesis import strategies as st

from pooler.core.prepared import reserved_name_refusal, reserved_names_in, statement_name
from pooler.core.session_state import SessionStateChecker
from pooler.wire import messages as pq
from pooler.wire.auth import AuthFailed, AuthType, ClientAuth, ServerAuth, md5_secret, scram_verifier

COUNTS = {name: Counter(name) for name in ("startup", "error_fields", "statement_name", "client_auth",
                                           "server_auth", "session_state", "reserved")}
_VERIFIER = scram_verifier("secret")


def _startup_packets() -> st.SearchStrategy[bytes]:
    """Startup-phase packets, well-formed or not: a length that may lie, a code, a body of key/value pairs."""
    code = st.sampled_from([pq.PROTOCOL_3_0, pq.SSL_REQUEST_CODE, pq.GSSENC_REQUEST_CODE, pq.CANCEL_REQUEST_CODE,
                            (3 << 16) | 2, 2 << 16, 0]) | st.integers(-(2**31), 2**31 - 1)
    text = st.binary(max_size=20) | st.sampled_from([b"user", b"database", b"options", b"\xff\xfe", b""])
    body = st.lists(text, max_size=8).map(b"\x00".join) | st.binary(max_size=60)
    tail = st.sampled_from([b"\x00", b"\x00\x00", b""])

    def frame(parts: tuple[int, bytes, bytes, int | None]) -> bytes:
        code_, body_, tail_, lie = parts
        payload = struct.pack("!i", code_ & 0xFFFFFFFF if code_ >= 0 else code_) + body_ + tail_
        length = len(payload) + 4 if lie is None else lie
        return struct.pack("!i", length) + payload

    return st.tuples(code, body, tail, st.none() | st.integers(-5, 200)).map(frame)


@budget(600)
@given(_startup_packets())
def test_startup_packet_parser_decodes_or_refuses(packet: bytes) -> None:
    COUNTS["startup"].cases += 1
    try:
        startup = pq.parse_startup_packet(packet)
    except pq.ProtocolViolationError as exc:
        assert str(exc)  # the FATAL's text names what is wrong
        return
    assert isinstance(startup.params, dict)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in startup.params.items())
    if startup.code == pq.CANCEL_REQUEST_CODE:
        assert startup.cancel_key is not None


@budget(600)
@given(st.binary(max_size=200))
def test_error_fields_and_cstrings_never_raise(payload: bytes) -> None:
    COUNTS["error_fields"].cases += 1
    fields = pq.parse_error_fields(payload)
    assert all(len(k) == 1 for k in fields)
    pq.parse_cstrings(payload)


@budget(600)
@given(st.sampled_from([pq.PARSE, pq.BIND, pq.DESCRIBE, pq.CLOSE]), st.binary(max_size=60), st.integers(0, 70))
def test_statement_name_scanner_stays_inside_the_message(kind: int, body: bytes, limit: int) -> None:
    COUNTS["statement_name"].cases += 1
    data = bytes((kind,)) + struct.pack("!i", len(body) + 4) + body
    limit = min(limit, len(data))
    span = statement_name(kind, data, 0, limit)
    if span is not None:
        start, stop = span
        assert 5 <= start <= stop <= limit
        assert b"\x00" not in data[start:stop]


_AUTH_TYPES = [AuthType.SCRAM_SHA_256, AuthType.MD5, AuthType.PLAIN, AuthType.TRUST]
_SECRETS = [None, "secret", md5_secret("app", "secret"), _VERIFIER]


def _password_payloads() -> st.SearchStrategy[bytes]:
    """What a client may send in 'p' messages: SASL initial responses (well-formed or not), finals, garbage."""
    mechanism = st.sampled_from([b"SCRAM-SHA-256", b"SCRAM-SHA-256-PLUS", b"PLAIN", b""])
    first = st.sampled_from([b"n,,n=,r=abc", b"n,,n=app,r=" + b"x" * 24, b"y,,n=,r=q", b"p=x,,n=,r=q", b"n,,r=",
                             b"n,,n=,r=abc,e=1", b"\xff\xfe"]) | st.binary(max_size=40)
    initial = st.tuples(mechanism, first, st.booleans()).map(
        lambda t: t[0] + b"\x00" + (struct.pack("!i", len(t[1]) if t[2] else 999) + t[1]))
    final = st.sampled_from([b"c=biws,r=abc,p=AAAA", b"c=biws,r=", b"c=,p=", b"r=x", b"c=biws,r=abc,p=!!!"])
    plain = st.sampled_from([b"secret\x00", b"md5" + b"0" * 32 + b"\x00"])
    return st.one_of(initial, final, plain, st.binary(max_size=80))


@budget(400)
@given(st.sampled_from(_AUTH_TYPES), st.sampled_from(_SECRETS), st.lists(_password_payloads(), min_size=1, max_size=4))
def test_client_auth_answers_any_message_sequence_with_a_step(
    auth_type: AuthType, secret: str | None, payloads: list[bytes]
) -> None:
    COUNTS["client_auth"].cases += 1
    auth = ClientAuth(auth_type, "app", secret)
    step = auth.start()
    for payload in payloads:
        if step.done:
            break
        step = auth.receive(payload)
        if step.done and not step.ok:
            # A failed login ends with a FATAL ErrorResponse naming an SQLSTATE: never a traceback.
            assert step.send[:1] == b"E", step
            fields = pq.parse_error_fields(step.send[5:])
            assert fields.get("S") == "FATAL" and len(fields.get("C", "")) == 5, fields


@budget(400)
@given(st.sampled_from([None, "pw", md5_secret("app", "pw"), _VERIFIER]),
       st.lists(st.tuples(st.sampled_from([0, 3, 5, 10, 11, 12, 2, 7, 9, 99, -1]), st.binary(max_size=60)),
                min_size=1, max_size=4))
def test_server_auth_answers_or_raises_auth_failed(password: str | None, requests: list[tuple[int, bytes]]) -> None:
    COUNTS["server_auth"].cases += 1
    auth = ServerAuth("app", password)
    for code, data in requests:
        try:
            reply = auth.receive(code, data)
        except AuthFailed as exc:
            assert str(exc)
            return
        if reply is not None:
            assert reply[:1] == b"p" and struct.unpack("!i", reply[1:5])[0] == len(reply) - 1


_CHECKER = SessionStateChecker()
_SQLISH = st.lists(st.sampled_from(["set", "SET LOCAL", "listen", "prepare", "execute", "deallocate", "declare",
                                    "temp", "advisory", "load", "select", "begin", ";", "'", '"', "$$", "/*", "--",
                                    "pooler_1", "x", " ", "(", ")", "\n", "\x00", "é"]), max_size=12).map("".join)


@budget(400)
@given(_SQLISH | st.text(max_size=80), st.booleans())
def test_session_state_checker_never_raises(sql: str, in_transaction: bool) -> None:
    COUNTS["session_state"].cases += 1
    findings = _CHECKER.check(sql, in_transaction)
    assert all(f.statement and f.why and f.fix for f in findings)


@budget(400)
@given(st.lists(st.sampled_from([b"DEALLOCATE", b"deallocate", b"prepare", b"PREPARE", b" ", b"\t", b"pooler_",
                                 b"POOLER_", b'"', b"1", b"42", b"x", b";", b"ALL", b"\xff"]), max_size=8).map(b"".join)
       | st.binary(max_size=64))
def test_reserved_name_check_never_raises(prefix: bytes) -> None:
    COUNTS["reserved"].cases += 1
    refusal = reserved_name_refusal(prefix)
    if refusal is not None:
        assert refusal[:1] == b"Q" and b"42939" in refusal
    reserved_names_in(prefix)


def test_a_truncated_error_field_is_read_to_the_end_not_raised() -> None:
    """Found by the fuzzer above: a server's ErrorResponse whose last field lacks its NUL raised ValueError
    (during login, a traceback out of data_received instead of a login error)."""
    assert pq.parse_error_fields(b"SERROR\x00C08P0") == {"S": "ERROR", "C": "08P0"}
    assert pq.parse_error_fields(b"\x01") == {"\x01": ""}


def test_zz_report_case_counts() -> None:
    """Prints how many cases each fuzzer above ran (run with -s to see them)."""
    for counter in COUNTS.values():
        counter.report()
