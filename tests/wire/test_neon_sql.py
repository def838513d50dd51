"""pooler.wire.neon_sql without a socket: request validation, the messages a request becomes, and backend
messages turned into Neon's JSON (typed values, arrays, command tags, the first error of a batch)."""

from __future__ import annotations

import json

import pytest

from pooler.wire import messages as pq
from pooler.wire import neon_sql as ns
from pooler.wire.framing import MessageReader

URL = "postgresql://alice:s%40cret@ep-x.localhost:5432/shop?application_name=app&sslmode=require"
HEADERS = {"neon-connection-string": URL, "neon-raw-text-output": "true", "neon-array-mode": "true"}


def test_connection_string() -> None:
    target = ns.parse_connection_string(URL)
    assert (target.user, target.password, target.database) == ("alice", "s@cret", "shop")
    assert target.startup == {"application_name": "app"}  # sslmode is the driver's business
    assert ns.startup_parameters(target)["client_encoding"] == "UTF8"


@pytest.mark.parametrize(("url", "message"), [
    ("mysql://a@b/c", "postgres:// or postgresql://"),
    ("postgresql://host/db", "missing user name"),
    ("postgresql://a:b@host", "missing database name"),
    ("postgresql://a:b@host:notaport/db", "invalid connection string"),
])  # fmt: skip
def test_bad_connection_strings(url: str, message: str) -> None:
    with pytest.raises(ns.SqlRequestError, match=message) as info:
        ns.parse_request({"neon-connection-string": url}, b'{"query": "SELECT 1"}')
    assert info.value.status == 400


def test_params_converted_as_neon_does() -> None:
    body = json.dumps({"query": "SELECT $1", "params": ["s", None, 1, 2.5, True, {"a": 1}, [1, "x y", None, [2]],
                                                        [{"k": "v"}]]})
    request = ns.parse_request(HEADERS, body.encode())
    assert request.queries[0].params == ["s", None, "1", "2.5", "true", '{"a":1}', '{1,"x y",NULL,{2}}',
                                         '{"{\\"k\\":\\"v\\"}"}']


def test_batch_messages_and_begin_statement() -> None:
    headers = {**HEADERS, "neon-batch-isolation-level": "Serializable", "neon-batch-read-only": "true",
               "neon-batch-deferrable": "true"}
    body = b'{"queries": [{"query": "SELECT 1"}, {"query": "SELECT $1", "params": ["2"]}]}'
    request = ns.parse_request(headers, body)
    assert ns.begin_statement(request) == "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE"
    reader = MessageReader(1 << 20)
    reader.feed(ns.request_messages(request))
    kinds = []
    while (message := reader.next_message()) is not None:
        kinds.append(chr(message[0]))
    assert "".join(kinds) == "PBES" + "PDBES" * 2 + "PBES"
    assert request.echo_headers == [("Neon-Batch-Read-Only", "true"), ("Neon-Batch-Deferrable", "true"),
                                    ("Neon-Batch-Isolation-Level", "Serializable")]


def _row_description(*columns: tuple[str, int]) -> bytes:
    payload = struct_h(len(columns))
    for name, oid in columns:
        payload += pq.cstring(name) + (0).to_bytes(4, "big") + (0).to_bytes(2, "big") + oid.to_bytes(4, "big") + (
            (-1).to_bytes(2, "big", signed=True) + (-1).to_bytes(4, "big", signed=True) + (0).to_bytes(2, "big"))
    return payload


def struct_h(n: int) -> bytes:
    return n.to_bytes(2, "big")


def _data_row(*values: bytes | None) -> bytes:
    out = struct_h(len(values))
    for v in values:
        out += (-1).to_bytes(4, "big", signed=True) if v is None else len(v).to_bytes(4, "big") + v
    return out


