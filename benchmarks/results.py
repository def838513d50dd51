"""What a benchmark run measured: the model the suite fills and the report reads (and the JSON between them).

Apart from both so that neither imports the other: ``python -m benchmarks.report`` redraws a report from a
saved run without the suite's machinery.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass, field

DIRECT, PGBOUNCER, POOLER = "direct", "pgbouncer", "pooler"

# Scenario h's contenders (besides DIRECT and PGBOUNCER, the reference: PgBouncer in one process).
BARE = "bare forwarder"
POOLER_DEFAULTS = "pooler defaults"
POOLER_METRICS_OFF = "pooler metrics off"


def pgbouncer_n(count: int) -> str:
    """Scenario h's label of PgBouncer in ``count`` processes sharing the port (so_reuseport)."""
    return f"pgbouncer x{count}"


def pooler_workers(count: int) -> str:
    """Scenario h's label of pooler with ``workers = count`` (and its defaults otherwise)."""
    return f"pooler workers={count}"


@dataclass
class Series:
    """One contender in one pgbench scenario: a sample per round, or why it could not run."""

    tps: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    error: str | None = None

    def med(self, what: str = "tps") -> float | None:
        values = self.tps if what == "tps" else self.latency_ms
        return statistics.median(values) if values and self.error is None else None


@dataclass
class PgbenchScenario:
    key: str
    family: str
    title: str
    args: list[str]
    clients: int


@dataclass
class LaunchRound:
    contender: str
    round: int
    functions: int
    times: list[float]  # seconds from the storm's start to each successful result
    failures: int
    errors: dict[str, int]
    peak_backends: int
    wall: float

    def pct(self, q: float) -> float | None:
        if not self.times:
            return None
        ordered = sorted(self.times)
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


@dataclass
class IdleResult:
    contender: str
    target: int
    reached: int
    rss_before: int
    rss_after: int
    seconds: float
    error: str | None

    @property
    def per_client(self) -> float | None:
        return (self.rss_after - self.rss_before) / self.reached if self.reached else None


@dataclass
class SlowResult:
    contender: str
    result_bytes: int
    bytes_read: int
    seconds: float
    finished: bool
    rss_baseline: int
    rss_peak: int
    trace: list[tuple[float, int]]  # (seconds, rss bytes)
    released_after: float | None
    error: str | None = None


@dataclass
class Results:
    date: str
    command: str
    mode: str
    facts: dict[str, str] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    scenarios: list[PgbenchScenario] = field(default_factory=list)
    pgbench: dict[str, dict[str, Series]] = field(default_factory=dict)
    launch: list[LaunchRound] = field(default_factory=list)
    launch_max_connections: int = 0
    idle: list[IdleResult] = field(default_factory=list)
    slow: list[SlowResult] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # scenario family -> why
    headline_workers: int = 0  # scenario h: N of PgBouncer x N and pooler workers = N (0: h not run)
    notes: list[str] = field(default_factory=list)

    def series(self, key: str, contender: str) -> Series:
        return self.pgbench.setdefault(key, {}).setdefault(contender, Series())


def to_json(results: Results) -> str:
    return json.dumps(dataclasses.asdict(results), indent=1)
