"""The platform's own cost, against plain Celery on the same Redis (same process, same machine, same run).

- per-job latency of a no-op job: submit → claimed → SUCCEEDED (PostgreSQL row, claim, events, heartbeat
  thread) vs a raw Celery task round trip (`delay().get()` with a Redis result backend);
- 1,000 queued jobs: submission rate, and drain time with one worker vs the same for raw Celery;
- sharded generation with 1 vs 2 worker processes (speed-up).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench._services import apply_env, medgan_worker, postgres_db, process, redis_db, settings_env


def _wait_status(settings, job_id: str, poll: float = 0.002, timeout: float = 60.0) -> None:
    from sqlalchemy import select

    from scheduler.db import Job, get_engine

    engine = get_engine(settings.db_url)
    deadline = time.monotonic() + timeout
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            status = conn.execute(select(Job.status).where(Job.id == job_id)).scalar_one()
            conn.rollback()
            if status in ("SUCCEEDED", "FAILED", "CANCELLED"):
                return
            time.sleep(poll)
    raise TimeoutError(job_id)


def _medgan_latency(n: int, tmp: Path, pg: str) -> tuple[list[float], list[float]]:
    from scheduler import migrate
    from scheduler.db import Job, session_scope
    from scheduler.jobs import submit
    from scheduler.settings import get_settings

    env = settings_env(home=str(tmp / "home"), database_url=pg, broker_url=redis_db(14))
    apply_env(env)
    settings = get_settings()
    migrate.upgrade(settings)
    total, claim = [], []
    with medgan_worker(env, tmp / "medgan-worker.log", "--concurrency", "1"):
        for i in range(n + 3):
            t0 = time.perf_counter()
            job = submit(settings, {"kind": "noop"})
            _wait_status(settings, job.id)
            if i >= 3:  # warm-up
                total.append(time.perf_counter() - t0)
                with session_scope(settings.db_url) as s:
                    row = s.get(Job, job.id)
                    claim.append((row.started_at - row.created_at).total_seconds())
    return total, claim


def _raw_latency(n: int, tmp: Path) -> list[float]:
    env = settings_env()
    env.update(RAW_BROKER=redis_db(13), RAW_BACKEND=redis_db(12))
    import os

    os.environ.update(RAW_BROKER=env["RAW_BROKER"], RAW_BACKEND=env["RAW_BACKEND"])
    from bench import raw_celery

    raw_celery.app.conf.update(broker_url=env["RAW_BROKER"], result_backend=env["RAW_BACKEND"])
    out = []
    cmd = [sys.executable, "-m", "celery", "-A", "bench.raw_celery", "worker", "--pool", "solo", "-c", "1",
           "--without-gossip", "--without-mingle", "-l", "INFO"]
    with process(cmd, env, tmp / "raw-worker.log"):
        for i in range(n + 3):
            t0 = time.perf_counter()
            raw_celery.noop.delay().get(timeout=30)
            if i >= 3:
                out.append(time.perf_counter() - t0)
    return out


def _drain(n: int, tmp: Path, pg: str) -> dict[str, float]:
    """Queue n jobs, then time one worker draining them; the same for raw Celery."""
    from sqlalchemy import func, select

    from scheduler import migrate
    from scheduler.db import Job, session_scope
    from scheduler.jobs import submit
    from scheduler.settings import get_settings

    env = settings_env(home=str(tmp / "home2"), database_url=pg, broker_url=redis_db(11))
    apply_env(env)
    settings = get_settings()
    migrate.upgrade(settings)
    t0 = time.perf_counter()
    for _ in range(n):
        submit(settings, {"kind": "noop"})
    submit_s = time.perf_counter() - t0
    with medgan_worker(env, tmp / "drain-worker.log", "--concurrency", "1"):
        t0 = time.perf_counter()
        while True:
            with session_scope(settings.db_url) as s:
                done = s.execute(select(func.count()).where(Job.status == "SUCCEEDED")).scalar_one()
            if done >= n:
                break
            time.sleep(0.05)
        medgan_s = time.perf_counter() - t0

    from bench import raw_celery

    raw_env = settings_env()
    # The same Redis databases as the latency run: the app's connection pool is already bound to them.
    raw_env.update(RAW_BROKER=redis_db(13), RAW_BACKEND=redis_db(12))
    results = [raw_celery.noop.delay() for _ in range(n)]
    cmd = [sys.executable, "-m", "celery", "-A", "bench.raw_celery", "worker", "--pool", "solo", "-c", "1",
           "--without-gossip", "--without-mingle", "-l", "WARNING"]
    t0 = time.perf_counter()
    with process(cmd, raw_env, tmp / "raw-drain.log", ready=b""):
        for r in results:
            r.get(timeout=120)
        raw_s = time.perf_counter() - t0
    return {"submit_s": submit_s, "medgan_s": medgan_s, "raw_s": raw_s}


def run(quick: bool = False) -> list[dict]:
    n = 20 if quick else 100
    n_queue = 200 if quick else 1000
    rows = []
    with tempfile.TemporaryDirectory() as d, postgres_db() as pg:
        tmp = Path(d)
        total, claim = _medgan_latency(n, tmp, pg)
        raw = _raw_latency(n, tmp)
        m, r = statistics.median(total), statistics.median(raw)
        rows.append({"name": "noop job round trip (p50)", "value": round(m * 1000, 2), "unit": "ms",
                     "baseline": round(r * 1000, 2), "ratio": round(m / r, 2),
                     "note": f"medgan submit→SUCCEEDED on Redis+PostgreSQL vs raw Celery delay().get(); n={n}; "
                             f"submit→claimed p50 {statistics.median(claim) * 1000:.1f} ms"})
        rows.append({"name": "overhead per job (p50)", "value": round((m - r) * 1000, 2), "unit": "ms",
                     "baseline": None, "ratio": None, "note": "medgan p50 minus raw Celery p50"})
    with tempfile.TemporaryDirectory() as d, postgres_db() as pg:
        res = _drain(n_queue, Path(d), pg)
        rows.append({"name": f"submit {n_queue} jobs", "value": round(n_queue / res["submit_s"], 1),
                     "unit": "jobs/s", "baseline": None, "ratio": None,
                     "note": "validate + INSERT + COMMIT + send, one by one"})
        rows.append({"name": f"drain {n_queue} queued no-op jobs, 1 worker", "value": round(n_queue / res["medgan_s"], 1),
                     "unit": "jobs/s", "baseline": round(n_queue / res["raw_s"], 1),
                     "ratio": round(res["raw_s"] / res["medgan_s"], 3),
                     "note": f"scheduler overhead {1000 * (res['medgan_s'] - res['raw_s']) / n_queue:.1f} ms/job "
                             "over raw Celery (claim, lease, events, finish)"})
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
