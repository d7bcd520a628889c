"""The whole path over HTTP against the real stack: upload zip -> job runs on a Celery worker process
(Redis broker) -> progress in PostgreSQL -> artifacts in the S3 server -> /sample returns 16 images."""

from __future__ import annotations

import io
import json
import os
import time

import httpx
import pytest
import sqlalchemy
from PIL import Image

from tests.integration.conftest import Stack

SPEC = {"sources": ["mnist-no-9"], "method": "minegan++", "mining_steps": 4, "finetune_steps": 4, "batch_size": 16,
        "seed": 0, "options": {"n_critic": 1}}


def _nines_zip(tmp) -> bytes:  # type: ignore[no-untyped-def]
    from core.data import write_mnist_zip

    return write_mnist_zip(tmp / "nines.zip", [9], 100, seed=0).read_bytes()


def _wait(c: httpx.Client, job_id: str, timeout: float = 180) -> dict:
    deadline = time.time() + timeout
    seen_running = False
    while time.time() < deadline:
        body = c.get(f"/jobs/{job_id}").json()
        seen_running |= body["status"] == "running"
        if body["status"] in ("succeeded", "failed", "canceled"):
            body["_seen_running"] = seen_running
            return body
        time.sleep(0.1)
    raise AssertionError(f"job stuck: {body}")


def test_upload_to_samples_through_celery_postgres_and_s3(stack: Stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with stack.client() as c:
        ready = c.get("/readyz").json()
        assert ready["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}
        r = c.post("/jobs", files={"images": ("nines.zip", _nines_zip(tmp_path), "application/zip")},
                   data={"spec": json.dumps(SPEC)})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        done = _wait(c, job_id)
        assert done["status"] == "succeeded", (done, (stack.tmp / "worker.log").read_text()[-3000:])
        assert done["_seen_running"] and done["progress"] == 1.0 and done["target"]["n_images"] == 100

        # the row lives in PostgreSQL and was run by the Celery worker process, not the API process
        with sqlalchemy.create_engine(stack.database_url).connect() as conn:
            worker, status, run = conn.execute(sqlalchemy.text("select worker, status, run from jobs where id = :i"), {"i": job_id}).one()
        assert status == "succeeded" and worker.split(":")[-1] != str(stack.api.pid)
        run = json.loads(run) if isinstance(run, str) else run  # the prepared run (migration 0005), every "auto" made concrete
        assert run == done["run"] and run["critic_init"] == "source" and "auto" not in run.values()
        assert stack.worker.poll() is None
        _worker_metrics_count(stack, done)

        # artifacts are in the S3 bucket, and the presigned URLs work
        keys = {o["Key"] for o in stack.s3().list_objects_v2(Bucket=stack.bucket, Prefix=f"jobs/{job_id}/")["Contents"]}
        assert {f"jobs/{job_id}/model.pt", f"jobs/{job_id}/samples.png", f"jobs/{job_id}/metrics.json"} <= keys
        assert [k for k in keys if "/ckpt-" in k] == [f"jobs/{job_id}/ckpt-8.pt"]  # only the newest checkpoint kept
        arts = {a["name"]: a for a in c.get(f"/jobs/{job_id}/artifacts").json()}
        assert "X-Amz-Signature" in arts["samples.png"]["url"] or "Signature" in arts["samples.png"]["url"]
        png = httpx.get(arts["samples.png"]["url"], timeout=30)  # presigned: no API key needed
        assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).size == (8 * 30 + 2, 8 * 30 + 2)

        s = c.get("/sample?n=16")
        assert s.status_code == 200 and s.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(s.content)).size == (4 * 30 + 2, 4 * 30 + 2)
        assert c.get(f"/jobs/{job_id}/sample?n=16").content == s.content
        assert s.headers["x-job-id"] == job_id
        # a second job: the Celery worker's job-succeeded message (Redis pub/sub) moves /sample to it at once
        r2 = c.post("/jobs", files={"images": ("nines.zip", _nines_zip(tmp_path), "application/zip")},
                    data={"spec": json.dumps({**SPEC, "seed": 1})})
        second = _wait(c, r2.json()["id"])
        assert second["status"] == "succeeded", second
        assert c.get("/sample?n=4").headers["x-job-id"] == second["id"]
        assert os.path.exists(stack.tmp / "api.log")
        _oip_matches_rest(stack, c, job_id)


