"""Downloads from the local blob store (embedded mode only; with S3 the artifact URLs are presigned)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from api.deps import ServicesDep
from api.errors import ApiError
from store.blobs import BlobNotFound

router = APIRouter(tags=["artifacts"], include_in_schema=False)


@router.get("/blobs/{key:path}")
def get_blob(svc: ServicesDep, key: str) -> Response:
    if svc.settings.storage != "local" or not key.startswith("jobs/"):
        raise ApiError(404, "not_found", "no such artifact")
    try:
        data = svc.blobs.get(key)
    except (BlobNotFound, ValueError) as exc:
        raise ApiError(404, "not_found", "no such artifact") from exc
    media = "image/png" if key.endswith(".png") else "application/json" if key.endswith(".json") else "application/octet-stream"
    return Response(data, media_type=media)
