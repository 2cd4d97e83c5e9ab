"""Submission and queries: the job system's service layer, shared by the CLI, the Python client,
the sweeper and the worker.

Submission order (DESIGN.md): validate → INSERT row(s) → COMMIT → send the message(s).
A message lost between commit and send is re-sent by the sweeper (the row is the truth).
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Iterator, Sequence

from sqlalchemy import JSON, DateTime, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from scheduler import constants as C
from scheduler import states
from scheduler.broker import make_celery, queue_depths, queue_for, send_jobs
from scheduler.db import (
    Artifact, Job, JobEvent, LogChunk, MetricPoint, Status, autocommit, driver_rows, fetch, get_engine, new_id,
    read_scope, session_scope, status_is, utcnow,
)
from scheduler.fanout import is_fanout_parent, parent_progress, plan_children, plan_sweep, retry_failed_children
from scheduler.policy import host_cards
from scheduler.errors import DatabaseUnavailable, MedganUserError, NotFound, SpecError
from scheduler.settings import Settings
from scheduler.specs import KINDS, LEARNED_METHODS, AnySpec, EnhanceSpec, EvaluateSpec, GenerateSpec, parse_spec

log = logging.getLogger(__name__)
S = Status


def check_database(settings: Settings) -> None:
    """Fail with one clear line when the database is unreachable or not migrated (two cheap queries)."""
    _check_sqlite_file(settings)
    engine = get_engine(settings.db_url)
    shown = engine.url.render_as_string(hide_password=True)
    try:
        conn = engine.connect()
    except (OperationalError, ProgrammingError) as exc:
        raise DatabaseUnavailable(f"cannot reach the database {shown}: {exc.orig or exc}".splitlines()[0]) from None
    with conn:
        try:
            conn.execute(select(Job.id).limit(0))
        except (OperationalError, ProgrammingError) as exc:
            if exc.connection_invalidated:  # the server went away between the two queries
                raise DatabaseUnavailable(f"cannot reach the database {shown}: {exc.orig}".splitlines()[0]) from None
            raise DatabaseUnavailable(f"database {shown} is not initialised: run `medgan db upgrade`") from None


def validate(settings: Settings, spec_data: dict[str, Any]) -> AnySpec:
    """The one validation path of every submission (client, CLI, pipelines): job references given as ids,
    unique id prefixes or names are resolved to ids, the spec is parsed, and what it refers to is checked
    (exists, right kind, finished); a sweep's every point too. Raises MedganUserError with one readable
    line; writes nothing."""
    check_database(settings)
    with session_scope(settings.db_url) as session:
        return _validated(session, spec_data)[0]


def _validated(session: Session, spec_data: dict[str, Any]) -> tuple[AnySpec, list[AnySpec]]:
    """The spec, and for a sweep its children's specs (each validated like a spec of its own)."""
    spec = _validated_one(session, spec_data)
    children = []
    for label, data in plan_sweep(spec) if spec.sweep else []:
        try:
            children.append(_validated_one(session, data))
        except SpecError as exc:
            raise SpecError(f"sweep point {label}: {exc}") from None
    return spec, children


def _validated_one(session: Session, spec_data: dict[str, Any]) -> AnySpec:
    spec = parse_spec(resolve_refs(session, spec_data))
    _check_references(session, spec)
    _check_gpus(session, spec.gpus)
    return spec


def _check_sqlite_file(settings: Settings) -> None:
    path = _sqlite_file(settings.db_url)
    if path is not None and not Path(path).exists():
        raise DatabaseUnavailable(f"database {path} does not exist: run `medgan db upgrade`")


@functools.lru_cache(maxsize=8)
def _sqlite_file(db_url: str) -> str | None:
    """The file of a SQLite URL (None for another database, or SQLite in memory); parsed once per URL."""
    url = make_url(db_url)
    return url.database or None if url.get_backend_name() == "sqlite" else None


def submit(settings: Settings, spec_data: dict[str, Any], *, idempotency_key: str | None = None) -> dict[str, Any]:
    """Validate, record, commit, then enqueue. Returns the job dict (the existing job's for a repeated key)."""
    return submit_many(settings, [spec_data], keys=[idempotency_key], where=None)[0]


def submit_many(settings: Settings, specs: Sequence[dict[str, Any]], *, keys: Sequence[str | None] | None = None,
                where: Callable[[int], str] | None = lambda i: f"request {i}") -> list[dict[str, Any]]:
    """Submit several jobs at once, in one transaction: validate every spec (`validate`'s checks; the first
    bad one raises MedganUserError prefixed with `where(i)`, and nothing is written), INSERT every row and
    its event, COMMIT, then publish every message in one pipelined batch.

    `keys[i]` is spec i's idempotency key: a key already used, or repeated within the batch, gives the job
    it names instead of a new one. Returns each spec's job dict (a fan-out's parent's), in order.
    """
    keys = list(keys) if keys is not None else [None] * len(specs)
    if len(keys) != len(specs):
        raise ValueError("submit_many: one key (or None) per spec")
    _check_sqlite_file(settings)  # a session would create the file
    for _ in range(3):  # a key taken by a concurrent submission: read it back and go again
        try:
            jobs, ready, waiting = _insert_all(settings, specs, keys, where)
            break
        except IntegrityError:
            if not any(keys):
                raise
        except (OperationalError, ProgrammingError):
            # Checked only when something failed (two round trips fewer per submission): say why in one line.
            check_database(settings)
            raise
    else:
        raise DatabaseUnavailable("could not record the submission: idempotency keys kept colliding")
    if ready:  # the rows are the truth: what cannot be sent now, the sweeper sends
        _send_or_mark_unsent(settings, ready)
    if waiting:
        dispatch_ready(settings, waiting)
    return jobs


