"""SIGKILL the worker of a training job five times at seeded random moments.

Each time a new worker (on its own "host": a MEDGAN_HOME of its own, so nothing survives on disk
but the store) takes the job over after the sweeper requeues it; the run resumes from the newest
complete checkpoint in the store, the killed worker's training processes die with it, and no two
workers ever hold the job at once.
"""

from __future__ import annotations

import json
import random
import time

from sqlalchemy import select

from scheduler.client import Client
from scheduler.db import Job, JobEvent, session_scope
from tests.conftest import wait_for
from tests.fault.conftest import TINY_TRAIN, processes_mentioning
from worker.tasks._common import newest_checkpoint

KILLS = 5
SEED = 20240607
STEPS = 240  # more than five attempts reach (each trains on for a few checkpoints before its kill): the last resumes


def _job(settings, job_id: str) -> Job:
    with session_scope(settings.db_url) as s:
        return s.get(Job, job_id)


def _host_steps(home, job_id: str) -> tuple[int | None, int | None]:
    """(first, last) step in stats.jsonl on a worker's own disk: written by the trainer every step."""
    path = home / "work" / job_id / "run" / "stats.jsonl"
    if not path.exists():
        return None, None
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except ValueError:  # a line half written
            pass
    return (steps[0], steps[-1]) if steps else (None, None)


def _ckpt_step(store, job_id: str) -> int:
    name = newest_checkpoint(store, job_id)
    return int(name.split("-")[1]) if name else 0


