"""A throwaway local PostgreSQL for tests: `initdb` into a temporary directory,
start it on a free port on 127.0.0.1, hand out SQLAlchemy URLs, remove it all.

It uses the server binaries of Debian's `postgresql` package
(/usr/lib/postgresql/<major>/bin; `make test` installs the package where it is
missing) or, elsewhere, `initdb` and `pg_ctl` from PATH. PostgreSQL refuses to
run as root, so under root (CI, containers) the server runs as the `postgres`
system user that the Debian package creates.

The server trades durability for speed (fsync off): it lives for one test
session and is deleted after.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
SUPERUSER = "postgres"
START_TIMEOUT_S = 60


class PostgresUnavailableError(RuntimeError):
    """No PostgreSQL server binaries here, or no unprivileged user to run them as."""


@dataclass(frozen=True)
class PostgresServer:
    """A running throwaway server. `url` points at its default `postgres` database."""

    host: str
    port: int
    user: str
    password: str
    data_dir: Path

    def url_for(self, database: str) -> str:
        return (
            f"postgresql+psycopg://{self.user}:{self.password}@{self.host}:{self.port}/{database}"
        )

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def create_database(self, name: str) -> str:
        """Create an empty database (isolation per test or per module); returns its URL."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"database name {name!r} must be lower-case letters, digits and _")
        engine = sa.create_engine(self.url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return self.url_for(name)


def find_bin_dir() -> Path:
    """The directory holding `initdb`, `pg_ctl` and `postgres`, newest major version first."""

    def major(path: Path) -> int:
        version = path.parent.name
        return int(version) if version.isdigit() else -1

    debian = sorted(
        (p for p in Path("/").glob(DEBIAN_BIN_GLOB.lstrip("/")) if (p / "initdb").is_file()),
        key=major,
        reverse=True,
    )
    if debian:
        return debian[0]
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).resolve().parent
    raise PostgresUnavailableError(
        "no PostgreSQL server binaries: looked in "
        f"{DEBIAN_BIN_GLOB} and on PATH for initdb and pg_ctl; install Debian's "
        "`postgresql` package (`apt-get install -y postgresql`, which `make test` does as root)"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_server_user(argv: list[str]) -> list[str]:
    """Run as the `postgres` user when we are root: initdb and postgres refuse root."""
    if os.geteuid() != 0:
        return argv
    runuser = shutil.which("runuser")
    if runuser is None:
        raise PostgresUnavailableError(
            "running as root but `runuser` (util-linux) is not installed"
        )
    try:
        import pwd

        pwd.getpwnam(SUPERUSER)
    except KeyError as exc:
        raise PostgresUnavailableError(
            f"running as root and there is no {SUPERUSER!r} user to run PostgreSQL as; "
            "Debian's `postgresql` package creates it"
        ) from exc
    return [runuser, "-u", SUPERUSER, "--", *argv]


def _chown_to_server_user(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, user=SUPERUSER, group=None)


def _run(argv: list[str], what: str) -> None:
    result = subprocess.run(
        _as_server_user(argv), capture_output=True, text=True, timeout=START_TIMEOUT_S
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{what} failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
        )


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a fresh PostgreSQL cluster; stop it and delete its files on exit.

    Raises PostgresUnavailableError when no server binaries can be found; any other
    failure (initdb, start-up) raises RuntimeError with the server's log.
    """
    bin_dir = find_bin_dir()
    root = Path(tempfile.mkdtemp(prefix="selftune-pg-"))
    data_dir = root / "data"
    data_dir.mkdir()
    # The server user must be able to reach its directory (mkdtemp makes 0700).
    root.chmod(0o755)
    _chown_to_server_user(data_dir)
    password = secrets.token_hex(16)
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    pwfile.chmod(0o600)
    _chown_to_server_user(pwfile)
    log_file = data_dir / "server.log"
    port = _free_port()
    started = False
    try:
        _run(
            [
                str(bin_dir / "initdb"),
                "--pgdata",
                str(data_dir),
                "--username",
                SUPERUSER,
                "--pwfile",
                str(pwfile),
                "--auth",
                "scram-sha-256",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
            ],
            "initdb",
        )
        pwfile.unlink()
        server_options = " ".join(
            [
                f"-p {port}",
                "-c listen_addresses=127.0.0.1",
                # The socket goes in the data directory, not /var/run/postgresql,
                # which may not exist or belong to a system cluster.
                f"-c unix_socket_directories={data_dir}",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=100",
            ]
        )
        try:
            _run(
                [
                    str(bin_dir / "pg_ctl"),
                    "--pgdata",
                    str(data_dir),
                    "--log",
                    str(log_file),
                    "--options",
                    server_options,
                    "--wait",
                    "--timeout",
                    str(START_TIMEOUT_S),
                    "start",
                ],
                "pg_ctl start",
            )
        except RuntimeError as exc:
            log = log_file.read_text() if log_file.exists() else "(no server log)"
            raise RuntimeError(f"{exc}\nserver log:\n{log}") from exc
        started = True
        yield PostgresServer("127.0.0.1", port, SUPERUSER, password, data_dir)
    finally:
        if started:
            # immediate: the data is thrown away, so skip the shutdown checkpoint.
            with contextlib.suppress(Exception):
                _run(
                    [str(bin_dir / "pg_ctl"), "--pgdata", str(data_dir), "-m", "immediate", "stop"],
                    "pg_ctl stop",
                )
        shutil.rmtree(root, ignore_errors=True)