def _worker_metrics_count(stack: Stack, done: dict) -> None:
    """The Celery worker serves its own metrics (worker/metrics.py): the job it ran, its steps, idle again."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{stack.env['MINEGAN_WORKER_METRICS_PORT']}/metrics", timeout=10).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("minegan_worker_jobs_total", (("method", SPEC["method"]), ("status", "succeeded")))] >= 1
    assert samples[("minegan_worker_job_run_seconds_count", (("method", SPEC["method"]),))] >= 1
    steps = sum(v for (name, _), v in samples.items() if name == "minegan_worker_steps_total")
    assert steps >= SPEC["mining_steps"] + SPEC["finetune_steps"], samples  # at least this job's steps
    assert samples[("minegan_worker_busy", ())] == 0 and samples[("minegan_worker_last_progress_timestamp_seconds", ())] > 0


def _oip_matches_rest(stack: Stack, c: httpx.Client, job_id: str) -> None:
    """Triton's clients (gRPC and /v2) on the real stack: the zip's pixels, for the owner only."""
    import zipfile

    import numpy as np
    import tritonclient.grpc as tg
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    with zipfile.ZipFile(io.BytesIO(c.get(f"/jobs/{job_id}/sample", params={"n": 6, "seed": 9, "format": "zip"}).content)) as zf:
        want = np.stack([np.asarray(Image.open(zf.open(n))) for n in sorted(zf.namelist())])[..., None]
    g = tg.InferenceServerClient(stack.grpc)
    assert g.is_server_ready()
    n, seed = tg.InferInput("n", [1], "INT32"), tg.InferInput("seed", [1], "INT64")
    n.set_data_from_numpy(np.array([6], np.int32))
    seed.set_data_from_numpy(np.array([9], np.int64))
    alice, bob = ({"authorization": f"Bearer {stack.keys[t]}"} for t in ("alice", "bob"))
    assert np.array_equal(g.infer(job_id, [n, seed], headers=alice).as_numpy("images"), want)
    with pytest.raises(InferenceServerException, match="NOT_FOUND"):
        g.infer(job_id, [n, seed], headers=bob)
    h = th.InferenceServerClient(stack.url.removeprefix("http://"))
    hn, hs = th.InferInput("n", [1], "INT32"), th.InferInput("seed", [1], "INT64")
    hn.set_data_from_numpy(np.array([6], np.int32))
    hs.set_data_from_numpy(np.array([9], np.int64))
    assert np.array_equal(h.infer(job_id, [hn, hs], headers={"Authorization": alice["authorization"]}).as_numpy("images"), want)


def test_several_sources_and_a_fused_model_through_the_worker(stack: Stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Issue 4 on the real stack: a two-source minegan job reports its selector from the worker process; a
    fusion job's fused generator lands in S3, is registered as a source and is mined by the worker again."""
    from core.data import write_mnist_zip

    twos_eights = write_mnist_zip(tmp_path / "28.zip", [2, 8], 100, seed=0, weights=[0.3, 0.7]).read_bytes()
    tiny = {"mining_steps": 3, "finetune_steps": 0, "batch_size": 16, "seed": 0}
    with stack.client() as c:
        def run(spec: dict) -> dict:
            r = c.post("/jobs", files={"images": ("28.zip", twos_eights, "application/zip")}, data={"spec": json.dumps(spec)})
            assert r.status_code == 202, r.text
            done = _wait(c, r.json()["id"])
            assert done["status"] == "succeeded", (done, (stack.tmp / "worker.log").read_text()[-3000:])
            return done

        multi = run({**tiny, "sources": ["mnist-0-4", "mnist-5-9"], "method": "minegan", "options": {"n_critic": 1}})
        assert set(multi["selector"]) == {"mnist-0-4", "mnist-5-9"} and abs(sum(multi["selector"].values()) - 1) < 1e-6
        assert multi["metrics"]["selector_pi"] == multi["selector"]  # metrics.json written by the worker, read from S3

        fused = run({**tiny, "sources": ["mnist-0-4", "mnist-5-9"], "method": "fusion",
                     "options": {"n_critic": 1, "fusion_steps": 2}})
        assert fused["step"] == 2 + 3
        assert f"jobs/{fused['id']}/fused.pt" in {o["Key"] for o in stack.s3().list_objects_v2(
            Bucket=stack.bucket, Prefix=f"jobs/{fused['id']}/")["Contents"]}
        r = c.post("/models", json={"id": "fused-0-9", "job_id": fused["id"]})
        assert r.status_code == 201, r.text
        assert r.json()["origin"] == f"job {fused['id']}"
        stored = {o["Key"] for o in stack.s3().list_objects_v2(Bucket=stack.bucket, Prefix="models/alice/")["Contents"]}
        assert stored == {"models/alice/fused-0-9.pt", "models/alice/fused-0-9.json"}

        # the worker process fetches the registered source from S3 and mines it like a built-in one
        mined = run({**tiny, "sources": ["fused-0-9"], "method": "minegan"})
        assert mined["spec"]["sources"] == ["fused-0-9"]
        s = c.get(f"/jobs/{mined['id']}/sample?n=4")
        assert s.status_code == 200 and s.headers["content-type"] == "image/png"
        # the source is the tenant's own: another tenant cannot name it
        with stack.client("bob") as b:
            r = b.post("/jobs", files={"images": ("28.zip", twos_eights, "application/zip")},
                       data={"spec": json.dumps({**tiny, "sources": ["fused-0-9"], "method": "minegan"})})
            assert r.status_code == 422 and "fused-0-9" in r.json()["error"]["message"], r.text
