"""SQLAlchemy 2 models and the engine/session factory.

The database is the truth about every job; the broker only delivers job ids.
Times are naive UTC everywhere (SQLite keeps no zone), produced by `utcnow()`.
"""

from __future__ import annotations

import functools
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Iterator, Mapping

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    text,
    true as sa_true,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, InvalidatePoolError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from scheduler import constants as C
from scheduler.constants import ACTIVE, TERMINAL, Status  # noqa: F401 - re-exported: `from scheduler.db import Status`

# Set before the first revision so constraint names are stable across SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def new_id() -> str:
    return uuid.uuid4().hex[:12]


# The status names live with the constants (importable without SQLAlchemy: the client, the CLI).


WAITING_DEPENDENTS = "status = 'QUEUED' AND json_array_length(depends_on) > 0"  # ix_jobs_waiting_dependents


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(16), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True, default=Status.QUEUED.value)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    name: Mapped[str | None] = mapped_column(String(200))
    owner: Mapped[str] = mapped_column(String(100), index=True, default="")
    priority: Mapped[int] = mapped_column(Integer, default=5)
    gpus: Mapped[int] = mapped_column(Integer, default=0)
    queue: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    shard_index: Mapped[int | None] = mapped_column(Integer)
    depends_on: Mapped[list[str]] = mapped_column(JSON, default=list)

    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime, index=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # The fencing token: +1 at every claim, never reset (a retry keeps it growing). Every effect of an
    # attempt carries the token it was claimed with and is refused once it is not the job's current one.
    fence: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lease_losses: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # not failures
    preemptions: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # not failures
    preemptible: Mapped[bool] = mapped_column(Boolean, default=True, server_default=sa_true())
    preempt_requested: Mapped[str | None] = mapped_column(Text)  # why (set by the sweeper; the worker stops)

    progress: Mapped[float] = mapped_column(Float, default=0.0)
    progress_step: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str | None] = mapped_column(Text)  # failure reason, or why it waits

    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    events: Mapped[list["JobEvent"]] = relationship(back_populates="job", order_by="JobEvent.id")
    artifacts: Mapped[list["Artifact"]] = relationship(back_populates="job", order_by="Artifact.key")

    __table_args__ = (
        Index("ix_jobs_status_priority_created", "status", "priority", "created_at"),
        # The few queued jobs that wait for others: what a worker reads after every finish (migration 0004).
        Index("ix_jobs_waiting_dependents", "id", postgresql_where=text(WAITING_DEPENDENTS),
              sqlite_where=text(WAITING_DEPENDENTS)),
    )


# -- a compare-and-set on ONE job, found by its primary key ------------------------------------------------
# `WHERE id = :id AND status = 'QUEUED'` lets PostgreSQL's planner serve the status test from an index led by
# status (ix_jobs_status, ix_jobs_status_priority_created) instead of the primary key whenever its statistics
# say that status is rare: on a table not yet analysed, or one analysed while every job had ended (a busy
# table's usual state) just before thousands were submitted. Both estimates are then one row, the status
# index wins the tie, and every claim and finish scans all the jobs of that status: a cost that grows with
# the queue, paid by every job of a bulk submission (bench_platform's "claim among 10,000 queued" row).
# `status || ''` is no indexed expression: the primary key is the only index left for such a statement,
# whatever the statistics say (tests/scheduler/test_pk_plans.py). Listings by status keep their indexes:
# they test `status` itself.
STATUS_BY_ID = "(status || '')"  # the raw SQL of the one-statement claim/finish (scheduler.states)


def status_is(*values: str) -> Any:
    """`jobs.status` is one of `values`, in the form no status index serves (STATUS_BY_ID): for statements
    that name their job(s) by id."""
    unindexed = Job.status.concat("")
    return unindexed == values[0] if len(values) == 1 else unindexed.in_(values)


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    actor: Mapped[str | None] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(Text)

    job: Mapped[Job] = relationship(back_populates="events")


class Artifact(Base):
    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(String(1024))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    fence: Mapped[int | None] = mapped_column(Integer)  # the attempt's token that wrote it (None: before 0003)

    job: Mapped[Job] = relationship(back_populates="artifacts")

    __table_args__ = (UniqueConstraint("job_id", "key"),)


class MetricPoint(Base):
    """One value of a named series (loss_g at step 500, fid, psnr_mean ...)."""

    __tablename__ = "metrics"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    step: Mapped[int | None] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Float)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    __table_args__ = (Index("ix_metrics_job_name_step", "job_id", "name", "step"),)


class LogChunk(Base):
    """A piece of a job's process output (stdout and stderr), appended by the worker while the job runs, so
    `medgan jobs logs -f` follows it from any host. `seq` orders the chunks of one attempt."""

    __tablename__ = "log_chunks"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    __table_args__ = (Index("ix_log_chunks_job_id_id", "job_id", "id"),
                      UniqueConstraint("job_id", "attempt", "seq"))


