"""Webhooks: signed POSTs of job events, from an outbox, with retries.

A job spec may name a ``webhook`` URL and the ``webhook_events`` it wants (default: ``completed``). Each such event
gets a row in ``webhook_deliveries`` in the transaction that records the event (``store/jobs.py``), so a crash of
any process neither loses a delivery nor makes a second one. The API process sends them (:func:`deliver_due`,
called by its dispatcher loop): a POST of the event as JSON with

* ``X-Minegan-Signature: sha256=<hex>``, the HMAC-SHA256 of the exact body with the tenant's secret
  (``GET /webhooks/secret``), and ``X-Minegan-Timestamp``, which the body repeats (so it is signed too);
* ``X-Minegan-Event-Id`` (also ``id`` in the body): the idempotency id; a retried delivery repeats it.

A 2xx ends a delivery. Anything else is retried with exponential backoff (1 s, 2 s, 4 s, ... at most 60 s
apart) for ``webhook_retry_s`` (an hour by default), then the delivery is marked failed. Rows are claimed with
``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so several API processes never send one delivery twice at once.

URLs are checked when a job is submitted (:func:`check_url`): https only, and never to a loopback, private,
link-local or otherwise internal address (server-side request forgery), unless the host is in
``MINEGAN_WEBHOOK_ALLOW`` (host or host:port, e.g. ``127.0.0.1`` for tests), which also allows plain http. The
address is checked again at each delivery, so a name that later resolves inward is refused then.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import time
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from sqlalchemy import select

from store.db import engine_for, session_scope
from store.models import JobEvent, WebhookDelivery, WebhookSecret, utcnow

log = logging.getLogger(__name__)

EVENT_KINDS = ("status", "progress", "preview", "completed")


class WebhookUrlError(ValueError):
    status, code = 422, "invalid_spec"


def check_url(url: str, allow: list[str]) -> str | None:
    """Raise :class:`WebhookUrlError` unless ``url`` may receive deliveries (see the module docstring); the address the
    delivery must connect to (None for a host in the allow list, which is not resolved here)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError as exc:  # e.g. a port outside 0-65535
        raise WebhookUrlError(f"webhook: {url[:200]!r} is not a valid URL ({exc})") from exc
    if parts.scheme not in ("https", "http") or not host:
        raise WebhookUrlError(f"webhook: {url[:200]!r} is not an http(s) URL")
    allowed = host in allow or f"{host}:{port}" in allow
    if parts.scheme != "https" and not allowed:
        raise WebhookUrlError("webhook: only https URLs are accepted (plain http only for hosts in MINEGAN_WEBHOOK_ALLOW)")
    if allowed:
        return None
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, port or 443, proto=socket.IPPROTO_TCP)}
    except OSError as exc:
        raise WebhookUrlError(f"webhook: the host {host!r} does not resolve ({exc})") from exc
    for a in addresses:
        ip = ipaddress.ip_address(str(a).split("%")[0])
        if not is_public(ip):
            raise WebhookUrlError(f"webhook: {host} resolves to {ip}, an internal address; webhooks go to public hosts only")
    return str(sorted(str(a) for a in addresses)[0])


def pinned(url: str, address: str | None) -> tuple[str, dict[str, str], dict[str, str]]:
    """(the URL with its host replaced by the checked ``address``, the Host header, httpx's TLS server name): the
    delivery connects to the address that was checked, not to whatever the name resolves to a moment later (DNS
    rebinding); TLS still verifies the certificate for the host name."""
    if address is None:
        return url, {}, {}
    parts = urlsplit(url)
    host = parts.hostname or ""
    ip = f"[{address}]" if ":" in address else address
    netloc = ip + (f":{parts.port}" if parts.port else "")
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    target = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return target, {"Host": parts.netloc.rsplit("@", 1)[-1]}, extensions


# IPv6 prefixes that carry an IPv4 address inside: NAT64 (RFC 6052, RFC 8215), 6to4 (RFC 3056), Teredo (RFC 4380; the
# client address is stored inverted), IPv4-mapped and -compatible. Such an address reaches the IPv4 host it embeds.
_EMBEDS_V4 = [(ipaddress.ip_network("64:ff9b::/96"), lambda a: a & 0xFFFFFFFF),
              (ipaddress.ip_network("64:ff9b:1::/48"), lambda a: a & 0xFFFFFFFF),
              (ipaddress.ip_network("2002::/16"), lambda a: (a >> 80) & 0xFFFFFFFF),
              (ipaddress.ip_network("2001::/32"), lambda a: ~a & 0xFFFFFFFF),
              (ipaddress.ip_network("::ffff:0:0/96"), lambda a: a & 0xFFFFFFFF),
              (ipaddress.ip_network("::/96"), lambda a: a & 0xFFFFFFFF)]


