from __future__ import annotations

import pytest
import torch

from core.nets import Critic, CriticConfig, Generator, GeneratorConfig
from core.zoo import SourceModel


@pytest.fixture(autouse=True)
def _seed_and_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    monkeypatch.setenv("MINEGAN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("MINEGAN_MODELS_DIR", str(tmp_path_factory.getbasetemp() / "user-models"))


def tiny_source(width: int = 4, z_dim: int = 8, n_classes: int = 0, name: str = "tiny") -> SourceModel:
    G = Generator(GeneratorConfig(z_dim=z_dim, img_size=28, channels=1, width=width, n_classes=n_classes))
    D = Critic(CriticConfig(img_size=28, channels=1, width=width, n_classes=n_classes))
    return SourceModel(name=name, G=G.eval(), D=D, meta={})


@pytest.fixture
def source() -> SourceModel:
    return tiny_source()


def blobs_target(n: int = 16) -> torch.Tensor:
    """A small target set: bright rectangles, clearly not what a random G produces. [n, 1, 28, 28]"""
    x = -torch.ones(n, 1, 28, 28)
    for i in range(n):
        r, c = 4 + i % 8, 6 + i % 5
        x[i, :, r : r + 12, c : c + 10] = 1.0
    return x


def stop_after(n: int):  # type: ignore[no-untyped-def]
    """A ``should_stop`` that lets ``n`` steps run, then asks the loop to stop."""
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > n

    return stop


@pytest.fixture
def target() -> torch.Tensor:
    return blobs_target(16)
