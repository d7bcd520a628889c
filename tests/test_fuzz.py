"""A fuzzer beyond schemathesis's defaults (issue 35), over REST, ``/v2`` and gRPC of a real ``minegan serve`` with API
keys and gRPC on. Hypothesis draws what a schema-driven tester does not: JSON nested hundreds of thousands deep, integers
far past 64 bits, NaN and infinities, strings with NUL and lone surrogates, bodies in UTF-16 or not text at all, header
values and query parameters of any kind, tensors whose shapes and sizes disagree. The only rule: no 5xx (REST), no
UNKNOWN or INTERNAL (gRPC), every REST error a JSON body, and the server still answers afterwards.

``MINEGAN_FUZZ_EXAMPLES`` sets the examples per surface (default 40: a quick pass in ``make test``; a deeper run,
e.g. 2000, is a command away: ``MINEGAN_FUZZ_EXAMPLES=2000 .venv/bin/python -m pytest tests/test_fuzz.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.options import api_options
from tests.helpers import TINY_SPEC, embedded_server, free_port, target_zip_bytes, wait_for

EXAMPLES = int(os.environ.get("MINEGAN_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

ints = st.one_of(st.integers(), st.integers(min_value=-(2**200), max_value=2**200), st.sampled_from(
    [0, -1, 2**31, 2**31 - 1, 2**32, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**23]))
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e308, -1e308, 5e-324, 1e30]))
texts = st.one_of(st.text(), st.text(alphabet=st.characters(codec="utf-8")), st.sampled_from(
    ["\x00", "\ud800", "²", "٣", "１２", "1e999", "NaN", "-0", "0x10", " 7 ", "../../etc/passwd", "%00", "a" * 5000]))
scalars = st.one_of(st.none(), st.booleans(), ints, floats, texts)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                             st.dictionaries(texts, inner, max_size=5)), max_leaves=30)
deep = st.integers(1, 300_000).flatmap(lambda d: st.sampled_from(["[" * d, "[" * d + "]" * d, '{"a":' * d + "1" + "}" * d]))
OPTION_NAMES = [f.name for f in api_options("options")] + ["nope"]
specs = st.fixed_dictionaries({"sources": st.one_of(st.just(["tiny-src"]), json_values)}, optional={
    "method": st.one_of(st.sampled_from(["mine", "minegan++", "fusion"]), json_values),
    "mining_steps": st.one_of(ints, json_values), "finetune_steps": ints, "batch_size": ints, "seed": ints,
    "options": st.one_of(st.dictionaries(st.sampled_from(OPTION_NAMES), st.one_of(scalars, json_values), max_size=6), json_values),
    "webhook": st.one_of(texts, st.sampled_from(["https://127.0.0.1:99999/", "https://[64:ff9b::7f00:1]/", "http://x"])),
    "webhook_events": json_values})


def _wire(text: str) -> str:
    """Any text as something a client can send (a lone surrogate becomes the bytes it would be)."""
    return text.encode("utf-8", "surrogatepass").decode("latin-1") if any("\ud800" <= ch <= "\udfff" for ch in text) else text


def _encode(text: str, how: str) -> bytes:
    return text.encode("utf-16") if how == "utf-16" else text.encode("utf-8", "surrogatepass") if how == "raw" else text.encode()


bodies = st.one_of(specs.map(json.dumps), json_values.map(lambda v: json.dumps(v, allow_nan=True)), deep,
                   st.binary(max_size=300).map(lambda b: b.decode("latin-1"))).flatmap(
    lambda t: st.tuples(st.just(t), st.sampled_from(["utf-8", "utf-16", "raw"])))


@pytest.fixture(scope="module")
def server() -> Iterator[dict[str, Any]]:
    """An embedded server with keys required and gRPC on; the tenant owns a finished job."""
    with tempfile.TemporaryDirectory() as tmp:
        grpc_port = free_port()
        env = {"MINEGAN_AUTH": "required", "MINEGAN_GRPC_PORT": str(grpc_port), "MINEGAN_MAX_UPLOAD_BYTES": "200000"}
        with embedded_server(Path(tmp), **env) as (url, full_env):
            out = subprocess.run([str(Path(sys.executable).parent / "minegan"), "keys", "create", "--tenant", "fuzz"], env=full_env,
                                 capture_output=True, text=True, check=True)
            key = out.stdout.strip().splitlines()[-1]
            c = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120)
            done = c.post("/jobs", files={"images": ("t.zip", target_zip_bytes(), "application/zip")},
                          data={"spec": json.dumps(TINY_SPEC)}).json()
            assert wait_for(c, done["id"])["status"] == "succeeded"
            yield {"c": c, "url": url, "key": key, "job": done["id"], "grpc": f"127.0.0.1:{grpc_port}"}
            assert httpx.get(f"{url}/healthz").status_code == 200  # still serving after everything


def _ok(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.request.method, r.request.url, r.status_code, r.text[:500])
    if r.status_code >= 400:
        body = r.json()  # every error is JSON
        assert "error" in body, body


@FUZZ
@given(body=bodies, images=st.one_of(st.just(target_zip_bytes()), st.binary(max_size=2000)))
def test_post_jobs(server: dict[str, Any], body: tuple[str, str], images: bytes) -> None:
    text, how = body
    _ok(server["c"].post("/jobs", files={"images": ("t.zip", images, "application/zip"),
                                         "spec": (None, _encode(text, how), "application/json")}))


@FUZZ
@given(config=bodies, family=st.one_of(st.sampled_from(["onnx", "pt2", "dcgan64", "minegan"]), texts))
def test_post_models(server: dict[str, Any], config: tuple[str, str], family: str) -> None:
    text, how = config
    _ok(server["c"].post("/models", files={"generator": ("g.onnx", b"\x08\x01" * 50, "application/octet-stream"),
                                           "config": (None, _encode(text, how), "application/json")},
                         data={"id": "fuzz", "family": family.encode("utf-8", "surrogatepass")}))


queries = st.dictionaries(st.sampled_from(["n", "seed", "format", "limit", "offset", "status", "after", "class", "exp", "sig"]),
                          st.one_of(ints.map(str), floats.map(str), texts), max_size=4)


@FUZZ
@given(path=st.sampled_from(["/jobs/{job}/sample", "/sample", "/jobs", "/jobs/{job}", "/jobs/{job}/events", "/jobs/{job}/previews",
                             "/jobs/{job}/artifacts", "/jobs/{job}/export", "/jobs/{job}/target.png", "/models", "/v2/models/{job}",
                             "/v2/models/{job}/ready", "/blobs/jobs/{job}/model.pt", "/jobs/{other}", "/jobs/{other}/sample"]),
       params=queries, last_event=st.one_of(st.none(), ints.map(str), texts), other=texts)
def test_get_with_any_query(server: dict[str, Any], path: str, params: dict[str, str], last_event: str | None, other: str) -> None:
    headers = {}
    if last_event is not None and last_event.isascii() and last_event.isprintable() and last_event.strip() == last_event != "":
        headers["Last-Event-ID"] = last_event
    other = urllib.parse.quote(_wire(other), safe="") or "x"
    url = path.format(job=server["job"], other=other)
    with server["c"].stream("GET", url, params={k: _wire(v) for k, v in params.items()}, headers=headers, timeout=60) as r:
        if r.headers.get("content-type", "").startswith("text/event-stream"):  # a live stream: its start is enough
            assert r.status_code == 200
            return
        r.read()
    _ok(r)


datatypes = st.one_of(st.sampled_from(["INT32", "INT64", "FP32", "BYTES", "BOOL", "UINT8", "FP16"]), texts)
shapes = st.lists(ints, max_size=4)
tensors = st.fixed_dictionaries({"name": st.one_of(st.sampled_from(["n", "seed", "class"]), texts), "datatype": datatypes,
                                 "shape": st.one_of(shapes, json_values)},
                                optional={"data": json_values, "parameters": json_values})


@FUZZ
@given(inputs=st.one_of(st.lists(tensors, max_size=3), json_values), outputs=json_values, raw=bodies,
       binary=st.one_of(st.none(), ints.map(str), texts))
def test_v2_infer(server: dict[str, Any], inputs: Any, outputs: Any, raw: tuple[str, str], binary: str | None) -> None:
    c, url = server["c"], f"/v2/models/{server['job']}/infer"
    body = json.dumps({"inputs": inputs, "outputs": outputs}, allow_nan=True)
    r = c.post(url, content=body)
    assert r.status_code < 500 and (r.status_code < 400 or isinstance(r.json()["error"], str)), (body[:2000], r.text[:300])
    r = c.post(url, content=_encode(*raw))
    assert r.status_code < 500, (raw[0][:2000], r.text[:300])
    if binary is not None and binary.isascii() and binary.isprintable() and binary.strip() == binary != "":
        r = c.post(url, content=b'{"inputs":[]}' + b"\x00" * 64, headers={"Inference-Header-Content-Length": binary})
        assert r.status_code < 500, (binary, r.text[:300])


@FUZZ
@given(shape=shapes, datatype=datatypes, contents=st.binary(max_size=64), ints64=st.lists(ints, max_size=4),
       name=st.one_of(st.just("job"), texts), spec=bodies, job_id=texts)
def test_grpc(server: dict[str, Any], shape: list[int], datatype: str, contents: bytes, ints64: list[int], name: str,
              spec: tuple[str, str], job_id: str) -> None:
    import grpc

    # the Open Inference Protocol's messages as a third-party client has them (minegan_grpc's own inference_pb2 declares
    # the same protobuf package, and one process can load only one of the two)
    import tritonclient.grpc.service_pb2 as inference_pb2
    import tritonclient.grpc.service_pb2_grpc as inference_pb2_grpc

    from minegan_grpc import jobs_pb2, jobs_pb2_grpc

    meta = (("authorization", f"Bearer {server['key']}"),)
    bad = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}

    def call(fn: Any) -> None:
        try:
            fn()
        except grpc.RpcError as err:
            assert err.code() not in bad, (err.code(), err.details())

    def fits(v: int, bits: int) -> bool:
        return -(2 ** (bits - 1)) <= v < 2 ** (bits - 1)

    with grpc.insecure_channel(server["grpc"]) as ch:
        infer = inference_pb2_grpc.GRPCInferenceServiceStub(ch)
        model = server["job"] if name == "job" else _wire(name)
        job_id = _wire(job_id)
        t = inference_pb2.ModelInferRequest.InferInputTensor(name="seed", datatype=_wire(datatype), shape=[s for s in shape if fits(s, 64)])
        t.contents.int64_contents.extend([v for v in ints64 if fits(v, 64)])
        t.contents.int_contents.extend([v for v in ints64 if fits(v, 32)])
        req = inference_pb2.ModelInferRequest(model_name=model, inputs=[t], raw_input_contents=[contents] if contents else [])
        call(lambda: infer.ModelInfer(req, metadata=meta, timeout=60))
        call(lambda: infer.ModelMetadata(inference_pb2.ModelMetadataRequest(name=model), metadata=meta, timeout=30))
        jobs = jobs_pb2_grpc.JobsStub(ch)
        call(lambda: jobs.Get(jobs_pb2.GetJobRequest(id=job_id), metadata=meta, timeout=30))
        text = _wire(_encode(*spec).decode("utf-8", "replace"))
        parts = iter([jobs_pb2.SubmitRequest(spec_json=text), jobs_pb2.SubmitRequest(zip_chunk=target_zip_bytes())])
        call(lambda: jobs.Submit(parts, metadata=meta, timeout=60))