def is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """A global unicast address that embeds no internal IPv4 address (NAT64, 6to4, Teredo, mapped)."""
    if not ip.is_global or ip.is_multicast:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        for net, inner in _EMBEDS_V4:
            if ip in net:
                return is_public(ipaddress.IPv4Address(inner(int(ip))))
    return True


def tenant_secret(url: str, tenant: str) -> str:
    """The tenant's signing secret, created on first use."""
    with session_scope(url) as s:
        row = s.get(WebhookSecret, tenant)
        if row is None:
            row = WebhookSecret(tenant=tenant, secret="whsec_" + secrets.token_hex(24), created_at=utcnow())
            s.add(row)
        return row.secret


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _claim_due(url: str, limit: int) -> list[dict[str, Any]]:
    """Due pending deliveries with their event, pushed ``lease_s`` ahead so no other sender takes them meanwhile."""
    now = utcnow()
    with session_scope(url) as s:
        q = (select(WebhookDelivery).where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
             .order_by(WebhookDelivery.event_id).limit(limit))
        if engine_for(url).dialect.name == "postgresql":
            q = q.with_for_update(skip_locked=True)
        out = []
        for d in s.scalars(q):
            event = s.get(JobEvent, d.event_id)
            d.next_attempt_at = now + timedelta(seconds=30)  # a lease: a sender that dies releases it this way
            d.attempts += 1
            out.append({"event_id": d.event_id, "job_id": d.job_id, "tenant": d.tenant, "url": d.url, "attempts": d.attempts,
                        "created_at": d.created_at, "kind": event.kind if event else "unknown", "data": event.data if event else {}})
        return out


def _record(url: str, event_id: int, ok: bool, error: str, attempts: int, created_at: Any, retry_s: float) -> None:
    now = utcnow()
    with session_scope(url) as s:
        d = s.get(WebhookDelivery, event_id)
        if d is None:
            return
        if ok:
            d.status, d.delivered_at, d.last_error = "delivered", now, None
            return
        d.last_error = error[:500]
        created = created_at if created_at.tzinfo else created_at.replace(tzinfo=now.tzinfo)
        if (now - created).total_seconds() >= retry_s:
            d.status = "failed"
        else:
            d.next_attempt_at = now + timedelta(seconds=min(60.0, 2.0 ** (attempts - 1)))


def deliver_due(url: str, allow: list[str], retry_s: float, client: httpx.Client, limit: int = 20) -> int:
    """Send every due delivery once; returns how many were sent successfully (blocking: run it off the event loop)."""
    sent = 0
    for d in _claim_due(url, limit):
        ts = int(time.time())
        body = json.dumps({"id": d["event_id"], "type": d["kind"], "job_id": d["job_id"], "timestamp": ts,
                           "data": d["data"]}, sort_keys=True).encode()
        headers = {"Content-Type": "application/json", "X-Minegan-Event-Id": str(d["event_id"]), "X-Minegan-Timestamp": str(ts),
                   "X-Minegan-Signature": sign(tenant_secret(url, d["tenant"]), body), "User-Agent": "minegan-webhooks/1"}
        try:
            target, host, tls = pinned(d["url"], check_url(d["url"], allow))  # again: the name may resolve elsewhere now
            r = client.post(target, content=body, headers={**headers, **host}, extensions=tls, follow_redirects=False)
            ok, error = 200 <= r.status_code < 300, f"HTTP {r.status_code}"
        except (httpx.HTTPError, WebhookUrlError) as exc:
            ok, error = False, f"{type(exc).__name__}: {exc}"
        if not ok:
            log.info("webhook delivery %s of job %s failed (attempt %d): %s", d["event_id"], d["job_id"], d["attempts"], error)
        _record(url, d["event_id"], ok, error, d["attempts"], d["created_at"], retry_s)
        sent += ok
    return sent
