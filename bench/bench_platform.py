"""The platform's own cost against Celery's own, in one run, on private services (bench/_services.py).

The baseline is a plain Celery app (bench/raw_celery.py) on the same private Redis, with medgan's Celery
configuration, the same pool (threads) and the same concurrency as the medgan worker. Every figure is the
best of `rounds` runs that alternate medgan and raw Celery, and the clock of each runs only while both
workers are up and ready (worker start-up is never timed).

- round trip: a no-op job from submit to SUCCEEDED (`Client.submit`, then `Client.wait`, the call a user
  makes: on PostgreSQL it wakes on the NOTIFY the finish sends at its commit) against a raw `send_task().get()` (result over Redis); p50 of `n` in a row;
- drain: `n` jobs queued before one worker starts; rate = jobs finished per second between the first and the
  last completion (medgan: the rows' finished_at; raw: the results' date_done), the same definition both sides;
- submission: `Client.submit_many` of `n` no-op jobs into PostgreSQL + Redis, and `Client.submit` one by one,
  against raw `send_task` one by one (no database at all);
- sweep: `medgan submit --sweep seed=0..99` through the CLI: one parent (what `medgan jobs` lists), 100 children.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from bench._services import Services, apply_env, medgan_worker, process, services, settings_env
from bench._timing import alternate

WARMUP = 5
# Round trips are short (100 jobs: under a second a side), and one side's lucky second moves a best-of-3 ratio
# by a third on this shared machine: more rounds, each side's best nearer its quiet-machine figure.
RT_ROUNDS = 7
# Private Redis databases, one per use.
DB_MEDGAN, DB_RAW, DB_RAW_RESULTS, DB_DRAIN, DB_BULK = 0, 1, 2, 3, 4


def _wait_succeeded(client, job_id: str, timeout: float = 60.0) -> None:
    """The public wait a user calls (`Client.wait`: woken by the finish's NOTIFY on PostgreSQL)."""
    job = client.wait(job_id, timeout=timeout)
    if job.status != "SUCCEEDED":  # a job that failed fast must not pass for a fast round trip
        raise RuntimeError(f"job {job_id} ended {job.status}: {job.message}")


def _raw_app(svc: Services):
    from bench.raw_celery import make_app

    return make_app(f"{svc.redis}/{DB_RAW}", f"{svc.redis}/{DB_RAW_RESULTS}")


def _raw_env(svc: Services) -> dict[str, str]:
    env = settings_env(home=str(svc.tmp / "raw"))
    env.update(RAW_BROKER=f"{svc.redis}/{DB_RAW}", RAW_BACKEND=f"{svc.redis}/{DB_RAW_RESULTS}")
    return env


def raw_worker(svc: Services, log: Path, concurrency: int):
    """Celery's own worker with medgan's pool (threads) and concurrency, on the raw app's queue."""
    cmd = [sys.executable, "-m", "celery", "-A", "bench.raw_celery", "worker", "--pool", "threads",
           "-c", str(concurrency), "-Q", "raw", "--without-gossip", "--without-mingle", "-l", "INFO"]
    return process(cmd, _raw_env(svc), log)


def _round_trip(svc: Services, n: int, rounds: int) -> list[dict]:
    from scheduler.client import Client
    from scheduler.db import Job, session_scope
    from scheduler.settings import get_settings

    env = svc.medgan_env("rt", DB_MEDGAN)
    apply_env(env)
    client = Client(get_settings())
    raw = _raw_app(svc)
    ids: list[str] = []

    walls: dict[str, tuple[float, float]] = {}  # job id -> (epoch before submit, epoch when seen SUCCEEDED)

    def medgan_p50(count: int = n) -> float:
        times = []
        for _ in range(count):
            w0, t0 = time.time(), time.perf_counter()
            job_id = client.submit("noop")["id"]
            _wait_succeeded(client, job_id)
            times.append(time.perf_counter() - t0)
            walls[job_id] = (w0, time.time())
            ids.append(job_id)
        return statistics.median(times)

    def raw_p50(count: int = n) -> float:
        times = []
        for _ in range(count):
            t0 = time.perf_counter()
            if raw.send_task("raw.noop").get(timeout=60) != 1:
                raise RuntimeError("the raw no-op returned something else")
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    with ExitStack() as stack:  # both workers up and ready before any clock starts
        workers = {"medgan": stack.enter_context(medgan_worker(env, svc.tmp / "rt-medgan.log", "--concurrency", "1")),
                   "raw": stack.enter_context(raw_worker(svc, svc.tmp / "rt-raw.log", 1))}
        medgan_p50(WARMUP), raw_p50(WARMUP)
        ids.clear()
        cpu: dict[str, dict[str, float]] = {side: {} for side in workers}

        def accounted(side: str, fn: Callable[[], float]) -> Callable[[], float]:
            def run() -> float:
                before = _cpu_snapshot(workers[side].pid, svc.database)
                out = fn()
                after = _cpu_snapshot(workers[side].pid, svc.database)
                for k, v in after.items():
                    cpu[side][k] = cpu[side].get(k, 0.0) + (v - before.get(k, 0.0)) / n
                return out
            return run

        got = alternate({"medgan": accounted("medgan", medgan_p50), "raw": accounted("raw", raw_p50)}, rounds)
    commit = _durable_commit_p50(svc.database)
    with session_scope(client.settings.db_url) as s:
        rows = [s.get(Job, i) for i in ids]
    stages = _stages(rows, walls)
    m, r = min(got["medgan"]), min(got["raw"])
    # The same data as a ratio per round (medgan's p50 over raw Celery's, next to each other in time): a lucky
    # round of one side alone moves the best-of ratio, not this one.
    paired = statistics.median(a / b for a, b in zip(got["medgan"], got["raw"]))
    return [
        {"name": "noop job round trip (p50)", "value": round(m * 1000, 2), "unit": "ms",
         "baseline": round(r * 1000, 2), "ratio": round(m / r, 2),
         "note": f"submit→SUCCEEDED (Client.submit, then Client.wait: woken by the finish's NOTIFY, which carries "
                 f"the job) vs raw Celery send_task().get(); threads pool, concurrency 1 both; best p50 of {rounds} "
                 f"alternating runs of n={n}; per-run p50s medgan {_ms(got['medgan'])}, raw {_ms(got['raw'])} "
                 f"(median of the per-run ratios {paired:.2f}); stages from the rows and the client's clock (p50): "
                 f"{stages}"},
        {"name": "overhead per job (p50)", "value": round((m - r) * 1000, 2), "unit": "ms",
         "note": "medgan round trip p50 minus raw Celery round trip p50, same run"},
        _cpu_row(cpu, rounds, m),
        {"name": "durable commit (p50)", "value": round(commit * 1000, 2), "unit": "ms",
         "baseline": round(r * 1000, 2), "ratio": round(2 * commit / r, 2),
         "note": f"one INSERT + COMMIT on the benchmark's own PostgreSQL database (the WAL flushed to disk), "
                 f"{COMMIT_PROBES} in a row after the round trips; a job waits for the disk twice on its way to "
                 f"SUCCEEDED (submission, finish; its claim commits without waiting: scheduler.db.autocommit), so "
                 f"2 x this = {2 * commit * 1000:.1f} ms is a floor under its round trip that raw Celery (nothing "
                 f"durable) does not pay; ratio: that floor over raw Celery's round trip"},
    ]


def _announcement(svc: Services, block: int, rounds: int) -> list[dict]:
    """What the finish's announcement saves: one medgan stack, the same client, blocks of `block` round trips
    in turn with the wait taking the job from the announcement (as shipped), reading it instead (the listener
    told to have none: the wait before the announcement), and reading it again (the control: a ratio of two
    identical arms, which shows the harness's own noise). Ratio: the median over rounds of each arm's p50 over
    the reading arm's p50 of the same round."""
    from scheduler.client import Client
    from scheduler.settings import get_settings

    env = svc.medgan_env("ann", DB_MEDGAN)
    apply_env(env)
    client = Client(get_settings())

    def p50(read: bool) -> float:
        times = []
        for _ in range(block):
            t0 = time.perf_counter()
            job_id = client.submit("noop")["id"]
            listener = client._listener if read else None
            if listener is not None:
                listener.announcement = lambda _id: None  # none kept: the wait reads the job
            try:
                _wait_succeeded(client, job_id)
            finally:
                if listener is not None:
                    del listener.announcement  # the class's again
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    with medgan_worker(env, svc.tmp / "ann-medgan.log", "--concurrency", "1"):
        for _ in range(WARMUP):
            p50(False)
        got = alternate({"announced": lambda: p50(False), "read": lambda: p50(True),
                         "read again": lambda: p50(True)}, rounds)
    ratio = {arm: statistics.median(a / b for a, b in zip(got[arm], got["read"])) for arm in ("announced", "read again")}
    return [{"name": "wait with the finish's announcement vs reading the job", "value": round(ratio["announced"], 3),
             "unit": "x", "baseline": round(ratio["read again"], 3),
             "note": f"round trip p50 (Client.submit, then Client.wait) of one medgan stack, blocks of {block} in "
                     f"turn for {rounds} rounds: the wait taking the job from the finish's NOTIFY (as shipped) vs "
                     f"the same wait reading the job on its LISTEN connection; value: the median of the per-round "
                     f"ratios; baseline: the control, the reading arm against itself (a second reading arm); "
                     f"per-round p50s announced {_ms(got['announced'])}, read {_ms(got['read'])} ms"}]


COMMIT_PROBES = 200


def connect(db_url: str, **kwargs: Any):
    """A psycopg connection of its own to the database of a SQLAlchemy URL (the benchmark's own database)."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(db_url).set(drivername="postgresql")
    return psycopg.connect(url.render_as_string(hide_password=False), **kwargs)


def _cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU seconds so far of a process of this machine, or of one of its threads (/proc; 0 for one
    that has gone)."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_snapshot(worker_pid: int, db_url: str) -> dict[str, float]:
    """CPU seconds so far of the worker process (its main thread, Celery's consumer, apart: the rest is the
    task's thread and medgan's heartbeat), of this process (the client) and of the PostgreSQL server processes
    serving the benchmark's own database (other databases' are not counted)."""
    with connect(db_url, autocommit=True) as conn:
        pids = [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                           "AND pid <> pg_backend_pid()").fetchall()]
    me = resource.getrusage(resource.RUSAGE_SELF)
    worker, consumer = _cpu_seconds(worker_pid), _cpu_seconds(worker_pid, worker_pid)
    return {"worker consumer thread": consumer, "worker other threads": worker - consumer,
            "client": me.ru_utime + me.ru_stime,
            "database": sum(_cpu_seconds(p) for p in pids)}


def _cpu_row(cpu: dict[str, dict[str, float]], rounds: int, medgan_p50: float) -> dict:
    total = {side: sum(parts.values()) for side, parts in cpu.items()}
    per = {side: ", ".join(f"{k} {v / rounds * 1000:.2f}" for k, v in parts.items()) for side, parts in cpu.items()}
    m, r = total["medgan"] / rounds, total["raw"] / rounds
    return {"name": "CPU per round trip", "value": round(m * 1000, 2), "unit": "ms", "baseline": round(r * 1000, 2),
            "ratio": round(m / r, 2),
            "note": f"CPU time (user + system) per job of the round-trip runs above, mean over all {rounds} runs of "
                    f"each side: medgan {per['medgan']} ms; raw Celery {per['raw']} ms (the worker process: its main "
                    f"thread, Celery's consumer, and its other threads, the task's among them; this client process; "
                    f"the PostgreSQL processes of the benchmark's own database; the private redis-server not "
                    f"counted); on {os.cpu_count()} cores a job needing {m * 1000:.1f} ms of CPU "
                    f"across its processes takes at least {m * 1000 / os.cpu_count():.1f} ms of wall time, "
                    f"medgan's round trip p50 being {medgan_p50 * 1000:.1f} ms"}


def _durable_commit_p50(db_url: str) -> float:
    """p50 of INSERT + COMMIT of one row in a scratch table of the benchmark's own database (dropped after)."""
    with connect(db_url) as conn:
        conn.execute("CREATE TABLE bench_commit_probe (x int)")
        conn.commit()
        times = []
        for i in range(COMMIT_PROBES):
            conn.execute("INSERT INTO bench_commit_probe VALUES (%s)", (i,))
            t0 = time.perf_counter()
            conn.commit()
            times.append(time.perf_counter() - t0)
        conn.execute("DROP TABLE bench_commit_probe")
        conn.commit()
    return statistics.median(times)


