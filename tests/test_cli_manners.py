"""The first hour through the real CLI: one line and an exit code instead of a traceback, nothing left running.

Every case runs ``python -m pooler`` as a subprocess, as a user would, and asserts the line (cause and
fix), the exit code (2: the config; 1: everything else) and that no process is left: neither the
pooler nor an embedded Postgres (found by its data directory on the command line).
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
from harness import free_port
from support import APP_DB, APP_PASSWORD, APP_USER, PostgresServer

TIMEOUT = 60


def pooler_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pooler", *args]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POOLER_") and k != "DATABASE_URL"}
    env["POOLER_METRICS_PORT"] = "0"  # the default 9127 is a fixed port: tests that want metrics pick one
    env.update(extra)
    return env


def run(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False, cwd=cwd)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The whole of stderr, which must be one line and no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def processes_using(path: Path) -> list[psutil.Process]:
    """Live processes (an embedded Postgres, a pooler) whose command line mentions ``path``."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(str(path) in part for part in proc.info["cmdline"] or ()) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


def assert_nothing_left(path: Path) -> None:
    deadline = time.monotonic() + 10
    while processes_using(path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not processes_using(path), [p.info["cmdline"] for p in processes_using(path)]


@contextlib.contextmanager
def holding(port: int) -> Iterator[socket.socket]:
    """Someone else listening on ``port`` (127.0.0.1)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1)
    try:
        yield sock
    finally:
        sock.close()


@contextlib.contextmanager
def up(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A running ``pooler up``: (process, the pooled URL); stopped with SIGINT at the end."""
    proc = subprocess.Popen(pooler_cmd("up", "--data-dir", str(data_dir), *args), env=env or clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("DATABASE_URL="), (line, proc.stderr.read() if proc.stderr else "")
        proc.stdout.readline()
        yield proc, line.split("=", 1)[1]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert_nothing_left(data_dir)


# --- the config: exit 2 --------------------------------------------------------------------------------


def _unreadable(tmp_path: Path) -> Path:
    """An auth_file that exists but cannot be read (as root, permissions do not stop reads: a directory)."""
    path = tmp_path / "userlist.txt"
    if os.geteuid() == 0:
        path.mkdir()
    else:
        path.write_text('"app" "pw"\n')
        path.chmod(0)
    return path


@pytest.mark.parametrize("case", ["missing", "unreadable"])
def test_run_with_an_auth_file_it_cannot_read_is_one_line_and_exit_2(tmp_path: Path, case: str) -> None:
    auth_file = tmp_path / "nope.txt" if case == "missing" else _unreadable(tmp_path)
    port = free_port()
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text(f"[databases]\napp = host=127.0.0.1\n[pgbouncer]\nlisten_port = {port}\nauth_type = md5\n"
                   f"auth_file = {auth_file}\n")
    result = run(pooler_cmd("run", "-c", str(ini)), clean_env())
    assert result.returncode == 2
    line = one_line(result)
    assert line.startswith(f"pooler: {auth_file}: auth_file: cannot read (")
    assert "POOLER_AUTH_FILE" in line  # the fix: where to point it
    with pytest.raises(OSError):  # nothing listens
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_up_with_an_auth_file_it_cannot_read_is_exit_2_before_postgres(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    result = run(pooler_cmd("up", "--data-dir", str(data_dir)),
                 clean_env(POOLER_AUTH_FILE=str(tmp_path / "nope.txt")))
    assert result.returncode == 2
    assert "auth_file: cannot read (No such file or directory)" in one_line(result)
    assert not (data_dir / "pgdata").exists()
    assert_nothing_left(data_dir)


# --- the data directory: exit 1 ------------------------------------------------------------------------


def test_up_on_a_data_dir_that_is_a_file(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.write_text("not a directory")
    result = run(pooler_cmd("up", "--data-dir", str(data_dir)), clean_env())
    assert result.returncode == 1
    assert one_line(result) == (f"pooler up: data directory {data_dir} is not a directory (a file is in the way); "
                                "pass another one with --data-dir (or POOLER_DATA_DIR)")
    assert_nothing_left(data_dir)


def test_up_on_a_data_dir_it_cannot_write(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    root = os.geteuid() == 0
    if root:  # root writes through permissions: make the directory immutable instead
        subprocess.run(["chattr", "+i", str(data_dir)], check=True)
    else:
        data_dir.chmod(0o500)
    try:
        result = run(pooler_cmd("up", "--data-dir", str(data_dir)), clean_env())
    finally:
        if root:
            subprocess.run(["chattr", "-i", str(data_dir)], check=True)
        else:
            data_dir.chmod(0o700)
    assert result.returncode == 1
    line = one_line(result)
    assert line.startswith(f"pooler up: data directory {data_dir} is not writable (")
    assert line.endswith("pass a writable one with --data-dir (or POOLER_DATA_DIR)")
    assert list(data_dir.iterdir()) == []
    assert_nothing_left(data_dir)


def test_up_on_a_read_only_file_system(tmp_path: Path) -> None:
    """A read-only mount in a private mount namespace (unshare), so nothing outside the test sees it."""
    mount = tmp_path / "ro"
    mount.mkdir()
    data_dir = mount / "data"
    unshare = shutil.which("unshare")
    assert unshare is not None, "the read-only file system test needs unshare (util-linux)"
    namespace = ["--mount"] if os.geteuid() == 0 else ["--mount", "--map-root-user"]
    script = f'mount -t tmpfs -o ro tmpfs "{mount}" && exec "$@"'
    result = run([unshare, *namespace, "sh", "-c", script, "sh", *pooler_cmd("up", "--data-dir", str(data_dir))],
                 clean_env())
    assert result.returncode == 1
    assert one_line(result) == (f"pooler up: data directory {data_dir} is on a read-only file system; pass a "
                                "writable one with --data-dir (or POOLER_DATA_DIR)")
    assert_nothing_left(data_dir)


# --- a second `up`, ports taken -------------------------------------------------------------------------


def test_a_second_up_on_the_same_data_dir_or_the_same_ports(embedded_tmp: Path) -> None:
    data_dir = embedded_tmp / "data"
    port, direct = free_port(), free_port()
    with up(data_dir, "--port", str(port), "--direct-port", str(direct)) as (first, url):
        again = run(pooler_cmd("up", "--data-dir", str(data_dir), "--port", str(free_port()),
                               "--direct-port", str(free_port())), clean_env())
        assert again.returncode == 1
        assert one_line(again) == (
            f"pooler up: already running on {data_dir}, PID {first.pid}, ports {port} (pooled), {direct} (direct): "
            f"use that one, stop it (Ctrl-C in its terminal, or kill {first.pid}), or pass another --data-dir "
            "(or POOLER_DATA_DIR)")
        other = embedded_tmp / "other"
        same_ports = run(pooler_cmd("up", "--data-dir", str(other), "--port", str(port), "--direct-port",
                                    str(free_port())), clean_env())
        assert same_ports.returncode == 1
        assert one_line(same_ports) == (
            f"pooler up: listen_port {port}: 127.0.0.1:{port} is already in use (another pooler, PgBouncer or "
            "Postgres?); stop it, or pick a free port with --port or POOLER_LISTEN_PORT")
        assert not (other / "pgdata").exists()  # refused before Postgres started
        with psycopg.connect(url) as conn:  # the first one never noticed
            assert conn.execute("select 1").fetchone() == (1,)
        assert_nothing_left(other)


def test_up_direct_and_chosen_metrics_ports_taken(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    taken = free_port()
    with holding(taken):
        direct = run(pooler_cmd("up", "--data-dir", str(data_dir), "--port", str(free_port()),
                                "--direct-port", str(taken)), clean_env())
        metrics = run(pooler_cmd("up", "--data-dir", str(data_dir), "--port", str(free_port()),
                                 "--direct-port", str(free_port())), clean_env(POOLER_METRICS_PORT=str(taken)))
    assert direct.returncode == metrics.returncode == 1
    assert one_line(direct).endswith(f"127.0.0.1:{taken} is already in use (another pooler, PgBouncer or "
                                     "Postgres?); stop it, or pick a free port with --direct-port or "
                                     "POOLER_DIRECT_PORT")
    assert one_line(metrics).startswith(f"pooler up: metrics_port {taken}: ")
    assert one_line(metrics).endswith("--metrics-port or POOLER_METRICS_PORT")
    assert_nothing_left(data_dir)


@pytest.mark.parametrize(("setting", "what"), [("listen_port", "POOLER_LISTEN_PORT"),
                                               ("direct_port", "POOLER_DIRECT_PORT"),
                                               ("metrics_port", "POOLER_METRICS_PORT")])
def test_run_with_a_port_taken_names_the_setting_and_its_variable(postgres: PostgresServer, setting: str,
                                                                   what: str) -> None:
    ports = {"listen_port": free_port(), "direct_port": free_port(), "metrics_port": free_port()}
    env = clean_env(DATABASE_URL=postgres.dsn(APP_DB, APP_USER, APP_PASSWORD),
                    **{f"POOLER_{k.upper()}": str(v) for k, v in ports.items()})
    with holding(ports[setting]):
        result = run(pooler_cmd("run"), env)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if not line.startswith("{")]  # JSON lines are the log
    assert "Traceback" not in result.stderr
    assert errors == [f"pooler: {setting} {ports[setting]}: 127.0.0.1:{ports[setting]} is already in use (another "
                      f"pooler, PgBouncer or Postgres?); stop it, or pick a free port with {setting} ({what})"]
    for port in ports.values():  # what it had opened is closed again
        if port != ports[setting]:
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_run_with_workers_and_a_port_taken_says_it_once(postgres: PostgresServer) -> None:
    port = free_port()
    env = clean_env(DATABASE_URL=postgres.dsn(APP_DB, APP_USER, APP_PASSWORD), POOLER_LISTEN_PORT=str(port),
                    POOLER_WORKERS="2")
    with holding(port):
        result = run(pooler_cmd("run"), env)
    assert result.returncode == 1
    assert one_line(result).startswith(f"pooler: listen_port {port}: 127.0.0.1:{port} is already in use")


# --- Ctrl-C at any moment ------------------------------------------------------------------------------


def _interrupt_up(data_dir: Path, port: int, direct: int, delay: float, sig: signal.Signals) -> str:
    """Start `up`, send ``sig`` after ``delay`` s; check the manners; say whether it was "ready" or not."""
    proc = subprocess.Popen(pooler_cmd("up", "--data-dir", str(data_dir), "--port", str(port),
                                       "--direct-port", str(direct)),
                            env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert "Traceback" not in err, (delay, err)
    assert_nothing_left(data_dir)
    if proc.returncode == 0:  # it was ready: the URLs were printed, then it shut down cleanly
        assert out.startswith("DATABASE_URL="), (delay, out, err)
        return "ready"
    if proc.returncode == -sig:  # while Python itself was starting: nothing was started
        assert err == "" or (len(err.splitlines()) == 1 and "interrupted" in err), (delay, err)
        return "before python"
    assert proc.returncode == 1, (delay, proc.returncode, err)
    messages = [line for line in err.splitlines() if not line.startswith("{")]  # JSON lines are the log
    assert len(messages) == 1, (delay, err)
    assert messages[0].startswith("pooler") and "interrupted" in messages[0], messages
    return "interrupted"


def test_ctrl_c_at_any_moment_of_up_leaves_nothing_and_no_traceback(embedded_tmp: Path) -> None:
    """SIGINT (and SIGTERM) at moments spread over start-up — imports, initdb of a new data directory,
    Postgres starting on an existing one, role setup, listening — each ends with one line and exit 1 (or,
    once ready, a clean exit 0): never a traceback, never a process left, and a half-made cluster never
    spoils the next start."""
    port, direct = free_port(), free_port()
    outcomes = []
    for i, (delay, sig) in enumerate([(0.1, signal.SIGINT), (0.3, signal.SIGINT), (0.6, signal.SIGTERM),
                                      (0.8, signal.SIGINT), (1.0, signal.SIGINT), (1.3, signal.SIGTERM)]):
        fresh = embedded_tmp / f"fresh{i}"  # initdb each time
        outcomes.append(_interrupt_up(fresh, port, direct, delay, sig))
        with up(fresh, "--port", str(port), "--direct-port", str(direct)) as (_, url), psycopg.connect(url) as conn:
            assert conn.execute("select 1").fetchone() == (1,)  # whatever the interrupt left starts
    existing = embedded_tmp / "fresh0"
    for delay, sig in [(0.3, signal.SIGINT), (0.6, signal.SIGINT), (0.9, signal.SIGTERM), (1.5, signal.SIGINT)]:
        outcomes.append(_interrupt_up(existing, port, direct, delay, sig))
    assert outcomes.count("interrupted") >= 3, outcomes  # the moments did fall into start-up


def test_ctrl_c_during_the_start_of_run(postgres: PostgresServer) -> None:
    port = free_port()
    env = clean_env(DATABASE_URL=postgres.dsn(APP_DB, APP_USER, APP_PASSWORD), POOLER_LISTEN_PORT=str(port))
    outcomes = []
    for delay, sig in [(0.05, signal.SIGINT), (0.08, signal.SIGINT), (0.11, signal.SIGTERM), (0.14, signal.SIGINT),
                       (0.17, signal.SIGINT), (0.2, signal.SIGTERM), (2.0, signal.SIGTERM)]:
        proc = subprocess.Popen(pooler_cmd("run"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=TIMEOUT)
        assert "Traceback" not in err, (delay, err)
        messages = [line for line in err.splitlines() if not line.startswith("{")]
        if proc.returncode == 0:
            assert messages == [], messages
            outcomes.append("ready")
        elif proc.returncode == -sig:  # while Python itself was starting
            assert err == "" or (len(messages) == 1 and "interrupted" in messages[0]), err
            outcomes.append("before python")
        else:
            assert proc.returncode == 1 and len(messages) == 1 and "interrupted" in messages[0], (proc.returncode, err)
            outcomes.append("interrupted")
        with pytest.raises(OSError):  # nothing listens any more
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert "interrupted" in outcomes and outcomes[-1] == "ready", outcomes


# --- a quiet `up` ---------------------------------------------------------------------------------------


def _events(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_up_is_quiet_by_default_and_says_which_metrics_port_it_took(embedded_tmp: Path) -> None:
    data_dir = embedded_tmp / "data"
    env = clean_env()
    del env["POOLER_METRICS_PORT"]  # the default, 9127, which the user never chose
    with contextlib.ExitStack() as stack:
        with contextlib.suppress(OSError):  # if someone else already has 9127, it is taken all the same
            stack.enter_context(holding(9127))
        with up(data_dir, "--port", str(free_port()), "--direct-port", str(free_port()), env=env) as (proc, url):
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("SET search_path = public")  # a session-state warning still shows
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err
    events = _events(err)  # not a terminal: JSON lines
    names = [e["event"] for e in events]
    assert "login" not in names and "logout" not in names and "stats" not in names, names
    assert [e["kind"] for e in events if e["event"] == "session state"] == ["set"]
    listening = next(e for e in events if e["event"] == "listening")
    metrics_port = listening["metrics_port"]
    assert isinstance(metrics_port, int) and metrics_port != 9127
    assert any(e["event"] == f"metrics port 9127 is in use, so metrics are on port {metrics_port} "
               "(--metrics-port or POOLER_METRICS_PORT to choose)" for e in events), events
    # --verbose turns the per-connection lines on.
    with up(data_dir, "--port", str(free_port()), "--direct-port", str(free_port()), "--verbose") as (proc, url):
        with psycopg.connect(url) as conn:
            conn.execute("select 1")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert "login" in [e["event"] for e in _events(err)]


def _read_until(fd: int, marker: bytes, timeout: float = TIMEOUT) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while marker not in out:
        assert time.monotonic() < deadline, out
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the other end closed (EIO on Linux)
                break
            if not chunk:
                break
            out += chunk
    return out


def test_up_on_a_terminal_keeps_the_urls_on_screen(embedded_tmp: Path) -> None:
    """On a terminal: the URLs and a few lines under them, then only errors and warnings, one line each."""
    main, child = pty.openpty()
    proc = subprocess.Popen(pooler_cmd("up", "--data-dir", str(embedded_tmp / "data"), "--port", str(free_port()),
                                       "--direct-port", str(free_port())),
                            env=clean_env(COLUMNS="200"), stdin=subprocess.DEVNULL, stdout=child, stderr=child)
    os.close(child)
    try:
        screen = _read_until(main, b"Ctrl-C stops")
        text = re.sub(r"\x1b\[[0-9;]*m", "", screen.decode()).replace("\r\n", "\n")
        url = re.search(r"^DATABASE_URL=(\S+)$", text, re.MULTILINE)
        assert url is not None, text
        assert re.search(r"^DATABASE_URL_UNPOOLED=\S+$", text, re.MULTILINE), text
        assert "# admin console: psql" in text and "Per-connection log lines: --verbose." in text
        ca_file = embedded_tmp / "data" / "tls" / "ca.crt"
        assert f"# TLS: certificates signed by the local CA {ca_file}" in text, text
        assert f"NODE_EXTRA_CA_CERTS={ca_file}" in text
        with psycopg.connect(url.group(1), autocommit=True) as conn:
            conn.execute("SET search_path = public")
        more = _read_until(main, b"session state")
        proc.send_signal(signal.SIGINT)
        more += _read_until(main, b"shut down")
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)
    later = re.sub(r"\x1b\[[0-9;]*m", "", more.decode()).replace("\r\n", "\n")
    assert "login" not in later and "logout" not in later, later  # no per-connection lines
    warning = [line for line in later.splitlines() if "session state" in line]
    assert len(warning) == 1 and "kind=set" in warning[0], later  # one readable line, not JSON
    assert not later.lstrip().startswith("{")
    assert_nothing_left(embedded_tmp / "data")


def test_up_metrics_port_option(embedded_tmp: Path) -> None:
    metrics = free_port()
    args = ("--port", str(free_port()), "--direct-port", str(free_port()), "--metrics-port", str(metrics))
    with up(embedded_tmp / "data", *args), socket.create_connection(("127.0.0.1", metrics), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200")


# --- check and help -------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [f"postgresql://nobody:x@127.0.0.1:{1}/db", "not a url at all"])
def test_check_failures_are_one_line(url: str) -> None:
    result = run(pooler_cmd("check", "--url", url, "--timeout", "2"), clean_env())
    assert result.returncode == 1
    assert "not ready" in one_line(result) or "failed" in one_line(result)


def test_help_is_plain_text_and_up_lists_every_option_and_variable() -> None:
    top = run(pooler_cmd("--help"), clean_env())
    assert top.returncode == 0
    assert "``" not in top.stdout and ":class:" not in top.stdout
    for command in ("pooler up", "pooler run", "pooler check"):
        assert command in top.stdout
    from pooler.cli import _parser

    parser = _parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    help_up = run(pooler_cmd("up", "--help"), clean_env(COLUMNS="200")).stdout
    for action in subparsers.choices["up"]._actions:  # type: ignore[attr-defined]
        for flag in action.option_strings:
            assert flag in help_up, flag
    for variable in ("POOLER_LISTEN_PORT", "POOLER_DIRECT_PORT", "POOLER_METRICS_PORT", "POOLER_LISTEN_ADDR",
                     "POOLER_DEFAULT_POOL_SIZE", "POOLER_DATA_DIR"):
        assert variable in help_up, variable
    assert "``" not in help_up


def test_an_interrupt_that_lands_where_python_cannot_raise_is_kept_not_printed() -> None:
    """A SIGINT during start-up can land in a weakref callback of the import system, where an exception is
    only printed ("Exception ignored", a traceback) and dropped. It is kept instead, and the start unwinds
    from it once the listeners are open (_serve), as from a signal that came during start()."""
    code = (
        "import signal, weakref\n"
        "from pooler import cli\n"
        "cli._take_signals()\n"
        "class Lock: pass\n"
        "lock = Lock()\n"
        "ref = weakref.ref(lock, lambda _: cli._interrupt(signal.SIGINT, None))  # as in _get_module_lock\n"
        "del lock\n"
        "print(cli.LOST_INTERRUPTS)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert "Traceback" not in out.stderr and "Exception ignored" not in out.stderr, out.stderr
    assert out.stdout.strip() == "['SIGINT']", (out.stdout, out.stderr)
