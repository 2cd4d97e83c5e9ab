"""Security properties, shown rather than grepped for: the worker refuses pickled messages, checkpoints
load without unpickling code, store keys cannot escape the store, secrets are never printed."""

from __future__ import annotations

import pickle
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

from medgan.config import TrainConfig
from medgan.errors import CheckpointError
from scheduler.broker import celery_config, make_celery
from scheduler.client import Client
from scheduler.errors import InvalidKey
from scheduler.settings import Settings
from scheduler.store import LocalStore, S3Store
from tests.conftest import MEDGAN, free_port, reset_settings, wait_for
from tests.fault.conftest import TINY_TRAIN, MotoS3, RedisServer, _cluster, relist_complete


class OpensAFile:
    """Unpickling this calls open(path, 'w'): a file left behind proves the payload ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


# -- messages are JSON only -----------------------------------------------------------------------
def test_worker_refuses_a_pickled_message(cluster, tmp_path, figures):
    conf = celery_config(cluster.settings)
    assert conf["accept_content"] == ["json"] and conf["task_serializer"] == "json"
    worker = cluster.start_worker("w0", "--queues", "medgan.generate")
    marker = tmp_path / "PWNED-by-message"
    app = make_celery(cluster.settings)
    # A producer may pickle whatever it likes; the worker must not unpickle it.
    app.send_task("medgan.run_noop", args=[OpensAFile(marker)], queue="medgan.generate", serializer="pickle")
    wait_for(lambda: "untrusted content" in worker.text() or "ContentDisallowed" in worker.text(), timeout=30,
             what="the worker to refuse the pickled message")
    client = Client(cluster.settings)
    assert client.wait(client.submit("noop")["id"], timeout=60)["status"] == "SUCCEEDED"
    assert not marker.exists(), "the pickled message was deserialised"
    assert worker.proc.poll() is None
    figures.add("security: pickled Celery message to a worker", tried=1, survived=1,
                notes="refused (accept_content=['json']), payload not run, worker kept serving")


# -- checkpoints load without unpickling code -------------------------------------------------------
def test_checkpoint_with_a_pickled_payload_is_refused(foreign_checkpoints, tmp_path, figures):
    from medgan.train import train

    run = tmp_path / "run"
    ckpt = run / "checkpoints" / foreign_checkpoints["cgan_tiny"].name
    shutil.copytree(foreign_checkpoints["cgan_tiny"], ckpt)
    marker = tmp_path / "PWNED-by-checkpoint"
    payload = pickle.dumps({"state": OpensAFile(marker)}, protocol=2)
    for name in ("optimizer.bin", "random_states_0.pkl"):
        (ckpt / name).write_bytes(payload)
    relist_complete(ckpt)

    live = tmp_path / "payload-is-live"
    pickle.loads(pickle.dumps({"state": OpensAFile(live)}, protocol=2))
    assert live.exists(), "the payload runs under plain pickle: the refusal below means something"

    with pytest.raises(Exception) as err:  # torch's own loader, as accelerate calls it
        torch.load(ckpt / "random_states_0.pkl", weights_only=True)
    assert "Weights only load failed" in str(err.value)
    cfg = TrainConfig(**{k: v for k, v in TINY_TRAIN.items() if k != "phantom"}, steps=2,
                      phantom={"count": 8, "size": 16})
    with pytest.raises(CheckpointError, match="Weights only load failed"):
        train(cfg, run)  # resumes from the tampered checkpoint: refused, as a named error
    assert not marker.exists(), "a checkpoint's pickle was executed"
    figures.add("security: checkpoint holding a pickled payload", tried=2, survived=2,
                notes="torch.load(weights_only) and a resuming train() refuse it (CheckpointError); "
                      "payload proven live under plain pickle")


# -- keys cannot escape the store ---------------------------------------------------------------------
BAD_KEYS = ["../x", "jobs/../../etc/passwd", "/etc/passwd", "jobs\\..\\x", "", ".", "jobs//x", "jobs/./x",
            "jobs/x/..", "jobs/%2e%2e/x", "jobs/x\x00y", "jobs/ x", "~/x", "jobs/" + "a" * 300, "a/" * 600]


def test_store_keys_cannot_escape(tmp_path, figures):
    root = tmp_path / "store"
    store = LocalStore(root)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not yours")
    (root / "jobs").mkdir()
    (root / "jobs" / "link").symlink_to(outside)  # a link planted inside the store
    s3 = S3Store("127.0.0.1:9", "k", "s", "medgan-bucket")  # validation happens before any request
    refused = 0
    for key in [*BAD_KEYS, "jobs/link/secret.txt"]:
        ops = [lambda k: store.put_bytes(k, b"x"), store.get_bytes, store.exists, store.delete,
               lambda k: store.get_file(k, tmp_path / "dl")]
        if key:  # list("") is the whole store, on purpose
            ops.append(lambda k: list(store.list(k)))
        for op in ops:
            with pytest.raises(InvalidKey):
                op(key)
            refused += 1
        if key != "jobs/link/secret.txt":
            with pytest.raises(InvalidKey):
                s3.put_bytes(key, b"x")
            refused += 1
    assert (outside / "secret.txt").read_text() == "not yours" and sorted(p.name for p in outside.iterdir()) == [
        "secret.txt"]
    figures.add("security: store keys with traversal", tried=refused, survived=refused,
                notes=f"{len(BAD_KEYS) + 1} keys (.., absolute, backslash, NUL, symlink out of the root...) "
                      "x every LocalStore operation + S3Store.put: all InvalidKey")


# -- secrets are never printed ------------------------------------------------------------------------------
S3_SECRET = "s3-SECRET-never-print-7d2a"
REDIS_PASSWORD = "redis-PASSWORD-never-print-91c"


def _leaks(text: str) -> list[str]:
    return [s for s in (S3_SECRET, REDIS_PASSWORD) if s in text]


def test_secrets_are_never_printed(tmp_path, env_home, monkeypatch, figures):
    redis = RedisServer(free_port(), tmp_path / "redis.log", password=REDIS_PASSWORD)
    s3 = MotoS3(free_port())
    s3.secret_key = S3_SECRET
    redis.start()
    s3.start()
    checked = []
    try:
        gen = _cluster(tmp_path, redis, monkeypatch, MEDGAN_S3_ENDPOINT=s3.endpoint,
                       MEDGAN_S3_ACCESS_KEY=s3.access_key, MEDGAN_S3_SECRET_KEY=S3_SECRET, MEDGAN_S3_BUCKET=s3.bucket)
        cluster = next(gen)
        try:
            settings = cluster.settings
            for text in (repr(settings), str(settings), settings.model_dump_json(), repr(settings.s3_secret_key)):
                assert S3_SECRET not in text
            checked.append("Settings repr/str/json (S3 secret only)")
            env = cluster.worker_env("cli")
            for args in (["status"], ["status", "--json"], ["worker", "--help"], ["--help"], ["scheduler", "--once"]):
                out = subprocess.run([*MEDGAN, *args], capture_output=True, text=True, env=env, timeout=60)
                assert out.returncode == 0, (args, out.stderr[-2000:])
                assert not _leaks(out.stdout + out.stderr), args
                checked.append("medgan " + " ".join(args))
            bad = subprocess.run([*MEDGAN, "status"], capture_output=True, text=True, timeout=60,
                                 env={**env, "MEDGAN_S3_ACCESS_KEY": "", "MEDGAN_HEARTBEAT_SECONDS": "-1"})
            assert bad.returncode == 1 and "bad settings" in bad.stderr and not _leaks(bad.stdout + bad.stderr)
            checked.append("medgan status with bad settings")
            worker = cluster.start_worker("w0", "--queues", "medgan.generate", "--loglevel", "DEBUG")
            sweeper = cluster.start_sweeper()
            client = Client(settings)
            job = client.wait(client.submit("noop")["id"], timeout=60)
            assert job["status"] == "SUCCEEDED"
            assert client.store.exists("jobs/probe") is False  # the worker and this client both reach S3
            time.sleep(1.0)
            for proc in (worker, sweeper):
                assert not _leaks(proc.text()), proc.log
            assert "**@127.0.0.1" in worker.text(), "celery masks the broker password"
            checked += ["worker log (DEBUG)", "sweeper log"]
        finally:
            next(gen, None)
    finally:
        s3.stop()
        redis.kill()
        reset_settings()
    leaked_in_repr = REDIS_PASSWORD in repr(Settings(_env_file=None, broker_url=redis.url))
    figures.add("security: secrets never printed", tried=len(checked), survived=len(checked),
                notes="S3 secret + Redis password absent from " + ", ".join(checked)
                      + ("; NOTE repr(Settings) shows broker/database URL passwords (reported)"
                         if leaked_in_repr else ""))
