"""Losses as small pure functions.

WGAN-GP (Gulrajani et al.) is the adversarial objective throughout the paper; MineGAN modifies only
*what* produces the fakes (G(M(u)) instead of G(z)), so Eq. 3-4 are these same functions applied to
mined samples.
"""

from __future__ import annotations

import torch
from torch import nn


def critic_loss(d_fake: torch.Tensor, d_real: torch.Tensor) -> torch.Tensor:
    """L_D = E[D(fake)] - E[D(x)]  (Eq. 3 when fake = G(M(u)); Eq. 9 for permuted supersamples)."""
    return d_fake.mean() - d_real.mean()


def generator_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """L_G = -E[D(fake)]  (Eq. 4; Eq. 10 for permuted supersamples)."""
    return -d_fake.mean()


def real_critic_loss(d_real: torch.Tensor) -> torch.Tensor:
    """L_D^r = -E_x[D(x)]: the critic loss on real target data alone, used by S^3 (Eq. 11-13)."""
    return -d_real.mean()


def gradient_penalty(
    critic: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    labels: torch.Tensor | None = None,
    weight: float = 10.0,
) -> torch.Tensor:
    """lambda * E[(||grad_x D(x_hat)||_2 - 1)^2] on random interpolates x_hat (WGAN-GP)."""
    n = real.shape[0]
    eps = torch.rand(n, 1, 1, 1, device=real.device)  # [N, 1, 1, 1]
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)  # [N, C, H, W]
    out = critic(x_hat, labels) if labels is not None else critic(x_hat)
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    norms = grad.flatten(1).norm(2, dim=1)  # [N]
    return weight * ((norms - 1) ** 2).mean()
