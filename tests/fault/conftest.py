"""Fixtures of the fault suite: servers we own (so we may kill them), workers on separate "hosts",
the sweeper as a subprocess, process inspection, and the figures table (FIGURES.md).

Every server a test stops or restarts is private: a redis-server on a free port, a moto S3
server in this process. The shared 127.0.0.1:6379 / :5432 servers are never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import MEDGAN, free_port, medgan_env, port_open, require, reset_settings, stop_process

FIGURES = Path(__file__).with_name("FIGURES.md")

# Short leases so a dead worker's job is requeued within seconds (the brief's values).
FAST = {
    "MEDGAN_LEASE_SECONDS": "3",
    "MEDGAN_HEARTBEAT_SECONDS": "0.5",
    "MEDGAN_SWEEP_SECONDS": "0.5",
    "MEDGAN_MAX_ATTEMPTS": "10",
    "MEDGAN_RESEND_AFTER_SECONDS": "2",
    "MEDGAN_LOG_LEVEL": "INFO",
}

# The smallest training run that still checkpoints often (CPU, a few seconds of work). No quality probes:
# they train judges at every checkpoint (seconds each on this machine), and these tests are about faults.
TINY_TRAIN = {"model": "cgan", "image_size": 16, "base_channels": 8, "z_dim": 16, "batch_size": 8,
              "checkpoint_every": 4, "sample_every": 1000, "log_every": 1, "keep_checkpoints": 2,
              "probes": False, "phantom": {"count": 16, "size": 16, "seed": 1}}


# -- private Redis -------------------------------------------------------------------------------
class RedisServer:
    """A redis-server we own on a fixed free port, with nothing on disk: a restart loses every message."""

    def __init__(self, port: int, log: Path, password: str | None = None):
        self.port, self.log, self.password = port, log, password
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        fh = open(self.log, "ab")
        extra = ["--requirepass", self.password] if self.password else []
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", *extra], stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        fh.close()
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", self.port, 0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: the broker vanishes with every queued and unacknowledged message."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        deadline = time.monotonic() + 10
        while port_open("127.0.0.1", self.port, 0.2) and time.monotonic() < deadline:
            time.sleep(0.05)

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, db=0, password=self.password)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    require(shutil.which("redis-server") is not None, "redis-server (to run a private broker)")
    server = RedisServer(free_port(), tmp_path / "redis.log")
    server.start()
    yield server
    server.kill()


# -- settings for a small cluster ---------------------------------------------------------------
@dataclass
class Cluster:
    """Shared database, broker and store; each worker gets its own MEDGAN_HOME (its own "host" disk)."""

    root: Path
    env: dict[str, str]
    settings: object
    procs: list[subprocess.Popen] = field(default_factory=list)

    def worker_env(self, name: str) -> dict[str, str]:
        return medgan_env(**self.env, MEDGAN_HOME=str(self.root / "hosts" / name))

    def start_worker(self, name: str, *args: str, wait: bool = True, timeout: float = 90.0) -> "Proc":
        log = self.root / f"worker-{name}.log"
        fh = open(log, "wb")
        gpus = [] if "--gpus" in args else ["--gpus", "none"]
        proc = subprocess.Popen([*MEDGAN, "worker", *gpus, *args], stdout=fh, stderr=subprocess.STDOUT,
                                env=self.worker_env(name), start_new_session=True)
        fh.close()
        self.procs.append(proc)
        p = Proc(proc, log, self.root / "hosts" / name)
        if wait:
            p.wait_ready(timeout)
        return p

    def start_sweeper(self) -> "Proc":
        log = self.root / "sweeper.log"
        fh = open(log, "ab")
        proc = subprocess.Popen([*MEDGAN, "scheduler"], stdout=fh, stderr=subprocess.STDOUT,
                                env=medgan_env(**self.env, MEDGAN_HOME=str(self.root / "hosts" / "sweeper")),
                                start_new_session=True)
        fh.close()
        self.procs.append(proc)
        return Proc(proc, log, self.root / "hosts" / "sweeper")

    def stop_all(self) -> None:
        for proc in self.procs:
            stop_process(proc, timeout=10)
        # A failed test may leave orphans of killed workers: everything naming our folder is ours.
        for pid, _ in processes_mentioning(str(self.root / "hosts")):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@dataclass
class Proc:
    proc: subprocess.Popen
    log: Path
    home: Path

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while b" ready." not in self.log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def sigkill(self) -> None:
        """SIGKILL this process alone (not its group): what the OOM killer or a lost host does."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def _cluster(tmp_path: Path, redis: RedisServer, monkeypatch: pytest.MonkeyPatch,
             **extra: str) -> Iterator[Cluster]:
    from scheduler import migrate
    from scheduler.settings import get_settings

    env = dict(FAST, MEDGAN_DATABASE_URL=f"sqlite:///{tmp_path / 'medgan.db'}", MEDGAN_BROKER_URL=redis.url,
               MEDGAN_STORE_PATH=str(tmp_path / "store"))
    env.update(extra)  # may replace the database (PostgreSQL) too
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    reset_settings()
    settings = get_settings()
    migrate.upgrade(settings)
    c = Cluster(tmp_path, env, settings)
    yield c
    c.stop_all()


