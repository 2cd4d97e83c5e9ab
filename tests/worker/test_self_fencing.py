"""Self-fencing, piece by piece: the guardian stops the science when the worker's renewal deadline passes
(the worker frozen), and the heartbeat kills it when the lease cannot be renewed, whatever the task's own
thread is doing. Each with its control (a renewed deadline, a held lease: the science keeps running)."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

import worker.runtime as rt
from scheduler import migrate
from scheduler.client import Client
from scheduler.db import Job, session_scope
from scheduler.settings import Settings
from worker.gpus import Inventory
from worker.launcher import lease_expired, run_watched

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def _watch(lease_file, deadline_in: float, tmp_path, refresh: bool = False) -> tuple[int, float]:
    """Run a 60 s sleeper under the guardian with a lease file; returns (exit code, seconds it ran)."""
    def set_deadline(seconds: float) -> None:
        t = time.time() + seconds
        os.utime(lease_file, (t, t))

    lease_file.touch()
    set_deadline(deadline_in)
    t0 = time.monotonic()

    def tick():
        if refresh:
            set_deadline(deadline_in)  # the worker renews: the deadline moves on
        return "stop" if time.monotonic() - t0 > 6 else None  # the control ends itself after 6 s

    code = run_watched(SLEEPER, env=dict(os.environ), log_path=tmp_path / "log", on_tick=tick, poll=0.1,
                       grace=1.0, lease_file=lease_file)
    return code, time.monotonic() - t0


def test_guardian_kills_the_science_when_the_renewal_deadline_passes(tmp_path):
    code, took = _watch(tmp_path / "lease", 1.0, tmp_path)
    assert code in (-9, 137) and took < 4.0, (code, took)  # the guardian SIGKILLs its tree and itself
    assert "self-fencing" in (tmp_path / "log").read_text()


def test_guardian_leaves_a_renewed_science_alone(tmp_path):
    code, took = _watch(tmp_path / "lease", 1.0, tmp_path, refresh=True)
    assert took >= 6.0 and "self-fencing" not in (tmp_path / "log").read_text(), (code, took)


def test_lease_expired_reads_the_mtime(tmp_path):
    f = tmp_path / "lease"
    assert not lease_expired(f) and not lease_expired(None)  # no file: nothing to judge
    f.touch()
    os.utime(f, (100.0, 100.0))
    assert lease_expired(f, now=101.0) and not lease_expired(f, now=99.0)


@pytest.fixture
def settings(env_home, tmp_path):
    st = Settings(home=env_home, database_url=f"sqlite:///{tmp_path / 'sf.db'}", lease_seconds=2.0,
                  heartbeat_seconds=0.2)
    migrate.upgrade(st)
    return st


def _claimed_run(settings) -> rt.JobRun:
    job_id = Client(settings).submit("noop")["id"]
    ctx = rt.WorkerContext.create(settings, Inventory(host="h", cards=()), name="w@h")
    job, cards = rt._claim(ctx, job_id)
    return rt.JobRun(ctx, job, cards)


@pytest.mark.parametrize("lose", [True, False])
def test_heartbeat_kills_the_science_when_the_lease_is_lost_while_the_task_thread_is_stuck(settings, tmp_path, lose):
    """The task's thread is stuck (its tick blocks): when the job is taken away (token bumped, as a requeue
    and a new claim do), the heartbeat alone kills the science within about a second. Control: with the
    lease held, the science runs until the test stops it."""
    run = _claimed_run(settings)
    beat = rt.Heartbeat(run.ctx)  # the worker's one heartbeat thread, renewing this run among others
    beat.add(run)
    stuck = threading.Event()
    result: dict[str, float] = {}

    def task() -> None:
        t0 = time.monotonic()

        def tick():
            stuck.wait(8)  # the task thread does not come back (a slow upload, a stall)
            return "stop"

        run_watched(SLEEPER, env=dict(os.environ), log_path=tmp_path / "log", on_tick=tick, poll=0.1, grace=1.0,
                    lease_file=run.lease_file, on_start=lambda p: setattr(run, "child", p))
        result["ran"] = time.monotonic() - t0

    t = threading.Thread(target=task)
    beat.start()
    t.start()
    time.sleep(1.0)
    t_lost = time.monotonic()
    if lose:
        with session_scope(settings.db_url) as s:  # another claim's token: this attempt is stale now
            s.get(Job, run.job_id).fence += 1
    deadline = time.monotonic() + 5
    while run.child is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc = run.child
    while proc.poll() is None and time.monotonic() - t_lost < 5:
        time.sleep(0.05)
    killed_after = time.monotonic() - t_lost
    stuck.set()
    t.join(15)
    beat.done.set()
    beat.join(5)
    if lose:
        assert proc.returncode is not None and killed_after < 2.0, killed_after
        assert run.stop_reason == "lease lost"
    else:
        assert killed_after >= 4.9 and run.stop_reason is None, (killed_after, run.stop_reason)
