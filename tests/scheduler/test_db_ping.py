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
