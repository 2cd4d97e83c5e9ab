"""Migrations upgrade and downgrade cleanly on SQLite and PostgreSQL, and match the models."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from scheduler import migrate
from scheduler.db import Base
from scheduler.settings import Settings

TABLES = {"jobs", "job_events", "artifacts", "metrics", "workers", "gpu_leases", "log_chunks"}


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm.db'}"
    return request.getfixturevalue("postgres_url")


def _head() -> str:
    from alembic.script import ScriptDirectory

    from scheduler.settings import Settings as _S

    heads = ScriptDirectory.from_config(migrate.alembic_config(_S())).get_heads()
    assert len(heads) == 1, f"the migrations have several heads: {heads}"
    return heads[0]


def test_upgrade_downgrade_upgrade(db_url, tmp_path):
    settings = Settings(home=tmp_path, database_url=db_url)
    migrate.upgrade(settings)
    engine = create_engine(db_url)
    with engine.connect() as conn:
        assert TABLES <= set(inspect(conn).get_table_names())
        # The schema the migrations build is the schema the models describe.
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == [], diff
    assert migrate.current(settings) == _head()
    migrate.downgrade(settings, "base")
    with engine.connect() as conn:
        assert not (TABLES & set(inspect(conn).get_table_names()))
    migrate.upgrade(settings)
    assert migrate.current(settings) == _head()
    engine.dispose()