def _stages(rows: list, walls: dict[str, tuple[float, float]]) -> str:
    """Where a round trip goes, p50 of each stage over the measured jobs: the client's submit until the row's
    created_at (validation), until started_at (insert and commit, publish, delivery, the claim's statements),
    until finished_at (the claim's commit, the handler, the finish's statements), until the client saw
    SUCCEEDED (the finish's commit, the poll). Times in the rows are the worker's and client's clock (one
    machine here)."""
    from datetime import timezone

    def epoch(t: datetime) -> float:
        return t.replace(tzinfo=timezone.utc).timestamp()

    parts: dict[str, list[float]] = {"submit→created": [], "created→claimed": [], "claimed→finished": [],
                                     "finished→seen": []}
    for row in rows:
        w0, seen = walls[row.id]
        created, started, finished = epoch(row.created_at), epoch(row.started_at), epoch(row.finished_at)
        for name, (a, b) in zip(parts, ((w0, created), (created, started), (started, finished), (finished, seen))):
            parts[name].append(b - a)
    return ", ".join(f"{k} {statistics.median(v) * 1000:.1f} ms" for k, v in parts.items())


def _ms(values: list[float]) -> str:
    return "/".join(f"{v * 1000:.1f}" for v in values)


def _span_rate(times: list[datetime]) -> float:
    """Completions per second between the first and the last completion."""
    span = (max(times) - min(times)).total_seconds()
    return (len(times) - 1) / span if span > 0 else float("inf")