def _insert_all(settings: Settings, specs: Sequence[dict[str, Any]], keys: list[str | None],
                where: Callable[[int], str] | None) -> tuple[list[dict], list[tuple[str, str, int]], list[str]]:
    """One transaction: reuse keyed jobs, validate the others, insert their rows and events. Returns the
    jobs in order, the messages to send after the commit, and the ids whose dependencies must be looked at."""
    now = utcnow()
    with session_scope(settings.db_url) as session:
        existing = _jobs_by_key(session, [k for k in keys if k])
        rows: list[dict[str, Any]] = []
        top: list[int | Job] = []  # per spec: an existing job, or the index of its row in `rows`
        first_of_key: dict[str, int] = {}
        for i, (data, key) in enumerate(zip(specs, keys)):
            if key in existing:
                top.append(existing[key])
                continue
            if key in first_of_key:
                top.append(top[first_of_key[key]])
                continue
            try:
                spec, children = _validated(session, data)
            except MedganUserError as exc:
                if where is None:
                    raise
                raise type(exc)(f"{where(i)}: {exc}") from None
            if key:
                first_of_key[key] = i
            top.append(len(rows))
            rows.extend(_rows_for(spec, children, settings, key, now))
        if rows and len(rows) <= ONE_STATEMENT_ROWS and states.one_statement_path(session):
            # A few rows: rows and events in ONE autocommitted statement (no BEGIN, no second INSERT, no COMMIT
            # round trip). What was read above was read; a key taken meanwhile collides here (IntegrityError).
            with autocommit(settings.db_url) as conn:
                _insert_with_events(conn, rows, now)
        elif rows:
            # Core executemany (no ORM unit of work, no RETURNING): about 4x the ORM's rows/s on PostgreSQL.
            session.connection().execute(insert(Job.__table__), rows)
            session.connection().execute(insert(JobEvent.__table__), [
                {"job_id": r["id"], "from_status": None, "to_status": r["status"], "actor": r["owner"],
                 "reason": "submitted", "at": now} for r in rows])
    # A new job's dict comes from its row (an ORM object per row would cost more than the INSERT).
    jobs = [job_dict(SimpleNamespace(**_NONE, **rows[t]) if isinstance(t, int) else t) for t in top]
    ready = [(r["id"], r["kind"], r["priority"]) for r in rows if r["enqueued_at"] is not None]
    waiting = [r["id"] for r in rows if r["depends_on"] and r["enqueued_at"] is None]
    return jobs, ready, waiting


ONE_STATEMENT_ROWS = 500  # up to this many rows (x ~30 columns, under PostgreSQL's 65,535 parameters) in one INSERT


def _insert_with_events(conn: Any, rows: list[dict[str, Any]], now: datetime) -> None:
    """INSERT the rows and, from what it returns, their "submitted" events: one statement (PostgreSQL), run on
    the driver (`driver_rows`), JSON columns passed as JSON."""
    from psycopg.types.json import Json

    columns = tuple(rows[0])
    params = {f"{k}_{i}": Json(v) if k in _JSON_COLUMNS else v for i, row in enumerate(rows) for k, v in row.items()}
    params["submitted_at"] = now
    driver_rows(conn, _insert_statement(len(rows), columns), params)


_JSON_COLUMNS = frozenset(c.key for c in Job.__table__.columns if isinstance(c.type, JSON))


@functools.lru_cache(maxsize=64)
def _insert_statement(n: int, columns: tuple[str, ...]) -> str:
    """The statement of `_insert_with_events` for n rows, with named parameters (`col_i`), built once per n
    (a multi-row VALUES construct compiled by SQLAlchemy at every call cost 5 ms a submission)."""
    rows = ", ".join("(" + ", ".join(f"%({c}_{i})s" for c in columns) + ")" for i in range(n))
    return (f"WITH made AS (INSERT INTO jobs ({', '.join(columns)}) VALUES {rows} RETURNING id, status, owner) "
            f"INSERT INTO job_events (job_id, from_status, to_status, actor, reason, at) "
            f"SELECT id, NULL, status, owner, 'submitted', CAST(%(submitted_at)s AS timestamp) FROM made")


def _jobs_by_key(session: Session, keys: list[str]) -> dict[str, Job]:
    """The jobs already holding these idempotency keys (one query per 1,000 keys)."""
    out: dict[str, Job] = {}
    unique = sorted(set(keys))
    for i in range(0, len(unique), 1000):
        chunk = unique[i:i + 1000]
        out.update((j.idempotency_key, j) for j in session.scalars(select(Job).where(Job.idempotency_key.in_(chunk))))
    return out


def _rows_for(spec: Any, sweep: list[Any], settings: Settings, key: str | None,
              now: datetime) -> list[dict[str, Any]]:
    """Column values of one job, or of a parent and its children: one per shard of a fanned-out generation,
    or one per point of a sweep (`sweep`, the children's specs).
    A job with nothing to wait for is marked sent (enqueued_at) in the same INSERT; its message follows
    the commit, and the sweeper re-sends it should that message be lost."""
    row = dict(_DEFAULTS, id=new_id(), kind=spec.kind, status=S.QUEUED.value, spec=spec.model_dump(mode="json"),
               name=spec.name, owner=spec.owner, priority=spec.priority, gpus=spec.gpus, queue=queue_for(spec.kind),
               idempotency_key=key, depends_on=list(spec.depends_on), preemptible=spec.preemptible,
               max_attempts=spec.max_attempts or settings.max_attempts, created_at=now, updated_at=now,
               enqueued_at=None if spec.depends_on else now)
    if sweep:
        children = [r for child in sweep for r in _rows_for(child, [], settings, None, now)]
        for child in children:
            child["parent_id"] = row["id"]
    elif isinstance(spec, GenerateSpec) and spec.shards > 1:
        children = [dict(_DEFAULTS, **{c: getattr(child, c) for c in _CHILD_COLUMNS}, id=new_id(), created_at=now,
                         updated_at=now, enqueued_at=None if spec.depends_on else now)
                    for child in plan_children(Job(**row), spec)]
    else:
        return [row]
    # The parent carries no message of its own: it turns RUNNING when its first child is claimed
    # and is finished by whoever finishes its last child (scheduler.fanout).
    row["enqueued_at"] = None
    return [row, *children]


