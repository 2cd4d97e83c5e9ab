"""The job state machine: the one module that changes a job's status.

Every change is a compare-and-set UPDATE (`WHERE id = ? AND status IN (...)`) plus an event
row, in the caller's transaction. A CAS that matches nothing returns None (someone else won
the race: a duplicate delivery, a concurrent cancel); an edge the machine does not have
raises IllegalTransition.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Iterable

from sqlalchemy import delete, func, select, tuple_, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from scheduler import constants as C
from scheduler.db import STATUS_BY_ID, GpuLease, Job, JobEvent, Status, driver_rows, status_is, utcnow
from scheduler.errors import IllegalTransition

S = Status
EDGES: dict[Status, frozenset[Status]] = {
    S.QUEUED: frozenset({S.RUNNING, S.CANCELLED, S.FAILED}),
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLING, S.CANCELLED, S.QUEUED, S.PREEMPTED}),
    S.PREEMPTED: frozenset({S.QUEUED}),  # within the transaction that requeues a preempted attempt
    S.CANCELLING: frozenset({S.CANCELLED, S.FAILED, S.SUCCEEDED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset({S.QUEUED}),  # an explicit `jobs retry`
    S.CANCELLED: frozenset({S.QUEUED}),  # an explicit `jobs retry`
}


def check_edge(src: Status, dst: Status) -> None:
    if dst not in EDGES[src]:
        raise IllegalTransition(f"a job cannot go from {src.value} to {dst.value}")


def transition(
    session: Session,
    job_id: str,
    to: Status,
    *,
    expect: Iterable[Status],
    actor: str | None = None,
    reason: str | None = None,
    values: dict[str, Any] | None = None,
    guard: Iterable[Any] = (),
    holds_cards: bool = True,
) -> Job | None:
    """Move `job_id` from one of `expect` to `to`; returns the updated job, or None if the CAS lost.

    `values` are extra columns set in the same UPDATE (lease owner, timestamps...); `guard` are
    extra WHERE conditions of the compare-and-set (the lease owner, say). `holds_cards=False` says the caller
    knows the job holds no card lease (the worker whose claim leased none: every lease is taken by a claim and
    freed when that attempt ends), so ending it has no lease row to delete.

    One compare-and-set UPDATE per expected status, in order, until one matches: the event's from-status is
    then exactly what the row held when it changed (a read before the UPDATE could see a status that a
    concurrent cancel changed in between), and the usual case costs one statement. Where the database has
    UPDATE … RETURNING (PostgreSQL, SQLite 3.35+) the updated row comes back with it, no second read.
    """
    expected = list(expect)
    for src in expected:
        check_edge(src, to)
    now = utcnow()
    cols: dict[str, Any] = {"status": to.value, "updated_at": now}
    if to.terminal:
        cols.update(finished_at=now, lease_owner=None, lease_expires_at=None)
    if to is S.SUCCEEDED:
        cols["progress"] = 1.0
    if to is S.QUEUED:
        cols.update(lease_owner=None, lease_expires_at=None, enqueued_at=now, cancel_requested=False,
                    preempt_requested=None)
    if reason is not None and to in (S.FAILED, S.CANCELLED, S.QUEUED):
        cols["message"] = reason
    cols.update(values or {})
    guard = list(guard)
    returning = session.get_bind().dialect.update_returning
    job: Job | None = None
    for src in expected:
        stmt = update(Job).where(Job.id == job_id, status_is(src.value), *guard).values(**cols)
        if returning:
            job = session.execute(stmt.returning(Job), execution_options={
                "synchronize_session": False, "populate_existing": True}).scalars().first()
        elif session.execute(stmt.execution_options(synchronize_session=False)).rowcount == 1:
            job = session.get(Job, job_id, populate_existing=True)
        if job is not None:
            break
    else:
        return None
    session.add(JobEvent(job_id=job_id, from_status=src.value, to_status=to.value, actor=actor, reason=reason, at=now))
    if to.terminal:
        notify_done(session, job_id)
    elif src.terminal:
        notify_done(session, job_id, REOPENED)  # a retry: what waiters were told of its end is void
    if (to.terminal or to is S.QUEUED) and holds_cards:
        # Every way a job ends (or loses its run) frees its cards, in the same transaction.
        session.execute(delete(GpuLease).where(GpuLease.job_id == job_id))
    session.flush()
    return job


def claim(
    session: Session, job_id: str, *, owner: str, lease_seconds: float, gpus: list[tuple[str, int]] | None = None
) -> Job | None:
    """QUEUED → RUNNING for exactly one claimant; leases `gpus` (host, index) in the same transaction.

    A duplicate delivery, or a job cancelled meanwhile (or one that does not exist), finds nothing to claim
    and gets None.
    Cards already leased to another job make the primary key collide: the caller's transaction
    fails as a whole (IntegrityError) and nothing is claimed.
    """
    now = utcnow()
    claimed = transition(
        session,
        job_id,
        S.RUNNING,
        expect=[S.QUEUED],
        actor=owner,
        reason=f"cards {','.join(f'{h}:{i}' for h, i in gpus)}" if gpus else None,
        values={
            "lease_owner": owner,
            "lease_expires_at": now + timedelta(seconds=lease_seconds),
            "started_at": now,
            "attempt": Job.attempt + 1,
            "fence": Job.fence + 1,  # the new attempt's token: every older attempt's effects are refused now
            "message": None,
        },
    )
    if claimed is None:
        return None
    for host, index in gpus or []:
        session.add(GpuLease(host=host, gpu_index=index, job_id=job_id, worker=owner, leased_at=now))
    session.flush()
    return claimed


def holder_guard(owner: str, fence: int | None) -> list[Any]:
    """WHERE conditions of an effect of one attempt: the job is live, held by `owner` under token `fence`."""
    guard = [Job.lease_owner == owner, status_is(S.RUNNING.value, S.CANCELLING.value)]
    return guard if fence is None else [*guard, Job.fence == fence]


def fence_holds(session: Session, job_id: str, owner: str, fence: int) -> bool:
    """Whether the attempt (`owner`, `fence`) is the job's current one, as a no-op conditional UPDATE: in the
    caller's transaction, it also takes the job row's write lock, so no requeue or new claim can slip in
    between this check and the effect it guards (commit both together)."""
    res = session.execute(
        update(Job).where(Job.id == job_id, *holder_guard(owner, fence))
        .values(fence=Job.fence).execution_options(synchronize_session=False)
    )
    return res.rowcount == 1


def renew_lease(session: Session, job_id: str, owner: str, lease_seconds: float, fence: int | None = None) -> bool:
    """Extend the lease if `owner` (under token `fence`) still holds it; False means the job was taken away
    (requeued, cancelled, claimed again)."""
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, *holder_guard(owner, fence))
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    return res.rowcount == 1


def renew_leases(session: Session, owner: str, fences: dict[str, int], lease_seconds: float
                 ) -> dict[str, tuple[bool, str | None]]:
    """Extend, in one UPDATE, the leases `owner` still holds of the jobs `fences` names (job id → the token of
    its attempt): a worker's shared heartbeat. Returns each renewed job's (cancel_requested, preempt_requested);
    a job missing from it was taken away (requeued, cancelled, claimed again).

    The rows are locked in id order (on PostgreSQL a `SELECT … ORDER BY id FOR UPDATE` under the UPDATE), the
    order the sweeper's requeue takes them in too (`requeue_expired`): the two never wait for each other in a
    cycle, whichever number of jobs they share."""
    if not fences:
        return {}
    guard = [tuple_(Job.id, Job.fence).in_(sorted(fences.items())), *holder_guard(owner, None)]
    held = select(Job.id).where(*guard).order_by(Job.id).with_for_update()
    stmt = (update(Job).where(Job.id.in_(held.scalar_subquery()), *guard)
            .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
            .execution_options(synchronize_session=False))
    if session.get_bind().dialect.update_returning:
        rows = session.execute(stmt.returning(Job.id, Job.cancel_requested, Job.preempt_requested)).all()
    else:
        session.execute(stmt)
        rows = session.execute(select(Job.id, Job.cancel_requested, Job.preempt_requested).where(*guard)).all()
    return {job_id: (bool(cancel), preempt) for job_id, cancel, preempt in rows}


def finish(
    session: Session, job_id: str, to: Status, *, owner: str, reason: str | None = None, fence: int | None = None,
    holds_cards: bool = True,
) -> Job | None:
    """RUNNING/CANCELLING → terminal, only for the lease holder under its token (a worker that lost its
    lease cannot finish). `holds_cards=False`: the holder's claim leased no card (see `transition`)."""
    return transition(
        session, job_id, to, expect=[S.RUNNING, S.CANCELLING], actor=owner, reason=reason,
        guard=holder_guard(owner, fence), holds_cards=holds_cards,
    )


