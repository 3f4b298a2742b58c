"""A throw-away PostgreSQL server for tests: ``initdb`` + ``pg_ctl start`` on a free local port.

The cluster lives in a temporary folder and is stopped and removed at the end of the test session;
each test gets a database of its own (the ``postgres_url`` fixture). PostgreSQL refuses to run as root,
so as root the server runs as the ``postgres`` system user (``runuser -u postgres --``), with its folder
owned by that user. Tests skip, saying why, where the server binaries (Debian: ``apt-get install
postgresql``, which puts them in /usr/lib/postgresql/<version>/bin, off PATH) or psycopg are absent.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

__all__ = ["postgres_server", "postgres_url"]

_USER = "quickstudy"


def _bin_dir() -> Path | None:
    """The folder holding initdb and pg_ctl: on PATH, else Debian's newest /usr/lib/postgresql/*/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    candidates = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    candidates = [c for c in candidates if (c / "pg_ctl").exists()]

    def version(path: Path) -> tuple:
        return tuple(int(part) for part in path.parent.name.split(".") if part.isdigit())

    return max(candidates, key=version) if candidates else None


def _as_server_user() -> list[str]:
    """The command prefix that runs a server binary as a user PostgreSQL accepts."""
    if os.geteuid() != 0:
        return []
    import pwd

    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no 'postgres' system user to run the PostgreSQL server as")
    if shutil.which("runuser") is None:
        pytest.skip("running as root and runuser (util-linux) is absent: cannot start PostgreSQL as 'postgres'")
    return ["runuser", "-u", "postgres", "--"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """A running throw-away cluster; ``create_database()`` gives a fresh database's URL."""

    def __init__(self, bin_dir: Path, prefix: list[str]):
        self.bin_dir, self.prefix = bin_dir, prefix
        # Not pytest's tmp_path: it is private to root (0700), and the server user must reach the folder.
        self.root = Path(tempfile.mkdtemp(prefix="quickstudy-pg-"))
        if prefix:
            shutil.chown(self.root, "postgres", "postgres")
        self.data, self.log = self.root / "data", self.root / "server.log"
        self.port = _free_port()
        self.env = {**os.environ, "LC_ALL": "C", "LANG": "C"}

    def _run(self, *args: str, server_user: bool = True) -> None:
        command = (self.prefix if server_user else []) + [str(self.bin_dir / args[0]), *args[1:]]
        result = subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=120)
        if result.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}{log}")

    def start(self) -> None:
        # trust authentication on 127.0.0.1 only; no fsync: the cluster is thrown away after the tests
        self._run("initdb", "-D", str(self.data), "-U", _USER, "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self) -> str:
        name = f"test_{uuid.uuid4().hex[:12]}"
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", _USER, name, server_user=False)
        return f"postgresql://{_USER}@127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL cluster for the test session (started on first use, stopped and removed at the end)."""
    pytest.importorskip("psycopg", reason="psycopg (the PostgreSQL driver) is absent: pip install 'quickstudy[automl]'")
    bin_dir = _bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin: "
                    "apt-get install postgresql")
    server = PostgresServer(bin_dir, _as_server_user())
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """The URL of a new, empty database on the session's PostgreSQL server."""
    return postgres_server.create_database()
