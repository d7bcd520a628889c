"""Metrics registry (MineGAN++ Sec. 5 and CVPR supplement Sec. D).

| name               | what                                                           | better |
|--------------------|----------------------------------------------------------------|--------|
| ``fid``            | Frechet distance on Inception-v3 pool features                 | lower  |
| ``fd_classifier``  | Frechet distance on the project's MNIST classifier features    | lower  |
| ``kmmd``           | Gaussian-kernel MMD^2 on Inception features                    | lower  |
| ``kid``            | Kernel Inception Distance: unbiased cubic-kernel MMD^2          | lower  |
| ``mv``             | mean variance of generated Inception features (diversity)      | higher |
| ``classifier_error`` | share of samples not classified as a target digit            | lower  |

Features of the real images are cached on disk under a key hashed from the image bytes, the extractor
and the options, so repeated evaluations against the same target set cost only the generated side.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from core.metrics import classifier as _clf
from core.metrics import inception as _inc
from core.metrics.frechet import frechet_distance, gaussian_stats, kid, kmmd, mean_variance


def cache_dir() -> Path:
    return Path(os.environ.get("MINEGAN_CACHE", Path.home() / ".cache" / "minegan"))


def _cached_features(images: torch.Tensor, extractor_id: str, fn: Callable[[torch.Tensor], np.ndarray]) -> np.ndarray:
    h = hashlib.sha256()
    h.update(extractor_id.encode())
    h.update(str(tuple(images.shape)).encode())
    h.update(images.detach().cpu().contiguous().numpy().tobytes())
    path = cache_dir() / "features" / f"{h.hexdigest()[:32]}.npy"
    if path.exists():
        return np.load(path)
    feats = fn(images)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, feats)
    os.replace(tmp, path)
    return feats


@dataclass
class EvalContext:
    generated: torch.Tensor  # [N, C, H, W] in [-1, 1]
    real: torch.Tensor  # [M, C, H, W] in [-1, 1]
    target_labels: list[int] | None = None
    _feats: dict[str, np.ndarray] = field(default_factory=dict)

    def inception(self, which: str) -> np.ndarray:
        key = f"inc-{which}"
        if key not in self._feats:
            if which == "real":
                self._feats[key] = _cached_features(self.real, _inc.EXTRACTOR_ID, _inc.inception_features)
            else:
                self._feats[key] = _inc.inception_features(self.generated)
        return self._feats[key]

    def classifier(self, which: str) -> np.ndarray:
        key = f"clf-{which}"
        if key not in self._feats:
            imgs = self.real if which == "real" else self.generated
            self._feats[key] = _clf.classifier_features(imgs)
        return self._feats[key]


def _fid(ctx: EvalContext) -> float:
    return frechet_distance(gaussian_stats(ctx.inception("real")), gaussian_stats(ctx.inception("gen")))


def _fd_classifier(ctx: EvalContext) -> float:
    return frechet_distance(gaussian_stats(ctx.classifier("real")), gaussian_stats(ctx.classifier("gen")))


def _kmmd(ctx: EvalContext) -> float:
    return kmmd(ctx.inception("real"), ctx.inception("gen"))


def _kid(ctx: EvalContext) -> float:
    return kid(ctx.inception("gen"), ctx.inception("real"))


def _mv(ctx: EvalContext) -> float:
    return mean_variance(ctx.inception("gen"))


def _classifier_error(ctx: EvalContext) -> float:
    if not ctx.target_labels:
        raise ValueError("classifier_error needs the target digit(s)")
    return _clf.classifier_error(ctx.generated, ctx.target_labels)


METRICS: dict[str, Callable[[EvalContext], float]] = {
    "fid": _fid,
    "fd_classifier": _fd_classifier,
    "kmmd": _kmmd,
    "kid": _kid,
    "mv": _mv,
    "classifier_error": _classifier_error,
}


def evaluate(generated: torch.Tensor, real: torch.Tensor, names: list[str], target_labels: list[int] | None = None) -> dict[str, float]:
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {sorted(METRICS)}")
    ctx = EvalContext(generated, real, target_labels)
    return {n: METRICS[n](ctx) for n in names}


__all__ = ["METRICS", "EvalContext", "evaluate", "frechet_distance", "gaussian_stats", "kid", "kmmd", "mean_variance"]