# Every row has the same keys (an executemany needs them) and the job dict made from a row is complete:
# a column a submission does not set gets its model default, and one with only a server-side default is
# left to the database (and reads None in the returned dict).
_DEFAULTS: dict[str, Any] = {
    c.key: c.default.arg if c.default is not None and c.default.is_scalar else None
    for c in Job.__table__.columns if c.default is not None or c.server_default is None
}
_NONE = {c.key: None for c in Job.__table__.columns if c.key not in _DEFAULTS}
_CHILD_COLUMNS = ("kind", "status", "spec", "name", "owner", "priority", "gpus", "queue", "parent_id", "shard_index",
                  "depends_on", "max_attempts", "preemptible")


def resolve_refs(session: Session, data: dict[str, Any]) -> dict[str, Any]:
    """The spec with `source_job` and `depends_on` resolved from ids, unique prefixes or names to job ids."""
    out = dict(data)

    def one(field: str, ref: str) -> str:
        try:
            return resolve_id(session, ref).id
        except NotFound as exc:
            raise SpecError(f"invalid spec: {field} names an unknown job: {exc}") from None
        except MedganUserError as exc:
            raise SpecError(f"invalid spec: {field}: {exc}") from None

    if isinstance(out.get("source_job"), str) and out["source_job"].strip():
        out["source_job"] = one("source_job", out["source_job"])
    if isinstance(out.get("depends_on"), list):
        out["depends_on"] = [one("depends_on", d) if isinstance(d, str) else d for d in out["depends_on"]]
    return out


_SOURCE_KINDS: dict[type, tuple[str, str]] = {
    GenerateSpec: ("train", "the train job to sample from"),
    EnhanceSpec: ("train", "the train job of the model"),
    EvaluateSpec: ("generate", "the generate job whose images to judge"),
}


def _check_references(session: Session, spec: Any) -> None:
    for dep in spec.depends_on:
        if session.get(Job, dep) is None:
            raise SpecError(f"depends_on names an unknown job {dep}")
    source = getattr(spec, "source_job", None)
    if source:
        src = session.get(Job, source)
        if src is None:
            raise SpecError(f"source job {source} does not exist")
        want, what = _SOURCE_KINDS.get(type(spec), ("train", "a train job"))
        if src.kind != want:
            raise SpecError(f"source job {source} is a {src.kind} job; it must be {what}")
        model = (src.spec.get("config") or {}).get("model", "cgan") if src.kind == "train" else None
        if isinstance(spec, GenerateSpec) and model in LEARNED_METHODS:
            raise SpecError(f"source job {source} trained a {model} model; generate samples a cgan/dcgan generator")
        if isinstance(spec, EnhanceSpec) and model != spec.config.method:
            raise SpecError(f"source job {source} trained a {model} model, not the {spec.config.method} "
                            f"that --method {spec.config.method} needs")
        if src.status != S.SUCCEEDED.value and source not in spec.depends_on:
            raise SpecError(f"source job {source} is {src.status}, not SUCCEEDED (or list it in depends_on)")


def _check_gpus(session: Session, gpus: int) -> None:
    if gpus == 0:
        return
    if "host_cards" not in session.info:  # once per transaction: a batch may hold thousands of GPU jobs
        session.info["host_cards"] = host_cards(session)
    hosts = session.info["host_cards"]
    if not hosts:
        return  # no worker has registered yet: nothing to compare with
    most = max(len(c) for c in hosts.values())
    if gpus > most:
        raise SpecError(f"the job asks for {gpus} GPUs but the largest host has {most}")


def dispatch_ready(settings: Settings, job_ids: Sequence[str] | None = None) -> list[str]:
    """Send messages for QUEUED jobs whose dependencies have succeeded (and fail those whose
    dependencies failed). With `job_ids`, only those; else (the sweeper's re-send of lost messages) every
    queued job never sent, and those sent longer ago than `resend_after_seconds` whose queue the broker
    holds no message for: a job waiting behind thousands of others in its queue has not lost its message,
    and sending it again every minute would fill the queue with duplicates."""
    now = utcnow()
    sent: list[tuple[str, str, int]] = []
    with session_scope(settings.db_url) as session:
        if job_ids is not None:  # named by id: the primary key finds them (db.status_is)
            q = select(Job).where(Job.id.in_(list(job_ids)), status_is(S.QUEUED.value))
        else:
            q = select(Job).where(Job.status == S.QUEUED.value)
            stale = now - timedelta(seconds=settings.resend_after_seconds)
            old = session.execute(select(Job.queue).where(Job.status == S.QUEUED.value, Job.enqueued_at < stale)
                                  .distinct()).scalars().all()
            q = q.where(or_(Job.enqueued_at.is_(None),
                            and_(Job.enqueued_at < stale, Job.queue.in_(_empty_queues(settings, old) if old else []))))
        for job in session.execute(q).scalars():
            blocked = _blocked_by(session, job)
            if blocked == "" and is_fanout_parent(job):
                continue  # its children carry the work
            if blocked == "":
                job.enqueued_at = now
                sent.append((job.id, job.kind, job.priority))
            elif blocked is not None:
                _end_blocked(session, job, blocked)
        cascade_blocked(session)
    if sent:
        _send_or_mark_unsent(settings, sent)
    return [s[0] for s in sent]


