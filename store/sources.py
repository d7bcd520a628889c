"""Source models of the service: the built-in zoo plus sources users registered (e.g. a fused generator).

Registered sources belong to the tenant that registered them and live in the blob store, so the API and
every worker see the same ones: ``models/{tenant}/{id}.pt`` (a source-model file) and
``models/{tenant}/{id}.json`` (what ``GET /models`` shows). Another tenant neither sees nor can use them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core import checkpoints, zoo
from store.blobs import BlobStore

PREFIX = "models/"


def _prefix(tenant: str) -> str:
    return f"{PREFIX}{tenant}/"


def registered(blobs: BlobStore, tenant: str) -> list[dict[str, Any]]:
    return [json.loads(blobs.get(k)) for k in sorted(blobs.list(_prefix(tenant))) if k.endswith(".json")]


def known(blobs: BlobStore, tenant: str) -> dict[str, dict[str, Any]]:
    """id -> description of every source ``tenant``'s jobs may name (built-in ones win a name clash)."""
    out = {m["id"]: m for m in registered(blobs, tenant)}
    out |= {m["id"]: m for m in zoo.available()}
    return out


def register(blobs: BlobStore, tenant: str, model_id: str, data: bytes, origin: str) -> dict[str, Any]:
    """Store a source-model file under ``model_id``; ValueError if the id is taken or malformed."""
    if not zoo.MODEL_ID.match(model_id):
        raise ValueError("id: lower-case letters, digits, '.', '_' or '-' (at most 63 characters)")
    if model_id in known(blobs, tenant):
        raise FileExistsError(f"a source model {model_id!r} exists already")
    obj = checkpoints.load(data)
    if obj.get("format") != zoo.SOURCE_FORMAT:
        raise checkpoints.CheckpointError("not a source-model file")
    info = zoo.describe(obj, model_id) | {"origin": origin}
    blobs.put(f"{_prefix(tenant)}{model_id}.pt", data)  # the file first: a listed model is always loadable
    blobs.put(f"{_prefix(tenant)}{model_id}.json", json.dumps(info).encode(), "application/json")
    return info


def load(blobs: BlobStore, name: str, work_dir: Path, tenant: str) -> zoo.SourceModel:
    """A source by id: the built-in zoo, else one ``tenant`` registered (fetched into ``work_dir``)."""
    try:
        return zoo.load_source(name)
    except zoo.UnknownModelError:
        key = f"{_prefix(tenant)}{name}.pt"
        if not zoo.MODEL_ID.match(name) or not blobs.exists(key):
            raise
        path = work_dir / f"source-{name}.pt"
        path.write_bytes(blobs.get(key))
        return zoo.load_source_file(path, name)
