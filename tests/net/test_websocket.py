"""The WebSocket door byte by byte (a wsproto client): which authentication the pooler asks for on a
pipelined and a plain connect, refused text and oversized frames, a slowloris upgrade, and the
``http_port`` listener. The driver's view (Pool, Client, transactions, cancel) is in test_neon_driver.py."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator

import psycopg
import pytest
from harness import RunningPooler, free_port, make_config, running_pooler
from support import APP_DB, APP_PASSWORD, APP_USER, PostgresServer
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Request, TextMessage

from pooler.wire import messages as pq
from pooler.wire.auth import AuthType
from pooler.wire.framing import MessageReader


@pytest.fixture(scope="module")
def pooler(postgres: PostgresServer) -> Iterator[RunningPooler]:
    with running_pooler(make_config(postgres, http_port=free_port(), websocket_max_frame_size=4096)) as running:
        yield running


class WsClient:
    """A WebSocket to the pooler carrying Postgres bytes, as Neon's driver opens it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.received = MessageReader(1 << 20)
        self.closed: CloseConnection | None = None

    @classmethod
    async def open(cls, port: int, path: str = "/v2?address=127.0.0.1:5432") -> WsClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        writer.write(client.ws.send(Request(host=f"127.0.0.1:{port}", target=path)))
        accepted = False
        while not accepted:
            client.ws.receive_data(await asyncio.wait_for(reader.read(65536), 5))
            for event in client.ws.events():
                assert isinstance(event, AcceptConnection), event
                accepted = True
        return client

    def send(self, data: bytes) -> None:
        self.writer.write(self.ws.send(BytesMessage(data=data)))

    def send_text(self, text: str) -> None:
        self.writer.write(self.ws.send(TextMessage(data=text)))

    async def messages(self, until: int, timeout: float = 5) -> list[tuple[int, bytes]]:
        """Postgres messages received up to and including the first of type ``until``."""
        out: list[tuple[int, bytes]] = []
        async with asyncio.timeout(timeout):
            while True:
                while (message := self.received.next_message()) is not None:
                    out.append(message)
                if any(kind == until for kind, _ in out) or self.closed is not None:
                    return out
                data = await self.reader.read(65536)
                if not data:
                    return out
                self.ws.receive_data(data)
                for event in self.ws.events():
                    if isinstance(event, BytesMessage):
                        self.received.feed(bytes(event.data))
                    elif isinstance(event, CloseConnection):
                        self.closed = event

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def auth_codes(messages: list[tuple[int, bytes]]) -> list[int]:
    return [struct.unpack("!i", payload[:4])[0] for kind, payload in messages if kind == pq.AUTHENTICATION]


STARTUP = pq.startup_message({"user": APP_USER, "database": APP_DB})


async def test_pipelined_connect_gets_a_cleartext_password_request(pooler: RunningPooler) -> None:
    client = await WsClient.open(pooler.port)
    try:
        client.send(STARTUP + pq.password_message(APP_PASSWORD) + pq.query("SELECT 41 + 1"))
        messages = await client.messages(pq.COMMAND_COMPLETE)
        assert auth_codes(messages) == [pq.AUTH_CLEARTEXT, pq.AUTH_OK]
        rows = [pq.parse_data_row(payload) for kind, payload in messages if kind == pq.DATA_ROW]
        assert rows == [[b"42"]]
    finally:
        await client.close()


@pytest.mark.parametrize("auth_type", [AuthType.SCRAM_SHA_256, AuthType.TRUST])
async def test_a_pipelined_password_in_the_next_frame_still_counts(
        postgres: PostgresServer, auth_type: AuthType) -> None:
    """A busy machine can split the driver's pipelined connect across reads: the StartupMessage alone, the
    password and query a moment later. Before, the pooler decided on the first read: it asked for SCRAM (and
    the cleartext password failed it) or, under trust, forwarded the stray PasswordMessage to Postgres."""
    with running_pooler(make_config(postgres, auth_type=auth_type)) as p:
        client = await WsClient.open(p.port)
        try:
            client.send(STARTUP)
            await asyncio.sleep(0.01)
            client.send(pq.password_message(APP_PASSWORD) + pq.query("SELECT 'split'"))
            messages = await client.messages(pq.COMMAND_COMPLETE)
            assert not [kind for kind, _ in messages if kind == pq.ERROR_RESPONSE], messages
            assert [pq.parse_data_row(p) for kind, p in messages if kind == pq.DATA_ROW] == [[b"split"]]
        finally:
            await client.close()


async def test_plain_connect_gets_scram(pooler: RunningPooler) -> None:
    client = await WsClient.open(pooler.port, "/any/path")
    try:
        client.send(STARTUP)
        messages = await client.messages(pq.AUTHENTICATION)
        assert auth_codes(messages) == [pq.AUTH_SASL]
        assert b"SCRAM-SHA-256" in messages[-1][1]
    finally:
        await client.close()


