"""examples/ run as a user runs them: a subprocess against the embedded defaults (MEDGAN_HOME in tmp,
`medgan db upgrade`, a real `medgan worker --gpus none`), then the output folder is checked here as well."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import MEDGAN, ROOT, medgan_env, worker_process

EXAMPLES = ROOT / "examples"

pytestmark = pytest.mark.slow


def _run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_bulk_generate_help() -> None:
    done = _run([sys.executable, str(EXAMPLES / "bulk_generate.py"), "--help"], medgan_env(), ROOT, 60)
    assert done.returncode == 0, done.stderr
    for flag in ("--count", "--shards", "--out", "--steps"):
        assert flag in done.stdout


def test_bulk_generate_embedded(env_home: Path, tmp_path: Path) -> None:
    env = medgan_env()
    done = _run([*MEDGAN, "db", "upgrade"], env, tmp_path, 120)
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "synthetic"
    script = [sys.executable, str(EXAMPLES / "bulk_generate.py"), "--count", "6", "--shards", "2",
              "--out", str(out), "--steps", "4"]
    with worker_process("--gpus", "none", "--concurrency", "2", log=tmp_path / "worker.log", env=env):
        first = _run(script, env, tmp_path)
        assert first.returncode == 0, first.stdout + first.stderr + (tmp_path / "worker.log").read_text()[-3000:]
        # Progress lines while it waited, then one JSON summary line.
        assert "train " in first.stdout and "generate " in first.stdout and "SUCCEEDED" in first.stdout
        summary = json.loads(first.stdout.strip().splitlines()[-1])
        assert summary["images"] == 6 and summary["labels"] == {"0": 3, "1": 3} and summary["shards"] == 2

        # The same arguments again: both jobs are found by their idempotency keys, nothing runs twice.
        again = _run(script, env, tmp_path)
        assert again.returncode == 0, again.stdout + again.stderr
        assert again.stdout.count("reusing the finished job") == 2, again.stdout
        summary2 = json.loads(again.stdout.strip().splitlines()[-1])
        assert (summary2["train_job"], summary2["generate_job"]) == (summary["train_job"], summary["generate_job"])

    # The folder, checked independently of the script.
    rows = list(csv.DictReader((out / "manifest.csv").open(newline="")))
    assert sorted(int(r["index"]) for r in rows) == list(range(6))
    assert Counter(int(r["label"]) for r in rows) == {0: 3, 1: 3}
    assert {Path(r["file"]).parent.as_posix() for r in rows} == {"images/shard-0000", "images/shard-0001"}
    for row in rows:
        assert hashlib.sha256((out / row["file"]).read_bytes()).hexdigest() == row["sha256"], row["file"]
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert pngs == sorted(r["file"] for r in rows)


def test_bulk_generate_bad_arguments(env_home: Path, tmp_path: Path) -> None:
    done = _run([sys.executable, str(EXAMPLES / "bulk_generate.py"), "--count", "4", "--shards", "9"],
                medgan_env(), tmp_path, 60)
    assert done.returncode == 2 and "--shards" in done.stderr


# --- the client's scripting helpers (scheduler.client), as the examples use them ---------------------------------


def test_client_docstring_examples_validate() -> None:
    """The specs in help(Client) are valid specs (a doc example that fails is worse than none)."""
    from scheduler.client import Client
    from scheduler.specs import parse_spec

    assert "submit" in Client.__doc__ and "download" in Client.__doc__ and "wait" in Client.__doc__
    parse_spec({"kind": "train", "config": {"steps": 200, "image_size": 32, "phantom": {"count": 256, "size": 32}}})
    parse_spec({"kind": "generate", "source_job": "0" * 12, "shards": 4,
                "config": {"count": 100, "class_counts": {0: 50, 1: 50}}})
    for name in ("submit", "submit_many", "wait", "wait_all", "jobs", "children", "artifacts", "download"):
        assert getattr(Client, name).__doc__, name


def test_client_submit_many_and_wait_all(embedded, tmp_path: Path) -> None:
    from scheduler.client import Client
    from scheduler.errors import SpecError

    c = Client(embedded)
    with pytest.raises(SpecError, match=r"request 1: .*sleep"):
        c.submit_many([{"kind": "noop"}, {"kind": "noop", "sleep": -1}])
    assert c.jobs(limit=10) == []  # one bad request: nothing written

    seen: list[int] = []
    with worker_process("--gpus", "none", "--concurrency", "2", log=tmp_path / "worker.log"):
        made = c.submit_many([{"kind": "noop", "sleep": 0.2, "name": f"n{i}"} for i in range(3)]
                             + [{"kind": "noop", "fail": "on purpose", "idempotency_key": "k1"}])
        assert [j["name"] for j in made[:3]] == ["n0", "n1", "n2"]
        done = c.wait_all([j["id"] for j in made], timeout=60, poll=0.2,
                          on_progress=lambda jobs: seen.append(len(jobs)))
    assert [j["id"] for j in done] == [j["id"] for j in made]
    assert [j["status"] for j in done] == ["SUCCEEDED"] * 3 + ["FAILED"]
    assert seen and set(seen) == {4}
    assert c.submit("noop", idempotency_key="k1")["id"] == made[3]["id"]
    assert c.children(made[0]["id"]) == []
    with pytest.raises(TimeoutError):
        c.wait_all([c.submit("noop")["id"]], timeout=0.1, poll=0.05)  # no worker now: stays QUEUED


# --- examples/user_gan: a user's own GAN through `medgan run` and Client.run, surviving a SIGKILLed worker -------

USER_GAN = EXAMPLES / "user_gan"
FAST_LEASES = {"MEDGAN_LEASE_SECONDS": "4", "MEDGAN_HEARTBEAT_SECONDS": "1", "MEDGAN_SWEEP_SECONDS": "1"}


@pytest.fixture
def fast_leases(env_home, monkeypatch):
    """Embedded defaults, with leases short enough that a killed worker's job is requeued in seconds."""
    from scheduler import migrate
    from scheduler.settings import get_settings
    from tests.conftest import reset_settings

    for key, value in FAST_LEASES.items():
        monkeypatch.setenv(key, value)
    reset_settings()
    settings = get_settings()
    migrate.upgrade(settings)
    return settings


