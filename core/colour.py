"""Colour matching: a closed-form linear colour transfer after the generator (issue 18; not in the MineGAN papers).

A generator-only upload is transferred against a critic that starts fresh on ~100 images. Such a critic tells
real from fake by structure long before it tells them by colour, so neither the miner (which cannot change
colour at all: it only chooses latents) nor finetuning learns a global colour change such as colour -> gray in
a few hundred steps (docs/faces.md measures it: the critic's gradient on a colour map points at gray with
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

Band matching (``band_match``, also not in the papers). Targets uploaded smaller than the generator's output are
upscaled by the service, so they carry no detail above their own resolution; a sharp generator then differs from
them in its high frequencies, which a fresh critic sees first and a miner cannot change. The map can end with a
band limit: x'' = up_H(down_s(x')), an antialiased bicubic resample to s x s and back, with s chosen as the size
whose band-limited fakes' radially averaged log power spectrum is closest to the targets':

    s* = argmin_s  sum_f ( log P_{up(down_s(x'))}(f) - log P_target(f) )^2 / (H/2)                 (BAND)

over s = H, H - H/16, ..., H/4 (s* = H: no band limit). It uses the images alone (no metric network).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
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


def band_limit(x: torch.Tensor, size: int) -> torch.Tensor:
    """up_H(down_s(x)) of Eq. BAND: ``x`` [N, C, H, W] resampled (antialiased bicubic) to ``size`` x ``size`` and back,
    clamped to [-1, 1]; differentiable, so a critic's gradient reaches G through it. ``size`` 0 or H: ``x`` itself."""
    if size <= 0 or size >= x.shape[-1]:
        return x
    small = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return F.interpolate(small, size=tuple(x.shape[-2:]), mode="bicubic", align_corners=False).clamp(-1, 1)


def log_spectrum(x: torch.Tensor) -> torch.Tensor:
    """The radially averaged log power spectrum [H/2] of the gray images of ``x`` [N, C, H, W] (frequencies 1..H/2)."""
    g = x.detach().double().mean(1)  # [N, H, W]
    g = g - g.mean((1, 2), keepdim=True)
    power = (torch.fft.fft2(g).abs() ** 2).mean(0)  # [H, W]
    n = x.shape[-1]
    f = torch.fft.fftfreq(n, dtype=torch.float64)
    radius = ((f[:, None] ** 2 + f[None, :] ** 2).sqrt() * n).round().long().clamp(max=n // 2).flatten()
    total = torch.zeros(n // 2 + 1, dtype=torch.float64).index_add_(0, radius, power.flatten())
    return (total / torch.bincount(radius, minlength=n // 2 + 1).clamp(min=1))[1:].clamp(min=1e-12).log()


def fit_band(fakes: torch.Tensor, targets: torch.Tensor) -> int:
    """s* of Eq. BAND for ``fakes`` (already colour-mapped) against ``targets``, both [N, C, H, W]; 0 when no band
    limit brings the spectra closer."""
    n = fakes.shape[-1]
    want = log_spectrum(targets)
    sizes = range(n, max(n // 4, 2) - 1, -max(n // 16, 1))
    dist = {s: float(((log_spectrum(band_limit(fakes, s)) - want) ** 2).mean()) for s in sizes}
    best = min(dist, key=lambda s: (dist[s], -s))
    return 0 if best >= n else best


class ColourMap(nn.Module):
    """x' = clamp(W x + b, -1, 1) over the channel axis (Eq. MK), then the band limit of Eq. BAND when ``band`` > 0;
    W, b and band are fitted, not trained."""

    W: torch.Tensor  # [C, C]
    b: torch.Tensor  # [C]

    def __init__(self, W: torch.Tensor, b: torch.Tensor, band: int = 0) -> None:
        super().__init__()
        self.register_buffer("W", W.detach().float().clone())
        self.register_buffer("b", b.detach().float().clone())
        self.band = int(band)  # s* of Eq. BAND, 0 for none

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] -> [N, C, H, W]
        x = (torch.einsum("dc,nchw->ndhw", self.W, x) + self.b[None, :, None, None]).clamp(-1, 1)
        return band_limit(x, self.band)

    def as_json(self) -> dict[str, list | int]:
        return {"W": self.W.tolist(), "b": self.b.tolist(), "band": self.band}

    @classmethod
    def from_json(cls, obj: dict[str, list]) -> ColourMap:
        W, b = torch.tensor(obj["W"], dtype=torch.float32), torch.tensor(obj["b"], dtype=torch.float32)
        if W.ndim != 2 or W.shape[0] != W.shape[1] or b.shape != (W.shape[0],) or not (W.isfinite().all() and b.isfinite().all()):
            raise ValueError("a colour map needs a finite square W [C, C] and b [C]")
        band = obj.get("band", 0)
        if not isinstance(band, int) or isinstance(band, bool) or not 0 <= band <= 65536:
            raise ValueError("a colour map's band is an image size s* (Eq. BAND), 0 for none")
        return cls(W, b, band)


@torch.no_grad()
def fit_colour_map(draw: Callable[[torch.Tensor], torch.Tensor], z_dim: int, targets: torch.Tensor,
                   n: int = FIT_IMAGES, chunk: int = 128, colour: bool = True, band: bool = False) -> ColourMap:
    """Eq. MK (``colour``; else W = I, b = 0) and then Eq. BAND (``band``) fitted from ``draw(u)`` (images of latents
    u [K, z_dim], in eval mode, without a colour map) on ``n`` latents of a fixed seed, against ``targets`` [N, C, H, W]."""
    gen = torch.Generator().manual_seed(FIT_SEED)
    u = torch.randn(n, z_dim, generator=gen)
    fakes = torch.cat([draw(u[k : k + chunk]).cpu() for k in range(0, n, chunk)])
    c = fakes.shape[1]
    W, b = monge_kantorovich(fakes, targets.cpu()) if colour else (torch.eye(c), torch.zeros(c))
    if not band:
        return ColourMap(W, b)
    return ColourMap(W, b, fit_band(ColourMap(W, b)(fakes), targets.cpu()))
