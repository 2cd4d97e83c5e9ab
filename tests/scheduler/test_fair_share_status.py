"""`medgan status` shows each owner's recent GPU time and the order fair share gives them; `--no-preempt`
reaches the job row."""

from __future__ import annotations

import json
from datetime import timedelta

from typer.testing import CliRunner

from scheduler.db import Job, session_scope, utcnow
from scheduler.overview import cluster_status

runner = CliRunner()


def _run(owner: str, gpus: int, hours: float) -> Job:
    end = utcnow() - timedelta(minutes=1)
    return Job(kind="noop", spec={"kind": "noop"}, queue="medgan.generate", gpus=gpus, owner=owner,
               status="SUCCEEDED", started_at=end - timedelta(hours=hours), finished_at=end)


def test_status_orders_owners_by_recent_gpu_time(embedded):
    from cli import app

    with session_scope(embedded.db_url) as s:
        s.add_all([_run("ana", 2, 3.0), _run("bo", 1, 0.5), _run("cy", 4, 0.25), _run("ana", 1, 1.0)])
    owners = cluster_status(embedded)["fair_share"]["owners"]
    assert [(o["owner"], o["gpu_hours"]) for o in owners] == [("bo", 0.5), ("cy", 1.0), ("ana", 7.0)]
    assert [o["order"] for o in owners] == [1, 2, 3] and abs(sum(o["share"] for o in owners) - 1) < 1e-3
    out = runner.invoke(app, ["status"])
    assert out.exit_code == 0, out.output
    assert "fair share" in out.output and out.output.index("bo") < out.output.index("ana")
    data = json.loads(runner.invoke(app, ["status", "--json"]).output)
    assert data["fair_share"]["owners"][0]["owner"] == "bo"


def test_no_preempt_flag_reaches_the_job(embedded):
    from cli import app

    out = runner.invoke(app, ["train", "--steps", "2", "--no-preempt", "--json"])
    assert out.exit_code == 0, out.output
    job = json.loads(out.output)
    assert job["preemptible"] is False
    default = json.loads(runner.invoke(app, ["train", "--steps", "2", "--json"]).output)
    assert default["preemptible"] is True


def test_jobs_show_tells_requeues_apart_from_failures(embedded):
    from cli import app

    job = json.loads(runner.invoke(app, ["train", "--steps", "2", "--no-preempt", "--json"]).output)
    with session_scope(embedded.db_url) as s:
        row = s.get(Job, job["id"])
        row.lease_losses, row.preemptions = 2, 1
    out = runner.invoke(app, ["jobs", "show", job["id"]])
    assert out.exit_code == 0, out.output
    assert "2 lost lease(s), 1 preemption(s); never preempted (--no-preempt)" in " ".join(out.output.split())