def _drain(svc: Services, n: int, rounds: int) -> list[dict]:
    import redis
    from sqlalchemy import func, select

    from scheduler.client import Client
    from scheduler.db import Job, session_scope
    from scheduler.settings import get_settings

    env = svc.medgan_env("drain", DB_DRAIN)
    apply_env(env)
    client = Client(get_settings())
    raw = _raw_app(svc)
    results = redis.Redis.from_url(f"{svc.redis}/{DB_RAW_RESULTS}")

    def medgan_rate() -> float:
        svc.redis_db(DB_DRAIN)
        ids = [j["id"] for j in client.submit_many([{"kind": "noop"}] * n)]
        with medgan_worker(env, svc.tmp / "drain-medgan.log", "--concurrency", "1"):
            deadline = time.monotonic() + 600
            while True:
                with session_scope(client.settings.db_url) as s:
                    done = s.execute(select(func.count()).where(Job.id.in_(ids), Job.status == "SUCCEEDED")).scalar_one()
                if done >= n:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"medgan drained {done} of {n} jobs in 600 s")
                time.sleep(0.02)
        with session_scope(client.settings.db_url) as s:
            finished = list(s.execute(select(Job.finished_at).where(Job.id.in_(ids))).scalars())
        return _span_rate(finished)

    def raw_rate() -> float:
        svc.redis_db(DB_RAW), svc.redis_db(DB_RAW_RESULTS)
        ids = [raw.send_task("raw.noop").id for _ in range(n)]
        with raw_worker(svc, svc.tmp / "drain-raw.log", 1):
            deadline = time.monotonic() + 600
            while results.dbsize() < n:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"raw Celery drained {results.dbsize()} of {n} tasks in 600 s")
                time.sleep(0.02)
        metas = results.mget([f"celery-task-meta-{i}" for i in ids])
        return _span_rate([datetime.fromisoformat(json.loads(m)["date_done"]) for m in metas])

    got = alternate({"medgan": medgan_rate, "raw": raw_rate}, rounds)
    results.close()
    m, r = max(got["medgan"]), max(got["raw"])
    return [{"name": f"drain {n} queued no-op jobs, 1 worker", "value": round(m, 1), "unit": "jobs/s",
             "baseline": round(r, 1), "ratio": round(m / r, 3),
             "note": f"jobs queued first, then one worker (threads, concurrency 1) started; rate between the "
                     f"first and last completion (medgan finished_at, raw date_done); best of {rounds} "
                     f"alternating runs: medgan {_rates(got['medgan'])}, raw {_rates(got['raw'])} jobs/s; "
                     f"{1000 / m - 1000 / r:.2f} ms/job over raw Celery"}]


