"""The hostile-upload corpus (tests/hostile.py) against the service -> docs/hostile_uploads.md.

By default it runs an embedded app in-process (SQLite, local blobs) on a tiny source; with ``--url`` it
sends the corpus to a running server instead (e.g. the real stack), with ``--source``/``--api-key``.
The test suite checks that the table and the corpus agree (tests/api/test_hostile.py).

Usage: python benchmarks/hostile_uploads.py [--url http://127.0.0.1:8000 --source mnist-no-9 --api-key KEY]
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import hostile  # noqa: E402

LIMITS = hostile.Limits(max_upload_bytes=2 << 20, max_request_bytes=4 << 20, max_target_images=50, max_zip_entries=100)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="")
    ap.add_argument("--source", default="tiny-src")
    ap.add_argument("--api-key", default="")
    ap.add_argument("--out", default=str(ROOT / "docs" / "hostile_uploads.md"))
    a = ap.parse_args()
    command = "python benchmarks/hostile_uploads.py " + " ".join(shlex.quote(x) for x in sys.argv[1:] if x != a.api_key)
    spec = {"sources": [a.source], "method": "minegan++", "mining_steps": 3, "finetune_steps": 3, "batch_size": 8, "seed": 0,
            "options": {"n_critic": 1}}
    headers = {"Authorization": f"Bearer {a.api_key}"} if a.api_key else {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        if a.url:
            import httpx

            client = stack.enter_context(httpx.Client(base_url=a.url, timeout=120))
            where = f"a running server ({a.url})"
        else:
            from fastapi.testclient import TestClient

            from api.main import create_app
            from core import zoo
            from store.settings import Settings
            from tests.helpers import write_tiny_zoo

            write_tiny_zoo(Path(tmp) / "zoo")
            zoo.WEIGHTS_DIR = Path(tmp) / "zoo"
            settings = Settings(database_url=f"sqlite:///{tmp}/db.sqlite", storage_dir=f"{tmp}/blobs", work_dir=f"{tmp}/work",
                                **LIMITS.__dict__)
            client = stack.enter_context(TestClient(create_app(settings)))
            where = "the embedded app in-process"
        for case in hostile.corpus():
            r = hostile.send(client, case, spec, LIMITS, headers)
            hostile.check(case, r)
            body = r.json()
            if r.status_code == 202:
                conv = body["target"]["converted"]
                msg = "accepted; target report `converted`: " + ", ".join(f"{k} ({v})" for k, v in conv.items())
                client.post(f"/jobs/{body['id']}/cancel", headers=headers)
                code = "-"
            else:
                msg, code = body["error"]["message"].replace("|", "/"), f"`{body['error']['code']}`"
            rows.append(f"| {case.name} | {case.what} | {r.status_code} | {code} | {msg[:220]} |")
        model_rows = []
        for mcase in hostile.model_corpus():
            r = hostile.send_model(client, mcase, headers)
            hostile.check_model(mcase, r)
            err = r.json()["error"]
            model_rows.append(f"| {mcase.name} | {mcase.what} | {r.status_code} | `{err['code']}` | {err['message'].replace('|', '/')[:220]} |")
    request_rows = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:  # the same app, with API keys required
        from fastapi.testclient import TestClient

        from api.main import create_app
        from core import zoo
        from store import auth as keys_dao
        from store.settings import Settings
        from tests.helpers import write_tiny_zoo

        write_tiny_zoo(Path(tmp) / "zoo")
        zoo.WEIGHTS_DIR = Path(tmp) / "zoo"
        settings = Settings(database_url=f"sqlite:///{tmp}/db.sqlite", storage_dir=f"{tmp}/blobs", work_dir=f"{tmp}/work", auth="required",
                            auth_cache_s=0, **LIMITS.__dict__)
        client = stack.enter_context(TestClient(create_app(settings)))
        key = {"Authorization": f"Bearer {keys_dao.create_key(settings.database_url, 'alice', 'hostile')[0]}"}
        for rcase in hostile.request_corpus():
            r = rcase.send(client, key)
            hostile.check_request(rcase, r)
            err = r.json()["error"]
            code, msg = ("-", err) if isinstance(err, str) else (f"`{err['code']}`", err["message"])
            request_rows.append(f"| {rcase.name} | {rcase.what} | {r.status_code} | {code} | {msg.replace('|', '/')[:220]} |")
    lines = ["# Hostile and broken uploads", "",
             f"Every case of the corpus in `tests/hostile.py`, sent to `POST /jobs` on {where}. Command: `{command}`.",
             f"Limits used: upload {LIMITS.max_upload_bytes} B, request {LIMITS.max_request_bytes} B, "
             f"{LIMITS.max_target_images} images, {LIMITS.max_zip_entries} zip entries (service defaults: 50 MiB, 52 MiB, "
             "2000, 5000; decompressed 32 MiB per image and 256 MiB per zip, compression ratio 200:1, 4096x4096 pixels "
             "per image; all `MINEGAN_*` settings).",
             "`tests/api/test_hostile.py` (embedded) and `tests/integration/test_hardening.py` (PostgreSQL, Redis, Celery, "
             "SeaweedFS) assert these statuses and codes; after the corpus no job row, stored upload or temporary file exists "
             "for a refused case, and the server still runs jobs.", "",
             "| case | what is sent | status | error code | message (first 220 characters) |", "|---|---|---|---|---|", *rows,
             "", "## Model files", "",
             f"Every case of `model_corpus()` in `tests/hostile.py`, sent as the `generator` (and, for the critic cases, the "
             f"`critic`) of a `POST /models` upload on {where}. "
             "ONNX graphs are checked before conversion (no external data, declared sizes that match the bytes, the inputs of "
             "their role: z and, if declared, the class in its declared form for a generator, images of the generator's shape for "
             "a critic; an image-shaped output for a generator, one score per image for a critic; known standard operators) "
             "and then run once on two latents (two images for a critic); safetensors headers are checked "
             "against the file before a tensor is read; torch files load with `weights_only=True`. "
             "`tests/api/test_hostile_models.py` asserts these statuses and codes, that no model is stored and that no pickled "
             "code ran.", "",
             "| case | what is sent | status | error code | message (first 220 characters) |", "|---|---|---|---|---|", *model_rows,
             "", "## Pressure and malformed requests", "",
             "Every case of `request_corpus()` in `tests/hostile.py`, on the embedded app in-process with API keys required "
             "(`MINEGAN_AUTH=required`). `tests/api/test_hostile.py` asserts each status and code and that the app still "
             "answers after each. `/v2` answers with the Open Inference Protocol's error body, a string (error code `-`). "
             "Two more limits act below the app, in `minegan serve` (`tests/api/test_hardening_keys.py`): a request head "
             "over 64 KiB or 100 header fields gets 431 `headers_too_large`, and a body that has not arrived within "
             "`MINEGAN_BODY_TIMEOUT_S` (300 s) gets 408 `request_timeout`; both close the connection. A tenant with "
             "`MINEGAN_MAX_WAITING_CHECKS` (4) uploads already waiting for the checker gets 429 `too_many_uploads` "
             "(`tests/api/test_fair.py`).", "",
             "| case | what is sent | status | error code | message (first 220 characters) |", "|---|---|---|---|---|",
             *request_rows]
    Path(a.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
