"""The benchmark suite: pooler against PgBouncer and direct Postgres, on one machine, in one run.

Why this shape: absolute numbers on a laptop or a CI box mean little; ratios measured side by side do.
Every round runs each contender once, in a rotating order, so drift (thermal, page cache, noisy
neighbours) hits all alike, and the report gives medians, min-max and the ratios. Both poolers read
the same ``pgbouncer.ini``. PgBouncer is the binary ``--pgbouncer PATH`` names (or ``PGBOUNCER_BIN``;
the flag wins), else Debian's ``pgbouncer`` when installed; without any the suite still runs and reports
it absent. benchmarks/README.md shows how to build PgBouncer's latest release for the comparison.

Scenarios (``--scenarios``, default all):

    a  pgbench -S, simple protocol, 1 / 50 / 500 clients, default_pool_size=20: tps and latency
    b  pgbench -S -M extended and -M prepared, 50 clients
    c  pgbench -S -C (a new connection per transaction), SCRAM auth
    s  pooler alone: session_state_check = off vs warn (-S, 50 clients)
    m  pooler alone: metrics off vs on and scraped (-S, 50 clients)
    w  pooler alone: workers = 1 vs 2 (-S, 50 clients)
    d  launch day: 500 functions connect at the same instant to a Postgres with max_connections=100
    e  10,000 idle authenticated clients held: RSS per client
    f  one slow client reading a 1 GB result: the pooler's peak RSS
    h  the closing-note comparison, one run, contenders alternating, ratios to PgBouncer in 1 process:
       pooler with its defaults (metrics listener on, session_state_check = warn) and with metrics off,
       pooler workers = N, PgBouncer x N processes (so_reuseport), the bare forwarder (the floor),
       direct; pgbench -S -c 50 simple / -M prepared / -M extended, and 1 client (µs added over direct)

    python -m benchmarks                  # everything: ~50 minutes (h ~25); writes benchmarks/results/<date>.md
    python -m benchmarks --quick          # a few minutes, smaller sizes
    python -m benchmarks --scenarios a,d  # some scenarios only
    python -m benchmarks --dsn postgresql://postgres:pw@127.0.0.1:5432/postgres
    python -m benchmarks --scenarios h --pgbouncer /work/build/pgbouncer-1.25.2/pgbouncer --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import functools
import importlib.metadata
import os
import platform
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import common
from benchmarks.common import BENCH_DB, BENCH_PASSWORD, BENCH_USER, LOOPBACK, PgServer, Proc
from benchmarks.pgwire import AsyncConn, PgError, blocking_login, blocking_query, query_message
from benchmarks.results import (
    BARE,
    DIRECT,
    PGBOUNCER,
    POOLER,
    POOLER_DEFAULTS,
    POOLER_METRICS_OFF,
    IdleResult,
    LaunchRound,
    PgbenchScenario,
    Results,
    SlowResult,
    pgbouncer_n,
    pooler_workers,
)

ALL_SCENARIOS = "abcsmwdefh"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ==================================================================================================
# Contenders
# ==================================================================================================


@dataclass
class Contender:
    """How to start one contender: ``kind`` is direct, pgbouncer, pooler or the bare forwarder; ``env``
    goes to pooler; ``processes``: PgBouncer processes sharing the port; ``only``: the scenario keys it
    runs (None: all of its group's); ``scrape_every``: seconds between GETs of pooler's /metrics."""

    label: str
    kind: str
    env: dict[str, str] = field(default_factory=dict)
    scrape_every: float | None = None
    processes: int = 1
    only: frozenset[str] | None = None

    def runs(self, scenario: PgbenchScenario) -> bool:
        return self.only is None or scenario.key in self.only


@contextmanager
def started(ctx: Context, contender: Contender, ini: Path, server: PgServer) -> Iterator[Proc | None]:
    """The contender running on ``ini``; ``None`` for direct Postgres (and for an absent PgBouncer)."""
    if contender.kind == DIRECT:
        yield None
        return
    port = common.free_port()
    if contender.kind == BARE:
        with common.run_bare_forwarder(port, server.port, ini.parent, contender.label) as proc:
            yield proc
        return
    # Each instance gets its own copy of the ini with its own listen_port (PgBouncer reads it from
    # the file; pooler gets it from POOLER_LISTEN_PORT as well).
    text = ini.read_text()
    own = ini.parent / f"{ini.stem}-{contender.label.replace(' ', '_').replace('=', '')}.ini"
    own.write_text("\n".join(f"listen_port = {port}" if line.startswith("listen_port") else line
                             for line in text.splitlines()) + "\n")
    own.chmod(0o644)
    if contender.kind == PGBOUNCER and contender.processes > 1:
        with common.run_pgbouncer_group(own, port, contender.processes, contender.label.replace(" ", "_")) as proc:
            yield proc
    elif contender.kind == PGBOUNCER:
        with common.run_pgbouncer(own, port, contender.label) as proc:
            yield proc
    else:
        with common.run_pooler(own, port, contender.label, contender.env) as proc:
            yield proc


@dataclass
class Context:
    args: argparse.Namespace
    workdir: Path
    results: Results
    bouncer: bool  # PgBouncer installed


# ==================================================================================================
# pgbench scenarios (a, b, c, s, m, w)
# ==================================================================================================


def _pgbench_scenario(key: str, family: str, title: str, clients: int, *extra: str) -> PgbenchScenario:
    jobs = max(1, min(clients, os.cpu_count() or 1))
    return PgbenchScenario(key, family, title, ["-S", *extra, "-c", str(clients), "-j", str(jobs)], clients)


def run_pgbench_group(ctx: Context, server: PgServer, ini: Path, contenders: list[Contender],
                      scenarios: list[PgbenchScenario], *, check_workers: str | None = None) -> None:
    """Start every contender once, then run each scenario: a warm-up, then ``rounds`` rounds with the
    contenders in a rotating order. ``check_workers``: the family to skip (and say why) when a pooler
    asked for workers = N runs fewer processes."""
    args, results = ctx.args, ctx.results
    with ExitStack() as stack:
        running: list[tuple[Contender, int]] = []
        procs: dict[str, Proc] = {}
        for contender in contenders:
            if contender.kind == PGBOUNCER and not ctx.bouncer:
                for scenario in scenarios:
                    if contender.runs(scenario):
                        results.series(scenario.key, contender.label).error = "not installed"
                continue
            proc = stack.enter_context(started(ctx, contender, ini, server))
            running.append((contender, server.port if proc is None else proc.port))
            if proc is not None:
                procs[contender.label] = proc
            if contender.scrape_every:
                stack.enter_context(metrics_scraper(contender, contender.scrape_every))
        if check_workers:
            why = _workers_check(contenders, procs)
            if why:
                results.skipped[check_workers] = why
                log(f"scenario {check_workers} skipped: {why}")
                return
        for scenario in scenarios:
            results.scenarios.append(scenario)
            these = [(contender, port) for contender, port in running if contender.runs(scenario)]
            if args.warmup:
                for _contender, port in these:
                    with contextlib.suppress(common.PgbenchError):
                        common.pgbench(port, scenario.args, args.warmup)
            for round_no in range(args.rounds):
                shift = round_no % max(1, len(these))
                for contender, port in these[shift:] + these[:shift]:
                    series = results.series(scenario.key, contender.label)
                    if series.error:
                        continue
                    try:
                        # pgbench's -T includes connecting the clients: hundreds of them need a few seconds, and
                        # 50 backends forked on a loaded machine (direct, the bare forwarder) can take over one
                        floor = 3 if scenario.clients >= 200 else 2 if scenario.clients >= 50 else 0
                        seconds = max(args.seconds, floor)
                        run = common.pgbench(port, scenario.args, seconds)
                    except common.PgbenchError as exc:
                        series.error = str(exc)
                        log(f"  round {round_no + 1} {scenario.title:<34} {contender.label:<18} FAILED: {exc}")
                        continue
                    series.tps.append(run.tps)
                    series.latency_ms.append(run.latency_ms)
                    log(f"  round {round_no + 1} {scenario.title:<34} {contender.label:<18} tps={run.tps:9.0f} "
                        f"lat={run.latency_ms:.3f} ms")


def _workers_check(contenders: list[Contender], procs: dict[str, Proc]) -> str | None:
    """Why the workers scenario cannot run (pooler did not start N processes), or None."""
    time.sleep(1.0)  # workers may be forked just after the first one listens
    for contender in contenders:
        wanted = int(contender.env.get("POOLER_WORKERS", "1"))
        proc = procs.get(contender.label)
        if wanted < 2 or proc is None:
            continue
        count = len(proc.processes())
        if count < wanted:
            said = [line for line in proc.log_tail(200).splitlines() if "worker" in line.lower()]
            return (f"pooler started with workers = {wanted} runs {count} process(es): workers is not implemented "
                    f"yet (or was ignored){'; its log: ' + said[-1][:300] if said else ''}")
    return None


@contextmanager
def metrics_scraper(contender: Contender, every: float) -> Iterator[None]:
    """GET /metrics every ``every`` seconds while the block runs (Prometheus' default is every 15 s;
    scenario m scrapes every second, which overstates the cost)."""
    port = int(contender.env["POOLER_METRICS_PORT"])
    stop = threading.Event()

    def scrape() -> None:
        while not stop.wait(every):
            with contextlib.suppress(OSError), urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics",
                                                                      timeout=5) as response:
                response.read()

    thread = threading.Thread(target=scrape, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


# ==================================================================================================
# d. Launch day
# ==================================================================================================


@contextmanager
def backend_sampler(server: PgServer) -> Iterator[list[int]]:
    """While the block runs, a thread polls pg_stat_activity (its own connection, so the storm's event
    loop cannot delay it) for client backends on the bench database; the list gets the peak at exit."""
    sock = socket.create_connection((server.host, server.port), timeout=10)
    blocking_login(sock, server.superuser, server.password, "postgres")
    stop = threading.Event()
    peak = [0]

    def poll() -> None:
        while not stop.is_set():
            rows = blocking_query(sock, "select count(*) from pg_stat_activity where datname = 'bench' "
                                        "and backend_type = 'client backend'")
            peak[0] = max(peak[0], int(rows[0][0] or 0))
            stop.wait(0.002)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    result: list[int] = []
    try:
        yield result
    finally:
        stop.set()
        thread.join(10)
        sock.close()
        result.append(peak[0])


async def launch_storm(server: PgServer, port: int, functions: int, timeout: float) -> tuple[
        list[float], Counter[str], int, float]:
    """``functions`` tasks open a connection at the same instant, run ``select 1`` and close.
    Returns (times to result of the successful ones, failure texts, peak backends, wall seconds)."""
    loop = asyncio.get_running_loop()
    go = asyncio.Event()
    times: list[float] = []
    failures: Counter[str] = Counter()
    start = 0.0

    async def function() -> None:
        await go.wait()
        try:
            async with asyncio.timeout(timeout):
                conn = await AsyncConn.connect(LOOPBACK, port, BENCH_USER, BENCH_PASSWORD, BENCH_DB)
                await conn.query("select 1")
            times.append(loop.time() - start)
            await conn.close()
        except PgError as exc:
            failures[str(exc)] += 1
        except TimeoutError:
            failures[f"no result within {timeout:.0f}s"] += 1
        except OSError as exc:
            failures[f"{type(exc).__name__}: {exc.strerror or exc}"] += 1

    with backend_sampler(server) as peak:
        await asyncio.sleep(0.05)
        tasks = [asyncio.create_task(function()) for _ in range(functions)]
        await asyncio.sleep(0)
        start = loop.time()
        go.set()
        await asyncio.gather(*tasks)
        wall = loop.time() - start
    return times, failures, peak[0], wall


async def _wait_backends_gone(server: PgServer, timeout: float = 15.0) -> None:
    conn = await AsyncConn.connect(server.host, server.port, server.superuser, server.password, "postgres")
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = await conn.query("select count(*) from pg_stat_activity where datname = 'bench' "
                                    "and backend_type = 'client backend'")
            if int(rows[0][0] or 0) == 0:
                return
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


def run_launch_day_on_small_postgres(ctx: Context) -> None:
    args = ctx.args
    log(f"d: launch day, {args.functions} functions, max_connections={args.launch_max_connections}")
    with common.postgres(None, ctx.workdir, max_connections=args.launch_max_connections,
                         name="pgdata-launch") as small:
        common.prepare(small, None)
        run_launch_day(ctx, small)


def run_launch_day(ctx: Context, server: PgServer) -> None:
    args, results = ctx.args, ctx.results
    results.launch_max_connections = server.max_connections
    ini = common.write_pgbouncer_ini(ctx.workdir, "launch", server, common.free_port(),
                                     pool_size=args.pool_size, max_client_conn=max(1000, args.functions * 2))
    contenders = [Contender(DIRECT, DIRECT), Contender(PGBOUNCER, PGBOUNCER), Contender(POOLER, POOLER)]
    contenders = [c for c in contenders if c.kind != PGBOUNCER or ctx.bouncer]
    rounds = args.launch_rounds
    for round_no in range(rounds):
        shift = round_no % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            # Poolers start fresh each round: empty pools, as on a launch day.
            with started(ctx, contender, ini, server) as proc:
                port = server.port if proc is None else proc.port
                times, failures, peak, wall = asyncio.run(
                    launch_storm(server, port, args.functions, args.launch_timeout))
            asyncio.run(_wait_backends_gone(server))
            record = LaunchRound(contender.label, round_no + 1, args.functions, times, sum(failures.values()),
                                 dict(failures), peak, wall)
            results.launch.append(record)
            p50, p99 = record.pct(0.5), record.pct(0.99)
            log(f"  round {round_no + 1} launch day {contender.label:<10} ok={len(times)} failed={record.failures} "
                f"p50={_ms(p50)} p99={_ms(p99)} peak backends={peak} {dict(failures) if failures else ''}")


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.0f} ms"


# ==================================================================================================
# e. Idle clients
# ==================================================================================================


def _rss_settled(proc: Proc, samples: int = 5) -> int:
    values = []
    for _ in range(samples):
        values.append(proc.rss())
        time.sleep(0.1)
    return int(statistics.median(values))


async def hold_idle(port: int, target: int, batch: int, on_held: Callable[[int], None]) -> tuple[int, str | None]:
    """Open ``target`` authenticated connections in batches and hold them; ``on_held(n)`` is called
    while they are all still open. Returns (connections reached, first error)."""
    conns: list[AsyncConn] = []
    error: str | None = None

    async def one() -> AsyncConn:
        async with asyncio.timeout(30):
            return await AsyncConn.connect(LOOPBACK, port, BENCH_USER, BENCH_PASSWORD, BENCH_DB)

    deadline = time.monotonic() + 300
    try:
        while len(conns) < target and error is None:
            if time.monotonic() > deadline:
                error = f"stopped opening connections after 300 s ({len(conns)} open)"
                break
            size = min(batch, target - len(conns))
            outcomes = await asyncio.gather(*(one() for _ in range(size)), return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, AsyncConn):
                    conns.append(outcome)
                elif error is None and isinstance(outcome, BaseException):
                    error = f"{type(outcome).__name__}: {outcome}"
        if conns:  # the clients really are served: one of them runs a query through the pool
            await conns[-1].query("select 1")
        await asyncio.sleep(1.0)
        await asyncio.to_thread(on_held, len(conns))
        return len(conns), error
    finally:
        for conn in conns:
            conn.abort()
        await asyncio.sleep(0.2)


def run_idle(ctx: Context, server: PgServer) -> None:
    args, results = ctx.args, ctx.results
    log(f"e: {args.idle_clients} idle clients")
    limit = common.raise_fd_limit()
    target = args.idle_clients
    if limit < target + 200:
        results.notes.append(f"e: RLIMIT_NOFILE is {limit}: at most ~{limit - 200} idle clients can be held")
    ini = common.write_pgbouncer_ini(ctx.workdir, "idle", server, common.free_port(), pool_size=args.pool_size,
                                     max_client_conn=target + 100)
    for contender in (Contender(PGBOUNCER, PGBOUNCER), Contender(POOLER, POOLER)):
        if contender.kind == PGBOUNCER and not ctx.bouncer:
            continue
        with started(ctx, contender, ini, server) as proc:
            assert proc is not None
            record = _idle_one(contender, proc, target, args.idle_batch)
        results.idle.append(record)
        log(f"  idle clients {contender.label:<10} reached {record.reached}/{target} rss "
            f"{record.rss_before / 2**20:.1f} -> {record.rss_after / 2**20:.1f} MiB = {record.per_client or 0:.0f} "
            f"B/client {record.error or ''}")


async def _warm(port: int) -> None:
    conn = await AsyncConn.connect(LOOPBACK, port, BENCH_USER, BENCH_PASSWORD, BENCH_DB)
    await conn.query("select 1")
    await conn.close()


def _idle_one(contender: Contender, proc: Proc, target: int, batch: int) -> IdleResult:
    asyncio.run(_warm(proc.port))  # the pool and its first server exist before the baseline
    time.sleep(0.5)
    before = _rss_settled(proc)
    after: list[int] = []
    started_at = time.monotonic()
    reached, error = asyncio.run(hold_idle(proc.port, target, batch, lambda _n: after.append(_rss_settled(proc))))
    return IdleResult(contender.label, target, reached, before, after[0] if after else before,
                      time.monotonic() - started_at, error)


# ==================================================================================================
# f. One slow client reading a big result
# ==================================================================================================


def slow_read(port: int, rows: int, rate: float, seconds: float, full: bool) -> tuple[int, float, bool]:
    """Read ``select repeat('x', 1000) from generate_series(1, rows)`` through a small receive buffer
    at ``rate`` bytes/s (``full``: as fast as the small buffer allows, to the end), for at most
    ``seconds``. Returns (bytes read, seconds, whether the whole result arrived)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((LOOPBACK, port))
    try:
        blocking_login(sock, BENCH_USER, BENCH_PASSWORD, BENCH_DB)
        sock.sendall(query_message(f"select repeat('x', 1000) from generate_series(1, {rows})"))
        start = time.monotonic()
        total, tail = 0, b""
        sock.settimeout(30)
        while True:
            elapsed = time.monotonic() - start
            if elapsed > seconds:
                return total, elapsed, False
            chunk = sock.recv(4096)
            if not chunk:
                return total, time.monotonic() - start, False
            total += len(chunk)
            tail = (tail + chunk)[-6:]
            if tail == b"Z\x00\x00\x00\x05I":
                return total, time.monotonic() - start, True
            if not full:
                ahead = total / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
    finally:
        sock.close()


async def _active_repeat_queries(server: PgServer) -> int:
    conn = await AsyncConn.connect(server.host, server.port, server.superuser, server.password, "postgres")
    try:
        rows = await conn.query("select count(*) from pg_stat_activity where datname = 'bench' and state = 'active' "
                                "and query like 'select repeat(%'")
        return int(rows[0][0] or 0)
    finally:
        await conn.close()


def run_slow_client(ctx: Context, server: PgServer) -> None:
    args, results = ctx.args, ctx.results
    log(f"f: one slow client reading {args.slow_rows * 1011 / 1e9:.2f} GB")
    ini = common.write_pgbouncer_ini(ctx.workdir, "slow", server, common.free_port(), pool_size=args.pool_size)
    rows = args.slow_rows
    result_bytes = rows * (1000 + 11)  # DataRow: type, length, column count, column length, value
    for contender in (Contender(PGBOUNCER, PGBOUNCER), Contender(POOLER, POOLER)):
        if contender.kind == PGBOUNCER and not ctx.bouncer:
            continue
        with started(ctx, contender, ini, server) as proc:
            assert proc is not None
            record = _slow_one(ctx, contender, proc, server, result_bytes)
        results.slow.append(record)
        released = "NOT within 30 s" if record.released_after is None else f"{record.released_after:.1f} s"
        log(f"  slow client {contender.label:<10} read {record.bytes_read / 2**20:.0f} MiB in {record.seconds:.1f} s, "
            f"rss {record.rss_baseline / 2**20:.1f} -> peak {record.rss_peak / 2**20:.1f} MiB; the query ended "
            f"{released} after the client left {record.error or ''}")


def _slow_one(ctx: Context, contender: Contender, proc: Proc, server: PgServer, result_bytes: int) -> SlowResult:
    args = ctx.args
    time.sleep(0.5)
    baseline = _rss_settled(proc)
    trace: list[tuple[float, int]] = []
    stop = threading.Event()
    t0 = time.monotonic()

    def sample() -> None:
        while not stop.is_set():
            trace.append((time.monotonic() - t0, proc.rss()))
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    error = None
    bytes_read, seconds, finished = 0, 0.0, False
    try:
        bytes_read, seconds, finished = slow_read(proc.port, args.slow_rows, args.slow_rate * 2**20,
                                                  args.slow_seconds, args.slow_full)
    except (OSError, PgError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    aborted = time.monotonic()
    released: float | None = None
    while time.monotonic() < aborted + 30:
        if asyncio.run(_active_repeat_queries(server)) == 0:
            released = time.monotonic() - aborted
            break
        time.sleep(0.2)
    time.sleep(0.5)
    stop.set()
    sampler.join(5)
    peak = max((rss for _, rss in trace), default=baseline)
    return SlowResult(contender.label, result_bytes, bytes_read, seconds, finished, baseline, peak, trace, released,
                      error)


# ==================================================================================================
# Running it all
# ==================================================================================================


def machine_facts(server: PgServer) -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 2**20:.1f} GiB"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=common.ROOT, capture_output=True,
                            text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "pooler"], cwd=common.ROOT, capture_output=True,
                           text=True, check=False).stdout.strip()
    return {
        "cores": str(os.cpu_count()),
        "CPU": cpu,
        "memory": mem,
        "kernel": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version() + f" (uvloop {importlib.metadata.version('uvloop')})",
        "Postgres": common.psql_value(server, "show server_version"),
        "PgBouncer": _pgbouncer_fact(),
        "pooler": (commit or "?") + (" + uncommitted changes in pooler/" if dirty else ""),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def _pgbouncer_fact() -> str:
    binary = common.pgbouncer_binary()
    version = common.pgbouncer_version()
    if binary is None:
        return "not installed"
    return f"{version or 'unknown version'} (`{binary}`)"


def wait_quiet(minutes: float, threshold: float = 1.5) -> str:
    """Wait (60 s steps) until the 1-minute load average is under ``threshold``; describe what happened."""
    waited = 0
    while os.getloadavg()[0] >= threshold and waited < minutes * 60:
        log(f"load average {os.getloadavg()[0]:.2f} >= {threshold}: waiting 60 s for a quiet machine")
        time.sleep(60)
        waited += 60
    load = os.getloadavg()[0]
    if load >= threshold:
        return f"machine still busy after waiting {waited // 60} min (load {load:.2f}): results may be noisy"
    return f"waited {waited // 60} min for load < {threshold}" if waited else ""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=(__doc__ or "").splitlines()[0],
                                     epilog=(__doc__ or "")[(__doc__ or "").find("Scenarios ("):],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", help="superuser URL of an existing Postgres (default: start an embedded one)")
    parser.add_argument("--quick", action="store_true", help="under 2 minutes: 2 rounds of 1 s, smaller sizes")
    parser.add_argument("--smoke", action="store_true", help="seconds: the machinery only (for the test suite)")
    parser.add_argument("--rounds", type=int, help="rounds per pgbench scenario (default 5)")
    parser.add_argument("--seconds", type=int, help="seconds per pgbench run (default 10)")
    parser.add_argument("--scenarios", default=ALL_SCENARIOS, help=f"which, e.g. a,d,e (default all: "
                        f"{','.join(ALL_SCENARIOS)})")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                        help="where the report and charts go (default benchmarks/results)")
    parser.add_argument("--pool-size", type=int, default=20, help="default_pool_size (default 20)")
    parser.add_argument("--scale", type=int, help="pgbench scale (default 10)")
    parser.add_argument("--clients", help="scenario a's client counts (default 1,50,500)")
    parser.add_argument("--workers", type=int, default=2, help="scenarios w and h: pooler workers = N (w: against "
                        "workers = 1; h: against PgBouncer in N processes with so_reuseport) (default 2)")
    parser.add_argument("--pgbouncer", metavar="PATH", help="the PgBouncer binary to measure, e.g. one built from "
                        "its latest release (see benchmarks/README.md); wins over PGBOUNCER_BIN; default: Debian's "
                        "pgbouncer")
    parser.add_argument("--functions", type=int, help="scenario d: functions in the storm (default 500)")
    parser.add_argument("--launch-max-connections", type=int, help="scenario d: Postgres max_connections "
                        "(default 100)")
    parser.add_argument("--idle-clients", type=int, help="scenario e: idle clients to hold (default 10000)")
    parser.add_argument("--slow-rows", type=int, help="scenario f: rows of 1000 bytes (default 1000000: ~1 GB)")
    parser.add_argument("--slow-seconds", type=float, help="scenario f: give up reading after this (default 30)")
    parser.add_argument("--slow-rate", type=float, default=4.0, help="scenario f: MiB/s the client reads (default 4)")
    parser.add_argument("--slow-full", action="store_true", help="scenario f: read the whole result, unpaced "
                        "(bounded by --slow-seconds, default 600 s then)")
    parser.add_argument("--keep-logs", action="store_true", help="copy the contenders' logs to <out>/<date>-logs/")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="MINUTES",
                        help="first wait up to this long for a 1-minute load average under 1.5")
    args = parser.parse_args(argv)
    if args.quick and args.smoke:
        parser.error("--quick and --smoke exclude each other")
    # defaults per mode: full, quick, smoke
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    defaults = {
        "rounds": (5, 2, 1), "seconds": (10, 1, 1), "scale": (10, 10, 1), "clients": ("1,50,500", "1,50,500", "1,10"),
        "functions": (500, 500, 50), "launch_max_connections": (100, 100, 20),
        "idle_clients": (10_000, 2_000, 200), "slow_rows": (1_000_000, 1_000_000, 20_000),
        "slow_seconds": (600.0 if args.slow_full else 30.0, 5.0, 2.0),
    }
    index = ("full", "quick", "smoke").index(mode)
    for name, values in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, values[index])
    args.mode = mode
    args.warmup = {"full": 2, "quick": 0, "smoke": 0}[mode]
    args.launch_rounds = {"full": 3, "quick": 1, "smoke": 1}[mode]
    args.launch_timeout = 60.0
    args.idle_batch = 100
    if args.smoke and args.scenarios == ALL_SCENARIOS:
        args.scenarios = "adef"
    args.scenarios = args.scenarios.replace(",", "").replace(" ", "")
    unknown = set(args.scenarios) - set(ALL_SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {','.join(sorted(unknown))}: choose among {','.join(ALL_SCENARIOS)}")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.pgbouncer:
        try:
            common.use_pgbouncer(args.pgbouncer)
        except ValueError as exc:
            parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from benchmarks import report

    started_at = time.monotonic()
    quiet_note = wait_quiet(args.wait_quiet) if args.wait_quiet else ""
    date = datetime.date.today().isoformat()
    command = "python -m benchmarks" + ("" if argv is None and len(sys.argv) <= 1 else " " + shlex.join(
        sys.argv[1:] if argv is None else argv))
    results = Results(date=date, command=command, mode=args.mode)
    if quiet_note:
        results.notes.append(quiet_note)
    common.raise_fd_limit()
    bouncer = common.pgbouncer_binary() is not None
    if not bouncer:
        results.notes.append("PgBouncer is not installed (Debian: apt-get install pgbouncer): its columns are empty")
    scenarios = args.scenarios
    with tempfile.TemporaryDirectory(prefix="pooler-bench-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        ctx = Context(args, workdir, results, bouncer)
        clients = [int(c) for c in args.clients.split(",")]
        with common.postgres(args.dsn, workdir, max_connections=max(clients) + 200) as server:
            log(f"Postgres on port {server.port} (max_connections={server.max_connections}); preparing scale "
                f"{args.scale}")
            common.prepare(server, args.scale)
            results.facts = machine_facts(server)
            results.settings = {
                "pool": f"pool_mode = transaction, default_pool_size = {args.pool_size}, auth_type = md5 "
                        "(SCRAM for c), log_connections = log_disconnections = 0",
                "pooler": "its defaults otherwise: session_state_check = warn, max_prepared_statements = 200, "
                          "metrics listener off (POOLER_METRICS_PORT=0) except in scenarios m and h, "
                          "JSON logs to a file",
                "scenario m": "as benchmarks/metrics_cost.py: \"on\" = metrics listener scraped every second, "
                              "log_disconnections, log_pooler_errors, log_stats with stats_period = 1; \"off\" = "
                              "metrics_port = 0 and every log_* off; log_connections off in both",
                "rounds": f"{args.rounds} rounds x {args.seconds} s per pgbench scenario, contenders in rotating "
                          f"order, {args.warmup} s warm-up each" if args.warmup else
                          f"{args.rounds} rounds x {args.seconds} s per pgbench scenario, contenders in rotating "
                          "order, no warm-up",
            }
            if "a" in scenarios or "b" in scenarios:
                guarded(ctx, "ab", lambda: run_main_group(ctx, server, clients))
            if "c" in scenarios:
                guarded(ctx, "c", lambda: run_churn(ctx, server))
            for family in "smw":
                if family in scenarios:
                    guarded(ctx, family, functools.partial(run_pooler_variant, ctx, server, family))
            if "e" in scenarios:
                guarded(ctx, "e", lambda: run_idle(ctx, server))
            if "f" in scenarios:
                guarded(ctx, "f", lambda: run_slow_client(ctx, server))
            if "h" in scenarios:
                results.settings["scenario h"] = HEADLINE_SETUP.format(workers=args.workers)
                guarded(ctx, "h", lambda: run_headline(ctx, server))
        if "d" in scenarios:
            if args.dsn:
                results.notes.append("d: ran against an embedded Postgres with the max_connections below, not --dsn")
            guarded(ctx, "d", lambda: run_launch_day_on_small_postgres(ctx))
        if args.keep_logs:
            logs = args.out / f"{date}{'' if args.mode == 'full' else '-' + args.mode}-logs"
            logs.mkdir(parents=True, exist_ok=True)
            for file in workdir.glob("*.log"):
                shutil.copy(file, logs / file.name)
            for file in workdir.glob("pgdata*/postgres.log"):
                shutil.copy(file, logs / f"{file.parent.name}.log")
    results.facts["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results.facts["suite wall time"] = f"{time.monotonic() - started_at:.0f} s"
    path = report.write(results, args.out)
    log(f"wrote {path}")
    if "h" in scenarios:
        print(report.headline_markdown(results))
    return 0


# Scenario m, as benchmarks/metrics_cost.py defines it (issue 3): "on" is the metrics listener scraped
# every second, JSON logs to a file with disconnections, pooler errors and stats every second;
# log_connections stays off in both.
METRICS_OFF = {"POOLER_METRICS_PORT": "0", "POOLER_LOG_CONNECTIONS": "0", "POOLER_LOG_DISCONNECTIONS": "0",
               "POOLER_LOG_POOLER_ERRORS": "0", "POOLER_LOG_STATS": "0"}
METRICS_ON = {"POOLER_LOG_CONNECTIONS": "0", "POOLER_LOG_DISCONNECTIONS": "1", "POOLER_LOG_POOLER_ERRORS": "1",
              "POOLER_LOG_STATS": "1", "POOLER_STATS_PERIOD": "1"}


def run_main_group(ctx: Context, server: PgServer, clients: list[int]) -> None:
    """a and b: one set of contenders on one ini."""
    scenarios = ctx.args.scenarios
    log("a/b: pgbench -S")
    group: list[PgbenchScenario] = []
    if "a" in scenarios:
        group += [_pgbench_scenario(f"a{c}", "a", f"-S simple, {c} client{'s' * (c > 1)}", c, "-M", "simple")
                  for c in clients]
    if "b" in scenarios:
        group += [_pgbench_scenario("b-extended", "b", "-S -M extended, 50 clients", 50, "-M", "extended"),
                  _pgbench_scenario("b-prepared", "b", "-S -M prepared, 50 clients", 50, "-M", "prepared")]
    ini = common.write_pgbouncer_ini(ctx.workdir, "main", server, common.free_port(), pool_size=ctx.args.pool_size)
    run_pgbench_group(ctx, server, ini, MAIN_CONTENDERS, group)


def run_churn(ctx: Context, server: PgServer) -> None:
    log("c: pgbench -S -C with SCRAM")
    ini = common.write_pgbouncer_ini(ctx.workdir, "scram", server, common.free_port(), pool_size=ctx.args.pool_size,
                                     auth_type="scram-sha-256")
    run_pgbench_group(ctx, server, ini, MAIN_CONTENDERS,
                      [_pgbench_scenario("c-churn", "c", "-S -C (connect per tx), SCRAM, 50 clients", 50, "-C", "-M",
                                         "simple")])


MAIN_CONTENDERS = [Contender(DIRECT, DIRECT), Contender(PGBOUNCER, PGBOUNCER), Contender(POOLER, POOLER)]


def guarded(ctx: Context, families: str, step: Callable[[], None]) -> None:
    """Run one scenario family; if it breaks (a contender crashed, say), note why and go on."""
    try:
        step()
    except Exception as exc:
        import traceback

        traceback.print_exc()
        for family in families:
            ctx.results.skipped[family] = f"the run failed: {type(exc).__name__}: {str(exc)[:300]}"
        ctx.results.notes.append(f"{'/'.join(families)}: the run failed: {type(exc).__name__}: {str(exc)[:500]}")


def run_pooler_variant(ctx: Context, server: PgServer, family: str) -> None:
    """Pooler against itself: one setting varied, everything else equal (s, m, w)."""
    from pooler.config import Settings

    settings = {f.name for f in dataclasses.fields(Settings)}
    ini = common.write_pgbouncer_ini(ctx.workdir, f"variant-{family}", server, common.free_port(),
                                     pool_size=ctx.args.pool_size)
    scenario = _pgbench_scenario(f"{family}-" + {"s": "check", "m": "metrics", "w": "workers"}[family], family,
                                 "-S simple, 50 clients", 50, "-M", "simple")
    if family == "s":
        if "session_state_check" not in settings:
            ctx.results.skipped["s"] = "pooler has no session_state_check setting"
            return
        log("s: session_state_check off vs warn")
        run_pgbench_group(ctx, server, ini, [
            Contender("pooler check=off", POOLER, {"POOLER_SESSION_STATE_CHECK": "off"}),
            Contender("pooler check=warn", POOLER, {"POOLER_SESSION_STATE_CHECK": "warn"})], [scenario])
    elif family == "m":
        if "metrics_port" not in settings:
            ctx.results.skipped["m"] = "pooler has no metrics_port setting"
            return
        log("m: metrics and logging off vs on")
        run_pgbench_group(ctx, server, ini, [
            Contender("pooler metrics off", POOLER, METRICS_OFF),
            Contender("pooler metrics on", POOLER, {**METRICS_ON, "POOLER_METRICS_PORT": str(common.free_port())},
                      scrape_every=1.0)], [scenario])
    else:
        if "workers" not in settings:
            ctx.results.skipped["w"] = "pooler has no workers setting"
            return
        workers = ctx.args.workers
        log(f"w: workers 1 vs {workers}")
        run_pgbench_group(ctx, server, ini, [
            Contender("pooler workers=1", POOLER, {"POOLER_WORKERS": "1"}),
            Contender(f"pooler workers={workers}", POOLER, {"POOLER_WORKERS": str(workers)})], [scenario],
            check_workers="w")



# ==================================================================================================
# h. The closing-note comparison
# ==================================================================================================

HEADLINE_SETUP = (
    "one group, every contender started once and the contenders alternating over the rounds; "
    "\"pooler defaults\" is `pooler run` as shipped: metrics listener on (its own port, scraped every 15 s, "
    "Prometheus' default), session_state_check = warn, max_prepared_statements = 200, log_stats on; "
    "\"pooler metrics off\" differs only in metrics_port = 0; pooler workers = {workers} has the defaults "
    "and splits the pool sizes between its processes; PgBouncer x {workers} is {workers} PgBouncer processes on "
    "one port with so_reuseport = 1, each with the same share of default_pool_size and max_client_conn as "
    "one of pooler's workers gets; the bare forwarder is benchmarks/bare_forwarder.py (1:1, no pooling, on "
    "pooler's socket transport)"
)


def _free_port_pair(count: int) -> int:
    """A port ``p`` with ``p .. p + count - 1`` all free (pooler's worker ``i`` serves metrics on ``p + i``)."""
    for _ in range(50):
        base = common.free_port()
        if all(_port_free(base + i) for i in range(1, count)):
            return base
    raise RuntimeError(f"found no {count} consecutive free ports for the metrics listeners")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def headline_contenders(workers: int, keys: list[str]) -> list[Contender]:
    """Scenario h's contenders: the multi-process ones run only at 50 clients (at 1 client a second
    process has nothing to do)."""
    many = frozenset(k for k in keys if k != "h-1client")
    contenders = [
        Contender(DIRECT, DIRECT),
        Contender(PGBOUNCER, PGBOUNCER),
        Contender(BARE, BARE),
        Contender(POOLER_DEFAULTS, POOLER, {"POOLER_METRICS_PORT": str(common.free_port())}, scrape_every=15.0),
        Contender(POOLER_METRICS_OFF, POOLER, {"POOLER_METRICS_PORT": "0"}),
    ]
    if workers > 1:
        contenders += [
            Contender(pgbouncer_n(workers), PGBOUNCER, processes=workers, only=many),
            Contender(pooler_workers(workers), POOLER, {"POOLER_WORKERS": str(workers),
                                                        "POOLER_METRICS_PORT": str(_free_port_pair(workers))},
                      only=many),
        ]
    return contenders


def run_headline(ctx: Context, server: PgServer) -> None:
    """h: everything the closing note's table needs, in one group so that the contenders alternate."""
    workers = ctx.args.workers
    log(f"h: the closing-note comparison ({common.pgbouncer_version() or 'PgBouncer not installed'}, "
        f"workers = {workers})")
    ctx.results.headline_workers = workers
    group = [_pgbench_scenario("h-simple", "h", "-S -M simple, 50 clients", 50, "-M", "simple"),
             _pgbench_scenario("h-prepared", "h", "-S -M prepared, 50 clients", 50, "-M", "prepared"),
             _pgbench_scenario("h-extended", "h", "-S -M extended, 50 clients", 50, "-M", "extended"),
             _pgbench_scenario("h-1client", "h", "-S -M simple, 1 client", 1, "-M", "simple")]
    ini = common.write_pgbouncer_ini(ctx.workdir, "headline", server, common.free_port(),
                                     pool_size=ctx.args.pool_size)
    run_pgbench_group(ctx, server, ini, headline_contenders(workers, [s.key for s in group]), group,
                      check_workers="h" if workers > 1 else None)