@pytest.fixture
def cluster(tmp_path: Path, env_home: Path, private_redis: RedisServer,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """SQLite database + private Redis broker + local store, with the brief's short leases."""
    yield from _cluster(tmp_path, private_redis, monkeypatch)


# -- private S3 ----------------------------------------------------------------------------------
class MotoS3:
    """moto's S3 over HTTP on a fixed port, stoppable and restartable there. Its objects live in this
    process, so they survive a restart, as MinIO's survive on disk."""

    access_key, secret_key = "fault-access", "fault-secret-do-not-print-4f1c"

    def __init__(self, port: int):
        self.port, self.server = port, None
        self.bucket = f"fault-{uuid.uuid4().hex[:8]}"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", self.port, 0.2):
            if time.monotonic() > deadline:
                raise RuntimeError("moto did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture
def s3_cluster(tmp_path: Path, env_home: Path, private_redis: RedisServer,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Cluster, MotoS3]]:
    """As `cluster`, with the store on a private S3 server the test may stop and restart."""
    s3 = MotoS3(free_port())
    s3.start()
    try:
        yield from ((c, s3) for c in _cluster(
            tmp_path, private_redis, monkeypatch, MEDGAN_S3_ENDPOINT=s3.endpoint, MEDGAN_S3_ACCESS_KEY=s3.access_key,
            MEDGAN_S3_SECRET_KEY=s3.secret_key, MEDGAN_S3_BUCKET=s3.bucket))
    finally:
        s3.stop()


# -- processes -----------------------------------------------------------------------------------
def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live (non-zombie) processes whose command line contains `text`."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmd and state != "Z":
            out.append((int(entry), cmd.strip()))
    return out


# -- the figures table ---------------------------------------------------------------------------
class Figures:
    """Rows of FIGURES.md, keyed by scenario; rows of scenarios not run this time are kept."""

    COLUMNS = ("scenario", "tried", "survived", "jobs lost", "duplicates", "notes")

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[str, dict] = self._load()
        self.touched = False

    def _load(self) -> dict[str, dict]:
        if not self.path.exists():
            return {}
        text = self.path.read_text()
        start = text.find("<!-- figures-json")
        if start < 0:
            return {}
        blob = text[start + len("<!-- figures-json"):text.find("-->", start)]
        try:
            return json.loads(blob)
        except ValueError:
            return {}

    def detail(self, title: str, header: tuple[str, ...], rows: list[tuple]) -> None:
        """A table of its own under the summary (e.g. every bad input and the reason it got)."""
        self.rows.setdefault("_details", {})[title] = {"header": list(header), "rows": [list(r) for r in rows]}
        self.touched = True

    def add(self, scenario: str, *, tried: int, survived: int, lost: int = 0, duplicates: int = 0,
            notes: str = "") -> None:
        self.rows[scenario] = {"tried": tried, "survived": survived, "jobs lost": lost, "duplicates": duplicates,
                               "notes": notes, "at": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.touched = True

    def write(self) -> None:
        lines = ["# Fault suite figures", "",
                 "Written by `pytest tests/fault` (tests/fault/conftest.py); each row is the latest run of its "
                 "scenario.", "", "| " + " | ".join(self.COLUMNS) + " | run at |",
                 "|" + "---|" * (len(self.COLUMNS) + 1)]
        details = self.rows.get("_details", {})
        scenarios = {k: v for k, v in self.rows.items() if k != "_details"}
        for name in sorted(scenarios):
            r = scenarios[name]
            lines.append(f"| {name} | {r['tried']} | {r['survived']} | {r['jobs lost']} | {r['duplicates']} | "
                         f"{r['notes'].replace('|', '/')} | {r['at']} |")
        total = {k: sum(r[k] for r in scenarios.values()) for k in ("tried", "survived", "jobs lost", "duplicates")}
        lines.append(f"| **total** | {total['tried']} | {total['survived']} | {total['jobs lost']} | "
                     f"{total['duplicates']} | | |")
        for title in sorted(details):
            d = details[title]
            lines += ["", f"## {title}", "", "| " + " | ".join(d["header"]) + " |", "|" + "---|" * len(d["header"])]
            lines += ["| " + " | ".join(str(c).replace("|", "/").replace("\n", " ") for c in row) + " |"
                      for row in d["rows"]]
        lines += ["", "<!-- figures-json", json.dumps(self.rows, indent=1, sort_keys=True), "-->", ""]
        self.path.write_text("\n".join(lines))


@pytest.fixture(scope="session")
def figures() -> Iterator[Figures]:
    figs = Figures(FIGURES)
    yield figs
    if figs.touched:
        figs.write()



# -- checkpoints and jobs made outside the worker -------------------------------------------------
@pytest.fixture(scope="session")
def foreign_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real one-step checkpoints of models other than TINY_TRAIN: a Zero-DCE enhancer, a cgan twice as
    wide, and a cgan exactly like TINY_TRAIN (to tamper with). Trained in this process (about 3 s)."""
    from medgan.checkpoint import latest_checkpoint
    from medgan.config import TrainConfig
    from medgan.train import train

    root = tmp_path_factory.mktemp("foreign")
    tiny = {k: v for k, v in TINY_TRAIN.items() if k != "phantom"}
    configs = {
        "zerodce": TrainConfig(model="zerodce", image_size=16, steps=1, batch_size=4, base_channels=8,
                               phantom={"count": 8, "size": 16}),
        "cgan_wide": TrainConfig(**{**tiny, "base_channels": 16}, steps=1, phantom={"count": 8, "size": 16}),
        "cgan_tiny": TrainConfig(**tiny, steps=1, phantom={"count": 8, "size": 16}),
    }
    out = {}
    for name, cfg in configs.items():
        result = train(cfg, root / name)
        assert result["status"] == "completed", result
        out[name] = latest_checkpoint(root / name)
    return out


def plant_checkpoint(store, job_id: str, ckpt: Path, settings=None) -> None:
    """Put a checkpoint folder under jobs/<job_id>/checkpoints/<its name>/, COMPLETE last. With `settings`, also
    its artifact rows under the job's current fencing token, as an earlier attempt of the job would have written
    them: resume and generate only ever read checkpoints of the job's lineage (objects without rows are ignored),
    so a bad checkpoint must be in the lineage to test what reading it does."""
    from scheduler.db import Artifact, Job, session_scope
    from scheduler.store import sha256_file

    files = sorted(p for p in ckpt.iterdir() if p.is_file())
    for path in sorted(files, key=lambda p: p.name == "COMPLETE"):
        store.put_file(f"jobs/{job_id}/checkpoints/{ckpt.name}/{path.name}", path)
    if settings is not None:
        with session_scope(settings.db_url) as s:
            fence = s.get(Job, job_id).fence
            for path in files:
                s.add(Artifact(job_id=job_id, key=f"jobs/{job_id}/checkpoints/{ckpt.name}/{path.name}",
                               size=path.stat().st_size, sha256=sha256_file(path), kind="checkpoint", fence=fence))


def relist_complete(ckpt: Path) -> None:
    """Rewrite COMPLETE's file sizes after tampering, so only the content (not a size check) can refuse it."""
    listing = json.loads((ckpt / "COMPLETE").read_text())
    listing["files"] = {p.name: p.stat().st_size for p in sorted(ckpt.iterdir())
                        if p.is_file() and p.name != "COMPLETE"}
    (ckpt / "COMPLETE").write_text(json.dumps(listing))


def finished_job(settings, kind: str, spec: dict) -> str:
    """A job row that SUCCEEDED earlier (its outputs are whatever the test puts in the store)."""
    from scheduler.db import Job, JobEvent, session_scope, utcnow

    with session_scope(settings.db_url) as s:
        job = Job(kind=kind, status="SUCCEEDED", spec={"kind": kind, **spec}, queue="medgan.train", owner="fault",
                  finished_at=utcnow(), progress=1.0)
        s.add(job)
        s.flush()
        s.add(JobEvent(job_id=job.id, from_status=None, to_status="SUCCEEDED", actor="fault", reason="made by test"))
        return job.id
