"""Checkpoints: dicts of state_dicts plus the config that rebuilds each module; and the state dicts users upload
(safetensors or torch files).

Nothing here pickles classes or code. Every load uses ``torch.load(..., weights_only=True)``, which
refuses files that need arbitrary unpickling; such files are reported as :class:`CheckpointError`.
Writes go to a temporary file that is renamed into place, so a killed process never leaves a
half-written checkpoint under the final name.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import struct
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from core.formats import (
    MAX_TENSOR_ELEMENTS,
    ModelFormatError,
    OnnxCritic,
    OnnxCriticConfig,
    OnnxGenerator,
    OnnxGeneratorConfig,
    Pt2Critic,
    Pt2CriticConfig,
    Pt2Generator,
    Pt2GeneratorConfig,
)
from core.nets import (
    Classifier,
    ClassifierConfig,
    Critic,
    CriticConfig,
    DCGANGenerator,
    DCGANGeneratorConfig,
    Generator,
    GeneratorConfig,
    JointMiner,
    JointMinerConfig,
    Miner,
    MinerConfig,
)


class CheckpointError(ValueError):
    """A checkpoint is unreadable, unsafe (needs pickled code) or does not match its config."""

    status, code = 422, "bad_checkpoint"


_KINDS: dict[str, tuple[type, type]] = {
    "generator": (Generator, GeneratorConfig),
    "critic": (Critic, CriticConfig),
    "miner": (Miner, MinerConfig),
    "joint-miner": (JointMiner, JointMinerConfig),
    "classifier": (Classifier, ClassifierConfig),
    "dcgan-generator": (DCGANGenerator, DCGANGeneratorConfig),
    "onnx-generator": (OnnxGenerator, OnnxGeneratorConfig),  # rebuilt from its graph bytes (a buffer): from_state
    "onnx-critic": (OnnxCritic, OnnxCriticConfig),
    "pt2-generator": (Pt2Generator, Pt2GeneratorConfig),  # rebuilt from its archive bytes (a buffer): from_state
    "pt2-critic": (Pt2Critic, Pt2CriticConfig),
}
_KIND_OF = {module_cls: kind for kind, (module_cls, _) in _KINDS.items()}

C = TypeVar("C")


def _config_from_dict(cls: type[C], data: dict[str, Any]) -> C:
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names
    if unknown:
        raise CheckpointError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    clean = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**clean)


def pack_module(kind: str, module: nn.Module) -> dict[str, Any]:
    """{"kind", "config", "state"} for one of the project's nets."""
    cfg: Any = module.cfg
    kind = _KIND_OF.get(type(module), kind)  # e.g. a DCGAN-layout generator is packed as "dcgan-generator"
    return {"kind": kind, "config": asdict(cfg), "state": {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}}


def unpack_module(packed: dict[str, Any]) -> nn.Module:
    try:
        module_cls, cfg_cls = _KINDS[packed["kind"]]
    except KeyError as exc:
        raise CheckpointError(f"unknown module kind {packed.get('kind')!r}") from exc
    try:
        cfg: Any = _config_from_dict(cfg_cls, dict(packed["config"]))
        if hasattr(module_cls, "from_state"):
            module = module_cls.from_state(cfg, packed["state"])
        else:
            module = module_cls(cfg)
            module.load_state_dict(packed["state"])
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"cannot rebuild {packed.get('kind')}: {exc}") from exc
    return module


def save(obj: dict[str, Any], path: str | Path) -> Path:
    """Atomically write ``obj`` (plain dicts, lists, numbers, strings, tensors) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def to_bytes(obj: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def load(source: str | Path | bytes) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; refuse anything that needs pickled code."""
    fh: Any = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        obj = torch.load(fh, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # UnpicklingError, RuntimeError for zip damage, ...
        first = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"refused to load checkpoint (not a plain weights file): {first}") from exc
    if not isinstance(obj, dict):
        raise CheckpointError("checkpoint must be a dict")
    return obj


# --- run checkpoints: ckpt-{step}.pt, the newest one is resumed from --------------------------------------------

_CKPT = re.compile(r"(?:^|/)ckpt-(\d+)\.pt$")


def checkpoint_name(step: int) -> str:
    """The file (and object-store key suffix) of a run's checkpoint after global step ``step``."""
    return f"ckpt-{step}.pt"


def checkpoint_step(name: str | Path) -> int | None:
    """The step of ``ckpt-{step}.pt`` (a file name, a path or a storage key), or None for any other name."""
    m = _CKPT.search(str(name))
    return int(m.group(1)) if m else None


def newest(names: Iterable[str], after: int = 0, upto: int | None = None) -> str | None:
    """The checkpoint with the highest step in (after, upto] among ``names``; other names are ignored."""
    found = [(s, n) for n in names if (s := checkpoint_step(n)) is not None and s > after and (upto is None or s <= upto)]
    return max(found)[1] if found else None


def newest_in(run_dir: Path, after: int = 0, upto: int | None = None) -> Path | None:
    name = newest((p.name for p in run_dir.glob("ckpt-*.pt")), after, upto)
    return run_dir / name if name else None


def prune(run_dir: Path, keep: Path | None = None) -> None:
    """Delete every checkpoint in ``run_dir`` but ``keep`` (the newest is all a resume needs)."""
    for old in run_dir.glob("ckpt-*.pt"):
        if old != keep and checkpoint_step(old.name) is not None:
            old.unlink(missing_ok=True)


# --- safetensors and torch state dicts ---------------------------------------------------------------------

_ST_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def is_safetensors(data: bytes) -> bool:
    return len(data) >= 10 and data[8:9] == b"{"


def read_state(data: bytes, what: str = "weights") -> dict[str, Any]:
    """A dict of tensors from a safetensors file (a JSON header plus raw tensor bytes, checked before it is read) or a
    torch file (``weights_only``)."""
    if is_safetensors(data):
        return _read_safetensors(data, what)
    return load(data)


def _read_safetensors(data: bytes, what: str) -> dict[str, torch.Tensor]:
    """Check the header against the file before any tensor is read: sizes, offsets and dtypes must agree."""
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(len(data) - 8, 100 * 2**20):
        raise ModelFormatError(f"{what}: safetensors header of {n} bytes does not fit the {len(data)}-byte file (truncated?)")
    try:
        header = json.loads(data[8 : 8 + n])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{what}: safetensors header is not JSON: {exc}") from exc
    body = len(data) - 8 - n
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        try:
            size, shape, (start, end) = _ST_DTYPES[spec["dtype"]], spec["shape"], spec["data_offsets"]
            elements = math.prod(int(d) for d in shape)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFormatError(f"{what}: tensor {name!r} has a malformed entry ({exc})") from exc
        if elements > MAX_TENSOR_ELEMENTS:
            raise ModelFormatError(f"{what}: tensor {name!r} declares {elements} elements (limit {MAX_TENSOR_ELEMENTS})")
        if not 0 <= start <= end <= body or end - start != elements * size:
            raise ModelFormatError(f"{what}: tensor {name!r} lies outside the file or its size does not match its shape (truncated?)")
    from safetensors.torch import load as load_safetensors

    try:
        return load_safetensors(data)
    except Exception as exc:  # noqa: BLE001 - any refusal of the parser is a bad file
        raise ModelFormatError(f"{what}: not a readable safetensors file: {exc}") from exc
