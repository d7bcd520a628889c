"""Finetuning a generator-only source through the service -> docs/faces.md section "finetune_faces" (issue 32).

The faces pair of benchmarks/faces.py (the ``gan-face-generate`` DCGAN, generator only, uploaded with ``POST /models``;
the 100 LFW faces) at the service's defaults and issue 32's budget: 200 mining + 100 finetuning steps, batch 16 (``mine``
mines for all 300). Each ``--jobs`` entry is ``method:seed``; every job runs through ``POST /jobs`` with nothing else set,
so a row is what a user gets. Per job: KID and FID (Inception, the evaluation network: never used in training or
selection) of ``--samples`` samples against the 100 targets, the share of them in which OpenCV's Haar cascade
finds a face (an independent check, benchmark only), the candidate ``keep_best`` published, and the 64-sample grid
(``GET /jobs/{id}/sample?n=64&seed=0``). The table gives each method's per-seed figures and their median.

Setup:  .venv/bin/pip install --no-deps gan-face-generate && .venv/bin/pip install scikit-image "opencv-python-headless<5"
Usage:  python benchmarks/finetune_faces.py --jobs minegan++:0,minegan++:1,minegan++:2,mine:0,mine:1,mine:2 [--threads 1]
Per-job results are kept in --out, so jobs can be split over processes and the table written by any run (--report).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import io
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._doc import update_section  # noqa: E402
from benchmarks.faces import _faces_zip, _weights  # noqa: E402
from core.data import load_target_bytes  # noqa: E402
from core.metrics import evaluate  # noqa: E402
from store.settings import Settings  # noqa: E402

DOC = ROOT / "docs" / "faces.md"
IMG = ROOT / "docs" / "img"


def face_rate(images: torch.Tensor) -> float:
    """The share of images [N, C, H, W] in [-1, 1] in which OpenCV's frontal-face Haar cascade finds a face (gray, upscaled
    to 128x128, scale factor 1.1, 3 neighbours, faces of at least 40 pixels)."""
    import cv2

    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    gray = ((images.float().mean(1).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
    hits = [len(cascade.detectMultiScale(cv2.resize(g, (128, 128)), scaleFactor=1.1, minNeighbors=3, minSize=(40, 40))) > 0
            for g in gray]
    return float(np.mean(hits))


def _samples(c: Any, job_id: str, n: int) -> torch.Tensor:
    from PIL import Image

    parts = []
    for i, start in enumerate(range(0, n, 250)):  # seeds 123, 124, ... as benchmarks/faces.py draws them
        r = c.get(f"/jobs/{job_id}/sample", params={"n": min(250, n - start), "seed": 123 + i, "format": "zip"})
        assert r.status_code == 200, r.text
        with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
            parts += [torch.from_numpy(np.asarray(Image.open(zf.open(k)).convert("RGB"), dtype=np.float32) / 127.5 - 1)
                      .permute(2, 0, 1) for k in sorted(zf.namelist())]
    return torch.stack(parts)


def _grid(a: argparse.Namespace, method: str, seed: int) -> Path:
    """Where a job's 64-sample grid goes: docs/img for the defaults' table or a screen's section, else --out."""
    if not a.set:
        return IMG / f"finetune-{method}-s{seed}.png"
    return IMG / f"{a.section}-{method}-s{seed}.png" if a.section else Path(a.out) / f"finetune-{method}-s{seed}.png"


def _shown(path: Path) -> str:
    return str(path.relative_to(DOC.parent)) if path.is_relative_to(DOC.parent) else str(path)


