"""Multipart uploads parsed in large pieces, files in memory (api/uploads.py, UploadRequest)."""

from __future__ import annotations

import asyncio
import os

from starlette.requests import Request

from api.uploads import PIECE, UploadRequest, _pieces
from tests.helpers import app_client

BOUNDARY = b"----test-boundary-7"


def _multipart(spec: bytes, payload: bytes) -> bytes:
    return (b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="spec"\r\n\r\n' + spec + b"\r\n--" + BOUNDARY +
            b'\r\nContent-Disposition: form-data; name="images"; filename="t.zip"\r\nContent-Type: application/zip\r\n\r\n' +
            payload + b"\r\n--" + BOUNDARY + b"--\r\n")


def _parse(cls: type[Request], body: bytes, chunk: int = 65536) -> dict[str, object]:
    """The form as ``cls`` parses ``body`` arriving in ``chunk``-byte messages: {name: str or (filename, type, bytes,
    in memory)}."""
    chunks = [body[i:i + chunk] for i in range(0, len(body), chunk)]
    scope = {"type": "http", "method": "POST", "path": "/jobs", "query_string": b"",
             "headers": [(b"content-type", b"multipart/form-data; boundary=" + BOUNDARY)]}

    async def receive() -> dict[str, object]:
        c = chunks.pop(0)
        return {"type": "http.request", "body": c, "more_body": bool(chunks)}

    async def run() -> dict[str, object]:
        form = await cls(scope, receive).form()
        out: dict[str, object] = {}
        for k, v in form.items():
            if isinstance(v, str):
                out[k] = v
            else:
                out[k] = (v.filename, v.content_type, await v.read(), v._in_memory)
        await form.close()
        return out

    return asyncio.run(run())


def test_the_upload_parser_gives_starlettes_form_and_writes_a_large_file_to_disk_as_it_arrives() -> None:
    payload = os.urandom(3 * PIECE + 12345)  # past the 1 MB spool: held on disk while the rest arrives, not in memory
    body = _multipart(b'{"method": "minegan"}', payload)
    ours = _parse(UploadRequest, body)
    theirs = _parse(Request, body)
    assert ours["spec"] == theirs["spec"] == '{"method": "minegan"}'
    assert ours["images"] == theirs["images"] == ("t.zip", "application/zip", payload, False)  # rolled to a temporary file


def test_body_chunks_reach_the_parser_in_pieces_of_at_least_a_megabyte() -> None:
    async def chunks() -> object:
        for i in range(70):
            yield bytes([i % 256]) * 65536

    async def collect() -> list[bytes]:
        return [p async for p in _pieces(chunks())]  # type: ignore[arg-type]

    pieces = asyncio.run(collect())
    assert [len(p) for p in pieces] == [PIECE] * 4 + [6 * 65536]  # 70 chunks of 64 KB: 4 whole megabytes and the rest
    assert b"".join(pieces) == b"".join(bytes([i % 256]) * 65536 for i in range(70))


def test_a_broken_multipart_body_is_a_400_json_error_and_the_server_keeps_serving(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    with app_client(tmp_path, monkeypatch) as c:
        r = c.post("/jobs", content=b"--x\r\nnot a part", headers={"content-type": "multipart/form-data"})  # no boundary
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "http_error" and "boundary" in r.json()["error"]["message"].lower()
        r = c.post("/jobs", content=_multipart(b"", b"x"), headers={"content-type": "multipart/form-data; boundary=" +
                                                                     BOUNDARY.decode()})
        assert r.status_code == 422 and "spec: is required and was missing or empty" in r.json()["error"]["message"], r.text
        assert c.get("/healthz").status_code == 200
