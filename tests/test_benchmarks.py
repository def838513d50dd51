"""The benchmark suite's machinery, end to end, in its tiny ``--smoke`` mode.

What this checks: ``python -m benchmarks`` starts its own Postgres instances and contenders, runs the
pgbench, launch-day, idle-client and slow-client scenarios, and writes a report with every section and
chart. What it never checks: any performance figure. Speed targets are measured by the suite on a quiet
machine and read in its report; a timed unit test would only be flaky.

PgBouncer is optional: without it the suite still runs and the report says it is not installed. The
closing-note comparison (scenario h) uses the PgBouncer in ``PGBOUNCER_BIN`` (one built from its latest
release, see benchmarks/README.md) when set, else Debian's ``pgbouncer`` (1.18), through ``--pgbouncer``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import common, suite
from benchmarks.results import BARE, DIRECT, PGBOUNCER, POOLER_DEFAULTS, POOLER_METRICS_OFF, pgbouncer_n, pooler_workers
from pooler.config import load_config
from pooler.runtime.workers import worker_config

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POOLER_"))}
    env.pop("DATABASE_URL", None)
    return env


def _pgbouncer_for_tests() -> str | None:
    """A built PgBouncer (``PGBOUNCER_BIN``), else Debian's; None when neither is installed."""
    built = os.environ.get("PGBOUNCER_BIN")
    if built:
        return built
    return shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)


def _fake_pgbouncer(tmp_path: Path, version: str = "1.99.0") -> Path:
    fake = tmp_path / "pgbouncer"
    fake.write_text(f"#!/bin/sh\necho 'PgBouncer {version}'\necho 'libevent 2.1.12-stable'\n")
    fake.chmod(0o755)
    return fake


@pytest.mark.timeout(180)
def test_smoke_run_writes_report_and_charts(tmp_path: Path) -> None:
    env = _clean_env()
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--smoke", "--out", str(tmp_path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=170, check=False)
    assert out.returncode == 0, f"stdout:\n{out.stdout}\nstderr:\n{out.stderr[-4000:]}"

    reports = list(tmp_path.glob("*-smoke.md"))
    assert len(reports) == 1, list(tmp_path.iterdir())
    report = reports[0].read_text()
    stem = reports[0].stem
    for section in ("# Benchmarks,", "Command: `python -m benchmarks --smoke", "## Machine", "| cores |",
                    "| Postgres |", "| PgBouncer |", "## Setup", "## Targets", "## a-c. pgbench",
                    "a. -S simple, 1 client", "## d. Launch day", "## e. Idle authenticated clients",
                    "## f. One slow client"):
        assert section in report, f"{section!r} missing from the report:\n{report}"
    for chart in ("tps", "latency", "launch", "idle", "slow"):
        png = tmp_path / f"{stem}-{chart}.png"
        assert png.is_file(), f"{png.name} missing: {sorted(p.name for p in tmp_path.iterdir())}"
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert f"]({png.name})" in report, f"{png.name} not linked from the report"

    data = json.loads((tmp_path / f"{stem}.json").read_text())
    assert data["mode"] == "smoke"
    # Every pooler figure the smoke run asks for exists (its value is not judged).
    assert data["pgbench"]["a1"]["pooler"]["tps"], data["pgbench"]["a1"]
    assert any(r["contender"] == "pooler" for r in data["launch"])
    assert any(i["contender"] == "pooler" and i["reached"] > 0 for i in data["idle"])
    assert any(s["contender"] == "pooler" and s["bytes_read"] > 0 for s in data["slow"])
    if shutil.which("pgbouncer") is None and not Path("/usr/sbin/pgbouncer").exists():
        assert "PgBouncer is not installed" in report


@pytest.mark.timeout(180)
def test_smoke_headline_compares_pooler_defaults_with_pgbouncer_in_one_and_n_processes(tmp_path: Path) -> None:
    """Scenario h with --pgbouncer and --workers 2: every contender ran every scenario it is meant to,
    the table names PgBouncer's version, and PgBouncer x 2 really was two processes on one port."""
    binary = _pgbouncer_for_tests()
    flag = ["--pgbouncer", binary] if binary else []
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--smoke", "--scenarios", "h", "--workers", "2",
                          "--keep-logs", "--out", str(tmp_path), *flag], cwd=ROOT, env=_clean_env(),
                         capture_output=True, text=True, timeout=170, check=False)
    assert out.returncode == 0, f"stdout:\n{out.stdout}\nstderr:\n{out.stderr[-4000:]}"

    table = out.stdout
    version = common._version_of(binary) if binary else None
    assert table.startswith(f"# h. pooler against {version or 'PgBouncer (not installed)'} (smoke run: indicative)")
    for text in ("Command: `python -m benchmarks --smoke --scenarios h --workers 2", "Machine: ", " cores ",
                 "Postgres ", "| contender | `-S -c 50` tps | x | `-M prepared -c 50` tps | x | ",
                 "`-M extended -c 50` tps | x |",
                 "1 client: µs per transaction", "| direct Postgres |", "1 process (the reference)",
                 "x 2 processes (`so_reuseport`)", "| bare 1:1 forwarder on pooler's socket transport (the floor) |",
                 "| **pooler with its defaults**, 1 process (metrics on, `session_state_check = warn`) |",
                 "| pooler, metrics off (`metrics_port = 0`), 1 process |",
                 "| pooler with its defaults, `workers = 2` |",
                 "| target (issue 11) | measured | verdict |", "metrics on vs off ≤ 2% apart"):
        assert text in table, f"{text!r} missing from the table:\n{table}"
    report = next(tmp_path.glob("*-smoke.md")).read_text()
    assert table.strip() in report  # the same table, one heading level down
    data = json.loads(next(tmp_path.glob("*-smoke.json")).read_text())
    assert data["headline_workers"] == 2
    measured = {key: {label for label, series in row.items() if series["tps"]} for key, row in data["pgbench"].items()}
    pooler_side = {DIRECT, BARE, POOLER_DEFAULTS, POOLER_METRICS_OFF}
    for key in ("h-simple", "h-extended"):
        assert pooler_side | {pooler_workers(2)} <= measured[key], measured[key]
        if binary:
            assert {PGBOUNCER, pgbouncer_n(2)} <= measured[key], data["pgbench"][key]
        else:
            assert data["pgbench"][key][PGBOUNCER]["error"] == "not installed"
    assert pooler_side | {pooler_workers(2)} <= measured["h-prepared"], measured["h-prepared"]
    # At 1 client a second process has nothing to do: the multi-process contenders sit it out.
    assert pooler_side <= measured["h-1client"]
    assert not {pgbouncer_n(2), pooler_workers(2)} & set(data["pgbench"]["h-1client"])
    if binary:
        logs = next(tmp_path.glob("*-smoke-logs"))
        for index in (1, 2):
            log = (logs / f"pgbouncer_x2-p{index}.log").read_text()
            assert "listening on 127.0.0.1:" in log, log


