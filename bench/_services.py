"""Private services for the benchmarks, so that `make bench` is safe on a shared machine.

Every benchmark that needs Redis or PostgreSQL takes them from `services()`: a redis-server of its own on a
free port (nothing on disk, stopped afterwards) and a PostgreSQL database with a unique name that it creates
and drops. The machine's shared Redis (127.0.0.1:6379) and every existing database are never connected to,
flushed or written: the only connection to an existing database is the maintenance one that issues
CREATE/DROP DATABASE for the benchmark's own name. tests/integration/test_bench_safety.py checks this.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

HOST = "127.0.0.1"
PG_ADMIN = os.environ.get("MEDGAN_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
DB_PREFIX = "medgan_bench_"

_PRIVATE_REDIS_PORTS: set[int] = set()  # servers this process started: the only Redis a benchmark may use


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


@contextmanager
def private_redis(log_dir: Path) -> Iterator[str]:
    """A redis-server of this benchmark's own on a free port; yields its base URL (``redis://host:port``)."""
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is not installed: the benchmarks run a private Redis")
    for _ in range(5):  # a free port can be taken between our probe and the server's bind: try another
        port = free_port()
        log = log_dir / f"redis-{port}.log"
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
             "--databases", "16", "--logfile", str(log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 10
        while proc.poll() is None and not _port_open(port) and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc.poll() is None and _port_open(port):
            break
        stop(proc)
    else:
        raise RuntimeError(f"could not start a private redis-server (see {log_dir})")
    _PRIVATE_REDIS_PORTS.add(port)
    try:
        yield f"redis://{HOST}:{port}"
    finally:
        _PRIVATE_REDIS_PORTS.discard(port)
        stop(proc)


def check_private_redis(url: str) -> str:
    """`url` itself, if it names a Redis this process started; else RuntimeError (never the shared one)."""
    parts = urlsplit(url)
    if parts.scheme.startswith("redis") and parts.port not in _PRIVATE_REDIS_PORTS:
        raise RuntimeError(f"a benchmark may only use its private Redis, not {parts.hostname}:{parts.port}")
    return url


@contextmanager
def postgres_db() -> Iterator[str]:
    """A PostgreSQL database of this benchmark's own (unique name), dropped afterwards; yields its URL."""
    from sqlalchemy import create_engine, text

    name = f"{DB_PREFIX}{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT", poolclass=_null_pool())
    try:
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        from scheduler.db import get_engine

        get_engine.cache_clear()  # engines of this process bound to the database let go; FORCE ends the rest
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _null_pool():
    from sqlalchemy.pool import NullPool

    return NullPool


@dataclass
class Services:
    """What one benchmark run owns: a private Redis, its own database, a scratch folder."""

    redis: str  # base URL of the private redis-server: redis://127.0.0.1:PORT
    database: str  # SQLAlchemy URL of the benchmark's own database
    tmp: Path

    def redis_db(self, db: int) -> str:
        """URL of database `db` (0..15) of the private Redis, emptied first (it is ours to empty)."""
        import redis

        client = redis.Redis.from_url(check_private_redis(f"{self.redis}/{db}"))
        client.flushdb()
        client.close()
        return f"{self.redis}/{db}"

    def medgan_env(self, name: str, redis_db: int) -> dict[str, str]:
        """Settings for a medgan client/worker on these services, MEDGAN_HOME under the scratch folder."""
        return settings_env(home=str(self.tmp / name), database_url=self.database,
                            broker_url=self.redis_db(redis_db))


@contextmanager
def services() -> Iterator[Services]:
    """A private Redis, a database of our own and a scratch folder, all gone afterwards."""
    with tempfile.TemporaryDirectory(prefix="medgan-bench-") as d:
        tmp = Path(d)
        with private_redis(tmp) as redis_url, postgres_db() as db_url:
            yield Services(redis=redis_url, database=db_url, tmp=tmp)


def settings_env(**values: str) -> dict[str, str]:
    """This process's environment with every MEDGAN_ variable replaced by `values` (the private services),
    and without any other variable that names a Redis (a CELERY_BROKER_URL would reach a worker)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MEDGAN_", "CELERY_")) and not v.startswith(("redis://", "rediss://"))}
    env.update({f"MEDGAN_{k.upper()}": v for k, v in values.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def apply_env(env: dict[str, str]) -> None:
    """Make this process's Settings match `env` (the client side of a benchmark)."""
    for k in [k for k in os.environ if k.startswith("MEDGAN_")]:
        del os.environ[k]
    os.environ.update({k: v for k, v in env.items() if k.startswith("MEDGAN_")})
    from scheduler.settings import get_settings

    get_settings.cache_clear()


def _check_env(env: dict[str, str]) -> None:
    """Refuse to start a process whose environment names a Redis that is not one of our private servers."""
    for value in env.values():
        if value.startswith(("redis://", "rediss://")):
            check_private_redis(value)


def stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM the process group, SIGKILL it after `timeout`, reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            pass
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


@contextmanager
def process(args: list[str], env: dict[str, str], log: Path, ready: bytes = b" ready.",
            timeout: float = 120.0) -> Iterator[subprocess.Popen]:
    """A subprocess (its own process group) that has printed `ready` to `log`; stopped afterwards."""
    _check_env(env)
    fh = open(log, "wb")
    proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while ready not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{args} did not start: {log.read_text()[-2000:]}")
            time.sleep(0.02)
        yield proc
    finally:
        stop(proc)
        fh.close()


def medgan_worker(env: dict[str, str], log: Path, *extra: str):
    """`medgan worker` (threads pool) on the CPU, ready to take jobs."""
    return process([sys.executable, "-m", "cli", "worker", "--gpus", "none", *extra], env, log)
