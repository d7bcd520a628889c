"""Shared helpers for service tests: a tiny source model in a temporary zoo, target zips, polling."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path
from typing import Any

from core import checkpoints, zoo
from core.images import png_bytes, to_uint8
from tests.conftest import tiny_source


def write_tiny_zoo(weights_dir: Path, name: str = "tiny-src", n_classes: int = 0, description: str = "tiny test source") -> Path:
    src = tiny_source(width=4, z_dim=8, name=name, n_classes=n_classes)
    return checkpoints.save(zoo.source_checkpoint(name, src.G, src.D, {"description": description}),
                            weights_dir / f"{name}.pt")


def target_zip_bytes(n: int = 16) -> bytes:
    from tests.conftest import blobs_target

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, img in enumerate(to_uint8(blobs_target(n))):
            zf.writestr(f"t{i:03d}.png", png_bytes(img))
    return buf.getvalue()


TINY_SPEC: dict[str, Any] = {"sources": ["tiny-src"], "method": "minegan++", "mining_steps": 3, "finetune_steps": 3,
                             "batch_size": 8, "seed": 0, "options": {"n_critic": 1}}


def wait_for(client: Any, job_id: str, timeout: float = 120.0, until: tuple[str, ...] = ("succeeded", "failed", "canceled")) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        body = client.get(f"/jobs/{job_id}").json()
        if body["status"] in until:
            return body
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not reach {until} in {timeout}s: {body}")
