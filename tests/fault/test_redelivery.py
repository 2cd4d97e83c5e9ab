"""The broker may deliver a message more than once: a plain duplicate, and Redis' redelivery of an
unacknowledged message once its visibility timeout passes while the job still runs. Each job runs once.

The visibility timeout is a week in production (and at least 60 s by Settings); waiting it out is no
test. So the test ages the message's entry in Redis' unacked index, which is exactly the state that
time would produce, and runs kombu's own restore sweep (the one every consumer runs periodically).
"""

from __future__ import annotations

import time

from kombu import Connection
from sqlalchemy import select

from scheduler.broker import celery_config, make_celery, send_job
from scheduler.client import Client
from scheduler.db import Job, JobEvent, session_scope
from tests.conftest import wait_for


def _runs(settings, job_id: str) -> tuple[int, int, str]:
    with session_scope(settings.db_url) as s:
        n = len(s.execute(select(JobEvent.id).where(JobEvent.job_id == job_id, JobEvent.to_status == "RUNNING")).all())
        job = s.get(Job, job_id)
        return n, job.attempt, job.status


def _running(settings, job_id: str) -> bool:
    with session_scope(settings.db_url) as s:
        return s.get(Job, job_id).status == "RUNNING"


def test_duplicate_and_visibility_timeout_redelivery_run_once(cluster, private_redis, figures):
    settings = cluster.settings
    client = Client(settings)
    w0 = cluster.start_worker("w0", "--queues", "medgan.generate", "--concurrency", "1")
    w1 = cluster.start_worker("w1", "--queues", "medgan.generate", "--concurrency", "1")
    logs = lambda: w0.text() + w1.text()  # noqa: E731

    # 1. the same message twice more while the job runs
    dup = client.submit("noop", sleep=3.0)["id"]
    wait_for(lambda: _running(settings, dup), timeout=30, what="the job to run")
    app = make_celery(settings)
    send_job(app, dup, "noop", 5)
    send_job(app, dup, "noop", 5)
    assert client.wait(dup, timeout=60)["status"] == "SUCCEEDED"
    wait_for(lambda: logs().count(f"job {dup}: nothing to claim") >= 2, timeout=30, what="both duplicates dropped")
    assert _runs(settings, dup) == (1, 1, "SUCCEEDED")

    # 2. the job outlives the visibility timeout: Redis gives its unacknowledged message to another worker
    long = client.submit("noop", sleep=6.0)["id"]
    wait_for(lambda: _running(settings, long), timeout=30, what="the long job to run")
    r = private_redis.client()
    wait_for(lambda: r.zcard("unacked_index") >= 1, timeout=10, what="the message to be unacknowledged")
    conf = celery_config(settings)
    timeout = conf["broker_transport_options"]["visibility_timeout"]
    for tag in r.zrange("unacked_index", 0, -1):  # as if `timeout` seconds had passed since delivery
        r.zadd("unacked_index", {tag: time.time() - timeout - 1})
    with Connection(settings.broker, transport_options=conf["broker_transport_options"]) as conn:
        conn.default_channel.qos.restore_visible(num=100, interval=1)
    wait_for(lambda: f"job {long}: nothing to claim" in logs(), timeout=30,
             what="the redelivered message to be dropped by the other worker")
    assert _running(settings, long), "the redelivery happened while the job still ran"
    assert client.wait(long, timeout=60)["status"] == "SUCCEEDED"
    assert _runs(settings, long) == (1, 1, "SUCCEEDED")
    wait_for(lambda: r.hlen("unacked") == 0, timeout=10, what="every delivery to be acknowledged")

    after = client.wait(client.submit("noop")["id"], timeout=60)
    assert after["status"] == "SUCCEEDED"
    dropped = logs().count("nothing to claim")
    figures.add("duplicate delivery + visibility-timeout redelivery", tried=2, survived=2, lost=0, duplicates=0,
                notes=f"{dropped} extra deliveries dropped by the claim; each job RUNNING once, attempt 1")
