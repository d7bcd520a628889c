"""What the app holds for its lifetime: settings, blob store, job dispatcher, and the sampling cache."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from api.auth import Authenticator
from core.methods import TransferredModel, load_model
from store.blobs import BlobStore
from store.settings import Settings

log = logging.getLogger(__name__)


class ModelCache:
    """Finished jobs' generators, loaded once from the blob store and kept (LRU) for sampling."""

    def __init__(self, blobs: BlobStore, size: int) -> None:
        self.blobs, self.size = blobs, size
        self._items: OrderedDict[str, TransferredModel] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # how many times a model was fetched from storage (tests assert on it)

    def cached(self, key: str) -> bool:
        with self._lock:
            return key in self._items

    def get(self, key: str) -> TransferredModel:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        model, _ = load_model(self.blobs.get(key))
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


@dataclass
class Services:
    settings: Settings
    blobs: BlobStore
    enqueue: Callable[[str], None]
    models: ModelCache
    check_broker: Callable[[], None] = field(default=lambda: None)
    finished: FinishedJobs = field(default_factory=FinishedJobs)
    auth: Authenticator = field(init=False)

    def __post_init__(self) -> None:
        self.auth = Authenticator(self.settings)