def test_pgbouncer_flag_wins_over_pgbouncer_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "other").mkdir()
    other = _fake_pgbouncer(tmp_path / "other", "1.18.0")
    mine = _fake_pgbouncer(tmp_path, "1.99.0")
    monkeypatch.setenv("PGBOUNCER_BIN", str(other))
    assert common.pgbouncer_version() == "PgBouncer 1.18.0"
    suite.parse_args(["--smoke", "--pgbouncer", str(mine)])
    assert common.pgbouncer_binary() == str(mine)
    assert common.pgbouncer_version() == "PgBouncer 1.99.0"
    assert suite._pgbouncer_fact() == f"PgBouncer 1.99.0 (`{mine}`)"


@pytest.mark.parametrize("what", ["missing", "not pgbouncer"])
def test_pgbouncer_flag_refuses_what_is_not_a_pgbouncer_in_one_line(tmp_path: Path, what: str) -> None:
    path = tmp_path / "nothing-here" if what == "missing" else _fake_pgbouncer(tmp_path)
    if what == "not pgbouncer":
        path.write_text("#!/bin/sh\necho hello\n")
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--smoke", "--pgbouncer", str(path)], cwd=ROOT,
                         env=_clean_env(), capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2, out
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    expected = "no executable file there" if what == "missing" else "its --version does not print a PgBouncer version"
    assert last.startswith(f"python -m benchmarks: error: --pgbouncer {path}: {expected}"), out.stderr


@pytest.mark.parametrize("count", [2, 3])
def test_pgbouncer_processes_split_the_pool_sizes_as_pooler_workers_do(tmp_path: Path, count: int) -> None:
    """Each PgBouncer of PgBouncer x N gets what pooler's worker of the same index gets from the same ini."""
    server = common.PgServer("127.0.0.1", 5432, "postgres", "", 100)
    ini = common.write_pgbouncer_ini(tmp_path, "split", server, 6432, pool_size=21, max_client_conn=2001)
    with ini.open("a") as f:
        f.write("reserve_pool_size = 5\nmin_pool_size = 1\nmax_db_connections = 40\nso_reuseport = 0\n")
    pooler_config = load_config(str(ini), environ={})
    for index in range(count):
        own = tmp_path / f"p{index}.ini"
        own.write_text(common.split_ini(ini.read_text(), index, count))
        theirs = load_config(str(own), environ={}).settings
        ours = worker_config(pooler_config, index, count).settings
        for name in common.SPLIT_SETTINGS:
            assert getattr(theirs, name) == getattr(ours, name), (name, index)
        assert theirs.so_reuseport
        assert theirs.listen_port == 6432
    assert sum(load_config(str(tmp_path / f"p{i}.ini"), environ={}).settings.default_pool_size
               for i in range(count)) == 21


def test_headline_pooler_defaults_keep_the_metrics_listener_and_metrics_off_turns_only_it_off() -> None:
    contenders = {c.label: c for c in suite.headline_contenders(2, ["h-simple", "h-1client"])}
    defaults, off = contenders[POOLER_DEFAULTS], contenders[POOLER_METRICS_OFF]
    assert int(defaults.env["POOLER_METRICS_PORT"]) > 0
    assert off.env == {"POOLER_METRICS_PORT": "0"}
    assert set(defaults.env) == {"POOLER_METRICS_PORT"}  # nothing else differs from `pooler run`'s defaults
    assert contenders[pgbouncer_n(2)].processes == 2
    assert contenders[pooler_workers(2)].env["POOLER_WORKERS"] == "2"
    assert contenders[pgbouncer_n(2)].only == frozenset({"h-simple"})


def test_idle_floor_measures_a_bare_server_per_connection_on_both_transports() -> None:
    out = subprocess.run([sys.executable, "-m", "benchmarks.idle_floor", "300"], capture_output=True, text=True,
                         check=True, timeout=120, cwd=ROOT).stdout
    lines = out.splitlines()
    assert len(lines) == 2, out
    for line, transport in zip(lines, ("uvloop's transport", "pooler.net.stream's socket transport"), strict=True):
        match = re.fullmatch(rf"bare server on {re.escape(transport)}: 300 idle connections, (-?\d+) B RSS per "
                             r"connection", line)
        assert match is not None, out
        assert 0 < int(match.group(1)) < 20_000  # a connection costs something, and not megabytes
