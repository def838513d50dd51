"""pgbench through pooler, PgBouncer and direct Postgres, on one machine, in the same run.

Why this shape: absolute tps on a laptop or CI box mean little, ratios measured side by side do.
Every round runs each contender once, in a rotating order, so drift (thermal, page cache, noisy
neighbours) hits all of them alike; the report gives medians, min-max and the ratios.

Both poolers read the very same ``pgbouncer.ini`` (pooler reads PgBouncer's format as is), with only
the listen port overridden for pooler through ``POOLER_LISTEN_PORT``.

    python -m benchmarks.pgbench_compare                 # embedded Postgres, 5 rounds of 10 s
    python -m benchmarks.pgbench_compare --quick         # 3 rounds of 4 s
    python -m benchmarks.pgbench_compare --dsn postgresql://postgres:pw@127.0.0.1:5432/postgres
    python -m benchmarks.pgbench_compare --pgbouncer /work/build/pgbouncer-1.25.2/pgbouncer   # a PgBouncer you built
    python -m benchmarks.pgbench_compare --pure          # also pooler on its pure-Python source

Besides tps and latency it reports each pooler's own CPU time per transaction (user + system, from
/proc): unlike tps, that figure hardly moves when other work shares the machine.

PgBouncer is ``--pgbouncer PATH``, else ``PGBOUNCER_BIN``, else Debian's ``pgbouncer`` (benchmarks/common.py).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import re
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from benchmarks.common import free_port, pgbouncer_binary, pgbouncer_version, tool, use_pgbouncer, wait_port

#: --bare's contenders: the bare forwarder on pooler's socket transport, and on uvloop's own.
BARE_FORWARDERS = {"bare forwarder": "stream", "bare uvloop forwarder": "uvloop"}
BENCH_DB = "bench"
BENCH_USER = "bench"
BENCH_PASSWORD = "bench-secret"


@dataclass
class Scenario:
    name: str
    pgbench_args: list[str]
    metric: str  # "tps" or "latency"


@dataclass
class Results:
    samples: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    #: the process's (user, system) CPU µs per transaction, per round
    cpu_us: dict[tuple[str, str], list[tuple[float, float]]] = field(default_factory=dict)

    def add(self, scenario: str, contender: str, value: float) -> None:
        self.samples.setdefault((scenario, contender), []).append(value)

    def add_cpu(self, scenario: str, contender: str, user_us: float, system_us: float) -> None:
        self.cpu_us.setdefault((scenario, contender), []).append((user_us, system_us))

    def median(self, scenario: str, contender: str) -> float:
        values = self.samples.get((scenario, contender), [])
        return statistics.median(values) if values else float("nan")


@contextmanager
def postgres(dsn: str | None, workdir: Path) -> Iterator[tuple[str, int, str, str]]:
    """(host, port, superuser, password) of the Postgres to measure against."""
    if dsn:
        url = urlparse(dsn)
        yield url.hostname or "127.0.0.1", url.port or 5432, url.username or "postgres", url.password or ""
        return
    from pooler.dev.embedded import EmbeddedPostgres

    pg = EmbeddedPostgres(workdir / "pgdata", max_connections=200,
                          extra_settings={"shared_buffers": "256MB", "fsync": "off", "synchronous_commit": "off"})
    pg.start()
    try:
        yield pg.host, pg.port, pg.superuser, pg.superuser_password
    finally:
        pg.stop()


def prepare(host: str, port: int, superuser: str, password: str, scale: int) -> None:
    psql = tool("psql")
    env = {**os.environ, "PGPASSWORD": password}
    sql = (
        f"DROP DATABASE IF EXISTS {BENCH_DB}; DROP ROLE IF EXISTS {BENCH_USER}; "
        f"CREATE ROLE {BENCH_USER} LOGIN PASSWORD '{BENCH_PASSWORD}'; "
        f"CREATE DATABASE {BENCH_DB} OWNER {BENCH_USER};"
    )
    for statement in sql.split("; "):
        subprocess.run([psql, "-h", host, "-p", str(port), "-U", superuser, "-d", "postgres", "-qc", statement],
                       check=True, env=env, capture_output=True)
    subprocess.run([tool("pgbench"), "-i", "-q", "-s", str(scale), "-h", host, "-p", str(port), "-U", BENCH_USER,
                    BENCH_DB], check=True, env={**os.environ, "PGPASSWORD": BENCH_PASSWORD}, capture_output=True)


def write_pgbouncer_ini(workdir: Path, host: str, port: int, listen_port: int, pool_size: int) -> Path:
    userlist = workdir / "userlist.txt"
    userlist.write_text(f'"{BENCH_USER}" "{BENCH_PASSWORD}"\n')
    ini = workdir / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"{BENCH_DB} = host={host} port={port} dbname={BENCH_DB}\n"
        "\n[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {listen_port}\n"
        "unix_socket_dir =\n"
        "auth_type = md5\n"
        f"auth_file = {userlist}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {pool_size}\n"
        "max_client_conn = 2000\n"
        "log_connections = 0\n"
        "log_disconnections = 0\n"
        "stats_period = 3600\n"
    )
    return ini


def cpu_seconds(pid: int | None) -> tuple[float, float] | None:
    """(user, system) CPU seconds a process has used (Linux /proc), or None."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


