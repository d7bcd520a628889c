"""Differentiable augmentation of the critic's inputs (DiffAugment, Zhao et al. 2020).

With ~100 target images a critic that starts fresh memorises them, and its gradients stop telling the
miner anything. DiffAugment applies the same family of random, differentiable transforms T to real and fake
images wherever the critic sees them, in the critic update and in the miner/generator update alike:

    L_D = E[D(T(G(M(u))))] - E[D(T(x))] + GP on T(x), T(G(M(u)))      (Eq. 3 with T)
    L_G = -E[D(T(G(M(u))))]                                          (Eq. 4 with T)

Gradients pass through T to the generator and the miner, so the generator is still asked to match the
target, not its augmentations. The policy is a comma-separated list of ``color``, ``translation`` and
``cutout`` (the paper's strongest setting for 100-shot data is all three). Images are [N, C, H, W] in
[-1, 1]; every sample gets its own random parameters.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

Augment = Callable[[torch.Tensor], torch.Tensor]


def _color(x: torch.Tensor) -> torch.Tensor:
    """Brightness shift in [-0.5, 0.5], saturation scale in [0, 2], contrast scale in [0.5, 1.5], per sample."""
    n = x.shape[0]
    x = x + (torch.rand(n, 1, 1, 1, device=x.device, dtype=x.dtype) - 0.5)
    if x.shape[1] > 1:  # saturation needs colour channels
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (torch.rand(n, 1, 1, 1, device=x.device, dtype=x.dtype) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (torch.rand(n, 1, 1, 1, device=x.device, dtype=x.dtype) + 0.5) + mean


def _translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to ``ratio`` of its size in each direction; the uncovered border is zero."""
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = torch.randint(-sh, sh + 1, (n, 1, 1), device=x.device)
    tx = torch.randint(-sw, sw + 1, (n, 1, 1), device=x.device)
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + ty + sh).expand(n, h, w)  # [N, H, W] rows of the padded image
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + tx + sw).expand(n, h, w)
    padded = F.pad(x, [sw, sw, sh, sh])  # [N, C, H + 2sh, W + 2sw]
    batch = torch.arange(n, device=x.device).view(n, 1, 1).expand(n, h, w)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # [N, C, H, W]


def _cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Zero a square of ``ratio`` of the image size centred at a random pixel of each image (clipped at the border)."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = torch.randint(0, h, (n, 1, 1), device=x.device) - ch // 2  # [N, 1, 1]
    left = torch.randint(0, w, (n, 1, 1), device=x.device) - cw // 2
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (rows >= top) & (rows < top + ch) & (cols >= left) & (cols < left + cw)  # [N, H, W]
    return x * (~inside).unsqueeze(1).to(x.dtype)


TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"color": _color, "translation": _translation, "cutout": _cutout}


def parse_policy(policy: str) -> list[str]:
    """The transforms of a policy string, in order; raises ValueError naming an unknown one."""
    names = [p.strip() for p in policy.split(",") if p.strip()]
    unknown = [p for p in names if p not in TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown[0]!r}; use a comma-separated list of {', '.join(TRANSFORMS)}")
    return names


def diff_augment(policy: str) -> Augment | None:
    """T for a policy string such as ``"color,translation,cutout"``; None for an empty policy (no augmentation)."""
    names = parse_policy(policy)
    if not names:
        return None

    def augment(x: torch.Tensor) -> torch.Tensor:
        for name in names:
            x = TRANSFORMS[name](x)
        return x.contiguous()

    return augment