class Worker(Base):
    """A worker process's declaration: its host, cards and queues; refreshed while it lives."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)  # celery hostname, unique per process
    host: Mapped[str] = mapped_column(String(200), index=True)
    gpus: Mapped[list[int]] = mapped_column(JSON, default=list)
    queues: Mapped[list[str]] = mapped_column(JSON, default=list)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class GpuLease(Base):
    """One card held by one job. The primary key makes a double lease impossible."""

    __tablename__ = "gpu_leases"

    host: Mapped[str] = mapped_column(String(200), primary_key=True)
    gpu_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    worker: Mapped[str] = mapped_column(String(200))
    leased_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets the CLI read while a worker writes; busy_timeout turns lock contention into waiting.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


@functools.lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    """One engine per URL per process (workers make theirs once, at start)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        # A frozen process (SIGSTOP, a stall) inside a transaction would hold its row locks, and block the
        # sweeper's requeue of its job, for as long as it stays frozen: the server ends such a session.
        idle_ms = int(C.DB_IDLE_IN_TRANSACTION_SECONDS * 1000)
        engine = create_engine(url, pool_size=5, max_overflow=5, pool_use_lifo=True,
                               connect_args={"options": f"-c idle_in_transaction_session_timeout={idle_ms}"})
        _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """Pessimistic disconnect handling, paid only where it can find something: a pooled connection unused for
    DB_PING_IDLE_SECONDS or more is pinged before it is handed out, and a failed ping discards every pooled
    connection older than now (the server went away) and hands out a fresh one. One that was in use within
    that second (a worker's, between the transactions of one job) is not: `pool_pre_ping` pinged it at every
    checkout, a round trip per transaction, three or four per job (bench_platform)."""

    @event.listens_for(engine, "connect")
    def _connected(_dbapi_conn: Any, record: Any) -> None:
        record.info["medgan_used"] = time.monotonic()  # it has just answered

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn: Any, record: Any) -> None:
        record.info["medgan_used"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        used = record.info.get("medgan_used")
        if used is not None and time.monotonic() - used < C.DB_PING_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:  # noqa: BLE001 - any failure: this connection (and its older peers) are gone
            raise InvalidatePoolError(f"ping failed: {exc}") from exc


@functools.lru_cache(maxsize=8)
def _autocommit_engine(url: str, durable: bool) -> Engine:
    if durable or not url.startswith("postgresql"):
        return get_engine(url).execution_options(isolation_level="AUTOCOMMIT")  # the same pool, no transaction
    # A pool of its own whose sessions commit without waiting for the WAL flush (PostgreSQL's asynchronous
    # commit): atomic and visible at once like any commit; only a crash of the database server itself can
    # lose the last few hundred ms of them.
    engine = create_engine(url, pool_size=2, max_overflow=3, pool_use_lifo=True, isolation_level="AUTOCOMMIT",
                           connect_args={"options": f"-c synchronous_commit=off -c idle_in_transaction_session_timeout="
                                                    f"{int(C.DB_IDLE_IN_TRANSACTION_SECONDS * 1000)}"})
    _ping_when_idle(engine)
    return engine


def driver_rows(conn: Connection, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Run one PostgreSQL statement (psycopg's `%(name)s` parameters) straight on the pooled connection's
    driver and return its rows as dicts: for the few statements every job pays (its claim, its finish, a
    one-job submission), where SQLAlchemy's execution around the driver cost about as much CPU as the round
    trip itself on the 2-core machine of BENCHMARKS.md. `before_cursor_execute` listeners still see the
    statement; an error comes back as SQLAlchemy's (a lost connection invalidated first), so callers handle
    it like any other."""
    import psycopg
    from psycopg.pq import ExecStatus
    from psycopg.rows import dict_row

    raw = conn.connection.driver_connection
    try:
        with raw.cursor(row_factory=dict_row) as cursor:  # names from the result itself, no column objects
            for listener in conn.dispatch.before_cursor_execute:
                listener(conn, cursor, sql, params, None, False)
            cursor.execute(sql, params)
            result = cursor.pgresult
            if result is None or result.status != ExecStatus.TUPLES_OK:
                return []
            return cursor.fetchall()
    except psycopg.Error as exc:
        lost = conn.dialect.is_disconnect(exc, raw, None)
        if lost:
            conn.invalidate(exc)
        raise DBAPIError.instance(sql, params, exc, psycopg.Error, connection_invalidated=lost,
                                  dialect=conn.dialect) from exc


def fetch(conn: Connection, stmt: Any, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rows of a Core SELECT as dicts: on PostgreSQL compiled once and run on the driver (`driver_rows`),
    elsewhere executed by SQLAlchemy. The same statement either way; for reads every job's waiter pays."""
    if conn.dialect.name != "postgresql":
        return [dict(row) for row in conn.execute(stmt, dict(params)).mappings()]
    sql, defaults = _compiled(stmt, conn.dialect)
    return driver_rows(conn, sql, {**defaults, **params})


@functools.lru_cache(maxsize=64)
def _compiled(stmt: Any, dialect: Any) -> tuple[str, dict[str, Any]]:
    compiled = stmt.compile(dialect=dialect)
    return str(compiled), dict(compiled.params)


@contextmanager
def autocommit(url: str, *, durable: bool = True) -> Iterator[Connection]:
    """A pooled connection in autocommit mode: each statement commits by itself, with no BEGIN/COMMIT round
    trips around it (the worker's one-statement claim and finish, reads that need no transaction).

    `durable=False` (PostgreSQL): the commit does not wait for the disk. Only for a write whose loss in a
    database-server crash the system already recovers from: a claim (the job is QUEUED again after such a
    crash, the attempt's later effects are refused by its token, and the sweeper re-sends the job)."""
    with _autocommit_engine(url, durable).connect() as conn:
        yield conn


@contextmanager
def read_scope(url: str) -> Iterator[Session]:
    """A session for reads only, on an autocommit connection: no BEGIN/COMMIT round trips around its queries
    (each sees what is committed when it runs). Anything it would write is not committed."""
    with autocommit(url) as conn, Session(bind=conn, expire_on_commit=False) as session:
        yield session


@functools.lru_cache(maxsize=8)
def _session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = _session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
