"""`medgan db upgrade|downgrade|current`: Alembic driven from code, URL from Settings.

Migrations are an explicit step; nothing runs them implicitly on import.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

import migrations
from scheduler.settings import Settings


def alembic_config(settings: Settings) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    cfg.set_main_option("sqlalchemy.url", settings.db_url.replace("%", "%%"))
    return cfg


def _prepare(settings: Settings) -> Config:
    if settings.db_url.startswith("sqlite"):
        settings.home_dir.mkdir(parents=True, exist_ok=True)
    return alembic_config(settings)


def upgrade(settings: Settings, revision: str = "head") -> None:
    command.upgrade(_prepare(settings), revision)


def downgrade(settings: Settings, revision: str) -> None:
    command.downgrade(_prepare(settings), revision)


def current(settings: Settings) -> str | None:
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine

    engine = create_engine(settings.db_url)
    with engine.connect() as conn:
        rev = MigrationContext.configure(conn).get_current_revision()
    engine.dispose()
    return rev
