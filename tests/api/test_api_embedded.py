"""The HTTP API in embedded mode (SQLite, local blobs, built-in worker) on a tiny source model.

Unit-level: SQLite and the built-in worker stand in for PostgreSQL/Celery here; the same routes run
against the real stack in tests/integration/.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.main import create_app
from core.options import SourceInfo, source_defaults
from store.blobs import LocalBlobStore
from store.settings import Settings
from tests.helpers import TINY_SPEC, target_zip_bytes, wait_for, write_tiny_zoo


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    weights = tmp_path / "zoo"
    write_tiny_zoo(weights)
    write_tiny_zoo(weights, "tiny-b", description="second tiny source")
    write_tiny_zoo(weights, "tiny-cond", n_classes=3, description="tiny conditional source")
    monkeypatch.setattr("core.zoo.WEIGHTS_DIR", weights)
    settings = Settings(database_url=f"sqlite:///{tmp_path}/db.sqlite", storage_dir=str(tmp_path / "blobs"),
                        work_dir=str(tmp_path / "work"), progress_interval_s=0, checkpoint_every=2)
    with TestClient(create_app(settings)) as c:
        yield c


def submit(client: TestClient, spec: dict | str = TINY_SPEC, data: bytes | None = None):  # type: ignore[no-untyped-def]
    files = {"images": ("target.zip", data if data is not None else target_zip_bytes(), "application/zip")}
    return client.post("/jobs", files=files, data={"spec": spec if isinstance(spec, str) else json.dumps(spec)})


def test_submit_poll_sample(client: TestClient) -> None:
    r = submit(client)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] in ("queued", "running") and job["total_steps"] == 6 and job["target"]["n_images"] == 16
    done = wait_for(client, job["id"])
    assert done["status"] == "succeeded", done
    assert done["progress"] == 1.0 and done["step"] == 6 and "g_loss" in done["stats"]
    assert "fd_classifier" in done["metrics"] or "train_seconds" in done["metrics"]

    png = client.get("/sample?n=16")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(png.content))
    assert img.size == (4 * 30 + 2, 4 * 30 + 2)  # 4x4 grid of 28px images with 2px padding
    assert client.get(f"/jobs/{job['id']}/sample?n=16").content == png.content  # same seed -> same images
    assert client.get("/sample?n=16&seed=1").content != png.content

    z = client.get(f"/sample?n=5&format=zip&job={job['id']}")
    assert z.headers["content-type"] == "application/zip"
    assert len(zipfile.ZipFile(io.BytesIO(z.content)).namelist()) == 5
    svc = client.app.state.services
    assert svc.models.loads == 1  # loaded once, then served from the cache
    assert svc.finished.get(job["id"]) == ("default", f"jobs/{job['id']}/model.pt")  # no DB round trip next time
    assert client.get(f"/jobs/{job['id']}/sample?n=16").content == png.content  # served via the finished-job cache

    names = {a["name"] for a in client.get(f"/jobs/{job['id']}/artifacts").json()}
    assert {"model.pt", "samples.png", "metrics.json"} <= names
    url = next(a["url"] for a in client.get(f"/jobs/{job['id']}/artifacts").json() if a["name"] == "samples.png")
    assert client.get(url).headers["content-type"] == "image/png"
    listing = client.get("/jobs?limit=5").json()
    assert listing["total"] == 1 and listing["items"][0]["id"] == job["id"]


def test_sample_follows_the_latest_job_without_asking_the_database_each_time(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from store import jobs as jobs_dao

    calls: list[str] = []
    real = jobs_dao.latest_model
    monkeypatch.setattr("api.services.sampling.jobs_dao.latest_model", lambda url, tenant: calls.append(tenant) or real(url, tenant))
    first = wait_for(client, submit(client).json()["id"])
    assert client.get("/sample?n=4").headers["x-job-id"] == first["id"]
    assert client.get("/sample?n=4&seed=3").headers["x-job-id"] == first["id"]
    assert calls == ["default"]  # the second request was answered from the latest-job cache
    second = wait_for(client, submit(client, {**TINY_SPEC, "seed": 1}).json()["id"])
    assert second["status"] == "succeeded"
    assert client.get("/sample?n=4").headers["x-job-id"] == second["id"]  # the worker's notification dropped the entry
    assert calls == ["default", "default"]


@pytest.mark.parametrize(
    "spec,field",
    [
        ("{not json", "spec is not valid JSON"),
        ({**TINY_SPEC, "method": "magic"}, "method"),
        ({**TINY_SPEC, "sources": ["nope"]}, "sources"),
        ({**TINY_SPEC, "mining_steps": -1}, "mining_steps"),
        ({**TINY_SPEC, "batch_size": 64}, "batch_size"),
        ({**TINY_SPEC, "bogus": 1}, "bogus"),
    ],
)
def test_bad_specs_get_422_naming_the_field(client: TestClient, spec, field: str) -> None:  # type: ignore[no-untyped-def]
    r = submit(client, spec)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert field in err["message"] and err["code"] in ("invalid_spec", "unknown_source")
    assert client.get("/healthz").status_code == 200


def test_sample_limits_and_unknown_jobs(client: TestClient) -> None:
    assert client.get("/sample").status_code == 404
    assert client.get("/sample?n=0").status_code == 422
    r = client.get("/sample?n=257")
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    assert client.get("/jobs/does-not-exist").json()["error"]["code"] == "job_not_found"


def test_cancel_a_running_job(client: TestClient) -> None:
    spec = {**TINY_SPEC, "mining_steps": 5000, "finetune_steps": 0}
    job = submit(client, spec).json()
    wait_for(client, job["id"], until=("running",))
    r = client.post(f"/jobs/{job['id']}/cancel")
    assert r.status_code == 200
    done = wait_for(client, job["id"], timeout=30)
    assert done["status"] == "canceled" and done["step"] < 5000
    assert client.get(f"/jobs/{job['id']}/sample").status_code == 409


def test_models_and_readiness(client: TestClient) -> None:
    models = {m["id"]: m for m in client.get("/models").json()}
    assert models["tiny-src"] == {"id": "tiny-src", "resolution": 28, "channels": 1, "conditional": False, "n_classes": 0,
                                  "z_dim": 8, "description": "tiny test source", "origin": "built-in",
                                  "critic": True, "job_defaults": source_defaults(SourceInfo("tiny-src", 8, 28, 1, False))}
    defaults = models["tiny-src"]["job_defaults"]  # a zoo source: its own critic, the paper's recipe (Appendix A's 5 updates at 1e-4)
    assert defaults["critic_init"] == "source" and (defaults["n_critic"], defaults["lr_critic"]) == (5, 1e-4)
    assert models["tiny-cond"]["conditional"] and models["tiny-cond"]["n_classes"] == 3 and set(models) == {"tiny-src", "tiny-b", "tiny-cond"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}


@pytest.mark.parametrize("spec,members", [
    ({**TINY_SPEC, "sources": ["tiny-src", "tiny-b"], "method": "minegan", "options": {"n_critic": 1, "selection": "max"}},
     {"tiny-src", "tiny-b"}),
    ({**TINY_SPEC, "sources": ["tiny-cond"], "method": "mine"}, {"tiny-cond:0", "tiny-cond:1", "tiny-cond:2"}),
])
def test_multi_gan_jobs_report_the_selector(client: TestClient, spec, members) -> None:  # type: ignore[no-untyped-def]
    job = submit(client, spec)
    assert job.status_code == 202, job.text
    done = wait_for(client, job.json()["id"])
    assert done["status"] == "succeeded", done
    assert set(done["selector"]) == members and abs(sum(done["selector"].values()) - 1) < 1e-6
    assert done["metrics"]["selector_pi"] == done["selector"]
    r = client.get(f"/jobs/{done['id']}/sample?n=9&format=zip")
    assert r.status_code == 200 and len(zipfile.ZipFile(io.BytesIO(r.content)).namelist()) == 9


def test_fusion_job_fuses_then_mines_and_keeps_the_fused_model(client: TestClient) -> None:
    spec = {**TINY_SPEC, "sources": ["tiny-src", "tiny-b"], "method": "fusion++",
            "options": {"n_critic": 1, "fusion_steps": 2, "fusion_distill": 5.0, "fusion_lr_generator": 2e-4, "fusion_lr_decay": False}}
    job = submit(client, spec).json()
    assert job["total_steps"] == 2 + 3 + 3
    done = wait_for(client, job["id"])
    assert done["status"] == "succeeded" and done["step"] == 8, done
    names = {a["name"] for a in client.get(f"/jobs/{job['id']}/artifacts").json()}
    assert {"fused.pt", "model.pt"} <= names
    assert client.get(f"/jobs/{job['id']}/sample?n=4").status_code == 200
    # the fused generator becomes a source of its own, and mining it is an ordinary job
    r = client.post("/models", json={"id": "tiny-fused", "job_id": job["id"]})
    assert r.status_code == 201, r.text
    assert r.json()["origin"] == f"job {job['id']}" and not r.json()["conditional"]
    assert "tiny-fused" in {m["id"] for m in client.get("/models").json()}
    assert client.post("/models", json={"id": "tiny-fused", "job_id": job["id"]}).status_code == 409
    mined = wait_for(client, submit(client, {**TINY_SPEC, "sources": ["tiny-fused"], "method": "minegan"}).json()["id"])
    assert mined["status"] == "succeeded", mined


def test_a_job_stores_its_whole_recipe_so_later_defaults_cannot_change_it(client: TestClient) -> None:
    from api.schemas import MethodOptions
    from core.methods import RunConfig
    from worker.runner import run_config_from_spec

    job = submit(client, {**TINY_SPEC, "sources": ["tiny-src", "tiny-b"], "method": "fusion",
                          "options": {"n_critic": 1, "fusion_steps": 2, "fusion_distill": 5.0}}).json()
    opts = client.get(f"/jobs/{job['id']}").json()["spec"]["options"]
    assert set(opts) == set(MethodOptions.model_fields)  # every option, the user's and the defaults
    assert opts["n_critic"] == 1 and opts["fusion_steps"] == 2 and opts["fusion_distill"] == 5.0
    defaults = RunConfig()
    assert opts["lr_miner"] == defaults.lr_miner and opts["fusion_lr_generator"] == defaults.fusion_lr_generator
    # the worker builds its RunConfig from the stored options alone: no default is consulted for them
    stored = client.get(f"/jobs/{job['id']}").json()["spec"]
    cfg = run_config_from_spec(stored, client.app.state.services.settings)  # type: ignore[attr-defined]
    assert {k: getattr(cfg, k) for k in opts} == opts
    # a single-source job leaves the fusion options out, and a stored spec can be submitted again as it is
    one = submit(client, {**TINY_SPEC, "options": {}}).json()
    assert not any(k.startswith("fusion_") for k in one["spec"]["options"])
    again = submit(client, one["spec"])
    assert again.status_code == 202, again.text
    assert again.json()["spec"] == one["spec"]



def test_a_job_stores_its_prepared_run_and_the_worker_runs_that(client: TestClient) -> None:
    """core.options.prepare runs once, at submission: GET /jobs/{id} shows the run with every "auto" made concrete, the
    worker builds its run from that record (with its checkpoint interval), and a job stored without one is prepared."""
    from dataclasses import replace

    from core.options import PreparedRun, SourceInfo, config_from_spec, prepare
    from store import jobs as jobs_dao
    from store import sources as registry
    from worker.runner import job_run

    svc = client.app.state.services  # type: ignore[attr-defined]
    job = submit(client, {**TINY_SPEC, "options": {"n_critic": 1}}).json()
    run = client.get(f"/jobs/{job['id']}").json()["run"]
    srcs = [SourceInfo.of_listing(registry.known(svc.blobs, "default")["tiny-src"])]
    want = prepare(config_from_spec(job["spec"]), srcs).run
    assert run == want.as_json() and run["n_critic"] == 1
    assert "auto" not in run.values() and run["critic_init"] == "source" and run["critic_warmup"] == 0
    row = jobs_dao.get(svc.settings.database_url, job["id"])
    assert row is not None
    made = job_run(row, svc.settings, srcs)
    assert isinstance(made, PreparedRun)
    assert made.run == replace(want, checkpoint_every=svc.settings.checkpoint_every)
    assert made.asked == config_from_spec(job["spec"], checkpoint_every=svc.settings.checkpoint_every)
    row.run = None  # a job submitted before the API stored runs
    assert job_run(row, svc.settings, srcs) == made.asked
    row.run = {k: v for k, v in run.items() if k != "keep_best"}  # stored by a version without keep_best: resolved here
    assert job_run(row, svc.settings, srcs).run.keep_best == want.keep_best == "off"  # type: ignore[union-attr]
    upload = [SourceInfo("upload", 100, 64, 3, False, has_critic=False)]  # where critic_patch auto is 8 today
    row.run = {k: v for k, v in prepare(config_from_spec(job["spec"]), upload).run.as_json().items() if k != "critic_patch"}
    assert job_run(row, svc.settings, upload).run.critic_patch == 0  # type: ignore[union-attr]  # stored before its auto
    assert prepare(config_from_spec(job["spec"]), upload).run.critic_patch == 8

def test_register_refuses_jobs_without_a_fused_model(client: TestClient) -> None:
    done = wait_for(client, submit(client).json()["id"])
    r = client.post("/models", json={"id": "nope", "job_id": done["id"]})
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_fused_model"
    assert client.post("/models", json={"id": "x", "job_id": "missing"}).status_code == 404


@pytest.mark.parametrize("spec,msg", [
    ({**TINY_SPEC, "method": "fusion"}, "fuses two or more"),
    ({**TINY_SPEC, "sources": ["tiny-src", "tiny-cond"], "method": "fusion"}, "fuses two or more"),
    ({**TINY_SPEC, "sources": ["tiny-src", "tiny-b"], "method": "transfergan"}, "several sources"),
    ({**TINY_SPEC, "sources": ["tiny-cond"], "method": "scratch"}, "conditional"),
    ({**TINY_SPEC, "sources": ["tiny-src", "tiny-src"]}, "at most once"),
    ({**TINY_SPEC, "sources": ["tiny-src", "tiny-b"], "options": {"critic_source": 2}}, "critic_source"),
    ({**TINY_SPEC, "options": {"selection": "mean"}}, "selection"),
    ({**TINY_SPEC, "options": {"critic_patch": 7}}, "critic_patch needs a fresh critic"),
    ({**TINY_SPEC, "options": {"critic_patch": 8, "critic_init": "fresh"}}, "critic_patch for 28px images is one of 14, 7, 4"),
    ({**TINY_SPEC, "sources": ["tiny-src", "tiny-b"], "method": "fusion", "options": {"fusion_distill": -1}}, "fusion_distill"),
])
def test_source_and_method_mismatches_are_422(client: TestClient, spec, msg: str) -> None:  # type: ignore[no-untyped-def]
    r = submit(client, spec)
    assert r.status_code == 422 and msg in r.json()["error"]["message"], r.text
    assert client.get("/jobs").json()["total"] == 0


def test_previews_and_plots(client: TestClient) -> None:
    job = wait_for(client, submit(client).json()["id"])
    assert job["status"] == "succeeded" and job["links"]["previews"] == f"/jobs/{job['id']}/previews"
    prev = client.get(f"/jobs/{job['id']}/previews").json()
    assert [p["step"] for p in prev] == [1, 2, 3, 4, 5, 6]  # 6 steps: about ten previews -> one per step
    grid = client.get(prev[-1]["url"])
    assert grid.status_code == 200 and Image.open(io.BytesIO(grid.content)).size == (4 * 30 + 2, 4 * 30 + 2)
    assert client.get(prev[0]["url"]).content != grid.content  # the samples moved during training
    names = {a["name"] for a in client.get(f"/jobs/{job['id']}/artifacts").json()}
    assert {"losses.png", "metrics.png", "history.json"} <= names and "pi.png" not in names  # one source: no selector
    history = json.loads(client.get(next(a["url"] for a in client.get(f"/jobs/{job['id']}/artifacts").json()
                                         if a["name"] == "history.json")).content)
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6] and "d_loss" in history[0]


def test_shutdown_interrupts_a_running_job_which_resumes_at_the_next_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopping the embedded server stops the running job at its next step and leaves it queued (no attempt
    used up); the next start resumes it from its checkpoint instead of dying mid-step at exit."""
    weights = tmp_path / "zoo"
    write_tiny_zoo(weights)
    monkeypatch.setattr("core.zoo.WEIGHTS_DIR", weights)
    settings = Settings(database_url=f"sqlite:///{tmp_path}/db.sqlite", storage_dir=str(tmp_path / "blobs"),
                        work_dir=str(tmp_path / "work"), progress_interval_s=0, checkpoint_every=5)
    spec = {**TINY_SPEC, "mining_steps": 200, "finetune_steps": 0}  # long enough to stop it mid-run
    with TestClient(create_app(settings)) as c:
        job = submit(c, spec).json()
        for _ in range(600):
            j = c.get(f"/jobs/{job['id']}").json()
            if j["step"] >= 10:
                break
            time.sleep(0.05)
        assert j["status"] == "running" and j["step"] >= 10, j
    from store import jobs as jobs_dao

    row = jobs_dao.get(settings.database_url, job["id"])
    assert row is not None and row.status == "queued" and row.attempts == 0 and 10 <= row.step < 200, row
    assert any(k.startswith(f"jobs/{job['id']}/ckpt-") for k in LocalBlobStore(settings.storage_dir).list("jobs/"))
    with TestClient(create_app(settings)) as c:
        done = wait_for(c, job["id"], timeout=600)  # the rest of the job: ~1 minute alone, several on a loaded machine
        assert done["status"] == "succeeded" and done["step"] == 200, done
        assert jobs_dao.get(settings.database_url, job["id"]).attempts == 1  # type: ignore[union-attr]


