"""Reading and checking uploaded target zips before a job is created.

The body is read in chunks up to ``max_upload_bytes`` (more is a 413 while reading); the zip is then
checked entry by entry while decompressing (``core.safezip``) and every image decoded under the pixel
limit (``core.data``). A refused upload leaves no file behind.

Multipart bodies are parsed by :class:`UploadRoute` (the routes that take files use it): Starlette's parser, fed
1 MB pieces instead of the socket's 64 KB ones, so that a 5 MB upload costs the event loop a few steps of a few
milliseconds instead of about 80 (each a thread hop to the temporary file). A file part goes to a temporary file
once it passes :data:`PIECE` (Starlette's ``SpooledTemporaryFile``, already unlinked on disk), so an upload still
arriving holds at most about two pieces of memory; ``BodyLimitMiddleware`` (api/limits.py) bounds its size and the
time it may take to arrive.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from api.errors import ApiError
from core.data import TargetDataError, load_target_bytes
from store.settings import Settings

PIECE = 1 << 20  # bytes handed to the multipart parser at once: a millisecond or less of loop time each


async def _pieces(chunks: AsyncIterator[bytes], size: int = PIECE) -> AsyncGenerator[bytes, None]:
    """The body's chunks joined into pieces of at least ``size`` bytes (the last one shorter)."""
    buf: list[bytes] = []
    held = 0
    async for chunk in chunks:
        buf.append(chunk)
        held += len(chunk)
        if held >= size:
            yield b"".join(buf)
            buf, held = [], 0
    if buf:
        yield b"".join(buf)


class UploadRequest(Request):
    """A request whose multipart form is parsed in large pieces, its files on disk past one piece (module docstring)."""

    async def _get_form(self, *, max_files: int | float = 1000, max_fields: int | float = 1000,
                        max_part_size: int = 1024 * 1024) -> FormData:
        if self._form is None and parse_options_header(self.headers.get("Content-Type"))[0] == b"multipart/form-data":
            parser = MultiPartParser(self.headers, _pieces(self.stream()), max_files=max_files, max_fields=max_fields,
                                     max_part_size=max_part_size)
            parser.spool_max_size = PIECE  # a larger file part is written to disk, a piece at a time (module docstring)
            try:
                self._form = await parser.parse()
            except MultiPartException as exc:  # as Starlette answers it
                raise HTTPException(status_code=400, detail=exc.message) from exc
        return await super()._get_form(max_files=max_files, max_fields=max_fields, max_part_size=max_part_size)


class UploadRoute(APIRoute):
    """The route class of routers whose operations take uploads: their handlers see an :class:`UploadRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def upload_handler(request: Request) -> Response:
            return await handler(UploadRequest(request.scope, request.receive))

        return upload_handler


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
    outcome = check_target(data, channels, size, settings.max_target_images, settings.zip_limits(), settings.max_image_pixels,
                           settings.max_upload_pixels)
    if "error" in outcome:
        raise ApiError(*outcome["error"])
    return outcome["report"]  # type: ignore[no-any-return]


async def validate_target_off_process(data: bytes, channels: int, size: int, settings: Settings) -> dict[str, Any]:
    """:func:`validate_target` in the low-priority checker process (api/compute.py, :func:`run_check`)."""
    from api.compute import run_check

    outcome = await run_check(check_target, data, channels, size, settings.max_target_images, settings.zip_limits(),
                              settings.max_image_pixels, settings.max_upload_pixels)
    if "error" in outcome:
        raise ApiError(*outcome["error"])
    return outcome["report"]  # type: ignore[no-any-return]


def check_target(data: bytes, channels: int, size: int, max_images: int, limits: Any, max_pixels: int,
                 max_total_pixels: int = 256 * 2**20) -> dict[str, Any]:
    """{"report": ...} of a usable target zip, or {"error": [status, code, message]}: plain values, which cross a
    process boundary as they are."""
    try:
        return {"report": load_target_bytes(data, channels, size, max_images=max_images, limits=limits, max_pixels=max_pixels,
                                            max_total_pixels=max_total_pixels).report}
    except TargetDataError as exc:
        return {"error": [exc.status, exc.code, str(exc)]}
