"""RSS per idle connection of a bare server whose protocol keeps nothing: the floor under pooler's clients.

Why: scenario e (``python -m benchmarks --scenarios e``) gives pooler's bytes per idle client, and part of
that is the transport under each connection. This measures that part alone, on the same machine, for
both transports pooler has: uvloop's own (TLS sessions, the HTTP port) and pooler.net.stream's socket
transport (plaintext Postgres-protocol connections), so the note can say which share is pooler's own.

    python -m benchmarks.idle_floor [connections [uvloop|stream]]
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


TRANSPORTS = {"uvloop": "uvloop's transport", "stream": "pooler.net.stream's socket transport"}


def main() -> int:
    connections = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    if len(sys.argv) > 2:  # one transport, in this process (see below)
        per = uvloop.run(measure(connections, sys.argv[2]))
        print(f"bare server on {TRANSPORTS[sys.argv[2]]}: {connections} idle connections, {per:.0f} B RSS per "
              "connection", flush=True)
        return 0
    # Each transport in a fresh process: memory the first one freed would otherwise be reused by the
    # second, which would then look cheaper than it is.
    for transport in TRANSPORTS:
        subprocess.run([sys.executable, "-m", "benchmarks.idle_floor", str(connections), transport], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
