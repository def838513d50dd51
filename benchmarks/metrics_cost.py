"""What metrics and logging cost: pgbench -S through pooler with both on vs both off, side by side.

"on": metrics_port set and scraped every second while pgbench runs (Prometheus' default is every
15 s, so this overstates the cost), JSON logs written to a file, log_pooler_errors, log_disconnections,
log_stats with stats_period = 1 s; log_connections off (pgbench -C would log every connection).
"off": metrics_port = 0, every log_* setting off.

Both poolers run at once on the same config and Postgres; every round runs each once, in alternating
order, so drift hits both alike. The report gives medians and the on/off ratio.

    python -m benchmarks.metrics_cost                  # embedded Postgres, 7 rounds of 10 s, -c 50
    python -m benchmarks.metrics_cost --quick          # 3 rounds of 4 s
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks.common import free_port, tool, wait_port
from benchmarks.pgbench_compare import (
    BENCH_DB,
    BENCH_PASSWORD,
    BENCH_USER,
    pgbench,
    postgres,
    prepare,
    write_pgbouncer_ini,
)

OFF = {
    "POOLER_METRICS_PORT": "0",
    "POOLER_LOG_CONNECTIONS": "0",
    "POOLER_LOG_DISCONNECTIONS": "0",
    "POOLER_LOG_POOLER_ERRORS": "0",
    "POOLER_LOG_STATS": "0",
}


def on_settings(metrics_port: int) -> dict[str, str]:
    return {
        "POOLER_METRICS_PORT": str(metrics_port),
        "POOLER_LOG_CONNECTIONS": "0",
        "POOLER_LOG_DISCONNECTIONS": "1",
        "POOLER_LOG_POOLER_ERRORS": "1",
        "POOLER_LOG_STATS": "1",
        "POOLER_STATS_PERIOD": "1",
        "POOLER_LOG_FORMAT": "json",
    }


@contextmanager
def run_pooler(ini: Path, port: int, env_extra: dict[str, str], log_path: Path | None) -> Iterator[int]:
    env = {**os.environ, "POOLER_LISTEN_PORT": str(port), "POOLER_LOG_FORMAT": "json", **env_extra}
    env.pop("DATABASE_URL", None)
    stderr = log_path.open("wb") if log_path is not None else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "pooler", "run", "-c", str(ini)], env=env,
                            stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        wait_port(port)
        yield port
    finally:
        proc.send_signal(signal.SIGQUIT)
        proc.wait(10)


class Scraper:
    """GET /metrics every ``interval`` seconds while started (one Prometheus, scraping often)."""

    def __init__(self, port: int, interval: float) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.interval = interval
        self.scrapes = 0
        self.bytes = 0
        self.seconds = 0.0  # total time the scrapes took, as seen by the scraper (the loop is busy at most that)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            with urllib.request.urlopen(self.url, timeout=5) as response:
                self.bytes += len(response.read())
            self.seconds += time.perf_counter() - started
            self.scrapes += 1
            self._stop.wait(self.interval)

    @contextmanager
    def running(self) -> Iterator[None]:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        try:
            yield
        finally:
            self._stop.set()
            self._thread.join(10)


def idle_scrape_ms(pooler_port: int, metrics_port: int, clients: int) -> float:
    """Median scrape time with ``clients`` connected but nearly idle (pgbench -R 20): about the event-loop
    time one scrape takes, i.e. what it can take away from forwarding."""
    cmd = [tool("pgbench"), "-n", "-S", "-h", "127.0.0.1", "-p", str(pooler_port), "-U", BENCH_USER, "-c",
           str(clients), "-j", "2", "-R", "20", "-T", "6", BENCH_DB]
    bench = subprocess.Popen(cmd, env={**os.environ, "PGPASSWORD": BENCH_PASSWORD}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)  # all clients connected
        times = []
        for _ in range(30):
            started = time.perf_counter()
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
                response.read()
            times.append(time.perf_counter() - started)
            time.sleep(0.05)
    finally:
        bench.wait(30)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", help="superuser URL of an existing Postgres (default: start an embedded one)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--pool-size", type=int, default=20)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--scrape-interval", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 4 s")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds = 3, 4
    bench_args = ["-S", "-M", "simple", "-c", str(args.clients), "-j", "2"]
    samples: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory(prefix="pooler-metrics-cost-") as tmp:
        workdir = Path(tmp)
        with postgres(args.dsn, workdir) as (host, port, superuser, password):
            prepare(host, port, superuser, password, args.scale)
            off_port, on_port, metrics_port = free_port(), free_port(), free_port()
            ini = write_pgbouncer_ini(workdir, host, port, off_port, args.pool_size)  # port overridden by env
            log_path = workdir / "pooler-on.log"
            scraper = Scraper(metrics_port, args.scrape_interval)
            with run_pooler(ini, off_port, OFF, None), run_pooler(ini, on_port, on_settings(metrics_port), log_path):
                contenders = {"off": off_port, "on": on_port}
                for p in contenders.values():  # warm-up: servers opened, caches warm
                    pgbench(p, bench_args, 2)
                for round_no in range(args.rounds):
                    order = ["off", "on"] if round_no % 2 == 0 else ["on", "off"]
                    for name in order:
                        if name == "on":
                            with scraper.running():
                                tps, _ = pgbench(contenders[name], bench_args, args.seconds)
                        else:
                            tps, _ = pgbench(contenders[name], bench_args, args.seconds)
                        samples[name].append(tps)
                        print(f"  round {round_no + 1} {name:<3} tps={tps:9.0f}", file=sys.stderr, flush=True)
                scrape_ms = idle_scrape_ms(on_port, metrics_port, args.clients)
            log_lines = sum(1 for _ in log_path.open())
    off, on = statistics.median(samples["off"]), statistics.median(samples["on"])
    print(f"\npgbench {' '.join(bench_args)}, {args.rounds} rounds x {args.seconds}s, default_pool_size="
          f"{args.pool_size}, {os.cpu_count()} cores; medians (min-max)\n")
    print("| pooler | tps |")
    print("|---|---|")
    print(f"| metrics and logging off | {off:.0f} ({min(samples['off']):.0f}-{max(samples['off']):.0f}) |")
    print(f"| metrics (scraped every {args.scrape_interval:g} s) and logging on | {on:.0f} "
          f"({min(samples['on']):.0f}-{max(samples['on']):.0f}) |")
    print(f"\non/off = {on / off:.3f}: cost {100 * (1 - on / off):+.1f}% "
          f"({scraper.scrapes} scrapes, {scraper.bytes // max(scraper.scrapes, 1)} bytes and "
          f"{1000 * scraper.seconds / max(scraper.scrapes, 1):.2f} ms each under load; {log_lines} log lines)")
    print(f"one scrape with {args.clients} clients connected, loop otherwise idle: {scrape_ms:.2f} ms of event-loop "
          f"time: {scrape_ms / 10 / args.scrape_interval:.2f}% of it at one scrape every {args.scrape_interval:g} s, "
          f"{scrape_ms / 150:.3f}% at Prometheus' default 15 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
