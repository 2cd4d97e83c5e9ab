"""Service settings: one pydantic-settings object, env prefix MEDGAN_, `.env` supported.

Defaults are the embedded mode (no server at all): SQLite database, kombu's SQLAlchemy
broker on SQLite, a local folder store, all under MEDGAN_HOME. Production changes
settings only. Built by `get_settings()`, never at import time.
"""

from __future__ import annotations

import functools
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from medgan.data.policy import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_PIXELS, DEFAULT_MAX_VOXELS
from scheduler import constants as C
from scheduler.errors import SettingsInvalid


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
    max_lease_losses: int = Field(
        C.MAX_LEASE_LOSSES, ge=1, description="lost leases after which a job is FAILED (lost leases are not failures)")
    # Why one hour: a message is only a doorbell (the database is the truth and the claim drops a duplicate),
    # so redelivery costs one no-op claim, while a long timeout kept the messages of SIGKILLed workers
    # unacknowledged (Flower: STARTED) for days. The sweeper, not redelivery, recovers a lost job.
    visibility_timeout: int = Field(
        C.VISIBILITY_TIMEOUT_SECONDS, ge=60,
        description="Redis redelivery timeout (s); a redelivered message finds nothing to claim and is dropped",
    )
    broker_poll_seconds: float = Field(0.1, gt=0, description="poll interval of the SQLAlchemy broker")
    log_level: str = "INFO"
    quota_gpus_per_owner: int | None = Field(None, ge=1, description="max GPUs one owner holds at once")
    reserve_after_seconds: float = Field(
        300.0, ge=0, description="a GPU job waiting this long gets a host drained for it (scheduler/policy.py)"
    )
    preempt_grace_seconds: float = Field(
        C.PREEMPT_GRACE_SECONDS, ge=0,
        description="a higher-priority GPU job waiting this long for cards preempts lower-priority jobs")
    preempt_protected: str = Field(
        "", description="queues and owners (teams) whose jobs are never preempted, comma-separated")
    fair_share_window_seconds: float = Field(
        C.FAIR_SHARE_WINDOW_SECONDS, gt=0,
        description="how far back an owner's GPU time counts for fair share among equal priorities")

    @property
    def protected_from_preemption(self) -> frozenset[str]:
        """The queue and owner names of `preempt_protected`."""
        return frozenset(x.strip() for x in self.preempt_protected.split(",") if x.strip())

    # Ceilings of what any job may read (checked from file headers before a pixel is decoded);
    # a job's own `read` policy may only lower them.
    max_image_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="largest 2-D image (H x W) read")
    max_image_voxels: int = Field(DEFAULT_MAX_VOXELS, ge=1, description="largest file (all frames) read, in pixels")
    max_file_bytes: int = Field(DEFAULT_MAX_FILE_BYTES, ge=1, description="largest file uploaded or read")
    upload_stale_seconds: float = Field(
        C.UPLOAD_STALE_SECONDS, gt=0, description="a half-written dataset upload idle this long is removed")

    @field_validator("database_url", "broker_url")
    @classmethod
    def _url(cls, v: str | None, info) -> str | None:  # noqa: ANN001
        if v is None:
            return v
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        name = f"MEDGAN_{info.field_name.upper()}"
        if info.field_name == "broker_url":
            if "://" not in v:
                raise ValueError(f"{name} is not a URL (like redis://host:6379/0)")
            return v
        try:
            make_url(v)
        except ArgumentError:
            raise ValueError(f"{name} is not a database URL (like postgresql+psycopg://user@host/db "
                             "or sqlite:///path.db)") from None
        return v

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("MEDGAN_LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return v.upper()

    def read_ceilings(self) -> dict[str, int]:
        """The reader limits of this deployment, as ReadPolicy.capped() takes them."""
        return {"max_pixels": self.max_image_pixels, "max_voxels": self.max_image_voxels,
                "max_file_bytes": self.max_file_bytes}

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


def format_settings_error(exc: ValidationError) -> str:
    """One line naming each bad variable by its environment name."""
    parts = []
    for err in exc.errors():
        field = ".".join(str(x) for x in err["loc"])
        msg = " ".join(str(err["msg"]).removeprefix("Value error, ").split())
        env = f"MEDGAN_{field.upper()}" if field else ""
        parts.append(msg if msg.startswith(env) and env else (f"{env}: {msg}" if env else msg))
    return "invalid settings: " + "; ".join(parts)


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings (cached). Tests call `get_settings.cache_clear()` after changing env.

    Raises SettingsInvalid (one line, naming the variable) for any malformed value or .env file."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsInvalid(format_settings_error(exc)) from None
    except SettingsError as exc:
        raise SettingsInvalid(f"invalid settings: {' '.join(str(exc).split())[:300]}") from None
    except UnicodeDecodeError as exc:
        raise SettingsInvalid(f"invalid settings: the .env file is not UTF-8 text ({exc.reason} at byte "
                              f"{exc.start})") from None
    except OSError as exc:
        raise SettingsInvalid(f"invalid settings: cannot read the .env file ({exc.strerror or exc})") from None
