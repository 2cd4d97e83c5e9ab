"""Issue 8's running checks: the production stack of docker-compose.yml, started without Docker.

The same processes the compose file describes, each a real subprocess of the real command:

| compose service | here |
|---|---|
| postgres, redis   | a fresh database on the shared PostgreSQL, a database of the session's private redis-server (tests.conftest) |
| minio, minio-init | moto's ThreadedMotoServer over HTTP (the store creates its bucket itself) |
| migrate           | `medgan db upgrade` |
| scheduler         | `medgan scheduler --metrics-port P` (the sweeper and medgan's Prometheus /metrics) |
| worker-cpu        | `medgan worker --gpus none` |
| flower            | `celery --broker=<redis> flower …` with the compose file's own options (read from it) |

Jobs go in through scheduler.client.Client, and the checks read what an operator reads: Flower's API (with and
without its login), Flower's /metrics, and medgan's /metrics.

Flower's /metrics and /healthcheck are NOT behind --basic-auth (Flower 2.2 serves them to anyone): the test pins
that down, checks that they carry no job ids, and checks that compose publishes Flower's port on PUBLISH_ADDR
only (127.0.0.1 by default). docs/monitoring.md ("Security") says what to do about it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from scheduler.client import Client
from tests.conftest import MEDGAN, ROOT, free_port, medgan_env, reset_settings, stop_process, wait_for, worker_process

pytestmark = [pytest.mark.services, pytest.mark.slow]

FLOWER_USER, FLOWER_PASSWORD = "ops", "s3cret-flower"
COMPOSE = ROOT / "docker-compose.yml"


# --- the compose file's Flower command, with this test's values --------------------------------------------


def compose_flower_command() -> list[str]:
    doc = yaml.safe_load(COMPOSE.read_text())
    return [str(tok) for tok in doc["services"]["flower"]["command"]]


def flower_command(broker: str, port: int, data_dir: Path) -> list[str]:
    """The compose file's `celery … flower …` command: every option it names is kept, and only the values that
    belong to the deployment (broker URL with password, port, login, database path) are replaced."""
    replace = {
        "--broker": broker,
        "--port": str(port),
        "--basic-auth": f"{FLOWER_USER}:{FLOWER_PASSWORD}",
        "--db": str(data_dir / "flower.db"),
    }
    cmd = compose_flower_command()
    assert cmd[0] == "celery" and "flower" in cmd, cmd
    out = [sys.executable, "-m", "celery"]
    for tok in cmd[1:]:
        name, eq, _value = tok.partition("=")
        if eq and name in replace:
            out.append(f"{name}={replace.pop(name)}")
        else:
            assert "${" not in tok, f"compose passes Flower a deployment value this test does not replace: {tok}"
            out.append(tok)
    assert not replace, f"compose's Flower command lost the options {sorted(replace)}"
    # Listen on loopback only: compose's container listens on all interfaces, but publishes on PUBLISH_ADDR.
    out.append("--address=127.0.0.1")
    return out


def test_flower_command_follows_compose(tmp_path: Path) -> None:
    """Engine-free: the command this module runs is the compose one (the options compose relies on are there)."""
    cmd = flower_command("redis://127.0.0.1:6379/3", 5999, tmp_path)
    options = {tok.split("=", 1)[0] for tok in cmd if tok.startswith("--")}
    assert {"--broker", "--port", "--basic-auth", "--persistent", "--db", "--state-save-interval"} <= options
    assert cmd.index("--broker=redis://127.0.0.1:6379/3") < cmd.index("flower")  # a celery option, not Flower's


def test_compose_keeps_open_endpoints_private() -> None:
    """Flower's /metrics and /healthcheck are open (see the running check), and so is medgan's /metrics: compose
    must not publish ports 5555 and 9108 on every interface. It publishes on ${PUBLISH_ADDR:-127.0.0.1}; an
    operator who needs them elsewhere puts a reverse proxy with a login in front (docs/monitoring.md, Security)."""
    doc = yaml.safe_load(COMPOSE.read_text())
    for service in ("flower", "scheduler"):
        # Their open endpoints are never published directly: only through the auth proxy.
        assert not doc["services"][service].get("ports"), f"{service} publishes a port without a login"
    proxy = doc["services"]["auth-proxy"]
    assert sorted(str(p) for p in proxy["ports"]) == ["${PUBLISH_ADDR:-127.0.0.1}:5555:5555",
                                                      "${PUBLISH_ADDR:-127.0.0.1}:9108:9108"]
    assert "5555=http://flower:5555" in proxy["command"] and "9108=http://scheduler:9108" in proxy["command"]
    assert "FLOWER_PASSWORD:?" in proxy["environment"]["FLOWER_PASSWORD"]
    auth = [t for t in compose_flower_command() if str(t).startswith("--basic-auth=")]
    assert auth and "FLOWER_PASSWORD:?" in auth[0], "Flower must refuse to start without a password"


# --- the running stack --------------------------------------------------------------------------------------


@dataclass
class Stack:
    client: Client
    flower: str  # base URL
    metrics: str  # medgan's /metrics URL
    logs: Path

    def flower_api(self, path: str, auth: bool = True) -> httpx.Response:
        return httpx.get(self.flower + path, auth=(FLOWER_USER, FLOWER_PASSWORD) if auth else None, timeout=10)

    def medgan_metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = httpx.get(self.metrics, timeout=10).text
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def log_tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in sorted(self.logs.glob("*.log")))


def _start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    fh = open(log, "wb")
    try:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    finally:
        fh.close()  # the child has its own copy


def _answers(url: str, proc: subprocess.Popen, log: Path) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"{proc.args[:4]} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def stack(env_home: Path, redis_url: str, postgres_url: str, s3_server: dict[str, str], tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    env_vars = {
        "MEDGAN_BROKER_URL": redis_url,
        "MEDGAN_DATABASE_URL": postgres_url,
        "MEDGAN_S3_ENDPOINT": s3_server["endpoint"],
        "MEDGAN_S3_ACCESS_KEY": s3_server["access_key"],
        "MEDGAN_S3_SECRET_KEY": s3_server["secret_key"],
        "MEDGAN_S3_BUCKET": s3_server["bucket"],
        "MEDGAN_S3_SECURE": "false",
        "MEDGAN_SWEEP_SECONDS": "1",
    }
    for key, value in env_vars.items():
        monkeypatch.setenv(key, value)
    reset_settings()
    env = medgan_env()
    logs = tmp_path / "logs"
    logs.mkdir()

    # migrate: the one-shot `medgan db upgrade`, as compose runs it (before scheduler and workers).
    done = subprocess.run([*MEDGAN, "db", "upgrade"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "database at revision" in done.stdout, done.stdout

    # flower: only needs Redis. Started before any task is sent: it sees only tasks sent after it started.
    flower_port, metrics_port = free_port(), free_port()
    flower_env = {k: v for k, v in env.items() if not k.startswith("MEDGAN_")}  # compose: `environment: {}`
    flower = _start(flower_command(redis_url, flower_port, tmp_path), logs / "flower.log", flower_env)
    scheduler = _start([*MEDGAN, "scheduler", "--metrics-port", str(metrics_port)], logs / "scheduler.log", env)
    s = Stack(Client(), f"http://127.0.0.1:{flower_port}", f"http://127.0.0.1:{metrics_port}/metrics", logs)
    try:
        wait_for(lambda: _answers(s.flower + "/healthcheck", flower, logs / "flower.log"), 60, 0.3, "Flower")
        wait_for(lambda: _answers(s.metrics, scheduler, logs / "scheduler.log"), 60, 0.3, "medgan /metrics")
        with worker_process("--gpus", "none", "--hostname", "stack-node-cpu", log=logs / "worker.log", env=env):
            yield s
    finally:
        stop_process(scheduler)
        stop_process(flower)


def test_stack_running_checks(stack: Stack) -> None:
    c = stack.client
    ok = c.submit("noop", sleep=0.1, name="stack ok")
    bad = c.submit("noop", sleep=0.0, fail="deliberate failure", name="stack bad")
    ok, bad = c.wait(ok["id"], timeout=60), c.wait(bad["id"], timeout=60)
    assert ok["status"] == "SUCCEEDED", (ok, stack.log_tail())
    assert bad["status"] == "FAILED", (bad, stack.log_tail())

    # --- Flower's API, behind the login ---
    for path in ("/api/workers", "/api/tasks", "/api/task/info/x", "/", "/tasks", "/workers"):
        r = stack.flower_api(path, auth=False)
        assert r.status_code == 401, (path, r.status_code)
    r = httpx.get(stack.flower + "/api/workers", auth=(FLOWER_USER, "wrong"), timeout=10)
    assert r.status_code == 401

    def worker_listed():
        r = stack.flower_api("/api/workers?refresh=1")
        assert r.status_code == 200, r.text
        return [name for name in r.json() if name.endswith("@stack-node-cpu")]

    names = wait_for(worker_listed, 30, 0.5, "Flower to list the worker")
    assert len(names) == 1, names

    def tasks_seen():
        r = stack.flower_api("/api/tasks")
        assert r.status_code == 200, r.text
        done = {}
        for task in r.json().values():
            if task.get("state") in ("SUCCESS", "FAILURE"):
                done[str(task.get("args"))] = task
        return done if len(done) >= 2 else None

    tasks = wait_for(tasks_seen, 30, 0.5, "Flower to see both tasks finish")
    by_job = {job_id: t for job_id in (ok["id"], bad["id"]) for args, t in tasks.items() if job_id in args}
    assert set(by_job) == {ok["id"], bad["id"]}, tasks
    for t in by_job.values():
        assert t["name"] == "medgan.run_noop" and t["worker"] == names[0], t
    # A job that FAILED is a task that succeeded: the job system decided, Celery delivered (docs/monitoring.md).
    assert by_job[bad["id"]]["state"] == "SUCCESS"

    # --- Flower's /metrics and /healthcheck: open under --basic-auth (Flower 2.2), with no job ids in them ---
    assert httpx.get(stack.flower + "/healthcheck", timeout=10).text == "OK"
    fm = httpx.get(stack.flower + "/metrics", timeout=10)
    assert fm.status_code == 200
    assert "flower_events_total" in fm.text and 'task="medgan.run_noop"' in fm.text
    assert ok["id"] not in fm.text and bad["id"] not in fm.text

    # --- medgan's own /metrics (read from the database at scrape time) ---
    m = stack.medgan_metrics()
    assert m[("medgan_jobs", (("status", "SUCCEEDED"),))] >= 1
    assert m[("medgan_jobs", (("status", "FAILED"),))] >= 1
    assert ("medgan_queue_depth", (("queue", "medgan.generate"),)) in m
    assert {labels for name, labels in m if name == "medgan_queue_depth"} >= {
        (("queue", q),) for q in ("medgan.train", "medgan.generate", "medgan.enhance", "medgan.evaluate")}
    assert m[("medgan_job_duration_seconds_bucket", (("kind", "noop"), ("le", "+Inf")))] == 2
    assert m[("medgan_job_duration_seconds_count", (("kind", "noop"),))] == 2
    assert m[("medgan_job_duration_seconds_bucket", (("kind", "noop"), ("le", "60.0")))] == 2
    assert m[("medgan_job_failures", (("kind", "noop"),))] == 1
    assert m.get(("medgan_workers", (("host", "stack-node-cpu"),)), 0) >= 1
    # medgan's /metrics is open too (like every Prometheus target): compose publishes it on PUBLISH_ADDR only.


def test_example_through_the_stack(stack: Stack, tmp_path: Path) -> None:
    """examples/bulk_generate.py against the stack (a tiny train, then a 2-shard generation): it succeeds, and
    Flower and medgan's /metrics report the train and generate tasks."""
    out = tmp_path / "synthetic"
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "bulk_generate.py"), "--count", "4",
                           "--shards", "2", "--steps", "2", "--out", str(out)],
                          env=medgan_env(), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr + stack.log_tail()
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["images"] == 4 and summary["labels"] == {"0": 2, "1": 2}

    def seen():
        r = stack.flower_api("/api/tasks")
        names = Counter(t["name"] for t in r.json().values() if t.get("state") == "SUCCESS")
        return names if names["medgan.run_train"] == 1 and names["medgan.run_generate"] == 2 else None

    wait_for(seen, 30, 0.5, "Flower to see 1 train and 2 generate tasks succeed")
    text = httpx.get(stack.flower + "/metrics", timeout=10).text
    assert 'flower_task_runtime_seconds_count{task="medgan.run_train"' in text
    m = stack.medgan_metrics()
    assert m[("medgan_job_duration_seconds_count", (("kind", "train"),))] == 1
    assert m[("medgan_job_duration_seconds_count", (("kind", "generate"),))] == 3  # the parent and its 2 shards
    assert m[("medgan_jobs", (("status", "SUCCEEDED"),))] == 4
