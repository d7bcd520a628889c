"""One settings class for every entry point (env prefix ``MINEGAN_``), validated at start.

The defaults are the *embedded* service: SQLite and a local directory under ``./var``, and an in-process
worker thread instead of Celery (no Redis, PostgreSQL or S3 needed). Production sets
``MINEGAN_DATABASE_URL`` (PostgreSQL), ``MINEGAN_BROKER_URL`` (Redis) and ``MINEGAN_STORAGE=s3``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MINEGAN_", extra="ignore")

    database_url: str = "sqlite:///var/minegan.db"
    broker_url: str | None = None  # None: embedded in-process worker
    result_backend: str | None = None
    storage: Literal["local", "s3"] = "local"
    storage_dir: str = "var/blobs"
    s3_endpoint_url: str | None = None
    s3_bucket: str = "minegan"
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_region: str = "us-east-1"
    presign_expiry_s: int = Field(default=600, ge=10, le=7 * 24 * 3600)
    work_dir: str = "var/work"  # local scratch for running jobs
    max_upload_bytes: int = Field(default=50 * 1024 * 1024, ge=1024)
    max_target_images: int = Field(default=2000, ge=1)
    sample_max_n: int = Field(default=256, ge=1)
    model_cache_size: int = Field(default=8, ge=1)
    device: str = "auto"  # auto: cuda if available, else cpu
    queue: str = "gpu"
    visibility_timeout_s: int = Field(default=6 * 3600, ge=60)
    progress_interval_s: float = Field(default=1.0, ge=0.0)
    checkpoint_every: int = Field(default=50, ge=1)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.storage == "s3" and not self.s3_bucket:
            raise ValueError("MINEGAN_S3_BUCKET is required when MINEGAN_STORAGE=s3")
        return self

    @property
    def embedded(self) -> bool:
        return self.broker_url is None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
