"""The engine, the schema and the unit of work.

SQLite in WAL mode is the single-machine default; PostgreSQL serves several
replicas. The schema is Alembic's (`store/migrations`): every process upgrades
the database to head on open, under a database-wide lock, so a database made
by an earlier release is migrated in place and two workers starting together
cannot race on DDL.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, create_engine, event, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# The first release created its tables with create_all and no alembic_version table.
FIRST_REVISION = "0001"
_SCHEMA_LOCK_KEY = 0x5E1F7E  # any constant; names our PostgreSQL advisory lock
T = TypeVar("T")
PG_DISK_FULL = "53100"  # SQLSTATE disk_full: "could not extend file ...: No space left on device"


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime | None) -> Any:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class Base(DeclarativeBase):
    pass


IN_CHUNK = 500  # bound parameters per IN (...) query


def chunked(values: Sequence[T], size: int = IN_CHUNK) -> Iterator[Sequence[T]]:
    """`values` in slices small enough for one IN (...) list."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


def disk_full(exc: BaseException) -> bool:
    """True when a database error means its disk is full: SQLite's SQLITE_FULL ("database
    or disk is full") or PostgreSQL's disk_full (SQLSTATE 53100). The failed transaction
    was rolled back, so what was committed before is intact."""
    cause = getattr(exc, "orig", None) or exc
    return (
        getattr(cause, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        or getattr(cause, "sqlstate", None) == PG_DISK_FULL
    )


def rowcount(result: Any) -> int:
    """Rows an UPDATE or DELETE matched (SQLAlchemy types `execute` as a plain Result)."""
    return int(result.rowcount)


def write_lock(tx: Session) -> None:
    """Make `tx` SQLite's one writer now, before it reads what it is about to change.

    Python's sqlite3 opens a transaction only at the first write, and SQLite
    ignores FOR UPDATE, so a read-then-write there could act on what another
    writer committed in between (two versions marked active; a duplicate text
    passing the check and failing the UNIQUE constraint). BEGIN IMMEDIATE
    takes the write lock first, waiting up to busy_timeout; a transaction that
    has written already holds it. PostgreSQL needs nothing here: callers lock
    the rows they read FOR UPDATE.
    """
    connection = tx.connection()
    if connection.dialect.name != "sqlite":
        return
    if not connection.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _alembic_config(conn: Connection) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def migrate(engine: Engine) -> None:
    """Upgrade the database to the newest schema, holding a database-wide lock.

    A database from the first release (tables, no `alembic_version`) is stamped
    with that release's revision first, then upgraded like any other.
    """
    from alembic import command

    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # waits up to busy_timeout
        elif engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
        tables = set(inspect(conn).get_table_names())
        cfg = _alembic_config(conn)
        if "examples" in tables and "alembic_version" not in tables:
            log.info("database from the first release: stamping revision %s", FIRST_REVISION)
            command.stamp(cfg, FIRST_REVISION)
        command.upgrade(cfg, "head")
        conn.commit()


def _enable_wal(cursor: sqlite3.Cursor, wait_s: float = 30.0) -> None:
    """Switch the database to WAL, waiting out another connection switching it.

    SQLite answers a second connection switching at the same moment with
    "database is locked" at once, without its busy handler.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def make_engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
        # WAL: readers never block the writer; FULL sync: a 2xx survives power loss.
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA busy_timeout=30000")
        _enable_wal(cursor)
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    return engine


class Store:
    """The shared state. `transaction()` is the one unit of work: all or nothing."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        migrate(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose writes commit together when the block ends, or not at all."""
        with self._sessions.begin() as session:
            yield session
