"""Helpers the platform benchmarks share: a fresh database, a Redis DB, worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

REDIS = "redis://127.0.0.1:6379/{db}"
PG_ADMIN = os.environ.get("MEDGAN_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@contextmanager
def postgres_db() -> Iterator[str]:
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    name = f"medgan_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        from scheduler.db import get_engine

        get_engine.cache_clear()
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def redis_db(db: int) -> str:
    import redis

    redis.Redis(host="127.0.0.1", port=6379, db=db).flushdb()
    return REDIS.format(db=db)


@contextmanager
def process(args: list[str], env: dict[str, str], log: Path, ready: bytes = b" ready.") -> Iterator[subprocess.Popen]:
    fh = open(log, "wb")
    proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while ready not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{args} did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        fh.close()


def medgan_worker(env: dict[str, str], log: Path, *extra: str):
    return process([sys.executable, "-m", "cli", "worker", "--gpus", "none", *extra], env, log)


def settings_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDGAN_")}
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
