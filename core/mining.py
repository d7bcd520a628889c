"""Mining (MineGAN++ Sec. 3.2): learn a miner M in front of a frozen pretrained G.

With G fixed, the critic D (initialised from the source's pretrained critic) and M are trained with the
WGAN-GP objective on mined samples G(M(u)), u ~ N(0, I):

    L_D^M = E_u[D(G(M(u)))] - E_x~p_data^T[D(x)]      (Eq. 3)
    L_G^M = -E_u[D(G(M(u)))]                          (Eq. 4, minimised w.r.t. M only)

G's parameters have ``requires_grad=False`` during this stage, so no weight gradients are computed for
G; gradients flow through G's activations to M. The loop itself is ``core.trainer.run_stage``.
"""

from __future__ import annotations

import torch
from torch import nn

from core.nets import AnyGenerator, JointMiner, Miner
from core.trainer import StageConfig


def mining_stage(steps: int, *, sparse: bool = False, **opts: object) -> StageConfig:
    """The mining stage: M and D learn, G is frozen (Eq. 3-4); ``sparse`` adds S^3 on D (MineGAN++)."""
    return StageConfig("mine", steps=steps, train_miner=True, train_generator=False, sparse=sparse, **opts)  # type: ignore[arg-type]


class MinedGenerator(nn.Module):
    """The transferred model used for sampling: x = G(M(u)), or G(u) for methods without a miner."""

    def __init__(self, G: AnyGenerator, M: Miner | JointMiner | None) -> None:
        super().__init__()
        self.G = G
        self.M = M

    @property
    def z_dim(self) -> int:
        return self.G.cfg.z_dim

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, batch: int = 256) -> torch.Tensor:
        """``n`` images [n, C, H, W] in [-1, 1]; the same seed gives the same images."""
        gen = torch.Generator().manual_seed(seed)
        device = next(self.G.parameters()).device
        out = []
        for i in range(0, n, batch):
            u = torch.randn(min(batch, n - i), self.z_dim, generator=gen).to(device)  # [b, z_dim]
            z = self.M(u) if self.M is not None else u
            if isinstance(self.M, JointMiner):  # embedding-conditioned G: G(M^z(u), M^c(u)) (Sec. 4.1)
                out.append(self.G(z, embedding=self.M.embedding(u)).cpu())
            else:
                out.append(self.G(z).cpu())
        return torch.cat(out) if out else torch.empty(0)