def requeue_preempted(session: Session, job_id: str, *, owner: str, fence: int, reason: str) -> Job | None:
    """A preempted attempt that wrote its final checkpoint: RUNNING → PREEMPTED → QUEUED (two events, one
    transaction; nobody sees PREEMPTED as a status). Counted in `preemptions`, not as a failure."""
    job = transition(session, job_id, S.PREEMPTED, expect=[S.RUNNING], actor=owner, reason=reason,
                     guard=holder_guard(owner, fence), values={"preemptions": Job.preemptions + 1})
    if job is None:
        return None
    return transition(session, job_id, S.QUEUED, expect=[S.PREEMPTED], actor=owner,
                      reason=f"requeued after preemption {job.preemptions}; resumes from its final checkpoint")


def request_cancel(session: Session, job_id: str, *, actor: str | None = None) -> Job | None:
    """QUEUED → CANCELLED at once; RUNNING → CANCELLING (the worker stops it); terminal: unchanged."""
    job = session.get(Job, job_id)
    if job is None:
        return None
    status = Status(job.status)
    if status is S.QUEUED:
        return transition(session, job_id, S.CANCELLED, expect=[S.QUEUED], actor=actor, reason="cancelled by user")
    if status is S.RUNNING:
        return transition(
            session, job_id, S.CANCELLING, expect=[S.RUNNING], actor=actor,
            reason="cancel requested", values={"cancel_requested": True},
        )
    return job


