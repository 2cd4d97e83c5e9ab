"""The benchmarks never touch the machine's shared Redis (127.0.0.1:6379) or an existing PostgreSQL database.

- Every benchmark file gets its Redis and PostgreSQL from `bench._services.services()` and names no server
  itself (no 6379, no FLUSHDB, no engine or Redis client of its own), checked on the source of each.
- A benchmark's service set-up and its submission phase run with every TCP connection and every PostgreSQL
  connection of this process recorded, and a sentinel key in the shared Redis: no connection reaches 6379,
  PostgreSQL is reached only for the benchmark's own database (and the maintenance one, for CREATE/DROP
  DATABASE of that name: the only database statements it issues), the sentinel survives, and every database
  that existed before still does.
- The worker processes a benchmark starts get only the private Redis in their environment, and a process
  whose environment names the shared Redis is refused before it starts (the control).
"""

from __future__ import annotations

import re
import socket
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine

from tests.conftest import PG_URL, port_open, require

BENCH = Path(__file__).resolve().parents[2] / "bench"
SHARED = ("127.0.0.1", 6379)
# What only bench/_services.py may do: name a server, make a client or an engine, empty a database.
FORBIDDEN = [r"6379", r"5432", r"flushdb", r"flushall", r"create_engine\(", r"redis\.Redis\(", r"StrictRedis",
             r"redis://127", r"redis://localhost", r"MEDGAN_TEST_PG", r"postgresql(\+psycopg)?://"]


def _benchmarks() -> list[Path]:
    return sorted(p for p in BENCH.glob("*.py") if p.name != "_services.py")


@pytest.mark.parametrize("path", _benchmarks(), ids=lambda p: p.name)
def test_no_benchmark_names_a_server_of_its_own(path: Path) -> None:
    source = path.read_text()
    found = [pat for pat in FORBIDDEN if re.search(pat, source, re.IGNORECASE)]
    assert not found, f"{path.name} uses {found}: take Redis/PostgreSQL from bench._services.services()"
    if re.search(r"medgan_worker\(|raw_worker\(|broker_url=|database_url=|^import redis|^\s+import redis", source,
                 re.MULTILINE) and path.name != "raw_celery.py":
        assert "services()" in source, f"{path.name} starts services without bench._services.services()"


def _databases() -> set[str]:
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        names = set(c.execute(text("SELECT datname FROM pg_database")).scalars())
    admin.dispose()
    return names


def test_a_benchmark_run_never_reaches_the_shared_redis_or_an_existing_database(monkeypatch) -> None:
    require(port_open("127.0.0.1", 5432), "PostgreSQL at 127.0.0.1:5432")
    import psycopg
    import redis
    from psycopg.conninfo import conninfo_to_dict

    from bench import _services, bench_platform

    sentinel = f"medgan-bench-sentinel-{uuid.uuid4().hex}"
    shared = redis.Redis(*SHARED, db=13, socket_timeout=2) if port_open(*SHARED) else None
    if shared is not None:  # db 13: one the old benchmark emptied
        shared.set(sentinel, "must survive", ex=600)
    before = _databases()

    tcp: list[tuple[str, int]] = []
    real_connect = socket.socket.connect

    def recording_connect(self, address):
        if isinstance(address, tuple):
            tcp.append((address[0], address[1]))
        return real_connect(self, address)

    pg_dbs: list[str] = []
    real_pg = psycopg.Connection.connect.__func__

    def recording_pg(cls, conninfo="", **kwargs):
        pg_dbs.append(conninfo_to_dict(conninfo, **kwargs).get("dbname", ""))
        return real_pg(cls, conninfo, **kwargs)

    statements: list[str] = []

    def recording_sql(conn, cursor, statement, *args):
        statements.append(statement)

    event.listen(Engine, "before_cursor_execute", recording_sql)
    monkeypatch.setattr(socket.socket, "connect", recording_connect)
    monkeypatch.setattr(psycopg.Connection, "connect", classmethod(recording_pg))
    monkeypatch.setattr(psycopg, "connect", lambda conninfo="", **kw: recording_pg(psycopg.Connection, conninfo, **kw))
    try:
        with _services.services() as svc:
            own_db = svc.database.rsplit("/", 1)[1]
            assert own_db not in before and own_db.startswith(_services.DB_PREFIX)
            from scheduler import migrate
            from scheduler.settings import get_settings

            _services.apply_env(svc.medgan_env("safety", bench_platform.DB_MEDGAN))
            migrate.upgrade(get_settings())
            rows = bench_platform._submission(svc, 30, 5, 1)  # the phase that writes most, in this process
            assert [r["unit"] for r in rows] == ["jobs/s", "jobs/s"]
            private_port = int(svc.redis.rsplit(":", 1)[1])
            # The workers the benchmark would start: only our private Redis in their environments.
            for env in (svc.medgan_env("w", 0), bench_platform._raw_env(svc)):
                urls = [v for v in env.values() if v.startswith("redis://")]
                assert urls and all(u.startswith(svc.redis + "/") for u in urls), urls
                _services._check_env(env)
            # The control: an environment naming the shared Redis is refused before any process starts.
            bad = dict(svc.medgan_env("w", 0), MEDGAN_BROKER_URL="redis://127.0.0.1:6379/11")
            with pytest.raises(RuntimeError, match="only use its private Redis"):
                with _services.medgan_worker(bad, svc.tmp / "never.log"):
                    pass
        assert not (svc.tmp).exists()
    finally:
        monkeypatch.undo()
        event.remove(Engine, "before_cursor_execute", recording_sql)
    assert not [a for a in tcp if a[1] == SHARED[1]], tcp
    assert ("127.0.0.1", private_port) in tcp, "the recording saw no Redis traffic at all"
    assert set(pg_dbs) <= {own_db, PG_URL.rsplit("/", 1)[1]}, pg_dbs
    assert own_db in pg_dbs  # the recording does see PostgreSQL connections
    ddl = [st for st in statements if re.match(r"\s*(CREATE|DROP|ALTER)\s+DATABASE", st, re.IGNORECASE)]
    assert len(ddl) == 2 and all(f'"{own_db}"' in st for st in ddl), ddl  # made ours, dropped ours, nothing else
    after = _databases()
    assert own_db not in after
    # Other sessions' tests make and drop their own databases meanwhile: every lasting one is still there.
    lasting = {d for d in before if not d.startswith(("medgan_test_", _services.DB_PREFIX))}
    assert lasting <= after, lasting - after
    if shared is not None:
        assert shared.get(sentinel) == b"must survive"
        shared.delete(sentinel)
