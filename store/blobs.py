"""Blob storage for uploads and artifacts: one interface, a local-directory and an S3 implementation.

Writes are all-or-nothing: the local store writes a temporary file and renames it; S3 PUTs are atomic.
Keys are deterministic (``jobs/{id}/ckpt-{step}.pt``), so a retried task overwrites rather than
duplicates.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Protocol
from urllib.parse import quote


class BlobNotFound(KeyError):
    pass


class BlobStore(Protocol):
    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...
    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def list(self, prefix: str) -> list[str]: ...
    def url(self, key: str, expires_s: int = 600) -> str: ...
    def check(self) -> None: ...


def _safe_key(key: str) -> str:
    if not key or key.startswith("/") or ".." in key.split("/") or key.startswith(".minegan-"):
        raise ValueError(f"bad blob key {key!r}")
    return key


class LocalBlobStore:
    """Files under a root directory (the embedded default).

    Download URLs work like S3's presigned ones: ``/blobs/{key}?exp=...&sig=...`` with an HMAC of key and
    expiry, so a URL is good for one artifact until it expires and cannot be edited to reach another. The key is
    ``MINEGAN_SECRET_KEY``, or else one made at the first start and kept beside the data (``SECRET_FILE``, mode 0600),
    so every process of the server signs alike and links survive a restart."""

    SECRET_FILE = ".minegan-url-secret"  # not a blob key: no key starts with ".minegan-"

    def __init__(self, root: str | Path, url_prefix: str = "/blobs", secret: str | None = None) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url_prefix = url_prefix
        self.secret = (secret or self._stored_secret()).encode()

    def _stored_secret(self) -> str:
        """The secret kept beside the data, created atomically by whichever process starts first."""
        path = self.root / self.SECRET_FILE
        if not path.exists():
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".secret-")
            try:
                os.write(fd, secrets.token_hex(32).encode())
                os.fchmod(fd, 0o600)
                os.close(fd)
                os.link(tmp, path)  # fails if another process made it first: then its secret is the one
            except FileExistsError:
                pass
            finally:
                Path(tmp).unlink(missing_ok=True)
        return path.read_text().strip()

    def _sign(self, key: str, exp: int) -> str:
        return hmac.new(self.secret, f"{key}\n{exp}".encode(), hashlib.sha256).hexdigest()

    def verify(self, key: str, exp: str, sig: str) -> bool:
        """Whether ``sig`` is this store's signature of ``key`` until ``exp`` and that time has not passed."""
        if not (exp.isascii() and exp.isdecimal()) or len(exp) > 12 or int(exp) < time.time():
            return False
        return hmac.compare_digest(self._sign(key, int(exp)), sig)

    def _path(self, key: str) -> Path:
        return self.root / _safe_key(key)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".put.")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise BlobNotFound(key) from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str) -> list[str]:
        base = self.root
        return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file() and not p.name.startswith(".put.")
                      and str(p.relative_to(base)).startswith(prefix))

    def url(self, key: str, expires_s: int = 600) -> str:
        exp = int(time.time()) + expires_s
        return f"{self.url_prefix}/{quote(_safe_key(key))}?exp={exp}&sig={self._sign(key, exp)}"

    def check(self) -> None:
        self.put(".readyz", b"ok")
        if self.get(".readyz") != b"ok":
            raise RuntimeError("local blob store read-back failed")


class S3BlobStore:
    """An S3-compatible bucket through boto3 (AWS, MinIO, SeaweedFS)."""

    def __init__(self, bucket: str, endpoint_url: str | None, access_key: str | None, secret_key: str | None,
                 region: str = "us-east-1") -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.client = boto3.client(
            "s3", endpoint_url=endpoint_url, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
            region_name=region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5, "mode": "standard"},
                          connect_timeout=5, read_timeout=60),
        )

    def ensure_bucket(self) -> None:
        """Create the bucket unless it exists. Several processes start at once (``minegan serve --workers``, API
        replicas, workers): when another one created it between our check and our create, that is success too."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            try:
                self.client.create_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                    raise

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.client.put_object(Bucket=self.bucket, Key=_safe_key(key), Body=data, ContentType=content_type)

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=_safe_key(key))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise BlobNotFound(key) from exc
            raise

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=_safe_key(key))
            return True
        except ClientError:
            return False

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=_safe_key(key))

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", [])]
        return sorted(keys)

    def url(self, key: str, expires_s: int = 600) -> str:
        return str(self.client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": _safe_key(key)},
                                                      ExpiresIn=expires_s))

    def check(self) -> None:
        self.put(".readyz", b"ok")
        if self.get(".readyz") != b"ok":
            raise RuntimeError("S3 read-back failed")


def make_blob_store(settings) -> BlobStore:  # type: ignore[no-untyped-def]
    if settings.storage == "s3":
        store = S3BlobStore(settings.s3_bucket, settings.s3_endpoint_url, settings.s3_access_key, settings.s3_secret_key,
                            settings.s3_region)
        store.ensure_bucket()
        return store
    return LocalBlobStore(settings.storage_dir, secret=settings.secret_key)
