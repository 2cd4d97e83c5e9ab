"""Client.wait / wait_all: on PostgreSQL a waiter wakes on the NOTIFY a job's end sends at its commit (the worker's
one-statement finish, or any other way a job ends: a cancel here), long before its next poll; on SQLite it
polls. Either way it returns the full job once it ended, and names what is still going on a timeout."""

from __future__ import annotations

import threading
import time

import pytest

from scheduler import jobs as J
from scheduler.client import Client
from scheduler.errors import NotFound

LONG_POLL = 20.0  # on PostgreSQL only the NOTIFY can end a wait this early


@pytest.fixture
def settings(db_settings):
    return db_settings


def _poll(settings) -> float:
    return LONG_POLL if settings.db_url.startswith("postgresql") else 0.1


def _later(delay: float, fn) -> threading.Thread:
    def go() -> None:
        time.sleep(delay)
        fn()

    t = threading.Thread(target=go)
    t.start()
    return t


def test_wait_wakes_when_the_worker_finishes_the_job(settings):
    from worker.app import handler_for
    from worker.gpus import Inventory
    from worker.runtime import WorkerContext, execute_job

    client = Client(settings)
    job_id = client.submit("noop")["id"]
    ctx = WorkerContext.create(settings, Inventory(host="h", cards=()))
    t = _later(0.3, lambda: execute_job(ctx, job_id, handler_for("noop")))
    t0 = time.monotonic()
    job = client.wait(job_id, timeout=60, poll=_poll(settings))
    took = time.monotonic() - t0
    t.join()
    assert job.status == "SUCCEEDED" and job.id == job_id and job.events[-1]["to"] == "SUCCEEDED"
    assert 0.25 < took < 5.0, took  # not before the finish; on PostgreSQL far sooner than the 20 s poll


def test_wait_all_wakes_on_any_way_a_job_ends(settings):
    client = Client(settings)
    a, b = client.submit("noop")["id"], client.submit("noop")["id"]
    t = _later(0.3, lambda: (J.cancel(settings, a), J.cancel(settings, b)))
    t0 = time.monotonic()
    done = client.wait_all([b[:8], a], timeout=60, poll=_poll(settings))  # a unique prefix works too
    took = time.monotonic() - t0
    t.join()
    assert [j.id for j in done] == [b, a] and {j.status for j in done} == {"CANCELLED"}
    assert 0.25 < took < 5.0, took


def test_wait_times_out_and_names_the_job_and_refuses_an_unknown_one(settings):
    client = Client(settings)
    job_id = client.submit("noop")["id"]
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=f"job {job_id} still QUEUED"):
        client.wait(job_id, timeout=0.5, poll=0.1)
    assert time.monotonic() - t0 < 5.0
    with pytest.raises(NotFound):
        client.wait("nosuchjob", timeout=1)