def test_jobs_run_in_a_child_process_and_a_killed_one_is_retried(client: TestClient, tmp_path: Path) -> None:
    """Each job trains in its own process (worker/embedded.py: a second OpenMP team in the API process slowed
    training ~35 %). If that process is killed mid-job, the server keeps serving and the job is claimed again,
    counting an attempt, and resumes from its checkpoint."""
    import os
    import signal

    from store import jobs as jobs_dao

    url = f"sqlite:///{tmp_path}/db.sqlite"
    job = submit(client, {**TINY_SPEC, "mining_steps": 40, "finetune_steps": 0}).json()
    for _ in range(600):
        row = jobs_dao.get(url, job["id"])
        if row is not None and row.status == "running" and row.step >= 4:
            break
        time.sleep(0.05)
    assert row is not None and row.status == "running" and row.worker, row
    pid = int(row.worker.rpartition(":")[2])
    assert pid != os.getpid()  # not a thread of the API process
    os.kill(pid, signal.SIGKILL)
    assert client.get("/healthz").status_code == 200
    done = wait_for(client, job["id"], timeout=120)
    assert done["status"] == "succeeded" and done["step"] == 40, done
    row = jobs_dao.get(url, job["id"])
    assert row is not None and row.attempts == 2 and int(row.worker.rpartition(":")[2]) != pid, row


