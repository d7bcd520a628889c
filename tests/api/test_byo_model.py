"""Bring your own source GAN: POST /models uploads a generator state dict of a supported layout (here a tiny
DCGAN 64x64), which is checked, registered for the tenant and mined like any other source."""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from api.main import create_app
from core.nets import DCGANGenerator, DCGANGeneratorConfig
from store.settings import Settings
from tests.helpers import wait_for, write_tiny_zoo


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    write_tiny_zoo(tmp_path / "zoo")
    monkeypatch.setattr("core.zoo.WEIGHTS_DIR", tmp_path / "zoo")
    settings = Settings(database_url=f"sqlite:///{tmp_path}/db.sqlite", storage_dir=str(tmp_path / "blobs"),
                        work_dir=str(tmp_path / "work"), progress_interval_s=0, checkpoint_every=2)
    with TestClient(create_app(settings)) as c:
        yield c


def _state(width: int = 4, z: int = 16, wrap: bool = True) -> bytes:
    torch.manual_seed(0)
    G = DCGANGenerator(DCGANGeneratorConfig(z_dim=z, width=width))
    buf = io.BytesIO()
    torch.save({"netG_state_dict": G.state_dict()} if wrap else G.state_dict(), buf)  # the gan-face-generate wrapping
    return buf.getvalue()


def _upload(c: TestClient, gen: bytes, cfg: dict):  # type: ignore[no-untyped-def]
    return c.post("/models", files={"generator": ("g.pt", gen, "application/octet-stream")}, data={"config": json.dumps(cfg)})


def _rgb_zip(n: int = 16) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(n):
            img = Image.new("RGB", (64, 64), (200, 40 + 8 * i, 40))
            out = io.BytesIO()
            img.save(out, format="PNG")
            zf.writestr(f"{i}.png", out.getvalue())
    return buf.getvalue()


def test_upload_a_dcgan_and_mine_it(client: TestClient) -> None:
    cfg = {"id": "my-dcgan", "family": "dcgan64", "config": {"z_dim": 16, "width": 4, "channels": 3}, "description": "tiny"}
    r = _upload(client, _state(), cfg)
    assert r.status_code == 201, r.text
    assert r.json() | {} == {"id": "my-dcgan", "resolution": 64, "channels": 3, "conditional": False, "n_classes": 0, "z_dim": 16,
                             "description": "tiny", "origin": "upload", "critic": False}
    assert "my-dcgan" in {m["id"] for m in client.get("/models").json()}
    spec = {"sources": ["my-dcgan"], "method": "minegan", "mining_steps": 2, "finetune_steps": 2, "batch_size": 8,
            "options": {"n_critic": 1, "critic_warmup": 2}}  # no critic shipped: a fresh one, DiffAugment (auto), 2 warm-up steps
    job = client.post("/jobs", files={"images": ("t.zip", _rgb_zip(), "application/zip")}, data={"spec": json.dumps(spec)}).json()
    assert job["total_steps"] == 6
    done = wait_for(client, job["id"])
    assert done["status"] == "succeeded", done
    png = client.get(f"/jobs/{job['id']}/sample?n=4")
    assert Image.open(io.BytesIO(png.content)).size == (2 * 66 + 2, 2 * 66 + 2) and Image.open(io.BytesIO(png.content)).mode == "RGB"
    assert _upload(client, _state(), cfg).status_code == 409  # the id is taken


@pytest.mark.parametrize("gen,cfg,code,msg", [
    (None, {"family": "dcgan64", "config": {"z_dim": 16, "width": 4}}, "bad_checkpoint", "refused"),  # pickled code
    (_state(width=8), {"family": "dcgan64", "config": {"z_dim": 16, "width": 4}}, "bad_checkpoint", "do not fit"),
    (_state(), {"family": "dcgan64", "config": {"z_dim": 16, "width": 4, "channels": 1}}, "bad_checkpoint", "do not fit"),
    (_state(), {"family": "dcgan64", "config": {"z_dim": 16, "width": 4, "img_size": 32}}, "invalid_request", "64x64"),
    (_state(), {"family": "stylegan9", "config": {}}, "invalid_request", "family"),
    (b"not a torch file", {"family": "dcgan64", "config": {"z_dim": 16, "width": 4}}, "bad_checkpoint", "refused"),
])
def test_uploads_that_do_not_fit_are_refused(client: TestClient, tmp_path: Path, gen, cfg, code: str, msg: str) -> None:  # type: ignore[no-untyped-def]
    if gen is None:
        class Evil:
            def __reduce__(self):  # type: ignore[no-untyped-def]
                return (os.system, (f"touch {tmp_path}/pwned",))
        buf = io.BytesIO()
        torch.save({"netG_state_dict": {"main.0.weight": Evil()}}, buf)
        gen = buf.getvalue()
    r = _upload(client, gen, {"id": "x", **cfg})
    assert r.status_code == 422 and r.json()["error"]["code"] == code and msg in r.json()["error"]["message"], r.text
    assert "x" not in {m["id"] for m in client.get("/models").json()}
    assert not (tmp_path / "pwned").exists()


def _onnx_of(G: torch.nn.Module, z_dim: int) -> bytes:
    buf = io.BytesIO()
    torch.onnx.export(G, (torch.randn(2, z_dim),), buf, input_names=["z"], output_names=["images"],
                      dynamic_axes={"z": {0: "n"}, "images": {0: "n"}}, opset_version=17, dynamo=False)
    return buf.getvalue()


def test_an_onnx_generator_gives_the_torch_originals_images_and_is_mined(client: TestClient, tmp_path: Path) -> None:
    """torch.onnx.export of a DCGAN, uploaded as ONNX and as safetensors: both sources draw the original's images
    for the same seed (latents through the declared N(0, 1) z), and the ONNX one is mined and sampled through the API."""
    from safetensors.torch import save as save_safetensors

    from core.mining import MinedGenerator
    from store import sources as registry

    torch.manual_seed(0)
    G = DCGANGenerator(DCGANGeneratorConfig(z_dim=16, width=4)).eval()
    want = MinedGenerator(G, None).sample(6, seed=11)
    onnx_cfg = {"id": "my-onnx", "family": "onnx", "config": {"z_dim": 16, "img_size": 64, "channels": 3, "z_dist": "normal",
                                                                "output_range": [-1, 1]}}
    assert _upload(client, _onnx_of(G, 16), onnx_cfg).status_code == 201
    st_cfg = {"id": "my-st", "family": "dcgan64", "config": {"z_dim": 16, "width": 4, "channels": 3}}
    assert _upload(client, save_safetensors({k: v.contiguous() for k, v in G.state_dict().items()}), st_cfg).status_code == 201
    blobs = client.app.state.services.blobs  # type: ignore[attr-defined]
    for name in ("my-onnx", "my-st"):
        src = registry.load(blobs, name, tmp_path, "default")
        assert torch.equal(MinedGenerator(src.G.eval(), None).sample(6, seed=11), want), name
    spec = {"sources": ["my-onnx"], "method": "minegan", "mining_steps": 2, "finetune_steps": 2, "batch_size": 8,
            "options": {"n_critic": 1, "critic_warmup": 1}}
    job = client.post("/jobs", files={"images": ("t.zip", _rgb_zip(), "application/zip")}, data={"spec": json.dumps(spec)}).json()
    done = wait_for(client, job["id"])
    assert done["status"] == "succeeded", done
    png = client.get(f"/jobs/{job['id']}/sample?n=4")
    assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).size == (2 * 66 + 2, 2 * 66 + 2)
