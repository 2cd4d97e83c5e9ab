"""SIGSTOP the worker of a training job for longer than its lease, then SIGCONT it: five seeded moments.

A frozen worker is not dead: when it wakes it still believes it owns the job. Before fencing, its training
child kept the card and uploaded checkpoints into the live job's prefix. Here two workers share one host and
its one card (two lease owners of the same card); each freeze hands the job to the other worker. Sampled
every 100 ms: the lease (owner, token) in the database and the trainer processes of each worker.

It must show: the job SUCCEEDS once; no two trainers ever ran at once (so never two on the card or the job);
the frozen worker's trainer was gone before its lease could expire (self-fencing by the guardian, with the
worker frozen); every write the woken worker still tried was refused (each stale attempt at least one), and
no object or row of a stale attempt exists afterwards.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import threading
import time

import pytest
from sqlalchemy import select

from scheduler.client import Client
from scheduler.db import Artifact, Job, JobEvent, session_scope
from tests.conftest import wait_for
from tests.fault.conftest import TINY_TRAIN, _cluster, processes_mentioning

FREEZES = 5
SEED = 20261202
STEPS = 60
KEEP = 2  # keep_checkpoints: the store keeps the newest two (and best.json's)


def _is_trainer(cmd: str) -> bool:
    """A training rank (not the accelerate launcher, not the guardian)."""
    return "medgan.train" in cmd and "accelerate.commands.launch" not in cmd and "worker.launcher" not in cmd


def _trainers(home) -> int:
    """Live training processes of one worker's host disk."""
    return sum(1 for _, cmd in processes_mentioning(str(home)) if _is_trainer(cmd))


class Sampler(threading.Thread):
    """Every 100 ms: (time, status, lease owner, token, trainers per worker)."""

    def __init__(self, settings, job_id: str, workers: dict):
        super().__init__(daemon=True)
        self.settings, self.job_id, self.workers = settings, job_id, workers
        self.rows: list[tuple] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.1):
            with session_scope(self.settings.db_url) as s:
                job = s.get(Job, self.job_id)
                lease = (job.status, job.lease_owner, job.fence)
            procs = [cmd for _, cmd in processes_mentioning("medgan.train") if _is_trainer(cmd)]  # one /proc scan
            self.rows.append((time.monotonic(), *lease,
                              {n: sum(str(p.home) in cmd for cmd in procs) for n, p in self.workers.items()}))


def _host_last_step(home, job_id: str) -> int | None:
    path = home / "work" / job_id / "run" / "stats.jsonl"
    if not path.exists():
        return None
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except ValueError:
            pass
    return steps[-1] if steps else None


@pytest.fixture
def pg_cluster(tmp_path, env_home, private_redis, postgres_url, monkeypatch):
    """Production's database: a process frozen inside a transaction holds row locks, which PostgreSQL ends
    (idle_in_transaction_session_timeout); SQLite's one write lock would stop everyone until SIGCONT."""
    yield from _cluster(tmp_path, private_redis, monkeypatch, MEDGAN_DATABASE_URL=postgres_url)