def requeue_expired(session: Session, now: datetime, *, actor: str,
                    max_lease_losses: int = C.MAX_LEASE_LOSSES) -> list[tuple[str, Status]]:
    """Jobs whose lease expired: back to QUEUED, or FAILED after `max_lease_losses` lost leases (a job that
    takes its worker down every time must stop somewhere). A lost lease is not a failure: it counts in
    `lease_losses`, never against `max_attempts`. Returns (id, new status)."""
    # Locked in id order, skipping rows locked now (a heartbeat renewing them: they are not expired for long):
    # the order a heartbeat's `renew_leases` locks in, so neither waits for the other in a cycle.
    rows = session.execute(
        select(Job.id, Job.lease_losses, Job.status, Job.lease_owner, Job.fence).where(
            Job.status.in_([S.RUNNING.value, S.CANCELLING.value]), Job.lease_expires_at < now
        ).order_by(Job.id).with_for_update(skip_locked=True)
    ).all()
    out: list[tuple[str, Status]] = []
    for job_id, losses, status, lease_owner, fence in rows:
        src = Status(status)
        why = f"lease of {lease_owner} expired"
        if src is S.CANCELLING:
            to, reason = S.CANCELLED, f"{why} while cancelling"
        elif losses + 1 >= max_lease_losses:
            to, reason = S.FAILED, f"{why}; gave up after {losses + 1} lost leases"
        else:
            to, reason = S.QUEUED, f"{why}; requeued (lost lease {losses + 1}, not a failure)"
        # CAS on the old lease owner, token and expiry too, so a lease renewed in between is left alone.
        job = transition(
            session, job_id, to, expect=[src], actor=actor, reason=reason,
            guard=[Job.lease_owner == lease_owner, Job.fence == fence, Job.lease_expires_at < now],
            values={"lease_losses": Job.lease_losses + 1},
        )
        if job is not None:
            out.append((job_id, to))
    return out


# -- PostgreSQL's one-statement hot path -----------------------------------------------------------------
# A CPU job's claim and its finish are each ONE autocommitted statement on PostgreSQL (data-modifying CTEs:
# the row's compare-and-set, its event row, a fan-out parent started or a finish announced, in one round
# trip and one commit). Anything they do not cover (no row matched: a duplicate, a cancel, a stale token, a
# job that needs cards) falls back to `claim`/`finish` above, which decide what happened; SQLite always does.