def dispatch_dependents(settings: Settings, finished: Sequence[str]) -> list[str]:
    """After jobs finished (committed): send the queued jobs that depend on one of them and are ready now, and
    end those whose dependency did not succeed (`dispatch_ready` on exactly those). A worker calls it after
    every job, so it reads only the queued jobs that have dependencies, in one autocommit query, and does
    nothing more when none names a finished job (the common case): the sweeper's `dispatch_ready(settings)`
    re-sends lost messages, not the hot path. It reads after the finish's commit, so a dependent submitted
    meanwhile is seen here or sees the dependency finished in its own dispatch."""
    names = set(finished)
    with autocommit(settings.db_url) as conn:
        rows = conn.execute(select(Job.id, Job.depends_on).where(
            Job.status == S.QUEUED.value, func.json_array_length(Job.depends_on) > 0)).all()
    waiting = [job_id for job_id, deps in rows if names.intersection(deps or [])]
    return dispatch_ready(settings, waiting) if waiting else []


def job_statuses(settings: Settings, job_ids: Sequence[str]) -> dict[str, str]:
    """The status of each of these jobs (by exact id; ids that name no job are absent), in one autocommit
    query: what a waiter reads between wake-ups."""
    with _reading(settings) as session:
        return dict(session.execute(select(Job.id, Job.status).where(Job.id.in_(list(job_ids)))).all())


