"""What the app holds for its lifetime: settings, blob store, job dispatcher, and the sampling cache."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from api.auth import Authenticator
from api.batching import SampleBatcher
from api.fair import FairQueue
from api.limits import TenantRates
from api.metrics import CACHE
from core.model_file import TransferredModel, load_model
from store.blobs import BlobStore
from store.settings import Settings

log = logging.getLogger(__name__)


class ModelCache:
    """Finished jobs' generators, loaded once from the blob store and kept (LRU) for sampling, on ``device``
    (``MINEGAN_SERVE_DEVICE``; latents are still drawn on the CPU from the request's seed, so a seed names the same
    latents on any device, and images come back to the CPU for encoding)."""

    def __init__(self, blobs: BlobStore, size: int, device: str = "cpu") -> None:
        self.blobs, self.size, self.device = blobs, size, device
        self._items: OrderedDict[str, TransferredModel] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # how many times a model was fetched from storage (tests assert on it)

    def peek(self, key: str) -> TransferredModel | None:
        """The model if it is already in memory (never loads); counts a cache hit."""
        with self._lock:
            model = self._items.get(key)
        if model is not None:
            CACHE.labels("hit").inc()
        return model

    def get(self, key: str) -> TransferredModel:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        model, _ = load_model(self.blobs.get(key))
        model.to(self.device)
        CACHE.labels("miss").inc()
        with self._lock:
            self.loads += 1
            self._items[key] = model
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return model


class FinishedJobs:
    """job id -> (tenant, model key) of succeeded jobs. A succeeded job never changes again, so once the
    database has said so the sampling path need not ask it again (one SQL round trip less per /sample)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._items: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, job_id: str) -> tuple[str, str] | None:
        with self._lock:
            return self._items.get(job_id)

    def put(self, job_id: str, tenant: str, model_key: str) -> None:
        with self._lock:
            self._items[job_id] = (tenant, model_key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


class LatestJobs:
    """tenant -> (job id, model key) of its most recent succeeded job, for ``GET /sample`` without ``job=``.

    Trusted only while the job-succeeded feed (``store/events.py``) is live: every notification for a
    tenant drops its entry, and the feed going down or coming back drops them all. Entries also expire
    after ``ttl_s`` (bounding the harm of a notification lost between a worker and Redis). A database
    read races with notifications, so :meth:`put` takes the :meth:`token` from before the read and is
    ignored when anything was invalidated meanwhile."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._items: dict[str, tuple[str, str, float]] = {}
        self._gen = 0
        self._live = False
        self._lock = threading.Lock()

    @property
    def live(self) -> bool:
        return self._live

    def get(self, tenant: str) -> tuple[str, str] | None:
        with self._lock:
            hit = self._items.get(tenant) if self._live else None
        if hit is None or hit[2] <= time.monotonic():
            return None
        return hit[0], hit[1]

    def token(self) -> int:
        with self._lock:
            return self._gen

    def put(self, tenant: str, job_id: str, model_key: str, token: int) -> None:
        with self._lock:
            if self._live and token == self._gen and self.ttl_s > 0:
                self._items[tenant] = (job_id, model_key, time.monotonic() + self.ttl_s)

    def invalidate(self, tenant: str) -> None:
        with self._lock:
            self._gen += 1
            self._items.pop(tenant, None)

    def set_live(self, live: bool) -> None:
        with self._lock:
            self._gen += 1
            self._items.clear()
            self._live = live


@dataclass
class Services:
    settings: Settings
    blobs: BlobStore
    enqueue: Callable[[str], None]
    models: ModelCache
    check_broker: Callable[[], None] = field(default=lambda: None)
    finished: FinishedJobs = field(default_factory=FinishedJobs)
    latest: LatestJobs = field(default_factory=lambda: LatestJobs(0.0))
    auth: Authenticator = field(init=False)
    batcher: SampleBatcher = field(init=False)
    checks: FairQueue = field(init=False)  # upload checks, round-robin over tenants (api/fair.py)
    rates: TenantRates = field(init=False)  # what each tenant may send, with keys required (api/limits.py)
    fast_path_hits: int = 0  # sample requests answered by api/fastpath.py (the rest went through the routes)

    def __post_init__(self) -> None:
        self.auth = Authenticator(self.settings)
        self.checks = FairQueue(max_waiting=self.settings.max_waiting_checks)
        self.rates = TenantRates(self.settings)
        self.batcher = SampleBatcher(self.settings.sample_batch_window_ms / 1000, self.settings.sample_batch_max_images,
                                     self.settings.sample_batch_measure)
