"""The one-statement finish announces the job with its end (PostgreSQL: states.DONE_CHANNEL), so that its waiter
returns it without reading it again (the round trip's last database hop, bench/bench_platform.py).

An announcement stands for a read only if it IS the read: each way the finish ends a job (succeeded, failed with
a reason, with what its science read) is compared field by field with `get_job` after the commit. A control shows
the comparison can fail (one more row of what the job read, and its read is no longer its announcement). Where the job does not fit in a
NOTIFY the announcement is its id alone, and the waiter reads; a retry voids an announced end, so a wait for the
retried job returns the new attempt's end.
"""

from __future__ import annotations

import threading
import time

import pytest

from bench.bench_platform import connect
from scheduler import jobs as J
from scheduler import states
from scheduler.client import Client
from scheduler.db import MetricPoint, session_scope
from worker.app import handler_for
from worker.gpus import Inventory
from worker.runtime import JobRun, WorkerContext, execute_job


@pytest.fixture
def settings(pg_settings):
    return pg_settings


@pytest.fixture
def listening(settings):
    """A LISTEN of our own on the announcements, and what it has received (job id -> the rest of each payload)."""
    conn = connect(settings.db_url, autocommit=True)
    conn.execute(f"LISTEN {states.DONE_CHANNEL}")

    def received(job_id: str) -> list[str]:
        got = []
        for note in conn.notifies(timeout=2.0, stop_after=50):
            jid, _, rest = note.payload.partition(" ")
            if jid == job_id:
                got.append(rest)
                break
        return got

    yield received
    conn.close()


def _run(settings, job_id: str, handler=None) -> str:
    ctx = WorkerContext.create(settings, Inventory(host="h", cards=()))
    return execute_job(ctx, job_id, handler or handler_for("noop"))


def _reads_science(run: JobRun) -> None:
    for name, value in (("read.files_read", 3), ("read.images", 7), ("read.skipped.truncated", 1),
                        ("loss", 0.5)):
        run.metric(name, value)


CASES = {
    "succeeded": ({}, None, "SUCCEEDED"),
    "failed with a reason": ({"fail": "the scan is truncated"}, None, "FAILED"),
    "with what its science read": ({}, _reads_science, "SUCCEEDED"),
}


@pytest.mark.parametrize("case", CASES)
def test_the_announcement_is_the_job_as_a_read_returns_it(settings, listening, case):
    fields, handler, status = CASES[case]
    job_id = Client(settings).submit("noop", **fields)["id"]
    assert _run(settings, job_id, handler) == status
    (rest,) = listening(job_id)
    assert rest.startswith("{"), rest[:80]  # the job itself, not the bare id
    announced, read = J.job_from_announcement(rest), J.get_job(settings, job_id)
    assert announced == read
    assert announced["status"] == status and announced["events"][-1]["to"] == status
    if handler is _reads_science:
        assert announced["read"] == {"files_read": 3, "images": 7, "skipped": {"truncated": 1}}
    # Control: the comparison can fail. One more row of what the job read, and its read is not the announcement.
    with session_scope(settings.db_url) as s:
        s.add(MetricPoint(job_id=job_id, name="read.files_read", value=99.0))
    assert J.get_job(settings, job_id) != announced


def test_a_job_too_large_for_a_notify_is_announced_by_its_id_and_read(settings, listening, monkeypatch):
    """A spec of 9,000 characters does not fit in PostgreSQL's 8,000-byte payload: the finish still commits and
    announces the bare id, and the waiter reads the job."""
    client = Client(settings)
    warm = client.submit("noop")["id"]
    J.cancel(settings, warm)
    client.wait(warm, timeout=10)  # listening from here on
    reason = "x" * 9000
    job_id = client.submit("noop", fail=reason)["id"]
    reads: list[str] = []
    real = J.get_job
    monkeypatch.setattr(J, "get_job", lambda s, i, **kw: reads.append(i) or real(s, i, **kw))
    threading.Thread(target=lambda: (time.sleep(0.3), _run(settings, job_id))).start()
    job = client.wait(job_id, timeout=60, poll=20.0)
    assert job.status == "FAILED" and job.message == reason[:1000]
    assert reads == [job_id]
    assert listening(job_id) == [""]  # the id alone


def test_a_wait_returns_the_announced_job_without_reading_it(settings, monkeypatch):
    client = Client(settings)
    warm = client.submit("noop")["id"]
    J.cancel(settings, warm)
    client.wait(warm, timeout=10)  # listening from here on
    reads: list[str] = []
    real = J.get_job
    monkeypatch.setattr(J, "get_job", lambda s, i, **kw: reads.append(i) or real(s, i, **kw))
    monkeypatch.setattr(J, "job_statuses", lambda s, ids: pytest.fail("a watched job needs no status read"))
    job_id = client.submit("noop")["id"]
    threading.Thread(target=lambda: (time.sleep(0.3), _run(settings, job_id))).start()
    job = client.wait(job_id, timeout=60, poll=20.0)
    assert job.status == "SUCCEEDED" and [e["to"] for e in job.events] == ["QUEUED", "RUNNING", "SUCCEEDED"]
    assert reads == []
    assert job == client._job(real(settings, job_id))


def test_an_announced_failure_does_not_end_the_wait_for_the_job_this_client_retried(settings):
    """The job fails on a worker while nobody waits (its announcement carries the FAILED job), is retried by this
    client, and fails again: the wait returns the second failure, not the first one's announcement."""
    client = Client(settings)
    warm = client.submit("noop")["id"]
    J.cancel(settings, warm)
    client.wait(warm, timeout=10)
    job_id = client.submit("noop", fail="on purpose")["id"]
    assert _run(settings, job_id) == "FAILED"
    time.sleep(0.2)  # the announcement has reached the client's connection
    assert client.retry(job_id).status == "QUEUED"
    threading.Thread(target=lambda: (time.sleep(0.3), _run(settings, job_id))).start()
    job = client.wait(job_id, timeout=60, poll=20.0)
    assert job.status == "FAILED"
    assert [e["to"] for e in job.events] == ["QUEUED", "RUNNING", "FAILED", "QUEUED", "RUNNING", "FAILED"]
