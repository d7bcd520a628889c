"""Bring your own source GAN: POST /models uploads a generator state dict of a supported layout (here a tiny
DCGAN 64x64), which is checked, registered for the tenant and mined like any other source."""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
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
    body = r.json()
    defaults = body.pop("job_defaults")  # a generator-only upload: G_ema, the best candidate, a fresh critic with a warm-up
    assert body == {"id": "my-dcgan", "resolution": 64, "channels": 3, "conditional": False, "n_classes": 0, "z_dim": 16,
                    "description": "tiny", "origin": "upload", "critic": False}
    assert (defaults["critic_init"], defaults["critic_warmup"], defaults["keep_best"]) == ("fresh", 50, "on")
    critic = [defaults[k] for k in ("n_critic", "lr_critic", "finetune_n_critic", "finetune_lr_critic")]
    assert critic == [10, 4e-4, 10, 4e-4]  # a stronger critic, in every stage
    assert (defaults["critic_patch"], defaults["finetune_layers"], defaults["lr_miner"], defaults["g_ema"]) == (8, 3, 3e-5, 0.9925)
    # 64 px, minegan++: a patch critic, G's last 3 layers learn, a slower miner, a shorter moving average of G
    assert "my-dcgan" in {m["id"] for m in client.get("/models").json()}
    spec = {"sources": ["my-dcgan"], "method": "minegan", "mining_steps": 2, "finetune_steps": 2, "batch_size": 8,
            "options": {"n_critic": 1, "critic_warmup": 2}}  # no critic shipped: a fresh one, DiffAugment (auto), 2 warm-up steps
    job = client.post("/jobs", files={"images": ("t.zip", _rgb_zip(), "application/zip")}, data={"spec": json.dumps(spec)}).json()
    assert job["total_steps"] == 6
    done = wait_for(client, job["id"])
    assert done["status"] == "succeeded", done
    png = client.get(f"/jobs/{job['id']}/sample?n=4")
    assert Image.open(io.BytesIO(png.content)).size == (2 * 66 + 2, 2 * 66 + 2) and Image.open(io.BytesIO(png.content)).mode == "RGB"
    # colour matching is on by default for an RGB generator-only upload: the samples take the targets' colour mean
    r = client.get(f"/jobs/{job['id']}/sample", params={"n": 16, "seed": 3, "format": "zip"})
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        pixels = np.stack([np.asarray(Image.open(zf.open(n)).convert("RGB"), dtype=np.float64) for n in zf.namelist()])
    want = np.array([200, np.mean([40 + 8 * i for i in range(16)]), 40])  # _rgb_zip's mean colour
    assert np.abs(pixels.mean(axis=(0, 1, 2)) - want).max() < 12, pixels.mean(axis=(0, 1, 2))
    fitted = done["metrics"]["colour_map"]  # the job says what it fitted: Eq. MK's W, b and Eq. BAND's size (0: none)
    assert np.asarray(fitted["W"]).shape == (3, 3) and len(fitted["b"]) == 3 and 0 <= fitted["band"] < 64
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


def _gray_zip(n: int = 12, size: int = 28) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(n):
            out = io.BytesIO()
            Image.new("L", (size, size), 30 + 15 * i).save(out, format="PNG")
            zf.writestr(f"{i}.png", out.getvalue())
    return buf.getvalue()


@pytest.mark.parametrize("class_input", ["index", "onehot"])
def test_an_onnx_generator_with_a_class_input_draws_each_class_and_is_mined_as_a_family(client: TestClient, tmp_path: Path,
                                                                                      class_input: str) -> None:
    """A class-conditional ONNX graph (z and class indices, or z and one-hot rows): each class's images are the graph's
    own (onnx's reference evaluator, a third-party judge), and mining it mines the family of its classes."""
    import numpy as np
    from onnx.reference import ReferenceEvaluator

    from store import sources as registry
    from tests.hostile import onnx_generator

    graph = onnx_generator(z_dim=8, classes=class_input, n_classes=3)
    cfg = {"id": f"cond-{class_input}", "family": "onnx", "config": {"z_dim": 8, "img_size": 28, "channels": 1, "n_classes": 3,
                                                                     "class_input": class_input}}
    r = _upload(client, graph, cfg)
    assert r.status_code == 201, r.text
    assert r.json()["conditional"] is True and r.json()["n_classes"] == 3
    G = registry.load(client.app.state.services.blobs, cfg["id"], tmp_path, "default").G.eval()  # type: ignore[attr-defined]
    z = torch.randn(6, 8, generator=torch.Generator().manual_seed(3))
    c = torch.tensor([0, 1, 2, 2, 1, 0])
    label = c.numpy() if class_input == "index" else np.eye(3, dtype=np.float32)[c.numpy()]
    (want,) = ReferenceEvaluator(graph).run(None, {"z": z.numpy(), "label": label})
    with torch.no_grad():
        got = G(z, c)
    assert got.shape == (6, 1, 28, 28) and np.allclose(got.numpy(), want, atol=1e-5)
    assert not torch.allclose(got[0], G(z[:1], torch.tensor([1]))[0])  # the class input matters
    with pytest.raises(ValueError, match="class indices"):
        G(z)
    spec = {"sources": [cfg["id"]], "method": "minegan", "mining_steps": 2, "finetune_steps": 1, "batch_size": 6,
            "options": {"n_critic": 1, "critic_warmup": 1}}
    job = client.post("/jobs", files={"images": ("t.zip", _gray_zip(), "application/zip")}, data={"spec": json.dumps(spec)}).json()
    done = wait_for(client, job["id"])
    assert done["status"] == "succeeded", done
    assert len(done["selector"]) == 3  # one miner per class (supplement Sec. A), weighed by the selector's pi
    assert client.get(f"/jobs/{job['id']}/sample?n=4").status_code == 200


