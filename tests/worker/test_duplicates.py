"""The broker may deliver a message twice; the claim makes the second delivery harmless."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from scheduler.broker import make_celery, send_job
from scheduler.db import Job, JobEvent, session_scope
from scheduler.jobs import submit
from tests.conftest import reset_settings, wait_for, worker_process


@pytest.fixture(params=["embedded", "redis"])
def settings(request, embedded, monkeypatch):
    if request.param == "redis":
        monkeypatch.setenv("MEDGAN_BROKER_URL", request.getfixturevalue("redis_url"))
        reset_settings()
        from scheduler.settings import get_settings

        return get_settings()
    return embedded


def test_same_message_twice_runs_once(settings, tmp_path):
    job_id = submit(settings, {"kind": "noop", "sleep": 1.0})["id"]
    app = make_celery(settings)
    send_job(app, job_id, "noop", 5)  # the duplicate
    send_job(app, job_id, "noop", 5)  # and a third, for good measure
    log = tmp_path / "worker.log"
    with worker_process("--gpus", "none", "--concurrency", "3", log=log):

        def done():
            with session_scope(settings.db_url) as s:
                return s.get(Job, job_id).status == "SUCCEEDED"

        wait_for(done, timeout=60, what="the job to succeed")
        wait_for(lambda: log.read_text().count("nothing to claim") >= 2, timeout=30, what="duplicates dropped")
    with session_scope(settings.db_url) as s:
        runs = s.execute(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.to_status == "RUNNING")).all()
        assert len(runs) == 1
        assert s.get(Job, job_id).attempt == 1