def _drain_floor(rows: list[dict]) -> None:
    """Add to the drain row what one durable commit per job (the finish, measured in this run; the claim does
    not wait for the disk) leaves as the best medgan could do against raw Celery's rate, whatever else it saved."""
    commit = next(r["value"] for r in rows if r["name"] == "durable commit (p50)") / 1000
    drain = next(r for r in rows if r["name"].startswith("drain "))
    per_job = 1 / drain["baseline"]
    drain["note"] += (f"; floor: a job waits for the disk once in a drain (its finish), so at this run's durable "
                      f"commit ({commit * 1000:.1f} ms) medgan could reach at most {per_job / (per_job + commit):.2f}x "
                      f"raw Celery's rate even with nothing else over raw Celery's {per_job * 1000:.1f} ms/job")


def _rates(values: list[float]) -> str:
    return "/".join(f"{v:.0f}" for v in values)


def _submission(svc: Services, n_bulk: int, n_single: int, rounds: int) -> list[dict]:
    from scheduler.client import Client
    from scheduler.settings import get_settings

    env = svc.medgan_env("bulk", DB_BULK)
    apply_env(env)
    client = Client(get_settings())
    raw = _raw_app(svc)

    import redis

    brokers = {"medgan": redis.Redis.from_url(f"{svc.redis}/{DB_BULK}"), "raw": redis.Redis.from_url(f"{svc.redis}/{DB_RAW}")}

    def timed(fn: Callable[[], Any], side: str, n: int) -> float:
        svc.redis_db(DB_BULK), svc.redis_db(DB_RAW)  # no worker here: empty the queues each time
        t0 = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - t0
        # The control: a rate counts only if every message is in the broker (a fast path that dropped some
        # would otherwise look good).
        waiting = sum(brokers[side].llen(k) for k in brokers[side].keys("*") if brokers[side].type(k) == b"list")
        if waiting != n:
            raise RuntimeError(f"{side}: {n} submitted, {waiting} messages in the broker")
        return elapsed

    def raw_many(count: int) -> None:
        for _ in range(count):
            raw.send_task("raw.noop")

    bulk = alternate({"medgan": lambda: timed(lambda: client.submit_many([{"kind": "noop"}] * n_bulk), "medgan", n_bulk),
                      "raw": lambda: timed(lambda: raw_many(n_bulk), "raw", n_bulk)}, rounds)
    single = alternate({"medgan": lambda: timed(lambda: [client.submit("noop") for _ in range(n_single)], "medgan",
                                                n_single),
                        "raw": lambda: timed(lambda: raw_many(n_single), "raw", n_single)}, rounds)
    for b in brokers.values():
        b.close()
    mb, rb, ms, rs = (min(bulk["medgan"]), min(bulk["raw"]), min(single["medgan"]), min(single["raw"]))
    return [
        {"name": f"submit_many {n_bulk} jobs", "value": round(n_bulk / mb, 1), "unit": "jobs/s",
         "baseline": round(n_bulk / rb, 1), "ratio": round(rb / mb, 3),
         "note": f"Client.submit_many: validate all, one transaction, one pipelined publish, into PostgreSQL + "
                 f"Redis; baseline raw Celery send_task one by one (no database); best of {rounds} alternating: "
                 f"medgan {_rates([n_bulk / t for t in bulk['medgan']])}, raw {_rates([n_bulk / t for t in bulk['raw']])} "
                 f"jobs/s; every message counted in the broker after each run"},
        {"name": f"submit {n_single} jobs one by one", "value": round(n_single / ms, 1), "unit": "jobs/s",
         "baseline": round(n_single / rs, 1), "ratio": round(rs / ms, 3),
         "note": f"Client.submit in a loop vs raw Celery send_task in a loop; best of {rounds} alternating: medgan "
                 f"{_rates([n_single / t for t in single['medgan']])}, raw {_rates([n_single / t for t in single['raw']])} jobs/s"},
    ]


