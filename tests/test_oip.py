"""gRPC and /v2 against a real ``minegan serve --grpc-port`` with API keys. The Open Inference Protocol (KServe v2),
judged by a third-party client: Triton's ``tritonclient`` (gRPC and REST) gets the very pixels and PNG files of
``GET /jobs/{id}/sample?format=zip`` with the same seed. ``minegan.v1.Jobs``: a job submitted with its zip streamed
in chunks, watched through every phase to its end, with REST's checks, limits and tenant isolation."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.helpers import TINY_SPEC, embedded_server, free_port, target_zip_bytes, wait_for

ROOT = Path(__file__).resolve().parents[1]


def _key(env: dict[str, str], tenant: str) -> str:
    out = subprocess.run([str(Path(sys.executable).parent / "minegan"), "keys", "create", "--tenant", tenant], env=env,
                         capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def server() -> Iterator[dict[str, str]]:
    """An embedded server with keys required and gRPC on; alice owns a finished job and a job still running."""
    with tempfile.TemporaryDirectory() as tmp:
        grpc_port = free_port()
        env = {"MINEGAN_AUTH": "required", "MINEGAN_GRPC_PORT": str(grpc_port), "MINEGAN_AUTH_CACHE_S": "0",
               "MINEGAN_MAX_UPLOAD_BYTES": "200000",
               "MINEGAN_RATE_LIMIT": "",  # the batching test's 8 clients of one tenant send more than the default rate
               "MINEGAN_SAMPLE_BATCH_MEASURE": "false"}  # batch up to the cap, whatever the timings: the batching test relies on it
        with embedded_server(Path(tmp), **env) as (url, full_env):
            alice, bob = _key(full_env, "alice"), _key(full_env, "bob")
            h = {"Authorization": f"Bearer {alice}"}
            c = httpx.Client(base_url=url, headers=h, timeout=60)
            files = {"images": ("t.zip", target_zip_bytes(), "application/zip")}
            done = c.post("/jobs", files=files, data={"spec": json.dumps(TINY_SPEC)}).json()
            assert wait_for(c, done["id"])["status"] == "succeeded"
            busy = c.post("/jobs", files=files, data={"spec": json.dumps({**TINY_SPEC, "mining_steps": 100000})}).json()
            yield {"url": url, "grpc": f"127.0.0.1:{grpc_port}", "alice": alice, "bob": bob, "job": done["id"], "busy": busy["id"]}
            c.post(f"/jobs/{busy['id']}/cancel")


def _zip_pixels(url: str, key: str, job: str, n: int, seed: int) -> tuple[np.ndarray, list[bytes]]:
    r = httpx.get(f"{url}/jobs/{job}/sample", params={"n": n, "seed": seed, "format": "zip"}, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        pngs = [zf.read(name) for name in sorted(zf.namelist())]
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(p))) for p in pngs])
    return (pixels[..., None] if pixels.ndim == 3 else pixels), pngs


def test_tritonclient_grpc_samples_a_finished_job(server: dict[str, str]) -> None:
    import grpc
    import tritonclient.grpc as tg
    from tritonclient.utils import InferenceServerException

    c = tg.InferenceServerClient(server["grpc"])
    auth = {"authorization": f"Bearer {server['alice']}"}
    assert c.is_server_live() and c.is_server_ready()
    assert c.get_server_metadata().name == "minegan"
    meta = c.get_model_metadata(server["job"], headers=auth)
    assert [o.name for o in meta.outputs] == ["images", "png"] and list(meta.outputs[0].shape) == [-1, 28, 28, 1]
    assert c.is_model_ready(server["job"], headers=auth) and not c.is_model_ready(server["busy"], headers=auth)
    n = tg.InferInput("n", [1], "INT32")
    n.set_data_from_numpy(np.array([5], np.int32))
    seed = tg.InferInput("seed", [1], "INT64")
    seed.set_data_from_numpy(np.array([3], np.int64))
    res = c.infer(server["job"], [n, seed], headers=auth)
    want, pngs = _zip_pixels(server["url"], server["alice"], server["job"], 5, 3)
    assert res.as_numpy("images").shape == (5, 28, 28, 1) and np.array_equal(res.as_numpy("images"), want)
    assert list(res.as_numpy("png")) == pngs  # the same PNG files as the zip
    latest = c.infer("latest", [n, seed], headers=auth)
    assert np.array_equal(latest.as_numpy("images"), want) and latest.get_response().model_name == server["job"]

    def code(model: str, headers: dict[str, str] | None, n_value: int = 5) -> grpc.StatusCode:
        n.set_data_from_numpy(np.array([n_value], np.int32))
        with pytest.raises(InferenceServerException) as err:
            c.infer(model, [n, seed], headers=headers)
        return str(err.value.status())

    assert code(server["job"], {"authorization": f"Bearer {server['bob']}"}) == "StatusCode.NOT_FOUND"  # another tenant's job
    assert code(server["job"], None) == "StatusCode.UNAUTHENTICATED"
    assert code(server["busy"], auth) == "StatusCode.FAILED_PRECONDITION"
    assert code(server["job"], auth, 0) == "StatusCode.INVALID_ARGUMENT"
    assert code("no-such-job", auth) == "StatusCode.NOT_FOUND"


def _batch_counts(url: str, key: str) -> tuple[float, float]:
    """(batched forward passes, requests they served) from the server's /metrics (a key is required there too)."""
    from prometheus_client.parser import text_string_to_metric_families

    fams = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {key}"}).text)}
    values = {s.name: s.value for s in fams["minegan_sample_batch_requests"].samples}
    return values["minegan_sample_batch_requests_count"], values["minegan_sample_batch_requests_sum"]


