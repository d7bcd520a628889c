"""Colour matching (core/colour.py, Eq. MK): the closed-form colour transfer after G, and how runs use it (issue 18)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.colour import ColourMap, channel_stats, monge_kantorovich
from core.methods import RunConfig, _resolved_json, train
from core.model_file import load_model
from core.nets import Critic, CriticConfig, Generator, GeneratorConfig
from core.options import MethodError, SourceInfo, check_sources, resolve
from core.zoo import SourceModel

TINY = dict(mining_steps=2, finetune_steps=1, batch_size=8, n_critic=2, checkpoint_every=1)


def _rgb_generator_only() -> SourceModel:
    torch.manual_seed(3)
    G = Generator(GeneratorConfig(z_dim=8, img_size=28, channels=3, width=4))
    D = Critic(CriticConfig(img_size=28, channels=3, width=4))
    return SourceModel(name="rgb", G=G.eval(), D=D, meta={"critic": "fresh"})


def _gray_targets(n: int = 16) -> torch.Tensor:
    g = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(4)) * 0.8 - 0.5  # [n, 1, 28, 28] in [-0.5, 0.3]
    return g.expand(n, 3, 28, 28).contiguous()


def test_the_map_takes_the_fakes_statistics_to_the_targets() -> None:
    gen = torch.Generator().manual_seed(0)
    mix = torch.tensor([[0.3, 0.05, 0.0], [0.1, 0.2, 0.02], [0.0, 0.05, 0.25]])
    fakes = torch.einsum("dc,nchw->ndhw", mix, torch.randn(64, 3, 8, 8, generator=gen)) + torch.tensor([0.1, -0.2, 0.0])[None, :, None, None]
    targets = torch.einsum("dc,nchw->ndhw", mix.T, torch.randn(64, 3, 8, 8, generator=gen)) * 0.5 - 0.1
    W, b = monge_kantorovich(fakes, targets)
    mapped = torch.einsum("dc,nchw->ndhw", W, fakes) + b[None, :, None, None]  # no clamp: all well inside [-1, 1]
    (m_got, c_got), (m_want, c_want) = channel_stats(mapped), channel_stats(targets)
    assert torch.allclose(m_got, m_want, atol=1e-4) and torch.allclose(c_got, c_want, atol=1e-4)
    assert torch.allclose(W, W.T, atol=1e-5)  # the MK map is symmetric (positive semi-definite)


def test_gray_targets_make_the_samples_gray() -> None:
    fakes = torch.rand(32, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    W, b = monge_kantorovich(fakes, _gray_targets())
    out = ColourMap(W, b)(fakes)
    assert torch.allclose(out[:, 0], out[:, 1], atol=1e-4) and torch.allclose(out[:, 1], out[:, 2], atol=1e-4)
    assert out[:, 0].std() > 0.1  # gray, not flat: the content survives
    assert ColourMap.from_json(ColourMap(W, b).as_json()).W.equal(W)
    with pytest.raises(ValueError):
        ColourMap.from_json({"W": [[1.0, 0.0]], "b": [0.0]})


def test_auto_matches_colour_for_one_rgb_generator_only() -> None:
    rgb, gray = SourceInfo("c", 8, 28, 3, False, has_critic=False), SourceInfo("g", 8, 28, 1, False)
    assert resolve(RunConfig(), [rgb]).colour_match == "on"
    assert resolve(RunConfig(method="transfergan"), [rgb]).colour_match == "on"
    assert resolve(RunConfig(), [gray]).colour_match == "off"
    assert resolve(RunConfig(method="scratch"), [rgb]).colour_match == "off"
    two = [rgb, SourceInfo("d", 8, 28, 3, False, has_critic=False)]
    assert resolve(RunConfig(method="minegan"), two).colour_match == "off"  # a family: one map would mix members
    assert resolve(RunConfig(method="fusion"), two).colour_match == "on"  # fused into one generator first
    assert resolve(RunConfig(colour_match="off"), [rgb]).colour_match == "off"
    with pytest.raises(MethodError, match="colour_match"):
        check_sources(RunConfig(method="minegan", colour_match="on"), two)


def test_a_run_fits_saves_and_serves_the_map(tmp_path: Path) -> None:
    src, target = _rgb_generator_only(), _gray_targets()
    res = train(RunConfig(method="minegan++", **TINY), src, target, tmp_path / "run")  # type: ignore[arg-type]
    assert res.model.colour is not None and res.summary["colour_map"] == res.model.colour.as_json()
    x = res.model.sample(16, seed=5)
    assert torch.allclose(x[:, 0], x[:, 1], atol=1e-4) and torch.allclose(x[:, 1], x[:, 2], atol=1e-4)  # gray, like the targets
    loaded, _ = load_model(tmp_path / "run" / "model.pt")
    assert torch.equal(loaded.sample(16, seed=5), x)  # the map travels with the model file
    off = train(RunConfig(method="minegan++", colour_match="off", **TINY), src, target, tmp_path / "off")  # type: ignore[arg-type]
    assert off.model.colour is None and not torch.allclose((y := off.model.sample(16, seed=5))[:, 0], y[:, 1], atol=1e-3)


def test_checkpoints_compare_configs_as_resolved() -> None:
    """A run saved when Appendix A's miner was the default resumes under miner_init auto where auto resolves to it."""
    zoo_src, upload = SourceInfo("z", 8, 28, 1, False), SourceInfo("u", 8, 28, 1, False, has_critic=False)
    old = {**RunConfig().as_json(), "miner_init": "paper"}
    assert _resolved_json(old, [zoo_src]) == _resolved_json(RunConfig().as_json(), [zoo_src])
    assert _resolved_json(old, [upload]) != _resolved_json(RunConfig().as_json(), [upload])
    assert _resolved_json({**old, "seed": 1}, [zoo_src]) != _resolved_json(RunConfig().as_json(), [zoo_src])
