"""`jobs.get_job` reads a job's row, its events and its `read.*` counts in one statement (JSON aggregates that
differ by dialect). The control is the ORM's own reading of the same rows: both must agree exactly, on SQLite
and on PostgreSQL, for timestamps whose text forms differ between the databases (no fraction, a fraction with
trailing zeros, a full one), for events written out of id order in time, and for a job named by prefix."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from scheduler import jobs as J
from scheduler.db import Job, JobEvent, MetricPoint, session_scope

AT = datetime(2026, 1, 31, 8, 0, 0)
TIMES = [AT, AT + timedelta(microseconds=500_000), AT + timedelta(seconds=1, microseconds=123_456),
         AT + timedelta(microseconds=10)]  # the last is the newest id but an older time: order is by id


def _orm_view(settings, job_id: str) -> tuple[list[dict], dict | None]:
    """Events and read counts as the ORM reads them (the relationship's id order, datetime.isoformat)."""
    with session_scope(settings.db_url) as s:
        job = s.get(Job, job_id)
        events = [{"at": e.at.isoformat(), "from": e.from_status, "to": e.to_status, "actor": e.actor,
                   "reason": e.reason} for e in job.events]
        rows = s.execute(select(MetricPoint.name, MetricPoint.value).where(
            MetricPoint.job_id == job_id, MetricPoint.name.like("read.%")).order_by(MetricPoint.id)).all()
    read = None
    if rows:
        read = {"files_read": 0, "images": 0, "skipped": {}}
        for name, value in rows:
            key = name[len("read."):]
            if key.startswith("skipped."):
                read["skipped"][key[len("skipped."):]] = int(value)
            else:
                read[key] = int(value)
    return events, read


@pytest.mark.parametrize("with_read", [True, False])
def test_one_statement_read_matches_the_orm(db_settings, with_read):
    settings = db_settings
    job_id = J.submit(settings, {"kind": "noop"})["id"]
    with session_scope(settings.db_url) as s:
        for i, at in enumerate(TIMES):
            s.add(JobEvent(job_id=job_id, from_status="QUEUED", to_status="QUEUED", at=at, actor=f"a{i}",
                           reason=None if i % 2 else f"reason {i} with 'quotes' and ünïcode"))
        if with_read:
            for name, value in [("read.files_read", 12), ("read.images", 40), ("read.skipped.truncated", 1),
                                ("read.skipped.non_finite", 2), ("loss_g", 0.5)]:
                s.add(MetricPoint(job_id=job_id, name=name, value=value))
    events, read = _orm_view(settings, job_id)
    got = J.get_job(settings, job_id)
    assert got["events"] == events and len(events) == len(TIMES) + 1
    assert got["read"] == read
    assert (read is not None) == with_read
    assert got["id"] == job_id and got["status"] == "QUEUED" and got["queue_position"] == 1
    assert J.get_job(settings, job_id[:6]) == got  # a unique prefix resolves to the same read
