"""Prometheus metrics, ``/healthz`` and ``/readyz`` on ``metrics_port``.

Names and labels are pgbouncer_exporter's (``pgbouncer_pools_*``, ``pgbouncer_stats_totals_*``,
``pgbouncer_databases_*``, the SHOW LISTS gauges, ``pgbouncer_config_*``, ``pgbouncer_up``,
``pgbouncer_version_info``, ``pgbouncer_client_connections``), in the exporter's units (seconds), so a
dashboard built for PgBouncer + exporter works unchanged. On top: latency histograms per database and
user (``pooler_client_wait_seconds``, ``pooler_transaction_duration_seconds``,
``pooler_query_duration_seconds``) and ``pooler_errors_total{kind}``.

Why a collector and not metric objects: the data path already counts in plain integers and bucket
arrays (``pooler.core.stats``); ``PoolerCollector`` turns them into metric families when Prometheus scrapes,
so the cost per transaction of having metrics is zero and the cost of a scrape is one pass over pools
and clients.

Why an asyncio HTTP handler and not prometheus_client's threaded server: the collector reads the
pooler's live structures (sets of clients, pools' server sets), which the event loop mutates; iterating
a set from another thread while the loop changes it raises "Set changed size during iteration". Served
on the loop, a scrape sees a consistent state, for the price of blocking the loop for the scrape's
duration (well under a millisecond for a local pooler's few hundred connections).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from pooler import __version__
from pooler.core.hosts import host_list
from pooler.core.stats import LATENCY_BUCKETS, Histogram
from pooler.log import log
from pooler.net.login import ClientState
from pooler.ops.introspect import by_database, client_state, database_rows, lists, pool_counts, pool_totals
from pooler.wire import messages as pq

if TYPE_CHECKING:
    from pooler.runtime.process import Pooler

#: What SHOW VERSION and ``pgbouncer_version_info`` report.
VERSION_STRING = f"pooler {__version__}"

# --- the collector ----------------------------------------------------------------------------------------

_POOL_GAUGES = (
    ("client_active_connections", "cl_active", "Client connections linked to a server or idle between transactions"),
    ("client_waiting_connections", "cl_waiting", "Client connections waiting for a server"),
    ("client_active_cancel_connections", None, "Client connections that forwarded a cancel request (always 0)"),
    ("client_waiting_cancel_connections", None, "Client connections whose cancel request waits (always 0)"),
    ("server_active_connections", "sv_active", "Server connections linked to a client"),
    ("server_active_cancel_connections", None, "Server connections forwarding a cancel request (always 0)"),
    ("server_being_canceled_connections", "sv_being_canceled", "Servers kept apart until a cancel sent for their "
     "last query has reached Postgres"),
    ("server_idle_connections", "sv_idle", "Server connections idle and ready for a client"),
    ("server_used_connections", "sv_used", "Server connections that need server_check_query first"),
    ("server_testing_connections", "sv_tested", "Server connections running a reset, check or rollback query"),
    ("server_login_connections", "sv_login", "Server connections logging in"),
)

_TOTALS_COUNTERS = (
    ("queries_pooled", "query_count", 1.0, "Total number of SQL queries pooled"),
    ("queries_duration_seconds", "query_time", 1.0, "Total seconds spent by the pooler executing queries on Postgres"),
    ("received_bytes", "received", 1.0, "Total bytes received from clients"),
    ("sent_bytes", "sent", 1.0, "Total bytes sent to clients"),
    ("client_wait_seconds", "wait_time", 1.0, "Total seconds clients spent waiting for a server"),
    ("sql_transactions_pooled", "xact_count", 1.0, "Total number of SQL transactions pooled"),
    ("server_in_transaction_seconds", "xact_time", 1.0, "Total seconds servers spent in a transaction"),
    ("client_parses", "client_parse_count", 1.0, "Total prepared statement Parse messages received from clients"),
    ("server_parses", "server_parse_count", 1.0, "Total prepared statement Parse messages sent to Postgres"),
    ("binds", "bind_count", 1.0, "Total Bind messages of prepared statements"),
    ("server_assignments", "server_assignment_count", 1.0, "Total times a server was assigned to a client"),
)

_DATABASE_GAUGES = (
    ("pool_size", "pool_size", "Maximum number of server connections per pool"),
    ("reserve_pool", "reserve_pool_size", "Maximum number of additional connections for this database"),
    ("max_connections", "max_connections", "Maximum number of allowed server connections for this database"),
    ("current_connections", "current_connections", "Current number of server connections for this database"),
    ("paused", "paused", "1 if this database is currently paused, else 0"),
    ("disabled", "disabled", "1 if this database is currently disabled, else 0"),
)

_LIST_GAUGES = {
    "databases": ("databases", "Count of databases"),
    "users": ("users", "Count of users"),
    "pools": ("pools", "Count of pools"),
    "free_clients": ("free_clients", "Count of free clients"),
    "used_clients": ("used_clients", "Count of used clients"),
    "login_clients": ("login_clients", "Count of clients in login state"),
    "free_servers": ("free_servers", "Count of free servers"),
    "used_servers": ("used_servers", "Count of used servers"),
    "dns_names": ("cached_dns_names", "Count of DNS names in the cache"),
    "dns_zones": ("cached_dns_zones", "Count of DNS zones in the cache"),
    "dns_queries": ("in_flight_dns_queries", "Count of in-flight DNS queries"),
}

_HISTOGRAMS = (
    ("pooler_client_wait_seconds", "wait_hist", "Time clients spent queued for a server, per assignment"),
    ("pooler_transaction_duration_seconds", "xact_hist", "Duration of transactions on a server"),
    ("pooler_query_duration_seconds", "query_hist", "Duration of queries (requests answered by ReadyForQuery)"),
)

_BUCKET_LABELS: list[str] = [floatToGoString(b) for b in LATENCY_BUCKETS] + ["+Inf"]  # type: ignore[no-untyped-call]


def _histogram_buckets(hist: Histogram) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    running = 0
    for label, n in zip(_BUCKET_LABELS, hist.counts, strict=True):
        running += n
        out.append((label, running))
    return out


class PoolerCollector(Collector):
    """Reads the pooler's counters at scrape time (call ``collect`` on the event loop's thread)."""

    def __init__(self, pooler: Pooler) -> None:
        self.pooler = pooler

    def describe(self) -> Iterable[Metric]:
        return []  # metric names depend on the pools; nothing to check up front

    def collect(self) -> Iterator[Metric]:
        pooler = self.pooler
        yield from self._general(pooler)
        yield from self._pools(pooler)
        yield from self._totals(pooler)
        yield from self._databases(pooler)
        yield from self._clients(pooler)
        yield from self._histograms(pooler)
        errors = CounterMetricFamily("pooler_errors", "Errors the pooler sent to clients, by kind", labels=["kind"])
        for kind, count in sorted(pooler.error_counts.items()):
            errors.add_metric([kind], count)
        yield errors
        session = CounterMetricFamily(
            "pooler_session_state", "Statements whose session state does not survive transaction pooling "
            "(see session_state_check), by database, user and kind", labels=["database", "user", "kind"])
        for pool in pooler.pools.values():
            for kind, count in sorted(pool.stats.session_state.items()):
                session.add_metric([pool.db.name, pool.user, kind], count)
        yield session

    def _general(self, pooler: Pooler) -> Iterator[Metric]:
        yield GaugeMetricFamily("pgbouncer_up", "The pooler answers (always 1 when this is scraped)", value=1)
        version = GaugeMetricFamily("pgbouncer_version_info", "The pooler's version", labels=["version"])
        version.add_metric([VERSION_STRING], 1)
        yield version
        s = pooler.config.settings
        yield GaugeMetricFamily("pgbouncer_config_max_client_connections", "Config maximum number of client "
                                "connections", value=s.max_client_conn)
        yield GaugeMetricFamily("pgbouncer_config_max_user_connections", "Config maximum number of server "
                                "connections per user", value=s.max_user_connections)
        for name, value in lists(pooler):
            spec = _LIST_GAUGES.get(name)
            if spec is not None:
                yield GaugeMetricFamily(f"pgbouncer_{spec[0]}", spec[1], value=value)

    def _pools(self, pooler: Pooler) -> Iterator[Metric]:
        rows = pool_counts(pooler)
        labels = ["database", "user"]
        for name, column, doc in _POOL_GAUGES:
            family = GaugeMetricFamily(f"pgbouncer_pools_{name}", doc, labels=labels)
            for row in rows:
                family.add_metric([row.database, row.user], getattr(row, column) if column else 0)
            yield family
        maxwait = GaugeMetricFamily("pgbouncer_pools_client_maxwait_seconds", "Age of the oldest waiting client",
                                    labels=labels)
        for row in rows:
            maxwait.add_metric([row.database, row.user], row.maxwait)
        yield maxwait

    def _totals(self, pooler: Pooler) -> Iterator[Metric]:
        per_db = by_database(pooler, pool_totals(pooler))
        for name, field, scale, doc in _TOTALS_COUNTERS:
            family = CounterMetricFamily(f"pgbouncer_stats_totals_{name}", doc, labels=["database"])
            for database, totals in per_db.items():
                family.add_metric([database], getattr(totals, field) * scale)
            yield family

    def _databases(self, pooler: Pooler) -> Iterator[Metric]:
        rows = database_rows(pooler)
        labels = ["name", "host", "port", "database", "force_user", "pool_mode"]
        for name, field, doc in _DATABASE_GAUGES:
            family = GaugeMetricFamily(f"pgbouncer_databases_{name}", doc, labels=labels)
            for row in rows:
                family.add_metric([row.name, row.host or "", str(row.port), row.database, row.force_user or "",
                                   row.pool_mode or ""], getattr(row, field))
            yield family

    def _clients(self, pooler: Pooler) -> Iterator[Metric]:
        counts: dict[tuple[str, str, str, str], int] = {}
        for client in pooler.clients:
            if client.state not in (ClientState.WELCOME, ClientState.READY):
                continue  # logging in or gone: not shown by SHOW CLIENTS either
            key = (client.database, client.user, client.params.get("application_name", ""), client_state(client))
            counts[key] = counts.get(key, 0) + 1
        family = GaugeMetricFamily("pgbouncer_client_connections", "Client connections by database, user, "
                                   "application_name and state",
                                   labels=["database", "user", "application_name", "state"])
        for key, count in sorted(counts.items()):
            family.add_metric(list(key), count)
        yield family

    def _histograms(self, pooler: Pooler) -> Iterator[Metric]:
        for name, attr, doc in _HISTOGRAMS:
            family = HistogramMetricFamily(name, doc, labels=["database", "user"])
            for pool in pooler.pools.values():
                hist: Histogram = getattr(pool.stats, attr)
                family.add_metric([pool.db.name, pool.user], _histogram_buckets(hist), sum_value=hist.total)
            yield family


def make_registry(pooler: Pooler) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PoolerCollector(pooler))
    ProcessCollector(registry=registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
    return registry


# --- readiness --------------------------------------------------------------------------------------------

#: How long one /readyz answer is reused (a healthcheck every second should not fork a backend each time).
READY_CACHE_SECONDS = 1.0
PROBE_TIMEOUT = 2.0


async def probe_postgres(host: str | None, port: int, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when a Postgres answers at host:port (an SSLRequest gets its one-byte answer), else why not.
    Postgres logs nothing for a connection that ends right after SSL negotiation."""
    where = f"{host or 'local socket'}:{port}"
    try:
        async with asyncio.timeout(timeout):
            if host and not host.startswith("/"):
                reader, writer = await asyncio.open_connection(host, port)
            else:
                reader, writer = await asyncio.open_unix_connection(f"{host or '/tmp'}/.s.PGSQL.{port}")
            try:
                writer.write(pq.SSL_REQUEST)
                answer = await reader.read(1)
            finally:
                writer.close()
    except TimeoutError:
        return f"Postgres at {where} did not answer within {timeout:g}s"
    except OSError as exc:
        return f"cannot reach Postgres at {where}: {exc.strerror or exc}"
    if answer not in (b"S", b"N"):
        return f"{where} does not speak the Postgres protocol"
    return None


