"""Statements that name their job by id find it by the primary key, whatever PostgreSQL's statistics say.

The trap (scheduler.db, STATUS_BY_ID): `WHERE id = :id AND status = 'QUEUED'` is served from an index led by
status when the statistics call that status rare. Here the table is in `bench.bench_platform.stale_statistics`'
state: analysed while every job had ended, then thousands queued, the busy table's usual moment after a bulk
submission (the benchmark's "claim among 10,000 queued" row times the same trap). A control first shows the
trap is armed (the plain form does scan a status index); then every statement the job lifecycle runs on one
job is captured as it runs and explained with its own parameters, and none may scan an index led by status.
"""

from __future__ import annotations

import re

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from bench.bench_platform import connect, stale_statistics
from scheduler import migrate, states
from scheduler.db import Job, Status, autocommit, session_scope
from scheduler.settings import Settings

S = Status
QUEUED_ROWS = 3000
STATUS_INDEXES = re.compile(r"ix_jobs_status\w*")


def _plan(raw, sql: str, params) -> str:
    return "\n".join(r[0] for r in raw.execute("EXPLAIN " + sql, params).fetchall())


@pytest.fixture
def armed(postgres_url):
    settings = Settings(database_url=postgres_url)
    migrate.upgrade(settings)
    stale_statistics(postgres_url, QUEUED_ROWS)
    with connect(postgres_url, autocommit=True) as raw:
        control = _plan(raw, "SELECT id FROM jobs WHERE id = %(id)s AND status = 'QUEUED'", {"id": "q00000001"})
        assert STATUS_INDEXES.search(control), f"the trap did not arm, this test would prove nothing:\n{control}"
        yield settings, raw


def test_the_lifecycle_of_one_job_never_scans_a_status_index(armed):
    settings, raw = armed
    url = settings.db_url
    seen: list[tuple[str, object]] = []

    def capture(_conn, _cursor, statement, parameters, _context, _many):
        if re.search(r"\bjobs\b", statement) and statement.lstrip().upper().startswith(("UPDATE", "SELECT", "WITH")):
            seen.append((statement, parameters))

    event.listen(Engine, "before_cursor_execute", capture)
    try:
        # The one-statement path of a CPU job: claim, finish.
        with autocommit(url, durable=False) as conn:
            job = states.claim_cpu(conn, "q00000001", owner="w1", lease_seconds=60)
        assert job is not None and job.fence == 2
        with autocommit(url) as conn:
            assert states.finish_cpu(conn, "q00000001", S.SUCCEEDED, owner="w1", fence=2) is not None
        # The general path (SQLite's, card jobs', a cancel's): claim, heartbeat, cancel, finish, requeue.
        with session_scope(url) as s:
            claimed = states.claim(s, "q00000002", owner="w1", lease_seconds=60)
            assert claimed is not None
            fence = claimed.fence
        with session_scope(url) as s:
            assert states.renew_lease(s, "q00000002", "w1", 60, fence=fence)
            assert set(states.renew_leases(s, "w1", {"q00000002": fence}, 60)) == {"q00000002"}
            assert states.fence_holds(s, "q00000002", "w1", fence)
        with session_scope(url) as s:
            assert states.request_cancel(s, "q00000003") is not None  # QUEUED -> CANCELLED
            assert states.request_cancel(s, "q00000002") is not None  # RUNNING -> CANCELLING
        with session_scope(url) as s:
            assert states.finish(s, "q00000002", S.CANCELLED, owner="w1", fence=fence, holds_cards=False) is not None
        with session_scope(url) as s:
            assert states.transition(s, "q00000002", S.QUEUED, expect=[S.CANCELLED], actor="retry") is not None
    finally:
        event.remove(Engine, "before_cursor_execute", capture)

    assert len(seen) >= 10, seen
    bad = []
    for statement, params in seen:
        plan = _plan(raw, statement, params)
        if STATUS_INDEXES.search(plan):
            bad.append(f"{statement}\n{plan}")
    assert not bad, "statements that scan a status index for one job:\n\n" + "\n\n".join(bad)
    with session_scope(url) as s:
        assert s.get(Job, "q00000001").status == S.SUCCEEDED.value
