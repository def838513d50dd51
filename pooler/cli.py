"""The ``pooler`` command: ``run`` a configured pooler, or bring ``up`` one in front of an embedded Postgres.

Why two commands: ``run`` is what a sidecar or a PgBouncer user wants (a config file and/or
environment, nothing else started); ``up`` is what a developer wants on day one (no Postgres, no
config: one command prints the two URLs an app needs, pooled and direct, as Neon does).

Manners: whatever goes wrong at start — a config or ``auth_file`` that cannot be used, a port that is
taken, a data directory that cannot be written or is in use by another ``up``, a Ctrl-C halfway — the
user gets one line naming the cause and the fix, exit code 2 (the config) or 1 (everything else), and
nothing is left running. Never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from pooler import __version__
from pooler import _compiled as compiled
from pooler.config import (
    Config,
    ConfigError,
    DatabaseConfig,
    Settings,
    UserlistEntry,
    load_config,
    read_userlist,
    replace_settings,
)
from pooler.log import configure, log
from pooler.runtime.workers import SINGLE, Worker, run_workers, worker_config
from pooler.wire.auth import AuthType
from pooler.wire.neon_sql import driver_config

if TYPE_CHECKING:
    from pooler.runtime.ports import PortProblem
    from pooler.runtime.process import Pooler

#: Exit code for a config that cannot be used (nothing started).
EXIT_BAD_CONFIG = 2
#: Exit code for everything else that stops the pooler from running: a taken port, a data directory that
#: cannot be used, an interrupted start, a Postgres that would not start.
EXIT_RUNTIME = 1


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM before the pooler serves: unwinds start-up (every ``finally`` stops what it
    started). A KeyboardInterrupt, so asyncio and uvloop let it through rather than logging it."""


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def _take_signals() -> None:
    """SIGINT and SIGTERM unwind start-up (``Interrupted``), even one that lands mid-import."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    sys.unraisablehook = _interrupt_lost


#: Interrupts raised where Python could not propagate them (``_interrupt_lost``), by signal name: the start
#: unwinds from them once the listeners are open, as from a signal that came during start() (``_serve``).
LOST_INTERRUPTS: list[str] = []


def _interrupt_lost(unraisable: sys.UnraisableHookArgs) -> None:
    """An Interrupted raised where Python cannot propagate an exception (a weakref callback of the import
    system, mid-import) would be printed as "Exception ignored" with a traceback, and the interrupt lost:
    it is kept for ``_serve`` instead."""
    if isinstance(unraisable.exc_value, Interrupted):
        LOST_INTERRUPTS.append(str(unraisable.exc_value))
        return
    sys.__unraisablehook__(unraisable)


def _fail(command: str, line: str, code: int) -> int:
    print(f"pooler {command}: {line}" if command else f"pooler: {line}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    # Until the event loop takes them over, SIGINT and SIGTERM unwind start-up through every `finally`
    # (SIGTERM's default would kill us with the embedded Postgres, in its own session, still running).
    _take_signals()
    command = ""
    try:
        parser = _parser()
        args = parser.parse_args(argv)
        command = args.command or ""
        if command == "run":
            return _run(args)
        if command == "up":
            return _up(args)
        if command == "check":
            return _check(args)
        parser.print_help()
        return EXIT_BAD_CONFIG
    except KeyboardInterrupt as exc:
        name = str(exc) if isinstance(exc, Interrupted) else "SIGINT"
        label = "" if command == "run" else command
        if command == "check":
            return _fail(label, f"interrupted ({name})", EXIT_RUNTIME)
        return _fail(label, f"interrupted ({name}) before it was ready; everything it had started is stopped",
                     EXIT_RUNTIME)


#: What `pooler --help` says first: plain text (the module docstring is reStructuredText, for developers).
DESCRIPTION = "A Postgres connection pooler with PgBouncer's settings and semantics, for your laptop."
EPILOG = """commands:
  pooler up      start an embedded Postgres and a pooler in front of it; prints DATABASE_URL and
                 DATABASE_URL_UNPOOLED (no Postgres, no Docker, no config needed)
  pooler run     run the pooler in front of your own Postgres, from pgbouncer.ini, pooler.toml and/or
                 DATABASE_URL; every setting can be overridden by POOLER_<SETTING>
  pooler check   exit 0 if the pooler is serving, 1 with the reason if not (for healthchecks)

