"""Reading and checking uploaded target zips before a job is created.

The body is read in chunks up to ``max_upload_bytes`` (more is a 413 while reading); the zip is then
checked entry by entry while decompressing (``core.safezip``) and every image decoded under the pixel
limit (``core.data``). Everything stays in memory: a refused upload leaves no file behind.
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import UploadFile

from api.errors import ApiError
from core.data import TargetDataError, load_target_bytes
from store.settings import Settings


async def read_upload(upload: UploadFile, limit: int) -> bytes:
    """Read at most ``limit`` bytes; more is a 413 (checked while reading, not after)."""
    chunks, size = [], 0
    try:
        while True:
            chunk = await upload.read(1 << 20)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "upload_too_large", f"images: the upload is larger than {limit} bytes; "
                                                       "send fewer or smaller images")
            chunks.append(chunk)
    finally:
        await upload.close()  # the spooled temporary file goes now, not at garbage collection
    data = b"".join(chunks)
    if not data:
        raise ApiError(422, "empty_upload", "images: the upload is empty; attach a zip of PNG/JPEG images")
    return data


def validate_target(data: bytes, channels: int, size: int, settings: Settings) -> dict[str, Any]:
    """Decode the whole target set once, under every limit; returns its report (counts, conversions)."""
    try:
        return load_target_bytes(data, channels, size, max_images=settings.max_target_images, limits=settings.zip_limits(),
                                 max_pixels=settings.max_image_pixels).report
    except TargetDataError as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from exc
