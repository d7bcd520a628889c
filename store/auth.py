"""API keys and tenants: the one data-access module for ``api_keys`` and ``tenants``.

A key reads ``mg_<id>_<secret>``: ``id`` (8 hex characters) finds the row, and only the SHA-256 of the
whole key is stored, compared in constant time. Keys carry 160 random bits, so a plain hash is enough (a
slow password hash protects low-entropy secrets, which these are not).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from store.db import session_scope
from store.models import ApiKey, Job, Tenant, utcnow

KEY_RE = re.compile(r"^mg_([0-9a-f]{8})_([A-Za-z0-9_-]{20,64})$")
TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class KeyInfo:
    id: str
    tenant: str
    name: str
    created_at: datetime
    revoked_at: datetime | None


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(url: str, tenant: str, name: str = "", max_concurrent_jobs: int | None = None) -> tuple[str, KeyInfo]:
    """A new key for ``tenant`` (created if new). The key is returned once and never stored."""
    if not TENANT_RE.match(tenant):
        raise ValueError("tenant: lower-case letters, digits, '.', '_' or '-' (at most 64)")
    key_id = secrets.token_hex(4)
    key = f"mg_{key_id}_{secrets.token_urlsafe(20)}"
    with session_scope(url) as s:
        t = s.get(Tenant, tenant)
        if t is None:
            s.add(Tenant(id=tenant, max_concurrent_jobs=max_concurrent_jobs, created_at=utcnow()))
        elif max_concurrent_jobs is not None:
            t.max_concurrent_jobs = max_concurrent_jobs
        s.flush()
        row = ApiKey(id=key_id, tenant=tenant, name=name or "key", key_hash=_hash(key), created_at=utcnow())
        s.add(row)
    return key, KeyInfo(row.id, row.tenant, row.name, row.created_at, None)


def verify(url: str, key: str) -> str | None:
    """The tenant of a valid, unrevoked key; None otherwise."""
    m = KEY_RE.match(key.strip())
    if not m:
        return None
    with session_scope(url) as s:
        row = s.get(ApiKey, m.group(1))
        if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_hash, _hash(key.strip())):
            return None
        return row.tenant


def list_keys(url: str, tenant: str | None = None) -> list[KeyInfo]:
    with session_scope(url) as s:
        q = select(ApiKey).order_by(ApiKey.created_at)
        if tenant:
            q = q.where(ApiKey.tenant == tenant)
        return [KeyInfo(r.id, r.tenant, r.name, r.created_at, r.revoked_at) for r in s.scalars(q)]


def revoke(url: str, key_id: str) -> bool:
    with session_scope(url) as s:
        row = s.get(ApiKey, key_id)
        if row is None or row.revoked_at is not None:
            return False
        row.revoked_at = utcnow()
        return True


def job_limit(url: str, tenant: str, default: int) -> int:
    with session_scope(url) as s:
        t = s.get(Tenant, tenant)
        return t.max_concurrent_jobs if t is not None and t.max_concurrent_jobs is not None else default


def active_jobs(url: str, tenant: str) -> int:
    with session_scope(url) as s:
        q = select(func.count()).select_from(Job).where(Job.tenant == tenant, Job.status.in_(("queued", "running")))
        return int(s.scalar(q) or 0)