'pooler COMMAND --help' lists a command's options."""


def _port(allow_zero: bool) -> Callable[[str], int]:
    """An argparse type for a port option: a bad value is argparse's one error line, before anything starts."""
    low = 0 if allow_zero else 1

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = -1
        if not low <= value <= 65535:
            raise argparse.ArgumentTypeError(f"expected a port number {low}..65535, got {text!r}")
        return value

    return convert


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pooler", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"pooler {__version__} ({compiled.describe()})")
    sub = parser.add_subparsers(dest="command", metavar="{up,run,check}")
    up = sub.add_parser(
        "up",
        description="Start an embedded Postgres and a pooler in front of it, and print the two URLs an app "
                    "needs: DATABASE_URL (pooled, transaction mode) and DATABASE_URL_UNPOOLED (direct). Ctrl-C "
                    "stops both. Each option's default can also be set by the POOLER_* variable named with it; "
                    "other POOLER_<SETTING> variables (docs/settings.md) apply too.")
    up.add_argument("--port", type=_port(False), default=None,
                    help="pooled endpoint port (POOLER_LISTEN_PORT; default 6432)")
    up.add_argument("--direct-port", type=_port(False), default=None,
                    help="direct (unpooled) endpoint port (POOLER_DIRECT_PORT; default 6433)")
    up.add_argument("--metrics-port", type=_port(True), default=None,
                    help="Prometheus /metrics, /healthz, /readyz port, 0 = off (POOLER_METRICS_PORT; default 9127, "
                         "or a free port, printed, when 9127 is taken)")
    up.add_argument("--pg-port", type=_port(True), default=0,
                    help="the embedded Postgres's own port (default: any free)")
    up.add_argument("--listen-addr", default=None,
                    help="address to listen on (POOLER_LISTEN_ADDR; default 127.0.0.1)")
    up.add_argument("--pool-size", type=int, default=None,
                    help="servers per (database, user) pool (POOLER_DEFAULT_POOL_SIZE; default: 0.9 x the "
                         "compute size's max_connections, as Neon)")
    up.add_argument("--compute-size", default="0.25", metavar="CU",
                    help="Neon compute size whose max_connections the embedded Postgres gets: "
                         f"{', '.join(NEON_MAX_CONNECTIONS)} or more (default 0.25 = 112 connections)")
    up.add_argument("--require-tls", action="store_true",
                    help="refuse plaintext clients (client_tls_sslmode = require), as Neon does; by default TLS "
                         "is offered, not forced")
    up.add_argument("--data-dir", default=os.environ.get("POOLER_DATA_DIR", ".pooler"),
                    help="where Postgres keeps its data, kept between runs (POOLER_DATA_DIR; default ./.pooler)")
    up.add_argument("--env-file", help="also write DATABASE_URL and DATABASE_URL_UNPOOLED to this file")
    up.add_argument("-v", "--verbose", action="count", default=0,
                    help="log every connection and the periodic stats too (POOLER_LOG_CONNECTIONS, "
                         "POOLER_LOG_DISCONNECTIONS, POOLER_LOG_STATS); twice: debug events as well")
    run = sub.add_parser(
        "run",
        description="Run the pooler in front of your own Postgres. Settings come from the config file, then "
                    "POOLER_<SETTING> variables (POOLER_LISTEN_PORT, POOLER_DEFAULT_POOL_SIZE, ...), then "
                    "DATABASE_URL, which picks the server of the * database and a login for clients.")
    run.add_argument("-c", "--config", help="pooler.toml or pgbouncer.ini (optional with DATABASE_URL set)")
    check = sub.add_parser("check", description="Exit 0 if the pooler is serving, 1 (with the reason) if not; "
                           "for healthchecks. Reads the same config and POOLER_* variables as pooler run.")
    check.add_argument("-c", "--config", help="the config the pooler runs with (to find its ports)")
    check.add_argument("--url", help="log in with this URL and run SELECT 1 (default: GET /readyz on metrics_port)")
    check.add_argument("--login", action="store_true",
                       help="log in through the pooled port with DATABASE_URL's credentials and run SELECT 1")
    check.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer (default 5)")
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
        _preflight(config)
    except ConfigError as exc:
        return _fail("", str(exc), EXIT_BAD_CONFIG)
    configure(config.settings.log_format, config.settings.verbose, config.settings.logfile)
    return _serve(config, reload=lambda: load_config(args.config, os.environ))