# NOTIFY channel of the ends of jobs (and of their undoing), sent at the commit that makes them. The payload
# starts with the job's id, then:
#   nothing      the job reached a terminal status (a waiter reads it);
#   "{...}"      the one-statement finish's announcement: the job as `jobs.get_job` reads it, its row, events
#                and read counts (`jobs.job_from_announcement`), so that its waiter needs no read; just the id
#                instead when that text would not fit in a NOTIFY (NOTIFY_MAX bytes);
#   "reopened"   a terminal job went back to the queue (a retry): an earlier announcement of its end is void.
DONE_CHANNEL = "medgan_job_done"
REOPENED = "reopened"
NOTIFY_MAX = 8000  # PostgreSQL refuses a NOTIFY payload of this many bytes or more
# A job read's JSON shapes, (key, column) pairs: its events, and its `read.*` metric rows (what its science
# read). One definition for `jobs._job_read` and for the finish's announcement below.
EVENT_JSON = (("n", "id"), ("at", "at"), ("from", "from_status"), ("to", "to_status"), ("actor", "actor"),
              ("reason", "reason"))
READ_JSON = (("n", "id"), ("name", "name"), ("value", "value"))


def _json_object_sql(pairs: tuple[tuple[str, str], ...], alias: str) -> str:
    return "json_build_object(" + ", ".join(f"'{key}', {alias}.{column}" for key, column in pairs) + ")"


_EVENT_COLUMNS = ", ".join(column for _, column in EVENT_JSON)

_EVENT = "INSERT INTO job_events (job_id, from_status, to_status, actor, reason, at) "
# What a run needs of its claimed row (worker.runtime.JobRun): the one-statement claim returns only these.
CLAIMED_COLUMNS = ("id", "kind", "status", "attempt", "fence", "spec", "parent_id", "shard_index", "lease_owner",
                   "lease_expires_at", "started_at")
CLAIM_CPU_SQL = f"""
WITH claimed AS (
    UPDATE jobs SET status = '{S.RUNNING.value}', updated_at = %(now)s, lease_owner = %(owner)s, lease_expires_at = %(expires)s,
           started_at = %(now)s, attempt = attempt + 1, fence = fence + 1, message = NULL
     WHERE id = %(job_id)s AND {STATUS_BY_ID} = '{S.QUEUED.value}' AND gpus = 0
    RETURNING {", ".join(CLAIMED_COLUMNS)}
), claim_event AS (
    {_EVENT}SELECT id, '{S.QUEUED.value}', '{S.RUNNING.value}', CAST(%(owner)s AS varchar), NULL, CAST(%(now)s AS timestamp)
      FROM claimed
), parent AS (
    UPDATE jobs SET status = '{S.RUNNING.value}', updated_at = %(now)s, started_at = %(now)s, message = NULL
     WHERE id = (SELECT parent_id FROM claimed) AND {STATUS_BY_ID} = '{S.QUEUED.value}'
    RETURNING id
), parent_event AS (
    {_EVENT}SELECT id, '{S.QUEUED.value}', '{S.RUNNING.value}', CAST(%(owner)s AS varchar), 'first shard started',
           CAST(%(now)s AS timestamp) FROM parent
)
SELECT * FROM claimed
"""

