"""pooler.net.tls.accept on both event loops: a handshake whose ClientHello was already read (direct TLS).

The pooler runs on uvloop; the claim that the bytes already read can be handed to the loop's own TLS
protocol holds for asyncio's default loop too, and this keeps it true for both.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import uvloop

from pooler.dev.certs import LocalCertificates, ensure_local_certificates
from pooler.net.tls import accept
from pooler.runtime.tls import ALPN_POSTGRESQL


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> LocalCertificates:
    return ensure_local_certificates(Path(tmp_path_factory.mktemp("tls-shell")))


class _EchoAfterSniff(asyncio.Protocol):
    """Reads the first bytes itself (as the pooler's client protocol does), then hands over to TLS."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.transport: asyncio.Transport | None = None
        self.sniffed = False
        self.tls: asyncio.Transport | None = None
        self.early = b""  # decrypted bytes that arrive before accept() has returned (as ClientConnection keeps)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if not self.sniffed:
            self.sniffed = True
            self.transport.pause_reading()
            asyncio.get_running_loop().create_task(self._upgrade(self.transport, data))
        elif self.tls is None:
            self.early += data
        else:
            self.tls.write(data.upper())

    async def _upgrade(self, raw: asyncio.Transport, first: bytes) -> None:
        self.tls = await accept(raw, self, self.context, first, 10)
        if self.early:
            self.tls.write(self.early.upper())


@pytest.mark.parametrize("new_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_accept_with_the_client_hello_already_read(certs: LocalCertificates,
                                                   new_loop: Callable[[], asyncio.AbstractEventLoop]) -> None:
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(certs.cert_file, certs.key_file)
    server_context.set_alpn_protocols([ALPN_POSTGRESQL])
    client_context = ssl.create_default_context(cafile=str(certs.ca_file))
    client_context.set_alpn_protocols([ALPN_POSTGRESQL])

    async def main() -> tuple[bytes, str | None]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _EchoAfterSniff(server_context), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context,
                                                           server_hostname="localhost")
            writer.write(b"hello over tls")
            echoed = await asyncio.wait_for(reader.readexactly(14), 10)
            alpn = writer.get_extra_info("ssl_object").selected_alpn_protocol()
            writer.close()
            return echoed, alpn
        finally:
            server.close()

    loop = new_loop()
    try:
        echoed, alpn = loop.run_until_complete(main())
    finally:
        loop.close()
    assert (echoed, alpn) == (b"HELLO OVER TLS", "postgresql")