def _preflight(config: Config) -> None:
    """What the pooler reads at start besides the config, read now: a bad ``auth_file`` is a config error
    (one line, exit 2) before anything listens, not a traceback from inside the event loop."""
    if config.settings.auth_file:
        read_userlist(config.settings.auth_file)


def _check(args: argparse.Namespace) -> int:
    from pooler.dev.check import run_check

    try:
        config = load_config(args.config, os.environ)
        ok, reason = run_check(config, os.environ, url=args.url, login=args.login, timeout=args.timeout)
    except ConfigError as exc:
        return _fail("check", str(exc), EXIT_BAD_CONFIG)
    except Exception as exc:  # a healthcheck answers in one line, whatever went wrong
        return _fail("check", f"not ready: {exc.__class__.__name__}: {exc}", EXIT_RUNTIME)
    print(f"{'ok' if ok else 'not ready'}: {reason}" if not reason.startswith(("ready", "not ready")) else reason,
          file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


#: `up`'s option for each port setting, for the line that says which one to change.
_UP_OPTIONS = {"listen_port": "--port", "direct_port": "--direct-port", "metrics_port": "--metrics-port"}


def _up(args: argparse.Namespace) -> int:
    from pooler.dev.datadir import DataDirError, InstanceLock, prepare_data_dir
    from pooler.dev.embedded import EmbeddedPostgres
    from pooler.runtime import ports as port_check

    try:
        max_connections = neon_max_connections(args.compute_size)
    except ValueError as exc:
        return _fail("up", str(exc), EXIT_BAD_CONFIG)
    environ = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    try:
        base = load_config(None, environ)
        _preflight(base)
    except ConfigError as exc:
        return _fail("up", str(exc), EXIT_BAD_CONFIG)
    s = base.settings
    listen_addr = args.listen_addr or s.listen_addr
    port = args.port if args.port is not None else s.listen_port
    direct_port = args.direct_port if args.direct_port is not None else (
        s.direct_port if "POOLER_DIRECT_PORT" in environ else 6433)
    metrics_port = args.metrics_port if args.metrics_port is not None else s.metrics_port
    metrics_chosen = args.metrics_port is not None or "POOLER_METRICS_PORT" in environ
    data_dir = Path(args.data_dir).expanduser().resolve()
    lock = InstanceLock(data_dir)
    try:
        prepare_data_dir(data_dir)
        lock.acquire()
    except DataDirError as exc:
        return _fail("up", str(exc), EXIT_RUNTIME)
    pg: EmbeddedPostgres | None = None
    try:
        # Taken ports are found before Postgres starts: seconds saved, and nothing to clean up.
        problem = port_check.find_port_problem(listen_addr, {"listen_port": port, "direct_port": direct_port})
        if problem is not None:
            return _fail("up", problem.line(_UP_OPTIONS.get(problem.setting)), EXIT_RUNTIME)
        metrics_note = ""
        if metrics_port:
            problem = port_check.find_port_problem(listen_addr, {"metrics_port": metrics_port})
            if problem is not None and metrics_chosen:
                return _fail("up", problem.line(_UP_OPTIONS["metrics_port"]), EXIT_RUNTIME)
            if problem is not None:  # the default port, which the user never chose: take another
                wanted, metrics_port = metrics_port, port_check.free_port(port_check.probe_hosts(listen_addr)[0])
                metrics_note = (f"metrics port {wanted} is in use, so metrics are on port {metrics_port} "
                                f"(--metrics-port or POOLER_METRICS_PORT to choose)")
        configure(s.log_format, max(s.verbose, 1 if args.verbose >= 2 else 0), s.logfile)
        role, database = "app", "app"
        try:
            password = _persistent_secret(data_dir / "app-password")
        except OSError as exc:
            return _fail("up", f"cannot keep the generated password in {data_dir}: {exc.strerror or exc}; pass a "
                         "writable --data-dir (or POOLER_DATA_DIR)", EXIT_RUNTIME)
        from pooler.dev.certs import ensure_local_certificates

        try:
            certs = ensure_local_certificates(data_dir / "tls")
        except (OSError, ValueError) as exc:
            return _fail("up", f"cannot make or read the local TLS certificates in {data_dir / 'tls'}: {exc}; "
                         "delete that directory to make new ones", EXIT_RUNTIME)
        pg = EmbeddedPostgres(data_dir / "pgdata", port=args.pg_port, max_connections=max_connections)
        try:
            pg.start()
            pg.create_role_and_database(role, password, database)
        except Exception as exc:  # whatever it is (initdb, the server, psql, the system user): one line
            return _fail("up", _embedded_failure(exc, pg), EXIT_RUNTIME)
        # Neon's endpoint: its PgBouncer settings (a POOLER_* variable still wins), and TLS offered.
        changes: dict[str, object] = {
            name: value for name, value in neon_pooler_settings(max_connections).items()
            if f"POOLER_{name.upper()}" not in environ
        }
        changes.update({
            "listen_addr": listen_addr,
            "listen_port": port,
            "direct_port": direct_port,
            "metrics_port": metrics_port,
            "auth_type": AuthType.SCRAM_SHA_256,
            "client_tls_sslmode": "require" if args.require_tls else "prefer",
            "client_tls_cert_file": str(certs.cert_file),
            "client_tls_key_file": str(certs.key_file),
        })
        if args.pool_size is not None:
            changes["default_pool_size"] = args.pool_size
        if not args.verbose:  # a quiet terminal: the URLs stay on screen; errors and warnings still show
            for name in ("log_connections", "log_disconnections", "log_stats"):
                if f"POOLER_{name.upper()}" not in environ:
                    changes[name] = False
        if not s.admin_users:  # the developer's own role may use the admin console (SHOW POOLS, ...)
            changes["admin_users"] = (role,)
        config = replace_settings(base, **changes)
        config = Config(
            settings=config.settings,
            databases={"*": DatabaseConfig(name="*", host=pg.host, port=pg.port)},
            users=config.users,
            extra_userlist=(UserlistEntry(role, password),),
            source="pooler up",
        )
        host = "localhost" if listen_addr in ("127.0.0.1", "0.0.0.0", "*") else listen_addr
        tls_params = "?sslmode=require&channel_binding=require"  # exactly what Neon's URLs carry
        pooled_url = f"postgresql://{role}:{password}@{host}:{port}/{database}{tls_params}"
        urls = (
            f"DATABASE_URL={pooled_url}\n"
            f"DATABASE_URL_UNPOOLED=postgresql://{role}:{password}@{host}:{direct_port}/{database}{tls_params}\n"
        )

        def announce(ports: Mapping[str, int]) -> None:
            lock.record(ports)
            if args.env_file:  # first, so whoever reads the printed URLs finds the file written too
                try:
                    Path(args.env_file).write_text(urls)
                except OSError as exc:
                    log.error("cannot write --env-file", path=args.env_file, error=exc.strerror or str(exc))
            if metrics_note:
                log.warning(metrics_note)
            sys.stdout.write(urls + driver_config(host, ports.get("pooled", port), tls=True))  # HTTPS, WSS
            if sys.stdout.isatty():
                sys.stdout.write(_up_banner(pooled_url, host, ports, data_dir, mode=str(config.settings.pool_mode),
                                            verbose=args.verbose > 0, ca_file=certs.ca_file))
            sys.stdout.flush()

        return _serve(config, on_ready_ports=announce, port_options=_UP_OPTIONS)
    except ConfigError as exc:
        return _fail("up", str(exc), EXIT_BAD_CONFIG)
    finally:
        # Stopping must finish: from here a second Ctrl-C or a SIGTERM would leave Postgres running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if pg is not None:
            pg.stop()
        lock.release()


def _up_banner(pooled_url: str, host: str, ports: Mapping[str, int], data_dir: Path, *, mode: str,
               verbose: bool, ca_file: Path) -> str:
    """The few lines a developer needs under the URLs, on a terminal only (a pipe gets just the URLs)."""
    # Without the URL's sslmode: libpq's default (prefer) also suits a psql built without OpenSSL.
    admin = pooled_url.partition("?")[0].rsplit("/", 1)[0] + "/pgbouncer"
    lines = [
        f"# pooled ({mode} mode) on port {ports.get('pooled')}, direct on port {ports.get('direct')}; "
        f"data in {data_dir}",
        f"# admin console: psql \"{admin}\" -c 'SHOW POOLS'",
        f"# TLS: certificates signed by the local CA {ca_file}",
        f"#   sslmode=verify-full: add &sslrootcert={ca_file}",
        "#   Node.js (node-postgres, postgres.js, @neondatabase/serverless verify certificates): "
        f"NODE_EXTRA_CA_CERTS={ca_file}",
    ]
    if ports.get("metrics"):
        lines.append(f"# metrics: http://{host}:{ports['metrics']}/metrics")
    lines.append("# Ctrl-C stops pooler and Postgres." + ("" if verbose else " Per-connection log lines: --verbose."))
    return "\n".join(lines) + "\n"


def _embedded_failure(exc: BaseException, pg: object) -> str:
    """One line for a Postgres that would not start: the error line of Postgres's (or initdb's) output."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    errors = [line for line in lines if any(tag in line for tag in ("FATAL:", "ERROR:", "PANIC:", "error:"))]
    detail = errors[-1] if errors else (lines[0] if lines else repr(exc))
    for tag in ("FATAL:", "ERROR:", "PANIC:"):
        detail = detail.split(tag, 1)[-1].strip()
    log_file = getattr(pg, "log_file", None)
    fix = f"; its log: {log_file}" if log_file is not None else ""
    if "exists but is not empty" in detail:
        data = getattr(pg, "data_dir", "the data directory")
        fix = f"; a start killed halfway left {data} unfinished: remove it and run pooler up again"
    return f"the embedded Postgres did not start: {detail}{fix}"


def _persistent_secret(path: Path) -> str:
    """A generated password that survives restarts, so the printed URLs stay valid."""
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_urlsafe(18)
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value


def _serve(config: Config, *, reload: Callable[[], Config] | None = None,
           on_ready: Callable[[], None] | None = None,
           on_ready_ports: Callable[[Mapping[str, int]], None] | None = None,
           port_options: Mapping[str, str] | None = None) -> int:
    import uvloop

    stale = compiled.stale_extensions(str(Path(compiled.__file__).resolve().parent.parent))
    if stale:  # a checkout edited since its last build: say so, or the old compiled code runs unnoticed
        log.warning("compiled modules are older than their source (or no longer compiled) and run in its place",
                    modules=",".join(stale),
                    fix="python setup.py build_ext --inplace, or POOLER_NO_EXTENSIONS=1 to run the source")
    if config.settings.workers <= 1:
        return int(uvloop.run(serve(config, reload=reload, on_ready=on_ready, on_ready_ports=on_ready_ports,
                                    port_options=port_options)))

    # Workers each bind every port: one taken port would be one line per worker. Ask once, before forking.
    problem = _port_problem(config.settings)
    if problem is not None:
        return _fail("", problem.line((port_options or {}).get(problem.setting)), EXIT_RUNTIME)

    def serve_worker(share: Config, worker: Worker) -> int:
        def reload_share() -> Config:
            assert reload is not None
            return worker_config(reload(), worker.index, worker.count)

        first = worker.index == 0
        return int(uvloop.run(serve(share, reload=reload_share if reload is not None else None,
                                    on_ready=on_ready if first else None,
                                    on_ready_ports=on_ready_ports if first else None,
                                    port_options=port_options, worker=worker)))

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


def _port_problem(settings: Settings) -> PortProblem | None:
    """The first of the configured ports that cannot be bound now, if any."""
    from pooler.runtime import ports as port_check

    ports = {setting: int(getattr(settings, setting, 0) or 0) for _, setting in port_check.PORT_SETTINGS}
    return port_check.find_port_problem(settings.listen_addr, ports)


def listen_failure(settings: Settings, exc: OSError, options: Mapping[str, str] | None = None) -> str:
    """One line for a listener that failed: which port, its setting and variable (and `up`'s option)."""
    problem = _port_problem(settings)
    if problem is None:  # gone by now (a race): say what the error said
        return f"cannot listen on {settings.listen_addr}: {exc.strerror or exc}"
    return problem.line((options or {}).get(problem.setting))


async def serve(config: Config, *, reload: Callable[[], Config] | None = None,
                on_ready: Callable[[], None] | None = None,
                on_ready_ports: Callable[[Mapping[str, int]], None] | None = None,
                port_options: Mapping[str, str] | None = None, worker: Worker = SINGLE) -> int:
    """Run a pooler until it shuts down, with PgBouncer's signals:

    SIGHUP reloads the config; SIGTERM stops accepting and exits once the clients are gone; SIGINT exits
    once the transactions in flight have finished; SIGQUIT, or any second SIGTERM/SIGINT, exits now.
    SIGUSR1 pauses, SIGUSR2 resumes. A SIGTERM/SIGINT before the pooler listens stops the start instead
    (``Interrupted``, after closing what was opened).
    """
    from pooler.ops import control
    from pooler.runtime.process import ShutdownMode

    try:
        pooler = assemble(config, worker)
    except ConfigError as exc:  # the auth_file changed since the preflight
        return _fail("", str(exc), EXIT_BAD_CONFIG)
    pooler.config_loader = reload
    loop = asyncio.get_running_loop()
    ready = False
    interrupted: list[str] = []

    def on_stop(mode: ShutdownMode, name: str) -> None:
        if not ready:
            interrupted.append(name)  # start() is still opening listeners: stop once it returns
            return
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
    loop.add_signal_handler(signal.SIGTERM, on_stop, ShutdownMode.WAIT_FOR_CLIENTS, "SIGTERM")
    loop.add_signal_handler(signal.SIGINT, on_stop, ShutdownMode.WAIT_FOR_SERVERS, "SIGINT")
    loop.add_signal_handler(signal.SIGQUIT, on_stop, ShutdownMode.IMMEDIATE, "SIGQUIT")
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    loop.add_signal_handler(signal.SIGUSR1, on_pause, False)
    loop.add_signal_handler(signal.SIGUSR2, on_pause, True)
    try:
        await pooler.start()
    except OSError as exc:
        await pooler.stop()
        return _fail("", listen_failure(config.settings, exc, port_options), EXIT_RUNTIME)
    if interrupted or LOST_INTERRUPTS:
        await pooler.stop()
        raise Interrupted((interrupted or LOST_INTERRUPTS)[0])
    ready = True
    log.info("listening", addr=config.settings.listen_addr, **{f"{k}_port": v for k, v in pooler.ports.items()})
    if on_ready is not None:
        on_ready()
    if on_ready_ports is not None:
        on_ready_ports(dict(pooler.ports))
    await pooler.finished.wait()
    return 0
