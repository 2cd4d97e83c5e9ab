"""Service settings: one pydantic-settings object, env prefix MEDGAN_, `.env` supported.

Defaults are the embedded mode (no server at all): SQLite database, kombu's SQLAlchemy
broker on SQLite, a local folder store, all under MEDGAN_HOME. Production changes
settings only. Built by `get_settings()`, never at import time.
"""

from __future__ import annotations

import functools
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from scheduler import constants as C


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDGAN_", env_file=".env", extra="ignore", env_ignore_empty=True)

    home: Path = Field(Path(".medgan"), description="root of the embedded database, broker and store")
    # repr=False: these URLs may hold passwords, and a Settings repr must be safe to log.
    database_url: str | None = Field(None, repr=False, description="SQLAlchemy URL; default sqlite under home")
    broker_url: str | None = Field(None, repr=False, description="Celery broker URL; default kombu sqla+sqlite under home")

    s3_endpoint: str | None = Field(None, description="host:port of an S3 server; unset = local folder store")
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    s3_bucket: str = "medgan"
    s3_secure: bool = False
    s3_region: str | None = None
    store_path: Path | None = Field(None, description="local store folder; default home/store")

    heartbeat_seconds: float = Field(C.HEARTBEAT_SECONDS, gt=0)
    lease_seconds: float = Field(C.LEASE_SECONDS, gt=0)
    sweep_seconds: float = Field(C.SWEEP_SECONDS, gt=0)
    resend_after_seconds: float = Field(C.RESEND_AFTER_SECONDS, gt=0)
    max_attempts: int = Field(C.MAX_ATTEMPTS, ge=1)
    visibility_timeout: int = Field(
        7 * 24 * 3600, ge=60, description="Redis redelivery timeout (s); the claim makes redelivery harmless"
    )
    broker_poll_seconds: float = Field(0.1, gt=0, description="poll interval of the SQLAlchemy broker")
    log_level: str = "INFO"
    quota_gpus_per_owner: int | None = Field(None, ge=1, description="max GPUs one owner holds at once")
    reserve_after_seconds: float = Field(
        300.0, ge=0, description="a GPU job waiting this long gets a host drained for it (scheduler/policy.py)"
    )

    @model_validator(mode="after")
    def _s3_keys(self) -> "Settings":
        if self.s3_endpoint and not (self.s3_access_key and self.s3_secret_key):
            raise ValueError("MEDGAN_S3_ENDPOINT is set but MEDGAN_S3_ACCESS_KEY / MEDGAN_S3_SECRET_KEY are not")
        return self

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home_dir / 'medgan.db'}"

    @property
    def broker(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.home_dir / 'broker.db'}"

    @property
    def local_store(self) -> Path:
        return (self.store_path or self.home_dir / "store").expanduser().resolve()

    @property
    def embedded_broker(self) -> bool:
        return self.broker.startswith("sqla+")


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings (cached). Tests call `get_settings.cache_clear()` after changing env."""
    return Settings()