def _run(c: Any, a: argparse.Namespace, method: str, seed: int, target_zip: bytes, target: torch.Tensor) -> dict[str, Any]:
    spec = {"sources": ["dcgan-faces"], "method": method, "mining_steps": a.mining_steps, "finetune_steps": a.finetune_steps,
            "batch_size": a.batch_size, "seed": seed, **({"options": json.loads(a.set)} if a.set else {})}
    t0 = time.time()
    job = c.post("/jobs", files={"images": ("faces.zip", target_zip, "application/zip")}, data={"spec": json.dumps(spec)}).json()
    while (j := c.get(f"/jobs/{job['id']}").json())["status"] not in ("succeeded", "failed", "canceled"):
        time.sleep(10)
    assert j["status"] == "succeeded", j
    img = _grid(a, method, seed)
    img.parent.mkdir(parents=True, exist_ok=True)
    img.write_bytes(c.get(f"/jobs/{job['id']}/sample?n=64&seed=0").content)
    x = _samples(c, job["id"], a.samples)
    kept = (j.get("metrics") or {}).get("keep_best")
    return {**evaluate(x, target, ["kid", "fid"]), "faces": face_rate(x), "faces_n": len(x), "wall_s": round(time.time() - t0),
            "steps": j["total_steps"], "keep_best": kept}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", default="minegan++:0,minegan++:1,minegan++:2,mine:0,mine:1,mine:2")
    ap.add_argument("--mining-steps", type=int, default=200)
    ap.add_argument("--finetune-steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "finetune_faces"))
    ap.add_argument("--report", action="store_true", help="only write the table from what --out holds")
    ap.add_argument("--set", default="", help="JSON options every job sets beside method, steps, batch and seed (a screen "
                    "around the defaults): the table goes to --section of docs/faces.md, or is only printed without one")
    ap.add_argument("--section", default="", help="with --set: the docs/faces.md section the table is written to")
    ap.add_argument("--title", default="", help="with --set and --section: the section's heading")
    a = ap.parse_args()
    if a.section and not (a.set and a.title):
        ap.error("--section goes with --set and --title")
    if a.threads:
        os.environ["OMP_NUM_THREADS"] = str(a.threads)
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    target_zip = _faces_zip()
    target = load_target_bytes(target_zip, 3, 64).images
    if not a.report:
        from fastapi.testclient import TestClient

        from api.main import create_app

        with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
            settings = Settings(database_url=f"sqlite:///{tmp}/db.sqlite", storage_dir=f"{tmp}/blobs", work_dir=f"{tmp}/work",
                                progress_interval_s=5, loop_stall_warn_s=0)
            c = stack.enter_context(TestClient(create_app(settings)))
            cfg = {"id": "dcgan-faces", "family": "dcgan64", "config": {"z_dim": 100, "width": 64, "channels": 3}}
            r = c.post("/models", files={"generator": ("weights.tar", _weights().read_bytes(), "application/octet-stream")},
                       data={"config": json.dumps(cfg)})
            assert r.status_code == 201, r.text
            for item in a.jobs.split(","):
                method, seed = item.split(":")
                res = out / f"{method}-s{seed}-{a.mining_steps}-{a.finetune_steps}.json"
                if not res.exists():
                    res.write_text(json.dumps(_run(c, a, method, int(seed), target_zip, target)))
                print(item, res.read_text(), flush=True)
    _report(a, out, target)
    return 0


@functools.cache
def _as_uploaded() -> Any:
    from benchmarks.adapt_screen import _source
    from core.mining import MinedGenerator

    return MinedGenerator(_source().G.eval(), None, None)


def source_samples(n: int, seed: int = 123) -> torch.Tensor:
    """``n`` samples of the source as uploaded (its G on N(0, I) latents: no miner, no colour map; loaded once), drawn
    as ``_samples`` draws a job's: seeds 123, 124, ... (from ``seed``) of up to 250 each, so the k-th sample of a job
    and of the source share a latent draw."""
    g = _as_uploaded()
    return torch.cat([g.sample(min(250, n - start), seed=seed + i) for i, start in enumerate(range(0, n, 250))])


def _references(out: Path, target: torch.Tensor, n: int) -> dict[str, Any]:
    """What the face rates compare with: the source as uploaded on ``n`` samples (``source_samples``), on five draws
    of 200 (seeds 123-127: how far a rate moves between draws), and the 100 targets."""
    path = out / f"references-n{n}.json"
    if not path.exists():
        draws = [face_rate(source_samples(200, seed=s)) for s in range(123, 128)]
        path.write_text(json.dumps({"source_faces": face_rate(source_samples(n)), "source_faces_draws": draws,
                                    "target_faces": face_rate(target)}))
    refs: dict[str, Any] = json.loads(path.read_text())
    return refs


def _report(a: argparse.Namespace, out: Path, target: torch.Tensor) -> None:
    refs = _references(out, target, a.samples)
    draws = refs["source_faces_draws"]
    rows: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for f in sorted(out.glob(f"*-{a.mining_steps}-{a.finetune_steps}.json")):
        method, seed = f.name.split("-s")[0], int(f.name.split("-s")[1].split("-")[0])
        rows.setdefault(method, []).append((seed, json.loads(f.read_text())))
    label = f"service defaults + {a.set}" if a.set else "service defaults"
    lines = [f"| method ({label}) | seeds | KID per seed | KID median | FID median | faces found (Haar) per seed | "
             "faces found, median | published candidate (keep_best) | job wall time |", "|---|---|---|---|---|---|---|---|---|"]
    for method, runs in rows.items():
        ms = [m for _, m in runs]
        kept = ", ".join(f"step {m['keep_best']['published_step']} of {m['keep_best']['last_step']}" if m.get("keep_best") else "last"
                         for m in ms)
        kids = ", ".join(f"{m['kid']:.4f}" for m in ms)
        faces = ", ".join(f"{100 * m['faces']:.1f}" for m in ms)
        lines.append(f"| {method} | {', '.join(str(s) for s, _ in runs)} | {kids} | "
                     f"**{statistics.median(m['kid'] for m in ms):.4f}** | {statistics.median(m['fid'] for m in ms):.1f} | "
                     f"{faces} % | "
                     f"{100 * statistics.median(m['faces'] for m in ms):.1f} % | {kept} | "
                     f"{statistics.median(m['wall_s'] for m in ms):.0f} s |")
    jobs = ",".join(f"{method}:{seed}" for method, runs in rows.items() for seed, _ in runs)
    extra = [shlex.quote(x) for x in sys.argv[1:] if x not in ("--report",)]
    extra = [x for i, x in enumerate(extra) if x != "--jobs" and (i == 0 or extra[i - 1] != "--jobs")]
    cmd = " ".join(["python benchmarks/finetune_faces.py", "--jobs", jobs, *extra])
    text = "\n".join([
        f"### {a.title}" if a.set else "### Finetuning at the service's defaults, 200 + 100 steps", "",
        f"Command: `{cmd}` ({datetime.date.today().isoformat()}, 2-core CPU, one thread per job). Every job: `POST /jobs` with "
        f"the method, {a.mining_steps} mining + {a.finetune_steps} finetuning steps (`mine`: {a.mining_steps + a.finetune_steps} "
        f"mining steps), batch {a.batch_size} and the seed; {'the options `' + a.set + '`' if a.set else 'nothing else set'}. KID and FID: "
        f"{a.samples} samples against the 100 targets. Faces found: OpenCV's Haar cascade on the same {a.samples} samples. "
        "The same detector finds a face "
        f"in {100 * refs['source_faces']:.1f} % of {a.samples} samples of the source as uploaded, drawn the same way (on "
        f"five draws of 200: {', '.join(f'{100 * f:.1f}' for f in draws)} %), and in {100 * refs['target_faces']:.0f} % "
        "of the targets.", "", *lines, "",
        *[f"`{method}`, seed {s}:\n\n![{method} seed {s}]({_shown(_grid(a, method, s))})\n"
          for method, runs in rows.items() for s, _ in runs[:1]],
    ])
    if not a.set or a.section:
        update_section(a.section or "finetune_faces", text, DOC)
    print(text)


if __name__ == "__main__":
    raise SystemExit(main())
