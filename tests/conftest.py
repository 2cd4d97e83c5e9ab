"""Shared fixtures: embedded settings, real services (Redis, PostgreSQL, S3 via moto), worker processes.

A test that needs a server it cannot reach is skipped on a laptop and FAILS under CI=true.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]
MEDGAN = [sys.executable, "-m", "cli"]
REDIS_HOST = "127.0.0.1"
PG_URL = os.environ.get("MEDGAN_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def require(ok: bool, what: str) -> None:
    """Skip locally, fail in CI, when a needed server is missing."""
    if ok:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{what} is not reachable, and CI needs it")
    pytest.skip(f"{what} is not reachable")


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reset_settings() -> None:
    from scheduler.settings import get_settings

    get_settings.cache_clear()


@pytest.fixture
def env_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty MEDGAN_HOME with every other MEDGAN_ variable cleared (embedded defaults)."""
    for key in list(os.environ):
        if key.startswith("MEDGAN_") and key != "MEDGAN_TEST_PG":
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    monkeypatch.setenv("MEDGAN_HOME", str(home))
    monkeypatch.chdir(tmp_path)  # no stray .env is read
    reset_settings()
    yield home
    reset_settings()


@pytest.fixture
def embedded(env_home: Path):
    """Settings for the embedded mode with the schema migrated."""
    from scheduler import migrate
    from scheduler.settings import get_settings

    settings = get_settings()
    migrate.upgrade(settings)
    return settings


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A private redis-server for the whole session, on a free port, keeping nothing on disk.

    The shared server on 6379 belongs to everything else on the machine (other sessions' tests and benchmarks):
    flushing a database there could destroy their work, so the tests flush only a server they own.
    """
    import shutil

    require(shutil.which("redis-server") is not None, "redis-server (the tests run a private Redis)")
    port = free_port()
    log = tmp_path_factory.mktemp("redis") / "redis.log"
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", REDIS_HOST, "--save", "",
                             "--appendonly", "no", "--databases", "16", "--logfile", str(log)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 10
    while not port_open(REDIS_HOST, port, 0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            require(False, f"a private redis-server on port {port} ({log})")
        time.sleep(0.05)
    yield port
    stop_process(proc)


_redis_dbs = iter(range(10**9))


@pytest.fixture
def redis_url(redis_server: int) -> Iterator[str]:
    """An empty database of the private server per test (rq's habit), emptied before and after."""
    import redis

    db = next(_redis_dbs) % 16
    client = redis.Redis(host=REDIS_HOST, port=redis_server, db=db)
    client.flushdb()
    yield f"redis://{REDIS_HOST}:{redis_server}/{db}"
    client.flushdb()
    client.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database per test, dropped afterwards."""
    require(port_open("127.0.0.1", 5432), "PostgreSQL at 127.0.0.1:5432")
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    name = f"medgan_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield PG_URL.rsplit("/", 1)[0] + f"/{name}"
    from scheduler.db import get_engine

    get_engine.cache_clear()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def pg_settings(env_home, postgres_url, redis_url, monkeypatch):
    """The settings of a migrated private PostgreSQL database and a private Redis database."""
    monkeypatch.setenv("MEDGAN_DATABASE_URL", postgres_url)
    monkeypatch.setenv("MEDGAN_BROKER_URL", redis_url)
    reset_settings()
    from scheduler import migrate
    from scheduler.settings import get_settings

    migrate.upgrade(get_settings())
    return get_settings()


@pytest.fixture(params=["sqlite", "postgres"])
def db_settings(request, env_home):
    """Each test twice: on the embedded SQLite defaults, and on `pg_settings` (PostgreSQL + Redis)."""
    if request.param == "postgres":
        return request.getfixturevalue("pg_settings")
    from scheduler import migrate
    from scheduler.settings import get_settings

    migrate.upgrade(get_settings())
    return get_settings()


@pytest.fixture
def s3_server() -> Iterator[dict[str, str]]:
    """moto's S3 over real HTTP on a free port, used through the real minio client."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield {"endpoint": f"{host}:{port}", "access_key": "testing", "secret_key": "testing-secret",
           "bucket": f"medgan-{uuid.uuid4().hex[:8]}"}
    server.stop()


@pytest.fixture
def services(env_home: Path, redis_url: str, postgres_url: str, s3_server: dict[str, str],
             monkeypatch: pytest.MonkeyPatch):
    """Production-like settings: Redis broker, PostgreSQL database, S3 store; schema migrated."""
    from scheduler import migrate
    from scheduler.settings import get_settings

    monkeypatch.setenv("MEDGAN_BROKER_URL", redis_url)
    monkeypatch.setenv("MEDGAN_DATABASE_URL", postgres_url)
    monkeypatch.setenv("MEDGAN_S3_ENDPOINT", s3_server["endpoint"])
    monkeypatch.setenv("MEDGAN_S3_ACCESS_KEY", s3_server["access_key"])
    monkeypatch.setenv("MEDGAN_S3_SECRET_KEY", s3_server["secret_key"])
    monkeypatch.setenv("MEDGAN_S3_BUCKET", s3_server["bucket"])
    reset_settings()
    settings = get_settings()
    migrate.upgrade(settings)
    return settings


def medgan_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@contextmanager
def worker_process(*args: str, log: Path | None = None, env: dict[str, str] | None = None,
                   ready_timeout: float = 60.0) -> Iterator[subprocess.Popen]:
    """A real `medgan worker` (a real celery worker) in a subprocess; stopped and reaped afterwards."""
    log = log or Path(os.environ.get("MEDGAN_HOME", ".")) / f"worker-{uuid.uuid4().hex[:6]}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    fh = open(log, "wb")
    proc = subprocess.Popen([*MEDGAN, "worker", *args], stdout=fh, stderr=subprocess.STDOUT,
                            env=env or medgan_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + ready_timeout
        while b" ready." not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield proc
    finally:
        stop_process(proc)
        fh.close()


@contextmanager
def sweeper_process(log: Path) -> Iterator[subprocess.Popen]:
    """`medgan scheduler` (the sweeper) in a subprocess, as production runs it beside the workers."""
    fh = open(log, "wb")
    proc = subprocess.Popen([*MEDGAN, "scheduler"], stdout=fh, stderr=subprocess.STDOUT, env=medgan_env(),
                            start_new_session=True)
    try:
        yield proc
    finally:
        stop_process(proc)
        fh.close()


def stop_process(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            pass
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def write_masks_beside(root: Path, count: int, seed: int, prefix: str = "") -> Path:
    """The phantom as another generator's folder would hold it: class sub-folders (healthy/, lesion/), each image
    with its mask beside it as <stem>_mask.png (not medgan.phantom.write_phantom_folder's masks/ layout)."""
    import numpy as np
    from PIL import Image

    from medgan.config import PhantomSpec
    from medgan.phantom import make_phantom

    x, y, m = make_phantom(PhantomSpec(count=count, size=32, seed=seed))
    for i in range(count):
        d = root / ("lesion" if y[i] else "healthy")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(x[i] * 255).astype(np.uint8)).save(d / f"{prefix}{i:04d}.png")
        Image.fromarray(m[i] * 255).save(d / f"{prefix}{i:04d}_mask.png")
    return root