def _project(tmp_path: Path) -> Path:
    """The user's working folder: the example script, a .gitignore, and things the snapshot must leave out."""
    proj = tmp_path / "my-gan"
    proj.mkdir()
    (proj / "train.py").write_text((USER_GAN / "train.py").read_text())
    (proj / ".gitignore").write_text("runs/\n*.ckpt\n")
    (proj / "runs").mkdir()
    (proj / "runs" / "old.bin").write_bytes(b"x" * 1000)
    (proj / "big.ckpt").write_bytes(b"y" * 1000)
    (proj / ".env").write_text("SECRET=1\n")
    return proj


def _kill_mid_run_and_resume(settings, job_id: str, tmp_path: Path, worker_args: list[str]) -> dict:
    """Run the job on a worker, SIGKILL that worker once a checkpoint snapshot is stored and the script is past
    it, start another worker, and return the finished job."""
    import os
    import signal

    from scheduler.client import Client
    from tests.conftest import sweeper_process, wait_for

    import time

    c = Client(settings)
    env = medgan_env()
    t0 = time.monotonic()
    tick = lambda what: print(f"[{time.monotonic() - t0:6.1f}s] {what}", flush=True)  # noqa: E731
    with sweeper_process(tmp_path / "sweeper.log"):
        with worker_process(*worker_args, log=tmp_path / "worker1.log", env=env) as first:
            wait_for(lambda: any("/checkpoints/snapshot-" in a.key for a in c.artifacts(job_id))
                     and c.job(job_id).step >= 45, timeout=240, interval=0.2, what="a stored checkpoint snapshot")
            tick(f"killing the worker at step {c.job(job_id).step}")
            os.kill(first.pid, signal.SIGKILL)
            first.wait()
        killed_at = c.job(job_id).step
        wait_for(lambda: c.job(job_id).status == "QUEUED", timeout=60, what="the sweeper to requeue the job")
        tick("requeued")
        with worker_process(*worker_args, log=tmp_path / "worker2.log", env=env):
            tick("second worker ready")
            job = c.wait(job_id, timeout=300)
            tick("finished")
    assert job.status == "SUCCEEDED", (job.message, (tmp_path / "worker2.log").read_text()[-3000:])
    assert job.attempt == 2 and any("lease" in (e["reason"] or "") for e in job.events), job.events
    return {"job": job, "killed_at": killed_at}


