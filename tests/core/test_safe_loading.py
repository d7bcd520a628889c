"""Model files are loaded with ``weights_only=True``: a file that needs pickled code is refused, and the
code in it never runs -- in the engine, in the source registry, and in the sampling cache."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import pytest
import torch

from core import checkpoints
from core.checkpoints import CheckpointError
from core.model_file import load_model
from store import sources as registry
from store.blobs import LocalBlobStore


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def _evil_files(marker: Path) -> list[bytes]:
    torch_file = io.BytesIO()
    torch.save({"format": "minegan-source", "G": _Evil(str(marker))}, torch_file)  # a torch zip with a code-running pickle
    return [torch_file.getvalue(), pickle.dumps({"G": _Evil(str(marker))})]


def test_code_in_a_model_file_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for data in _evil_files(marker):
        with pytest.raises(CheckpointError, match="refused"):
            checkpoints.load(data)
        with pytest.raises(CheckpointError):
            load_model(data)
        with pytest.raises(CheckpointError):
            registry.register(LocalBlobStore(tmp_path / "blobs"), "t", "evil", data, origin="test")
    assert not marker.exists()
    assert LocalBlobStore(tmp_path / "blobs").list("models/") == []  # nothing was stored


def test_plain_weights_round_trip(tmp_path: Path) -> None:
    obj = {"format": "x", "w": torch.arange(4.0), "cfg": {"a": 1}}
    back = checkpoints.load(checkpoints.to_bytes(obj))
    assert torch.equal(back["w"], obj["w"]) and back["cfg"] == {"a": 1}