def test_collector_typed_rows_as_objects() -> None:
    request = ns.parse_request({"neon-connection-string": URL}, b'{"query": "SELECT"}')
    collector = ns.ResultCollector(request, 1 << 20)
    collector.feed(pq.ROW_DESCRIPTION, _row_description(("a", 23), ("b", 1009), ("c", 3802), ("d", 701)))
    collector.feed(pq.DATA_ROW, _data_row(b"7", b'{"x y",NULL,plain}', b'{"k": [1, 2]}', b"-Infinity"))
    collector.feed(pq.COMMAND_COMPLETE, b"SELECT 1\x00")
    collector.feed(pq.READY_FOR_QUERY, b"I")
    assert collector.done and collector.error is None
    assert json.loads(collector.body()) == {
        "fields": [{"name": n, "dataTypeID": oid, "tableID": 0, "columnID": 0, "dataTypeSize": -1,
                    "dataTypeModifier": -1, "format": "text"} for n, oid in (("a", 23), ("b", 1009), ("c", 3802),
                                                                             ("d", 701))],
        "rows": [{"a": 7, "b": ["x y", None, "plain"], "c": {"k": [1, 2]}, "d": "-Infinity"}],
        "command": "SELECT", "rowCount": 1, "rowAsArray": False,
    }


def test_collector_batch_reports_the_first_error() -> None:
    request = ns.parse_request(HEADERS, b'{"queries": [{"query": "a"}, {"query": "b"}]}')
    collector = ns.ResultCollector(request, 1 << 20)
    collector.feed(pq.READY_FOR_QUERY, b"T")  # START TRANSACTION
    collector.feed(pq.ERROR_RESPONSE, b"SERROR\x00C22012\x00Mdivision by zero\x00\x00")
    collector.feed(pq.READY_FOR_QUERY, b"E")
    collector.feed(pq.ERROR_RESPONSE, b"SERROR\x00C25P02\x00Mcurrent transaction is aborted\x00\x00")
    collector.feed(pq.READY_FOR_QUERY, b"E")
    assert not collector.done
    collector.feed(pq.COMMAND_COMPLETE, b"ROLLBACK\x00")
    collector.feed(pq.READY_FOR_QUERY, b"I")
    assert collector.done and collector.error is not None and collector.error["C"] == "22012"
    body = ns.error_json(collector.error)
    assert list(body) == [key for key, _ in ns.ERROR_KEYS] and body["detail"] is None


def test_collector_refuses_copy_in_and_limits_size() -> None:
    request = ns.parse_request(HEADERS, b'{"query": "COPY t FROM STDIN"}')
    collector = ns.ResultCollector(request, 1024)
    assert collector.feed(pq.COPY_IN_RESPONSE, b"\x00\x00\x00")[:1] == b"f"
    collector.feed(pq.ROW_DESCRIPTION, _row_description(("x", 25)))
    with pytest.raises(ns.ResponseTooLargeError, match="max is 1024 bytes"):
        for _ in range(100):
            collector.feed(pq.DATA_ROW, _data_row(b"y" * 50))


@pytest.mark.parametrize(("tag", "expected"), [
    ("INSERT 0 3", ("INSERT", 3)), ("SELECT 1", ("SELECT", 1)), ("BEGIN", ("BEGIN", None)),
    ("CREATE TABLE", ("CREATE", None)), ("", ("", None)),
])  # fmt: skip
def test_command_tag(tag: str, expected: tuple[str, int | None]) -> None:
    assert ns.command_tag(tag) == expected


@pytest.mark.parametrize(("text", "oid", "expected"), [
    ("t", 16, True), ("f", 16, False), ("12", 21, 12), ("12", 20, "12"), ("NaN", 700, "NaN"), ("2.5", 701, 2.5),
    ("[1:2]={1,2}", 1007, [1, 2]), ("{{1,2},{3,NULL}}", 1007, [[1, 2], [3, None]]), ("{}", 1009, []),
    ('{"a\\"b","c\\\\d"}', 1009, ['a"b', "c\\d"]), ("{t,f}", 1000, [True, False]), ('{"{}"}', 199, [{}]),
    ("{broken", 1007, "{broken"),
])  # fmt: skip
def test_text_to_json(text: str, oid: int, expected: object) -> None:
    assert ns.text_to_json(text, oid) == expected
