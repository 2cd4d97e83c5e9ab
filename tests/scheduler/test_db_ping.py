"""PostgreSQL connections are pinged before use only after DB_PING_IDLE_SECONDS unused: a connection the server
dropped while it idled in the pool is replaced without the caller noticing; one used within that window is
handed out as it is (no round trip), which the control shows by failing on a dropped one."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from scheduler import constants as C
from scheduler.db import get_engine


def _drop_server_side(url: str, pid: int) -> None:
    """End backend `pid` from another connection of our own database (the pooled one does not know yet)."""
    killer = create_engine(url, isolation_level="AUTOCOMMIT")
    with killer.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
    killer.dispose()


def _pooled_backend(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT pg_backend_pid()")).scalar()


@pytest.mark.parametrize("idle", [True, False])
def test_a_connection_dropped_while_idle_is_replaced_and_a_fresh_one_is_not_pinged(postgres_url, monkeypatch, idle):
    get_engine.cache_clear()
    engine = get_engine(postgres_url)
    monkeypatch.setattr(C, "DB_PING_IDLE_SECONDS", 0.2 if idle else 3600.0)
    pid = _pooled_backend(engine)
    _drop_server_side(postgres_url, pid)
    time.sleep(0.4)  # longer than the idle threshold of the first case
    if idle:
        new_pid = _pooled_backend(engine)  # pinged, found dead, replaced: the caller sees nothing
        assert new_pid != pid
    else:
        # The control: within the window there is no ping, so the dropped connection is what the caller gets
        # (this is the round trip the policy saves; the pool then discards it and the next checkout works).
        with pytest.raises(OperationalError):
            _pooled_backend(engine)
        assert _pooled_backend(engine) != pid
    get_engine.cache_clear()
    engine.dispose()


def test_a_driver_statement_fails_as_sqlalchemy_does_and_a_lost_connection_is_replaced(postgres_url, monkeypatch):
    """`driver_rows` (the claim's, the finish's and a submission's statement, run on psycopg itself) raises
    SQLAlchemy's errors, not psycopg's, so the callers' handling (the claim's retry, the submission's key
    collision) still applies; a connection the server dropped is invalidated and the next checkout is fresh,
    exactly as a statement run through SQLAlchemy (the control) does."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    from scheduler.db import autocommit, driver_rows

    get_engine.cache_clear()
    monkeypatch.setattr(C, "DB_PING_IDLE_SECONDS", 3600.0)  # no ping: the dropped connection is handed out
    with autocommit(postgres_url) as conn:
        assert driver_rows(conn, "SELECT %(a)s::int + 1 AS b, 'x' AS c", {"a": 1}) == [{"b": 2, "c": "x"}]
        assert driver_rows(conn, "CREATE TEMP TABLE t (k int PRIMARY KEY)", {}) == []
        driver_rows(conn, "INSERT INTO t VALUES (%(k)s)", {"k": 1})
        with pytest.raises(IntegrityError):
            driver_rows(conn, "INSERT INTO t VALUES (%(k)s)", {"k": 1})
        with pytest.raises(ProgrammingError):
            driver_rows(conn, "SELECT no_such_column FROM t", {})
        pid = driver_rows(conn, "SELECT pg_backend_pid() AS pid", {})[0]["pid"]
    _drop_server_side(postgres_url, pid)
    time.sleep(0.2)
    with autocommit(postgres_url) as conn:
        with pytest.raises(OperationalError) as caught:
            driver_rows(conn, "SELECT 1 AS one", {})
        assert caught.value.connection_invalidated
    with autocommit(postgres_url) as conn:
        assert driver_rows(conn, "SELECT pg_backend_pid() AS pid", {})[0]["pid"] != pid
    get_engine.cache_clear()
