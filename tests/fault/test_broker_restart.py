"""Restart the broker (a private Redis with nothing on disk) while jobs wait in it, and submit while it
is down: every queued message is lost, yet every job finishes, once. The database is the truth;
the sweeper re-sends what the broker lost."""

from __future__ import annotations

import time

from sqlalchemy import func, select

from scheduler.client import Client
from scheduler.db import Job, JobEvent, session_scope
from tests.conftest import wait_for

QUEUED_BEFORE = 12
SUBMITTED_WHILE_DOWN = 3


def _statuses(settings, ids: list[str]) -> dict[str, str]:
    with session_scope(settings.db_url) as s:
        return dict(s.execute(select(Job.id, Job.status).where(Job.id.in_(ids))).all())


def test_broker_restart_loses_messages_not_jobs(cluster, private_redis, figures):
    settings = cluster.settings
    client = Client(settings)
    cluster.start_sweeper()
    worker = cluster.start_worker("w0", "--queues", "medgan.generate", "--concurrency", "1")
    ids = [client.submit("noop", sleep=0.4)["id"] for _ in range(QUEUED_BEFORE)]
    wait_for(lambda: list(_statuses(settings, ids).values()).count("SUCCEEDED") >= 1, timeout=60,
             what="the first job to finish")
    r = private_redis.client()
    in_broker = sum(r.llen(k) for k in r.keys("medgan.generate*"))
    assert in_broker >= 3, f"expected messages waiting in the broker, found {in_broker}"

    private_redis.kill()  # every waiting message is gone
    t_down = time.monotonic()
    down_ids = []
    for _ in range(SUBMITTED_WHILE_DOWN):
        job = client.submit("noop", sleep=0.1)  # committed, but the send fails: the row waits for the sweeper
        assert job["status"] == "QUEUED"
        down_ids.append(job["id"])
    time.sleep(max(0.0, 1.5 - (time.monotonic() - t_down)))
    private_redis.start()  # same port, empty (--save ''): what it holds from now on, the sweeper re-sent

    all_ids = ids + down_ids
    wait_for(lambda: all(v == "SUCCEEDED" for v in _statuses(settings, all_ids).values()), timeout=120,
             interval=0.5, what="every job to finish after the broker restart")
    with session_scope(settings.db_url) as s:
        runs = dict(s.execute(select(JobEvent.job_id, func.count()).where(
            JobEvent.job_id.in_(all_ids), JobEvent.to_status == "RUNNING").group_by(JobEvent.job_id)).all())
        attempts = dict(s.execute(select(Job.id, Job.attempt).where(Job.id.in_(all_ids))).all())
    duplicates = sum(n - 1 for n in runs.values())
    assert all(runs.get(j) == 1 for j in all_ids), runs
    assert set(attempts.values()) == {1}
    lost = sum(v != "SUCCEEDED" for v in _statuses(settings, all_ids).values())
    assert worker.proc.poll() is None, "the worker survives the broker restart"
    figures.add("Redis broker SIGKILL + restart, jobs queued", tried=len(all_ids), survived=len(all_ids) - lost,
                lost=lost, duplicates=duplicates,
                notes=f"{in_broker} messages lost in the broker, {SUBMITTED_WHILE_DOWN} jobs submitted while it "
                      "was down; all re-sent by the sweeper and run once")