class DoneListener:
    """LISTEN on `states.DONE_CHANNEL` over a connection of its own (PostgreSQL): every job that reaches a
    terminal status is announced there at its commit, so a waiter wakes at once instead of at its next poll.
    The worker's one-statement finish announces the job itself (`announcement`, `job_from_announcement`):
    its waiter returns it without a read. Any other end is announced by id, and the waiter reads the job on
    the same connection (`connection`, autocommit), whose server process has just sent the announcement. A
    retry announces REOPENED: an end announced before it is void. A retry through this client holds every
    announcement to a read until its REOPENED comes (`hold`); one by another process is void once its
    REOPENED comes, which is within milliseconds of its commit.

    A job committed after the LISTEN (`watch`: what this client submitted since) is certain to be announced
    here when it ends, so a waiter needs no first read of its status (`watching`); the announcements of
    watched jobs are kept until a wait takes them (psycopg keeps those that arrive during a read). Others
    are announced too, but one that ended before the LISTEN is not: a waiter reads their status first."""

    WATCH_MAX = 100_000  # watched ids kept; past that the set starts again (their waiters then read first)

    def __init__(self, db_url: str):
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        self._engine = create_engine(db_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        self.connection: Connection = self._engine.connect()
        self._conn = self.connection.connection.driver_connection  # psycopg's, for LISTEN and its notifies
        self._conn.execute(f"LISTEN {states.DONE_CHANNEL}")
        self._watched: set[str] = set()
        # Jobs announced ended and not yet taken by a wait (watched ones, and those a wait is waiting for), with
        # the finish's announcement of the job for those a wait is waiting for (None: read it).
        self._ended: dict[str, str | None] = {}
        # While this client retries a job (`hold`) and until that job's REOPENED comes, an announcement may be
        # of an end that the retry undid: none is kept as the job then (its waiter reads it).
        self._holding = 0  # retries under way
        self._held: set[str] = set()  # retried jobs whose REOPENED has not come yet
        self._reopened: set[str] = set()  # REOPENED seen while a retry was under way
        # One thread at a time uses the connection (several threads may wait through one Client): the others
        # queue here; what the holder receives for them is kept (watched) or found by their next status read.
        self.lock = threading.RLock()
        self._state = threading.Lock()  # the two sets, changed by submitting threads too

    def watch(self, job_ids: Iterable[str]) -> None:
        """Jobs whose row was committed after this listener's LISTEN (new submissions)."""
        ids = list(job_ids)
        with self._state:
            if len(self._watched) + len(ids) > self.WATCH_MAX:
                self._watched.clear()
                self._ended.clear()
            self._watched.update(ids)

    def watching(self, job_ids: Iterable[str]) -> bool:
        """Whether the end of every one of these jobs will be (or was) announced to this listener."""
        with self._state:
            return all(i in self._watched for i in job_ids)

    def forget(self, job_ids: Iterable[str]) -> None:
        """A waiter has these jobs' end: stop keeping them."""
        with self._state:
            for i in job_ids:
                self._watched.discard(i)
                self._ended.pop(i, None)

    def wait(self, job_ids: set[str], timeout: float) -> set[str]:
        """Block until one of `job_ids` is announced or `timeout` seconds pass; returns those of `job_ids`
        announced so far (empty on a timeout), earlier announcements of watched jobs included. While another
        thread waits on the connection, this one waits for it (at most `timeout`)."""
        deadline = time.monotonic() + timeout
        if not self.lock.acquire(timeout=max(0.0, timeout)):
            return self._taken(job_ids)
        try:
            seen = self._taken(job_ids)
            # Never break out of `notifies()`: psycopg drops the rest of what arrived with the note broken on
            # (the other ends a commit announced, a REOPENED); `stop_after` ends it after those instead.
            while not seen and (left := deadline - time.monotonic()) > 0:
                for note in self._conn.notifies(timeout=left, stop_after=1):
                    self._note(note.payload, job_ids, seen)
            for note in self._conn.notifies(timeout=0):  # the others already waiting in the connection
                self._note(note.payload, job_ids, seen)
            return seen
        finally:
            self.lock.release()

    def hold(self) -> None:
        """A retry by this client begins: until `held_until` names the job and that job's REOPENED has come,
        keep no announcement as a job (its waiter reads it), so that no end the retry undid is returned."""
        with self._state:
            self._holding += 1

    def held_until(self, job_id: str | None) -> None:
        """The retry that `hold` began committed `job_id`'s REOPENED (None: it failed, nothing was sent)."""
        with self._state:
            self._holding -= 1
            if job_id is not None and job_id not in self._reopened:
                self._held.add(job_id)
            if not self._holding:
                self._reopened.clear()

    def announcement(self, job_id: str) -> str | None:
        """The finish's announcement of this job's end (`jobs.job_from_announcement`), if one came while a
        wait was waiting for it and no retry has voided it since; None: read the job."""
        with self._state:
            return self._ended.get(job_id)

    def _taken(self, job_ids: set[str]) -> set[str]:
        with self._state:
            return self._ended.keys() & job_ids

    def _note(self, payload: str, job_ids: set[str], seen: set[str]) -> None:
        job_id, _, rest = payload.partition(" ")
        with self._state:
            if rest == states.REOPENED:  # back in the queue: its end (if we had it) no longer holds
                self._ended.pop(job_id, None)
                self._held.discard(job_id)
                if self._holding:
                    self._reopened.add(job_id)
                seen.discard(job_id)
                return
            if job_id in job_ids:
                self._ended[job_id] = None if self._held or self._holding else rest or None
                seen.add(job_id)
            elif job_id in self._watched:
                self._ended[job_id] = None  # kept short: its waiter reads it

    def close(self) -> None:
        self.connection.close()
        self._engine.dispose()


def done_listener(settings: Settings) -> DoneListener | None:
    """A `DoneListener` on PostgreSQL; None on SQLite, or when it cannot connect (the waiter then polls)."""
    if make_url(settings.db_url).get_backend_name() != "postgresql":
        return None
    try:
        return DoneListener(settings.db_url)
    except Exception as exc:  # noqa: BLE001 - waiting still works, by polling
        log.info("no LISTEN connection (%s); waiting by polling", str(exc).splitlines()[0])
        return None


def _empty_queues(settings: Settings, queues: list[str]) -> list[str]:
    """Those of `queues` the broker holds no message for (all of them when it cannot be asked)."""
    try:
        depths = queue_depths(make_celery(settings), queues)
    except Exception as exc:  # the broker is down: re-send as if everything was lost (the send will say)
        log.warning("could not read the queue depths: %s", exc)
        return list(queues)
    return [q for q, n in depths.items() if n == 0]


def _send_or_mark_unsent(settings: Settings, messages: list[tuple[str, str, int]]) -> None:
    """Send committed jobs' messages; when that fails, mark them never sent, so that the next sweep sends
    them (whatever their queue holds) instead of waiting for them to look lost."""
    try:
        send_jobs(make_celery(settings), messages)
    except Exception as exc:
        log.warning("could not send %d job(s) now (the sweeper sends them): %s", len(messages), exc)
        ids = [m[0] for m in messages]
        with session_scope(settings.db_url) as session:
            for i in range(0, len(ids), 1000):
                session.execute(update(Job).where(Job.id.in_(ids[i:i + 1000]), status_is(S.QUEUED.value))
                                .values(enqueued_at=None).execution_options(synchronize_session=False))


DEPENDENCY_REASON = "dependency "  # the reason of a job ended by its dependency starts so (retry finds them)


def _end_blocked(session: Session, job: Job, reason: str) -> None:
    """A dependency ended without success: a cancelled one cancels the job, anything else fails it."""
    to = S.CANCELLED if reason.endswith(S.CANCELLED.value) else S.FAILED
    states.transition(session, job.id, to, expect=[S.QUEUED], actor="scheduler", reason=reason)
    for child in session.execute(select(Job).where(Job.parent_id == job.id)).scalars():
        states.transition(session, child.id, to, expect=[S.QUEUED], actor="scheduler", reason=reason)


def cascade_blocked(session: Session) -> int:
    """End every queued job whose dependency (transitively) failed or was cancelled; returns how many."""
    ended = 0
    while True:
        # Only jobs that have dependencies: this runs after every finished job, and a queue of thousands of
        # independent jobs must not be read each time (bench_platform's drain).
        rows = session.execute(select(Job).where(Job.status == S.QUEUED.value, Job.parent_id.is_(None),
                                                 func.json_array_length(Job.depends_on) > 0)).scalars()
        newly = 0
        for job in rows:
            blocked = _blocked_by(session, job)
            if blocked:
                _end_blocked(session, job, blocked)
                newly += 1
        ended += newly
        if not newly:
            return ended


def _blocked_by(session: Session, job: Job) -> str | None:
    """'' = ready; None = still waiting; a reason = a dependency failed or was cancelled."""
    for dep_id in job.depends_on or []:
        dep = session.get(Job, dep_id, populate_existing=True)
        if dep is None or dep.status in (S.FAILED.value, S.CANCELLED.value):
            return f"{DEPENDENCY_REASON}{dep_id} {dep.status if dep else 'vanished'}"
        if dep.status != S.SUCCEEDED.value:
            job.message = f"waiting for job {dep_id} ({dep.status})"
            return None
    return ""


_HEX = re.compile(r"^[0-9a-f]+$")


def resolve_id(session: Session, ref: str) -> Job:
    """A job by id, unique id prefix (at least 4 characters) or name (of exactly one top-level job)."""
    ref = str(ref).strip()
    job = session.get(Job, ref) if ref else None
    if job is not None:
        return job
    if _HEX.match(ref) and len(ref) >= C.ID_PREFIX_MIN:
        rows = session.execute(select(Job.id).where(Job.id.like(f"{ref}%")).order_by(Job.id).limit(6)).scalars().all()
        if len(rows) == 1:
            return session.get(Job, rows[0])
        if len(rows) > 1:
            raise MedganUserError(f"job id prefix {ref!r} is ambiguous ({', '.join(rows[:5])}…): give more characters")
    named = session.execute(select(Job.id).where(Job.name == ref, Job.parent_id.is_(None))
                            .order_by(Job.created_at.desc()).limit(6)).scalars().all()
    if len(named) == 1:
        return session.get(Job, named[0])
    if len(named) > 1:
        raise MedganUserError(f"{len(named) if len(named) < 6 else 'several'} jobs are named {ref!r} "
                              f"({', '.join(named[:5])}): use an id")
    if _HEX.match(ref) and len(ref) < C.ID_PREFIX_MIN:
        raise NotFound(f"no job {ref!r}: an id prefix needs at least {C.ID_PREFIX_MIN} characters")
    raise NotFound(f"no job {ref!r}: it does not exist (as an id, a unique id prefix or a job name)")


@contextmanager
def _reading(settings: Settings, conn: Connection | None = None) -> Iterator[Session]:
    """A read-only session (`read_scope`: no transaction round trips), or one on `conn` (an autocommit
    connection the caller holds). The database is checked only when a query fails, to say why in one line
    (`check_database`): two round trips fewer on every read."""
    if conn is not None:
        with Session(bind=conn, expire_on_commit=False) as session:
            yield session
        return
    _check_sqlite_file(settings)  # a session would create the file
    try:
        with read_scope(settings.db_url) as session:
            yield session
    except (OperationalError, ProgrammingError):
        check_database(settings)
        raise


def get_job(settings: Settings, job_id: str, *, conn: Connection | None = None) -> dict[str, Any]:
    """One job with its events, what its science read, its children per status (a fan-out parent) and its
    place in the queue (QUEUED). The row, its events and its read counts are ONE query (`_job_read`); on its
    LISTEN connection (`conn`) a waiter reads a job whose end was announced without what `job_from_announcement`
    needs. A job named by prefix or name is resolved first."""
    with _reading(settings, conn) as session:
        conn = session.connection()
        statement = _job_read(conn.dialect.name)
        found = fetch(conn, statement, {"id": str(job_id).strip()}) or fetch(
            conn, statement, {"id": resolve_id(session, job_id).id})
        return _job_out(found[0], session)


def job_from_announcement(text: str) -> dict[str, Any] | None:
    """The job that the one-statement finish announced (`states.DONE_CHANNEL`: its payload after the id), as
    `get_job` returns it: the same row, events and read counts, the same assembly (`_job_out`); only the row's
    times come as JSON text here. None if the announcement cannot stand for a read (a fan-out parent: its
    children are counted by a query)."""
    data = json.loads(text)
    row = data["row"]
    for column in _TIME_COLUMNS:
        if row.get(column) is not None:
            row[column] = datetime.fromisoformat(row[column])
    return _job_out({**row, "events_": data["events_"], "read_": data["read_"]}, None)


_TIME_COLUMNS = tuple(c.key for c in Job.__table__.columns if isinstance(c.type, DateTime))


def _job_out(found: dict[str, Any], session: Session | None) -> dict[str, Any] | None:
    """A job dict from its read row (the columns, `events_` and `read_`), with the children per status of a
    fan-out parent and the queue place of a QUEUED job, which need `session` (None without one)."""
    row = SimpleNamespace(**found)
    parent, queued = is_fanout_parent(row), row.status == S.QUEUED.value
    if session is None and (parent or queued):
        return None
    out = job_dict(row)
    out["events"] = [{"at": _iso(e["at"]), "from": e["from"], "to": e["to"], "actor": e["actor"],
                      "reason": e["reason"]} for e in sorted(row.events_ or [], key=lambda e: e["n"])]
    # Children per status; only a fan-out parent has any (one query fewer for every other job).
    out["children"] = parent_progress(session, row.id)[2] if parent else {}
    out["read"] = _read_summary([(m["name"], m["value"]) for m in sorted(row.read_ or [], key=lambda m: m["n"])])
    if queued:
        out["queue_position"], out["waiting_reason"] = queue_position(session, row)
    return out


@functools.lru_cache(maxsize=4)
def _job_read(dialect: str) -> Any:
    """SELECT a job's row with its events and its `read.*` metric rows as two JSON arrays (json_agg on
    PostgreSQL, json_group_array on SQLite; the shapes of states.EVENT_JSON/READ_JSON, which the finish's
    announcement builds too), by exact id: one round trip instead of four ORM queries."""
    agg, obj = ((func.json_agg, func.json_build_object) if dialect == "postgresql"
                else (func.json_group_array, func.json_object))

    def shape(table: Any, pairs: tuple[tuple[str, str], ...]) -> Any:
        return obj(*[x for key, column in pairs for x in (key, table.c[column])])

    events = select(agg(shape(JobEvent.__table__, states.EVENT_JSON), type_=JSON)) \
        .where(JobEvent.job_id == Job.id).scalar_subquery()
    read = select(agg(shape(MetricPoint.__table__, states.READ_JSON), type_=JSON)) \
        .where(MetricPoint.job_id == Job.id, MetricPoint.name.like(f"{C.READ_PREFIX}%")).scalar_subquery()
    return select(Job.__table__, events.label("events_"), read.label("read_")).where(Job.id == bindparam("id"))


def _iso(at: str) -> str:
    """A timestamp from a JSON aggregate ('2026-01-31T08:00:00.5' on PostgreSQL, '2026-01-31 08:00:00.500000'
    on SQLite) in the form every other time of a job dict has (`datetime.isoformat`)."""
    return datetime.fromisoformat(at).isoformat()


def _read_summary(rows: Sequence[tuple[str, float]]) -> dict[str, Any] | None:
    """What the job's science read, from its metric rows `read.*` (name, value) in the order written: files,
    images and files skipped by reason."""
    if not rows:
        return None
    out: dict[str, Any] = {"files_read": 0, "images": 0, "skipped": {}}
    for name, value in rows:
        key = name[len(C.READ_PREFIX):]
        if key.startswith("skipped."):
            out["skipped"][key[len("skipped."):]] = int(value)
        elif key in ("files_read", "images"):
            out[key] = int(value)
    return out


def read_line(read: dict[str, Any]) -> str:
    """'12 files -> 40 images; skipped 2 (non_finite 1, truncated 1)'."""
    text = f"{read['files_read']} files -> {read['images']} images"
    if read["skipped"]:
        text += f"; skipped {sum(read['skipped'].values())} (" + ", ".join(
            f"{k} {v}" for k, v in sorted(read["skipped"].items())) + ")"
    return text


def queue_position(session: Session, job: Job) -> tuple[int, str]:
    """1-based place among queued jobs of its queue, in the order workers take them (priority, age)."""
    ahead = session.execute(
        select(func.count()).where(
            Job.status == S.QUEUED.value,
            Job.queue == job.queue,
            or_(Job.priority < job.priority, (Job.priority == job.priority) & (Job.created_at < job.created_at)),
        )
    ).scalar_one()
    reason = job.message or (f"{ahead} job(s) ahead in {job.queue}" if ahead else "next in line")
    return ahead + 1, reason


def _choices(values: str | Iterable[str] | None, known: Iterable[str], what: str, upper: bool = False) -> list[str]:
    """'A,B' or ['A', 'B'] checked against the known values (one line naming them otherwise)."""
    if values is None:
        return []
    items = [v for part in ([values] if isinstance(values, str) else values) for v in str(part).split(",")]
    items = [v.strip().upper() if upper else v.strip() for v in items if v.strip()]
    known = list(known)
    bad = [v for v in items if v not in known]
    if bad:
        raise MedganUserError(f"unknown {what} {', '.join(map(repr, bad))}; choose from {', '.join(known)}")
    return items


_SPAN = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)$")
_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str | datetime | None, *, now: datetime | None = None) -> datetime | None:
    """'90m', '2h', '3d', '1w' (that long ago), 'today', or an ISO date/time (UTC) → naive UTC datetime."""
    if text is None or isinstance(text, datetime):
        return text
    now = now or utcnow()
    t = text.strip().lower()
    m = _SPAN.match(t)
    if m:
        return now - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    if t == "today":
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise MedganUserError(f"not a time: {text!r} (say 90m, 2h, 3d, 1w, today or 2026-01-31T08:00)") from None
    if when.tzinfo is not None:
        from datetime import timezone

        when = when.astimezone(timezone.utc).replace(tzinfo=None)
    return when


