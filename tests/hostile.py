"""A corpus of hostile and broken uploads to ``POST /jobs``, each with the answer it must get.

Driven over HTTP by tests/api/test_hostile.py (embedded app) and tests/integration/test_hardening.py
(the real stack); ``python benchmarks/hostile_uploads.py`` turns the same corpus into docs/hostile_uploads.md.
Builders take the server's limits (``Limits``) so that "one over the limit" cases stay small.
"""

from __future__ import annotations

import functools
import io
import json
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int
    max_request_bytes: int
    max_target_images: int
    max_zip_entries: int


@dataclass
class Request:
    files: dict[str, tuple[str, bytes, str]] | None = None
    data: dict[str, str] | None = None
    content: bytes | Iterator[bytes] | None = None  # a raw body (with ``headers``) instead of multipart
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Case:
    name: str
    what: str
    build: Callable[[dict[str, Any], Limits], Request]
    status: int
    code: str | None  # None: accepted (202)
    note: str = ""  # what the accepted job's target report must mention


def png(img: Image.Image, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def digit(i: int = 0) -> bytes:
    arr = np.zeros((28, 28), np.uint8)
    arr[6 + i % 10 : 22, 10:18] = 255
    return png(Image.fromarray(arr))


def zip_of(entries: dict[str, bytes] | list[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in (entries.items() if isinstance(entries, dict) else entries):
            zf.writestr(name, data)
    return buf.getvalue()


def good_images(n: int = 16) -> dict[str, bytes]:
    return {f"t{i:03d}.png": digit(i) for i in range(n)}


def upload(zip_bytes: bytes, spec: dict[str, Any] | str) -> Request:
    return Request(files={"images": ("target.zip", zip_bytes, "application/zip")},
                   data={"spec": spec if isinstance(spec, str) else json.dumps(spec)})


def with_images(extra: dict[str, bytes]) -> Callable[[dict[str, Any], Limits], Request]:
    return lambda spec, lim: upload(zip_of(good_images() | extra), spec)


def _symlink_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in good_images(4).items():
            zf.writestr(name, data)
        info = zipfile.ZipInfo("link.png")
        info.create_system = 3
        info.external_attr = (0o120777 << 16)  # S_IFLNK
        zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def _forged_bomb() -> bytes:
    """A deflate bomb whose headers declare 100 bytes: the reader must not trust them."""
    raw = bytearray(zip_of({"bomb.png": b"\0" * (16 << 20)}))
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        i = raw.find(sig)
        raw[i + off : i + off + 4] = (100).to_bytes(4, "little")
    return bytes(raw)


def _truncated() -> bytes:
    whole = digit(3)
    return whole[: len(whole) // 2]


def _modes() -> dict[str, bytes]:
    jpg = io.BytesIO()
    Image.new("CMYK", (28, 28), (0, 0, 0, 0)).save(jpg, format="JPEG")
    frames = [Image.new("L", (28, 28), v) for v in (255, 0)]
    apng = io.BytesIO()
    frames[0].save(apng, format="PNG", save_all=True, append_images=frames[1:])
    return {"cmyk.jpg": jpg.getvalue(), "deep.png": png(Image.fromarray(np.full((28, 28), 40000, np.uint16))),
            "palette.png": png(Image.new("P", (28, 28), 7)), "alpha.png": png(Image.new("RGBA", (28, 28), (255, 255, 255, 128))),
            "animated.png": apng.getvalue()}


def _chunked(n: int) -> Iterator[bytes]:
    """A well-formed multipart start, then a file part that never ends within the limit."""
    yield (b'--x\r\nContent-Disposition: form-data; name="images"; filename="t.zip"\r\n'
           b"Content-Type: application/zip\r\n\r\n")
    for _ in range(n // (1 << 20) + 1):
        yield b"\0" * (1 << 20)


def corpus() -> list[Case]:
    bad_spec = lambda mutate: (lambda spec, lim: upload(zip_of(good_images()), mutate(dict(spec))))  # noqa: E731
    return [
        Case("not a zip", "plain text uploaded as the zip", lambda s, lim: upload(b"hello, I am not a zip file", s), 422, "not_a_zip"),
        Case("empty upload", "a zero-byte file", lambda s, lim: upload(b"", s), 422, "empty_upload"),
        Case("empty zip", "a valid zip with no entries", lambda s, lim: upload(zip_of({}), s), 422, "empty_zip"),
        Case("zip without images", "only a text file inside", lambda s, lim: upload(zip_of({"readme.txt": b"hi"}), s), 422, "no_images"),
        Case("path traversal", "an entry named ../evil.png", with_images({"../evil.png": digit()}), 422, "unsafe_path"),
        Case("nested traversal", "an entry named a/../../evil.png", with_images({"a/../../evil.png": digit()}), 422, "unsafe_path"),
        Case("absolute path", "an entry named /tmp/evil.png", with_images({"/tmp/evil.png": digit()}), 422, "unsafe_path"),
        Case("windows traversal", "an entry named ..\\evil.png", with_images({"..\\evil.png": digit()}), 422, "unsafe_path"),
        Case("drive letter", "an entry named C:/evil.png", with_images({"C:/evil.png": digit()}), 422, "unsafe_path"),
        Case("symlink entry", "an entry that is a symbolic link", lambda s, lim: upload(_symlink_zip(), s), 422, "unsafe_path"),
        Case("zip bomb", "16 MiB of zeros deflated to ~16 KiB (ratio ~1000:1)",
             with_images({"bomb.png": b"\0" * (16 << 20)}), 413, "zip_bomb"),
        Case("zip bomb, forged sizes", "the same bomb with headers declaring 100 bytes",
             lambda s, lim: upload(_forged_bomb(), s), 422, "corrupt_zip"),
        Case("too many entries", "one entry over the entry limit",
             lambda s, lim: upload(zip_of([(f"d/{i}.txt", b"") for i in range(lim.max_zip_entries + 1)], zipfile.ZIP_STORED), s),
             413, "too_many_files"),
        Case("too many images", "one image over the image limit",
             lambda s, lim: upload(zip_of({f"{i:05d}.png": digit(i) for i in range(lim.max_target_images + 1)}), s),
             422, "too_many_images"),
        Case("truncated image", "a PNG cut in half", with_images({"cut.png": _truncated()}), 422, "corrupt_image"),
        Case("corrupt image", "random bytes named .png", with_images({"junk.png": bytes(range(256)) * 4}), 422, "corrupt_image"),
        Case("not PNG/JPEG inside", "a GIF named .png", with_images({"gif.png": _gif()}), 422, "corrupt_image"),
        Case("huge dimensions", "a 5000x5000 PNG (25 Mpx declared, a few KiB on disk)",
             with_images({"big.png": png(Image.new("1", (5000, 5000)))}), 422, "image_too_large"),
        Case("decompression bomb", "a 20000x20000 PNG (400 Mpx declared)",
             with_images({"huge.png": png(Image.new("1", (20000, 20000)))}), 422, "image_too_large"),
        Case("odd pixel formats", "CMYK JPEG, 16-bit PNG, palette PNG, RGBA PNG, animated PNG", with_images(_modes()), 202, None,
             note="converted"),
        Case("upload over the limit", "a zip one MiB over max_upload_bytes",
             lambda s, lim: upload(zip_of(good_images(4)) + b"\0" * (lim.max_upload_bytes + (1 << 20)), s), 413, "upload_too_large"),
        Case("body over the limit", "Content-Length above max_request_bytes",
             lambda s, lim: Request(content=b"\0" * (lim.max_request_bytes + 1024),
                                    headers={"content-type": "multipart/form-data; boundary=x"}), 413, "request_too_large"),
        Case("chunked body over the limit", "no Content-Length; the stream passes max_request_bytes",
             lambda s, lim: Request(content=_chunked(lim.max_request_bytes + (1 << 20)),
                                    headers={"content-type": "multipart/form-data; boundary=x"}), 413, "request_too_large"),
        Case("spec not JSON", "spec = '{sources: oops'", lambda s, lim: upload(zip_of(good_images()), "{sources: oops"), 422, "invalid_spec"),
        Case("spec unknown field", "spec has 'steps' instead of 'mining_steps'",
             bad_spec(lambda d: d | {"steps": 5}), 422, "invalid_spec"),
        Case("unknown source", "sources = ['no-such-gan']", bad_spec(lambda d: d | {"sources": ["no-such-gan"]}), 422, "unknown_source"),
        Case("unknown method", "method = 'magic'", bad_spec(lambda d: d | {"method": "magic"}), 422, "invalid_spec"),
        Case("steps out of range", "mining_steps = -1", bad_spec(lambda d: d | {"mining_steps": -1}), 422, "invalid_spec"),
        Case("batch larger than target", "batch_size 32 with 16 images", bad_spec(lambda d: d | {"batch_size": 32}), 422, "invalid_spec"),
        Case("no images field", "multipart without the zip", lambda s, lim: Request(data={"spec": json.dumps(s)}), 422, "invalid_request"),
        Case("no spec field", "multipart without the spec",
             lambda s, lim: Request(files={"images": ("t.zip", zip_of(good_images()), "application/zip")}), 422, "invalid_request"),
    ]


def _gif() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (28, 28), 9).save(buf, format="GIF")
    return buf.getvalue()


FIELD_NAMED = {"spec unknown field": "steps", "unknown method": "method", "steps out of range": "mining_steps",
               "batch larger than target": "batch_size", "no images field": "images", "no spec field": "spec",
               "unknown source": "sources"}


def send(client: Any, case: Case, spec: dict[str, Any], limits: Limits, headers: dict[str, str] | None = None) -> Any:
    """POST the case to /jobs with an httpx-style client (TestClient or httpx.Client)."""
    req = case.build(spec, limits)
    h = {**(headers or {}), **req.headers}
    if req.content is not None:
        return client.post("/jobs", content=req.content, headers=h)
    return client.post("/jobs", files=req.files or {}, data=req.data or {}, headers=h)


def check(case: Case, r: Any) -> None:
    """The answer a case must get: status, error code, a message naming what to fix."""
    assert r.status_code == case.status, (case.name, r.status_code, r.text[:500])
    body = r.json()
    if case.code is None:
        assert case.note in json.dumps(body.get("target", {})), (case.name, body)
        return
    assert body["error"]["code"] == case.code, (case.name, body)
    assert len(body["error"]["message"]) > 10, (case.name, body)
    if case.name in FIELD_NAMED:
        assert FIELD_NAMED[case.name] in body["error"]["message"], (case.name, body)


# --- hostile model files for POST /models ---------------------------------------------------------------------


def onnx_generator(z_dim: int = 8, *, size: int = 28, extra_nodes: list[Any] | None = None, out_rank: int = 4,
                   two_inputs: bool = False, nan: bool = False, outputs: bool = True, w_dims: list[int] | None = None,
                   external: bool = False, classes: str = "", n_classes: int = 3) -> bytes:
    """A small ONNX generator z [N, z_dim] -> Tanh(Gemm) reshaped to [N, 1, size, size], or a broken variant of it.
    ``classes``: a class-conditional one, whose second input (``index``: int64 [N]; ``onehot``: float [N, n_classes])
    adds a per-class image to the pre-activation."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    pixels = size * size
    w = numpy_helper.from_array(rng.normal(0, 0.1, (z_dim, pixels)).astype(np.float32), "W")
    if w_dims is not None or external:  # the declared shape lies about the data, or the data lies "elsewhere"
        w = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=w_dims or [z_dim, pixels])
        if w_dims is not None:
            w.raw_data = b"\0" * 16
    if external:
        w.data_location = TensorProto.EXTERNAL
        entry = w.external_data.add()
        entry.key, entry.value = "location", "../../../../etc/passwd"
    b = numpy_helper.from_array(np.zeros(pixels, np.float32), "b")
    shape = numpy_helper.from_array(np.array([-1, 1, size, size] if out_rank == 4 else [-1, pixels], np.int64), "shape")
    nodes = [helper.make_node("Gemm", ["z", "W", "b"], ["h"]), helper.make_node("Tanh", ["h"], ["t"])]
    class_inits = []
    if classes:
        class_inits = [numpy_helper.from_array(rng.normal(0, 1.0, (n_classes, pixels)).astype(np.float32), "E")]
        by_class = (helper.make_node("Gather", ["E", "label"], ["e"], axis=0) if classes == "index"
                    else helper.make_node("MatMul", ["label", "E"], ["e"]))
        nodes = [nodes[0], by_class, helper.make_node("Add", ["h", "e"], ["he"]), helper.make_node("Tanh", ["he"], ["t"])]
    last = "t"
    if nan:
        nodes += [helper.make_node("Abs", ["t"], ["a"]), helper.make_node("Neg", ["a"], ["na"]),
                  helper.make_node("Sqrt", ["na"], ["nan0"]), helper.make_node("Sub", ["nan0", "one"], ["nan"])]
        last = "nan"
    nodes += [*(extra_nodes or []), helper.make_node("Reshape", [last, "shape"], ["images"])]
    inits = [w, b, shape, numpy_helper.from_array(np.ones(1, np.float32), "one"), *class_inits]
    ins = [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", z_dim])]
    if two_inputs or classes == "index":
        ins.append(helper.make_tensor_value_info("label", TensorProto.INT64, ["n"]))
    elif classes == "onehot":
        ins.append(helper.make_tensor_value_info("label", TensorProto.FLOAT, ["n", n_classes]))
    out_shape = ["n", 1, size, size] if out_rank == 4 else ["n", pixels]
    outs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, out_shape)] if outputs else []
    graph = helper.make_graph(nodes, "g", ins, outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return bytes(model.SerializeToString())


def onnx_critic(size: int = 28, *, out_rank: int = 2, nan: bool = False, external: bool = False, two_inputs: bool = False) -> bytes:
    """A small ONNX critic images [N, 1, size, size] -> Gemm(LeakyRelu(Conv(x))) scores [N, 1], or a broken variant."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    half = size // 2
    k = numpy_helper.from_array(rng.normal(0, 0.2, (4, 1, 4, 4)).astype(np.float32), "K")
    w = numpy_helper.from_array(rng.normal(0, 0.05, (4 * half * half, 1)).astype(np.float32), "W")
    if external:
        w = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[4 * half * half, 1], data_location=TensorProto.EXTERNAL)
        entry = w.external_data.add()
        entry.key, entry.value = "location", "/etc/shadow"
    b = numpy_helper.from_array(np.zeros(1, np.float32), "b")
    nodes = [helper.make_node("Conv", ["x", "K"], ["h"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("LeakyRelu", ["h"], ["a"], alpha=0.2), helper.make_node("Flatten", ["a"], ["f"]),
             helper.make_node("Gemm", ["f", "W", "b"], ["s"])]
    last = "s"
    if nan:
        nodes += [helper.make_node("Div", ["s", "zero"], ["inf"]), helper.make_node("Sub", ["inf", "inf"], ["nan"])]
        last = "nan"
    if out_rank == 4:
        nodes += [helper.make_node("Unsqueeze", [last, "axes"], ["s4"])]
        last = "s4"
    nodes += [helper.make_node("Identity", [last], ["score"])]
    inits = [k, w, b, numpy_helper.from_array(np.zeros(1, np.float32), "zero"), numpy_helper.from_array(np.array([2, 3], np.int64), "axes")]
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, size, size])]
    if two_inputs:
        ins.append(helper.make_tensor_value_info("label", TensorProto.INT64, ["n"]))
    outs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n", 1, 1, 1] if out_rank == 4 else ["n", 1])]
    model = helper.make_model(helper.make_graph(nodes, "d", ins, outs, inits), opset_imports=[helper.make_opsetid("", 17)])
    return bytes(model.SerializeToString())


def safetensors_with(header: dict[str, Any] | bytes, body: bytes = b"", header_len: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return (header_len if header_len is not None else len(raw)).to_bytes(8, "little") + raw + body


class Evil:
    """Pickling this needs the class itself: a torch file holding it must be refused unread."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("this must never run",))


def _pickled_code() -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save({"main.0.weight": Evil()}, buf)
    return buf.getvalue()


@functools.lru_cache(maxsize=8)
def pt2_generator(size: int = 28, *, out_rank: int = 4, dynamic: bool = True) -> bytes:
    """A small generator z [N, 8] -> Tanh(Linear(z)) reshaped to [N, 1, size, size], exported with torch.export and
    saved with torch.export.save; ``out_rank`` 2 keeps the flat [N, size * size] output (not an image)."""
    import torch
    from torch import nn

    class Flat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, size * size)

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            x = torch.tanh(self.fc(z))
            return x.reshape(-1, 1, size, size) if out_rank == 4 else x

    torch.manual_seed(0)
    shapes = {"z": {0: torch.export.Dim("n", min=1, max=4096)}} if dynamic else None
    ep = torch.export.export(Flat().eval(), (torch.randn(2, 8),), dynamic_shapes=shapes)
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    return buf.getvalue()


def pt2_edit(data: bytes, edit: Callable[[dict[str, bytes]], None], method: int = zipfile.ZIP_STORED) -> bytes:
    """The archive with ``edit`` applied to its entries (names without the root folder) and written again."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        root = zf.namelist()[0].split("/", 1)[0] + "/"
        entries = {n[len(root):]: zf.read(n) for n in zf.namelist()}
    edit(entries)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as zf:
        for name, body in entries.items():
            zf.writestr(root + name, body)
    return out.getvalue()


def _pt2_program_edit(fn: Callable[[dict[str, Any]], None]) -> bytes:
    def edit(entries: dict[str, bytes]) -> None:
        program = json.loads(entries["models/model.json"])
        fn(program)
        entries["models/model.json"] = json.dumps(program).encode()

    return pt2_edit(pt2_generator(), edit)


def _pt2_first_node(program: dict[str, Any], **change: Any) -> None:
    program["graph_module"]["graph"]["nodes"][0].update(change)


def _pt2_sympy_code(program: dict[str, Any]) -> None:
    """Every shape expression replaced by Python: sympify would evaluate it."""
    stack: list[Any] = [program]
    while stack:
        cur = stack.pop()
        if isinstance(cur, dict):
            if "expr_str" in cur:
                cur["expr_str"] = "__import__('builtins').print('this must never run')"
            stack.extend(cur.values())
        elif isinstance(cur, list):
            stack.extend(cur)


def _pt2_pickled(where: str) -> bytes:
    """A weight (or tensor constant) stored as a pickle whose loading would run code."""
    def edit(entries: dict[str, bytes]) -> None:
        entries[f"data/{where}s/{where}_0" if where == "weight" else "data/constants/tensor_0"] = _pickled_code()
        if where == "weight":
            config = json.loads(entries["data/weights/model_weights_config.json"])
            next(iter(config["config"].values()))["use_pickle"] = True
            entries["data/weights/model_weights_config.json"] = json.dumps(config).encode()
        else:
            weights = json.loads(entries["data/weights/model_weights_config.json"])
            meta = dict(next(iter(weights["config"].values())), path_name="tensor_0", use_pickle=True, is_param=False)
            entries["data/constants/model_constants_config.json"] = json.dumps({"config": {"lifted_tensor_0": meta}}).encode()

    return pt2_edit(pt2_generator(), edit)


def _pt2_opaque() -> bytes:
    """A constant that is a pickled Python object (torch.export.load would pickle.loads it)."""
    def edit(entries: dict[str, bytes]) -> None:
        entries["data/constants/opaque_obj_0"] = _pickled_code()
        weights = json.loads(entries["data/weights/model_weights_config.json"])
        meta = dict(next(iter(weights["config"].values())), path_name="opaque_obj_0", use_pickle=False, is_param=False)
        entries["data/constants/model_constants_config.json"] = json.dumps({"config": {"obj": meta}}).encode()

    return pt2_edit(pt2_generator(), edit)


def _pt2_short_weight() -> bytes:
    def edit(entries: dict[str, bytes]) -> None:
        entries["data/weights/weight_0"] = entries["data/weights/weight_0"][:64]

    return pt2_edit(pt2_generator(), edit)


def _pt2_bomb() -> bytes:
    """A weight entry of 64 MiB of zeros, deflated to ~64 KiB."""
    def edit(entries: dict[str, bytes]) -> None:
        entries["data/weights/weight_0"] = b"\0" * (64 << 20)

    return pt2_edit(pt2_generator(), edit, zipfile.ZIP_DEFLATED)


def _pt2_legacy() -> bytes:
    def edit(entries: dict[str, bytes]) -> None:
        entries["data/weights/model.pt"] = _pickled_code()

    return pt2_edit(pt2_generator(), edit)


@dataclass
class ModelCase:
    name: str
    what: str
    build: Callable[[], tuple[bytes, dict[str, Any]]]  # the generator file and its upload config
    status: int
    code: str
    names: str = ""  # what the message must mention
    critic: Callable[[], bytes] | None = None  # a critic file sent beside the generator


ONNX_CFG: dict[str, Any] = {"id": "evil", "family": "onnx", "config": {"z_dim": 8, "img_size": 28, "channels": 1}}
STATE_CFG: dict[str, Any] = {"id": "evil", "family": "minegan", "config": {"z_dim": 8, "width": 4}}
PT2_CFG: dict[str, Any] = {**ONNX_CFG, "family": "pt2"}


def model_corpus() -> list[ModelCase]:
    from onnx import helper

    shell = helper.make_node("RunShellCommand", ["t"], ["t2"], domain="com.evil")
    return [
        ModelCase("onnx truncated", "a valid ONNX generator cut in half", lambda: (onnx_generator()[: len(onnx_generator()) // 2], ONNX_CFG),
                  422, "bad_model_file", "truncated"),
        ModelCase("onnx external data", "a weight stored 'in' ../../../../etc/passwd", lambda: (onnx_generator(external=True), ONNX_CFG),
                  422, "bad_model_file", "external"),
        ModelCase("onnx huge tensor", "a weight declaring 2^40 elements with 16 bytes of data",
                  lambda: (onnx_generator(w_dims=[1 << 20, 1 << 20]), ONNX_CFG), 422, "bad_model_file", "elements"),
        ModelCase("onnx no output", "a graph that declares no output", lambda: (onnx_generator(outputs=False), ONNX_CFG),
                  422, "bad_model_file", "no output"),
        ModelCase("onnx wrong rank", "output [N, 784] instead of images [N, C, H, W]", lambda: (onnx_generator(out_rank=2), ONNX_CFG),
                  422, "bad_model_file", "rank"),
        ModelCase("onnx unknown operator", "a node com.evil:RunShellCommand",
                  lambda: (onnx_generator(extra_nodes=[shell]), ONNX_CFG), 422, "bad_model_file", "RunShellCommand"),
        ModelCase("onnx two inputs", "z and a label input", lambda: (onnx_generator(two_inputs=True), ONNX_CFG),
                  422, "bad_model_file", "inputs"),
        ModelCase("onnx wrong z_dim", "declared z_dim 16, the graph takes 8",
                  lambda: (onnx_generator(), {**ONNX_CFG, "config": {**ONNX_CFG["config"], "z_dim": 16}}), 422, "bad_model_file", "z_dim"),
        ModelCase("onnx wrong image size", "declared 32x32, the graph makes 28x28",
                  lambda: (onnx_generator(), {**ONNX_CFG, "config": {**ONNX_CFG["config"], "img_size": 32}}), 422, "bad_model_file",
                  "declared"),
        ModelCase("onnx NaN images", "a graph whose images are NaN", lambda: (onnx_generator(nan=True), ONNX_CFG),
                  422, "bad_model_file", "finite"),
        ModelCase("onnx class input of the wrong form", "declared one-hot rows [N, 3], the graph takes class indices [N]",
                  lambda: (onnx_generator(classes="index"), {**ONNX_CFG, "config": {**ONNX_CFG["config"], "n_classes": 3,
                                                                                   "class_input": "onehot"}}),
                  422, "bad_model_file", "onehot"),
        ModelCase("onnx critic truncated", "a fine generator with a valid ONNX critic cut in half",
                  lambda: (onnx_generator(), ONNX_CFG), 422, "bad_model_file", "truncated",
                  critic=lambda: onnx_critic()[: len(onnx_critic()) // 2]),
        ModelCase("onnx critic external data", "a critic weight stored 'in' /etc/shadow", lambda: (onnx_generator(), ONNX_CFG),
                  422, "bad_model_file", "external", critic=lambda: onnx_critic(external=True)),
        ModelCase("onnx critic for other images", "a critic of 32x32 images beside a 28x28 generator", lambda: (onnx_generator(), ONNX_CFG),
                  422, "bad_model_file", "critic input", critic=lambda: onnx_critic(size=32)),
        ModelCase("onnx critic image output", "a critic whose output is [N, 1, 1, 1], not one score per image",
                  lambda: (onnx_generator(), ONNX_CFG), 422, "bad_model_file", "one score", critic=lambda: onnx_critic(out_rank=4)),
        ModelCase("onnx critic two inputs", "a critic that also takes a label", lambda: (onnx_generator(), ONNX_CFG),
                  422, "bad_model_file", "inputs", critic=lambda: onnx_critic(two_inputs=True)),
        ModelCase("onnx critic NaN scores", "a critic whose scores are NaN", lambda: (onnx_generator(), ONNX_CFG),
                  422, "bad_model_file", "finite", critic=lambda: onnx_critic(nan=True)),
        ModelCase("safetensors header past the end", "a header length of 1 GB in a 10-byte file",
                  lambda: (safetensors_with(b"{}", header_len=10**9), STATE_CFG), 422, "bad_model_file", "header"),
        ModelCase("safetensors offsets outside", "a tensor whose data lies past the end of the file",
                  lambda: (safetensors_with({"fc.weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 4), STATE_CFG),
                  422, "bad_model_file", "outside"),
        ModelCase("safetensors huge tensor", "a tensor declaring 2^40 elements",
                  lambda: (safetensors_with({"fc.weight": {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 4]}},
                                            b"\0" * 4), STATE_CFG), 422, "bad_model_file", "elements"),
        ModelCase("torch file with code", "a state dict holding a pickled callable", lambda: (_pickled_code(), STATE_CFG),
                  422, "bad_checkpoint", "refused"),
        ModelCase("pt2 truncated", "a valid .pt2 generator cut in half", lambda: (pt2_generator()[: len(pt2_generator()) // 2], PT2_CFG),
                  422, "bad_model_file", ".pt2"),
        ModelCase("pt2 pickled weight", "a weight stored as a pickle that runs code", lambda: (_pt2_pickled("weight"), PT2_CFG),
                  422, "bad_model_file", "pickled"),
        ModelCase("pt2 pickled constant", "a tensor constant stored as a pickle that runs code", lambda: (_pt2_pickled("constant"), PT2_CFG),
                  422, "bad_model_file", "pickled"),
        ModelCase("pt2 opaque object", "a constant that is a pickled Python object", lambda: (_pt2_opaque(), PT2_CFG),
                  422, "bad_model_file", "opaque"),
        ModelCase("pt2 legacy pickled weights", "weights in the old pickled layout (data/weights/model.pt)", lambda: (_pt2_legacy(), PT2_CFG),
                  422, "bad_model_file", "legacy"),
        ModelCase("pt2 unregistered operator", "a node calling torch.ops.evil.run.default",
                  lambda: (_pt2_program_edit(lambda p: _pt2_first_node(p, target="torch.ops.evil.run.default")), PT2_CFG),
                  422, "bad_model_file", "torch.ops.evil.run.default"),
        ModelCase("pt2 Python function", "a node calling torch.serialization.pickle.loads",
                  lambda: (_pt2_program_edit(lambda p: _pt2_first_node(p, target="torch.serialization.pickle.loads")), PT2_CFG),
                  422, "bad_model_file", "not a standard ATen operator"),
        ModelCase("pt2 code in a shape", "a shape expression that is Python (sympify evaluates it)",
                  lambda: (_pt2_program_edit(_pt2_sympy_code), PT2_CFG), 422, "bad_model_file", "shape expression"),
        ModelCase("pt2 short weight", "a weight file holding fewer bytes than its declared shape", lambda: (_pt2_short_weight(), PT2_CFG),
                  422, "bad_model_file", "truncated"),
        ModelCase("pt2 zip bomb", "a weight entry of 64 MiB of zeros deflated to ~64 KiB", lambda: (_pt2_bomb(), PT2_CFG),
                  422, "bad_model_file", "compression ratio"),
        ModelCase("pt2 not an image", "a program whose output is [N, 784], not images", lambda: (pt2_generator(out_rank=2), PT2_CFG),
                  422, "bad_model_file", "declared"),
        ModelCase("pt2 not a .pt2", "an ONNX file uploaded as family pt2", lambda: (onnx_generator(), PT2_CFG),
                  422, "bad_model_file", "not a .pt2 archive"),
    ]


def send_model(client: Any, case: ModelCase, headers: dict[str, str] | None = None) -> Any:
    data, cfg = case.build()
    files = {"generator": ("g.bin", data, "application/octet-stream")}
    if case.critic is not None:
        files["critic"] = ("d.bin", case.critic(), "application/octet-stream")
    return client.post("/models", files=files, data={"config": json.dumps(cfg)}, headers=headers or {})


def check_model(case: ModelCase, r: Any) -> None:
    assert r.status_code == case.status, (case.name, r.status_code, r.text[:500])
    err = r.json()["error"]
    assert err["code"] == case.code and case.names in err["message"], (case.name, err)


# --- pressure and malformed requests (issue 35), with API keys required ---------------------------------------


@dataclass
class RequestCase:
    name: str
    what: str
    send: Callable[[Any, dict[str, str]], Any]  # (client, the key's headers) -> response
    status: int
    code: str | None  # the error code; None: /v2's error body, a string


def _post_spec(spec: Any) -> Callable[[Any, dict[str, str]], Any]:
    def send(c: Any, key: dict[str, str]) -> Any:
        raw = spec if isinstance(spec, str) else json.dumps(spec)
        return c.post("/jobs", headers=key, files={"images": ("t.zip", zip_of(good_images()), "application/zip")}, data={"spec": raw})
    return send


def _infer(body: Any) -> Callable[[Any, dict[str, str]], Any]:
    def send(c: Any, key: dict[str, str]) -> Any:
        raw = body if isinstance(body, str) else json.dumps(body)
        return c.post("/v2/models/latest/infer", headers={**key, "Content-Type": "application/json"}, content=raw)
    return send


def _keyless_upload(c: Any, key: dict[str, str]) -> Any:
    read: list[int] = []

    def body() -> Iterator[bytes]:  # 4 MiB that would be held while it arrives
        for _ in range(64):
            read.append(1)
            yield b"x" * 65536

    r = c.post("/jobs", content=body(), headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert len(read) <= 2 and r.headers["connection"] == "close", (len(read), r.headers)  # answered before the body
    return r


def _many_pixels(c: Any, key: dict[str, str]) -> Any:
    big = png(Image.new("L", (4096, 4096)))  # 16 Mpx, at the per-image limit, about 16 KiB
    return c.post("/jobs", headers=key, files={"images": ("t.zip", zip_of({f"{i}.png": big for i in range(17)}), "application/zip")},
                  data={"spec": json.dumps({"sources": ["tiny-src"]})})


BASE = {"sources": ["tiny-src"], "mining_steps": 1, "finetune_steps": 0, "batch_size": 4}


def _events_after(c: Any, key: dict[str, str]) -> Any:
    job = _post_spec(BASE)(c, key)
    assert job.status_code == 202, job.text
    return c.get(f"/jobs/{job.json()['id']}/events?after={10**23}", headers=key)


def request_corpus() -> list[RequestCase]:
    return [
        RequestCase("upload without a key", "a 4 MiB multipart body to POST /jobs, no key", _keyless_upload, 401, "unauthorized"),
        RequestCase("unknown key", "POST /models with Bearer mg_nope", lambda c, k: c.post(
            "/models", files={"generator": ("g", b"x" * 1000)}, headers={"Authorization": "Bearer mg_nope"}), 401, "unauthorized"),
        RequestCase("metrics without a key", "GET /metrics, no key", lambda c, k: c.get("/metrics"), 401, "unauthorized"),
        RequestCase("too many pixels in all", "17 PNGs of 4096x4096 (each under the per-image limit, 285 Mpx in all)",
                    _many_pixels, 413, "images_too_large"),
        RequestCase("deeply nested spec", "spec = '[' x 100000", _post_spec("[" * 100_000), 422, "invalid_spec"),
        RequestCase("webhook port out of range", "webhook https://127.0.0.1:99999/", _post_spec({**BASE, "webhook": "https://127.0.0.1:99999/"}),
                    422, "invalid_spec"),
        RequestCase("webhook to loopback through NAT64", "webhook https://[64:ff9b::7f00:1]/",
                    _post_spec({**BASE, "webhook": "https://[64:ff9b::7f00:1]/"}), 422, "invalid_spec"),
        RequestCase("webhook to loopback through 6to4", "webhook https://[2002:7f00:1::]/",
                    _post_spec({**BASE, "webhook": "https://[2002:7f00:1::]/"}), 422, "invalid_spec"),
        RequestCase("huge option", "options.sparse_min_weights = 1e30", _post_spec({**BASE, "options": {"sparse_min_weights": 1e30}}),
                    422, "invalid_spec"),
        RequestCase("event id past 64 bits", "GET /jobs/{id}/events?after=10^23 of a job of yours", _events_after, 422, "invalid_request"),
        RequestCase("signed link with a non-ASCII digit", "GET /blobs/jobs/x?exp=%C2%B2&sig=0 ('²' passes str.isdigit())",
                    lambda c, k: c.get("/blobs/jobs/x?exp=%C2%B2&sig=0"), 404, "not_found"),
        RequestCase("/v2: deeply nested body", "'[' x 100000", _infer("[" * 100_000), 422, None),
        RequestCase("/v2: INT32 overflow", "n = 99999999999 as INT32",
                    _infer({"inputs": [{"name": "n", "datatype": "INT32", "shape": [1], "data": [99999999999]}]}), 422, None),
        RequestCase("/v2: INT64 overflow", "seed = 2^63 as INT64",
                    _infer({"inputs": [{"name": "seed", "datatype": "INT64", "shape": [1], "data": [2**63]}]}), 422, None),
        RequestCase("/v2: BYTES as numbers", "n = [-1] as BYTES",
                    _infer({"inputs": [{"name": "n", "datatype": "BYTES", "shape": [1], "data": [-1]}]}), 422, None),
        RequestCase("/v2: outputs not a list", '{"inputs": [], "outputs": true} (found by tests/test_fuzz.py)',
                    _infer('{"inputs": [], "outputs": true}'), 422, None),
        RequestCase("/v2: huge shape", "shape [2^62, 4] with binary_data_size 0",
                    _infer({"inputs": [{"name": "n", "datatype": "INT32", "shape": [2**62, 4], "parameters": {"binary_data_size": 0}}]}),
                    422, None),
    ]


def check_request(case: RequestCase, r: Any) -> None:
    assert r.status_code == case.status, (case.name, r.status_code, r.text[:500])
    body = r.json()
    if case.code is None:
        assert isinstance(body["error"], str) and len(body["error"]) > 10, (case.name, body)
    else:
        assert body["error"]["code"] == case.code and len(body["error"]["message"]) > 10, (case.name, body)