@dataclass
class Contender:
    name: str
    port: int
    pid: int | None = None  # the process whose CPU is measured (None: direct Postgres, many processes)


@contextmanager
def run_pgbouncer(ini: Path, port: int) -> Iterator[Contender | None]:
    binary = pgbouncer_binary()
    if binary is None:
        print("pgbouncer not installed (Debian: apt-get install pgbouncer, or --pgbouncer PATH): PgBouncer column "
              "skipped", file=sys.stderr)
        yield None
        return
    args = [binary, str(ini)]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        user = "nobody"
        pwd.getpwnam(user)
        for path in (ini, ini.parent / "userlist.txt", ini.parent):
            path.chmod(path.stat().st_mode | 0o055)
        args = [binary, "-u", user, str(ini)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port)
        yield Contender("pgbouncer", port, proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)


@contextmanager
def run_pooler(ini: Path, port: int, extra_env: dict[str, str] | None = None,
               name: str = "pooler") -> Iterator[Contender]:
    # Metrics off (and off the fixed port 9127) unless a caller measures them, as in the suite.
    env = {**os.environ, "POOLER_LISTEN_PORT": str(port), "POOLER_LOG_FORMAT": "json", "POOLER_METRICS_PORT": "0",
           **(extra_env or {})}
    env.pop("DATABASE_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "pooler", "run", "-c", str(ini)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield Contender(name, port, proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


_TPS = re.compile(r"^tps = ([\d.]+)", re.M)
_LATENCY = re.compile(r"^latency average = ([\d.]+) ms", re.M)


def pgbench(port: int, args: list[str], seconds: int) -> tuple[float, float]:
    """(tps, average latency ms) of one pgbench run, or raise with pgbench's own output."""
    cmd = [tool("pgbench"), "-n", "-h", "127.0.0.1", "-p", str(port), "-U", BENCH_USER, "-T", str(seconds),
           *args, BENCH_DB]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PGPASSWORD": BENCH_PASSWORD},
                         timeout=seconds + 60, check=False)
    tps, latency = _TPS.search(out.stdout), _LATENCY.search(out.stdout)
    if out.returncode != 0 or not tps or not latency:
        raise RuntimeError(f"pgbench failed ({' '.join(cmd)}):\n{out.stdout}\n{out.stderr}")
    return float(tps.group(1)), float(latency.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", help="superuser URL of an existing Postgres (default: start an embedded one)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--pool-size", type=int, default=20)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 4 s")
    parser.add_argument("--mode", default="simple", choices=["simple", "extended"], help="pgbench -M")
    parser.add_argument("--pgbouncer", metavar="PATH", help="the PgBouncer binary to measure (wins over "
                        "PGBOUNCER_BIN; default: Debian's pgbouncer)")
    parser.add_argument("--pure", action="store_true",
                        help="also measure pooler on its pure-Python source (POOLER_NO_EXTENSIONS=1)")
    parser.add_argument("--bare", action="store_true",
                        help="also measure the bare byte forwarder (benchmarks.bare_forwarder), the ceiling of "
                        "this design, on pooler's socket transport and on uvloop's")
    args = parser.parse_args(argv)
    if args.pgbouncer:
        try:
            use_pgbouncer(args.pgbouncer)
        except ValueError as exc:
            parser.error(str(exc))
    if args.quick:
        args.rounds, args.seconds = 3, 4
    scenarios = [
        Scenario(f"-S -M {args.mode} -c {args.clients} -j 2", ["-S", "-M", args.mode, "-c", str(args.clients),
                                                               "-j", "2"], "tps"),
        Scenario(f"-S -M {args.mode} -c 1 (latency)", ["-S", "-M", args.mode, "-c", "1", "-j", "1"], "latency"),
    ]
    results = Results()
    with tempfile.TemporaryDirectory(prefix="pooler-bench-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        with postgres(args.dsn, workdir) as (host, port, superuser, password):
            prepare(host, port, superuser, password, args.scale)
            bouncer_port, pooler_port, pure_port = free_port(), free_port(), free_port()
            ini = write_pgbouncer_ini(workdir, host, port, bouncer_port, args.pool_size)
            with contextlib.ExitStack() as stack:
                contenders = [Contender("direct", port), stack.enter_context(run_pooler(ini, pooler_port))]
                bouncer = stack.enter_context(run_pgbouncer(ini, bouncer_port))
                if bouncer is not None:
                    contenders.append(bouncer)
                if args.pure:
                    contenders.append(stack.enter_context(run_pooler(
                        ini, pure_port, {"POOLER_NO_EXTENSIONS": "1"}, name=PURE)))
                if args.bare:
                    for name, transport in BARE_FORWARDERS.items():
                        bare_port = free_port()
                        bare = subprocess.Popen([sys.executable, "-m", "benchmarks.bare_forwarder", str(bare_port),
                                                 str(port), "--transport", transport])
                        stack.callback(bare.wait, 10)
                        stack.callback(bare.terminate)
                        wait_port(bare_port)
                        contenders.append(Contender(name, bare_port, bare.pid))
                for scenario in scenarios:
                    for contender in contenders:  # warm-up, not recorded
                        pgbench(contender.port, scenario.pgbench_args, 2)
                    for round_no in range(args.rounds):
                        order = contenders[round_no % len(contenders):] + contenders[: round_no % len(contenders)]
                        for contender in order:
                            before = cpu_seconds(contender.pid)
                            tps, latency = pgbench(contender.port, scenario.pgbench_args, args.seconds)
                            after = cpu_seconds(contender.pid)
                            results.add(scenario.name, contender.name, tps if scenario.metric == "tps" else latency)
                            if before is not None and after is not None and tps > 0:
                                per_tx = 1e6 / (tps * args.seconds)
                                results.add_cpu(scenario.name, contender.name, (after[0] - before[0]) * per_tx,
                                                (after[1] - before[1]) * per_tx)
                            print(f"  round {round_no + 1} {scenario.name:<32} {contender.name:<10} tps={tps:9.0f} "
                                  f"lat={latency:.3f} ms", file=sys.stderr, flush=True)
    report(results, scenarios, args)
    return 0


def report(results: Results, scenarios: list[Scenario], args: argparse.Namespace) -> None:
    print(f"\npgbench, {args.rounds} rounds x {args.seconds}s, default_pool_size={args.pool_size}, "
          f"{os.cpu_count()} cores, pgbouncer = {pgbouncer_version() or 'not installed'}; medians (min-max)\n")
    names = ["direct", "pgbouncer", "pooler"] + ([PURE] if args.pure else []) + (
        list(BARE_FORWARDERS) if args.bare else [])
    print(f"| scenario | {' | '.join(names)} | pooler/pgbouncer | pooler/direct |")
    print("|---|" + "---|" * (len(names) + 2))
    for scenario in scenarios:
        cells = []
        for name in names:
            values = results.samples.get((scenario.name, name))
            if not values:
                cells.append("n/a")
                continue
            unit = "tps" if scenario.metric == "tps" else "ms"
            fmt = "{:.0f}" if scenario.metric == "tps" else "{:.3f}"
            cells.append(f"{fmt.format(statistics.median(values))} {unit} "
                         f"({fmt.format(min(values))}-{fmt.format(max(values))})")
        pooler, bouncer, direct = (results.median(scenario.name, n) for n in ("pooler", "pgbouncer", "direct"))
        if scenario.metric == "tps":
            ratios = [pooler / bouncer, pooler / direct]
            print(f"| {scenario.name} | {' | '.join(cells)} | {ratios[0]:.2f}x | {ratios[1]:.2f}x |")
        else:
            added_pooler, added_bouncer = pooler - direct, bouncer - direct
            print(f"| {scenario.name} | {' | '.join(cells)} | added latency {added_pooler * 1000:.0f} us vs "
                  f"{added_bouncer * 1000:.0f} us | |")
    print("\nCPU time of each process per transaction, user + system (/proc; medians):\n")
    measured = [n for n in names if any(results.cpu_us.get((sc.name, n)) for sc in scenarios)]
    print(f"| scenario | {' | '.join(measured)} |")
    print("|---|" + "---|" * len(measured))
    for scenario in scenarios:
        cells = []
        for name in measured:
            rounds = results.cpu_us.get((scenario.name, name))
            if not rounds:
                cells.append("n/a")
                continue
            user, system = statistics.median(u for u, _ in rounds), statistics.median(s for _, s in rounds)
            cells.append(f"{user:.1f} + {system:.1f} us")
        print(f"| {scenario.name} | {' | '.join(cells)} |")


PURE = "pooler (pure Python)"


if __name__ == "__main__":
    sys.exit(main())
