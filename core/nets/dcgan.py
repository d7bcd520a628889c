"""The standard DCGAN 64x64 generator layout (Radford et al.; the PyTorch DCGAN tutorial), so that a
third-party pretrained generator of that layout can be mined: its state dict keys (``main.0.weight`` ...)
load as they are.

z [N, z_dim] -> ConvT(z, 8w, 4, 1, 0) -> 4x4 -> ConvT(.., 4w) 8x8 -> 2w 16x16 -> w 32x32 -> ConvT(w, C) 64x64,
BatchNorm + ReLU between, Tanh at the end. The batch-norm layers always use their pretrained running
statistics (they stay in eval mode even when the module is put in train mode): mining must not change a
frozen generator's buffers, and finetuning then updates weights and BN affine parameters only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DCGANGeneratorConfig:
    z_dim: int = 100
    img_size: int = 64
    channels: int = 3
    width: int = 64  # ngf
    n_classes: int = 0  # unconditional only (the shared interface of generators)
    embed_dim: int = 0

    def __post_init__(self) -> None:
        if self.img_size != 64 or self.n_classes or self.embed_dim:
            raise ValueError("the DCGAN layout is an unconditional 64x64 generator")


class DCGANGenerator(nn.Module):
    def __init__(self, cfg: DCGANGeneratorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w, c = cfg.width, cfg.channels
        self.main = nn.Sequential(
            nn.ConvTranspose2d(cfg.z_dim, w * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(w * 8), nn.ReLU(True),  # 4x4
            nn.ConvTranspose2d(w * 8, w * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(w * 4), nn.ReLU(True),  # 8x8
            nn.ConvTranspose2d(w * 4, w * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(w * 2), nn.ReLU(True),  # 16x16
            nn.ConvTranspose2d(w * 2, w, 4, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(True),  # 32x32
            nn.ConvTranspose2d(w, c, 4, 2, 1, bias=False), nn.Tanh(),  # 64x64
        )
        self.train()  # from the start: a module's layers are built in train mode, which train() below overrides

    def train(self, mode: bool = True) -> DCGANGenerator:
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()  # pretrained statistics, always
        return self

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, embedding: torch.Tensor | None = None) -> torch.Tensor:
        if c is not None or embedding is not None:
            raise ValueError("the DCGAN generator is unconditional")
        return self.main(z.view(z.shape[0], -1, 1, 1))  # type: ignore[no-any-return]  # [N, C, 64, 64]