def _check_resumed_with_outputs(settings, job, killed_at: int, steps: int) -> None:
    import csv
    import io

    from scheduler.client import Client

    c = Client(settings)
    log = "\n".join(line.text for line in c.logs(job.id))
    assert "starting from scratch" in log and "resumed from step-" in log, log[-2000:]
    resumed = int(log.split("resumed from step-")[1].split(" ")[0])
    assert 0 < resumed <= killed_at, (resumed, killed_at)
    keys = {a.key.removeprefix(f"jobs/{job.id}/"): a for a in c.artifacts(job.id)}
    for name in ("outputs/samples.png", "outputs/generator.pt", "outputs/losses.csv", "job.log", "stats.jsonl"):
        assert name in keys, sorted(keys)
    # The resumed run's losses start right after its checkpoint: the steps before it were not redone.
    rows = list(csv.DictReader(io.StringIO(c.store.get_bytes(keys["outputs/losses.csv"].key).decode())))
    assert int(rows[0]["step"]) == resumed + 1 and int(rows[-1]["step"]) == steps
    assert job.step == steps and job.total == steps


def test_user_gan_through_medgan_run_resumes_after_sigkill(fast_leases, tmp_path: Path) -> None:
    proj = _project(tmp_path)
    steps = 120
    done = _run([*MEDGAN, "run", "--gpus", "2", "--name", "user-gan", "--", "python", "train.py", "--steps", str(steps),
                 "--checkpoint-every", "20", "--step-delay", "0.05"], medgan_env(), proj, 120)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    from scheduler.client import Client

    c = Client(fast_leases)
    job = c.job(job_id)
    assert job.kind == "script" and job.gpus == 2 and job.spec["command"][:2] == ["python", "train.py"]
    # The snapshot: the script, nothing ignored, no secrets.
    from scheduler.datasets import read_manifest

    assert sorted(e["path"] for e in read_manifest(c.store, job.spec["code"])) == [".gitignore", "train.py"]
    out = _kill_mid_run_and_resume(fast_leases, job_id, tmp_path, ["--gpus", "0,1", "--fake-gpus"])
    _check_resumed_with_outputs(fast_leases, out["job"], out["killed_at"], steps)
    log = "\n".join(line.text for line in c.logs(job_id))
    assert "2 process(es)" in log  # two ranks under accelerate launch, one per leased card
    shown = _run([*MEDGAN, "jobs", "logs", job_id[:6]], medgan_env(), proj, 60)
    assert shown.returncode == 0 and "resumed from step-" in shown.stdout


def test_user_gan_through_client_run_resumes_after_sigkill_and_logs_follow_live(fast_leases, tmp_path: Path) -> None:
    import subprocess

    from scheduler.client import Client

    proj = _project(tmp_path)
    steps = 120
    c = Client(fast_leases)
    job = c.run(["python", "train.py", "--steps", str(steps), "--checkpoint-every", "20", "--step-delay", "0.05"],
                code=proj, name="user-gan-py")
    assert job.kind == "script" and job.status == "QUEUED"
    # `jobs logs -f` of the running job: lines arrive while it runs, before it ends.
    follower = subprocess.Popen([*MEDGAN, "jobs", "logs", job.id, "-f", "--json"], stdout=subprocess.PIPE, text=True,
                                env=medgan_env(), cwd=proj)
    seen_while_running = []

    def read_follower() -> None:
        for raw in follower.stdout:
            rec = json.loads(raw)
            if rec["type"] == "log" and rec["text"].startswith("step 25/"):
                seen_while_running.append(c.job(job.id).status)
                return

    import threading

    reader = threading.Thread(target=read_follower, daemon=True)
    reader.start()
    out = _kill_mid_run_and_resume(fast_leases, job.id, tmp_path, ["--gpus", "none"])
    reader.join(timeout=30)
    follower.wait(timeout=60)
    assert seen_while_running and seen_while_running[0] == "RUNNING", seen_while_running
    assert follower.returncode == 0
    _check_resumed_with_outputs(fast_leases, out["job"], out["killed_at"], steps)
    files = out["job"].download(tmp_path / "dl", prefix="outputs/")
    assert sorted(p.name for p in files) == ["generator.pt", "losses.csv", "samples.png"]
