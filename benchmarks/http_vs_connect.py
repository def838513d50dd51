"""One-shot query latency: Neon's SQL over HTTP (``POST /sql`` on a keep-alive connection) vs what a
serverless function without it does, a fresh connection + SCRAM login + the same query on the pooled port.

Why: Neon's docs promise that the HTTP path is the faster one for a single query from a short-lived
function, because the HTTP connection is reused across invocations and a query is one round trip,
while a new Postgres connection pays TCP setup, the SCRAM exchange (PBKDF2 on both sides) and the
startup round trips every time. Both contenders go through one pooler process, on the same warm pool,
alternating query by query so drift hits both alike. Also shown: HTTP with a new connection per
request (no keep-alive), the worst case of the HTTP path.

    python -m benchmarks.http_vs_connect               # embedded Postgres, 2000 queries per contender
    python -m benchmarks.http_vs_connect -n 500 --dsn postgresql://postgres@localhost/postgres

Measured (2026-11-29, 2 shared cores, Python 3.11, uvloop; `-n 2000`), ms:

    contender                      median      p90      p99
    POST /sql, keep-alive           0.392    0.534    1.377
    fresh TCP + SCRAM + query       0.569    0.855    2.539
    POST /sql, new connection       0.609    0.821    2.417

TLS: plaintext both ways here; with client TLS in the pooler, the fresh connection also pays a TLS
handshake and HTTPS keeps one per keep-alive connection, which widens the gap.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import BENCH_DB, BENCH_PASSWORD, BENCH_USER, LOOPBACK, free_port, postgres, prepare, run_pooler
from benchmarks.common import write_pgbouncer_ini as write_ini
from benchmarks.pgwire import blocking_login, blocking_query

QUERY = "SELECT 1"


def _http_body() -> bytes:
    return json.dumps({"query": QUERY, "params": []}).encode()


def _headers(port: int) -> dict[str, str]:
    url = f"postgresql://{BENCH_USER}:{BENCH_PASSWORD}@{LOOPBACK}:{port}/{BENCH_DB}"
    return {"Neon-Connection-String": url, "Neon-Raw-Text-Output": "true", "Neon-Array-Mode": "true"}


def http_keepalive(port: int) -> Callable[[], None]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
    headers, body = _headers(port), _http_body()

    def once() -> None:
        conn.request("POST", "/sql", body=body, headers=headers)
        reply = conn.getresponse()
        data = reply.read()
        if reply.status != 200:
            raise RuntimeError(f"HTTP {reply.status}: {data[:200]!r}")

    return once


def http_fresh(port: int) -> Callable[[], None]:
    headers, body = _headers(port), _http_body()

    def once() -> None:
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
        try:
            conn.request("POST", "/sql", body=body, headers=headers)
            reply = conn.getresponse()
            data = reply.read()
            if reply.status != 200:
                raise RuntimeError(f"HTTP {reply.status}: {data[:200]!r}")
        finally:
            conn.close()

    return once


def tcp_fresh(port: int) -> Callable[[], None]:
    def once() -> None:
        with socket.create_connection((LOOPBACK, port), timeout=30) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            blocking_login(sock, BENCH_USER, BENCH_PASSWORD, BENCH_DB)
            blocking_query(sock, QUERY)
            sock.sendall(b"X\x00\x00\x00\x04")

    return once


def measure(contenders: dict[str, Callable[[], None]], n: int) -> dict[str, list[float]]:
    """Latency in ms of each contender, interleaved one call at a time."""
    for fn in contenders.values():  # warm-up: the pool's servers, the keep-alive session's login
        for _ in range(20):
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(n):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=2000, help="queries per contender")
    parser.add_argument("--dsn", help="a superuser URL of a Postgres to use instead of an embedded one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="http-vs-connect-") as tmp:
        workdir = Path(tmp)
        with postgres(args.dsn, workdir, max_connections=100) as server:
            prepare(server, None)
            port = free_port()
            ini = write_ini(workdir, "pooler", server, port, pool_size=5, auth_type="scram-sha-256")
            with run_pooler(ini, port):
                times = measure({
                    "POST /sql, keep-alive": http_keepalive(port),
                    "fresh TCP + SCRAM + query": tcp_fresh(port),
                    "POST /sql, new connection": http_fresh(port),
                }, args.n)
    print(f"One-shot `{QUERY}` through one pooler, {args.n} calls each, interleaved (ms):")
    print(f"  {'contender':<28} {'median':>8} {'p90':>8} {'p99':>8}")
    for name, values in times.items():
        q = statistics.quantiles(values, n=100)
        print(f"  {name:<28} {statistics.median(values):8.3f} {q[89]:8.3f} {q[98]:8.3f}")
    http_ms = statistics.median(times["POST /sql, keep-alive"])
    tcp_ms = statistics.median(times["fresh TCP + SCRAM + query"])
    print(f"HTTP keep-alive is {tcp_ms / http_ms:.1f}x faster than a fresh connection (medians)")


if __name__ == "__main__":
    main()
