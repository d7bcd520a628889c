"""A small CNN digit classifier, trained by this project on MNIST, used by the metrics.

It serves two metrics of the paper's MNIST evaluation (CVPR supplement Sec. D): *classifier error*
(fraction of generated images not classified as the target digit) and, through its penultimate layer,
a fast Frechet distance on features that are meaningful for digits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class ClassifierConfig:
    channels: int = 1
    n_classes: int = 10
    width: int = 32
    feat_dim: int = 128


class Classifier(nn.Module):
    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.convs = nn.Sequential(
            nn.Conv2d(cfg.channels, w, 3, padding=1), nn.ReLU(True), nn.MaxPool2d(2),  # 14x14
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(True), nn.MaxPool2d(2),  # 7x7
        )
        self.fc = nn.Linear(2 * w * 7 * 7, cfg.feat_dim)
        self.out = nn.Linear(cfg.feat_dim, cfg.n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # x: [N, C, 28, 28] in [-1, 1]
        return F.relu(self.fc(self.convs(x).flatten(1)))  # [N, feat_dim]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))  # [N, n_classes] logits
