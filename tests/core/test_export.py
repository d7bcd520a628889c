"""A finished run's sampler leaves the service (core/export.py): the .pt2 gives GET /sample's images exactly, the ONNX
file under onnxruntime to one grey level, the .pt2 uploaded back as a source draws them again, and a Triton
repository holds a config Triton parses."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from core import checkpoints, export, zoo
from core.methods import RunConfig, train
from core.mining import MinedGenerator
from core.model_file import load_model
from tests.architectures import ARCHS, write


def _run(tmp_path: Path, arch_index: int, method: str = "minegan++") -> object:
    arch = ARCHS[arch_index]
    family, data = write("pt2 dynamic", arch, arch.make())
    checkpoints.save(zoo.source_from_state_dicts("src", family, arch.config, data), tmp_path / "src.pt")
    target = torch.rand(8, arch.config["channels"], 16, 16) * 2 - 1
    cfg = RunConfig(method=method, mining_steps=1, finetune_steps=1, batch_size=4, critic_warmup=0, n_critic=1,
                    colour_match="off" if arch.config.get("n_classes") else "on",  # the colour map is part of the sampler too
                    checkpoint_every=10**9)
    logging.disable(logging.INFO)
    try:
        train(cfg, zoo.load_source_file(tmp_path / "src.pt"), target, tmp_path / "run")
    finally:
        logging.disable(logging.NOTSET)
    return load_model(tmp_path / "run" / "model.pt")[0]


def _latents(model: object, n: int, seed: int) -> tuple[torch.Tensor, ...]:
    """The inputs of sample(n, seed), as core/export.py documents them."""
    g = torch.Generator().manual_seed(seed)
    if hasattr(model, "pi"):
        member = torch.multinomial(torch.tensor(model.pi, dtype=torch.float64), n, replacement=True, generator=g)
        return torch.randn(n, model.z_dim, generator=g), member  # type: ignore[attr-defined]
    return (torch.cat([torch.randn(min(256, n - i), model.z_dim, generator=g) for i in range(0, n, 256)]),)  # type: ignore[attr-defined]


def _pixels(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy().astype(int)


@pytest.mark.parametrize("arch_index", [0, 4], ids=["one source", "a family (class-conditional)"])
def test_exported_sampler_draws_the_jobs_images(tmp_path: Path, arch_index: int) -> None:
    import onnxruntime

    model = _run(tmp_path, arch_index)
    want = _pixels(model.sample(300, seed=7))  # type: ignore[attr-defined]
    ins = _latents(model, 300, 7)
    program = torch.export.load(str(export.export(model, "pt2", tmp_path / "m.pt2"))).module()
    assert np.abs(_pixels(program(*ins)) - want).max() == 0
    session = onnxruntime.InferenceSession(str(export.export(model, "onnx", tmp_path / "m.onnx")))
    (got,) = session.run(None, {i.name: x.numpy() for i, x in zip(session.get_inputs(), ins)})
    assert np.abs(_pixels(torch.from_numpy(got)) - want).max() <= 1  # float rounding at a grey-level boundary


def test_an_exported_sampler_uploaded_back_draws_the_same_images(tmp_path: Path) -> None:
    model = _run(tmp_path, 3)  # the ResNet with BatchNorm and spectral norm (StyleGAN2-type noise inputs draw fresh noise)
    data = export.export_bytes(model, "pt2")
    cfg = {"z_dim": model.z_dim, "img_size": 16, "channels": 3}  # type: ignore[attr-defined]
    checkpoints.save(zoo.source_from_state_dicts("again", "pt2", cfg, data), tmp_path / "again.pt")
    again = MinedGenerator(zoo.load_source_file(tmp_path / "again.pt").G.eval(), None)
    assert torch.equal(again.sample(40, seed=3), model.sample(40, seed=3))  # type: ignore[attr-defined]


def test_triton_repository_config_parses_as_tritons_model_config(tmp_path: Path) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    model = _run(tmp_path, 0, method="mine")
    folder = export.triton_repository(model, "onnx", tmp_path / "repo")
    config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size > 0
    assert [i.name for i in config.input] == ["u"] and list(config.input[0].dims) == [model.z_dim]  # type: ignore[attr-defined]
    assert list(config.output[0].dims) == [3, 16, 16]
    assert (folder / "1" / "model.onnx").stat().st_size > 0
    with pytest.raises(export.ExportError, match="onnx"):
        export.triton_repository(model, "pt2", tmp_path / "repo2")