def _sweep(svc: Services, n: int = 100) -> list[dict]:
    """`medgan submit train.json --sweep seed=0..99` through the real CLI: one new top-level job, n children."""
    from sqlalchemy import func, select

    from scheduler.db import Job, session_scope
    from scheduler.settings import get_settings

    env = svc.medgan_env("sweep", DB_BULK)
    apply_env(env)
    spec = svc.tmp / "train.json"
    spec.write_text(json.dumps({"kind": "train", "name": "bench sweep", "config": {"steps": 1}}))

    def counts() -> tuple[int, int]:
        with session_scope(get_settings().db_url) as s:
            top = s.execute(select(func.count()).select_from(Job).where(Job.parent_id.is_(None))).scalar_one()
            return top, s.execute(select(func.count()).select_from(Job)).scalar_one()

    top0, all0 = counts()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cli", "submit", str(spec), "--sweep", f"seed=0..{n - 1}"],
                          env=env, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"the sweep was refused: {proc.stderr.strip()}")
    top1, all1 = counts()
    return [{"name": f"CLI sweep of {n} jobs", "value": round(wall * 1000, 1), "unit": "ms",
             "note": f"`medgan submit train.json --sweep seed=0..{n - 1}` (a fresh process, validation, one "
                     f"transaction, one publish): {top1 - top0} new top-level job (what `medgan jobs` lists), "
                     f"{all1 - all0 - (top1 - top0)} children"}]


