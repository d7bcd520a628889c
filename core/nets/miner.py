"""Miner networks (MineGAN++ Sec. 3.2 and 4.1, Appendix A).

* :class:`Miner` — M: u -> z, a small MLP placed in front of a frozen generator. For MNIST the paper
  uses two fully connected layers of width |z| (=128), weights initialised N(0, 0.01), trained with Adam
  lr 4e-4, betas (0.5, 0.999), batch 64. Depth and width are configurable (the paper's larger GANs use
  three or four layers).
* :class:`ClassEmbeddingMiner` — M^c: u -> e, which maps noise to a point in a generator's class
  embedding space (BigGAN-style conditioning, Sec. 4.1): with no target labels the miner learns which
  distribution over class embeddings represents the target.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from core.options import DEFAULTS


@dataclass(frozen=True)
class MinerConfig:
    z_dim: int = 128  # |z|: input u and output z have the generator's latent size
    hidden: int = 128  # width of hidden layers (Appendix A, MNIST: |z|)
    layers: int = DEFAULTS.miner_layers  # fully connected layers (MNIST: 2)
    init_std: float = DEFAULTS.miner_init_std  # N(0, 0.01) initialisation (Appendix A)
    out_dim: int = 0  # 0: same as z_dim; M^c sets it to the embedding size
    residual: bool = False  # True: M(u) = u + MLP(u), so the miner starts as the identity (the source's own prior)


def _mlp(n_in: int, hidden: int, n_out: int, layers: int, init_std: float) -> nn.Sequential:
    dims = [n_in] + [hidden] * (layers - 1) + [n_out]
    mods: list[nn.Module] = []
    for i in range(layers):
        lin = nn.Linear(dims[i], dims[i + 1])
        nn.init.normal_(lin.weight, 0.0, init_std)
        nn.init.zeros_(lin.bias)
        mods.append(lin)
        if i < layers - 1:
            mods.append(nn.ReLU(True))
    return nn.Sequential(*mods)


class Miner(nn.Module):
    """M(u): the targeted prior p_z^T(z) is the push-forward of u ~ N(0, I) through M (Eq. 3-4)."""

    def __init__(self, cfg: MinerConfig) -> None:
        super().__init__()
        if cfg.layers < 1:
            raise ValueError("a miner needs at least one layer")
        self.cfg = cfg
        self.net = _mlp(cfg.z_dim, cfg.hidden, cfg.out_dim or cfg.z_dim, cfg.layers, cfg.init_std)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        z = self.net(u)  # [N, z_dim] -> [N, z_dim]
        return u + z if self.cfg.residual else z


class ClassEmbeddingMiner(nn.Module):
    """M^c(u): noise -> class embedding (Sec. 4.1), used beside M^z for embedding-conditioned G."""

    def __init__(self, cfg: MinerConfig) -> None:
        super().__init__()
        if not cfg.out_dim:
            raise ValueError("ClassEmbeddingMiner needs out_dim = the generator's embedding size")
        self.cfg = cfg
        self.net = _mlp(cfg.z_dim, cfg.hidden, cfg.out_dim, cfg.layers, cfg.init_std)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.net(u)  # [N, z_dim] -> [N, embed_dim]


@dataclass(frozen=True)
class JointMinerConfig:
    z_dim: int = 128
    hidden: int = 128
    layers: int = DEFAULTS.miner_layers
    init_std: float = DEFAULTS.miner_init_std
    embed_dim: int = 16  # the generator's class-embedding size


class JointMiner(nn.Module):
    """M^z and M^c side by side (Sec. 4.1): u -> (z, e), giving G(M^z(u), M^c(u)) for an embedding-
    conditioned generator. ``forward`` returns z; ``embedding`` returns e."""

    def __init__(self, cfg: JointMinerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.mz = Miner(MinerConfig(cfg.z_dim, cfg.hidden, cfg.layers, cfg.init_std))
        self.mc = ClassEmbeddingMiner(MinerConfig(cfg.z_dim, cfg.hidden, cfg.layers, cfg.init_std, out_dim=cfg.embed_dim))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.mz(u)  # type: ignore[no-any-return]  # M^z(u): [N, z_dim]

    def embedding(self, u: torch.Tensor) -> torch.Tensor:
        return self.mc(u)  # type: ignore[no-any-return]  # M^c(u): [N, embed_dim]


def generate(G: nn.Module, M: nn.Module | None, u: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
    """Latents to images, the one place training and sampling both go through: x = G(M(u)) (Eq. 3-4),
    G(M^z(u), M^c(u)) for an embedding-conditioned G (Sec. 4.1), G(M(u), c) for a one-hot conditional G given
    class labels c [N], and G(u) without a miner. u: [N, z_dim] -> [N, C, H, W]."""
    z = M(u) if M is not None else u
    if isinstance(M, JointMiner):
        return G(z, embedding=M.embedding(u))  # type: ignore[no-any-return]
    return G(z, c) if c is not None else G(z)  # type: ignore[no-any-return]
