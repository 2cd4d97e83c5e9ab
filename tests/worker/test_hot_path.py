"""The per-job path of a worker, in process (no Celery): what it must still do after it was made cheaper.

After a job ends, exactly its dependents are looked at (sent when ready, ended when their dependency failed,
transitively); a transition's event names the status the row really left; a job that writes no file makes no
work dir, and one that does gets its lease file with the last renewal's deadline. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from sqlalchemy import select

from scheduler import constants as C
from scheduler import jobs as J
from scheduler import states
from scheduler.db import Job, JobEvent, Status, session_scope
from worker.app import handler_for
from worker.gpus import Inventory
from worker.runtime import JobRun, WorkerContext, execute_job

S = Status


@pytest.fixture
def settings(db_settings):
    return db_settings


def _ctx(settings) -> WorkerContext:
    return WorkerContext.create(settings, Inventory(host="h", cards=()))


def _job(settings, job_id: str) -> Job:
    with session_scope(settings.db_url) as s:
        return s.get(Job, job_id)


def _messages(settings) -> list[str] | None:
    """Job ids of the messages waiting in the Redis broker (None for the embedded broker)."""
    if not settings.broker.startswith("redis"):
        return None
    import redis

    r = redis.Redis.from_url(settings.broker)
    return [json.loads(raw)["headers"]["argsrepr"].strip("[]'") for key in r.keys("medgan.*")
            for raw in r.lrange(key, 0, -1)]


def _drain_broker(settings) -> None:
    if settings.broker.startswith("redis"):
        import redis

        r = redis.Redis.from_url(settings.broker)
        for key in r.keys("medgan.*"):
            r.delete(key)


def test_a_finished_job_sends_exactly_its_ready_dependents(settings):
    a, d = J.submit(settings, {"kind": "noop"})["id"], J.submit(settings, {"kind": "noop"})["id"]
    b = J.submit(settings, {"kind": "noop", "depends_on": [a]})["id"]  # ready once a succeeds
    c = J.submit(settings, {"kind": "noop", "depends_on": [a, d]})["id"]  # still waits for d
    e = J.submit(settings, {"kind": "noop", "depends_on": [d]})["id"]  # not a's: never looked at
    _drain_broker(settings)
    assert [_job(settings, x).enqueued_at for x in (b, c, e)] == [None, None, None]  # the control: none sent yet
    assert execute_job(_ctx(settings), a, handler_for("noop")) == "SUCCEEDED"
    assert _job(settings, b).enqueued_at is not None
    assert _job(settings, c).enqueued_at is None and d in _job(settings, c).message  # "waiting for job d"
    assert _job(settings, e).enqueued_at is None
    sent = _messages(settings)
    if sent is not None:
        assert sent == [b]  # one message, for the one ready dependent


def test_a_failed_job_ends_its_dependents_transitively(settings):
    a = J.submit(settings, {"kind": "noop", "fail": "boom"})["id"]
    other = J.submit(settings, {"kind": "noop"})["id"]
    b = J.submit(settings, {"kind": "noop", "depends_on": [a]})["id"]
    c = J.submit(settings, {"kind": "noop", "depends_on": [b]})["id"]
    f = J.submit(settings, {"kind": "noop", "depends_on": [other]})["id"]
    assert execute_job(_ctx(settings), a, handler_for("noop")) == "FAILED"
    for job_id, dep in ((b, a), (c, b)):
        job = _job(settings, job_id)
        assert job.status == "FAILED" and job.message == f"{J.DEPENDENCY_REASON}{dep} FAILED"
    assert _job(settings, f).status == "QUEUED"  # the control: another job's dependent stays
    assert _job(settings, a).message == "boom"


def test_an_event_names_the_status_the_row_left(settings):
    """finish expects RUNNING or CANCELLING: the event says which one the row held, and the returned job is
    the updated row (token and attempt incremented by the claim, status and message by the finish)."""
    ids = [J.submit(settings, {"kind": "noop"})["id"] for _ in range(2)]
    for job_id, cancel in zip(ids, (False, True)):
        with session_scope(settings.db_url) as s:
            claimed = states.claim(s, job_id, owner="w", lease_seconds=30)
            assert (claimed.status, claimed.attempt, claimed.fence, claimed.lease_owner) == ("RUNNING", 1, 1, "w")
        if cancel:
            with session_scope(settings.db_url) as s:
                assert states.request_cancel(s, job_id).status == "CANCELLING"
        with session_scope(settings.db_url) as s:
            done = states.finish(s, job_id, S.CANCELLED, owner="w", fence=1, reason="stopped")
            assert (done.status, done.message, done.lease_owner) == ("CANCELLED", "stopped", None)
            assert states.finish(s, job_id, S.CANCELLED, owner="w", fence=1) is None  # nothing left to finish
        with session_scope(settings.db_url) as s:
            events = [(e.from_status, e.to_status) for e in s.execute(
                select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)).scalars()]
        middle = [("RUNNING", "CANCELLING")] if cancel else []
        assert events == [(None, "QUEUED"), ("QUEUED", "RUNNING"), *middle,
                          ("CANCELLING" if cancel else "RUNNING", "CANCELLED")]


def test_work_dir_only_when_used_and_its_lease_file_carries_the_last_renewal(settings):
    ctx = _ctx(settings)
    noop = J.submit(settings, {"kind": "noop"})["id"]
    assert execute_job(ctx, noop, handler_for("noop")) == "SUCCEEDED"
    assert not (ctx.work_root / noop).exists()  # no file written: no folder made

    other = J.submit(settings, {"kind": "noop"})["id"]
    with session_scope(settings.db_url) as s:
        job = states.claim(s, other, owner=ctx.name, lease_seconds=settings.lease_seconds)
        s.expunge(job)
    run = JobRun(ctx, job, [])
    assert not (ctx.work_root / other).exists()
    renewal = time.time() - 5.0
    run.renewed(renewal)  # before the folder exists: remembered, written when it is made
    deadline = renewal + settings.lease_seconds * (1 - C.SELF_FENCE_MARGIN)
    assert run.lease_file.parent == run.work_dir == ctx.work_root / other
    assert abs(os.stat(run.lease_file).st_mtime - deadline) < 0.01
    run.renewed(renewal + 2.0)  # once it exists, every renewal moves the deadline
    assert abs(os.stat(run.lease_file).st_mtime - (deadline + 2.0)) < 0.01
    run.remove_work_dir()
    assert not (ctx.work_root / other).exists()


def test_a_cpu_job_costs_two_statements_on_postgres_and_a_gpu_job_still_goes_through_admission(settings):
    """One no-op job, claim to dependents. PostgreSQL: two autocommitted statements, the claim (UPDATE …
    RETURNING, its event, a parent's start: one CTE) and the finish (UPDATE, event, NOTIFY and the dependents'
    read: one CTE). SQLite, the general path: the claim's read of the job (admission needs it), its UPDATE …
    RETURNING and event, the finish's UPDATE and event (no lease rows to delete: its claim leased none), the
    dependents' read. The control: a job asking for a card that this worker does not have waits."""
    from sqlalchemy import event

    from scheduler.db import _autocommit_engine, get_engine
    from worker.runtime import _claim

    ctx = _ctx(settings)
    job_id = J.submit(settings, {"kind": "noop"})["id"]
    verbs: list[str] = []

    def seen(_conn, _cursor, statement, *_args) -> None:
        verbs.append(statement.split(None, 1)[0].upper())

    # The database's engine, and the claim's asynchronous-commit pool, an engine of its own.
    engines = [get_engine(settings.db_url), _autocommit_engine(settings.db_url, False)]
    engines = [e for i, e in enumerate(engines) if e not in engines[:i]]  # SQLite: the same engine
    for engine in engines:
        event.listen(engine, "before_cursor_execute", seen)
    try:
        assert execute_job(ctx, job_id, handler_for("noop")) == "SUCCEEDED"
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", seen)
    if settings.db_url.startswith("postgresql"):
        assert verbs == ["WITH", "WITH"], verbs
        assert _job(settings, job_id).fence == 1  # the claim's token, as the general path gives it
    else:
        assert verbs == ["SELECT", "UPDATE", "INSERT", "UPDATE", "INSERT", "SELECT"], verbs

    gpu_job = J.submit(settings, {"kind": "noop", "gpus": 1})["id"]
    assert _claim(ctx, gpu_job) == "busy"
    job = _job(settings, gpu_job)
    assert job.status == "QUEUED" and job.attempt == 0 and "GPU" in job.message


def test_only_the_claim_skips_the_wait_for_the_disk(postgres_url):
    """PostgreSQL: the claim's connections commit asynchronously (a claim lost in a server crash is a job
    QUEUED again); submission, finish and everything else wait for the WAL flush."""
    from sqlalchemy import text

    from scheduler.db import autocommit

    with autocommit(postgres_url, durable=False) as conn:
        assert conn.execute(text("SHOW synchronous_commit")).scalar() == "off"
    with autocommit(postgres_url) as conn:
        assert conn.execute(text("SHOW synchronous_commit")).scalar() == "on"
    with session_scope(postgres_url) as s:
        assert s.execute(text("SHOW synchronous_commit")).scalar() == "on"
