"""Reading and checking uploaded target zips before a job is created."""

from __future__ import annotations

import io
import zipfile
from typing import Any

from fastapi import UploadFile

from api.errors import ApiError
from core.data import TargetDataError, load_target_bytes


async def read_upload(upload: UploadFile, limit: int) -> bytes:
    """Read at most ``limit`` bytes; more is a 413 (checked while reading, not after)."""
    chunks, size = [], 0
    while True:
        chunk = await upload.read(1 << 20)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "upload_too_large", f"images: the upload is larger than {limit} bytes")
        chunks.append(chunk)
    data = b"".join(chunks)
    if not data:
        raise ApiError(422, "bad_target", "images: the upload is empty")
    return data


def validate_target(data: bytes, channels: int, size: int, max_images: int) -> dict[str, Any]:
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise ApiError(422, "bad_target", "images: the upload is not a zip file; zip your PNG/JPEG images")
    try:
        return load_target_bytes(data, channels, size, max_images=max_images).report
    except TargetDataError as exc:
        raise ApiError(422, "bad_target", f"images: {exc}") from exc