def test_an_onnx_critic_is_the_sources_critic_and_is_finetuned_with_s3(client: TestClient, tmp_path: Path) -> None:
    """An ONNX critic uploaded beside a generator scores as the graph does, jobs start from it (auto: source), and
    minegan++ selects its filters with S^3 and finetunes it; critic_init fresh replaces it by a new critic of ours."""
    import numpy as np
    from onnx.reference import ReferenceEvaluator

    from core import methods
    from core.formats import OnnxCritic
    from core.options import RunConfig
    from store import sources as registry
    from tests.hostile import onnx_critic, onnx_generator

    critic = onnx_critic(size=28)
    cfg = {"id": "with-critic", "family": "onnx", "config": {"z_dim": 8, "img_size": 28, "channels": 1}}
    r = client.post("/models", files={"generator": ("g.onnx", onnx_generator(), "application/octet-stream"),
                                      "critic": ("d.onnx", critic, "application/octet-stream")}, data={"config": json.dumps(cfg)})
    assert r.status_code == 201, r.text
    assert r.json()["critic"] is True
    assert r.json()["job_defaults"]["critic_init"] == "source" and r.json()["job_defaults"]["keep_best"] == "off"  # the paper's recipe
    src = registry.load(client.app.state.services.blobs, "with-critic", tmp_path, "default")  # type: ignore[attr-defined]
    assert isinstance(src.D, OnnxCritic) and src.has_critic
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    (want,) = ReferenceEvaluator(critic).run(None, {"x": x.numpy()})
    with torch.no_grad():
        assert np.allclose(src.D(x).numpy(), want, atol=1e-5)
    mods = methods.build_modules(RunConfig(method="minegan++"), src)
    assert isinstance(mods.D, OnnxCritic) and torch.equal(mods.D(x), src.D(x))
    assert not isinstance(methods.build_modules(RunConfig(method="minegan++", critic_init="fresh"), src).D, OnnxCritic)
    before = {k: v.clone() for k, v in src.D.state_dict().items()}
    spec = {"sources": ["with-critic"], "method": "minegan++", "mining_steps": 2, "finetune_steps": 2, "batch_size": 6,
            "options": {"n_critic": 1}}
    job = client.post("/jobs", files={"images": ("t.zip", _gray_zip(), "application/zip")}, data={"spec": json.dumps(spec)}).json()
    done = wait_for(client, job["id"])
    assert done["status"] == "succeeded", done
    assert job["total_steps"] == 4  # the source ships a critic: no warm-up
    assert 0 < done["metrics"]["s3_trainable_fraction"] < 1, done["metrics"]  # S^3 chose a part of the ONNX critic's Conv and Gemm
    gemm = next(f"{n}.weight" for n, m in src.D.named_modules() if isinstance(m, torch.nn.Linear))  # the ONNX Gemm
    assert torch.equal(src.D.state_dict()[gemm], before[gemm])


def test_torch_onnx_export_of_a_one_hot_conditional_generator_round_trips() -> None:
    """torch.onnx.export of the project's one-hot conditional generator uses the OneHot operator, which onnx2torch
    lacks and core/formats.py converts: the upload draws the original's images for every class."""
    from core import checkpoints, zoo
    from core.nets import Generator, GeneratorConfig

    torch.manual_seed(0)
    G = Generator(GeneratorConfig(z_dim=8, img_size=28, channels=1, width=8, n_classes=4)).eval()
    buf = io.BytesIO()
    torch.onnx.export(G, (torch.randn(2, 8), torch.zeros(2, dtype=torch.long)), buf, input_names=["z", "c"], output_names=["images"],
                      dynamic_axes={"z": {0: "n"}, "c": {0: "n"}, "images": {0: "n"}}, opset_version=17, dynamo=False)
    assert b"OneHot" in buf.getvalue()
    ckpt = zoo.source_from_state_dicts("cg", "onnx", {"z_dim": 8, "img_size": 28, "channels": 1, "n_classes": 4}, buf.getvalue())
    up = checkpoints.unpack_module(ckpt["generator"]).eval()
    z, c = torch.randn(8, 8), torch.arange(8) % 4
    with torch.no_grad():
        assert torch.allclose(up(z, c), G(z, c), atol=1e-6)


