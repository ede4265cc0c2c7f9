"""The durable store: labeled examples, retrain jobs, version statuses, the active version.

One SQLAlchemy schema for SQLite (WAL mode, the single-machine default) and
PostgreSQL (several replicas sharing one database); shared/DESIGN.md #6.
Everything a 2xx answer promises is committed before the answer is sent.

Two invariants are enforced by the database itself, so they hold across
workers and pods without any lock of ours:
- a text is stored once (unique `text_hash`);
- at most one job is running (a partial unique index on `state`).
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    create_engine,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

log = logging.getLogger(__name__)

# How often a running job proves it is alive; JOB_STALE_SECONDS must be well above it.
HEARTBEAT_SECONDS = 2.0

FINAL_STATES = ("succeeded", "rejected", "failed")
VERSION_STATUSES = ("active", "candidate", "rejected", "retired")


def utcnow() -> datetime:
    return datetime.now(UTC)


def text_hash(text_value: str) -> str:
    return hashlib.sha256(text_value.strip().encode()).hexdigest()


class Base(DeclarativeBase):
    pass


class ExampleRow(Base):
    __tablename__ = "examples"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    text_hash: Mapped[str] = mapped_column(String(64), unique=True)
    text: Mapped[str] = mapped_column(Text)
    label: Mapped[str] = mapped_column(String(200))
    source: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class JobRow(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16), default="queued")
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str | None] = mapped_column(Text)
    candidate_version: Mapped[str | None] = mapped_column(String(200))
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    decision: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index(
            "one_running_job",
            "state",
            unique=True,
            sqlite_where=text("state = 'running'"),
            postgresql_where=text("state = 'running'"),
        ),
    )


class VersionRow(Base):
    """The status of a registered version; artifacts live in the model store."""

    __tablename__ = "versions"
    tag: Mapped[str] = mapped_column(String(200), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ActiveRow(Base):
    """Which version serves `model_name`: one row, updated atomically (DESIGN.md #4)."""

    __tablename__ = "active_versions"
    model_name: Mapped[str] = mapped_column(String(200), primary_key=True)
    tag: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


@dataclass(frozen=True)
class NewExample:
    text: str
    label: str


@dataclass(frozen=True)
class IntakeResult:
    accepted: int
    duplicates: int
    total: int


class ConflictError(ValueError):
    """Some submitted rows contradict stored ones; nothing of the request was stored."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Job:
    id: str
    model_name: str
    state: str
    params: dict[str, Any]
    progress: float
    message: str | None
    candidate_version: str | None
    metrics: dict[str, Any] | None
    decision: str | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    def public(self) -> dict[str, Any]:
        """The JSON shape of GET /jobs/{id}."""
        metrics = self.metrics or {}
        return {
            "id": self.id,
            "state": self.state,
            "progress": round(self.progress, 4),
            "message": self.message,
            "candidate_version": self.candidate_version,
            "metrics": {"candidate": metrics.get("candidate"), "active": metrics.get("active")},
            "decision": self.decision,
            "error": self.error,
            "params": self.params,
            "created_at": self.created_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }


def _job(row: JobRow) -> Job:
    return Job(
        row.id, row.model_name, row.state, dict(row.params or {}), row.progress, row.message,
        row.candidate_version, row.metrics, row.decision, row.error,
        _aware(row.created_at), _aware(row.started_at), _aware(row.finished_at),
    )  # fmt: skip


def _aware(value: datetime | None) -> Any:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class Store:
    """All reads and writes of the shared state. Safe to use from many threads and processes."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _engine(url)
        _create_schema(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    # --- examples ------------------------------------------------------------
    def add_examples(
        self, examples: Sequence[NewExample], source: str | None, session: Session | None = None
    ) -> IntakeResult:
        """Store new examples in one transaction; duplicates are counted, conflicts refused.

        A text already stored with another label is a conflict: the whole
        request is refused (ConflictError) and nothing is stored.
        """
        if session is None:
            with self.session() as own:
                return self.add_examples(examples, source, own)
        by_hash: dict[str, tuple[int, NewExample]] = {}
        problems: list[str] = []
        duplicates = 0
        for i, ex in enumerate(examples):
            h = text_hash(ex.text)
            if h in by_hash:
                first_i, first = by_hash[h]
                if first.label != ex.label:
                    problems.append(
                        f"examples[{i}]: same text as examples[{first_i}] with another label "
                        f"({ex.label!r} vs {first.label!r})"
                    )
                duplicates += 1
                continue
            by_hash[h] = (i, ex)
        stored: dict[str, str] = {}
        hashes = list(by_hash)
        for start in range(0, len(hashes), 500):
            rows = session.execute(
                select(ExampleRow.text_hash, ExampleRow.label).where(
                    ExampleRow.text_hash.in_(hashes[start : start + 500])
                )
            )
            stored.update({h: label for h, label in rows})
        new_rows = []
        for h, (i, ex) in by_hash.items():
            if h in stored:
                if stored[h] != ex.label:
                    problems.append(
                        f"examples[{i}]: this text is already stored with label {stored[h]!r}"
                    )
                duplicates += 1
            else:
                new_rows.append(
                    ExampleRow(text_hash=h, text=ex.text.strip(), label=ex.label, source=source)
                )
        if problems:
            raise ConflictError(problems)
        session.add_all(new_rows)
        session.flush()
        total = session.scalar(select(func.count()).select_from(ExampleRow)) or 0
        return IntakeResult(len(new_rows), duplicates, total)

    def count_examples(self) -> int:
        with self.session() as session:
            return session.scalar(select(func.count()).select_from(ExampleRow)) or 0

    def all_examples(self) -> list[NewExample]:
        """Every stored example, oldest first: the data of a retrain (old replayed with new)."""
        with self.session() as session:
            rows = session.execute(
                select(ExampleRow.text, ExampleRow.label).order_by(ExampleRow.id)
            )
            return [NewExample(t, label) for t, label in rows]

    # --- jobs ------------------------------------------------------------------
    def create_job(
        self, model_name: str, params: dict[str, Any], session: Session | None = None
    ) -> Job:
        if session is None:
            with self.session() as own:
                return self.create_job(model_name, params, own)
        row = JobRow(id=uuid.uuid4().hex, model_name=model_name, state="queued", params=params)
        session.add(row)
        session.flush()
        return _job(row)

    def get_job(self, job_id: str) -> Job | None:
        with self.session() as session:
            row = session.get(JobRow, job_id)
            return _job(row) if row else None

    def list_jobs(self, limit: int = 100) -> list[Job]:
        with self.session() as session:
            rows = session.scalars(select(JobRow).order_by(JobRow.created_at.desc()).limit(limit))
            return [_job(r) for r in rows]

    def claim_next_job(self) -> Job | None:
        """Atomically move the oldest queued job to running, unless one already runs.

        The partial unique index makes a second 'running' row impossible, so
        two workers (or pods) racing here cannot both start a job.
        """
        with self.session() as session:
            job_id = session.scalar(
                select(JobRow.id)
                .where(JobRow.state == "queued")
                .order_by(JobRow.created_at)
                .limit(1)
            )
        if job_id is None:
            return None
        now = utcnow()
        try:
            with self.session() as session:
                claimed = _rowcount(
                    session.execute(
                        update(JobRow)
                        .where(JobRow.id == job_id, JobRow.state == "queued")
                        .values(
                            state="running", started_at=now, heartbeat_at=now, message="starting"
                        )
                    )
                )
        except IntegrityError:
            return None  # another job is running
        return self.get_job(job_id) if claimed else None

    def heartbeat(self, job_id: str) -> None:
        with self.session() as session:
            session.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.state == "running")
                .values(heartbeat_at=utcnow())
            )

    @contextmanager
    def heartbeats(self, job_id: str, every: float = HEARTBEAT_SECONDS) -> Iterator[None]:
        """Heartbeat `job_id` from a background thread for as long as the block runs.

        The training process itself beats, not only the runner watching it: a
        Kubernetes Job outlives the replica that launched it (HPA scale-down,
        rolling update), and must not be reaped as dead while it still trains.
        """
        done = threading.Event()

        def beat() -> None:
            while not done.wait(every):
                try:
                    self.heartbeat(job_id)
                except Exception:  # a database blip must not end the training
                    log.warning("job=%s heartbeat failed; retrying", job_id, exc_info=True)

        thread = threading.Thread(target=beat, name=f"heartbeat-{job_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join(timeout=every + 5)

    def report_progress(self, job_id: str, progress: float, message: str) -> None:
        with self.session() as session:
            session.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.state == "running")
                .values(progress=progress, message=message, heartbeat_at=utcnow())
            )

    def set_candidate(self, job_id: str, tag: str) -> None:
        with self.session() as session:
            session.execute(update(JobRow).where(JobRow.id == job_id).values(candidate_version=tag))

    def finish_job(
        self,
        job_id: str,
        state: str,
        *,
        decision: str | None = None,
        error: str | None = None,
        metrics: dict[str, Any] | None = None,
        session: Session | None = None,
    ) -> bool:
        """Move a running job to a final state; False if it was no longer running."""
        if state not in FINAL_STATES:
            raise ValueError(f"{state!r} is not a final job state")
        if session is None:
            with self.session() as own:
                return self.finish_job(
                    job_id, state, decision=decision, error=error, metrics=metrics, session=own
                )
        values: dict[str, Any] = {"state": state, "finished_at": utcnow(), "decision": decision}
        values["error"] = error
        if state == "succeeded" or state == "rejected":
            values["progress"] = 1.0
        if metrics is not None:
            values["metrics"] = metrics
        changed = _rowcount(
            session.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.state == "running")
                .values(**values)
            )
        )
        return bool(changed)

    def fail_stale_jobs(self, older_than: timedelta) -> list[str]:
        """Mark running jobs whose heartbeat stopped as failed (their process died)."""
        cutoff = utcnow() - older_than
        with self.session() as session:
            stale = list(
                session.scalars(
                    select(JobRow.id).where(JobRow.state == "running", JobRow.heartbeat_at < cutoff)
                )
            )
        failed = [
            job_id
            for job_id in stale
            if self.finish_job(
                job_id,
                "failed",
                error="the process running this job stopped (server restart or crash); "
                "submit POST /retrain again — every stored example is still there",
            )
        ]
        return failed

    # --- versions ----------------------------------------------------------------
    def active_tag(self, model_name: str) -> str | None:
        with self.session() as session:
            row = session.get(ActiveRow, model_name)
            return row.tag if row else None

    def adopt_if_none(self, model_name: str, tag: str) -> str:
        """Make `tag` active only if nothing is; returns the tag that is active afterwards."""
        try:
            with self.session() as session:
                session.add(ActiveRow(model_name=model_name, tag=tag))
                session.merge(VersionRow(tag=tag, model_name=model_name, status="active"))
        except IntegrityError:
            pass  # another worker adopted one first
        return self.active_tag(model_name) or tag

    def activate(
        self, model_name: str, tag: str, reason: str, session: Session | None = None
    ) -> str | None:
        """Make `tag` the active version; the previous one is retired. Returns the previous tag."""
        if session is None:
            with self.session() as own:
                return self.activate(model_name, tag, reason, own)
        row = session.get(ActiveRow, model_name, with_for_update=True)
        previous = row.tag if row else None
        if row is None:
            session.add(ActiveRow(model_name=model_name, tag=tag, updated_at=utcnow()))
        else:
            row.tag, row.updated_at = tag, utcnow()
        if previous and previous != tag:
            session.merge(
                VersionRow(
                    tag=previous,
                    model_name=model_name,
                    status="retired",
                    reason=f"replaced by {tag}",
                )
            )
        session.merge(VersionRow(tag=tag, model_name=model_name, status="active", reason=reason))
        return previous

    def set_version_status(
        self, model_name: str, tag: str, status: str, reason: str | None
    ) -> None:
        if status not in VERSION_STATUSES:
            raise ValueError(f"{status!r} is not a version status")
        with self.session() as session:
            session.merge(VersionRow(tag=tag, model_name=model_name, status=status, reason=reason))

    def version_statuses(self, model_name: str) -> dict[str, tuple[str, str | None]]:
        with self.session() as session:
            rows = session.execute(
                select(VersionRow.tag, VersionRow.status, VersionRow.reason).where(
                    VersionRow.model_name == model_name
                )
            )
            return {tag: (status, reason) for tag, status, reason in rows}


