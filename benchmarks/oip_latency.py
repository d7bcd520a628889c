"""gRPC ModelInfer vs REST /sample vs in-process, n=16 -> docs/benchmarks.md, section "oip_latency" (issue 19).

Starts the embedded server with gRPC on (``minegan serve --grpc-port``), runs one short job on ``mnist-no-9``, then
times, interleaved in blocks in one process run, the median latency of
  * ``GET /jobs/{id}/sample?n=16`` (a PNG grid; httpx keep-alive client);
  * gRPC ``ModelInfer`` n=16 through ``tritonclient.grpc`` (Triton's client), output ``images`` (UINT8) only, and
    ``images`` + ``png`` (16 PNG files);
  * REST ``POST /v2/models/{id}/infer`` through ``tritonclient.http``, output ``images`` (binary);
  * the same generation in-process: ``model.sample(16, seed)`` + conversion to uint8 (no transport).

Usage: python benchmarks/oip_latency.py [--reps 200 --block 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._doc import update_section  # noqa: E402
from core.data import write_mnist_zip  # noqa: E402
from core.images import to_uint8  # noqa: E402
from core.model_file import load_model  # noqa: E402
from tests.helpers import free_port, wait_ready  # noqa: E402

BIN = Path(sys.executable).parent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--block", type=int, default=10)
    ap.add_argument("--n", type=int, default=16)
    a = ap.parse_args()
    command = "python benchmarks/oip_latency.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    import tritonclient.grpc as tg
    import tritonclient.http as th

    tmp = Path(tempfile.mkdtemp(prefix="minegan-oip-"))
    port, grpc_port = free_port(), free_port()
    env = {**os.environ, "MINEGAN_DATABASE_URL": f"sqlite:///{tmp}/db.sqlite", "MINEGAN_STORAGE_DIR": str(tmp / "blobs"),
           "MINEGAN_WORK_DIR": str(tmp / "work"), "MINEGAN_GRPC_PORT": str(grpc_port)}
    env.pop("MINEGAN_BROKER_URL", None)
    server = subprocess.Popen([str(BIN / "minegan"), "serve", "--port", str(port)], env=env, stdout=open(tmp / "server.log", "wb"),
                              stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, server, tmp / "server.log", timeout=120)
        c = httpx.Client(base_url=url, timeout=120)
        spec = {"sources": ["mnist-no-9"], "method": "mine", "mining_steps": 10, "finetune_steps": 0, "batch_size": 32}
        zip_bytes = write_mnist_zip(tmp / "nines.zip", [9], 100, seed=0).read_bytes()
        job = c.post("/jobs", files={"images": ("t.zip", zip_bytes, "application/zip")}, data={"spec": json.dumps(spec)}).json()
        while (j := c.get(f"/jobs/{job['id']}").json())["status"] not in ("succeeded", "failed", "canceled"):
            time.sleep(0.2)
        assert j["status"] == "succeeded", j
        model, _ = load_model((tmp / "blobs" / "jobs" / job["id"] / "model.pt").read_bytes())
        g = tg.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        h = th.InferenceServerClient(f"127.0.0.1:{port}")

        def grpc_call(outputs: list[str]) -> Callable[[], object]:
            n = tg.InferInput("n", [1], "INT32")
            n.set_data_from_numpy(np.array([a.n], np.int32))
            outs = [tg.InferRequestedOutput(o) for o in outputs]
            return lambda: g.infer(job["id"], [n], outputs=outs).as_numpy("images")

        n_http = th.InferInput("n", [1], "INT32")
        n_http.set_data_from_numpy(np.array([a.n], np.int32))
        out_http = [th.InferRequestedOutput("images", binary_data=True)]
        variants: dict[str, Callable[[], object]] = {
            "in-process (sample + uint8)": lambda: to_uint8(model.sample(a.n, seed=0)),
            "REST GET /jobs/{id}/sample (PNG grid)": lambda: c.get(f"/jobs/{job['id']}/sample", params={"n": a.n}).content,
            "gRPC ModelInfer (images)": grpc_call(["images"]),
            "gRPC ModelInfer (images + png)": grpc_call(["images", "png"]),
            "REST /v2 infer via tritonclient.http (images, binary)": lambda: h.infer(job["id"], [n_http], outputs=out_http).as_numpy("images"),
        }
        times: dict[str, list[float]] = {k: [] for k in variants}
        for fn in variants.values():  # warm up: model cache, connections
            for _ in range(5):
                fn()
        for _ in range(a.reps // a.block):
            for name, fn in variants.items():
                for _ in range(a.block):
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
    finally:
        server.terminate()
        server.wait(20)
    base = statistics.median(times["in-process (sample + uint8)"])
    rows = [f"| {k} | {1000 * statistics.median(v):.2f} ms | {1000 * sorted(v)[int(0.9 * len(v))]:.2f} ms | "
            f"{statistics.median(v) / base:.2f}x |" for k, v in times.items()]
    text = "\n".join([
        f"## gRPC ModelInfer vs REST sampling vs in-process, n={a.n} (issue 19)", "",
        f"Command: `{command}` (2-core CPU; one embedded server with `--grpc-port`; {a.reps} calls per row, interleaved in blocks "
        f"of {a.block}). Model: a `mine` job on `mnist-no-9` (28x28). Clients: httpx (REST), Triton's `tritonclient.grpc` and "
        "`tritonclient.http` (Open Inference Protocol). The server samples on its event-loop thread for every protocol.", "",
        "| path | median | p90 | vs in-process |", "|---|---|---|---|", *rows, "",
    ])
    update_section("oip_latency", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
