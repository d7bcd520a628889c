"""Colour matching: a closed-form linear colour transfer after the generator (issue 18; not in the MineGAN papers).

A generator-only upload is transferred against a critic that starts fresh on ~100 images. Such a critic tells
real from fake by structure long before it tells them by colour, so neither the miner (which cannot change
colour at all: it only chooses latents) nor finetuning learns a global colour change such as colour -> gray in
a few hundred steps (docs/faces_notes.md measures it: the critic's gradient on a colour map points at gray with
a cosine of about 0.04). A global colour gap is what separates many target sets from their source (gray, sepia,
a tint, a darker exposure), and it has an exact closed-form answer.

The map is the linear Monge-Kantorovich colour transfer (Pitie & Kokaram, "The linear Monge-Kantorovitch linear
colour mapping for example-based colour transfer", CVMP 2007): with mu_s, Sigma_s the mean and covariance of
the generator's pixels over its channels and mu_t, Sigma_t the targets',

    W = Sigma_s^-1/2 (Sigma_s^1/2 Sigma_t Sigma_s^1/2)^1/2 Sigma_s^-1/2,   b = mu_t - W mu_s      (MK)
    x' = clamp(W x + b, -1, 1)                                                                     (applied per pixel)

It maps N(mu_s, Sigma_s) onto N(mu_t, Sigma_t) with the least mean squared change of the pixels, so an image
keeps its content and takes the targets' colour statistics; for gray targets Sigma_t has rank one and W
projects onto the gray axis. ``colour_match`` (core/options.py) fits it once from the source generator before
training, so the critic and the miner work on colour-matched fakes, and again on the trained model at the
end, so the published model matches the targets' statistics whatever the training changed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

FIT_IMAGES = 512  # generator samples the statistics are taken from (fixed seed: a fit is deterministic)
FIT_SEED = 20070  # the latents of a fit; its own generator, so fitting does not move the training RNG
EPS = 1e-5  # added to Sigma_s's diagonal: a source with a constant channel still has an inverse square root


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [C] and covariance [C, C] of the pixels of ``x`` [N, C, H, W], in float64."""
    p = x.detach().double().transpose(0, 1).reshape(x.shape[1], -1)  # [C, N*H*W]
    mean = p.mean(1)
    centred = p - mean[:, None]
    return mean, centred @ centred.T / max(p.shape[1] - 1, 1)


def _psd_sqrt(a: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((a + a.T) / 2)
    return vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T


def monge_kantorovich(fakes: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(W [C, C], b [C]) of Eq. MK, taking ``fakes``' colour statistics to ``targets``' (both [N, C, H, W])."""
    mu_s, cov_s = channel_stats(fakes)
    mu_t, cov_t = channel_stats(targets)
    cov_s = cov_s + EPS * torch.eye(len(mu_s), dtype=cov_s.dtype)
    root = _psd_sqrt(cov_s)
    inv_root = torch.linalg.inv(root)
    W = inv_root @ _psd_sqrt(root @ cov_t @ root) @ inv_root
    return W.float(), (mu_t - W @ mu_s).float()


class ColourMap(nn.Module):
    """x' = clamp(W x + b, -1, 1) over the channel axis; W, b are buffers (fitted, not trained)."""

    W: torch.Tensor  # [C, C]
    b: torch.Tensor  # [C]

    def __init__(self, W: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("W", W.detach().float().clone())
        self.register_buffer("b", b.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] -> [N, C, H, W]
        return (torch.einsum("dc,nchw->ndhw", self.W, x) + self.b[None, :, None, None]).clamp(-1, 1)

    def as_json(self) -> dict[str, list]:
        return {"W": self.W.tolist(), "b": self.b.tolist()}

    @classmethod
    def from_json(cls, obj: dict[str, list]) -> ColourMap:
        W, b = torch.tensor(obj["W"], dtype=torch.float32), torch.tensor(obj["b"], dtype=torch.float32)
        if W.ndim != 2 or W.shape[0] != W.shape[1] or b.shape != (W.shape[0],) or not (W.isfinite().all() and b.isfinite().all()):
            raise ValueError("a colour map needs a finite square W [C, C] and b [C]")
        return cls(W, b)


@torch.no_grad()
def fit_colour_map(draw: Callable[[torch.Tensor], torch.Tensor], z_dim: int, targets: torch.Tensor,
                   n: int = FIT_IMAGES, chunk: int = 128) -> ColourMap:
    """Eq. MK fitted from ``draw(u)`` (images of latents u [K, z_dim], in eval mode, without a colour map) on
    ``n`` latents of a fixed seed, against ``targets`` [N, C, H, W]."""
    gen = torch.Generator().manual_seed(FIT_SEED)
    u = torch.randn(n, z_dim, generator=gen)
    fakes = torch.cat([draw(u[k : k + chunk]).cpu() for k in range(0, n, chunk)])
    return ColourMap(*monge_kantorovich(fakes, targets.cpu()))