def test_five_sigkills_resume_from_checkpoints(cluster, figures):
    rng = random.Random(SEED)
    # A seeded plan of moments: most kills land a random number of steps (plus a random fraction of a
    # second) after the attempt stored its first checkpoint, so they hit training, checkpoint writes
    # and uploads at random phases; one lands during start-up, before the trainer has taken a step.
    plan = [("steps", rng.randint(0, 5), rng.uniform(0.0, 0.15)) for _ in range(KILLS)]
    plan[rng.randrange(1, KILLS)] = ("startup", 0, rng.uniform(0.3, 2.0))

    settings = cluster.settings
    client = Client(settings)
    sweeper = cluster.start_sweeper()
    worker = cluster.start_worker("w0", "--queues", "medgan.train")
    # keep_checkpoints high: the worker's upload of an older checkpoint races the trainer's pruning of it
    # (test_checkpoint_prune_race.py); this test is about kills.
    # max_attempts=1: five lost workers are not failures (they count in lease_losses), so the job succeeds.
    job_id = client.submit("train", max_attempts=1,
                           config={**TINY_TRAIN, "steps": STEPS, "keep_checkpoints": 1000})["id"]

    attempts: list[dict] = []
    orphans_seen = 0
    for k, (how, n_steps, jitter) in enumerate(plan):
        # Attempt k+1 is claimed once the sweeper has requeued the dead worker's lease. Only one
        # worker lives at a time, so the newest one holds it.
        wait_for(lambda: (lambda j: j.status == "RUNNING" and j.attempt == k + 1)(_job(settings, job_id)),
                 timeout=120, what=f"claim {k + 1}")
        att = {"owner": _job(settings, job_id).lease_owner, "attempt": k + 1, "how": how}
        if how == "steps":
            # After this attempt has stored a checkpoint of its own, a random number of steps more.
            start = _ckpt_step(client.store, job_id)
            wait_for(lambda: _ckpt_step(client.store, job_id) > start, timeout=120, interval=0.02,
                     what=f"a new checkpoint in attempt {k + 1}")
            # Never past the end: a fast machine's attempts get further than a slow one's.
            target = min(_ckpt_step(client.store, job_id) + n_steps, STEPS - 8)

            def reached() -> bool:
                last = _host_steps(worker.home, job_id)[1]
                return last is not None and last >= target

            wait_for(reached, timeout=120, interval=0.02, what=f"step {target} in attempt {k + 1}")
        time.sleep(jitter)
        assert _job(settings, job_id).status == "RUNNING", "the job must still be running when it is killed"
        worker.sigkill()
        killed = worker
        # The next "host" starts at once, so it is ready about when the lease runs out.
        worker = cluster.start_worker(f"w{k + 1}", "--queues", "medgan.train", wait=False)
        # The dead worker's training processes must die with it, well before the lease expires.
        try:
            wait_for(lambda: not processes_mentioning(str(killed.home)), timeout=2.5, interval=0.1,
                     what="the killed worker's training processes to exit")
        except AssertionError:
            orphans_seen += 1
            raise AssertionError(f"orphans of the killed worker: {processes_mentioning(str(killed.home))}")
        att["first"], att["last"] = _host_steps(killed.home, job_id)
        att["ckpt_after_kill"] = _ckpt_step(client.store, job_id)
        attempts.append(att)

    final = client.wait(job_id, timeout=480)  # the last attempt trains ~160 steps: minutes at load average 10
    assert final["status"] == "SUCCEEDED", final["message"]

    with session_scope(settings.db_url) as s:
        events = s.execute(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)).scalars().all()
        job = s.get(Job, job_id)
        seq = [(e.from_status, e.to_status, e.actor, e.reason) for e in events]

    # -- no job ran twice at once: every claim is followed by a requeue (or the end) before the next
    claims = [e for e in seq if e[1] == "RUNNING"]
    assert len(claims) == KILLS + 1, seq
    assert len({c[2] for c in claims}) == KILLS + 1, "each attempt is a different worker"
    state = None
    for frm, to, actor, reason in seq:
        if to == "RUNNING":
            assert state != "RUNNING", f"two RUNNING claims without a requeue between them: {seq}"
        if frm == "RUNNING" and to == "QUEUED":
            assert actor == "sweeper" and "lease of" in reason and "not a failure" in reason, (actor, reason)
        state = to
    requeues = [e for e in seq if e[0] == "RUNNING" and e[1] == "QUEUED"]
    assert len(requeues) == KILLS
    for claim, requeue in zip(claims, requeues):  # the requeue names the lease the dead worker held
        assert claim[2] in requeue[3]
    assert job.attempt == KILLS + 1
    assert (job.lease_losses, job.max_attempts, job.preemptions) == (KILLS, 1, 0)
    assert [a["attempt"] for a in attempts] == list(range(1, KILLS + 1))

    # -- resumed from checkpoints, not from 0
    resumed = []
    for prev, att in zip(attempts, attempts[1:]):
        if att["first"] is not None:  # this attempt trained (a start-up kill trains nothing)
            assert att["first"] == prev["ckpt_after_kill"] + 1, (prev, att)
            resumed.append(att["first"] - 1)
    stats = [json.loads(line) for line in client.store.get_bytes(f"jobs/{job_id}/stats.jsonl").decode().splitlines()]
    final_start = stats[0]["step"] - 1
    assert final_start == attempts[-1]["ckpt_after_kill"] > 0, (final_start, attempts[-1])
    assert stats[-1]["step"] == STEPS
    resumed.append(final_start)
    assert sum(r > 0 for r in resumed) >= 3, resumed
    result = json.loads(client.store.get_bytes(f"jobs/{job_id}/result.json"))
    assert result["status"] == "completed" and result["step"] == STEPS
    assert newest_checkpoint(client.store, job_id) == f"step-{STEPS:06d}"

    # Steps recomputed because of the kills: only those after the last stored checkpoint.
    trained = sum((a["last"] - a["first"] + 1) for a in attempts if a["first"] is not None)
    trained += stats[-1]["step"] - final_start
    wasted = trained - STEPS
    figures.detail("SIGKILL worker: the attempts of one training job", (
        "attempt", "killed", "first step trained", "last step trained", "newest stored checkpoint after the kill"),
        [(a["attempt"], "during start-up" if a["how"] == "startup" else "mid-training", a["first"], a["last"],
          a["ckpt_after_kill"]) for a in attempts] + [(KILLS + 1, "not killed", final_start + 1, STEPS, STEPS)])
    figures.add("SIGKILL worker mid-training (seeded moments)", tried=KILLS, survived=KILLS, lost=0, duplicates=0,
                notes=f"max_attempts=1, {job.lease_losses} lost leases (not failures); resumed at steps {resumed}; {wasted} of {trained} steps recomputed; "
                      f"orphan training processes after kill: {orphans_seen}")
    assert sweeper.proc.poll() is None


def test_sigkill_during_two_process_training_leaves_no_rank_behind(cluster, figures):
    """torchrun puts each rank in a session of its own: a process-group kill misses them. The guardian
    (worker/launcher.py) is a child subreaper and kills its whole tree when the worker dies."""
    client = Client(cluster.settings)
    worker = cluster.start_worker("w0", "--queues", "medgan.train", "--gpus", "0,1", "--fake-gpus")
    job_id = client.submit("train", gpus=2, config={**TINY_TRAIN, "steps": 400, "keep_checkpoints": 1000})["id"]
    wait_for(lambda: (_host_steps(worker.home, job_id)[1] or 0) >= 2, timeout=180, interval=0.05,
             what="both ranks to train")
    ranks = [p for p in processes_mentioning(str(worker.home)) if "medgan.train" in p[1] and "launch" not in p[1]]
    assert len(ranks) == 2, ranks
    worker.sigkill()
    wait_for(lambda: not processes_mentioning(str(worker.home)), timeout=2.5, interval=0.1,
             what="every rank and launcher of the killed worker to exit")
    figures.add("SIGKILL worker during 2-process (torchrun) training", tried=1, survived=1,
                notes="launcher, torchrun agent and both ranks (own sessions) gone within 2.5 s")