def stale_statistics(db_url: str, queued: int) -> None:
    """Jobs as a busy table holds them just after a bulk submission: 200 ended jobs, analysed; then `queued`
    queued and 50 running ones that the statistics do not know of (autovacuum off on the table, so nothing
    re-analyses it meanwhile). Ids: done00000001…, q00000001…, r00000001… (tests/scheduler/test_pk_plans.py)."""
    from sqlalchemy import text

    from scheduler.db import get_engine

    cols = ("id, kind, status, spec, name, owner, priority, gpus, queue, depends_on, attempt, max_attempts, "
            "cancel_requested, fence, lease_losses, preemptions, preemptible, progress, progress_step, "
            "progress_total, created_at, updated_at, lease_owner")

    def rows(status: str, prefix: str, n: int, owner: str = "NULL") -> str:
        return (f"INSERT INTO jobs ({cols}) SELECT '{prefix}' || lpad(g::text, 8, '0'), 'noop', '{status}', "
                f"'{{\"kind\": \"noop\"}}', NULL, 'me', 5, 0, 'medgan.generate', '[]', 0, 3, false, 1, 0, 0, "
                f"true, 0, 0, 0, now(), now(), {owner} FROM generate_series(1, {n}) g")

    with get_engine(db_url).connect() as conn:
        conn.execute(text("ALTER TABLE jobs SET (autovacuum_enabled = false)"))
        conn.execute(text(rows("SUCCEEDED", "done", 200)))
        conn.commit()
        conn.execute(text("ANALYZE jobs"))
        conn.commit()
        conn.execute(text(rows("QUEUED", "q", queued)))
        conn.execute(text(rows("RUNNING", "r", 50, owner="'someone'")))
        conn.commit()


