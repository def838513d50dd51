"""The benchmark suite's machinery, end to end, in its tiny ``--smoke`` mode.

What this checks: ``python -m benchmarks`` starts its own Postgres instances and contenders, runs the
pgbench, launch-day, idle-client and slow-client scenarios, and writes a report with every section and
chart. What it never checks: any performance figure. Speed targets are measured by the suite on a quiet
machine and read in its report; a timed unit test would only be flaky.

PgBouncer is optional: without it the suite still runs and the report says it is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(180)
def test_smoke_run_writes_report_and_charts(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POOLER_"))}
    env.pop("DATABASE_URL", None)
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
