"""Per-pool counters and latency histograms, kept as plain numbers on the data path.

Why plain numbers: the data path increments a few integer attributes per transaction, which costs
tens of nanoseconds; the admin console (SHOW STATS), the periodic stats log line and the Prometheus
collector read them when asked. Histograms are bucket counts with fixed bounds: one ``bisect`` per
observation, no locks, no objects.
"""

from __future__ import annotations

from bisect import bisect_left

#: Histogram bucket upper bounds in seconds, for waits, queries and transactions on a local database:
#: from 50 µs (a cached point lookup) to 60 s (a stuck transaction).
LATENCY_BUCKETS: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)


class Histogram:
    """Cumulative-ready bucket counts (the last bucket is +Inf) and the sum of observations."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations ≤ bound) pairs, ending with (inf, count): Prometheus's shape."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*LATENCY_BUCKETS, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


class PoolStats:
    """PgBouncer's SHOW STATS totals for one pool (times in seconds here, µs on the console).

    The total times are the histograms' sums (``query_time`` is ``query_hist.total``): one float to
    update per observation, not two. The data path inlines ``Histogram.observe`` for the same reason.
    """

    __slots__ = (
        "bind_count",
        "client_parse_count",
        "query_count",
        "query_hist",
        "received",
        "sent",
        "server_assignment_count",
        "server_parse_count",
        "session_state",
        "wait_hist",
        "xact_count",
        "xact_hist",
    )

    def __init__(self) -> None:
        self.xact_count = 0
        self.query_count = 0
        self.received = 0
        self.sent = 0
        self.server_assignment_count = 0
        self.client_parse_count = 0
        self.server_parse_count = 0
        self.bind_count = 0
        self.session_state: dict[str, int] = {}  # statements leaving session state, by kind
        self.wait_hist = Histogram()
        self.xact_hist = Histogram()
        self.query_hist = Histogram()

    @property
    def xact_time(self) -> float:
        return self.xact_hist.total

    @property
    def query_time(self) -> float:
        return self.query_hist.total

    @property
    def wait_time(self) -> float:
        return self.wait_hist.total


#: (message prefix, kind) for the errors the pooler itself sends; first match wins.
_ERROR_KINDS: tuple[tuple[str, str], ...] = (
    ("query_wait_timeout", "query_wait_timeout"),
    ("query_timeout", "query_timeout"),
    ("query timeout", "query_timeout"),
    ("transaction timeout", "transaction_timeout"),
    ("client_idle_timeout", "client_idle_timeout"),
    ("client_login_timeout", "client_login_timeout"),
    ("idle transaction timeout", "idle_transaction_timeout"),
    ("no more connections allowed", "max_client_conn"),
    ("client connections exceeded", "max_db_or_user_client_connections"),
    ("too many connections for database", "max_db_or_user_connections"),
    ("password authentication failed", "auth_failed"),
    ("SASL authentication failed", "auth_failed"),
    ("no such user", "auth_failed"),
    ('"trust" authentication failed', "auth_failed"),
    ("auth_query", "auth_query_failed"),
    ("no such database", "no_such_database"),
    ("not allowed", "admin_not_allowed"),
    ("unsupported startup parameter", "unsupported_startup_parameter"),
    ("server login has been failing", "server_login_retry"),
    ("server login failed", "server_login_failed"),
    ("could not connect to server", "server_connect_failed"),
    ("server_connect_timeout", "server_connect_failed"),
    ("connect failed", "server_connect_failed"),
    ("connect timeout", "server_connect_failed"),
    ("database configuration changed", "server_fast_close"),
    ("server conn crashed", "server_conn_crashed"),
    ("pooler is shutting down", "shutting_down"),
    ("transaction blocks not allowed", "statement_mode_transaction"),
    ("admin forced disconnect", "admin_kill"),
    ("database killed", "admin_kill"),
    ("prepared statement", "prepared_statement"),
    ("TLS handshake failed", "tls_handshake_failed"),
    ("direct TLS connection attempted", "tls_handshake_failed"),
    ("SSL required", "ssl_required"),
)


def error_kind(sqlstate: str, message: str) -> str:
    """A small, fixed vocabulary for ``pooler_errors_total{kind}`` (a label must not carry free text)."""
    for prefix, kind in _ERROR_KINDS:
        if message.startswith(prefix):
            return kind
    if message.startswith("database \"") and message.endswith("is disabled"):
        return "database_disabled"
    if sqlstate == "08P01":
        return "protocol_violation"
    if sqlstate.startswith("28"):
        return "auth_failed"
    return "other"
