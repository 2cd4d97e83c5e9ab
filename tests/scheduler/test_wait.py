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


def _run_now(settings, job_id: str) -> None:
    from worker.app import handler_for
    from worker.gpus import Inventory
    from worker.runtime import WorkerContext, execute_job

    assert execute_job(WorkerContext.create(settings, Inventory(host="h", cards=())), job_id,
                       handler_for("noop")) == "SUCCEEDED"


def test_a_job_submitted_after_the_listen_is_waited_for_without_a_first_read(settings, monkeypatch):
    """Once a client listens, what it submits is announced to it when it ends, even while it waits for
    something else or for nothing: those waits return at the announcement (on PostgreSQL long before the
    20 s poll), and need no status read before it (the announcement is the only way they can see the end)."""
    client = Client(settings)
    warm = client.submit("noop")["id"]
    J.cancel(settings, warm)
    client.wait(warm, timeout=10, poll=_poll(settings))  # the listener exists from here on (PostgreSQL)
    a, b = client.submit("noop")["id"], client.submit("noop")["id"]
    _run_now(settings, b)  # b ends while nobody waits
    reads: list[list[str]] = []
    real = J.job_statuses
    monkeypatch.setattr(J, "job_statuses", lambda s, ids: reads.append(list(ids)) or real(s, ids))
    t = _later(0.3, lambda: _run_now(settings, a))
    t0 = time.monotonic()
    assert client.wait(a, timeout=60, poll=_poll(settings)).status == "SUCCEEDED"  # b's end is announced meanwhile
    assert client.wait(b, timeout=60, poll=_poll(settings)).status == "SUCCEEDED"
    took = time.monotonic() - t0
    t.join()
    assert 0.25 < took < 5.0, took
    if settings.db_url.startswith("postgresql"):
        assert reads == []  # both were watched: no first read, no poll
    else:
        assert reads  # SQLite polls


def test_a_keyed_resubmission_of_an_old_job_is_read_not_awaited(settings):
    """An idempotency key that names a job made before the client listened returns that job, which may have
    ended already (its announcement long gone): the wait reads it instead of waiting for an announcement."""
    old = Client(settings)
    first = old.submit("noop", idempotency_key="k-old")["id"]
    _run_now(settings, first)
    client = Client(settings)
    warm = client.submit("noop")["id"]
    J.cancel(settings, warm)
    client.wait(warm, timeout=10, poll=_poll(settings))  # listening from here on
    again = client.submit("noop", idempotency_key="k-old")
    assert again["id"] == first and again["status"] == "SUCCEEDED"
    t0 = time.monotonic()
    assert client.wait(first, timeout=60, poll=LONG_POLL).status == "SUCCEEDED"
    assert time.monotonic() - t0 < 5.0  # read at once, not after a 20 s poll
    many = client.submit_many([{"kind": "noop", "idempotency_key": "k-old"}])
    assert many[0].id == first
    assert client.wait_all([first], timeout=60, poll=LONG_POLL)[0].status == "SUCCEEDED"
    assert time.monotonic() - t0 < 5.0


def test_an_end_announced_before_a_retry_does_not_end_the_wait_for_the_retried_job(settings):
    """A watched job fails while nobody waits (its end is announced and kept), is retried, and only then
    waited for: the wait returns the retried attempt's end, not the QUEUED job the stale announcement names."""
    client = Client(settings)
    warm = client.submit("noop")["id"]
    J.cancel(settings, warm)
    client.wait(warm, timeout=10, poll=_poll(settings))  # listening from here on (PostgreSQL)
    job_id = client.submit("noop")["id"]
    J.cancel(settings, job_id)  # ends while nobody waits: announced
    time.sleep(0.2)
    assert client.retry(job_id).status == "QUEUED"
    t = _later(0.3, lambda: _run_now(settings, job_id))
    job = client.wait(job_id, timeout=60, poll=_poll(settings))
    t.join()
    assert job.status == "SUCCEEDED", job.status


def test_threads_sharing_a_client_each_get_their_own_job(settings):
    """Four threads submit through one Client and wait at once; each gets its own job, ended, while a worker
    runs them all (on PostgreSQL the waits share one LISTEN connection, one thread at a time)."""
    client = Client(settings)
    warm = client.submit("noop")["id"]
    J.cancel(settings, warm)
    client.wait(warm, timeout=10, poll=0.2)
    got: dict[int, str] = {}
    ids: dict[int, str] = {}
    errors: list[BaseException] = []

    def one(k: int) -> None:
        try:
            ids[k] = client.submit("noop")["id"]
            got[k] = client.wait(ids[k], timeout=60, poll=0.2).status
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(ids) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    for k in sorted(ids):
        _run_now(settings, ids[k])
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert got == {k: "SUCCEEDED" for k in range(4)}


def test_ends_announced_together_reach_every_waiter(pg_settings):
    """Several ends committed at once arrive in one packet. Each reaches its waiter: the listener takes every note
    of the packet (psycopg drops the rest of a packet when its `notifies()` is left early), so the second
    waiter wakes at once, not at its next poll. Control: the ends are really sent in one packet here."""
    from bench.bench_platform import connect
    from scheduler import states

    ids = ["aaaa00000001", "aaaa00000002", "aaaa00000003"]
    probe = connect(pg_settings.db_url, autocommit=True)
    probe.execute(f"LISTEN {states.DONE_CHANNEL}")
    listener = J.done_listener(pg_settings)
    listener.watch(ids)
    with connect(pg_settings.db_url) as tx:  # one transaction: its notes go out together at its commit
        for i in ids:
            tx.execute("SELECT pg_notify(%s, %s)", (states.DONE_CHANNEL, i))
    for note in probe.notifies(timeout=2.0):  # control: leaving the generator early loses the packet's rest
        assert note.payload == ids[0]
        break
    assert [n.payload for n in probe.notifies(timeout=0.5)] == []
    probe.close()
    t0 = time.monotonic()
    assert listener.wait({ids[0]}, 5.0) == {ids[0]}
    assert listener.wait({ids[1]}, 5.0) == {ids[1]} and listener.wait({ids[2]}, 5.0) == {ids[2]}
    assert time.monotonic() - t0 < 1.0
    listener.close()
