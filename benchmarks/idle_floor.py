"""RSS per idle connection of a bare uvloop server whose protocol keeps nothing: the floor under pooler's clients.

Why: scenario e (``python -m benchmarks --scenarios e``) gives pooler's bytes per idle client, and part of
that is the event loop's own transport for each connection. This measures that part alone, on the same
machine, so the note can say which share is pooler's own objects.

    python -m benchmarks.idle_floor [connections]
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import uvloop

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


async def measure(connections: int) -> float:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Nothing, "127.0.0.1", 0, backlog=4096)
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
    per = uvloop.run(measure(connections))
    print(f"bare uvloop server: {connections} idle connections, {per:.0f} B RSS per connection")
    return 0


if __name__ == "__main__":
    sys.exit(main())
