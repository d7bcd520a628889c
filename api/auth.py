"""Who is calling: an API key (``Authorization: Bearer mg_...`` or ``X-API-Key``) names the tenant.

With auth off (the embedded default) every caller is tenant ``default``; a key, if sent, is still
checked. Verified keys are remembered for ``auth_cache_s`` seconds so the sampling path does not pay a
database round trip per request; a revoked key therefore stops working within that time.
"""

from __future__ import annotations

import hashlib
import threading
import time

from starlette.requests import HTTPConnection

from api.errors import ApiError
from store import auth as keys_dao
from store.settings import Settings

DEFAULT_TENANT = "default"


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._cache: dict[str, tuple[str, float]] = {}  # sha256(key) -> (tenant, expiry)
        self._lock = threading.Lock()

    @staticmethod
    def key_of(conn: HTTPConnection) -> str | None:
        header = conn.headers.get("authorization", "")
        if header[:7].lower() == "bearer ":
            return header[7:].strip()
        return conn.headers.get("x-api-key")

    def _known(self, conn: HTTPConnection) -> tuple[str | None, str, str]:
        return self._known_key(self.key_of(conn))

    def _known_key(self, key: str | None) -> tuple[str | None, str, str]:
        """(tenant if known without the database else None, key, sha256 of the key); 401 for a missing key
        when keys are required."""
        if not key:
            if self.settings.auth_required:
                raise ApiError(401, "unauthorized", "an API key is required: send 'Authorization: Bearer <key>' "
                                                    "(create one with `minegan keys create --tenant NAME`)")
            return DEFAULT_TENANT, "", ""
        digest = hashlib.sha256(key.encode()).hexdigest()
        with self._lock:
            hit = self._cache.get(digest)
        return (hit[0] if hit is not None and hit[1] > time.monotonic() else None), key, digest

    def cached_tenant(self, conn: HTTPConnection) -> str | None:
        """The caller's tenant when it is known without touching the database (no key and auth off, or a
        key verified within ``auth_cache_s``); None when :meth:`tenant` has to ask the database. Never
        blocks, so the API calls it on the event loop. Raises 401 for a missing key when keys are required."""
        return self._known(conn)[0]

    def tenant(self, conn: HTTPConnection) -> str:
        """The caller's tenant, verifying the key against the database when it is not cached (blocking)."""
        return self.tenant_of_key(self.key_of(conn))

    def cached_tenant_of_key(self, key: str | None) -> str | None:
        """:meth:`cached_tenant` for a key that came another way (gRPC's ``authorization`` metadata)."""
        return self._known_key(key)[0]

    def tenant_of_key(self, key: str | None) -> str:
        """:meth:`tenant` for a key that came another way (blocking)."""
        known, key, digest = self._known_key(key)
        if known is not None:
            return known
        now = time.monotonic()
        tenant = keys_dao.verify(self.settings.database_url, key)
        if tenant is None:
            raise ApiError(401, "unauthorized", "the API key is not valid (unknown or revoked)")
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (tenant, now + self.settings.auth_cache_s)
        return tenant
