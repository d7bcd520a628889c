"""The Open Inference Protocol (KServe v2) over finished jobs: one implementation behind gRPC (``api/grpc_server.py``)
and REST (``api/routes/v2.py``).

A finished job the caller owns is the model ``{job_id}``; ``latest`` names the caller's newest finished job.
Inputs: ``n`` (INT32 [1], 1..sample_max_n), optional ``seed`` (INT64 [1], default 0) and, for a model mined from a
one-hot conditional source, optional ``class`` (INT32 [1]). Outputs: ``images`` UINT8 [n, H, W, C] and ``png``
BYTES [n], the very pixels and files of ``GET /jobs/{id}/sample?format=zip`` with the same seed (same sampling
call, same conversion). Sampling shares the REST model cache and runs where REST sampling runs, on the event
loop's thread (``api/compute.py``), so serving both protocols adds no second OpenMP team.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from starlette.concurrency import run_in_threadpool

from api.compute import run_torch, sample_on_loop
from api.errors import ApiError
from api.metrics import SAMPLES
from api.services import Services
from api.services.sampling import finished_model, latest_model
from core.images import png_bytes, to_uint8
from core.model_file import TransferredModel
from core.multi import MultiMinedGenerator, member_images
from store import jobs as jobs_dao

SERVER_NAME = "minegan"
EXTENSIONS = ["binary_tensor_data"]
DTYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
          "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
OUTPUTS = ("images", "png")


@dataclass
class Tensor:
    """One named tensor of a request or response; BYTES data is a 1-D object array of ``bytes``."""

    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray


def decode_bytes(raw: bytes) -> list[bytes]:
    """BYTES elements from the protocol's binary form: each a 4-byte little-endian length, then the bytes."""
    out, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise ApiError(422, "invalid_request", "BYTES data: a truncated length prefix")
        n = int.from_bytes(raw[i : i + 4], "little")
        if i + 4 + n > len(raw):
            raise ApiError(422, "invalid_request", "BYTES data: an element runs past the end")
        out.append(raw[i + 4 : i + 4 + n])
        i += 4 + n
    return out


def encode_bytes(items: list[bytes]) -> bytes:
    return b"".join(len(b).to_bytes(4, "little") + b for b in items)


MAX_ELEMENTS = 1 << 20  # of one input tensor: this server's inputs are scalars


def check_shape(name: str, shape: list[int]) -> None:
    """A shape of non-negative integers holding at most ``MAX_ELEMENTS`` elements (422 otherwise)."""
    if not isinstance(shape, list) or len(shape) > 8 or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d for d in shape):
        raise ApiError(422, "invalid_request", f"inputs.{name}: shape must be a list of at most 8 non-negative integers")
    size = 1
    for d in shape:
        size *= d
        if size > MAX_ELEMENTS:
            raise ApiError(422, "invalid_request", f"inputs.{name}: shape {shape[:8]} holds more than {MAX_ELEMENTS} elements")


def tensor_from_raw(name: str, datatype: str, shape: list[int], raw: bytes) -> Tensor:
    check_shape(name, shape)
    if datatype == "BYTES":
        return Tensor(name, datatype, shape, np.array(decode_bytes(raw), dtype=object))
    if datatype not in DTYPES:
        raise ApiError(422, "invalid_request", f"inputs.{name}: unsupported datatype {datatype!r}")
    dtype = np.dtype(DTYPES[datatype]).newbyteorder("<")
    if len(raw) != int(np.prod(shape)) * dtype.itemsize:
        raise ApiError(422, "invalid_request", f"inputs.{name}: {len(raw)} bytes of data for shape {shape} of {datatype}")
    return Tensor(name, datatype, shape, np.frombuffer(raw, dtype=dtype).reshape(shape))


def tensor_from_list(name: str, datatype: str, shape: list[int], data: Any) -> Tensor:
    check_shape(name, shape)
    if datatype == "BYTES":
        items = data if isinstance(data, list) else [data]
        if not all(isinstance(d, (str, bytes)) for d in items):
            raise ApiError(422, "invalid_request", f"inputs.{name}: BYTES data is a list of strings")
        if len(items) != int(np.prod(shape)):
            raise ApiError(422, "invalid_request", f"inputs.{name}: {len(items)} strings for shape {shape}")
        return Tensor(name, datatype, shape, np.array([d.encode() if isinstance(d, str) else d for d in items], dtype=object))
    if datatype not in DTYPES:
        raise ApiError(422, "invalid_request", f"inputs.{name}: unsupported datatype {datatype!r}")
    try:
        arr: np.ndarray = np.asarray(data, dtype=DTYPES[datatype]).reshape(shape)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ApiError(422, "invalid_request", f"inputs.{name}: data does not fit shape {shape} of {datatype} ({exc})") from exc
    return Tensor(name, datatype, shape, arr)


def tensor_bytes(t: Tensor) -> bytes:
    if t.datatype == "BYTES":
        return encode_bytes(list(t.data.reshape(-1)))
    return np.ascontiguousarray(t.data).astype(np.dtype(DTYPES[t.datatype]).newbyteorder("<"), copy=False).tobytes()


# --- models: finished jobs ----------------------------------------------------------------------------------


