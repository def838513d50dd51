"""RSS per idle connection of a bare server whose protocol keeps nothing: the floor under pooler's clients.

Why: scenario e (``python -m benchmarks --scenarios e``) gives pooler's bytes per idle client, and part of
that is the transport under each connection. This measures that part alone, on the same machine, for
both transports pooler has: uvloop's own (TLS sessions, the HTTP port) and pooler.net.stream's socket
transport (plaintext Postgres-protocol connections), so the note can say which share is pooler's own.

    python -m benchmarks.idle_floor [connections]
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import uvloop

from pooler.net.stream import SocketServer, listening_sockets

_CLIENTS = """
import socket, sys, time
conns = [socket.create_connection(("127.0.0.1", int(sys.argv[1]))) for _ in range(int(sys.argv[2]))]
print("ok", flush=True)
time.sleep(60)
"""


def rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


class Nothing(asyncio.Protocol):
    __slots__ = ()


async def measure(connections: int, transport: str) -> float:
    loop = asyncio.get_running_loop()
    server: asyncio.Server | SocketServer
    if transport == "uvloop":
        server = await loop.create_server(Nothing, "127.0.0.1", 0, backlog=4096)
    else:
        [sock] = listening_sockets("127.0.0.1", 0, backlog=4096, reuse_port=False)
        server = SocketServer(loop, sock, Nothing)
    port = server.sockets[0].getsockname()[1]
    await asyncio.sleep(0.2)
    before = rss()
    # The clients live in another process: only the server's side of each connection is in this RSS.
    child = subprocess.Popen([sys.executable, "-c", _CLIENTS, str(port), str(connections)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        if (await loop.run_in_executor(None, child.stdout.readline)).strip() != "ok":
            raise RuntimeError("the client process could not open its connections (ulimit -n?)")
        await asyncio.sleep(1.0)
        return (rss() - before) / connections
    finally:
        child.kill()
        child.wait()
        server.close()


def main() -> int:
    connections = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    for transport, name in (("uvloop", "uvloop's transport"), ("stream", "pooler.net.stream's socket transport")):
        per = uvloop.run(measure(connections, transport))
        print(f"bare server on {name}: {connections} idle connections, {per:.0f} B RSS per connection")
    return 0


if __name__ == "__main__":
    sys.exit(main())