# The announcement is the job as its waiter would read it after this commit (`jobs.get_job`): the new row, and
# the events so far with this one (a CTE's own writes are not in the statement's snapshot: the new event comes
# from its RETURNING).
# The dependents' read (d.status, json_array_length) is what the partial index ix_jobs_waiting_dependents
# (migration 0004) holds: the few queued jobs that wait for others.
FINISH_CPU_SQL = f"""
WITH finished AS (
    UPDATE jobs SET status = CAST(%(to)s AS varchar), updated_at = %(now)s, finished_at = %(now)s, lease_owner = NULL,
           lease_expires_at = NULL, progress = COALESCE(CAST(%(progress)s AS float8), progress),
           message = COALESCE(CAST(%(message)s AS text), message)
     WHERE id = %(job_id)s AND {STATUS_BY_ID} = '{S.RUNNING.value}' AND lease_owner = %(owner)s AND fence = %(fence)s
    RETURNING *
), finish_event AS (
    {_EVENT}SELECT id, '{S.RUNNING.value}', CAST(%(to)s AS varchar), CAST(%(owner)s AS varchar), CAST(%(reason)s AS text),
           CAST(%(now)s AS timestamp) FROM finished
    RETURNING {_EVENT_COLUMNS}
), announced AS (
    SELECT f.id, f.id || ' ' || CAST(json_build_object(
               'row', row_to_json(f),
               'events_', (SELECT json_agg({_json_object_sql(EVENT_JSON, "e")}) FROM (
                              SELECT {_EVENT_COLUMNS} FROM job_events WHERE job_id = f.id
                              UNION ALL SELECT {_EVENT_COLUMNS} FROM finish_event) e),
               'read_', (SELECT json_agg({_json_object_sql(READ_JSON, "m")}) FROM metrics m
                          WHERE m.job_id = f.id AND m.name LIKE '{C.READ_PREFIX}%%')) AS text) AS text
      FROM finished f
), notified AS (
    SELECT pg_notify('{DONE_CHANNEL}', CASE WHEN octet_length(a.text) < {NOTIFY_MAX} THEN a.text ELSE a.id END)
      FROM announced a
)
SELECT f.id, f.parent_id, (SELECT count(*) FROM notified) AS notified,
       ARRAY(SELECT d.id FROM jobs d WHERE d.status = '{S.QUEUED.value}' AND json_array_length(d.depends_on) > 0
              AND CAST(d.depends_on AS jsonb) ? CAST(%(job_id)s AS text) ORDER BY d.id) AS dependents
  FROM finished f
"""


def one_statement_path(conn_or_session: Any) -> bool:
    """Whether the one-statement claim/finish applies on this connection's database (PostgreSQL)."""
    bind = conn_or_session.get_bind() if isinstance(conn_or_session, Session) else conn_or_session
    return bind.dialect.name == "postgresql"


def claim_cpu(conn: Connection, job_id: str, *, owner: str, lease_seconds: float) -> Job | None:
    """QUEUED → RUNNING for a job that needs no card, its event and (a fan-out shard's) parent's start, in ONE
    statement on an autocommit connection (PostgreSQL). Returns the claimed row as a detached Job with the
    columns a run needs (CLAIMED_COLUMNS; the others are not loaded), or None when
    nothing matched: not there, not QUEUED, or it needs cards (the caller takes the general `claim` path,
    which tells these apart)."""
    now = utcnow()
    rows = driver_rows(conn, CLAIM_CPU_SQL, {"job_id": job_id, "owner": owner, "now": now,
                                             "expires": now + timedelta(seconds=lease_seconds)})
    return Job(**rows[0]) if rows else None


def finish_cpu(conn: Connection, job_id: str, to: Status, *, owner: str, fence: int,
               reason: str | None = None) -> tuple[str | None, list[str]] | None:
    """RUNNING → terminal for the holder of a job whose claim leased no card, with its event and a NOTIFY on
    DONE_CHANNEL, in ONE autocommitted statement (PostgreSQL) that also reads the queued jobs depending on it.
    Returns (parent id, dependents' ids), or None when the compare-and-set matched nothing (CANCELLING, or a
    stale token: the caller takes `finish`, which tells these apart). The dependents are read in the same
    snapshot as the finish: one submitted within that statement's few microseconds is sent by the sweeper
    (its row is never-sent), not lost."""
    check_edge(S.RUNNING, to)
    if not to.terminal:
        raise IllegalTransition(f"finish_cpu ends a job; {to.value} is not terminal")
    message = reason if reason is not None and to in (S.FAILED, S.CANCELLED) else None
    rows = driver_rows(conn, FINISH_CPU_SQL, {
        "job_id": job_id, "to": to.value, "owner": owner, "fence": fence, "now": utcnow(), "reason": reason,
        "message": message, "progress": 1.0 if to is S.SUCCEEDED else None})
    return (rows[0]["parent_id"], list(rows[0]["dependents"] or [])) if rows else None


def notify_done(session: Session, job_id: str, what: str = "") -> None:
    """Announce a terminal status (or, `what` = REOPENED, its undoing) on DONE_CHANNEL (PostgreSQL; sent at the
    caller's commit). Waiters (`Client.wait`) wake on it and read the job; on SQLite they poll."""
    if one_statement_path(session):
        session.execute(select(func.pg_notify(DONE_CHANNEL, f"{job_id} {what}" if what else job_id)))