def test_five_freezes_longer_than_the_lease_run_the_job_exactly_once(pg_cluster, figures):
    cluster = pg_cluster
    rng = random.Random(SEED)
    # Most freezes land a random number of steps into the attempt's training; one during start-up.
    plan = [("steps", rng.randint(1, 10), rng.uniform(0.0, 0.3)) for _ in range(FREEZES)]
    plan[rng.randrange(1, FREEZES)] = ("startup", 0, rng.uniform(0.2, 1.5))
    settings = cluster.settings
    lease = settings.lease_seconds
    client = Client(settings)
    cluster.start_sweeper()
    card = ("--queues", "medgan.train", "--hostname", "h", "--gpus", "0", "--fake-gpus")
    workers = {"w0": cluster.start_worker("w0", *card), "w1": cluster.start_worker("w1", *card)}
    by_pid = {f"medgan{p.proc.pid}-": n for n, p in workers.items()}
    job_id = client.submit("train", gpus=1, max_attempts=1,
                           config={**TINY_TRAIN, "steps": STEPS, "keep_checkpoints": KEEP})["id"]
    sampler = Sampler(settings, job_id, workers)
    sampler.start()

    def job() -> Job:
        with session_scope(settings.db_url) as s:
            return s.get(Job, job_id)

    freezes = []
    try:
        for k, (how, n_steps, jitter) in enumerate(plan):
            wait_for(lambda: (lambda j: j.status == "RUNNING" and j.fence == k + 1)(job()), timeout=120,
                     what=f"claim {k + 1}")
            owner = job().lease_owner
            name = next(n for prefix, n in by_pid.items() if owner.startswith(prefix))
            holder = workers[name]
            if how == "steps":
                first = None

                def trained() -> bool:
                    nonlocal first
                    last = _host_last_step(holder.home, job_id)
                    if last is not None and first is None:
                        first = last
                    return last is not None and last >= min(first + n_steps, STEPS - 20)

                wait_for(trained, timeout=120, interval=0.02, what=f"{n_steps} steps in attempt {k + 1}")
            time.sleep(jitter)
            assert job().fence == k + 1, "the job must still be with this attempt when it is frozen"
            os.kill(holder.proc.pid, signal.SIGSTOP)
            frozen_at = time.monotonic()
            try:
                # Frozen past its lease: the other worker gets the job (token k + 2) and starts training.
                wait_for(lambda: job().fence == k + 2, timeout=60, interval=0.05, what=f"the requeue {k + 1}")
                other = workers["w1" if name == "w0" else "w0"]
                wait_for(lambda: _trainers(other.home) > 0 or job().status != "RUNNING", timeout=90,
                         interval=0.05, what="the new attempt's trainer")
                time.sleep(rng.uniform(0.0, 1.0))
                frozen_for = time.monotonic() - frozen_at
            finally:
                os.kill(holder.proc.pid, signal.SIGCONT)
            freezes.append({"attempt": k + 1, "how": how, "worker": name, "frozen_s": round(frozen_for, 1)})
            assert frozen_for > lease
        final = client.wait(job_id, timeout=300)
    finally:
        sampler.stop.set()
        sampler.join()
    assert final["status"] == "SUCCEEDED", final["message"]
    rows = sampler.rows

    # -- never two trainers at once (so never two on the one card, never two of the job)
    both = [r for r in rows if sum(1 for n in r[4].values() if n) > 1]
    assert not both, f"two workers trained at once: {both[:3]}"
    # -- the frozen worker's trainer was gone before another attempt was claimed
    for f in freezes:
        claimed = next(r for r in rows if r[3] == f["attempt"] + 1 and r[1] == "RUNNING")
        assert claimed[4][f["worker"]] == 0, (f, claimed)

    # -- exactly once: one claim per token, a lease loss between claims, one SUCCEEDED
    with session_scope(settings.db_url) as s:
        events = s.execute(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)).scalars().all()
        arts = s.execute(select(Artifact).where(Artifact.job_id == job_id)).scalars().all()
        j = s.get(Job, job_id)
    seq = [(e.from_status, e.to_status, e.reason or "") for e in events]
    assert [t for _, t, _ in seq].count("SUCCEEDED") == 1
    state = None
    for frm, to, reason in seq:
        if to == "RUNNING":
            assert state != "RUNNING", seq
        state = to
    assert (j.fence, j.lease_losses, j.max_attempts) == (FREEZES + 1, FREEZES, 1)

    # -- every stale attempt tried to write after waking, and was refused
    refused: dict[int, int] = {}
    for p in workers.values():
        for m in re.finditer(r"refused a stale write of attempt \d+ \(token (\d+)\)", p.text()):
            refused[int(m.group(1))] = refused.get(int(m.group(1)), 0) + 1
    assert sorted(refused) == list(range(1, FREEZES + 1)), refused

    # -- no object or row of a stale attempt: the store holds exactly the rows' objects, none staged
    objects = {o.key: o for o in client.store.list(f"jobs/{job_id}/")}
    assert not [k for k in objects if "/_attempts/" in k], "staged objects left behind"
    assert set(objects) == {a.key for a in arts}, set(objects) ^ {a.key for a in arts}
    requeued_at = {}  # token -> when its lease was lost (the sweeper's requeue event)
    claims = [e for e in events if e.to_status == "RUNNING"]
    for token, (claim, nxt) in enumerate(zip(claims, claims[1:]), start=1):
        requeued_at[token] = max(e.at for e in events if claim.at <= e.at <= nxt.at and e.to_status == "QUEUED")
    for a in arts:
        assert a.fence is not None
        if a.fence in requeued_at:
            assert a.created_at <= requeued_at[a.fence], (a.key, a.fence)
    # -- store hygiene: keep_checkpoints in the store too (plus best.json's), the final one among them
    ckpts = sorted({k.split("/")[3] for k in objects if "/checkpoints/" in k and k.endswith("/COMPLETE")})
    assert ckpts[-1] == f"step-{STEPS:06d}" and len(ckpts) <= KEEP + 1, ckpts
    result = json.loads(client.store.get_bytes(f"jobs/{job_id}/result.json"))
    assert result["status"] == "completed" and result["step"] == STEPS

    figures.detail("SIGSTOP worker: the freezes of one training job", (
        "attempt", "frozen", "worker", "frozen for (s)", "stale writes refused after waking"),
        [(f["attempt"], "during start-up" if f["how"] == "startup" else "mid-training", f["worker"],
          f["frozen_s"], refused.get(f["attempt"], 0)) for f in freezes])
    figures.add("SIGSTOP worker longer than its lease, then SIGCONT (seeded moments)", tried=FREEZES,
                survived=FREEZES, lost=0, duplicates=len(both),
                notes=f"lease {lease:g} s; {sum(refused.values())} stale writes refused; trainers sampled every "
                      f"100 ms ({len(rows)} samples): never two at once; {len(ckpts)} checkpoints left in the store "
                      f"(keep_checkpoints={KEEP}); no staged or row-less object")
