"""Priority preemption with checkpoint-requeue, through a real worker, sweeper and broker.

A 2-card host is full: R (a reference training, `preemptible` off) and L (the same training, preemptible),
both priority 8. H (priority 1, one card) is submitted. After the grace period the sweeper picks L (R is
protected by its flag): L gets SIGTERM, stores its final checkpoint, goes PREEMPTED then QUEUED; H takes
its card; when H is done, L resumes from that checkpoint and SUCCEEDS with R's step count and, in CPU
deterministic mode, R's weights bit for bit (the control: R's own earlier checkpoint differs).
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors.torch import load_file

from scheduler.client import Client
from scheduler.db import Job, JobEvent, session_scope
from sqlalchemy import select
from tests.conftest import wait_for
from tests.fault.conftest import TINY_TRAIN, _cluster
from worker.tasks._common import newest_checkpoint, stored_checkpoints

GRACE = 2.0
STEPS = 300  # long enough that L is still training when the grace period ends on a quiet machine (100 was not)
CFG = {**TINY_TRAIN, "steps": STEPS, "checkpoint_every": 10, "keep_checkpoints": 100, "deterministic": True,
       "tensorboard": False}
WEIGHTS = ["model.safetensors", "model_1.safetensors", "generator_ema.safetensors"]


@pytest.fixture
def pcluster(tmp_path, env_home, private_redis, monkeypatch):
    yield from _cluster(tmp_path, private_redis, monkeypatch, MEDGAN_PREEMPT_GRACE_SECONDS=str(GRACE))


def _job(settings, job_id: str) -> Job:
    with session_scope(settings.db_url) as s:
        return s.get(Job, job_id)


def _weights(store, job_id: str, step: int, dest) -> dict[str, dict[str, torch.Tensor]]:
    out = {}
    for name in WEIGHTS:
        path = store.get_file(f"jobs/{job_id}/checkpoints/step-{step:06d}/{name}", dest / job_id / str(step) / name)
        out[name] = load_file(path)
    return out


def _same(a, b) -> bool:
    return all(a[n].keys() == b[n].keys() and all(torch.equal(a[n][k], b[n][k]) for k in a[n]) for n in WEIGHTS)


def test_low_priority_training_is_preempted_resumes_and_matches_an_unpreempted_run(pcluster, figures, tmp_path):
    settings = pcluster.settings
    client = Client(settings)
    pcluster.start_sweeper()
    pcluster.start_worker("w0", "--queues", "medgan.train,medgan.generate", "--hostname", "h", "--gpus", "0,1",
                          "--fake-gpus", "--concurrency", "3")
    ref = client.submit("train", gpus=1, priority=8, preemptible=False, name="reference", config=CFG)["id"]
    low = client.submit("train", gpus=1, priority=8, name="preemptible", config=CFG)["id"]
    # L is some way into its run (a stored checkpoint and more steps) when H arrives.
    wait_for(lambda: (_job(settings, low).progress_step or 0) >= 10 and _job(settings, ref).status == "RUNNING",
             timeout=180, interval=0.1, what="both trainings to run")
    t0 = time.monotonic()
    high = client.submit("noop", gpus=1, priority=1, sleep=3.0, name="urgent")["id"]
    wait_for(lambda: _job(settings, high).status in ("RUNNING", "SUCCEEDED"), timeout=120, interval=0.1,
             what="the urgent job to start")
    started_after = time.monotonic() - t0
    preempted_at_step = int(newest_checkpoint(client.store, low, settings).split("-")[1])
    assert preempted_at_step < STEPS, "L finished before it was preempted: the test needs a longer run"
    assert _job(settings, ref).status == "RUNNING", "the non-preemptible job must not be touched"
    jobs = {j: client.wait(j, timeout=300) for j in (high, ref, low)}
    assert all(j["status"] == "SUCCEEDED" for j in jobs.values()), {k: j["message"] for k, j in jobs.items()}

    with session_scope(settings.db_url) as s:
        ev = [(e.from_status, e.to_status, e.reason or "") for e in
              s.execute(select(JobEvent).where(JobEvent.job_id == low).order_by(JobEvent.id)).scalars()]
        lj, rj = s.get(Job, low), s.get(Job, ref)
    # -- PREEMPTED then QUEUED, with the reason; counted as a preemption, not a failure or a lost lease
    i = next(n for n, e in enumerate(ev) if e[1] == "PREEMPTED")
    assert ev[i][0] == "RUNNING" and f"preempted for job {high}" in ev[i][2], ev
    assert ev[i + 1][:2] == ("PREEMPTED", "QUEUED"), ev
    assert [e[1] for e in ev].count("RUNNING") == 2 and [e[1] for e in ev].count("SUCCEEDED") == 1, ev
    assert (lj.preemptions, lj.lease_losses, rj.preemptions) == (1, 0, 0)
    # -- within the grace period plus a few seconds (SIGTERM, final checkpoint, upload, requeue, claim)
    assert started_after < GRACE + 20, started_after
    # -- resumed from the final checkpoint: nothing lost, the stored stats of the second attempt start there
    stats = [json.loads(x) for x in client.store.get_bytes(f"jobs/{low}/stats.jsonl").decode().splitlines()]
    steps = [r["step"] for r in stats if "loss_d" in r]
    assert steps[0] == preempted_at_step + 1 and steps[-1] == STEPS, (preempted_at_step, steps[:3], steps[-1:])
    # -- equal step count and, CPU deterministic, identical weights to the unpreempted run
    result_low = json.loads(client.store.get_bytes(f"jobs/{low}/result.json"))
    result_ref = json.loads(client.store.get_bytes(f"jobs/{ref}/result.json"))
    assert result_low["step"] == result_ref["step"] == STEPS
    final_low, final_ref = _weights(client.store, low, STEPS, tmp_path), _weights(client.store, ref, STEPS, tmp_path)
    assert _same(final_low, final_ref), "the preempted run's weights differ from the unpreempted run's"
    before = [st for st in stored_checkpoints(client.store, ref, settings) if st < STEPS][-1]
    earlier = _weights(client.store, ref, before, tmp_path)
    assert not _same(final_low, earlier), "control: the comparison must tell different weights apart"

    figures.add("priority preemption of a 1-card training on a full 2-card host", tried=1, survived=1,
                notes=f"grace {GRACE:g} s: urgent job started {started_after:.1f} s after submission; preempted at "
                      f"step {preempted_at_step} (final checkpoint), resumed at {preempted_at_step + 1}; "
                      f"{STEPS} steps, weights identical to the unpreempted run; non-preemptible job untouched")
