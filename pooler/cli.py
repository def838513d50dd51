"""The ``pooler`` command: ``run`` a configured pooler, or bring ``up`` one in front of an embedded Postgres.

Why two commands: ``run`` is what a sidecar or a PgBouncer user wants (a config file and/or
environment, nothing else started); ``up`` is what a developer wants on day one (no Postgres, no
config: one command prints the two URLs an app needs, pooled and direct, as Neon does).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pooler import __version__
from pooler.config import Config, ConfigError, DatabaseConfig, UserlistEntry, load_config, replace_settings
from pooler.log import configure, log
from pooler.runtime.workers import SINGLE, Worker, run_workers, worker_config
from pooler.wire.auth import AuthType

if TYPE_CHECKING:
    from pooler.runtime.process import Pooler

#: Exit code for a config that cannot be used (nothing started).
EXIT_BAD_CONFIG = 2


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args)
    if args.command == "up":
        return _up(args)
    if args.command == "check":
        return _check(args)
    parser.print_help()
    return EXIT_BAD_CONFIG


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pooler", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"pooler {__version__}")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the pooler from a config file (pooler.toml or pgbouncer.ini) and env")
    run.add_argument("-c", "--config", help="pooler.toml or pgbouncer.ini (optional with DATABASE_URL set)")
    check = sub.add_parser("check", help="exit 0 if the pooler is serving, 1 (with the reason) if not; for "
                           "healthchecks")
    check.add_argument("-c", "--config", help="the config the pooler runs with (to find its ports)")
    check.add_argument("--url", help="log in with this URL and run SELECT 1 (default: GET /readyz on metrics_port)")
    check.add_argument("--login", action="store_true",
                       help="log in through the pooled port with DATABASE_URL's credentials and run SELECT 1")
    check.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer (default 5)")
    up = sub.add_parser("up", help="start an embedded Postgres and a pooler in front of it")
    up.add_argument("--port", type=int, default=6432, help="pooled endpoint port (default 6432)")
    up.add_argument("--direct-port", type=int, default=6433, help="direct endpoint port (default 6433)")
    up.add_argument("--pg-port", type=int, default=0, help="the embedded Postgres's own port (default: any free)")
    up.add_argument("--listen-addr", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    up.add_argument("--data-dir", default=os.environ.get("POOLER_DATA_DIR", ".pooler"),
                    help="where Postgres keeps its data, kept between runs (default ./.pooler)")
    up.add_argument("--env-file", help="also write DATABASE_URL and DATABASE_URL_UNPOOLED to this file")
    up.add_argument("--pool-size", type=int, default=None,
                    help="default_pool_size (default: 0.9 x the compute size's max_connections, as Neon)")
    up.add_argument("--compute-size", default="0.25", metavar="CU",
                    help="Neon compute size whose max_connections the embedded Postgres gets: "
                    f"{', '.join(NEON_MAX_CONNECTIONS)} or more (default 0.25 = 112 connections)")
    up.add_argument("--require-tls", action="store_true",
                    help="refuse plaintext clients (client_tls_sslmode = require), as Neon does; by default TLS "
                    "is offered, not forced")
    return parser


#: Neon's max_connections by compute size (CU), from Neon's docs; 9 CU and more: 4000.
NEON_MAX_CONNECTIONS: dict[str, int] = {
    "0.25": 112, "0.5": 225, "1": 450, "2": 901, "3": 1351, "4": 1802, "5": 2253, "6": 2703, "7": 3154, "8": 3604,
}  # fmt: skip
_NEON_MAX_CONNECTIONS_CAP = 4000


def neon_max_connections(compute_size: str) -> int:
    """Postgres's max_connections on a Neon compute of ``compute_size`` CU; ValueError names the valid sizes."""
    text = compute_size.strip()
    try:
        size = float(text)
    except ValueError:
        size = -1.0
    for name, connections in NEON_MAX_CONNECTIONS.items():
        if size == float(name):
            return connections
    if size >= 9 and size == int(size):
        return _NEON_MAX_CONNECTIONS_CAP
    raise ValueError(f"--compute-size {compute_size!r}: expected one of {', '.join(NEON_MAX_CONNECTIONS)} "
                     "or a whole number of 9 or more")


