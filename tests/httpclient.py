"""A small HTTP/1.1 client for the SQL-over-HTTP tests: h11 on asyncio streams, so a test can send exactly
the bytes it means (a malformed request line, half a header, a chunked body) and still read the answer
the way a real client would."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

import h11


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class HttpClient:
    """One keep-alive connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, port: int) -> HttpClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()

    async def sql(self, url: str, body: Any, *, headers: dict[str, str] | None = None) -> Reply:
        all_headers = {"Neon-Connection-String": url, "Neon-Raw-Text-Output": "true", "Neon-Array-Mode": "true"}
        all_headers.update(headers or {})
        return await self.request("POST", "/sql", json.dumps(body).encode(), all_headers)

    async def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
                      *, timeout: float = 15) -> Reply:
        if self.h11.our_state is h11.DONE:
            self.h11.start_next_cycle()
        hdrs = [("Host", "localhost"), ("Content-Length", str(len(body)))]
        hdrs += list((headers or {}).items())
        data = self.h11.send(h11.Request(method=method, target=path, headers=hdrs)) or b""
        data += (self.h11.send(h11.Data(data=body)) or b"") + (self.h11.send(h11.EndOfMessage()) or b"")
        self.writer.write(data)
        return await self.read_reply(timeout=timeout)

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_reply(self, *, timeout: float = 15) -> Reply:
        """Read one response (with a fresh parser if the request was sent raw)."""
        if self.h11.our_state is h11.IDLE:  # sent raw: pretend we sent a request so h11 reads a response
            self.h11.send(h11.Request(method="POST", target="/", headers=[("Host", "x"), ("Content-Length", "0")]))
            self.h11.send(h11.EndOfMessage())
        status, headers, body = 0, {}, bytearray()
        async with asyncio.timeout(timeout):
            while True:
                event = self.h11.next_event()
                if event is h11.NEED_DATA:
                    self.h11.receive_data(await self.reader.read(65536))
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                    headers = {k.decode().lower(): v.decode() for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
        return Reply(status, headers, bytes(body))

    async def at_eof(self, timeout: float = 5) -> bool:
        """True once the server has closed the connection (whatever it sent before)."""
        async with asyncio.timeout(timeout):
            while await self.reader.read(65536):
                pass
        return True