async def model_key(svc: Services, tenant: str, name: str) -> tuple[str, str]:
    """(job id, model key) of model ``name``: a finished job of ``tenant``, or ``latest``. 404 / 409 as REST."""
    if name == "latest":
        return await latest_model(svc, tenant)
    hit = svc.finished.get(name)
    if hit is not None and hit[0] == tenant:
        return name, hit[1]
    return name, await run_in_threadpool(finished_model, svc, jobs_dao.get(svc.settings.database_url, name), name, tenant)


async def load(svc: Services, key: str) -> TransferredModel:
    model = svc.models.peek(key)
    return model if model is not None else await run_torch(svc.models.get, key)


def image_shape(model: TransferredModel) -> tuple[int, int, int]:
    """(H, W, C) of the model's images."""
    cfg: Any = model.G[0].cfg if isinstance(model, MultiMinedGenerator) else model.G.cfg
    return cfg.img_size, cfg.img_size, cfg.channels


def classes(model: TransferredModel) -> list[int]:
    """The class labels a ``class`` input may name: those of a model mined from a one-hot conditional source."""
    if isinstance(model, MultiMinedGenerator):
        return sorted({label for _, label in model.members if label >= 0})
    return []


async def metadata(svc: Services, tenant: str, name: str) -> dict[str, Any]:
    job_id, key = await model_key(svc, tenant, name)
    model = await load(svc, key)
    h, w, c = image_shape(model)
    inputs = [{"name": "n", "datatype": "INT32", "shape": [1]}, {"name": "seed", "datatype": "INT64", "shape": [1]}]
    if classes(model):
        inputs.append({"name": "class", "datatype": "INT32", "shape": [1]})
    return {"name": job_id, "versions": ["1"], "platform": "minegan", "inputs": inputs,
            "outputs": [{"name": "images", "datatype": "UINT8", "shape": [-1, h, w, c]}, {"name": "png", "datatype": "BYTES", "shape": [-1]}]}


def _scalar(inputs: dict[str, Tensor], name: str, default: int | None, low: int, high: int) -> int | None:
    t = inputs.get(name)
    if t is None:
        return default
    if t.data.size != 1 or t.datatype not in ("INT32", "INT64", "UINT32", "UINT64", "INT16", "INT8", "UINT8", "UINT16"):
        raise ApiError(422, "invalid_request", f"inputs.{name}: one integer, shape [1], is expected (got {t.datatype} {t.shape})")
    v = int(t.data.reshape(-1)[0])
    if not low <= v <= high:
        raise ApiError(422, "invalid_request", f"inputs.{name}: {v} is outside {low}..{high}")
    return v


async def infer(svc: Services, tenant: str, name: str, inputs: list[Tensor], wanted: list[str] | None) -> tuple[str, list[Tensor]]:
    """Samples of model ``name`` as the requested outputs (all by default); returns (job id, outputs)."""
    by_name = {t.name: t for t in inputs}
    unknown = [n for n in by_name if n not in ("n", "seed", "class")]
    if unknown or "n" not in by_name:
        raise ApiError(422, "invalid_request", "inputs: 'n' (INT32 [1]) is required; 'seed' and 'class' are optional"
                                               + (f"; unknown input(s) {unknown}" if unknown else ""))
    bad = [o for o in (wanted or []) if o not in OUTPUTS]
    if bad:
        raise ApiError(422, "invalid_request", f"outputs: unknown {bad}; this model has {list(OUTPUTS)}")
    n = _scalar(by_name, "n", None, 1, svc.settings.sample_max_n)
    seed = _scalar(by_name, "seed", 0, 0, 2**31 - 1)
    job_id, key = await model_key(svc, tenant, name)
    model = await load(svc, key)
    assert n is not None and seed is not None
    t0 = time.perf_counter()
    if "class" in by_name:
        labels = classes(model)
        cls = _scalar(by_name, "class", None, -(2**31), 2**31 - 1)
        if cls not in labels:
            raise ApiError(422, "invalid_request", f"inputs.class: {cls} is not a class of this model"
                                                   + (f" ({labels})" if labels else " (its source is not conditional)"))
        assert isinstance(model, MultiMinedGenerator)  # only such a model has classes
        images = await run_torch(_sample_class, model, n, seed, cls)
    else:
        images = await sample_on_loop(model, n, seed, svc.batcher)  # == model.sample(n, seed), as GET /jobs/{id}/sample
    pixels = to_uint8(images)  # [n, H, W, C]
    SAMPLES.labels("oip").observe(time.perf_counter() - t0)
    out = []
    for o in wanted or list(OUTPUTS):
        if o == "images":
            out.append(Tensor("images", "UINT8", list(pixels.shape), pixels))
        else:
            out.append(Tensor("png", "BYTES", [n], np.array([png_bytes(p) for p in pixels], dtype=object)))
    return job_id, out


@torch.no_grad()
def _sample_class(model: MultiMinedGenerator, n: int, seed: int, cls: int) -> torch.Tensor:
    """n images of one class of a conditionally mined family: that class's member, u ~ N(0, I) from ``seed``."""
    member = next(i for i, (_, label) in enumerate(model.members) if label == cls)
    u = torch.randn(n, model.z_dim, generator=torch.Generator().manual_seed(seed))
    device = next(model.G.parameters()).device
    return member_images(model.G, model.M, model.members, member, u.to(device)).cpu()