@pytest.mark.parametrize("method,path,allow", [("DELETE", "/jobs", "GET, POST"), ("PUT", "/models", "GET, POST"),
                                               ("POST", "/sample", "GET"), ("GET", "/v2/models/x/infer", "POST")])
def test_an_undeclared_method_gets_405_with_every_allowed_method(client: TestClient, method: str, path: str, allow: str) -> None:
    r = client.request(method, path)
    assert r.status_code == 405 and r.headers["allow"] == allow


@pytest.mark.parametrize("data,files", [({"spec": ""}, {"images": ("t.zip", b"PK", "application/zip")}),
                                        ({}, {"images": ("t.zip", b"PK", "application/zip")}),
                                        ({"spec": "{}"}, {"images": ("", b"", "application/zip")})])
def test_an_empty_form_part_gets_the_message_of_a_missing_one(client: TestClient, data: dict, files: dict) -> None:  # type: ignore[type-arg]
    r = client.post("/jobs", data=data, files=files)
    field = "spec" if "images" in files and files["images"][0] else "images"
    assert r.status_code == 422 and r.json()["error"]["message"] == f"{field}: is required and was missing or empty"


def test_the_model_cache_keeps_models_on_the_serve_device(tmp_path: Path) -> None:
    """MINEGAN_SERVE_DEVICE: a loaded model lives on that device (``meta`` here: a device that is not the CPU without a
    GPU), and ``auto`` is cuda where there is one. Samples on a GPU ran in docs/benchmarks.md, "sampling_cuda"."""
    import torch

    from api.services import ModelCache
    from core.mining import MinedGenerator
    from core.model_file import pick_device, save_model
    from tests.helpers import tiny_source

    path = save_model(MinedGenerator(tiny_source(width=4, z_dim=8).G, None), tmp_path / "model.pt", {})

    class Blobs:
        def get(self, key: str) -> bytes:
            return path.read_bytes()

    for device in ("cpu", "meta"):
        model = ModelCache(Blobs(), 2, device).get("jobs/x/model.pt")  # type: ignore[arg-type]
        assert {p.device.type for p in model.parameters()} == {device}
    assert pick_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu") and pick_device("cuda:1") == "cuda:1"
    assert Settings(serve_device="cpu").serve_device == "cpu" and Settings().serve_device == "auto"