async def readiness(pooler: Pooler) -> str | None:
    """None when the pooler can serve (listening, Postgres reachable, no pool failing to log in), else why."""
    if pooler.shutdown_mode is not None:
        return "shutting down"
    now = pooler.clock()
    for pool in pooler.pools.values():
        if pool.login_error is not None and now < pool.login_error_until:
            return (f"server login failing for database {pool.db.name} user {pool.user}: "
                    f"{pool.login_error.get('M', 'unknown error')}")
    targets = sorted({(host, db.port) for db in pooler.config.databases.values() for host in host_list(db.host)},
                     key=str)
    problems = await asyncio.gather(*(probe_postgres(host, port) for host, port in targets))
    failed = [p for p in problems if p]
    return "; ".join(failed) if failed else None


# --- the HTTP endpoint ------------------------------------------------------------------------------------

_MAX_REQUEST = 16 * 1024
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
_INDEX = (b"pooler metrics\n\n/metrics  Prometheus metrics\n/healthz  200 while the process is up\n"
          b"/readyz   200 when the pooler can serve (Postgres reachable), else 503 and why\n")


class MetricsServer:
    """The HTTP listener on ``metrics_port`` and its open connections; a service of the pooler."""

    name = "metrics"

    def __init__(self, pooler: Pooler) -> None:
        self.pooler = pooler
        self.registry = make_registry(pooler)
        self.server: asyncio.AbstractServer | None = None
        self.connections: set[_HttpConnection] = set()
        self._ready: tuple[float, str | None] | None = None

    async def start(self) -> int:
        settings = self.pooler.config.settings
        host, port = settings.listen_addr, settings.metrics_port
        loop = asyncio.get_running_loop()
        hosts: str | list[str] = [h.strip() for h in host.split(",")] if "," in host else host
        if host == "*":
            hosts = ["0.0.0.0", "::"]
        self.server = await loop.create_server(lambda: _HttpConnection(self), hosts, port, reuse_address=True)
        return int(self.server.sockets[0].getsockname()[1])

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.close()

    async def ready(self) -> str | None:
        now = time.monotonic()
        cached = self._ready
        if cached is not None and now - cached[0] < READY_CACHE_SECONDS:
            return cached[1]
        problem = await readiness(self.pooler)
        self._ready = (time.monotonic(), problem)
        return problem

    def render(self, accept: str) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class _HttpConnection(asyncio.Protocol):
    """One HTTP/1.x request per connection (``Connection: close``): all that Prometheus and probes need."""

    def __init__(self, owner: MetricsServer) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.handled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.owner.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.owner.connections.discard(self)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.handled:
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > _MAX_REQUEST:
                self.handled = True
                self.respond(400, b"request too large\n")
            return
        self.handled = True
        head = self.buf[:end].decode("latin-1")
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            self.respond(400, b"bad request\n")
            return
        method, target = parts[0], parts[1]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            self.respond(405, b"only GET and HEAD\n")
            return
        head_only = method == "HEAD"
        if path == "/metrics":
            try:
                body, content_type = self.owner.render(headers.get("accept", ""))
            except Exception as exc:  # a bug in a collector must not kill the listener
                log.exception("metrics scrape failed")
                self.respond(503, f"scrape failed: {exc}\n".encode(), head_only=head_only)
                return
            self.respond(200, body, content_type, head_only=head_only)
        elif path == "/healthz":
            self.respond(200, b"ok\n", head_only=head_only)
        elif path == "/readyz":
            asyncio.get_running_loop().create_task(self._readyz(head_only))
        elif path == "/":
            self.respond(200, _INDEX, head_only=head_only)
        else:
            self.respond(404, b"not found; try /metrics, /healthz or /readyz\n", head_only=head_only)

    async def _readyz(self, head_only: bool) -> None:
        try:
            problem = await self.owner.ready()
        except Exception as exc:
            problem = f"readiness check failed: {exc}"
        if problem is None:
            self.respond(200, b"ready\n", head_only=head_only)
        else:
            self.respond(503, f"not ready: {problem}\n".encode(), head_only=head_only)

    def respond(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8", *,
                head_only: bool = False) -> None:
        transport = self.transport
        if transport is None:
            return
        header = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: {content_type}\r\n"
                  f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("latin-1")
        transport.write(header if head_only else header + body)
        transport.close()

