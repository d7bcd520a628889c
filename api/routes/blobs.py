"""Downloads from the local blob store (embedded mode only; with S3 the artifact URLs are presigned).

The URL must carry a valid, unexpired signature (``GET /jobs/{id}/artifacts`` hands them out to the job's
owner); anything else is a 404, the same answer as for a key that does not exist.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from api.deps import ServicesDep
from api.errors import ApiError
from store.blobs import BlobNotFound, LocalBlobStore

router = APIRouter(tags=["artifacts"], include_in_schema=False)


@router.get("/blobs/{key:path}")
def get_blob(svc: ServicesDep, key: str, exp: Annotated[str, Query(max_length=20)] = "",
             sig: Annotated[str, Query(max_length=128)] = "") -> Response:
    store = svc.blobs
    if not isinstance(store, LocalBlobStore) or not key.startswith("jobs/") or not store.verify(key, exp, sig):
        raise ApiError(404, "not_found", "no such artifact (or the link has expired: list the artifacts again)")
    try:
        data = store.get(key)
    except (BlobNotFound, ValueError) as exc:
        raise ApiError(404, "not_found", "no such artifact") from exc
    media = "image/png" if key.endswith(".png") else "application/json" if key.endswith(".json") else "application/octet-stream"
    return Response(data, media_type=media)