def _claim_among_queued(queued: int, probes: int, rounds: int) -> list[dict]:
    """The claim's statement for one job among `queued` others, on a table in `stale_statistics`' state (a
    database of its own): medgan's (scheduler.states.CLAIM_CPU_SQL, whose status test no index serves:
    db.STATUS_BY_ID) against the same statement with `status = 'QUEUED'` (which the planner then serves
    from a status index, scanning every queued job). p50 of `probes` claims of distinct jobs, each rolled
    back; best of `rounds` alternating."""
    from datetime import timedelta
    from itertools import count

    from scheduler import migrate, states
    from scheduler.db import STATUS_BY_ID, utcnow
    from scheduler.settings import Settings

    from bench._services import postgres_db

    plain = states.CLAIM_CPU_SQL.replace(STATUS_BY_ID, "status")
    assert plain != states.CLAIM_CPU_SQL
    with postgres_db() as url:
        migrate.upgrade(Settings(database_url=url))
        stale_statistics(url, queued)
        with connect(url) as conn:
            plans = {name: "\n".join(r[0] for r in conn.execute(
                "EXPLAIN " + sql, {"job_id": "q00000001", "owner": "bench", "now": utcnow(),
                                   "expires": utcnow()}).fetchall())
                for name, sql in (("medgan", states.CLAIM_CPU_SQL), ("status", plain))}
            conn.rollback()
            picks = count()  # a job after another (cycling: every claim is rolled back)

            def p50(sql: str) -> Callable[[], float]:
                def once() -> float:
                    times = []
                    for _ in range(probes):
                        now = utcnow()
                        params = {"job_id": f"q{next(picks) % queued + 1:08d}", "owner": "bench", "now": now,
                                  "expires": now + timedelta(seconds=60)}
                        t0 = time.perf_counter()
                        if len(conn.execute(sql, params).fetchall()) != 1:
                            raise RuntimeError("the claim matched no queued job")
                        times.append(time.perf_counter() - t0)
                        conn.rollback()
                    return statistics.median(times)
                return once

            got = alternate({"medgan": p50(states.CLAIM_CPU_SQL), "status": p50(plain)}, rounds)
    index = {name: ("primary key" if "pk_jobs" in plan and "ix_jobs_status" not in plan else "a status index")
             for name, plan in plans.items()}
    m, b = min(got["medgan"]), min(got["status"])
    return [{"name": f"claim among {queued:,} queued, stale statistics (p50)", "value": round(m * 1000, 3),
             "unit": "ms", "baseline": round(b * 1000, 3), "ratio": round(m / b, 3),
             "note": f"the claim statement of one job (CPU, one statement, rolled back) on a table analysed while "
                     f"all its jobs had ended, then {queued:,} queued: medgan's (found by {index['medgan']}) vs the "
                     f"same statement testing `status = 'QUEUED'` (found by {index['status']}); best p50 of "
                     f"{rounds} alternating runs of {probes}; per-run p50s medgan {_ms(got['medgan'])}, "
                     f"status-index form {_ms(got['status'])}"}]


def run(quick: bool = False) -> list[dict]:
    rounds = 2 if quick else 3
    n_rt, n_drain, n_bulk, n_single = (30, 200, 2000, 100) if quick else (100, 1000, 10_000, 300)
    rows: list[dict] = []
    with services() as svc:
        from scheduler import migrate
        from scheduler.settings import get_settings

        apply_env(svc.medgan_env("migrate", DB_MEDGAN))
        migrate.upgrade(get_settings())
        rows += _round_trip(svc, n_rt, 2 if quick else RT_ROUNDS)
        rows += _announcement(svc, 25, 4 if quick else 20)
        rows += _drain(svc, n_drain, rounds)
        _drain_floor(rows)
        rows += _submission(svc, n_bulk, n_single, rounds)
        rows += _sweep(svc)
    rows += _claim_among_queued(2000 if quick else 10_000, 50 if quick else 200, rounds)
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
