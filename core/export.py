"""A finished run's whole sampler as one self-contained file: ``.pt2`` (torch.export) or ``.onnx``, optionally in a
Triton model repository.

The file maps latents to the images ``GET /jobs/{id}/sample`` draws:

* one source: ``u`` [N, z_dim] float32 ~ N(0, I) -> ``images`` [N, C, H, W] float32 in [-1, 1], x = colour(G(M(u)))
  (the miner M, the generator G and the fitted colour and band map, whichever the run has);
* a family (several sources, or the classes of a conditional one): ``u`` and ``member`` [N] int64, the index of the
  member that draws each row (``members`` in the sidecar JSON), x_j = G_member(M_member(u_j)).

How a seed maps to latents (``sample(n, seed)``, ``?seed=``): ``g = torch.Generator().manual_seed(seed)``; for one
source, u is ``torch.randn(min(256, n - i), z_dim, generator=g)`` for i = 0, 256, 512, ... concatenated; for a
family, first ``member = torch.multinomial(torch.tensor(pi, dtype=torch.float64), n, replacement=True,
generator=g)``, then ``u = torch.randn(n, z_dim, generator=g)``. PNGs are ``round((x + 1) * 127.5)`` as uint8.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.formats import Batched, Pt2Program
from core.mining import MinedGenerator
from core.multi import MultiMinedGenerator, member_images
from core.nets import generate

FORMATS = ("pt2", "onnx")
MAX_BATCH = 4096  # the largest batch the exported dynamic dimension declares


class ExportError(ValueError):
    """The model cannot be written in the asked format; the message says why and what to use instead."""

    status, code = 422, "export_failed"


class Sampler(nn.Module):
    """u [N, z_dim] -> images [N, C, H, W] in [-1, 1]: x = colour(G(M(u))), as ``MinedGenerator.decode``."""

    def __init__(self, model: MinedGenerator) -> None:
        super().__init__()
        self.G, self.M, self.colour = model.G, model.M, model.colour

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        x = generate(self.G, self.M, u)
        return self.colour(x) if self.colour is not None else x  # type: ignore[no-any-return]


class FamilySampler(nn.Module):
    """(u [N, z_dim], member [N]) -> images: every member draws every row and each row keeps its member's image
    (K times the work of one member, but one static graph that any runtime runs)."""

    def __init__(self, model: MultiMinedGenerator) -> None:
        super().__init__()
        self.G, self.M, self.members = model.G, model.M, model.members

    def forward(self, u: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(())
        for i in range(len(self.members)):
            x = member_images(self.G, self.M, self.members, i, u)
            keep = (member == i).to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
            out = out + keep * x
        return out


def sampler_of(model: Any) -> tuple[nn.Module, tuple[torch.Tensor, ...], list[str]]:
    """The sampler module of a loaded model, example inputs of batch 2, and the input names."""
    if isinstance(model, MultiMinedGenerator):
        return FamilySampler(model).eval(), (torch.randn(2, model.z_dim), torch.zeros(2, dtype=torch.long)), ["u", "member"]
    if isinstance(model, MinedGenerator):
        return Sampler(model).eval(), (torch.randn(2, model.z_dim),), ["u"]
    raise ExportError(f"a {type(model).__name__} cannot be exported")


def batch_range(module: nn.Module) -> tuple[int, int]:
    """The batch sizes every part of ``module`` takes: graph sources read from files may declare a range or one size."""
    lo, hi = 1, MAX_BATCH
    for m in module.modules():
        if isinstance(m, Pt2Program):
            lo, hi = max(lo, m.min_batch), min(hi, m.max_batch)
        elif isinstance(m, Batched):
            lo, hi = max(lo, m.lo), min(hi, m.hi)
    if lo > hi:
        raise ExportError(f"the generator's parts take different batch sizes ({lo} and {hi}); upload it with a dynamic batch")
    return lo, hi


def describe(model: Any) -> dict[str, Any]:
    """What a caller needs beside the file: inputs, outputs, and for a family its members and pi."""
    info: dict[str, Any] = {"inputs": {"u": ["N", model.z_dim]}, "output": "images [N, C, H, W] float32 in [-1, 1]",
                            "latents": "u ~ N(0, I); sample(n, seed) draws them as core/export.py says"}
    if isinstance(model, MultiMinedGenerator):
        info["inputs"]["member"] = ["N"]
        info["members"], info["pi"] = list(model.member_names), list(model.pi)
    return info


def export(model: Any, fmt: str, path: Path) -> Path:
    """Write ``model``'s sampler to ``path`` as ``fmt`` (pt2 or onnx), with a dynamic batch dimension."""
    if fmt not in FORMATS:
        raise ExportError(f"format: {fmt!r} is not one of {', '.join(FORMATS)}")
    module, example, names = sampler_of(model)
    lo, hi = batch_range(module)
    if lo == hi:  # a source exported at a fixed batch: so is the sampler
        example = tuple(x[:1].expand(lo, *x.shape[1:]).contiguous() for x in example)
        shapes: Any = None
    else:
        example = tuple(x[:1].expand(max(lo, 2), *x.shape[1:]).contiguous() for x in example)
        shapes = {k: {0: torch.export.Dim("n", min=lo, max=hi)} for k in names}
    was = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fmt == "pt2":
                ep = torch.export.export(module, example, dynamic_shapes=shapes)
                torch.export.save(ep, str(path))
            else:
                torch.onnx.export(module, example, str(path), input_names=names, output_names=["images"], dynamic_shapes=shapes,
                                  external_data=False)
    except Exception as exc:  # noqa: BLE001 - the exporter's refusal, named
        raise ExportError(f"the sampler could not be exported as {fmt}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                          + ("; try format pt2" if fmt == "onnx" else "")) from exc
    finally:
        for p, r in zip(module.parameters(), was):
            p.requires_grad_(r)
    return path


def export_bytes(model: Any, fmt: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return export(model, fmt, Path(tmp) / f"model.{fmt}").read_bytes()


def triton_repository(model: Any, fmt: str, root: Path, name: str = "minegan") -> Path:
    """A Triton model repository ``root/name/{config.pbtxt, 1/model.onnx}`` for the ONNX Runtime backend
    (``platform: "onnxruntime_onnx"``); batching is the file's first dimension (``max_batch_size``)."""
    if fmt != "onnx":
        raise ExportError("a Triton repository holds the ONNX file (ONNX Runtime backend): use format onnx")
    folder = root / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    export(model, "onnx", folder / "1" / "model.onnx")
    cfg: Any = (model.G[0] if isinstance(model, MultiMinedGenerator) else model.G).cfg
    inputs = [f'  {{ name: "u", data_type: TYPE_FP32, dims: [ {model.z_dim} ] }}']
    if isinstance(model, MultiMinedGenerator):
        inputs.append('  { name: "member", data_type: TYPE_INT64, dims: [ 1 ], reshape: { shape: [ ] } }')
    text = "\n".join([
        f'name: "{name}"', 'platform: "onnxruntime_onnx"', "max_batch_size: 256",
        "input [", ",\n".join(inputs), "]",
        "output [", f'  {{ name: "images", data_type: TYPE_FP32, dims: [ {cfg.channels}, {cfg.img_size}, {cfg.img_size} ] }}', "]",
        "dynamic_batching { }", ""])
    (folder / "config.pbtxt").write_text(text)
    (folder / "minegan.json").write_text(json.dumps(describe(model), indent=2))
    return folder