def job_query(*, status: Any = None, kind: Any = None, owner: str | None = None, name: str | None = None,
              since: Any = None, until: Any = None, include_children: bool = False) -> Any:
    """The SELECT of jobs matching the filters, validated (unknown status/kind: MedganUserError).
    `name` matches exactly, or as a glob when it holds * or ?."""
    q = select(Job)
    statuses = _choices(status, [s.value for s in S if s is not S.PREEMPTED], "status", upper=True)
    kinds = _choices(kind, KINDS, "kind")
    if statuses:
        q = q.where(Job.status.in_(statuses))
    if kinds:
        q = q.where(Job.kind.in_(kinds))
    if owner:
        q = q.where(Job.owner == owner)
    if name:
        if "*" in name or "?" in name:
            pattern = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            q = q.where(Job.name.like(pattern.replace("*", "%").replace("?", "_"), escape="\\"))
        else:
            q = q.where(Job.name == name)
    if since is not None:
        q = q.where(Job.created_at >= parse_when(since))
    if until is not None:
        q = q.where(Job.created_at < parse_when(until))
    if not include_children:
        q = q.where(Job.parent_id.is_(None))
    return q


def list_jobs(settings: Settings, *, limit: int = 50, **filters: Any) -> list[dict[str, Any]]:
    """The newest `limit` jobs matching `job_query`'s filters."""
    q = job_query(**filters).order_by(Job.created_at.desc()).limit(limit)
    check_database(settings)
    with session_scope(settings.db_url) as session:
        return [job_dict(j) for j in session.execute(q).scalars()]


