"""Band matching (core/colour.py, Eq. BAND): a band limit after G, its size fitted to the targets' power spectrum (issue 18)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from core.colour import ColourMap, band_limit, fit_band, fit_colour_map, log_spectrum
from core.methods import RunConfig, train
from core.model_file import load_model
from core.nets import Critic, CriticConfig, Generator, GeneratorConfig
from core.options import MethodError, SourceInfo, check_sources, resolve
from core.zoo import SourceModel

TINY = dict(mining_steps=2, finetune_steps=1, batch_size=8, n_critic=2, checkpoint_every=1)


def _sharp(n: int = 64, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Images with detail at every frequency: smooth blobs plus pixel noise, [n, 3, size, size] in [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    blobs = F.interpolate(torch.randn(n, 3, 4, 4, generator=gen), size=(size, size), mode="bilinear", align_corners=False)
    return (0.5 * blobs + 0.3 * torch.randn(n, 3, size, size, generator=gen)).clamp(-1, 1)


def _upscaled(n: int = 64, size: int = 32, native: int = 12, seed: int = 1) -> torch.Tensor:
    """What an upload of small images becomes: sharp images at ``native`` px, upscaled to ``size`` (no detail above it)."""
    small = F.interpolate(_sharp(n, size, seed), size=(native, native), mode="area")
    return F.interpolate(small, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def test_the_band_limit_is_differentiable_and_the_identity_at_full_size() -> None:
    x = _sharp(4).requires_grad_(True)
    assert band_limit(x, 0) is x and band_limit(x, 32) is x
    y = band_limit(x, 12)
    assert y.shape == x.shape and not torch.allclose(y, x, atol=1e-2)
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # it removes high frequencies: the top half of the spectrum loses most of its power, the lowest band keeps most
    before, after = log_spectrum(x), log_spectrum(y)
    assert (before[-8:] - after[-8:]).mean() > 2.0 and (before[:3] - after[:3]).abs().mean() < 0.5


def test_the_fit_finds_the_targets_band_and_none_for_sharp_targets() -> None:
    fakes = _sharp(seed=2)
    assert fit_band(fakes, _sharp(seed=3)) == 0  # targets as sharp as the fakes: no band limit
    s = fit_band(fakes, _upscaled(native=12))
    assert 8 <= s <= 18, s  # near the targets' native 12 px
    assert fit_band(fakes, _upscaled(native=20)) > s  # sharper targets, a wider band


def test_the_map_carries_its_band_and_refuses_a_malformed_one() -> None:
    m = ColourMap(torch.eye(3), torch.zeros(3), band=12)
    again = ColourMap.from_json(m.as_json())
    x = _sharp(4)
    assert again.band == 12 and torch.equal(again(x), m(x)) and torch.equal(m(x), band_limit(x.clamp(-1, 1), 12))
    assert ColourMap.from_json({"W": [[1.0]], "b": [0.0]}).band == 0  # maps saved before band matching
    for bad in (-1, 1.5, "12", True):
        with pytest.raises(ValueError, match="band"):
            ColourMap.from_json({"W": [[1.0]], "b": [0.0], "band": bad})


def test_a_fit_without_colour_keeps_the_colours() -> None:
    G = Generator(GeneratorConfig(z_dim=8, img_size=32, channels=3, width=4)).eval()
    m = fit_colour_map(lambda u: G(u), 8, _upscaled(), colour=False, band=True)
    assert torch.equal(m.W, torch.eye(3)) and torch.equal(m.b, torch.zeros(3))


def test_auto_by_default_follows_colour_matching_for_the_mining_methods_it_helped() -> None:
    rgb, gray = SourceInfo("c", 8, 28, 3, False, has_critic=False), SourceInfo("g", 8, 28, 1, False)
    auto = RunConfig(band_match="auto")
    assert RunConfig().band_match == "auto"
    for method in ("mine", "minegan", "minegan++"):  # measured on the faces (docs/faces.md)
        assert resolve(replace(auto, method=method), [rgb]).band_match == "on"
    for method in ("transfergan", "freezed", "fusion"):  # worse, no better, not measured
        assert resolve(replace(auto, method=method), [rgb]).band_match == "off"
    assert resolve(replace(auto, method="transfergan", band_match="on"), [rgb]).band_match == "on"  # asked for, it is on
    assert resolve(auto, [gray]).band_match == "off"
    assert resolve(replace(auto, method="scratch"), [rgb]).band_match == "off"
    assert resolve(replace(auto, colour_match="off"), [rgb]).band_match == "off"
    assert resolve(RunConfig(colour_match="off", band_match="on"), [rgb]).band_match == "on"
    two = [rgb, SourceInfo("d", 8, 28, 3, False, has_critic=False)]
    assert resolve(replace(auto, method="minegan"), two).band_match == "off"
    with pytest.raises(MethodError, match="band_match"):
        check_sources(RunConfig(method="minegan", band_match="on"), two)


def test_a_run_on_upscaled_targets_fits_saves_and_serves_the_band(tmp_path: Path) -> None:
    torch.manual_seed(3)
    G = Generator(GeneratorConfig(z_dim=8, img_size=32, channels=3, width=4))
    src = SourceModel(name="rgb", G=G.eval(), D=Critic(CriticConfig(img_size=32, channels=3, width=4)), meta={"critic": "fresh"})
    res = train(RunConfig(method="minegan++", band_match="on", **TINY), src, _upscaled(32), tmp_path / "run")  # type: ignore[arg-type]
    assert res.model.colour is not None and 0 < res.model.colour.band < 32
    assert res.summary["colour_map"]["band"] == res.model.colour.band
    loaded, _ = load_model(tmp_path / "run" / "model.pt")
    assert torch.equal(loaded.sample(8, seed=5), res.model.sample(8, seed=5))  # the band travels with the model file
    off = train(RunConfig(method="minegan++", band_match="off", **TINY), src, _upscaled(32), tmp_path / "off")  # type: ignore[arg-type]
    assert off.model.colour is not None and off.model.colour.band == 0