def test_an_onnx_generator_is_finetuned_exactly_like_its_torch_original() -> None:
    """The same DCGAN as a state dict and as ONNX, with the same miner, critic and random stream: a few minegan++
    finetuning steps (gradients through G's converted weights, BatchNorm kept at its statistics) give the same
    generator. (A job on each still differs: building them consumes different amounts of the random stream.)"""
    from core import checkpoints, methods
    from core.options import RunConfig
    from core.trainer import critic_step, generator_step, make_stage_state, set_trainable
    from core.zoo import load_source_file, source_from_state_dicts

    torch.manual_seed(0)
    G = DCGANGenerator(DCGANGeneratorConfig(z_dim=16, width=4)).eval()
    with torch.no_grad():
        for m in G.modules():  # non-trivial BatchNorm statistics
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    sources = []
    for family, data, cfg in (("dcgan64", _state_of(G), {"z_dim": 16, "width": 4, "channels": 3}),
                              ("onnx", _onnx_of(G, 16), {"z_dim": 16, "img_size": 64, "channels": 3})):
        path = Path(__import__("tempfile").mkdtemp()) / f"{family}.pt"
        checkpoints.save(source_from_state_dicts(family, family, cfg, data), path)
        sources.append(load_source_file(path))
    cfg = RunConfig(method="minegan++", critic_init="fresh")
    a, b = (methods.build_modules(cfg, s) for s in sources)
    b.M.load_state_dict(a.M.state_dict())  # type: ignore[union-attr]
    b.D.load_state_dict(a.D.state_dict())
    stage = next(s for s in methods.plan(cfg) if s.train_generator)
    real = torch.rand(8, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        before = a.fake(torch.randn(4, 16, generator=torch.Generator().manual_seed(1)))
    out = []
    for mods in (a, b):
        torch.manual_seed(7)
        set_trainable(mods, stage)
        mods.G.train()
        st = make_stage_state(mods, stage)
        for _ in range(3):
            critic_step(mods, st, stage, real, None)
            generator_step(mods, st, 8, None, real.device)
        mods.G.eval()
        with torch.no_grad():
            out.append(mods.fake(torch.randn(4, 16, generator=torch.Generator().manual_seed(1))))
    assert (out[0] - before).abs().max() > 1e-4  # the generator and miner did learn
    assert torch.allclose(out[0], out[1], atol=1e-6)


def _state_of(G: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(G.state_dict(), buf)
    return buf.getvalue()


def test_a_finished_jobs_sampler_downloads_as_pt2_and_onnx(client: TestClient) -> None:
    """GET /jobs/{id}/export: the whole sampler as one file, the same images as GET /jobs/{id}/sample."""
    import onnxruntime

    from tests.hostile import pt2_generator

    cfg = {"id": "pt2-src", "family": "pt2", "config": {"z_dim": 8, "img_size": 28, "channels": 1}}
    r = client.post("/models", files={"generator": ("g.pt2", pt2_generator(), "application/octet-stream")}, data={"config": json.dumps(cfg)})
    assert r.status_code == 201, r.text
    spec = {"sources": ["pt2-src"], "method": "minegan++", "mining_steps": 2, "finetune_steps": 1, "batch_size": 6,
            "options": {"n_critic": 1, "critic_warmup": 1}}
    job = client.post("/jobs", files={"images": ("t.zip", _gray_zip(), "application/zip")}, data={"spec": json.dumps(spec)}).json()
    early = client.get(f"/jobs/{job['id']}/export")
    assert early.status_code in (200, 409)  # 409 job_not_finished while it runs
    assert wait_for(client, job["id"])["status"] == "succeeded"
    with zipfile.ZipFile(io.BytesIO(client.get(f"/jobs/{job['id']}/sample", params={"n": 5, "seed": 4, "format": "zip"}).content)) as zf:
        want = np.stack([np.asarray(Image.open(zf.open(n)), dtype=int) for n in sorted(zf.namelist())])  # [5, 28, 28]
    u = torch.randn(5, 8, generator=torch.Generator().manual_seed(4))  # ?seed=4's latents (core/export.py)
    r = client.get(f"/jobs/{job['id']}/export", params={"format": "pt2"})
    assert r.status_code == 200 and r.headers["content-disposition"].endswith('.pt2"')
    assert json.loads(r.headers["x-minegan-sampler"])["inputs"] == {"u": ["N", 8]}
    buf = io.BytesIO(r.content)
    x = torch.export.load(buf).module()(u)
    assert np.abs(((x[:, 0] + 1) * 127.5).round().numpy().astype(int) - want).max() == 0
    r = client.get(f"/jobs/{job['id']}/export", params={"format": "onnx"})
    assert r.status_code == 200
    (x,) = onnxruntime.InferenceSession(r.content).run(None, {"u": u.numpy()})
    assert np.abs(((x[:, 0] + 1) * 127.5).round().astype(int) - want).max() <= 1
    assert client.get(f"/jobs/{job['id']}/export", params={"format": "tflite"}).status_code == 422
    assert client.get("/jobs/nope/export").json()["error"]["code"] == "job_not_found"
