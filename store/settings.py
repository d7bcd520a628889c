"""One settings class for every entry point (env prefix ``MINEGAN_``), validated at start.

The defaults are the *embedded* service: SQLite and a local directory under ``./var``, and an in-process
worker thread instead of Celery (no Redis, PostgreSQL or S3 needed). Production sets
``MINEGAN_DATABASE_URL`` (PostgreSQL), ``MINEGAN_BROKER_URL`` (Redis) and ``MINEGAN_STORAGE=s3``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import limits
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MINEGAN_", extra="ignore")

    database_url: str = "sqlite:///var/minegan.db"
    broker_url: str | None = None  # None: embedded, built-in worker (worker/embedded.py)
    result_backend: str | None = None
    storage: Literal["local", "s3"] = "local"
    storage_dir: str = "var/blobs"
    grpc_port: int = Field(default=0, ge=0, le=65535)  # >0: also serve gRPC (Open Inference Protocol) on this port
    grpc_host: str = "127.0.0.1"
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)  # >0: a Celery worker serves its metrics here (worker/metrics.py)
    worker_metrics_host: str = "127.0.0.1"
    log_format: Literal["json", "text"] = "json"  # the server's and the workers' logs: one JSON object per line
    webhook_allow: str = ""  # comma-separated hosts (or host:port) webhooks may reach over http or at internal addresses
    webhook_retry_s: float = Field(default=3600.0, ge=1.0)  # how long a failing delivery is retried
    s3_endpoint_url: str | None = None
    s3_bucket: str = "minegan"
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_region: str = "us-east-1"
    presign_expiry_s: int = Field(default=300, ge=10, le=24 * 3600)  # artifact download URLs: short-lived
    auth: Literal["auto", "required", "off"] = "auto"  # auto: API keys required unless embedded
    auth_cache_s: float = Field(default=30.0, ge=0.0)  # a verified key is trusted this long (revocation delay)
    max_concurrent_jobs: int = Field(default=4, ge=1)  # queued + running per tenant (tenants.max_concurrent_jobs overrides)
    secret_key: str | None = None  # signs local-storage download URLs; unset: one kept beside the data (store/blobs.py)
    work_dir: str = "var/work"  # local scratch for running jobs
    max_upload_bytes: int = Field(default=50 * 1024 * 1024, ge=1024)  # the zip as uploaded
    max_request_bytes: int = Field(default=52 * 1024 * 1024, ge=1024)  # any request body (zip + spec + multipart)
    # the whole body of a request must arrive within this many seconds of its start (else 408, connection closed)
    body_timeout_s: float = Field(default=300.0, gt=0.0)
    max_target_images: int = Field(default=2000, ge=1)
    max_zip_entries: int = Field(default=5000, ge=1)
    max_uncompressed_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)  # all images of a zip, decompressed
    max_image_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)  # one image file, decompressed
    max_zip_ratio: float = Field(default=200.0, ge=2.0)  # decompressed / compressed size of one entry
    max_image_pixels: int = Field(default=4096 * 4096, ge=64)  # declared width x height of one image
    max_upload_pixels: int = Field(default=256 * 2**20, ge=64)  # declared pixels of all images of one upload together
    sample_max_n: int = Field(default=256, ge=1)
    model_cache_size: int = Field(default=8, ge=1)
    # concurrent sample requests for one model that arrive within this window share a forward pass (api/batching.py);
    # a lone request does not wait for it. 0: off
    sample_batch_window_ms: float = Field(default=2.0, ge=0.0, le=1000.0)
    sample_batch_max_images: int = Field(default=128, ge=4)
    sample_batch_measure: bool = True  # limit batches to the size whose forward pass is cheapest per image (timed)
    # decode and check uploaded target zips in a separate low-priority process (api/compute.py, run_check), not in a
    # thread of the API process whose Python would hold the GIL while samples render
    upload_check_process: bool = True
    # a tenant's uploads waiting for the checker (served round-robin over tenants, api/fair.py); one more is a 429
    max_waiting_checks: int = Field(default=4, ge=1, le=1000)
    # with API keys required, what one tenant may send (api/limits.py, TenantRates: a moving window, `limits`' rate strings):
    # every request but the open paths, and the uploads (POST /jobs, POST /models, gRPC Submit) again on their own;
    # "N/second;M/minute" and so on, "" for no limit. Past a limit: 429 with Retry-After, before the body is read
    rate_limit: str = "100/second"
    upload_rate_limit: str = "10/minute"
    # where the counts live: memory:// (per API process) or a store `limits` reaches, such as redis://host:6379/2 (compose)
    rate_limit_storage: str = "memory://"
    # a refused request is answered after this many seconds (at most its Retry-After): a client that ignores
    # Retry-After is slowed rather than answered as fast as it sends; 0: at once
    rate_limit_delay_s: float = Field(default=1.0, ge=0.0, le=60.0)
    # nice value of the thread that renders samples (api/compute.py, RenderPriority); below 0 needs CAP_SYS_NICE
    render_nice: int = Field(default=-5, ge=-20, le=19)
    # warn, with the loop thread's stack, when the API's event loop has not run for this long (api/watchdog.py); 0: off
    loop_stall_warn_s: float = Field(default=1.0, ge=0.0)
    # how long `minegan serve` keeps an idle HTTP keep-alive connection open (uvicorn's timeout_keep_alive)
    http_keep_alive_s: int = Field(default=5, ge=1, le=3600)
    # API processes on one port (`minegan serve --workers N`, each its own SO_REUSEPORT listener). 1: one process
    api_workers: int = Field(default=1, ge=1, le=64)
    # the API process also runs what `minegan worker` runs (embedded jobs, the sweeper, webhook delivery):
    # for an app made with create_app alone; `minegan serve` turns it off and starts `minegan worker` beside it
    run_worker: bool = True
    # how often `minegan worker` looks in the database for jobs that the API queued (embedded mode)
    embedded_poll_s: float = Field(default=0.2, gt=0.0)
    sample_fast_path: bool = True  # GET /sample from the caches without FastAPI's routing (api/fastpath.py)
    latest_cache_s: float = Field(default=60.0, ge=0.0)  # GET /sample: the latest job is remembered this long (0: off)
    device: str = "auto"  # the worker's training device; auto: cuda if available, else cpu
    serve_device: str = "auto"  # where the API keeps models and renders samples; auto: cuda if available, else cpu
    queue: str = "gpu"
    visibility_timeout_s: int = Field(default=6 * 3600, ge=60)
    progress_interval_s: float = Field(default=1.0, ge=0.0)
    checkpoint_every: int = Field(default=50, ge=1)
    preview_every: int = Field(default=0, ge=0)  # steps between preview grids; 0: about ten per job
    heartbeat_interval_s: float = Field(default=15.0, gt=0)  # a running job's worker touches its row this often
    stale_after_s: float = Field(default=300.0, gt=0)  # no heartbeat for this long: the worker is gone
    sweep_interval_s: float = Field(default=30.0, gt=0)  # how often the API looks for stale jobs
    requeue_queued_after_s: float = Field(default=900.0, gt=0)  # a queued job not picked up is enqueued again
    max_attempts: int = Field(default=3, ge=1)  # claims of one job (crashes included) before it is failed

    @field_validator("rate_limit", "upload_rate_limit")
    @classmethod
    def _rates(cls, value: str) -> str:
        try:
            if value.strip():
                limits.parse_many(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a rate such as '100/second' or '10/minute;100/hour' ({exc})") from exc
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.stale_after_s <= 2 * self.heartbeat_interval_s:
            raise ValueError("MINEGAN_STALE_AFTER_S must be more than twice MINEGAN_HEARTBEAT_INTERVAL_S")
        if self.storage == "s3" and not self.s3_bucket:
            raise ValueError("MINEGAN_S3_BUCKET is required when MINEGAN_STORAGE=s3")
        return self

    def zip_limits(self):  # type: ignore[no-untyped-def]
        from core.safezip import ZipLimits

        return ZipLimits(max_entries=self.max_zip_entries, max_entry_bytes=self.max_image_bytes,
                         max_total_bytes=self.max_uncompressed_bytes, max_ratio=self.max_zip_ratio)

    @property
    def auth_required(self) -> bool:
        return self.auth == "required" or (self.auth == "auto" and not self.embedded)

    @property
    def embedded(self) -> bool:
        return self.broker_url is None

    def webhook_allow_list(self) -> list[str]:
        return [h.strip() for h in self.webhook_allow.split(",") if h.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
