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
    outcome = check_target(data, channels, size, settings.max_target_images, settings.zip_limits(), settings.max_image_pixels)
    if "error" in outcome:
        raise ApiError(*outcome["error"])
    return outcome["report"]  # type: ignore[no-any-return]


async def validate_target_off_process(data: bytes, channels: int, size: int, settings: Settings) -> dict[str, Any]:
    """:func:`validate_target` in the low-priority checker process (api/compute.py, :func:`run_check`)."""
    from api.compute import run_check

    outcome = await run_check(check_target, data, channels, size, settings.max_target_images, settings.zip_limits(),
                              settings.max_image_pixels)
    if "error" in outcome:
        raise ApiError(*outcome["error"])
    return outcome["report"]  # type: ignore[no-any-return]


def check_target(data: bytes, channels: int, size: int, max_images: int, limits: Any, max_pixels: int) -> dict[str, Any]:
    """{"report": ...} of a usable target zip, or {"error": [status, code, message]}: plain values, which cross a
    process boundary as they are."""
    try:
        return {"report": load_target_bytes(data, channels, size, max_images=max_images, limits=limits, max_pixels=max_pixels).report}
    except TargetDataError as exc:
        return {"error": [exc.status, exc.code, str(exc)]}
