"""WGAN-GP generator and critic for small images (MineGAN++ Appendix A, "MNIST dataset").

The MNIST networks of the paper follow the framework of Gulrajani et al. (WGAN-GP): a DCGAN-style
generator (fully connected layer to a small spatial map, then stride-2 transposed convolutions) and a
critic, both without batch normalisation as in WGAN-GP's MNIST model (the gradient penalty is
per-sample, so the critic must not mix samples; a BN-free G also behaves identically in train and eval).

The same family serves 28x28 (start at 7x7, two upsamplings), 32x32 and 64x64 (start at 4x4, three or
four upsamplings), grayscale or RGB. ``n_classes > 0`` gives the one-hot conditional variant: the
generator reads ``concat(z, onehot(c))`` and the critic reads the one-hot broadcast as extra input planes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


def _stages(img_size: int) -> tuple[int, int]:
    """(base spatial size, number of stride-2 stages) for a supported image size."""
    for base in (7, 4):
        n = 0
        s = base
        while s < img_size:
            s *= 2
            n += 1
        if s == img_size and n >= 2:
            return base, n
    raise ValueError(f"unsupported image size {img_size}; use 28, 32, 64 (7*2^k or 4*2^k, k>=2)")


@dataclass(frozen=True)
class GeneratorConfig:
    z_dim: int = 128
    img_size: int = 28
    channels: int = 1
    width: int = 32
    n_classes: int = 0  # 0: unconditional; >0: conditional G(c, z)
    embed_dim: int = 0  # with n_classes: 0 = one-hot label input; >0 = a learned class embedding E(c) (Sec. 4.1)


@dataclass(frozen=True)
class CriticConfig:
    img_size: int = 28
    channels: int = 1
    width: int = 32
    n_classes: int = 0
    patch: int = 0  # 0: one score per image; k: the mean of the scores of a k x k map of patches (Eq. PATCH)


class Generator(nn.Module):
    """G(z) or G(c, z) -> image in [-1, 1]."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        base, n = _stages(cfg.img_size)
        self.base = base
        chans = [cfg.width * 2 ** (n - 1 - i) for i in range(n)]  # e.g. [64, 32] for 28px
        self.c0 = chans[0]
        cond = (cfg.embed_dim or cfg.n_classes) if cfg.n_classes else 0
        self.embed = nn.Embedding(cfg.n_classes, cfg.embed_dim) if cfg.n_classes and cfg.embed_dim else None
        self.fc = nn.Linear(cfg.z_dim + cond, self.c0 * base * base)
        ups: list[nn.Module] = []
        for i in range(n - 1):
            ups += [nn.ConvTranspose2d(chans[i], chans[i + 1], 4, 2, 1), nn.ReLU(True)]
        ups += [nn.ConvTranspose2d(chans[-1], cfg.channels, 4, 2, 1)]
        self.ups = nn.Sequential(*ups)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, embedding: torch.Tensor | None = None) -> torch.Tensor:
        # z: [N, z_dim]; c: [N] class indices (conditional only); embedding: [N, embed_dim] given directly
        # instead of E(c) -- what the class-embedding miner M^c produces (Sec. 4.1)
        if self.cfg.n_classes:
            if embedding is not None:
                if self.embed is None:
                    raise ValueError("this generator is one-hot conditional; it has no class embedding")
                cond = embedding
            elif c is None:
                raise ValueError("conditional generator needs class labels")
            else:
                cond = self.embed(c) if self.embed is not None else F.one_hot(c, self.cfg.n_classes).to(z.dtype)
            z = torch.cat([z, cond], 1)
        h = F.relu(self.fc(z))  # [N, c0*base*base]
        h = h.view(-1, self.c0, self.base, self.base)  # [N, c0, base, base]
        return torch.tanh(self.ups(h))  # [N, C, H, W]


def patch_sizes(img_size: int) -> list[int]:
    """The feature-map sizes a critic's stride-2 stages pass through (64 -> [32, 16, 8, 4]): the ``patch`` values it takes."""
    sizes, size = [], img_size
    while size > 4:
        size = (size + 1) // 2
        sizes.append(size)
    return sizes


class Critic(nn.Module):
    """D(x) or D(x, c) -> scalar score (WGAN critic, no normalisation layers).

    With ``cfg.patch`` = k the critic is a patch critic (PatchGAN's "Markovian discriminator", Isola et al., CVPR 2017,
    Sec. 3.2.2): its stride-2 stages stop at the k x k feature map phi(x), a 1x1 convolution h scores every position,
    each of which sees only a patch of the image (its receptive field: 29 px of 64 at k = 8), and the image's score is
    their mean, so the critic can judge local texture but not the layout of the whole image:

        D(x) = 1/k^2 sum_{i,j} h(phi(x))_{ij}                                                     (PATCH)
    """

    def __init__(self, cfg: CriticConfig) -> None:
        super().__init__()
        self.cfg = cfg
        _stages(cfg.img_size)  # validates the size
        if cfg.patch and cfg.patch not in patch_sizes(cfg.img_size):
            raise ValueError(f"a patch critic of {cfg.img_size}px images scores a k x k map, k one of "
                             f"{', '.join(map(str, patch_sizes(cfg.img_size)))}; got {cfg.patch}")
        layers: list[nn.Module] = []
        c_in = cfg.channels + cfg.n_classes
        size = cfg.img_size
        i = 0
        while size > max(4, cfg.patch):  # 28->14->7->4, 32->16->8->4, 64->...->4 (a patch critic stops at k)
            c_out = cfg.width * 2**i
            i += 1
            layers += [nn.Conv2d(c_in, c_out, 5, 2, 2), nn.LeakyReLU(0.2, True)]
            c_in = c_out
            size = (size + 1) // 2
        self.convs = nn.Sequential(*layers)
        self.fc: nn.Module = nn.Conv2d(c_in, 1, 1) if cfg.patch else nn.Linear(c_in * size * size, 1)

    def features(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if self.cfg.n_classes:
            if c is None:
                raise ValueError("conditional critic needs class labels")
            planes = F.one_hot(c, self.cfg.n_classes).to(x.dtype)[:, :, None, None]
            x = torch.cat([x, planes.expand(-1, -1, x.shape[2], x.shape[3])], 1)  # [N, C+K, H, W]
        return self.convs(x).flatten(1)  # [N, F]

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if self.cfg.patch:  # Eq. PATCH: [N, F*k*k] -> [N, F, k, k] -> scores [N, 1, k, k] -> their mean [N]
            h = self.features(x, c).view(x.shape[0], -1, self.cfg.patch, self.cfg.patch)
            return self.fc(h).mean((1, 2, 3))
        return self.fc(self.features(x, c)).squeeze(1)  # [N]

    def layer_modules(self) -> list[nn.Module]:
        """Weighted layers from input to output (used by FreezeD and S^3)."""
        return [m for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