def test_concurrent_requests_over_rest_and_grpc_share_forward_passes_and_get_the_bytes_they_get_alone(server: dict[str, str]) -> None:
    """Dynamic batching (api/batching.py): 8 clients at once, REST and gRPC mixed, n=16 with their own seeds. Every
    answer is byte for byte the answer to the same request sent alone, and some forward passes served several."""
    import threading

    import tritonclient.grpc as tg

    url, key, job = server["url"], server["alice"], server["job"]
    auth = {"Authorization": f"Bearer {key}"}
    alone = {s: httpx.get(f"{url}/jobs/{job}/sample", params={"n": 16, "seed": s, "format": "zip"}, headers=auth).content
             for s in range(24)}
    alone_pixels = {s: _zip_pixels(url, key, job, 16, s)[0] for s in range(24)}
    got: dict[tuple[int, int], object] = {}

    def rest(i: int) -> None:
        with httpx.Client(base_url=url, headers=auth, timeout=60) as c:
            for s in range(24):
                got[(i, s)] = c.get(f"/jobs/{job}/sample", params={"n": 16, "seed": s, "format": "zip"}).content

    def grpc_client(i: int) -> None:
        c = tg.InferenceServerClient(server["grpc"])
        for s in range(24):
            n, seed = tg.InferInput("n", [1], "INT32"), tg.InferInput("seed", [1], "INT64")
            n.set_data_from_numpy(np.array([16], np.int32))
            seed.set_data_from_numpy(np.array([s], np.int64))
            got[(i, s)] = c.infer(job, [n, seed], headers={"authorization": f"Bearer {key}"}).as_numpy("images")

    for _attempt in range(5):  # concurrency is the OS's to schedule: until some requests did overlap (one round, in practice)
        before = _batch_counts(url, key)
        threads = [threading.Thread(target=rest if i < 6 else grpc_client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for (i, s), answer in got.items():
            if i < 6:
                assert answer == alone[s], (i, s)
            else:
                assert np.array_equal(answer, alone_pixels[s]), (i, s)  # type: ignore[arg-type]
        after = _batch_counts(url, key)
        passes, served = after[0] - before[0], after[1] - before[1]
        assert served == 8 * 24  # every request went through the batcher
        if passes < served:
            break
    assert passes < served, "no two concurrent requests ever shared a forward pass"


def test_grpc_health_and_reflection(server: dict[str, str]) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(server["grpc"]) as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"))
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        listed = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in listed for s in r.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_http_samples_a_finished_job_over_v2(server: dict[str, str], binary: bool) -> None:
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    c = th.InferenceServerClient(server["url"].removeprefix("http://"))
    auth = {"Authorization": f"Bearer {server['alice']}"}
    assert c.is_server_live() and c.is_server_ready()
    assert c.get_model_metadata(server["job"], headers=auth)["outputs"][0]["shape"] == [-1, 28, 28, 1]
    assert c.is_model_ready(server["job"], headers=auth)
    n = th.InferInput("n", [1], "INT32")
    n.set_data_from_numpy(np.array([4], np.int32), binary_data=binary)
    seed = th.InferInput("seed", [1], "INT64")
    seed.set_data_from_numpy(np.array([7], np.int64), binary_data=binary)
    outs = [th.InferRequestedOutput("images", binary_data=binary), th.InferRequestedOutput("png")]
    res = c.infer(server["job"], [n, seed], outputs=outs, headers=auth)
    want, pngs = _zip_pixels(server["url"], server["alice"], server["job"], 4, 7)
    assert np.array_equal(res.as_numpy("images"), want) and list(res.as_numpy("png")) == pngs
    with pytest.raises(InferenceServerException, match="no job"):
        c.infer(server["job"], [n, seed], headers={"Authorization": f"Bearer {server['bob']}"})


def test_the_proto_matches_the_protocol_and_the_generated_code_is_current(tmp_path: Path) -> None:
    """Our inference.proto against tritonclient's own description of the protocol (field names, numbers, types),
    each read in its own process (both define the package ``inference``); and scripts/gen_proto.sh reproduces
    minegan_grpc/."""
    dump = textwrap.dedent("""
        import json, sys
        mod = __import__(sys.argv[1], fromlist=["x"])
        def fields(d, prefix=""):
            out = {}
            for f in d.fields:
                out[prefix + d.name + "." + f.name] = [f.number, f.type, f.is_repeated]
            for n in d.nested_types:
                if not n.GetOptions().map_entry:
                    out.update(fields(n, prefix + d.name + "."))
            return out
        svc = mod.DESCRIPTOR.services_by_name["GRPCInferenceService"]
        msgs = {m.input_type.name for m in svc.methods} | {m.output_type.name for m in svc.methods}
        out = {}
        for name in sorted(msgs):
            out.update(fields(mod.DESCRIPTOR.message_types_by_name[name]))
        print(json.dumps({"fields": out, "methods": sorted(m.name for m in svc.methods), "package": mod.DESCRIPTOR.package}))
    """)
    ours = json.loads(subprocess.run([sys.executable, "-c", dump, "minegan_grpc.inference_pb2"], cwd=ROOT, capture_output=True,
                                     text=True, check=True).stdout)
    theirs = json.loads(subprocess.run([sys.executable, "-c", dump, "tritonclient.grpc.service_pb2"], cwd=ROOT, capture_output=True,
                                       text=True, check=True).stdout)
    assert ours["package"] == theirs["package"] == "inference"
    assert set(ours["methods"]) <= set(theirs["methods"])
    assert {k: v for k, v in theirs["fields"].items() if k.split(".")[0] in {m.split(".")[0] for m in ours["fields"]}} == ours["fields"]
    gen = tmp_path / "gen"
    gen.mkdir()
    protos = sorted(str(p) for p in (ROOT / "proto" / "minegan_grpc").glob("*.proto"))
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", str(ROOT / "proto"), f"--python_out={gen}", f"--grpc_python_out={gen}",
                    f"--pyi_out={gen}", *protos], check=True, env={**os.environ})
    for f in (f"{Path(p).stem}{suffix}" for p in protos for suffix in ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")):
        assert (gen / "minegan_grpc" / f).read_text() == (ROOT / "minegan_grpc" / f).read_text(), f"{f} is stale: run scripts/gen_proto.sh"


def _jobs_stub(server: dict[str, str]):  # type: ignore[no-untyped-def]
    import grpc

    from minegan_grpc import jobs_pb2_grpc

    return grpc.insecure_channel(server["grpc"]), jobs_pb2_grpc.JobsStub


def test_jobs_submit_streams_the_zip_and_watch_sees_every_phase(server: dict[str, str]) -> None:
    import grpc

    from minegan_grpc import jobs_pb2

    channel, Stub = _jobs_stub(server)
    jobs = Stub(channel)
    alice = (("authorization", f"Bearer {server['alice']}"),)
    busy = jobs.Cancel(jobs_pb2.CancelJobRequest(id=server["busy"]), metadata=alice)  # frees the embedded worker
    assert busy.id == server["busy"] and json.loads(busy.json)["status"] in ("running", "canceled")
    data = target_zip_bytes()

    def parts(spec: dict, payload: bytes, size: int = 1500):  # type: ignore[no-untyped-def,type-arg]
        yield jobs_pb2.SubmitRequest(spec_json=json.dumps(spec))
        for i in range(0, len(payload), size):
            yield jobs_pb2.SubmitRequest(zip_chunk=payload[i : i + size])

    job = jobs.Submit(parts(TINY_SPEC, data), metadata=alice)
    assert job.status == "queued" and job.total_steps == 6 and json.loads(job.json)["target"]["n_images"] == 16
    events = list(jobs.Watch(jobs_pb2.WatchRequest(id=job.id), metadata=alice, timeout=120))
    kinds = [e.kind for e in events]
    assert kinds[-1] == "completed" and json.loads(events[-1].data_json)["status"] == "succeeded"
    phases = [json.loads(e.data_json)["phase"] for e in events if e.kind == "progress"]
    assert {"select", "mine", "finetune"} <= set(phases) and phases.index("mine") < phases.index("finetune")
    assert [json.loads(e.data_json)["status"] for e in events if e.kind == "status"] == ["queued", "running", "succeeded"]
    later = list(jobs.Watch(jobs_pb2.WatchRequest(id=job.id, after_event_id=events[2].id), metadata=alice, timeout=30))
    assert [e.id for e in later] == [e.id for e in events[3:]]  # a reconnecting watcher resumes after the last id it saw
    assert jobs.Get(jobs_pb2.GetJobRequest(id=job.id), metadata=alice).status == "succeeded"

    def code(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
        with pytest.raises(grpc.RpcError) as err:
            call()
        return err.value.code()

    bob = (("authorization", f"Bearer {server['bob']}"),)
    assert code(lambda: jobs.Get(jobs_pb2.GetJobRequest(id=job.id), metadata=bob)) == grpc.StatusCode.NOT_FOUND
    assert code(lambda: list(jobs.Watch(jobs_pb2.WatchRequest(id=job.id), metadata=bob))) == grpc.StatusCode.NOT_FOUND
    assert code(lambda: jobs.Cancel(jobs_pb2.CancelJobRequest(id="nope"), metadata=alice)) == grpc.StatusCode.NOT_FOUND
    assert code(lambda: jobs.Get(jobs_pb2.GetJobRequest(id=job.id))) == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as bad:
        jobs.Submit(parts({**TINY_SPEC, "method": "magic"}, data), metadata=alice)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "method" in bad.value.details()
    with pytest.raises(grpc.RpcError) as big:
        jobs.Submit(parts(TINY_SPEC, data + b"\0" * 250_000, size=50_000), metadata=alice)
    assert big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than 200000 bytes" in big.value.details()
    channel.close()