def neon_pooler_settings(max_connections: int) -> dict[str, object]:
    """Neon's PgBouncer settings for a compute with ``max_connections`` (reference/neon.md, "Neon's limits")."""
    return {
        "pool_mode": "transaction",
        "max_client_conn": 10000,
        "default_pool_size": int(0.9 * max_connections),
        "max_prepared_statements": 1000,
        "query_wait_timeout": 120,
        # postgres.js and asyncpg send a URL's unknown parameters to the server as settings; Neon's URLs
        # carry channel_binding=require, which those drivers do not implement themselves.
        "ignore_startup_parameters": "channel_binding",
    }


def _run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, os.environ)
        if not config.databases:
            raise ConfigError(config.source, "databases", "no database is configured; add a [databases] "
                              "entry or set DATABASE_URL")
    except ConfigError as exc:
        print(f"pooler: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    configure(config.settings.log_format, config.settings.verbose, config.settings.logfile)
    return _serve(config, reload=lambda: load_config(args.config, os.environ))


def _check(args: argparse.Namespace) -> int:
    from pooler.dev.check import run_check

    try:
        config = load_config(args.config, os.environ)
        ok, reason = run_check(config, os.environ, url=args.url, login=args.login, timeout=args.timeout)
    except ConfigError as exc:
        print(f"pooler check: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    print(f"{'ok' if ok else 'not ready'}: {reason}" if not reason.startswith(("ready", "not ready")) else reason,
          file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def _up(args: argparse.Namespace) -> int:
    from pooler.dev.embedded import EmbeddedPostgres

    try:
        max_connections = neon_max_connections(args.compute_size)
    except ValueError as exc:
        print(f"pooler up: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    data_dir = Path(args.data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    environ = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    try:
        base = load_config(None, environ)
    except ConfigError as exc:
        print(f"pooler: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    configure(base.settings.log_format, base.settings.verbose, base.settings.logfile)
    role, database = "app", "app"
    password = _persistent_secret(data_dir / "app-password")
    from pooler.dev.certs import ensure_local_certificates

    try:
        certs = ensure_local_certificates(data_dir / "tls")
    except (OSError, ValueError) as exc:
        print(f"pooler up: cannot make or read the local TLS certificates in {data_dir / 'tls'}: {exc}",
              file=sys.stderr)
        return EXIT_BAD_CONFIG
    pg = EmbeddedPostgres(data_dir / "pgdata", port=args.pg_port, max_connections=max_connections)
    pg.start()
    try:
        pg.create_role_and_database(role, password, database)
        # Neon's endpoint: its PgBouncer settings (a POOLER_* variable still wins), and TLS offered.
        changes: dict[str, object] = {
            name: value for name, value in neon_pooler_settings(max_connections).items()
            if f"POOLER_{name.upper()}" not in environ
        }
        changes.update({
            "listen_addr": args.listen_addr,
            "listen_port": args.port,
            "direct_port": args.direct_port,
            "auth_type": AuthType.SCRAM_SHA_256,
            "client_tls_sslmode": "require" if args.require_tls else "prefer",
            "client_tls_cert_file": str(certs.cert_file),
            "client_tls_key_file": str(certs.key_file),
        })
        if args.pool_size is not None:
            changes["default_pool_size"] = args.pool_size
        if not base.settings.admin_users:  # the developer's own role may use the admin console (SHOW POOLS, ...)
            changes["admin_users"] = (role,)
        config = replace_settings(base, **changes)
        config = Config(
            settings=config.settings,
            databases={"*": DatabaseConfig(name="*", host=pg.host, port=pg.port)},
            users=config.users,
            extra_userlist=(UserlistEntry(role, password),),
            source="pooler up",
        )
        host = "localhost" if args.listen_addr in ("127.0.0.1", "0.0.0.0", "*") else args.listen_addr
        tls_params = "?sslmode=require&channel_binding=require"  # exactly what Neon's URLs carry
        urls = (
            f"DATABASE_URL=postgresql://{role}:{password}@{host}:{args.port}/{database}{tls_params}\n"
            f"DATABASE_URL_UNPOOLED=postgresql://{role}:{password}@{host}:{args.direct_port}/{database}{tls_params}\n"
        )
        trust = (
            f"# TLS: certificates signed by the local CA {certs.ca_file}\n"
            f"#   sslmode=verify-full: add &sslrootcert={certs.ca_file}\n"
            f"#   Node.js (node-postgres, postgres.js verify certificates): NODE_EXTRA_CA_CERTS={certs.ca_file}\n"
        )

        def announce() -> None:
            if args.env_file:  # first, so whoever reads the printed URLs finds the file written too
                Path(args.env_file).write_text(urls)
            sys.stdout.write(urls + trust)
            sys.stdout.flush()

        return _serve(config, on_ready=announce)
    except ConfigError as exc:
        print(f"pooler: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    finally:
        pg.stop()


def _persistent_secret(path: Path) -> str:
    """A generated password that survives restarts, so the printed URLs stay valid."""
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_urlsafe(18)
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value


def _serve(config: Config, *, reload: Callable[[], Config] | None = None,
           on_ready: Callable[[], None] | None = None) -> int:
    import uvloop

    if config.settings.workers <= 1:
        return int(uvloop.run(serve(config, reload=reload, on_ready=on_ready)))

    def serve_worker(share: Config, worker: Worker) -> int:
        def reload_share() -> Config:
            assert reload is not None
            return worker_config(reload(), worker.index, worker.count)

        return int(uvloop.run(serve(share, reload=reload_share if reload is not None else None,
                                    on_ready=on_ready if worker.index == 0 else None, worker=worker)))

    return run_workers(config, serve_worker)


def assemble(config: Config, worker: Worker = SINGLE) -> Pooler:
    """The composition root: a pooler process with its operations plugged in.

    The runtime knows nothing of the admin console, metrics or the stats log; this is the one place that
    wires them to it, so each can be read, tested and replaced on its own.
    """
    from pooler.ops.admin import AdminConsole
    from pooler.ops.metrics import MetricsServer
    from pooler.ops.stats_log import StatsPeriod
    from pooler.runtime.process import Pooler

    pooler = Pooler(config, worker)
    stats = StatsPeriod(pooler)
    pooler.services.append(stats)
    if config.settings.metrics_port:
        pooler.services.append(MetricsServer(pooler))
    pooler.on_admin_login = AdminConsole(pooler, stats).login
    return pooler


async def serve(config: Config, *, reload: Callable[[], Config] | None = None,
                on_ready: Callable[[], None] | None = None, worker: Worker = SINGLE) -> int:
    """Run a pooler until it shuts down, with PgBouncer's signals:

    SIGHUP reloads the config; SIGTERM stops accepting and exits once the clients are gone; SIGINT exits
    once the transactions in flight have finished; SIGQUIT, or any second SIGTERM/SIGINT, exits now.
    SIGUSR1 pauses, SIGUSR2 resumes.
    """
    from pooler.ops import control
    from pooler.runtime.process import ShutdownMode

    try:
        pooler = assemble(config, worker)  # reads the auth_file and the TLS key and certificates
    except ConfigError as exc:
        print(f"pooler: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    pooler.config_loader = reload
    loop = asyncio.get_running_loop()

    def on_stop(mode: ShutdownMode) -> None:
        if pooler.shutdown_mode is not None and mode != ShutdownMode.IMMEDIATE:
            log.info("second shutdown signal: closing everything now")
            mode = ShutdownMode.IMMEDIATE
        control.start_shutdown(pooler, mode)

    def on_hup() -> None:
        try:
            control.reload(pooler)
        except (ConfigError, control.ControlError) as exc:
            log.error("config reload failed, keeping the old config", error=str(exc))

    def on_pause(resume: bool) -> None:
        try:
            if resume:
                control.resume(pooler, None)
            else:
                control.pause(pooler, None)
        except control.ControlError as exc:
            log.warning("signal ignored", error=str(exc))

    # Handlers go in before anything is announced, so a signal right after the URLs print is not lost.
    loop.add_signal_handler(signal.SIGTERM, on_stop, ShutdownMode.WAIT_FOR_CLIENTS)
    loop.add_signal_handler(signal.SIGINT, on_stop, ShutdownMode.WAIT_FOR_SERVERS)
    loop.add_signal_handler(signal.SIGQUIT, on_stop, ShutdownMode.IMMEDIATE)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    loop.add_signal_handler(signal.SIGUSR1, on_pause, False)
    loop.add_signal_handler(signal.SIGUSR2, on_pause, True)
    try:
        await pooler.start()
    except OSError as exc:
        print(f"pooler: cannot listen: {exc}", file=sys.stderr)
        await pooler.stop()
        return 1
    log.info("listening", addr=config.settings.listen_addr, **{f"{k}_port": v for k, v in pooler.ports.items()})
    if on_ready is not None:
        on_ready()
    await pooler.finished.wait()
    return 0