def job_dict(job: Job) -> dict[str, Any]:
    dur = None
    if job.started_at:
        dur = ((job.finished_at or utcnow()) - job.started_at).total_seconds()
    return {
        "id": job.id, "kind": job.kind, "status": job.status, "name": job.name, "owner": job.owner,
        "priority": job.priority, "gpus": job.gpus, "queue": job.queue, "attempt": job.attempt,
        "lease_losses": job.lease_losses, "preemptions": job.preemptions, "preemptible": job.preemptible,
        "max_attempts": job.max_attempts, "progress": round(job.progress, 4), "step": job.progress_step,
        "total": job.progress_total, "message": job.message, "parent_id": job.parent_id,
        "shard_index": job.shard_index, "depends_on": job.depends_on, "lease_owner": job.lease_owner,
        "created_at": job.created_at.isoformat(), "started_at": job.started_at and job.started_at.isoformat(),
        "finished_at": job.finished_at and job.finished_at.isoformat(), "duration_s": dur, "spec": job.spec,
    }


def cancel(settings: Settings, job_id: str, actor: str = "cli") -> dict[str, Any]:
    """QUEUED → CANCELLED now; RUNNING → CANCELLING (the worker stops it within seconds). Cascades to
    children, and to the queued jobs that depend on it (CANCELLED, reason "dependency … CANCELLED")."""
    check_database(settings)
    with session_scope(settings.db_url) as session:
        job = _cancel_one(session, resolve_id(session, job_id), actor)
        return job_dict(job)