async def test_text_frame_refused_with_a_postgres_error_and_close_1003(pooler: RunningPooler) -> None:
    client = await WsClient.open(pooler.port)
    try:
        client.send_text("SELECT 1")
        messages = await client.messages(pq.ERROR_RESPONSE)
        fields = pq.parse_error_fields(messages[-1][1])
        assert fields["C"] == "08P01" and fields["M"].startswith("text WebSocket frames are not supported")
        await client.messages(-1)
        assert client.closed is not None and client.closed.code == 1003
    finally:
        await client.close()


async def test_oversized_frame_closes_with_1009(pooler: RunningPooler) -> None:
    client = await WsClient.open(pooler.port)
    try:
        client.send(STARTUP + pq.password_message(APP_PASSWORD) + pq.query("SELECT '" + "x" * 8000 + "'"))
        messages = await client.messages(-1)
        errors = [pq.parse_error_fields(p) for kind, p in messages if kind == pq.ERROR_RESPONSE]
        assert errors and "websocket_max_frame_size" in errors[-1]["M"]
        assert client.closed is not None and client.closed.code == 1009
    finally:
        await client.close()


async def test_websocket_on_http_port_and_frames_split_anywhere(pooler: RunningPooler) -> None:
    client = await WsClient.open(pooler.call(lambda p: p.ports["http"]))
    try:
        client.send(STARTUP[:5])  # the StartupMessage across two frames
        client.send(STARTUP[5:] + pq.password_message(APP_PASSWORD))
        data = pq.query("SELECT 'split'")
        for i in range(0, len(data), 3):  # frame boundaries inside a message, as the driver's may be
            client.send(data[i : i + 3])
        messages = await client.messages(pq.COMMAND_COMPLETE)
        assert [pq.parse_data_row(p) for kind, p in messages if kind == pq.DATA_ROW] == [[b"split"]]
    finally:
        await client.close()


async def test_invalid_upgrade_is_answered_400(pooler: RunningPooler) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", pooler.port)
    try:
        writer.write(b"GET /v2 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        head = await asyncio.wait_for(reader.read(65536), 5)
        assert head.startswith(b"HTTP/1.1 400 ") and b"invalid WebSocket upgrade" in head
    finally:
        writer.close()


async def test_pipelined_password_under_trust_is_not_forwarded(postgres: PostgresServer) -> None:
    with running_pooler(make_config(postgres, auth_type=AuthType.TRUST)) as p:
        client = await WsClient.open(p.port)
        try:
            client.send(STARTUP + pq.password_message("anything") + pq.query("SELECT 'trusted'"))
            # One read: the login's ReadyForQuery and the query's answer may come in the same frame, and
            # messages() drains everything it has parsed, so a second call could wait for what it already had.
            messages = await client.messages(pq.COMMAND_COMPLETE)
            assert auth_codes(messages) == [pq.AUTH_OK]
            assert not [kind for kind, _ in messages if kind == pq.ERROR_RESPONSE]
            assert [pq.parse_data_row(p) for kind, p in messages if kind == pq.DATA_ROW] == [[b"trusted"]]
        finally:
            await client.close()


async def test_300_websockets_share_a_pool_of_5(postgres: PostgresServer) -> None:
    """Counted by application_name, which each client's backend takes on: only this pooler's backends."""
    with running_pooler(make_config(postgres, default_pool_size=5, max_client_conn=1000)) as p:
        peak = 0
        done = asyncio.Event()
        startup = pq.startup_message({"user": APP_USER, "database": APP_DB, "application_name": "ws300"})

        async def watch() -> None:
            nonlocal peak
            async with await psycopg.AsyncConnection.connect(postgres.dsn(), autocommit=True) as conn:
                while not done.is_set():
                    cur = await conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ws300'")
                    row = await cur.fetchone()
                    peak = max(peak, row[0] if row else 0)
                    await asyncio.sleep(0.01)

        async def one(i: int) -> list[bytes | None]:
            client = await WsClient.open(p.port)
            try:
                client.send(startup + pq.password_message(APP_PASSWORD) + pq.query(f"SELECT {i}, pg_sleep(0.005)"))
                messages = await client.messages(pq.COMMAND_COMPLETE, timeout=30)
                rows = [pq.parse_data_row(payload) for kind, payload in messages if kind == pq.DATA_ROW]
                assert len(rows) == 1, messages
                return rows[0]
            finally:
                await client.close()

        watcher = asyncio.create_task(watch())
        rows = await asyncio.gather(*(one(i) for i in range(300)))
        done.set()
        await watcher
        assert sorted(int(row[0] or b"-1") for row in rows) == list(range(300))
        assert 0 < peak <= 5
