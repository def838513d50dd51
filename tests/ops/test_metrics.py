"""Prometheus metrics on ``metrics_port``, parsed with prometheus-client's own text parser.

The names and labels are the ones pgbouncer_exporter exposes (dashboards query them); the values are
checked against the admin console and against a pool frozen in a known shape; the histograms are
checked to fill where the waits really were.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from backends import in_thread, wait_for_no_test_backends, wait_until_sync
from harness import RunningPooler, free_port, make_config, running_pooler
from opshelp import BLOCKED_QUERY, blocking, http_get, pool_row, sample, scrape, show
from prometheus_client.parser import text_string_to_metric_families
from support import APP_DB, APP_USER, OTHER_DB, PostgresServer

from pooler.config import DatabaseConfig
from pooler.core.stats import error_kind


@pytest.fixture(autouse=True)
def _no_leftover_backends(postgres: PostgresServer) -> None:
    wait_for_no_test_backends(postgres)


@pytest.fixture
def pooler(postgres: PostgresServer) -> Iterator[RunningPooler]:
    config = make_config(postgres, default_pool_size=5, admin_users=(APP_USER,), metrics_port=free_port())
    with running_pooler(config) as p:
        yield p


def metrics_port(p: RunningPooler) -> int:
    return p.call(lambda pl: pl.ports["metrics"])


#: Every metric of pgbouncer_exporter (0.11: collector.go) that a PgBouncer has, with its labels.
EXPORTER_METRICS: dict[str, tuple[str, ...]] = {
    **{f"pgbouncer_pools_{m}": ("database", "user") for m in (
        "client_active_connections", "client_waiting_connections", "client_active_cancel_connections",
        "client_waiting_cancel_connections", "server_active_connections", "server_active_cancel_connections",
        "server_being_canceled_connections", "server_idle_connections", "server_used_connections",
        "server_testing_connections", "server_login_connections", "client_maxwait_seconds")},
    **{f"pgbouncer_stats_totals_{m}_total": ("database",) for m in (
        "queries_pooled", "queries_duration_seconds", "received_bytes", "sent_bytes", "client_wait_seconds",
        "sql_transactions_pooled", "server_in_transaction_seconds", "client_parses", "server_parses", "binds",
        "server_assignments")},
    **{f"pgbouncer_databases_{m}": ("database", "force_user", "host", "name", "pool_mode", "port") for m in (
        "pool_size", "reserve_pool", "max_connections", "current_connections", "paused", "disabled")},
    **{f"pgbouncer_{m}": () for m in (
        "databases", "users", "pools", "free_clients", "used_clients", "login_clients", "free_servers",
        "used_servers", "cached_dns_names", "cached_dns_zones", "in_flight_dns_queries", "up",
        "config_max_client_connections", "config_max_user_connections")},
    "pgbouncer_version_info": ("version",),
    "pgbouncer_client_connections": ("application_name", "database", "state", "user"),
}


def test_every_exporter_metric_is_there_with_its_labels(pooler: RunningPooler) -> None:
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        conn.execute("select 1")
        status, content_type, body = http_get(metrics_port(pooler), "/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    labels_of: dict[str, set[tuple[str, ...]]] = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(body):
        types[family.name] = family.type
        for s in family.samples:
            labels_of.setdefault(s.name, set()).add(tuple(sorted(s.labels)))
    for name, labels in EXPORTER_METRICS.items():
        assert labels_of.get(name) == {labels}, name
    assert types["pgbouncer_stats_totals_queries_pooled"] == "counter"
    assert types["pgbouncer_pools_client_active_connections"] == "gauge"
    for name in ("pooler_client_wait_seconds", "pooler_transaction_duration_seconds", "pooler_query_duration_seconds"):
        assert types[name] == "histogram"
        assert {"le", "database", "user"} in [set(x) for x in labels_of[f"{name}_bucket"]]
    samples = scrape(metrics_port(pooler))
    assert sample(samples, "pgbouncer_up") == 1
    assert sample(samples, "pgbouncer_config_max_client_connections") == 100
    assert samples[("pgbouncer_version_info", (("version", "pooler 0.1.0"),))] == 1
    assert sample(samples, "pgbouncer_databases_pool_size", name=APP_DB, host=pooler.config.databases[APP_DB].host
                  or "", port=str(pooler.config.databases[APP_DB].port), database=APP_DB, force_user="",
                  pool_mode="") == 5
    assert any(k[0] == "process_resident_memory_bytes" for k in samples)


def test_values_follow_the_pool_and_the_histograms_fill(pooler: RunningPooler, postgres: PostgresServer) -> None:
    port = metrics_port(pooler)
    before = scrape(port)
    assert ("pooler_client_wait_seconds_count", (("database", APP_DB), ("user", APP_USER))) not in before
    conns = [psycopg.connect(pooler.dsn(), autocommit=True, application_name="loadgen") for _ in range(30)]
    try:
        with blocking(postgres, APP_DB) as blocker:
            futures = [in_thread(lambda c=c: c.execute(BLOCKED_QUERY).fetchall()) for c in conns]
            wait_until_sync(lambda: pool_row(pooler, APP_DB)["cl_waiting"] == 25, what="25 queued clients")
            wait_until_sync(lambda: sample(scrape(port), "pgbouncer_pools_client_maxwait_seconds", database=APP_DB,
                                           user=APP_USER) >= 0.3, what="the oldest client waiting 0.3 s")
            held = scrape(port)
            pool = {"database": APP_DB, "user": APP_USER}
            assert sample(held, "pgbouncer_pools_client_active_connections", **pool) == 5
            assert sample(held, "pgbouncer_pools_client_waiting_connections", **pool) == 25
            assert sample(held, "pgbouncer_pools_server_active_connections", **pool) == 5
            assert sample(held, "pgbouncer_pools_server_idle_connections", **pool) == 0
            assert sample(held, "pgbouncer_used_clients") == 30
            assert sample(held, "pgbouncer_client_connections", database=APP_DB, user=APP_USER,
                          application_name="loadgen", state="waiting") == 25
            assert sample(held, "pgbouncer_client_connections", database=APP_DB, user=APP_USER,
                          application_name="loadgen", state="active") == 5
            blocker.release()
            for future in futures:
                future.result(15)
        after = scrape(port)
        labels = {"database": APP_DB, "user": APP_USER}
        waits = sample(after, "pooler_client_wait_seconds_count", **labels)
        assert waits == 30  # one assignment per client
        # 25 clients queued for at least 0.3 s: they sit above the 0.25 s bound, the first 5 well below it.
        assert sample(after, "pooler_client_wait_seconds_bucket", le="0.25", **labels) <= 5
        assert sample(after, "pooler_client_wait_seconds_bucket", le="+Inf", **labels) == 30
        assert sample(after, "pooler_client_wait_seconds_sum", **labels) >= 25 * 0.3
        assert sample(after, "pooler_transaction_duration_seconds_count", **labels) == 30
        assert sample(after, "pooler_query_duration_seconds_count", **labels) == 30
        # the 5 that held the servers waited on the lock for 0.3 s or more
        assert sample(after, "pooler_query_duration_seconds_bucket", le="0.25", **labels) <= 25
        assert sample(after, "pgbouncer_stats_totals_sql_transactions_pooled_total", database=APP_DB) == 30
        assert sample(after, "pgbouncer_stats_totals_client_wait_seconds_total", database=APP_DB) == pytest.approx(
            sample(after, "pooler_client_wait_seconds_sum", **labels))
        stats = {r["database"]: r for r in show(pooler, "STATS")}[APP_DB]
        assert sample(after, "pgbouncer_stats_totals_queries_pooled_total", database=APP_DB) == stats[
            "total_query_count"]
        assert sample(after, "pgbouncer_stats_totals_received_bytes_total", database=APP_DB) == stats["total_received"]
        assert sample(after, "pgbouncer_pools_server_idle_connections", **labels) == 5
        buckets = [v for (name, lbl), v in after.items() if name == "pooler_query_duration_seconds_bucket"
                   and dict(lbl)["database"] == APP_DB]
        assert buckets == sorted(buckets), "histogram buckets must be cumulative"
    finally:
        for conn in conns:
            conn.close()


def test_sub_millisecond_queries_land_in_sub_millisecond_buckets(pooler: RunningPooler) -> None:
    with psycopg.connect(pooler.dsn(), autocommit=True, prepare_threshold=None) as conn:
        for _ in range(50):
            conn.execute("select 1")
    after = scrape(metrics_port(pooler))
    labels = {"database": APP_DB, "user": APP_USER}
    assert sample(after, "pooler_query_duration_seconds_count", **labels) == 50
    # A local `select 1` takes tens of microseconds: most must be below 1 ms, and not all at exactly 0.
    assert sample(after, "pooler_query_duration_seconds_bucket", le="0.001", **labels) >= 40
    assert sample(after, "pooler_query_duration_seconds_sum", **labels) > 0


def test_errors_are_counted_by_kind(pooler: RunningPooler) -> None:
    for _ in range(2):
        with pytest.raises(psycopg.OperationalError, match="SASL authentication failed"):
            psycopg.connect(pooler.dsn(password="wrong"))
    with pytest.raises(psycopg.OperationalError, match="unsupported startup parameter"):
        psycopg.connect(pooler.dsn(options="-c work_mem=1MB"))
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        psycopg.connect(pooler.dsn("no_such_db_here"))
    samples = scrape(metrics_port(pooler))
    assert sample(samples, "pooler_errors_total", kind="auth_failed") == 2
    assert sample(samples, "pooler_errors_total", kind="unsupported_startup_parameter") == 1
    assert sample(samples, "pooler_errors_total", kind="server_login_failed") == 1


@pytest.mark.parametrize(("sqlstate", "message", "kind"), [
    ("08P01", "query_wait_timeout", "query_wait_timeout"),
    ("08P01", "idle transaction timeout", "idle_transaction_timeout"),
    ("08P01", "query timeout", "query_timeout"),
    ("08P01", "transaction timeout", "transaction_timeout"),
    ("08P01", "client connections exceeded (max_db_client_connections)", "max_db_or_user_client_connections"),
    ("08P01", '"trust" authentication failed', "auth_failed"),
    ("08006", "connect failed", "server_connect_failed"),
    ("53300", "no more connections allowed (max_client_conn)", "max_client_conn"),
    ("08P01", 'database "x" is disabled', "database_disabled"),
    ("08006", "server conn crashed? EOF; the transaction was lost", "server_conn_crashed"),
    ("08P01", "invalid message length 2 for message type 'Q'", "protocol_violation"),
    ("28000", "something new about auth", "auth_failed"),
    ("XX000", "anything else", "other"),
])
def test_error_kinds_are_a_small_fixed_vocabulary(sqlstate: str, message: str, kind: str) -> None:
    assert error_kind(sqlstate, message) == kind


def test_health_and_readiness(pooler: RunningPooler, postgres: PostgresServer) -> None:
    port = metrics_port(pooler)
    assert http_get(port, "/healthz")[::2] == (200, "ok\n")
    assert http_get(port, "/readyz")[::2] == (200, "ready\n")
    assert http_get(port, "/")[0] == 200
    status, _, body = http_get(port, "/nope")
    assert status == 404 and "/metrics" in body
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 405")
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := sock.recv(1000):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"\r\n\r\n")  # headers, no body
    dead = free_port()
    databases = {APP_DB: DatabaseConfig(name=APP_DB, host="127.0.0.1", port=dead)}
    with running_pooler(make_config(postgres, databases=databases, metrics_port=free_port())) as down:
        status, _, body = http_get(metrics_port(down), "/readyz")
        assert status == 503 and f"cannot reach Postgres at 127.0.0.1:{dead}" in body
        assert http_get(metrics_port(down), "/healthz")[0] == 200  # the process is up all the same
        with pytest.raises(psycopg.OperationalError, match="could not connect to server"):
            psycopg.connect(down.dsn())
        status, _, body = http_get(metrics_port(down), "/readyz")
        assert status == 503, body


def test_readyz_reports_a_pool_whose_server_login_fails(postgres: PostgresServer) -> None:
    databases = {OTHER_DB: DatabaseConfig(name=OTHER_DB, host=postgres.host, port=postgres.port, user=APP_USER,
                                          password="not-the-password")}
    with running_pooler(make_config(postgres, databases=databases, metrics_port=free_port())) as p:
        port = metrics_port(p)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(p.dsn(OTHER_DB))
        wait_until_sync(lambda: http_get(port, "/readyz")[0] == 503, timeout=3, what="readyz 503")
        body = http_get(port, "/readyz")[2]
        assert f"server login failing for database {OTHER_DB} user {APP_USER}" in body


def test_a_scrape_while_clients_come_and_go_is_consistent(pooler: RunningPooler) -> None:
    """Scrapes run on the event loop: hammering both at once must never produce a torn or failed scrape."""
    port = metrics_port(pooler)

    def churn() -> None:
        for _ in range(40):
            with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
                conn.execute("select 1")

    future = in_thread(churn)
    scrapes: list[Any] = []
    while not future.done():
        scrapes.append(scrape(port))
    future.result(30)
    assert len(scrapes) > 3
    final = scrape(port)
    assert sample(final, "pgbouncer_stats_totals_server_assignments_total", database=APP_DB) == 40
    assert not [k for k in final if k[0] == "pooler_errors_total"]  # the churn logged in fine: no error counted


def test_session_state_findings_are_counted_by_kind(pooler: RunningPooler) -> None:
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        conn.execute("SET search_path = public")
        conn.execute("SET search_path = public")  # warned once, counted twice
        conn.execute("LISTEN somewhere")
        _, _, body = http_get(metrics_port(pooler), "/metrics")
    samples = {
        s.labels["kind"]: s.value
        for family in text_string_to_metric_families(body) if family.name == "pooler_session_state"
        for s in family.samples if s.name == "pooler_session_state_total"
    }
    assert samples == {"set": 2, "listen": 1}