def cancel_where(settings: Settings, actor: str = "cli", **filters: Any) -> list[dict[str, Any]]:
    """Cancel every unfinished job matching `job_query`'s filters (at least one filter); returns them."""
    if not any(v for v in filters.values()):
        raise MedganUserError("name a job, or at least one filter (--status, --kind, --owner, --name, --since)")
    q = job_query(**filters).where(Job.status.in_([S.QUEUED.value, S.RUNNING.value])).order_by(Job.created_at)
    check_database(settings)
    with session_scope(settings.db_url) as session:
        return [job_dict(_cancel_one(session, job, actor)) for job in session.execute(q).scalars().all()]


def _cancel_one(session: Session, job: Job, actor: str) -> Job:
    for child in session.execute(select(Job).where(Job.parent_id == job.id)).scalars():
        states.request_cancel(session, child.id, actor=actor)
    if job.parent_id is None and session.execute(
        select(func.count()).where(Job.parent_id == job.id)
    ).scalar_one():
        states.transition(session, job.id, S.CANCELLED, expect=[S.QUEUED, S.RUNNING], actor=actor,
                          reason="cancelled by user")
    else:
        states.request_cancel(session, job.id, actor=actor)
    session.flush()
    cascade_blocked(session)
    return session.get(Job, job.id, populate_existing=True)


def retry(settings: Settings, job_id: str, actor: str = "cli") -> dict[str, Any]:
    """FAILED/CANCELLED → QUEUED, keeping its id, outputs so far and checkpoints (training resumes)."""
    check_database(settings)
    with session_scope(settings.db_url) as session:
        job = resolve_id(session, job_id)
        if job.status == S.CANCELLING.value:
            raise MedganUserError(f"job {job.id} is still CANCELLING (writing its checkpoint); retry it once it is "
                                  f"CANCELLED (`medgan jobs wait {job.id}`)")
        if job.status not in (S.FAILED.value, S.CANCELLED.value):
            raise MedganUserError(f"job {job.id} is {job.status}; only FAILED or CANCELLED jobs can be retried")
        job_id = job.id
        if session.execute(select(func.count()).where(Job.parent_id == job_id)).scalar_one():
            # A fan-out parent: only its failed shards run again; it is RUNNING while they do.
            states.transition(session, job_id, S.QUEUED, expect=[S(job.status)], actor=actor, reason="retried")
            states.transition(session, job_id, S.RUNNING, expect=[S.QUEUED], actor=actor,
                              values={"message": None})
            to_send = retry_failed_children(session, job_id, actor)
        else:
            states.transition(session, job_id, S.QUEUED, expect=[S(job.status)], actor=actor,
                              reason="retried by user", values={"attempt": 0, "message": None})
            to_send = [job_id]
        to_send += _requeue_dependants(session, job_id, actor)
    dispatch_ready(settings, to_send)
    return get_job(settings, job_id)


def _requeue_dependants(session: Session, job_id: str, actor: str) -> list[str]:
    """The jobs that ended because `job_id` (or one of them, transitively) did not succeed go back to the
    queue too; they wait for it again (a retried pipeline step brings its later steps back)."""
    ended = session.execute(select(Job).where(Job.status.in_([S.FAILED.value, S.CANCELLED.value]),
                                              Job.message.like(f"{DEPENDENCY_REASON}%"))).scalars().all()
    todo, again = [job_id], []
    while todo:
        current = todo.pop()
        for job in ended:
            if current in (job.depends_on or []) and job.id not in again:
                states.transition(session, job.id, S.QUEUED, expect=[S(job.status)], actor=actor,
                                  reason=f"retried with {job_id}", values={"attempt": 0, "message": None})
                for child in session.execute(select(Job).where(Job.parent_id == job.id)).scalars():
                    states.transition(session, child.id, S.QUEUED, expect=[S(child.status)], actor=actor,
                                      reason=f"retried with {job_id}", values={"attempt": 0})
                again.append(job.id)
                todo.append(job.id)
    return again


def list_artifacts(settings: Settings, job_id: str) -> list[dict[str, Any]]:
    check_database(settings)
    with session_scope(settings.db_url) as session:
        job = resolve_id(session, job_id)
        rows = session.execute(select(Artifact).where(Artifact.job_id == job.id).order_by(Artifact.key)).scalars()
        return [{"key": a.key, "size": a.size, "sha256": a.sha256, "kind": a.kind} for a in rows]


def metric_series(settings: Settings, job_id: str) -> dict[str, list[tuple[int | None, float]]]:
    with session_scope(settings.db_url) as session:
        job = resolve_id(session, job_id)
        rows = session.execute(
            select(MetricPoint.name, MetricPoint.step, MetricPoint.value)
            .where(MetricPoint.job_id == job.id).order_by(MetricPoint.id)
        ).all()
    out: dict[str, list[tuple[int | None, float]]] = {}
    for name, step, value in rows:
        out.setdefault(name, []).append((step, value))
    return out


def latest_metrics(settings: Settings, job_id: str, prefix: str = "") -> dict[str, float]:
    """The newest value of each of a job's metric series (names starting with `prefix`)."""
    with session_scope(settings.db_url) as session:
        job = resolve_id(session, job_id)
        newest = (select(func.max(MetricPoint.id)).where(MetricPoint.job_id == job.id)
                  .group_by(MetricPoint.name))
        if prefix:
            newest = newest.where(MetricPoint.name.like(f"{prefix}%"))
        rows = session.execute(select(MetricPoint.name, MetricPoint.value).where(MetricPoint.id.in_(newest))).all()
    return {name: value for name, value in rows}


def log_chunks(settings: Settings, job_id: str, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
    """A job's live-log chunks with id > `after`, oldest first: {id, attempt, seq, at, text}."""
    with session_scope(settings.db_url) as session:
        rows = session.execute(select(LogChunk).where(LogChunk.job_id == job_id, LogChunk.id > after)
                               .order_by(LogChunk.id).limit(limit)).scalars()
        return [{"id": c.id, "attempt": c.attempt, "seq": c.seq, "at": c.at.isoformat(), "text": c.text}
                for c in rows]
