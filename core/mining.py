"""Mining (MineGAN++ Sec. 3.2): learn a miner M in front of a frozen pretrained G.

With G fixed, the critic D (initialised from the source's pretrained critic) and M are trained with the
WGAN-GP objective on mined samples G(M(u)), u ~ N(0, I):

    L_D^M = E_u[D(G(M(u)))] - E_x~p_data^T[D(x)]      (Eq. 3)
    L_G^M = -E_u[D(G(M(u)))]                          (Eq. 4, minimised w.r.t. M only)

G's parameters have ``requires_grad=False`` during this stage, so no weight gradients are computed for
G; gradients flow through G's activations to M. The loop itself is ``core.trainer.run_stage``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from core.colour import ColourMap
from core.nets import AnyGenerator, JointMiner, Miner, generate
from core.trainer import StageConfig


def mining_stage(steps: int, *, sparse: bool = False, **opts: object) -> StageConfig:
    """The mining stage: M and D learn, G is frozen (Eq. 3-4); ``sparse`` adds S^3 on D (MineGAN++)."""
    return StageConfig("mine", steps=steps, train_miner=True, train_generator=False, sparse=sparse, **opts)  # type: ignore[arg-type]


class MinedGenerator(nn.Module):
    """The transferred model used for sampling: x = G(M(u)), or G(u) for methods without a miner."""

    def __init__(self, G: AnyGenerator, M: Miner | JointMiner | None, colour: ColourMap | None = None) -> None:
        super().__init__()
        self.G = G
        self.M = M
        self.colour = colour  # x = clamp(W G(M(u)) + b): the fitted colour transfer (core/colour.py), if any

    @property
    def z_dim(self) -> int:
        return self.G.cfg.z_dim

    @property
    def values_per_image(self) -> int:
        """C * H * W of one output image (sizes render chunks without running the model)."""
        return int(self.G.cfg.channels * self.G.cfg.img_size**2)

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, batch: int = 256) -> torch.Tensor:
        """``n`` images [n, C, H, W] in [-1, 1]; the same seed gives the same images."""
        out = list(self.sample_chunks(n, seed, chunk=batch))
        return torch.cat(out) if out else torch.empty(0)

    @torch.no_grad()
    def sample_chunks(self, n: int, seed: int = 0, chunk: int = 256) -> Iterator[torch.Tensor]:
        """``sample(n, seed)`` in consecutive pieces of at most ``chunk`` images, in order, so a caller can do
        other work between pieces (the API's event loop). The latents are drawn exactly as ``sample`` draws
        them (blocks of 256 from one generator), so only the forward passes are split."""
        for u_block in self.latent_blocks(n, seed):
            for k in range(0, len(u_block), chunk):
                yield self.decode(u_block[k : k + chunk])

    def latent_blocks(self, n: int, seed: int) -> Iterator[torch.Tensor]:
        """The latents u ~ N(0, I) of ``sample(n, seed)``: blocks [<=256, z_dim] from one generator seeded ``seed``."""
        gen = torch.Generator().manual_seed(seed)
        for i in range(0, n, 256):
            yield torch.randn(min(256, n - i), self.z_dim, generator=gen)  # [b, z_dim]

    @torch.no_grad()
    def decode(self, u: torch.Tensor) -> torch.Tensor:
        """x = G(M(u)) in one forward pass (then the colour map, if any), on the model's device, returned on the CPU:
        u [N, z_dim] -> [N, C, H, W]. Sampling and the API's batched sampling (api/batching.py) both go through it."""
        device = next(self.G.parameters()).device
        x = generate(self.G, self.M, u.to(device))
        return (self.colour(x) if self.colour is not None else x).cpu()
