"""The worker's shared heartbeat and the sweeper's requeue, run against each other on a real PostgreSQL: both
lock job rows in id order (the sweeper skipping rows a renewal holds), so neither waits for the other in a
cycle, and every job ends each round either renewed (its run goes on) or requeued (its run is told it lost
the lease), never both and never neither."""

from __future__ import annotations

import random
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select, update

import worker.runtime as rt
from scheduler import jobs as J
from scheduler import migrate, states
from scheduler.db import Job, session_scope, utcnow
from scheduler.settings import Settings
from worker.gpus import Inventory

N_JOBS, ROUNDS = 40, 25


@pytest.fixture
def settings(env_home, postgres_url, redis_url):
    st = Settings(home=env_home, database_url=postgres_url, broker_url=redis_url, lease_seconds=30.0,
                  heartbeat_seconds=3600.0)  # beats are driven by the test
    migrate.upgrade(st)
    return st


def _claim(ctx: rt.WorkerContext, job_id: str) -> rt.JobRun:
    job, cards = rt._claim(ctx, job_id)
    return rt.JobRun(ctx, job, cards)


def test_heartbeat_and_sweeper_never_deadlock_and_agree(settings):
    ctx = rt.WorkerContext.create(settings, Inventory(host="h", cards=()), name="w@h")
    ids = [j["id"] for j in J.submit_many(settings, [{"kind": "noop"}] * N_JOBS)]
    beat = rt.Heartbeat(ctx)  # not started: beat() is called below, against the sweeper
    runs = {}
    for job_id in ids:
        runs[job_id] = _claim(ctx, job_id)
        beat.add(runs[job_id])
    rng = random.Random(16)
    outcomes = {"renewed": 0, "requeued": 0}
    for _ in range(ROUNDS):
        with session_scope(settings.db_url) as s:  # every lease expired: the sweeper may take any of them
            s.execute(update(Job).where(Job.id.in_(ids)).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        errors: list[BaseException] = []
        start = threading.Barrier(2)

        def heartbeat() -> None:
            try:
                start.wait()
                time.sleep(rng.uniform(0, 0.01))
                beat.beat()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        def sweeper() -> None:
            try:
                start.wait()
                time.sleep(rng.uniform(0, 0.01))
                with session_scope(settings.db_url) as s:
                    states.requeue_expired(s, utcnow(), actor="sweeper", max_lease_losses=10_000)
                    time.sleep(0.02)  # its row locks held a while: a renewal meanwhile has to wait for them
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=heartbeat), threading.Thread(target=sweeper)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads), "heartbeat and sweeper still waiting: a deadlock"
        assert not errors, errors  # a deadlock PostgreSQL detected would be an error here
        with session_scope(settings.db_url) as s:
            rows = {r.id: r for r in s.execute(select(Job).where(Job.id.in_(ids))).scalars()}
        now = utcnow()
        for job_id, run in list(runs.items()):
            row = rows[job_id]
            if row.status == "RUNNING":
                assert row.lease_owner == "w@h" and row.fence == run.fence and row.lease_expires_at > now
                assert run.stop_reason is None, (job_id, run.stop_reason)
                outcomes["renewed"] += 1
            else:
                assert row.status == "QUEUED" and row.lease_owner is None, (job_id, row.status)
                assert run.stop_reason == "lease lost", (job_id, run.stop_reason)
                outcomes["requeued"] += 1
                beat.remove(run)
                runs[job_id] = _claim(ctx, job_id)  # the next round's attempt, under a new token
                beat.add(runs[job_id])
    # Both sides won races: the test did put them against each other.
    assert outcomes["renewed"] > 0 and outcomes["requeued"] > 0, outcomes