def _rowcount(result: Any) -> int:
    """Rows an UPDATE matched (SQLAlchemy types `execute` as returning a plain Result)."""
    return int(result.rowcount)


_SCHEMA_LOCK_KEY = 0x5E1F7E  # any constant; names our PostgreSQL advisory lock


def _create_schema(engine: Engine) -> None:
    """Create missing tables while holding a database-wide lock.

    Every worker of every replica opens the store at the same moment on
    start-up. Without the lock two of them both see a table missing, and the
    second CREATE fails with "table already exists" (it took a worker down in
    CI). SQLite and PostgreSQL both run DDL inside a transaction, so the
    lock-holder's tables appear whole to the next one, which then skips them.
    """
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # waits up to busy_timeout
        elif engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
        Base.metadata.create_all(conn)
        conn.commit()


def _enable_wal(cursor: sqlite3.Cursor, wait_s: float = 30.0) -> None:
    """Switch the database to WAL, waiting out another connection switching it.

    The switch takes an exclusive lock, and SQLite answers a second connection
    switching at the same moment (two workers opening a new database) with
    "database is locked" at once, without its busy handler: it took a worker
    down in a test that opens the store from 8 processes together.
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


def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
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
    return create_engine(url, pool_pre_ping=True)


@lru_cache(maxsize=8)
def open_store(url: str) -> Store:
    """One Store (and connection pool) per URL per process."""
    return Store(url)
