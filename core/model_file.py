"""A finished run's model: the generator(s) and miner(s) a job publishes (``model.pt``), and where it runs.

``model.pt`` holds the weights only (``core.checkpoints``' pickle-free format): one generator and its miner (a
:class:`core.mining.MinedGenerator`, with the colour map of Eq. MK / BAND if fitted), or a family of generators with a
miner each and the selector's weights (a :class:`core.multi.MultiMinedGenerator`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core import checkpoints
from core.colour import ColourMap
from core.mining import MinedGenerator
from core.multi import MultiMinedGenerator
from core.nets import GENERATORS, JointMiner, Miner

MODEL_FORMAT = "minegan-model/1"
TransferredModel = MinedGenerator | MultiMinedGenerator


def save_model(model: TransferredModel, path: Path, meta: dict[str, Any]) -> Path:
    obj: dict[str, Any] = {"format": MODEL_FORMAT, "meta": json.dumps(meta)}
    if isinstance(model, MultiMinedGenerator):
        obj |= {"generators": [checkpoints.pack_module("generator", g) for g in model.G],
                "miners": [checkpoints.pack_module("miner", m) for m in model.M],
                "family": json.dumps({"members": model.members, "pi": model.pi, "names": model.member_names})}
    else:
        kind = "joint-miner" if isinstance(model.M, JointMiner) else "miner"
        obj |= {"generator": checkpoints.pack_module("generator", model.G),
                "miner": checkpoints.pack_module(kind, model.M) if model.M is not None else {}}
        if model.colour is not None:
            obj["colour"] = json.dumps(model.colour.as_json())
    return checkpoints.save(obj, path)


def pick_device(setting: str) -> str:
    """A device setting (``MINEGAN_DEVICE``, ``MINEGAN_SERVE_DEVICE``): ``auto`` is cuda if available, else cpu."""
    if setting != "auto":
        return setting
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(path: str | Path | bytes) -> tuple[TransferredModel, dict[str, Any]]:
    """The transferred generator(s) and miner(s) of a finished run, from ``model.pt`` (weights only)."""
    obj = checkpoints.load(path)
    if obj.get("format") != MODEL_FORMAT:
        raise checkpoints.CheckpointError("not a MineGAN model file")
    meta = json.loads(obj["meta"])
    if "family" in obj:
        fam = json.loads(obj["family"])
        Gs = nn.ModuleList(checkpoints.unpack_module(g) for g in obj["generators"])
        Ms = nn.ModuleList(checkpoints.unpack_module(m) for m in obj["miners"])
        return MultiMinedGenerator(Gs.eval(), Ms.eval(), fam["members"], fam["pi"], fam["names"]), meta
    G = checkpoints.unpack_module(obj["generator"])
    M = checkpoints.unpack_module(obj["miner"]) if obj.get("miner") else None
    assert isinstance(G, GENERATORS) and (M is None or isinstance(M, (Miner, JointMiner)))
    try:
        colour = ColourMap.from_json(json.loads(obj["colour"])) if obj.get("colour") else None
    except (TypeError, ValueError, KeyError) as exc:
        raise checkpoints.CheckpointError(f"the model's colour map is malformed: {exc}") from exc
    if colour is not None and colour.W.shape[0] != G.cfg.channels:
        raise checkpoints.CheckpointError("the model's colour map does not fit its generator's channels")
    return MinedGenerator(G.eval(), M.eval() if M is not None else None, colour), meta


