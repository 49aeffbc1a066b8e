"""A private PostgreSQL server for the feedback store's tests and benchmark.

``pg_server`` (session-scoped) runs ``initdb`` and ``pg_ctl`` from Debian's
``postgresql`` package (``/usr/lib/postgresql/*/bin``) in a temporary directory, on a
free loopback port with a Unix socket in that directory, password authentication over
TCP, and ``fsync=off`` (a test server: a process crash still loses nothing committed, only
an OS crash could). ``pg_database`` gives each test an empty database of its own.
Without those binaries the PostgreSQL tests SKIP (CI installs them: ``.ci/run``); any
other failure to start the server is a test failure.

initdb and the server refuse to run as root: as root they run as the ``postgres`` user
the package creates (``runuser``), in a directory owned by it. A watchdog process stops
the server if the test process dies without stopping it (SIGKILL, a timeout).

Use from a test module with ``from tests.pg_server import pg_database, pg_server  # noqa: F401``.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

USER = "rrpo"


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's bin directory (None: not installed)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_owner(argv: list[str]) -> list[str]:
    """Run as the ``postgres`` user when we are root (initdb and postgres refuse root)."""
    if os.geteuid() != 0:
        return argv
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--", *argv]
    return ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(argv)]


@dataclass
class PrivatePostgres:
    root: Path
    bin: Path
    port: int = 0
    password: str = field(default_factory=lambda: "pw-" + secrets.token_hex(8))
    fsync: bool = False  # off for tests (fast); the benchmark turns it on (a production default)
    _watchdog: subprocess.Popen | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres", password: bool = True) -> str:
        secret = f":{self.password}" if password else ""
        return f"postgresql://{USER}{secret}@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            for path in (self.root, pwfile):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        argv = [str(self.bin / "initdb"), "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}",
                "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"]
        _run(_as_owner(argv), "initdb")
        pwfile.unlink()

    def configure(self) -> None:
        """Settings in postgresql.conf (not ``pg_ctl -o``), so a restart keeps them."""
        self.port = _free_port()
        settings = {
            "listen_addresses": "'127.0.0.1'", "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'", "fsync": "on" if self.fsync else "off",
            "full_page_writes": "on" if self.fsync else "off",
            "max_connections": "150", "shared_buffers": "'32MB'",
        }  # fmt: skip
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# rrpo tests\n" + "".join(f"{key} = {value}\n" for key, value in settings.items()))

    def start(self) -> None:
        """Configure and start (a port taken in between is retried)."""
        for attempt in range(3):
            self.configure()  # later lines win: a retry just picks another port
            try:
                self.start_server()
            except RuntimeError:
                continue
            self._start_watchdog()
            return
        raise RuntimeError(f"PostgreSQL did not start:\n{self.log_tail()}")

    def restart(self, mode: str = "fast") -> None:
        """Stop (``fast``: sessions are terminated; ``immediate``: a crash) and start
        again on the same port."""
        self.stop_server(mode)
        self.start_server()

    def stop_server(self, mode: str = "fast") -> None:
        argv = [str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"]
        _run(_as_owner(argv), "pg_ctl stop")

    def start_server(self) -> None:
        argv = [str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                "-w", "-t", "60", "start"]
        _run(_as_owner(argv), "pg_ctl start")

    def create_database(self) -> str:
        """An empty database of its own; returns its URL (with the password)."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")  # a name we made: no injection
        return self.url(name)

    def drop_database(self, url: str) -> None:
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        """Stop the server and remove its directory (only what this object started)."""
        try:
            if (self.data / "postmaster.pid").exists():
                self.stop_server("fast")
        finally:
            if self._watchdog is not None and self._watchdog.poll() is None:
                self._watchdog.kill()
                self._watchdog.wait()
            shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, chars: int = 3000) -> str:
        log = self.root / "server.log"
        return log.read_text(errors="replace")[-chars:] if log.exists() else ""

    def _start_watchdog(self) -> None:
        """A shell that outlives a killed test process and takes the server down with it."""
        if self._watchdog is not None and self._watchdog.poll() is None:
            return
        script = (f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 2; done; "
                  f"[ -f {self.data}/postmaster.pid ] && kill -QUIT $(head -1 {self.data}/postmaster.pid); "
                  f"sleep 2; rm -rf {self.root}")
        self._watchdog = subprocess.Popen(["sh", "-c", script], start_new_session=True,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stderr or done.stdout}")


def start_private_postgres(fsync: bool = False) -> PrivatePostgres:
    """initdb + start; the caller stops it. ``pytest.skip`` only if PostgreSQL is not installed."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run does)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.fail("psycopg is not installed: pip install -e '.[postgres]' (the dev extra has it)")
    server = PrivatePostgres(root=Path(tempfile.mkdtemp(prefix="rrpo-pg-")), bin=bin_dir, fsync=fsync)
    try:
        server.init()
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


_SHARED: list[PrivatePostgres] = []


@pytest.fixture(scope="session")
def pg_server():
    """One server for the whole session, whichever test modules import this fixture
    (each import would otherwise be a fixture, and a server, of its own)."""
    if not _SHARED:
        _SHARED.append(start_private_postgres())
        atexit.register(_SHARED[0].stop)
    return _SHARED[0]


@pytest.fixture()
def pg_database(pg_server):
    """A factory of empty databases (URLs with the password), dropped after the test."""
    made: list[str] = []

    def make() -> str:
        made.append(pg_server.create_database())
        return made[-1]

    yield make
    for url in made:
        pg_server.drop_database(url)


def wait_until(condition, timeout: float = 10.0, every: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return condition()


__all__ = ["PrivatePostgres", "pg_database", "pg_server", "postgres_bin", "start_private_postgres", "wait_until"]
