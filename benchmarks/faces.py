"""Bring-your-own-GAN demo -> docs/faces.md: a real third-party pretrained DCGAN (``gan-face-generate``:
64x64 faces, trained on DigiFace1M; generator only) uploaded through ``POST /models`` and mined through the
service toward the 100 real faces of scikit-image's LFW subset (25x25 grayscale; the service converts them to
64x64 RGB). The critic starts fresh (the package ships no discriminator).

Writes docs/img/faces-{target,source,mined}.png and a table: Inception FID and KMMD of 100 samples against
the 100 target faces, for the source as uploaded and after mining.

Setup:  .venv/bin/pip install --no-deps gan-face-generate && .venv/bin/pip install scikit-image
Usage:  python benchmarks/faces.py [--method minegan --mining-steps 150 --finetune-steps 50 --batch-size 32]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import shlex
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import zoo  # noqa: E402
from core.data import load_target_bytes  # noqa: E402
from core.images import grid_png, png_bytes  # noqa: E402
from core.metrics import evaluate  # noqa: E402


def _weights() -> Path:
    spec = importlib.util.find_spec("gan_face_generate")  # locate, do not import (it pulls torchvision)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install it first: .venv/bin/pip install --no-deps gan-face-generate")
    return Path(next(iter(spec.submodule_search_locations))) / "weights.tar"


def _faces_zip() -> bytes:
    from skimage.data import lfw_subset

    faces = lfw_subset()[:100]  # the first 100 are faces, the rest non-faces
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, f in enumerate(faces):
            zf.writestr(f"face{i:03d}.png", png_bytes(np.round(f * 255).astype(np.uint8)[:, :, None]))
    return buf.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="minegan")
    ap.add_argument("--mining-steps", type=int, default=150)
    ap.add_argument("--finetune-steps", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--n-critic", type=int, default=5)
    a = ap.parse_args()
    command = "python benchmarks/faces.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    from fastapi.testclient import TestClient

    from api.main import create_app
    from store.settings import Settings

    img = ROOT / "docs" / "img"
    img.mkdir(parents=True, exist_ok=True)
    target_zip = _faces_zip()
    target = load_target_bytes(target_zip, 3, 64).images  # what the service trains on: [100, 3, 64, 64]
    (img / "faces-target.png").write_bytes(grid_png(target[:64], nrow=8))
    weights = _weights()
    src = zoo.source_from_state_dicts("faces", "dcgan64", {"z_dim": 100, "width": 64, "channels": 3}, weights)
    source = zoo.load_source_file(_save(src))
    with torch.no_grad():
        before = source.G(torch.randn(100, 100, generator=torch.Generator().manual_seed(123)))
    (img / "faces-source.png").write_bytes(grid_png(before[:64], nrow=8))

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        settings = Settings(database_url=f"sqlite:///{tmp}/db.sqlite", storage_dir=f"{tmp}/blobs", work_dir=f"{tmp}/work",
                            progress_interval_s=5)
        c = stack.enter_context(TestClient(create_app(settings)))
        cfg = {"id": "dcgan-faces", "family": "dcgan64", "config": {"z_dim": 100, "width": 64, "channels": 3},
               "description": "gan-face-generate DCGAN (DigiFace1M), generator only"}
        r = c.post("/models", files={"generator": ("weights.tar", weights.read_bytes(), "application/octet-stream")},
                   data={"config": json.dumps(cfg)})
        assert r.status_code == 201, r.text
        spec = {"sources": ["dcgan-faces"], "method": a.method, "mining_steps": a.mining_steps, "finetune_steps": a.finetune_steps,
                "batch_size": a.batch_size, "options": {"n_critic": a.n_critic}}
        t0 = time.time()
        job = c.post("/jobs", files={"images": ("faces.zip", target_zip, "application/zip")}, data={"spec": json.dumps(spec)}).json()
        while (j := c.get(f"/jobs/{job['id']}").json())["status"] not in ("succeeded", "failed", "canceled"):
            print(f"{j['status']} {j['phase']} {j['step']}/{j['total_steps']}", flush=True)
            time.sleep(15)
        wall = time.time() - t0
        assert j["status"] == "succeeded", j
        (img / "faces-mined.png").write_bytes(c.get(f"/jobs/{job['id']}/sample?n=64&seed=0").content)
        zipped = c.get(f"/jobs/{job['id']}/sample?n=100&seed=123&format=zip").content
    with zipfile.ZipFile(io.BytesIO(zipped)) as zf:
        from PIL import Image

        after = torch.stack([torch.from_numpy(np.asarray(Image.open(zf.open(n)).convert("RGB"), dtype=np.float32) / 127.5 - 1)
                             .permute(2, 0, 1) for n in sorted(zf.namelist())])
    m_before = evaluate(before, target, ["fid", "kmmd"])
    m_after = evaluate(after, target, ["fid", "kmmd"])
    lines = [
        "# Bring your own GAN: a pretrained DCGAN mined toward real faces", "",
        f"Command: `{command}` (2-core CPU, no GPU; job wall time {wall:.0f} s through the embedded service).", "",
        "Source: the generator of the `gan-face-generate` package (the PyTorch-tutorial DCGAN layout, 64x64 RGB, |z| = 100, "
        "trained on the synthetic DigiFace1M faces), uploaded as a state dict with `POST /models` (family `dcgan64`); it "
        "ships no discriminator, so the critic starts fresh. Target: the 100 real faces of scikit-image's LFW subset "
        "(`skimage.data.lfw_subset()[:100]`, 25x25 grayscale, converted by the service to 64x64 RGB). "
        f"Method `{a.method}`: {a.mining_steps} mining + {a.finetune_steps} finetuning steps, batch {a.batch_size}, "
        f"{a.n_critic} critic updates per step.", "",
        "| samples (100, seed 123) vs the 100 target faces | Inception FID | KMMD |", "|---|---|---|",
        f"| source as uploaded | {m_before['fid']:.1f} | {m_before['kmmd']:.4f} |",
        f"| after mining (`{a.method}`) | {m_after['fid']:.1f} | {m_after['kmmd']:.4f} |", "",
        "FID on 100 vs 100 images is biased upward and noisy; it is here to compare the two rows, not to compare with "
        "papers.", "",
        "Target faces (LFW subset, as the service sees them):", "", "![target](img/faces-target.png)", "",
        "Source samples before mining:", "", "![source](img/faces-source.png)", "",
        "Samples after mining (`GET /jobs/{id}/sample?n=64`):", "", "![mined](img/faces-mined.png)", "",
    ]
    notes = ROOT / "docs" / "faces_notes.md"
    if notes.exists():
        lines += [notes.read_text()]
    (ROOT / "docs" / "faces.md").write_text("\n".join(lines))
    print("\n".join(lines[:12]))
    return 0


def _save(ckpt: dict) -> Path:  # type: ignore[type-arg]
    from core import checkpoints

    path = Path(tempfile.mkdtemp()) / "faces.pt"
    checkpoints.save(ckpt, path)
    return path


if __name__ == "__main__":
    raise SystemExit(main())
